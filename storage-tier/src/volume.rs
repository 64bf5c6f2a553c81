//! A tiered volume: fixed-size extents placed on an ordered list of tiers (fastest first).
//!
//! I/O is split in two steps so that any engine can run it: [`Volume::plan_read`] / [`Volume::plan_write`]
//! resolve a request into per-tier [`Segment`]s and hold the touched extents open (an [`IoPlan`]); the
//! engine ([`crate::engine`] synchronously, [`crate::uring`] on io_uring) performs the segments and drops
//! the plan when they completed.
//!
//! Moves never block guest I/O for their duration. Each extent has an in-flight counter, a `moving` flag
//! and a write generation. The mover copies the extent without any lock, then raises `moving`, waits for
//! in-flight requests on that extent to drain (new ones wait for the flag), and switches the map only if
//! the generation did not change since before the copy; otherwise the copy is dropped and retried later.
//! A write that raced the copy is therefore never lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::extent_map::{ExtentMap, ExtentMapError, Location};
use crate::heat::HeatTable;
use crate::meta::{MapStore, MetaError, Superblock, TierSpec, VolumeLock, FORMAT_VERSION};
use crate::tier::{AlignedBuf, TierError, TierFile};
use crate::{check_range, BlockBackend, BlockError};

/// Default extent size: 1 MiB.
pub const DEFAULT_EXTENT_SIZE: u64 = 1 << 20;

