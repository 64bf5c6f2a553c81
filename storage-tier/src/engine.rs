//! The synchronous engine: performs an [`IoPlan`](crate::volume::IoPlan)'s segments with `pread`/`pwrite`.
//! Used by [`BlockBackend`](crate::BlockBackend) calls, by the NBD server where io_uring is unavailable,
//! and for the rare requests the io_uring path completes synchronously.

use crate::volume::{Segment, Volume};
use crate::BlockError;

/// Which engine an NBD connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// io_uring when the kernel offers it, else synchronous.
    Auto,
    Uring,
    Sync,
}

/// Fills `buf` (the request buffer for a read at `request_offset`) from `segments`.
pub fn read_segments(
    volume: &Volume,
    segments: &[Segment],
    buf: &mut [u8],
    request_offset: u64,
) -> Result<(), BlockError> {
    for segment in segments {
        match *segment {
            Segment::Zero { buf_offset, len } => buf[buf_offset..buf_offset + len].fill(0),
            Segment::Tier {
                tier,
                file_offset,
                buf_offset,
                len,
            } => volume
                .tier(tier)
                .read_exact_at(&mut buf[buf_offset..buf_offset + len], file_offset)
                .map_err(|source| BlockError::Io {
                    offset: request_offset + buf_offset as u64,
                    source,
                })?,
        }
    }
    Ok(())
}

/// Writes `buf` (the payload of a write at `request_offset`) through `segments`.
pub fn write_segments(
    volume: &Volume,
    segments: &[Segment],
    buf: &[u8],
    request_offset: u64,
) -> Result<(), BlockError> {
    for segment in segments {
        if let Segment::Tier {
            tier,
            file_offset,
            buf_offset,
            len,
        } = *segment
        {
            volume
                .tier(tier)
                .write_all_at(&buf[buf_offset..buf_offset + len], file_offset)
                .map_err(|source| BlockError::Io {
                    offset: request_offset + buf_offset as u64,
                    source,
                })?;
        }
    }
    Ok(())
}
