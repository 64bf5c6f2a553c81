//! The guest's memory map, as e820 entries (Linux boot protocol) and PVH memmap entries.

use super::layout::{ram_ranges, BIOS_AREA_END, BIOS_AREA_START, EBDA_START, HIGH_MEMORY_START};

/// e820 / PVH type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 / PVH type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map of a guest with `memory_bytes` of RAM:
/// conventional memory up to the EBDA, the EBDA reserved, the BIOS area (ACPI tables, MP table)
/// reserved, RAM from 1 MiB to the MMIO hole, and the remainder above 4 GiB.
pub fn memory_map(memory_bytes: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: super::layout::LOW_MEMORY_END - EBDA_START,
            kind: E820_RESERVED,
        },
        MemoryMapEntry {
            addr: BIOS_AREA_START,
            size: BIOS_AREA_END - BIOS_AREA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(memory_bytes) {
        let start_high = start.max(HIGH_MEMORY_START);
        let end = start + len;
        if end > start_high {
            map.push(MemoryMapEntry {
                addr: start_high,
                size: end - start_high,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{FIRST_ADDR_PAST_32BITS, MMIO_HOLE_START};

    #[test]
    fn test_memory_map_small_guest() {
        let map = memory_map(128 << 20);
        assert_eq!(
            map,
            vec![
                MemoryMapEntry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                MemoryMapEntry {
                    addr: 0x9fc00,
                    size: 0x400,
                    kind: E820_RESERVED
                },
                MemoryMapEntry {
                    addr: 0xe0000,
                    size: 0x20000,
                    kind: E820_RESERVED
                },
                MemoryMapEntry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn test_memory_map_large_guest_skips_mmio_hole() {
        let map = memory_map(6 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the 640K-1M hole and the EBDA is usable.
        assert_eq!(ram, (6 << 30) - (HIGH_MEMORY_START - EBDA_START));
        let last = map.last().unwrap();
        assert_eq!(last.addr, FIRST_ADDR_PAST_32BITS);
        assert_eq!(last.size, (6 << 30) - MMIO_HOLE_START);
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= FIRST_ADDR_PAST_32BITS));
    }
}
