//! Tiered block storage (see README.md).
//!
//! The crate root holds the [`BlockBackend`] trait that block devices (the VMM's virtio-blk, the NBD server)
//! use to reach a disk. It is implemented by [`raw::RawFileBackend`] (one plain file) and by
//! [`volume::Volume`] (a tiered volume whose extents move between tiers by heat).

pub mod engine;
pub mod extent_map;
pub mod heat;
pub mod meta;
pub mod mover;
pub mod nbd;
pub mod raw;
pub mod size;
pub mod tier;
pub mod uring;
pub mod volume;

use std::io;

/// Why a block request failed. Devices map these onto their own status codes
/// (NBD error numbers, virtio-blk `VIRTIO_BLK_S_*`).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the disk.
    #[error("request at offset {offset} of {len} bytes ends past the disk size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The disk is read-only.
    #[error("the disk is read-only")]
    ReadOnly,
    /// No space left on any tier for a new extent.
    #[error("no free extent slot on any tier")]
    NoSpace,
    /// The host I/O failed.
    #[error("host I/O failed at disk offset {offset}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A non-waiting request met an extent that a move is switching right now; retry shortly.
    #[error("extent is being moved; retry")]
    Busy,
    /// Persisting metadata failed.
    #[error("could not persist the volume metadata")]
    Metadata(#[source] Box<meta::MetaError>),
}

impl BlockError {
    /// The POSIX errno closest to this error (what NBD and most guests understand).
    pub fn errno(&self) -> u32 {
        match self {
            BlockError::OutOfRange { .. } => libc::EINVAL as u32,
            BlockError::ReadOnly => libc::EPERM as u32,
            BlockError::NoSpace => libc::ENOSPC as u32,
            BlockError::Busy => libc::EAGAIN as u32,
            BlockError::Io { .. } | BlockError::Metadata(_) => libc::EIO as u32,
        }
    }
}

/// A disk as a device sees it: a byte-addressed, fixed-size store.
///
/// All methods take `&self` and may be called from several threads at once; an implementation orders
/// concurrent requests to the same bytes the way a disk does (no guarantee between overlapping in-flight
/// requests). A write is durable only after a later [`BlockBackend::flush`] returns `Ok`.
pub trait BlockBackend: Send + Sync {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from the disk at `offset`. Never-written ranges read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Write `buf` to the disk at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Make every write that completed before this call durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// The guest no longer needs `len` bytes at `offset`; their content becomes unspecified
    /// (both implementations here read them back as zeros).
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Make `len` bytes at `offset` read as zeros, releasing space where the backend can.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError>;
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_range_rejects_past_end_and_overflow() {
        assert!(check_range(0, 4096, 4096).is_ok());
        assert!(check_range(4096, 0, 4096).is_ok());
        assert!(matches!(
            check_range(1, 4096, 4096),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
