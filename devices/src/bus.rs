//! An address bus that maps ranges (port I/O or MMIO) to devices.
//!
//! The bus is built once before the vCPUs start and then only read, so lookups take no lock on the
//! bus itself; each device sits behind its own mutex, so two vCPUs touching two devices never wait
//! for each other.

use std::sync::{Arc, Mutex};

/// A device reachable over a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or overflows the address space.
    #[error("bus range at {base:#x} with length {len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the range at {existing:#x}")]
    Overlap { base: u64, len: u64, existing: u64 },
}

struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges sorted by base address.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some(existing) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                existing: existing.base,
            });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, BusRange { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&BusRange, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[idx];
        let offset = addr - range.base;
        (offset + len as u64 <= range.len).then_some((range, offset))
    }

    /// Routes a read. Returns false when no device owns the address (the caller decides what an
    /// unclaimed read returns; real hardware floats the bus to all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write. Returns false when no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device mutex is only poisoned if a device panicked while handling an access; its state is a
/// set of registers that stays usable, so carry on rather than take the whole VM down again.
fn lock(device: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn test_bus_routes_to_device_with_relative_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fa, &[7]));
        let mut byte = [0u8];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte, [5]);
        assert_eq!(dev.lock().unwrap().writes, vec![(2, vec![7])]);
    }

    #[test]
    fn test_bus_unclaimed_and_straddling_accesses_miss() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5)
            .unwrap();
        assert!(!bus.write(0x5f, &[1]));
        assert!(!bus.write(0x65, &[1]));
        // A 4-byte access that starts inside but ends outside the range is not routed.
        assert!(!bus.write(0x63, &[1, 2, 3, 4]));
    }

    #[test]
    fn test_bus_rejects_overlap_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1,
                existing: 0x100
            })
        );
        assert!(matches!(
            bus.insert(dev.clone(), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev, u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
