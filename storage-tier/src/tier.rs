//! One tier: a file (or block device) cut into extent-sized slots.
//!
//! Each tier is opened twice: once with `O_DIRECT` where the file system allows it (so a disk tier is not
//! silently cached by the host page cache, which would act as a hidden third tier), and once buffered for
//! requests whose buffer, offset or length is not aligned enough for direct I/O. tmpfs refuses `O_DIRECT`;
//! there the buffered descriptor serves everything.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment that direct I/O requires of buffers, offsets and lengths (safe for 512 and 4096-byte sectors).
pub const DIRECT_ALIGN: usize = 4096;

/// Why a tier could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("cannot open tier file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot size tier file {path} to {capacity} bytes")]
    Resize {
        path: PathBuf,
        capacity: u64,
        #[source]
        source: io::Error,
    },
    #[error("tier file {path} holds {actual} bytes, less than its capacity {capacity}")]
    TooSmall {
        path: PathBuf,
        actual: u64,
        capacity: u64,
    },
}

/// Whether `file` lives in RAM already (tmpfs).
fn is_memory_backed(file: &File) -> bool {
    use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
    fstatfs(file).is_ok_and(|stats| stats.filesystem_type() == TMPFS_MAGIC)
}

/// An open tier.
#[derive(Debug)]
pub struct TierFile {
    pub name: String,
    pub path: PathBuf,
    pub capacity: u64,
    buffered: File,
    direct: Option<File>,
    /// The file lives on tmpfs: a read is a memory copy that cannot block on a device.
    memory_backed: bool,
}

impl TierFile {
    /// Opens (and with `create`, creates and sizes) the tier file.
    pub fn open(
        name: &str,
        path: &Path,
        capacity: u64,
        create: bool,
    ) -> Result<TierFile, TierError> {
        let open_error = |source| TierError::Open {
            path: path.to_path_buf(),
            source,
        };
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)
            .map_err(open_error)?;
        let actual = buffered.metadata().map_err(open_error)?.len();
        let is_regular = buffered.metadata().map_err(open_error)?.is_file();
        if create && is_regular && actual < capacity {
            buffered
                .set_len(capacity)
                .map_err(|source| TierError::Resize {
                    path: path.to_path_buf(),
                    capacity,
                    source,
                })?;
        } else if is_regular && actual < capacity {
            return Err(TierError::TooSmall {
                path: path.to_path_buf(),
                actual,
                capacity,
            });
        }
        // tmpfs gains nothing from O_DIRECT, and io_uring cannot complete direct reads on it inline
        // (they are punted to worker threads), so it gets the buffered fd only. Elsewhere, EINVAL from
        // the open means no direct I/O: the buffered fd serves alone.
        let memory_backed = is_memory_backed(&buffered);
        let direct = if memory_backed {
            None
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        };
        Ok(TierFile {
            name: name.to_string(),
            path: path.to_path_buf(),
            capacity,
            buffered,
            direct,
            memory_backed,
        })
    }

    /// Whether this tier bypasses the page cache for aligned requests.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Whether the file lives in RAM (tmpfs), so reading it never waits for a device.
    pub fn is_memory_backed(&self) -> bool {
        self.memory_backed
    }

    /// The descriptor to use for a request with this buffer address, file offset and length.
    pub fn fd_for(&self, buf_addr: usize, offset: u64, len: usize) -> RawFd {
        self.file_for(buf_addr, offset, len).as_raw_fd()
    }

    fn file_for(&self, buf_addr: usize, offset: u64, len: usize) -> &File {
        let aligned = buf_addr.is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
            && len.is_multiple_of(DIRECT_ALIGN);
        match &self.direct {
            Some(direct) if aligned => direct,
            _ => &self.buffered,
        }
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file_for(buf.as_ptr() as usize, offset, buf.len())
            .read_exact_at(buf, offset)
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file_for(buf.as_ptr() as usize, offset, buf.len())
            .write_all_at(buf, offset)
    }

    /// Makes `len` bytes at `offset` read as zeros: a hole punched where the file system supports it
    /// (cheap, frees space), written zeros elsewhere.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(
            &self.buffered,
            punch,
            offset as libc::off_t,
            len as libc::off_t,
        )
        .is_ok()
        {
            return Ok(());
        }
        const CHUNK: u64 = 1 << 20;
        let zeros = AlignedBuf::zeroed(CHUNK.min(len) as usize);
        let mut done = 0;
        while done < len {
            let piece = CHUNK.min(len - done) as usize;
            self.write_all_at(&zeros.as_slice()[..piece], offset + done)?;
            done += piece as u64;
        }
        Ok(())
    }

    /// Makes completed writes durable (both descriptors share the inode, one fdatasync covers both).
    pub fn sync_data(&self) -> io::Result<()> {
        self.buffered.sync_data()
    }
}

/// A heap buffer whose start is aligned for direct I/O. Its storage never moves while it lives, so its
/// address may be handed to the kernel for the duration of an asynchronous request.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes starting on a [`DIRECT_ALIGN`] boundary.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let misalignment = storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = if misalignment == 0 {
            0
        } else {
            DIRECT_ALIGN - misalignment
        };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_aligned_buf_is_aligned_and_sized() {
        for len in [0, 1, 4096, 12345] {
            let mut buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_slice().len(), len);
            assert_eq!(buf.as_mut_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        }
    }

    #[test]
    fn test_tier_file_create_sizes_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t0");
        let tier = TierFile::open("fast", &path, 1 << 20, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let mut data = AlignedBuf::zeroed(8192);
        data.as_mut_slice().fill(0xAB);
        tier.write_all_at(data.as_slice(), 4096).unwrap();
        tier.write_all_at(b"xyz", 3).unwrap();
        let mut back = AlignedBuf::zeroed(8192);
        tier.read_exact_at(back.as_mut_slice(), 4096).unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0xAB));
        let mut small = [0u8; 3];
        tier.read_exact_at(&mut small, 3).unwrap();
        assert_eq!(&small, b"xyz");
        tier.zero_range(4096, 4096).unwrap();
        tier.read_exact_at(back.as_mut_slice(), 4096).unwrap();
        assert!(back.as_slice()[..4096].iter().all(|&b| b == 0));
        assert!(back.as_slice()[4096..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn test_tier_file_open_rejects_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t0");
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(matches!(
            TierFile::open("x", &path, 4096, false),
            Err(TierError::TooSmall { .. })
        ));
    }
}
