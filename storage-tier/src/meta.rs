//! On-disk layout of a volume directory:
//!
//! - `volume.json`: the superblock (size, extent size, tiers), written once by `create`.
//! - `map.0`, `map.1`: the extent map, copy-on-write. Commit `n` overwrites `map.(n % 2)` with a
//!   checksummed record and fdatasyncs it; opening picks the valid record with the highest sequence, so a
//!   commit torn by a crash leaves the previous one in force.
//! - `lock`: held (flock) by the process that has the volume open for writing.
//! - `stats.json`: heat and counters, rewritten by a serving process about once a second (for `tiers`,
//!   `heatmap`, `stats`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::extent_map::{ExtentMap, ExtentMapError};

pub const SUPERBLOCK_FILE: &str = "volume.json";
pub const LOCK_FILE: &str = "lock";
pub const STATS_FILE: &str = "stats.json";
pub const FORMAT_VERSION: u32 = 1;

/// Why metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("superblock {path} is not valid")]
    Superblock {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("volume format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("no valid extent map in {0} (both map.0 and map.1 are missing or corrupt)")]
    NoValidMap(PathBuf),
    #[error("the extent map in {path} does not match the superblock")]
    MapMismatch { path: PathBuf },
    #[error("volume {0} is in use by another process")]
    Locked(PathBuf),
    #[error("extent map refused the operation")]
    Map(#[source] ExtentMapError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tier as recorded in the superblock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TierSpec {
    pub name: String,
    pub path: PathBuf,
    pub capacity: u64,
}

/// The volume's immutable description.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub size: u64,
    pub extent_size: u64,
    /// Fastest first.
    pub tiers: Vec<TierSpec>,
}

impl Superblock {
    pub fn extent_count(&self) -> u64 {
        self.size.div_ceil(self.extent_size)
    }

    pub fn tier_slots(&self) -> Vec<u32> {
        self.tiers
            .iter()
            .map(|t| (t.capacity / self.extent_size).min(u32::MAX as u64) as u32)
            .collect()
    }

    pub fn write(&self, dir: &Path) -> Result<(), MetaError> {
        let path = dir.join(SUPERBLOCK_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| MetaError::Superblock {
            path: path.clone(),
            source,
        })?;
        write_durably(&path, &text)?;
        sync_dir(dir)
    }

    pub fn read(dir: &Path) -> Result<Superblock, MetaError> {
        let path = dir.join(SUPERBLOCK_FILE);
        let text = std::fs::read(&path).map_err(io_error(&path))?;
        let superblock: Superblock =
            serde_json::from_slice(&text).map_err(|source| MetaError::Superblock {
                path: path.clone(),
                source,
            })?;
        if superblock.version != FORMAT_VERSION {
            return Err(MetaError::Version(superblock.version));
        }
        Ok(superblock)
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), MetaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The two copy-on-write map files of a volume.
#[derive(Debug)]
pub struct MapStore {
    dir: PathBuf,
    next_sequence: u64,
}

impl MapStore {
    fn path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("map.{}", sequence % 2))
    }

    /// Starts a new volume's map store (the first commit is sequence 1).
    pub fn create(dir: &Path) -> MapStore {
        MapStore {
            dir: dir.to_path_buf(),
            next_sequence: 1,
        }
    }

    /// Loads the newest valid map. Returns it with whether the volume was closed cleanly.
    pub fn load(
        dir: &Path,
        superblock: &Superblock,
    ) -> Result<(MapStore, ExtentMap, bool), MetaError> {
        let mut best: Option<(ExtentMap, u64, bool)> = None;
        for index in 0..2 {
            let path = dir.join(format!("map.{index}"));
            let Ok(record) = std::fs::read(&path) else {
                continue;
            };
            let Ok(decoded) = ExtentMap::decode(&record) else {
                tracing::warn!(path = %path.display(), "ignoring a corrupt or torn extent map record");
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(_, sequence, _)| decoded.1 > *sequence)
            {
                best = Some(decoded);
            }
        }
        let (map, sequence, clean) =
            best.ok_or_else(|| MetaError::NoValidMap(dir.to_path_buf()))?;
        let slots_match =
            (0..map.tier_count()).all(|t| map.tier_slots(t as u8) == superblock.tier_slots()[t]);
        if map.extent_count() != superblock.extent_count()
            || map.tier_count() != superblock.tiers.len()
            || !slots_match
        {
            return Err(MetaError::MapMismatch {
                path: dir.to_path_buf(),
            });
        }
        Ok((
            MapStore {
                dir: dir.to_path_buf(),
                next_sequence: sequence + 1,
            },
            map,
            clean,
        ))
    }

    /// The sequence number the next commit will carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Durably writes a record produced by [`ExtentMap::begin_commit`] with [`MapStore::next_sequence`].
    pub fn write(&mut self, record: &[u8]) -> Result<(), MetaError> {
        let path = self.path(self.next_sequence);
        write_durably(&path, record)?;
        if self.next_sequence <= 2 {
            sync_dir(&self.dir)?;
        }
        self.next_sequence += 1;
        Ok(())
    }
}

/// An exclusive hold on a volume directory, released when dropped.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    pub fn acquire(dir: &Path) -> Result<VolumeLock, MetaError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(VolumeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(MetaError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => Err(MetaError::Io { path, source }),
        }
    }
}

/// Writes `bytes` to `dir/name` atomically (temporary file + rename), without fsync: for advisory files.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock() -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            size: 4 << 20,
            extent_size: 1 << 20,
            tiers: vec![TierSpec {
                name: "fast".into(),
                path: "/x".into(),
                capacity: 2 << 20,
            }],
        }
    }

    #[test]
    fn test_map_store_loads_newest_valid_record() {
        let dir = tempfile::tempdir().unwrap();
        let sb = superblock();
        let mut store = MapStore::create(dir.path());
        let mut map = ExtentMap::new(sb.extent_count(), &sb.tier_slots());
        for extent in 0..2 {
            map.allocate(extent, &[0]).unwrap();
            map.confirm(extent);
            let (record, _) = map.begin_commit(store.next_sequence(), false);
            store.write(&record).unwrap();
        }
        let (_, loaded, clean) = MapStore::load(dir.path(), &sb).unwrap();
        assert!(!clean);
        assert_eq!(loaded.entries(), map.entries());
        // Tear the newest record: the previous one must win.
        let newest = dir.path().join("map.0");
        let len = std::fs::metadata(&newest).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (store, loaded, _) = MapStore::load(dir.path(), &sb).unwrap();
        assert!(loaded.entry(0).unwrap().location.is_some());
        assert!(loaded.entry(1).unwrap().location.is_none());
        assert_eq!(store.next_sequence(), 2);
    }

    #[test]
    fn test_volume_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = VolumeLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            VolumeLock::acquire(dir.path()),
            Err(MetaError::Locked(_))
        ));
        drop(held);
        assert!(VolumeLock::acquire(dir.path()).is_ok());
    }
}