/// Why a volume could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume layout: {0}")]
    Layout(String),
    #[error("volume directory {0} already holds a volume")]
    Exists(PathBuf),
    #[error("cannot create volume directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume metadata error")]
    Meta(#[source] MetaError),
    #[error("tier {name} is unusable")]
    Tier {
        name: String,
        #[source]
        source: TierError,
    },
    #[error("extent map refused the operation")]
    Map(#[source] ExtentMapError),
    #[error("could not write the initial extent map")]
    Commit(#[source] BlockError),
}

/// One piece of a planned request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// `len` bytes at `file_offset` of tier `tier`, at `buf_offset` in the request buffer.
    Tier {
        tier: usize,
        file_offset: u64,
        buf_offset: usize,
        len: usize,
    },
    /// An unallocated range: reads as zeros.
    Zero { buf_offset: usize, len: usize },
}

/// A resolved request. While it lives, the extents it touches cannot be moved.
#[derive(Debug)]
pub struct IoPlan {
    pub segments: Vec<Segment>,
    guard: ExtentGuard,
}

impl IoPlan {
    /// Marks the request as failed: newly allocated extents stay provisional (never committed).
    pub fn mark_failed(&mut self) {
        self.guard.failed = true;
    }
}

#[derive(Debug)]
struct ExtentGuard {
    shared: Arc<Shared>,
    extents: Vec<u64>,
    write: bool,
    allocated: Vec<u64>,
    failed: bool,
}

impl Drop for ExtentGuard {
    fn drop(&mut self) {
        // Any completed write confirms its extents (a provisional slot is zeroed at allocation, so it
        // holds nothing but this extent's data), including extents whose allocating write failed.
        if self.write && !self.failed {
            let mut map = self.shared.lock_map();
            for &extent in &self.extents {
                map.confirm(extent);
            }
        }
        for &extent in &self.extents {
            let sync = &self.shared.sync[extent as usize];
            if self.write {
                sync.generation.fetch_add(1, Ordering::SeqCst);
            }
            sync.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Default)]
struct ExtentSync {
    inflight: AtomicU32,
    moving: AtomicBool,
    generation: AtomicU64,
    /// Heat tick of the extent's last completed move (0: never moved since open).
    last_move_tick: AtomicU32,
}

/// Cumulative counters (since open).
#[derive(Debug, Default)]
pub struct VolumeCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub promotions: AtomicU64,
    pub demotions: AtomicU64,
    pub moved_bytes: AtomicU64,
    pub move_races: AtomicU64,
    pub commits: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    superblock: Superblock,
    tiers: Vec<TierFile>,
    map: Mutex<ExtentMap>,
    store: Mutex<MapStore>,
    sync: Vec<ExtentSync>,
    heat: HeatTable,
    counters: VolumeCounters,
    tier_ios: Vec<AtomicU64>,
    read_only: bool,
    /// Set by [`Volume::close`]: new writes and moves are refused.
    closing: AtomicBool,
    _lock: Option<VolumeLock>,
}

impl Shared {
    fn lock_map(&self) -> MutexGuard<'_, ExtentMap> {
        // A panic while holding the map lock leaves the map itself consistent (every method finishes its
        // bookkeeping before returning), so continue with the data rather than propagate the poison.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn commit(&self, clean: bool) -> Result<(), BlockError> {
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pending = {
            let mut map = self.lock_map();
            (map.is_dirty() || clean).then(|| map.begin_commit(store.next_sequence(), clean))
        };
        // Data first: every slot the record points at must hold its bytes before the record is durable.
        for tier in &self.tiers {
            if let Err(source) = tier.sync_data() {
                if let Some((_, released)) = pending {
                    self.lock_map().abort_commit(released);
                }
                return Err(BlockError::Io { offset: 0, source });
            }
        }
        if let Some((record, released)) = pending {
            if let Err(error) = store.write(&record) {
                self.lock_map().abort_commit(released);
                return Err(BlockError::Metadata(Box::new(error)));
            }
            self.lock_map().release(released);
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits until `extent` is not being switched by a move, then counts this request in.
    fn enter(&self, extent: u64) {
        let sync = &self.sync[extent as usize];
        loop {
            if sync.moving.load(Ordering::SeqCst) {
                std::thread::yield_now();
                continue;
            }
            sync.inflight.fetch_add(1, Ordering::SeqCst);
            if !sync.moving.load(Ordering::SeqCst) {
                return;
            }
            sync.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts a request in on every extent of `extents`, waiting out moves (`wait`) or giving up at the
    /// first extent being switched (then nothing stays counted).
    fn enter_all(&self, extents: &[u64], wait: bool) -> bool {
        for (index, &extent) in extents.iter().enumerate() {
            if wait {
                self.enter(extent);
            } else if !self.try_enter(extent) {
                for &entered in &extents[..index] {
                    self.sync[entered as usize]
                        .inflight
                        .fetch_sub(1, Ordering::SeqCst);
                }
                return false;
            }
        }
        for &extent in extents {
            self.heat.record(extent);
        }
        true
    }

    /// [`Shared::enter`] without waiting: false when a move is switching the extent.
    fn try_enter(&self, extent: u64) -> bool {
        let sync = &self.sync[extent as usize];
        if sync.moving.load(Ordering::SeqCst) {
            return false;
        }
        sync.inflight.fetch_add(1, Ordering::SeqCst);
        if sync.moving.load(Ordering::SeqCst) {
            sync.inflight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Tries to take `extent` exclusively (no request in flight on it until [`Shared::release_exclusive`]).
    /// Gives up after a short wait: an event-loop thread may be spinning in [`Shared::enter`] for this
    /// extent while it still owns an in-flight request on it that only it can complete.
    fn try_acquire_exclusive(&self, extent: u64) -> bool {
        let sync = &self.sync[extent as usize];
        if sync
            .moving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2);
        while sync.inflight.load(Ordering::SeqCst) != 0 {
            if std::time::Instant::now() > deadline {
                sync.moving.store(false, Ordering::SeqCst);
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Takes `extent` exclusively, retrying [`Shared::try_acquire_exclusive`] until it succeeds.
    fn acquire_exclusive(&self, extent: u64) {
        while !self.try_acquire_exclusive(extent) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    fn release_exclusive(&self, extent: u64) {
        self.sync[extent as usize]
            .moving
            .store(false, Ordering::SeqCst);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(error) = self.commit(true) {
                tracing::error!(error = %error, "could not record a clean close; the next open will assume a crash");
            }
        }
    }
}

/// What happened to one requested move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOutcome {
    Moved,
    /// Not allocated, provisional, or already on that tier.
    Skipped,
    /// The destination tier has no free slot.
    NoSpace,
    /// A write raced the copy; the copy was dropped.
    Raced,
}

/// An open volume. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Volume {
    shared: Arc<Shared>,
}

/// Per-tier figures for `tiers` / `stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TierStats {
    pub name: String,
    pub path: PathBuf,
    pub capacity: u64,
    pub slots: u32,
    pub used_extents: usize,
    pub direct_io: bool,
    pub ios: u64,
    pub hit_ratio: f64,
}

/// A snapshot of the volume's state, written to `stats.json` by a serving process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeStats {
    pub size: u64,
    pub extent_size: u64,
    pub policy: String,
    pub tiers: Vec<TierStats>,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub promotions: u64,
    pub demotions: u64,
    pub moved_bytes: u64,
    pub move_races: u64,
    pub commits: u64,
    /// Decayed heat per extent.
    pub heat: Vec<f64>,
    /// Tier index per extent, -1 when unallocated.
    pub placement: Vec<i16>,
}

fn parse_tiers(tiers: &[TierSpec], extent_size: u64) -> Result<(), VolumeError> {
    if tiers.is_empty() || tiers.len() > 16 {
        return Err(VolumeError::Layout(
            "a volume needs between 1 and 16 tiers".into(),
        ));
    }
    for tier in tiers {
        if tier.capacity < extent_size {
            return Err(VolumeError::Layout(format!(
                "tier {} is smaller than one extent",
                tier.name
            )));
        }
    }
    Ok(())
}

impl Volume {
    /// Creates a volume in `dir` (created if missing) and opens it.
    pub fn create(
        dir: &Path,
        size: u64,
        extent_size: u64,
        tiers: Vec<TierSpec>,
    ) -> Result<Volume, VolumeError> {
        if size == 0 || extent_size == 0 || !extent_size.is_power_of_two() || extent_size < 4096 {
            return Err(VolumeError::Layout(
                "size must be > 0 and extent size a power of two >= 4 KiB".into(),
            ));
        }
        parse_tiers(&tiers, extent_size)?;
        let superblock = Superblock {
            version: FORMAT_VERSION,
            size,
            extent_size,
            tiers,
        };
        let total_slots: u64 = superblock.tier_slots().iter().map(|&s| s as u64).sum();
        if total_slots < superblock.extent_count() {
            return Err(VolumeError::Layout(format!(
                "tiers hold {total_slots} extents but the volume needs {}",
                superblock.extent_count()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| VolumeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        if dir.join(crate::meta::SUPERBLOCK_FILE).exists() {
            return Err(VolumeError::Exists(dir.to_path_buf()));
        }
        let lock = VolumeLock::acquire(dir).map_err(VolumeError::Meta)?;
        let tier_files = open_tiers(&superblock, true)?;
        superblock.write(dir).map_err(VolumeError::Meta)?;
        let map = ExtentMap::new(superblock.extent_count(), &superblock.tier_slots());
        let volume = Volume::assemble(
            dir,
            superblock,
            tier_files,
            map,
            MapStore::create(dir),
            false,
            Some(lock),
        );
        volume.shared.commit(false).map_err(VolumeError::Commit)?;
        Ok(volume)
    }

    /// Opens an existing volume. Read-write opens hold the volume's lock; read-only opens do not.
    pub fn open(dir: &Path, read_only: bool) -> Result<Volume, VolumeError> {
        // The superblock never changes after create, so it can be read before taking the lock; a missing
        // volume is then reported as a missing volume.json rather than as a lock problem.
        let superblock = Superblock::read(dir).map_err(VolumeError::Meta)?;
        let lock = if read_only {
            None
        } else {
            Some(VolumeLock::acquire(dir).map_err(VolumeError::Meta)?)
        };
        let (store, mut map, clean) =
            MapStore::load(dir, &superblock).map_err(VolumeError::Meta)?;
        if !clean && !read_only {
            tracing::warn!(volume = %dir.display(), "volume was not closed cleanly; every allocated extent counts as changed");
            map.mark_all_allocated_changed();
        }
        let tier_files = open_tiers(&superblock, false)?;
        let volume = Volume::assemble(dir, superblock, tier_files, map, store, read_only, lock);
        if !read_only {
            // Record "open" so that a crash from here on is recognised at the next open.
            volume.shared.commit(false).map_err(VolumeError::Commit)?;
        }
        Ok(volume)
    }

    fn assemble(
        dir: &Path,
        superblock: Superblock,
        tiers: Vec<TierFile>,
        map: ExtentMap,
        store: MapStore,
        read_only: bool,
        lock: Option<VolumeLock>,
    ) -> Volume {
        let extent_count = superblock.extent_count();
        let heat = HeatTable::new(extent_count);
        if let Ok(stats) = read_stats(dir) {
            if stats.heat.len() as u64 == extent_count {
                heat.seed(&stats.heat);
            }
        }
        let shared = Shared {
            dir: dir.to_path_buf(),
            tier_ios: tiers.iter().map(|_| AtomicU64::new(0)).collect(),
            superblock,
            tiers,
            map: Mutex::new(map),
            store: Mutex::new(store),
            sync: (0..extent_count).map(|_| ExtentSync::default()).collect(),
            heat,
            counters: VolumeCounters::default(),
            read_only,
            closing: AtomicBool::new(false),
            _lock: lock,
        };
        Volume {
            shared: Arc::new(shared),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn superblock(&self) -> &Superblock {
        &self.shared.superblock
    }

    pub fn extent_size(&self) -> u64 {
        self.shared.superblock.extent_size
    }

    pub fn extent_count(&self) -> u64 {
        self.shared.superblock.extent_count()
    }

    pub fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    pub fn tier(&self, index: usize) -> &TierFile {
        &self.shared.tiers[index]
    }

    pub fn tier_count(&self) -> usize {
        self.shared.tiers.len()
    }

    pub fn heat(&self) -> &HeatTable {
        &self.shared.heat
    }

    pub fn counters(&self) -> &VolumeCounters {
        &self.shared.counters
    }

    /// A copy of the current extent map.
    pub fn map_snapshot(&self) -> ExtentMap {
        self.shared.lock_map().clone()
    }

    fn extents_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let extent_size = self.extent_size();
        if len == 0 {
            return 0..0;
        }
        offset / extent_size..(offset + len - 1) / extent_size + 1
    }

    /// Resolves a read of `len` bytes at `offset`.
    pub fn plan_read(&self, offset: u64, len: u64) -> Result<IoPlan, BlockError> {
        self.plan_read_inner(offset, len, true)
    }

    /// [`Volume::plan_read`] for event loops: instead of waiting while a move switches one of the
    /// extents, fails with [`BlockError::Busy`] (the caller may hold in-flight requests the move waits for).
    pub fn try_plan_read(&self, offset: u64, len: u64) -> Result<IoPlan, BlockError> {
        self.plan_read_inner(offset, len, false)
    }

    fn plan_read_inner(&self, offset: u64, len: u64, wait: bool) -> Result<IoPlan, BlockError> {
        check_range(offset, len, self.size())?;
        let shared = &self.shared;
        let extents: Vec<u64> = self.extents_of(offset, len).collect();
        if !shared.enter_all(&extents, wait) {
            return Err(BlockError::Busy);
        }
        let guard = ExtentGuard {
            shared: shared.clone(),
            extents,
            write: false,
            allocated: Vec::new(),
            failed: false,
        };
        let map = shared.lock_map();
        let segments = self.segments(&map, offset, len);
        drop(map);
        self.count(&segments);
        shared.counters.reads.fetch_add(1, Ordering::Relaxed);
        shared.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(IoPlan { segments, guard })
    }

    /// Resolves a write of `len` bytes at `offset`, allocating extents that were never written.
    pub fn plan_write(&self, offset: u64, len: u64) -> Result<IoPlan, BlockError> {
        self.plan_write_inner(offset, len, true)
    }

    /// [`Volume::plan_write`] without waiting for moves (see [`Volume::try_plan_read`]).
    pub fn try_plan_write(&self, offset: u64, len: u64) -> Result<IoPlan, BlockError> {
        self.plan_write_inner(offset, len, false)
    }

    fn plan_write_inner(&self, offset: u64, len: u64, wait: bool) -> Result<IoPlan, BlockError> {
        if self.shared.read_only || self.shared.closing.load(Ordering::SeqCst) {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size())?;
        let shared = &self.shared;
        let extents: Vec<u64> = self.extents_of(offset, len).collect();
        if !shared.enter_all(&extents, wait) {
            return Err(BlockError::Busy);
        }
        let mut guard = ExtentGuard {
            shared: shared.clone(),
            extents,
            write: true,
            allocated: Vec::new(),
            failed: false,
        };
        let tier_order: Vec<u8> = (0..self.tier_count() as u8).collect();
        let mut map = shared.lock_map();
        for index in 0..guard.extents.len() {
            let extent = guard.extents[index];
            map.mark_changed(extent);
            if map.entries()[extent as usize].location.is_some() {
                continue;
            }
            let allocated = map
                .allocate(extent, &tier_order)
                .map_err(|_| BlockError::NoSpace);
            // The slot may hold a previous extent's bytes. Zero it under the map lock, before any write
            // is planned into it.
            let zeroed = allocated.and_then(|location| {
                guard.allocated.push(extent);
                self.zero_slot(location, extent)
            });
            if let Err(error) = zeroed {
                guard.failed = true;
                return Err(error);
            }
        }
        let segments = self.segments(&map, offset, len);
        drop(map);
        self.count(&segments);
        shared.counters.writes.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        Ok(IoPlan { segments, guard })
    }

    /// Zeroes a freshly allocated slot, so that until the extent's writes land it reads as zeros and
    /// never as the slot's previous occupant (whatever order concurrent first writes complete in).
    fn zero_slot(&self, location: Location, extent: u64) -> Result<(), BlockError> {
        let extent_size = self.extent_size();
        self.shared.tiers[location.tier as usize]
            .zero_range(location.slot as u64 * extent_size, extent_size)
            .map_err(|source| BlockError::Io {
                offset: extent * extent_size,
                source,
            })
    }

    fn segments(&self, map: &ExtentMap, offset: u64, len: u64) -> Vec<Segment> {
        let extent_size = self.extent_size();
        let mut segments = Vec::new();
        let mut position = offset;
        let end = offset + len;
        while position < end {
            let extent = position / extent_size;
            let within = position % extent_size;
            let piece = (extent_size - within).min(end - position);
            let buf_offset = (position - offset) as usize;
            let location = map.entries()[extent as usize].location;
            segments.push(match location {
                Some(location) => Segment::Tier {
                    tier: location.tier as usize,
                    file_offset: location.slot as u64 * extent_size + within,
                    buf_offset,
                    len: piece as usize,
                },
                None => Segment::Zero {
                    buf_offset,
                    len: piece as usize,
                },
            });
            position += piece;
        }
        segments
    }

    fn count(&self, segments: &[Segment]) {
        for segment in segments {
            if let Segment::Tier { tier, .. } = segment {
                self.shared.tier_ios[*tier].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Durably records every completed write and the extent map.
    pub fn commit(&self) -> Result<(), BlockError> {
        self.shared.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if self.shared.read_only {
            return Ok(());
        }
        self.shared.commit(false)
    }

    /// Unmaps whole extents in the range and zeroes the partial ends.
    fn unmap_range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.shared.read_only || self.shared.closing.load(Ordering::SeqCst) {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size())?;
        self.shared
            .counters
            .discards
            .fetch_add(1, Ordering::Relaxed);
        let extent_size = self.extent_size();
        let end = offset + len;
        let mut position = offset;
        while position < end {
            let extent = position / extent_size;
            let extent_end = (extent + 1) * extent_size;
            let piece_end = extent_end.min(end);
            let whole = position.is_multiple_of(extent_size)
                && (piece_end == extent_end || piece_end == self.size());
            if whole {
                self.shared.acquire_exclusive(extent);
                let result = {
                    let mut map = self.shared.lock_map();
                    map.mark_changed(extent);
                    map.unmap(extent)
                };
                self.shared.sync[extent as usize]
                    .generation
                    .fetch_add(1, Ordering::SeqCst);
                self.shared.release_exclusive(extent);
                result.map_err(|_| BlockError::OutOfRange {
                    offset,
                    len,
                    size: self.size(),
                })?;
            } else {
                let zeros = AlignedBuf::zeroed((piece_end - position) as usize);
                self.write_at(zeros.as_slice(), position)?;
            }
            position = piece_end;
        }
        Ok(())
    }

    /// Moves `extent` to `to_tier` (see the module comment for why this never loses a racing write).
    pub fn move_extent(&self, extent: u64, to_tier: u8) -> Result<MoveOutcome, BlockError> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::SeqCst) {
            return Ok(MoveOutcome::Skipped);
        }
        let (from, to) = {
            let mut map = shared.lock_map();
            let entry = *map.entry(extent).map_err(|_| BlockError::NoSpace)?;
            let Some(from) = entry
                .location
                .filter(|l| !entry.provisional && l.tier != to_tier)
            else {
                return Ok(MoveOutcome::Skipped);
            };
            match map.reserve(to_tier) {
                Ok(to) => (from, to),
                Err(_) => return Ok(MoveOutcome::NoSpace),
            }
        };
        let generation = shared.sync[extent as usize]
            .generation
            .load(Ordering::SeqCst);
        let extent_size = self.extent_size();
        let mut buf = AlignedBuf::zeroed(extent_size as usize);
        let copied = shared.tiers[from.tier as usize]
            .read_exact_at(buf.as_mut_slice(), from.slot as u64 * extent_size)
            .and_then(|()| {
                shared.tiers[to.tier as usize]
                    .write_all_at(buf.as_slice(), to.slot as u64 * extent_size)
            });
        if let Err(source) = copied {
            shared.lock_map().unreserve(to);
            return Err(BlockError::Io {
                offset: extent * extent_size,
                source,
            });
        }
        if !shared.try_acquire_exclusive(extent) {
            shared.lock_map().unreserve(to);
            shared.counters.move_races.fetch_add(1, Ordering::Relaxed);
            return Ok(MoveOutcome::Raced);
        }
        let outcome = {
            let mut map = shared.lock_map();
            let unchanged = shared.sync[extent as usize]
                .generation
                .load(Ordering::SeqCst)
                == generation
                && map.entries()[extent as usize].location == Some(from);
            if unchanged {
                map.relocate(extent, to).map_err(|_| BlockError::NoSpace)?;
                MoveOutcome::Moved
            } else {
                map.unreserve(to);
                MoveOutcome::Raced
            }
        };
        shared.release_exclusive(extent);
        let counters = &shared.counters;
        match outcome {
            MoveOutcome::Moved => {
                shared.sync[extent as usize]
                    .last_move_tick
                    .store(shared.heat.current_tick(), Ordering::Relaxed);
                let counter = if to.tier < from.tier {
                    &counters.promotions
                } else {
                    &counters.demotions
                };
                counter.fetch_add(1, Ordering::Relaxed);
                counters
                    .moved_bytes
                    .fetch_add(extent_size, Ordering::Relaxed);
            }
            _ => {
                counters.move_races.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(outcome)
    }

    /// Closes the volume for process exit while other threads may still hold it: refuses new writes and
    /// moves, waits (up to `timeout`) for in-flight requests, and commits with the clean-close mark so
    /// the next open trusts changed-block tracking.
    pub fn close(&self, timeout: std::time::Duration) -> Result<(), BlockError> {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::SeqCst);
        if shared.read_only {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + timeout;
        while shared
            .sync
            .iter()
            .any(|s| s.inflight.load(Ordering::SeqCst) != 0)
        {
            if std::time::Instant::now() > deadline {
                // Some request is stuck: leave the volume marked unclean rather than lie.
                return shared.commit(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        shared.commit(true)
    }

    /// Heat tick at which `extent` last moved (0: not since open).
    pub fn last_move_tick(&self, extent: u64) -> u32 {
        self.shared
            .sync
            .get(extent as usize)
            .map_or(0, |s| s.last_move_tick.load(Ordering::Relaxed))
    }

    /// Names a checkpoint for changed-block tracking and commits it.
    pub fn checkpoint(&self, name: &str) -> Result<(), VolumeError> {
        self.shared
            .lock_map()
            .checkpoint(name)
            .map_err(VolumeError::Map)?;
        self.shared.commit(false).map_err(VolumeError::Commit)
    }

    /// Extents changed since checkpoint `name`.
    pub fn changed_since(&self, name: &str) -> Result<Vec<u64>, ExtentMapError> {
        self.shared.lock_map().changed_since(name)
    }

    /// Current figures, heat and placement.
    pub fn stats(&self, policy: &str) -> VolumeStats {
        let map = self.map_snapshot();
        let total_ios: u64 = self
            .shared
            .tier_ios
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        let tiers = self
            .shared
            .tiers
            .iter()
            .enumerate()
            .map(|(index, tier)| {
                let ios = self.shared.tier_ios[index].load(Ordering::Relaxed);
                TierStats {
                    name: tier.name.clone(),
                    path: tier.path.clone(),
                    capacity: tier.capacity,
                    slots: map.tier_slots(index as u8),
                    used_extents: map.used_slots(index as u8),
                    direct_io: tier.is_direct(),
                    ios,
                    hit_ratio: if total_ios == 0 {
                        0.0
                    } else {
                        ios as f64 / total_ios as f64
                    },
                }
            })
            .collect();
        let c = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        VolumeStats {
            size: self.size(),
            extent_size: self.extent_size(),
            policy: policy.to_string(),
            tiers,
            reads: load(&c.reads),
            writes: load(&c.writes),
            flushes: load(&c.flushes),
            discards: load(&c.discards),
            bytes_read: load(&c.bytes_read),
            bytes_written: load(&c.bytes_written),
            promotions: load(&c.promotions),
            demotions: load(&c.demotions),
            moved_bytes: load(&c.moved_bytes),
            move_races: load(&c.move_races),
            commits: load(&c.commits),
            heat: self.shared.heat.heats(),
            placement: map
                .entries()
                .iter()
                .map(|e| e.location.map_or(-1, |l| l.tier as i16))
                .collect(),
        }
    }
}

/// Reads the `stats.json` a serving process last wrote.
pub fn read_stats(dir: &Path) -> Result<VolumeStats, MetaError> {
    let path = dir.join(crate::meta::STATS_FILE);
    let text = std::fs::read(&path).map_err(|source| MetaError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| MetaError::Superblock { path, source })
}

fn open_tiers(superblock: &Superblock, create: bool) -> Result<Vec<TierFile>, VolumeError> {
    superblock
        .tiers
        .iter()
        .map(|spec| {
            TierFile::open(&spec.name, &spec.path, spec.capacity, create).map_err(|source| {
                VolumeError::Tier {
                    name: spec.name.clone(),
                    source,
                }
            })
        })
        .collect()
}

impl BlockBackend for Volume {
    fn size(&self) -> u64 {
        self.shared.superblock.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let plan = self.plan_read(offset, buf.len() as u64)?;
        crate::engine::read_segments(self, &plan.segments, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let mut plan = self.plan_write(offset, buf.len() as u64)?;
        let result = crate::engine::write_segments(self, &plan.segments, buf, offset);
        if result.is_err() {
            plan.mark_failed();
        }
        result
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.commit()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.unmap_range(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.unmap_range(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small_volume(dir: &Path, fast_extents: u64) -> Volume {
        let tiers = vec![
            TierSpec {
                name: "fast".into(),
                path: dir.join("fast.img"),
                capacity: fast_extents * 65536,
            },
            TierSpec {
                name: "slow".into(),
                path: dir.join("slow.img"),
                capacity: 16 * 65536,
            },
        ];
        Volume::create(&dir.join("vol"), 16 * 65536, 65536, tiers).unwrap()
    }

    #[test]
    fn test_volume_reads_zero_then_written_data_across_extents() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 2);
        let mut buf = vec![1u8; 4096];
        volume.read_at(&mut buf, 100).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        volume.write_at(&data, 60_000).unwrap();
        let mut back = vec![0u8; data.len()];
        volume.read_at(&mut back, 60_000).unwrap();
        assert_eq!(back, data);
        // Bytes around the write in freshly allocated extents read as zeros.
        let mut before = vec![9u8; 1000];
        volume.read_at(&mut before, 59_000).unwrap();
        assert!(before.iter().all(|&b| b == 0));
    }

    #[test]
    fn test_volume_rejects_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 2);
        let mut buf = vec![0u8; 10];
        assert!(matches!(
            volume.read_at(&mut buf, 16 * 65536 - 5),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            volume.write_at(&buf, u64::MAX - 2),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn test_volume_survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let volume = small_volume(dir.path(), 2);
            volume.write_at(&[7u8; 70_000], 3 * 65536).unwrap();
            volume.flush().unwrap();
        }
        let volume = Volume::open(&dir.path().join("vol"), false).unwrap();
        let mut back = vec![0u8; 70_000];
        volume.read_at(&mut back, 3 * 65536).unwrap();
        assert!(back.iter().all(|&b| b == 7));
    }

    #[test]
    fn test_volume_second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _volume = small_volume(dir.path(), 2);
        assert!(Volume::open(&dir.path().join("vol"), false).is_err());
        assert!(Volume::open(&dir.path().join("vol"), true).is_ok());
    }

    #[test]
    fn test_volume_move_keeps_data_and_changes_tier() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 1);
        volume.write_at(&[1u8; 65536], 0).unwrap();
        volume.write_at(&[2u8; 65536], 65536).unwrap();
        let map = volume.map_snapshot();
        assert_eq!(map.entry(0).unwrap().location.unwrap().tier, 0);
        assert_eq!(map.entry(1).unwrap().location.unwrap().tier, 1);
        assert_eq!(volume.move_extent(1, 0).unwrap(), MoveOutcome::NoSpace);
        assert_eq!(volume.move_extent(0, 1).unwrap(), MoveOutcome::Moved);
        volume.flush().unwrap();
        assert_eq!(volume.move_extent(1, 0).unwrap(), MoveOutcome::Moved);
        let mut back = vec![0u8; 65536];
        volume.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 1));
        volume.read_at(&mut back, 65536).unwrap();
        assert!(back.iter().all(|&b| b == 2));
        assert_eq!(volume.counters().promotions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn test_volume_write_racing_moves_is_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 4);
        volume.write_at(&[0u8; 65536], 0).unwrap();
        let writer = {
            let volume = volume.clone();
            std::thread::spawn(move || {
                for round in 1..=400u32 {
                    let offset = (round as u64 * 4096) % 65536;
                    volume
                        .write_at(&round.to_le_bytes().repeat(1024), offset)
                        .unwrap();
                }
            })
        };
        let mut tier = 1u8;
        while !writer.is_finished() {
            let _ = volume.move_extent(0, tier).unwrap();
            volume.flush().unwrap();
            tier = 1 - tier;
        }
        writer.join().unwrap();
        // The last write to each 4 KiB block must be there.
        for block in 0..16u64 {
            let last = (1..=400u32)
                .rev()
                .find(|r| (*r as u64 * 4096) % 65536 == block * 4096)
                .unwrap();
            let mut back = vec![0u8; 4096];
            volume.read_at(&mut back, block * 4096).unwrap();
            assert_eq!(back, last.to_le_bytes().repeat(1024), "block {block}");
        }
    }

    #[test]
    fn test_volume_close_refuses_writes_and_marks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 2);
        volume.write_at(&[3u8; 100], 0).unwrap();
        volume.checkpoint("c").unwrap();
        volume.write_at(&[4u8; 100], 5 * 65536).unwrap();
        volume.close(std::time::Duration::from_secs(1)).unwrap();
        assert!(matches!(
            volume.write_at(&[1u8; 10], 0),
            Err(BlockError::ReadOnly)
        ));
        drop(volume);
        // Clean: only the extent written after the checkpoint counts as changed.
        let reopened = Volume::open(&dir.path().join("vol"), false).unwrap();
        assert_eq!(reopened.changed_since("c").unwrap(), vec![5]);
    }

    #[test]
    fn test_volume_unclean_open_marks_all_allocated_changed() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 2);
        volume.write_at(&[3u8; 100], 0).unwrap();
        volume.write_at(&[3u8; 100], 2 * 65536).unwrap();
        volume.checkpoint("c").unwrap();
        // Simulate a crash: copy the map files while the volume is open (the "open" record is unclean).
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).unwrap();
        for name in ["volume.json", "map.0", "map.1"] {
            std::fs::copy(dir.path().join("vol").join(name), crashed.join(name)).unwrap();
        }
        drop(volume);
        let reopened = Volume::open(&crashed, false).unwrap();
        assert_eq!(reopened.changed_since("c").unwrap(), vec![0, 2]);
    }

    #[test]
    fn test_volume_discard_reads_zero_and_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        let volume = small_volume(dir.path(), 2);
        volume.write_at(&[5u8; 3 * 65536], 0).unwrap();
        volume.checkpoint("before").unwrap();
        volume.discard(1000, 2 * 65536).unwrap();
        let mut back = vec![0u8; 3 * 65536];
        volume.read_at(&mut back, 0).unwrap();
        assert!(back[..1000].iter().all(|&b| b == 5));
        assert!(back[1000..2 * 65536 + 1000].iter().all(|&b| b == 0));
        assert!(back[2 * 65536 + 1000..].iter().all(|&b| b == 5));
        assert_eq!(volume.changed_since("before").unwrap(), vec![0, 1, 2]);
        assert_eq!(volume.map_snapshot().entry(1).unwrap().location, None);
    }
}
