//! The simplest backend: one file (or block device), no tiers, no map.

use std::path::Path;

use crate::tier::{AlignedBuf, TierError, TierFile};
use crate::{check_range, BlockBackend, BlockError};

/// A disk that is one file, opened with `O_DIRECT` where the file system allows it.
#[derive(Debug)]
pub struct RawFileBackend {
    file: TierFile,
    read_only: bool,
}

impl RawFileBackend {
    /// Opens `path` as a disk of its current size.
    pub fn open(path: &Path, read_only: bool) -> Result<RawFileBackend, TierError> {
        let size = std::fs::metadata(path)
            .map_err(|source| TierError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let file = TierFile::open("raw", path, size, false)?;
        Ok(RawFileBackend { file, read_only })
    }
}

impl BlockBackend for RawFileBackend {
    fn size(&self) -> u64 {
        self.file.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| BlockError::Io { offset, source })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size())?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| BlockError::Io { offset, source })
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.file
            .sync_data()
            .map_err(|source| BlockError::Io { offset: 0, source })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        check_range(offset, len, self.size())?;
        const CHUNK: u64 = 1 << 20;
        let zeros = AlignedBuf::zeroed(CHUNK.min(len) as usize);
        let mut done = 0;
        while done < len {
            let piece = CHUNK.min(len - done) as usize;
            self.write_at(&zeros.as_slice()[..piece], offset + done)?;
            done += piece as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_raw_file_backend_round_trip_and_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0xEEu8; 1 << 16]).unwrap();
        let disk = RawFileBackend::open(&path, false).unwrap();
        assert_eq!(disk.size(), 1 << 16);
        disk.write_at(b"hello", 10).unwrap();
        disk.write_zeroes(100, 50).unwrap();
        let mut back = vec![0u8; 200];
        disk.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[10..15], b"hello");
        assert!(back[100..150].iter().all(|&b| b == 0));
        assert_eq!(back[150], 0xEE);
        assert!(disk.read_at(&mut back, (1 << 16) - 10).is_err());
        let read_only = RawFileBackend::open(&path, true).unwrap();
        assert!(matches!(
            read_only.write_at(b"x", 0),
            Err(BlockError::ReadOnly)
        ));
    }
}
