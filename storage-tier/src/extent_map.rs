//! The extent map: which slot of which tier holds each extent, which slots are free, and which extents
//! changed since each named checkpoint. Pure data; persistence is in [`crate::meta`].
//!
//! Crash rules this type enforces (see docs/storage.md):
//! - A slot an extent leaves (move, discard) is *pending free* until the next commit: the last committed
//!   map may still point at it, so reusing it earlier could hand one extent's bytes to another after a crash.
//! - A freshly allocated extent is *provisional* until a write to it completes; commits record it as
//!   unallocated. Together with zeroing the slot at allocation, a crash cannot expose the slot's previous
//!   content through the new extent.

use std::collections::BTreeMap;

/// Where an extent's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub tier: u8,
    pub slot: u32,
}

/// One extent's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtentEntry {
    pub location: Option<Location>,
    /// Allocated but its first write has not completed: committed as unallocated.
    pub provisional: bool,
    /// The checkpoint epoch in which the extent last changed (changed-block tracking).
    pub changed_epoch: u32,
}

/// Why the map refused an operation or could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtentMapError {
    #[error("extent {0} is beyond the volume")]
    NoSuchExtent(u64),
    #[error("tier {0} does not exist")]
    NoSuchTier(u8),
    #[error("no free slot on tier {0}")]
    TierFull(u8),
    #[error("checkpoint {0:?} does not exist")]
    NoSuchCheckpoint(String),
    #[error("checkpoint {0:?} already exists")]
    CheckpointExists(String),
    #[error("map record is corrupt: {0}")]
    Corrupt(&'static str),
}

/// The in-memory extent map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    entries: Vec<ExtentEntry>,
    tier_slots: Vec<u32>,
    /// Free slots per tier, lowest last so `pop` hands out low slots first.
    free: Vec<Vec<u32>>,
    pending_free: Vec<Location>,
    epoch: u32,
    checkpoints: BTreeMap<String, u32>,
    dirty: bool,
}

const MAGIC: &[u8; 8] = b"HVSMAP01";
const UNALLOCATED: u8 = 0xFF;

impl ExtentMap {
    /// An empty map of `extent_count` unallocated extents over tiers of `tier_slots` slots each.
    pub fn new(extent_count: u64, tier_slots: &[u32]) -> ExtentMap {
        let entries = vec![ExtentEntry::default(); extent_count as usize];
        let mut map = ExtentMap {
            entries,
            tier_slots: tier_slots.to_vec(),
            free: Vec::new(),
            pending_free: Vec::new(),
            epoch: 1,
            checkpoints: BTreeMap::new(),
            dirty: true,
        };
        map.rebuild_free_lists();
        map
    }

    fn rebuild_free_lists(&mut self) {
        let mut used: Vec<Vec<bool>> = self
            .tier_slots
            .iter()
            .map(|&n| vec![false; n as usize])
            .collect();
        for location in self
            .entries
            .iter()
            .filter_map(|e| e.location)
            .chain(self.pending_free.iter().copied())
        {
            used[location.tier as usize][location.slot as usize] = true;
        }
        self.free = used
            .iter()
            .map(|tier| {
                (0..tier.len() as u32)
                    .rev()
                    .filter(|&slot| !tier[slot as usize])
                    .collect()
            })
            .collect();
    }

