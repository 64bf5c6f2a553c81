//! Guest-physical memory layout (x86_64), the same places Linux and Firecracker expect.
//!
//! ```text
//! 0x0000_0500  boot GDT                      0x0000_9000  PML4 \
//! 0x0000_0520  boot IDT (empty)              0x0000_a000  PDPT  > identity map of the first 1 GiB
//! 0x0000_6000  PVH hvm_start_info + memmap   0x0000_b000  PD   /  (2 MiB pages, 64-bit boot only)
//! 0x0000_7000  Linux zero page (boot_params)  0x0002_0000  kernel command line
//! 0x0000_8ff0  boot stack top (64-bit boot)  0x0009_fc00  EBDA (reserved)
//!                                            0x000e_0000  ACPI tables (BIOS area)
//!                                            0x000f_0000  MP table (BIOS area)
//! 0x0010_0000  kernel (HIGH_MEMORY)          0xc000_0000 .. 4 GiB: MMIO hole (boot marker at
//!                                            0xd000_0000, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000)
//! RAM above 3 GiB continues at 4 GiB.
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (a zero-limit IDT: the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its module list and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux boot protocol zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB = 1 GiB identity mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line length we hand to the kernel (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area (kept reserved in the memory map, as on a PC).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first) in the BIOS area, 16-byte aligned where kernels scan for "RSD PTR ".
pub const ACPI_START: u64 = 0xe_0000;
/// Start of the BIOS area (reserved in the memory map).
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// MP table: in the BIOS area 0xf0000-0xfffff, where Linux scans for the `_MP_` floating pointer;
/// 64 KiB leaves room for a processor entry per vCPU.
pub const MPTABLE_START: u64 = 0xf_0000;
/// End of the BIOS area.
pub const BIOS_AREA_END: u64 = 0x10_0000;
/// End of conventional memory (start of VGA / ROM area).
pub const LOW_MEMORY_END: u64 = 0xa0000;
/// Where kernels are loaded; also the start of "high" memory for the loaders.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM below it, devices in it.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB, where RAM continues.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// First virtio-mmio device slot (the boot marker has the page before it).
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// One 4 KiB page per virtio-mmio device.
pub const VIRTIO_MMIO_SLOT: u64 = 0x1000;
/// First legacy IRQ line for virtio devices (COM1 has 4).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS for real-mode emulation: 3 pages just below the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real-mode emulation (the page before the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The 64-bit boot stack grows down from between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);

/// RAM ranges `(start, len)` for a guest of `memory_bytes`: below the MMIO hole, and the rest above
/// 4 GiB.
pub fn ram_ranges(memory_bytes: u64) -> Vec<(u64, u64)> {
    let low = memory_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if memory_bytes > low {
        ranges.push((FIRST_ADDR_PAST_32BITS, memory_bytes - low));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ram_ranges_split_around_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (1 << 32, (4 << 30) - MMIO_HOLE_START)]
        );
    }

    #[test]
    fn test_layout_tables_do_not_overlap() {
        let mut regions = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x1000),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, LOW_MEMORY_END - EBDA_START),
            (ACPI_START, MPTABLE_START - ACPI_START),
            (MPTABLE_START, BIOS_AREA_END - MPTABLE_START),
        ];
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }
}
