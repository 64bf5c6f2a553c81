//! One virtio-blk request (virtio 1.2, section 5.2.6): parse the header from the device-readable
//! bytes, run it against the backend, and say which status byte the driver gets.
//!
//! The request is read as a byte stream over the descriptor chain (virtio-queue's `Reader` and
//! `Writer`), so any framing a VERSION_1 driver may use is accepted (section 2.6.4).

use std::io::{Read, Write};

use hv_storage::{check_range, BlockBackend};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{Reader, Writer};

use super::BlockMetrics;

/// virtio-blk sectors are always 512 bytes, whatever the backend's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (`le32 type; le32 reserved; le64 sector`).
pub const HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes segment (`le64 sector; le32 num_sectors; le32 flags`).
pub const SEGMENT_SIZE: usize = 16;
/// How many segments one discard or write-zeroes request may carry (advertised in config space).
pub const MAX_SEGMENTS: u32 = 16;
/// Data moves between guest memory and the backend through a bounce buffer of this size, so a
/// guest-chosen request length never decides how much host memory is allocated at once.
const BOUNCE_SIZE: usize = 128 * 1024;

/// Why a request did not succeed; decides the status byte the driver sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The device-readable part does not hold a whole header.
    #[error("the request header is shorter than 16 bytes or not in guest memory")]
    BadHeader,
    /// The request type is unknown or a flag asks for something the device does not offer.
    #[error("request type {0} or its flags are not supported")]
    Unsupported(u32),
    /// Data length not a multiple of 512 or an odd-sized segment list.
    #[error("the data length {0} is not a whole number of units")]
    BadLength(usize),
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The sector range does not fit the disk (or overflows).
    #[error("sector {sector} plus {len} bytes lies outside the disk")]
    OutOfRange { sector: u64, len: u64 },
    /// The backend failed.
    #[error("the disk backend failed")]
    Backend(#[source] hv_storage::BlockError),
    /// Copying between guest memory and the bounce buffer failed.
    #[error("guest memory access failed")]
    GuestMemory(#[source] std::io::Error),
}

impl RequestError {
    /// The `VIRTIO_BLK_S_*` status for this failure (section 5.2.6.1).
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What a request needs from the device besides guest memory.
pub struct RequestContext<'a> {
    pub disk: &'a dyn BlockBackend,
    pub read_only: bool,
    pub disk_id: &'a [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub metrics: &'a BlockMetrics,
}

/// Runs one request. `readable` is `None` when the device-readable descriptors do not lie in
/// guest memory; `data_out` is the device-writable space before the status byte.
pub fn execute(
    ctx: &RequestContext<'_>,
    readable: Option<Reader<'_>>,
    data_out: &mut Writer<'_>,
) -> u8 {
    match run(ctx, readable, data_out) {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(error) => {
            ctx.metrics.record_failure(&error);
            error.status()
        }
    }
}

fn run(
    ctx: &RequestContext<'_>,
    readable: Option<Reader<'_>>,
    data_out: &mut Writer<'_>,
) -> Result<(), RequestError> {
    let mut readable = readable.ok_or(RequestError::BadHeader)?;
    let mut header = [0u8; HEADER_SIZE];
    readable
        .read_exact(&mut header)
        .map_err(|_| RequestError::BadHeader)?;
    let kind = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);
    match kind {
        VIRTIO_BLK_T_IN => read_sectors(ctx, sector, data_out),
        VIRTIO_BLK_T_OUT => write_sectors(ctx, sector, &mut readable),
        VIRTIO_BLK_T_FLUSH => {
            ctx.disk.flush().map_err(RequestError::Backend)?;
            ctx.metrics.flushes.inc();
            Ok(())
        }
        VIRTIO_BLK_T_GET_ID => {
            let len = data_out.available_bytes().min(ctx.disk_id.len());
            data_out
                .write_all(&ctx.disk_id[..len])
                .map_err(RequestError::GuestMemory)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => zero_ranges(ctx, kind, &mut readable),
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Byte offset and length of a sector range, checked against the disk.
fn disk_range(ctx: &RequestContext<'_>, sector: u64, len: u64) -> Result<u64, RequestError> {
    let out_of_range = RequestError::OutOfRange { sector, len };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)?;
    check_range(offset, len, ctx.disk.size())
        .map_err(|_| RequestError::OutOfRange { sector, len })?;
    Ok(offset)
}

fn whole_sectors(len: usize) -> Result<u64, RequestError> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::BadLength(len));
    }
    Ok(len as u64)
}