    pub fn extent_count(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn tier_count(&self) -> usize {
        self.tier_slots.len()
    }

    pub fn entry(&self, extent: u64) -> Result<&ExtentEntry, ExtentMapError> {
        self.entries
            .get(extent as usize)
            .ok_or(ExtentMapError::NoSuchExtent(extent))
    }

    pub fn entries(&self) -> &[ExtentEntry] {
        &self.entries
    }

    pub fn free_slots(&self, tier: u8) -> usize {
        self.free.get(tier as usize).map_or(0, Vec::len)
    }

    pub fn tier_slots(&self, tier: u8) -> u32 {
        self.tier_slots.get(tier as usize).copied().unwrap_or(0)
    }

    /// Extents currently placed on `tier` (including provisional ones).
    pub fn used_slots(&self, tier: u8) -> usize {
        self.entries
            .iter()
            .filter(|e| e.location.is_some_and(|l| l.tier == tier))
            .count()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Gives `extent` a slot on the first tier of `tier_order` that has one; the extent becomes
    /// provisional until [`ExtentMap::confirm`].
    pub fn allocate(&mut self, extent: u64, tier_order: &[u8]) -> Result<Location, ExtentMapError> {
        self.entry(extent)?;
        for &tier in tier_order {
            let Some(free) = self.free.get_mut(tier as usize) else {
                return Err(ExtentMapError::NoSuchTier(tier));
            };
            if let Some(slot) = free.pop() {
                let location = Location { tier, slot };
                let entry = &mut self.entries[extent as usize];
                if let Some(old) = entry.location.replace(location) {
                    self.pending_free.push(old);
                }
                entry.provisional = true;
                self.dirty = true;
                return Ok(location);
            }
        }
        Err(ExtentMapError::TierFull(
            tier_order.last().copied().unwrap_or(0),
        ))
    }

    /// The first write of a provisional extent completed: commits may now record it.
    pub fn confirm(&mut self, extent: u64) {
        if let Some(entry) = self.entries.get_mut(extent as usize) {
            if entry.provisional {
                entry.provisional = false;
                self.dirty = true;
            }
        }
    }

    /// Takes a free slot on `tier` for a move; the slot stays reserved until [`ExtentMap::relocate`] or
    /// [`ExtentMap::unreserve`].
    pub fn reserve(&mut self, tier: u8) -> Result<Location, ExtentMapError> {
        let free = self
            .free
            .get_mut(tier as usize)
            .ok_or(ExtentMapError::NoSuchTier(tier))?;
        let slot = free.pop().ok_or(ExtentMapError::TierFull(tier))?;
        Ok(Location { tier, slot })
    }

    /// Returns a reserved slot that a move did not use (nothing points at it, so it is free at once).
    pub fn unreserve(&mut self, location: Location) {
        self.free[location.tier as usize].push(location.slot);
    }

    /// Points `extent` at a reserved slot; the old slot becomes pending free.
    pub fn relocate(&mut self, extent: u64, to: Location) -> Result<(), ExtentMapError> {
        let entry = self
            .entries
            .get_mut(extent as usize)
            .ok_or(ExtentMapError::NoSuchExtent(extent))?;
        if let Some(old) = entry.location.replace(to) {
            self.pending_free.push(old);
        }
        self.dirty = true;
        Ok(())
    }

    /// Makes `extent` unallocated (reads as zeros); its slot becomes pending free.
    pub fn unmap(&mut self, extent: u64) -> Result<(), ExtentMapError> {
        let entry = self
            .entries
            .get_mut(extent as usize)
            .ok_or(ExtentMapError::NoSuchExtent(extent))?;
        if let Some(old) = entry.location.take() {
            self.pending_free.push(old);
            entry.provisional = false;
            self.dirty = true;
        }
        Ok(())
    }

    /// Records that `extent` changed in the current epoch.
    pub fn mark_changed(&mut self, extent: u64) {
        if let Some(entry) = self.entries.get_mut(extent as usize) {
            if entry.changed_epoch != self.epoch {
                entry.changed_epoch = self.epoch;
                self.dirty = true;
            }
        }
    }

    /// After an unclean shutdown, writes that were never committed may still have reached their slots
    /// without their change being recorded: count every allocated extent as changed (conservative).
    pub fn mark_all_allocated_changed(&mut self) {
        for extent in 0..self.entries.len() as u64 {
            if self.entries[extent as usize].location.is_some() {
                self.mark_changed(extent);
            }
        }
    }

    /// Names a checkpoint at the current moment and opens a new epoch.
    pub fn checkpoint(&mut self, name: &str) -> Result<(), ExtentMapError> {
        if self.checkpoints.contains_key(name) {
            return Err(ExtentMapError::CheckpointExists(name.to_string()));
        }
        self.checkpoints.insert(name.to_string(), self.epoch);
        self.epoch += 1;
        self.dirty = true;
        Ok(())
    }

    pub fn checkpoints(&self) -> &BTreeMap<String, u32> {
        &self.checkpoints
    }

    /// Extents changed after checkpoint `name` was taken.
    pub fn changed_since(&self, name: &str) -> Result<Vec<u64>, ExtentMapError> {
        let epoch = *self
            .checkpoints
            .get(name)
            .ok_or_else(|| ExtentMapError::NoSuchCheckpoint(name.to_string()))?;
        Ok((0..self.entries.len() as u64)
            .filter(|&e| self.entries[e as usize].changed_epoch > epoch)
            .collect())
    }

    /// Serialises the map as a commit would record it, and takes the pending-free slots that become free
    /// once this record is durable (pass them to [`ExtentMap::release`] then).
    pub fn begin_commit(&mut self, sequence: u64, clean: bool) -> (Vec<u8>, Vec<Location>) {
        let record = self.encode(sequence, clean);
        self.dirty = false;
        (record, std::mem::take(&mut self.pending_free))
    }

    /// The commit that took `released` is durable: those slots may be reused.
    pub fn release(&mut self, released: Vec<Location>) {
        for location in released {
            self.free[location.tier as usize].push(location.slot);
        }
    }

    /// A commit failed: its slots stay pending and the map stays dirty.
    pub fn abort_commit(&mut self, released: Vec<Location>) {
        self.pending_free.extend(released);
        self.dirty = true;
    }

    fn encode(&self, sequence: u64, clean: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 9);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.push(self.tier_slots.len() as u8);
        for slots in &self.tier_slots {
            out.extend_from_slice(&slots.to_le_bytes());
        }
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.push(u8::from(clean));
        out.extend_from_slice(&(self.checkpoints.len() as u32).to_le_bytes());
        for (name, epoch) in &self.checkpoints {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
        }
        for entry in &self.entries {
            match entry.location.filter(|_| !entry.provisional) {
                Some(location) => {
                    out.push(location.tier);
                    out.extend_from_slice(&location.slot.to_le_bytes());
                }
                None => {
                    out.push(UNALLOCATED);
                    out.extend_from_slice(&0u32.to_le_bytes());
                }
            }
            out.extend_from_slice(&entry.changed_epoch.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a committed record: returns the map, its sequence number and whether it was written by a
    /// clean close.
    pub fn decode(record: &[u8]) -> Result<(ExtentMap, u64, bool), ExtentMapError> {
        if record.len() < 4 {
            return Err(ExtentMapError::Corrupt("record too short"));
        }
        let (body, crc) = record.split_at(record.len() - 4);
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(crc);
        if crc32fast::hash(body) != u32::from_le_bytes(crc_bytes) {
            return Err(ExtentMapError::Corrupt("checksum mismatch"));
        }
        let mut reader = Reader { data: body, pos: 0 };
        if reader.take(8)? != MAGIC {
            return Err(ExtentMapError::Corrupt("bad magic"));
        }
        let sequence = reader.u64()?;
        let extent_count = reader.u64()?;
        let tier_count = reader.u8()?;
        let tier_slots = (0..tier_count)
            .map(|_| reader.u32())
            .collect::<Result<Vec<_>, _>>()?;
        let epoch = reader.u32()?;
        let clean = reader.u8()? != 0;
        let checkpoint_count = reader.u32()?;
        let mut checkpoints = BTreeMap::new();
        for _ in 0..checkpoint_count {
            let len = reader.u16()? as usize;
            let name = std::str::from_utf8(reader.take(len)?)
                .map_err(|_| ExtentMapError::Corrupt("checkpoint name"))?;
            checkpoints.insert(name.to_string(), reader.u32()?);
        }
        if extent_count > (body.len() as u64) / 9 {
            return Err(ExtentMapError::Corrupt(
                "extent count larger than the record",
            ));
        }
        let mut entries = Vec::with_capacity(extent_count as usize);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..extent_count {
            let tier = reader.u8()?;
            let slot = reader.u32()?;
            let changed_epoch = reader.u32()?;
            let location = if tier == UNALLOCATED {
                None
            } else {
                if tier >= tier_count
                    || slot >= tier_slots[tier as usize]
                    || !seen.insert((tier, slot))
                {
                    return Err(ExtentMapError::Corrupt(
                        "extent location out of range or shared",
                    ));
                }
                Some(Location { tier, slot })
            };
            entries.push(ExtentEntry {
                location,
                provisional: false,
                changed_epoch,
            });
        }
        if reader.pos != body.len() {
            return Err(ExtentMapError::Corrupt("trailing bytes"));
        }
        let mut map = ExtentMap {
            entries,
            tier_slots,
            free: Vec::new(),
            pending_free: Vec::new(),
            epoch,
            checkpoints,
            dirty: false,
        };
        map.rebuild_free_lists();
        Ok((map, sequence, clean))
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], ExtentMapError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len());
        let end = end.ok_or(ExtentMapError::Corrupt("truncated record"))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, ExtentMapError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ExtentMapError> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, ExtentMapError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, ExtentMapError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn test_extent_map_allocates_fastest_tier_first() {
        let mut map = ExtentMap::new(4, &[1, 4]);
        assert_eq!(
            map.allocate(0, &[0, 1]).unwrap(),
            Location { tier: 0, slot: 0 }
        );
        assert_eq!(
            map.allocate(1, &[0, 1]).unwrap(),
            Location { tier: 1, slot: 0 }
        );
        assert!(map.entry(1).unwrap().provisional);
    }

    #[test]
    fn test_extent_map_pending_free_slot_not_reused_before_commit() {
        let mut map = ExtentMap::new(2, &[1]);
        map.allocate(0, &[0]).unwrap();
        map.unmap(0).unwrap();
        assert_eq!(map.allocate(1, &[0]), Err(ExtentMapError::TierFull(0)));
        let (_, released) = map.begin_commit(1, false);
        map.release(released);
        assert!(map.allocate(1, &[0]).is_ok());
    }

    #[test]
    fn test_extent_map_provisional_extent_commits_as_unallocated() {
        let mut map = ExtentMap::new(2, &[2]);
        map.allocate(0, &[0]).unwrap();
        map.allocate(1, &[0]).unwrap();
        map.confirm(1);
        let (record, _) = map.begin_commit(7, true);
        let (decoded, sequence, clean) = ExtentMap::decode(&record).unwrap();
        assert_eq!((sequence, clean), (7, true));
        assert_eq!(decoded.entry(0).unwrap().location, None);
        assert_eq!(
            decoded.entry(1).unwrap().location,
            Some(Location { tier: 0, slot: 1 })
        );
    }

    #[test]
    fn test_extent_map_decode_rejects_corruption() {
        let mut map = ExtentMap::new(3, &[3]);
        map.allocate(2, &[0]).unwrap();
        let (mut record, _) = map.begin_commit(1, false);
        record[20] ^= 1;
        assert!(matches!(
            ExtentMap::decode(&record),
            Err(ExtentMapError::Corrupt(_))
        ));
        assert!(ExtentMap::decode(&record[..10]).is_err());
    }

    #[test]
    fn test_extent_map_changed_since_checkpoint() {
        let mut map = ExtentMap::new(4, &[4]);
        map.mark_changed(0);
        map.checkpoint("a").unwrap();
        assert_eq!(map.changed_since("a").unwrap(), Vec::<u64>::new());
        map.mark_changed(2);
        map.checkpoint("b").unwrap();
        map.mark_changed(3);
        assert_eq!(map.changed_since("a").unwrap(), vec![2, 3]);
        assert_eq!(map.changed_since("b").unwrap(), vec![3]);
        assert!(map.checkpoint("a").is_err());
        assert!(map.changed_since("zzz").is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64),
        Move(u64, u8),
        Unmap(u64),
        Commit,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..12).prop_map(Op::Write),
            3 => (0u64..12, 0u8..2).prop_map(|(e, t)| Op::Move(e, t)),
            1 => (0u64..12).prop_map(Op::Unmap),
            2 => Just(Op::Commit),
            1 => Just(Op::Crash),
        ]
    }

    /// Checks that no slot is shared, free and used at once, or lost.
    fn check_invariants(map: &ExtentMap) {
        let mut owners = HashMap::new();
        for (extent, entry) in map.entries.iter().enumerate() {
            if let Some(location) = entry.location {
                assert!(
                    owners.insert(location, extent).is_none(),
                    "slot {location:?} shared"
                );
            }
        }
        for location in &map.pending_free {
            assert!(
                !owners.contains_key(location),
                "pending slot {location:?} in use"
            );
        }
        let mut accounted = owners.len() + map.pending_free.len();
        for (tier, free) in map.free.iter().enumerate() {
            for &slot in free {
                let location = Location {
                    tier: tier as u8,
                    slot,
                };
                assert!(!owners.contains_key(&location) && !map.pending_free.contains(&location));
            }
            accounted += free.len();
        }
        assert_eq!(
            accounted,
            map.tier_slots.iter().map(|&n| n as usize).sum::<usize>()
        );
    }

    proptest! {
        /// Random writes, moves, unmaps, commits and crashes against a model of the committed map:
        /// after a crash the map is exactly the last committed one, and no slot ever serves two extents
        /// in the live map or between the committed map and the live one.
        #[test]
        fn test_extent_map_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut map = ExtentMap::new(12, &[4, 10]);
            let mut committed: Vec<Option<Location>> = vec![None; 12];
            let mut sequence = 0;
            for op in ops {
                match op {
                    Op::Write(e) => {
                        if map.entry(e).unwrap().location.is_none() && map.allocate(e, &[0, 1]).is_ok() {
                            map.confirm(e);
                        }
                    }
                    Op::Move(e, tier) => {
                        if map.entry(e).unwrap().location.is_some_and(|l| l.tier != tier) {
                            if let Ok(to) = map.reserve(tier) {
                                map.relocate(e, to).unwrap();
                            }
                        }
                    }
                    Op::Unmap(e) => map.unmap(e).unwrap(),
                    Op::Commit => {
                        sequence += 1;
                        let (record, released) = map.begin_commit(sequence, false);
                        map.release(released);
                        let (decoded, _, _) = ExtentMap::decode(&record).unwrap();
                        committed = decoded.entries.iter().map(|e| e.location).collect();
                    }
                    Op::Crash => {
                        // What a crash recovers is the last commit, not the live map.
                        let mut recovered = ExtentMap::new(12, &[4, 10]);
                        for (e, location) in committed.iter().enumerate() {
                            recovered.entries[e].location = *location;
                        }
                        recovered.rebuild_free_lists();
                        map = recovered;
                    }
                }
                check_invariants(&map);
                // A slot the committed map gives to extent A must not hold a different extent B in the
                // live map unless A's slot changed (B may only take a slot released by a commit).
                for (e, location) in committed.iter().enumerate() {
                    if let Some(location) = location {
                        for (other, entry) in map.entries.iter().enumerate() {
                            if other != e && entry.location == Some(*location) {
                                prop_assert!(false, "slot {location:?} of committed extent {e} reused by {other} before commit");
                            }
                        }
                    }
                }
            }
        }
    }
}