fn read_sectors(
    ctx: &RequestContext<'_>,
    sector: u64,
    data_out: &mut Writer<'_>,
) -> Result<(), RequestError> {
    let len = whole_sectors(data_out.available_bytes())?;
    let mut offset = disk_range(ctx, sector, len)?;
    let mut bounce = vec![0u8; BOUNCE_SIZE.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let chunk = &mut bounce[..left.min(BOUNCE_SIZE)];
        ctx.disk
            .read_at(chunk, offset)
            .map_err(RequestError::Backend)?;
        data_out
            .write_all(chunk)
            .map_err(RequestError::GuestMemory)?;
        offset += chunk.len() as u64;
        left -= chunk.len();
    }
    ctx.metrics.reads.inc();
    ctx.metrics.read_bytes.add(len);
    Ok(())
}

fn write_sectors(
    ctx: &RequestContext<'_>,
    sector: u64,
    data_in: &mut Reader<'_>,
) -> Result<(), RequestError> {
    if ctx.read_only {
        return Err(RequestError::ReadOnly);
    }
    let len = whole_sectors(data_in.available_bytes())?;
    let mut offset = disk_range(ctx, sector, len)?;
    let mut bounce = vec![0u8; BOUNCE_SIZE.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let chunk = &mut bounce[..left.min(BOUNCE_SIZE)];
        data_in
            .read_exact(chunk)
            .map_err(RequestError::GuestMemory)?;
        ctx.disk
            .write_at(chunk, offset)
            .map_err(RequestError::Backend)?;
        offset += chunk.len() as u64;
        left -= chunk.len();
    }
    ctx.metrics.writes.inc();
    ctx.metrics.write_bytes.add(len);
    Ok(())
}

/// DISCARD and WRITE_ZEROES: a list of `{sector, num_sectors, flags}` segments (section 5.2.6).
/// Every segment is checked before any is applied, so a bad list changes nothing.
fn zero_ranges(
    ctx: &RequestContext<'_>,
    kind: u32,
    data_in: &mut Reader<'_>,
) -> Result<(), RequestError> {
    let len = data_in.available_bytes();
    if len == 0 || !len.is_multiple_of(SEGMENT_SIZE) {
        return Err(RequestError::BadLength(len));
    }
    if len / SEGMENT_SIZE > MAX_SEGMENTS as usize {
        return Err(RequestError::Unsupported(kind));
    }
    if ctx.read_only {
        return Err(RequestError::ReadOnly);
    }
    // Discard has no flags; write-zeroes may ask to unmap, which our backends do anyway.
    let allowed_flags = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    let mut ranges = Vec::with_capacity(len / SEGMENT_SIZE);
    for _ in 0..len / SEGMENT_SIZE {
        let mut segment = [0u8; SEGMENT_SIZE];
        data_in
            .read_exact(&mut segment)
            .map_err(RequestError::GuestMemory)?;
        let sector = le_u64(&segment[0..8]);
        let bytes = u64::from(le_u32(&segment[8..12])) * SECTOR_SIZE;
        if le_u32(&segment[12..16]) & !allowed_flags != 0 {
            return Err(RequestError::Unsupported(kind));
        }
        ranges.push((disk_range(ctx, sector, bytes)?, bytes));
    }
    for (offset, bytes) in ranges {
        let done = if kind == VIRTIO_BLK_T_DISCARD {
            ctx.disk.discard(offset, bytes)
        } else {
            ctx.disk.write_zeroes(offset, bytes)
        };
        done.map_err(RequestError::Backend)?;
    }
    ctx.metrics.zeroings.inc();
    Ok(())
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}
