//! Tiny x86 test guests for hv-vmm's tests and benchmarks.
//!
//! Guests on the project's machines are emulated (~1.4 µs per instruction) and stock Linux
//! cannot finish booting there, so each guest here is a few dozen to a few thousand
//! instructions of assembly, built from `asm/*.S` by build.rs. The boot contract they rely on
//! (PVH or the 64-bit Linux boot protocol, load address, devices) is in docs/guests.md.

pub mod elf;

/// One test guest: an ELF image and what it should do when booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// Short name, also the file stem (`<name>.elf`).
    pub name: &'static str,
    /// One line: what the guest does.
    pub description: &'static str,
    /// The ELF image, linked at 1 MiB physical.
    pub elf: &'static [u8],
    /// vCPUs to boot it with.
    pub vcpus: u8,
    /// Text the serial console must contain once the guest has done its work
    /// (booted with the VMM defaults: 128 MiB, 1 vCPU unless `vcpus` says otherwise).
    pub expected_serial: &'static str,
    /// Whether the guest ends the VM itself (i8042 reset or triple fault) instead of halting forever.
    pub exits_by_itself: bool,
}

macro_rules! guest_elf {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".elf"))
    };
}

static GUESTS: &[Guest] = &[
    Guest {
        name: "hello",
        description: "PVH: prints RDY and resets through the i8042; the boot-time benchmark guest (11 instructions)",
        elf: guest_elf!("hello"),
        vcpus: 1,
        expected_serial: "RDY\n",
        exits_by_itself: true,
    },
    Guest {
        name: "marker",
        description: "PVH: writes 123 to the boot marker at MMIO 0xd0000000, prints RDY, resets",
        elf: guest_elf!("marker"),
        vcpus: 1,
        expected_serial: "RDY\n",
        exits_by_itself: true,
    },
    Guest {
        name: "smp",
        description: "PVH, 2 vCPUs: starts the AP with INIT+SIPI, the AP prints AP1, the BSP prints SMP OK, resets",
        elf: guest_elf!("smp"),
        vcpus: 2,
        expected_serial: "AP1\nSMP OK\n",
        exits_by_itself: true,
    },
    Guest {
        name: "timer",
        description: "PVH: takes a LAPIC timer interrupt, prints TICK from the handler, resets",
        elf: guest_elf!("timer"),
        vcpus: 1,
        expected_serial: "TICK\n",
        exits_by_itself: true,
    },
    Guest {
        name: "pit",
        description: "PVH: PIT channel 0 -> 8259 PIC IRQ 0 -> LAPIC LINT0 (ExtINT), prints PIT TICK from the handler, resets",
        elf: guest_elf!("pit"),
        vcpus: 1,
        expected_serial: "PIT TICK\n",
        exits_by_itself: true,
    },
    Guest {
        name: "serial_irq",
        description: "PVH: COM1 THR-empty interrupt through IOAPIC pin 4, prints SERIAL IRQ from the handler, resets",
        elf: guest_elf!("serial_irq"),
        vcpus: 1,
        expected_serial: "SERIAL IRQ\n",
        exits_by_itself: true,
    },
    Guest {
        name: "cmdline",
        description: "PVH: prints CMDLINE:<kernel command line from hvm_start_info>, resets",
        elf: guest_elf!("cmdline"),
        vcpus: 1,
        expected_serial: "CMDLINE:",
        exits_by_itself: true,
    },
    Guest {
        name: "virtio_probe",
        description: "PVH: prints the virtio-mmio identity registers at 0xd0001000 and the block capacity, resets",
        elf: guest_elf!("virtio_probe"),
        vcpus: 1,
        expected_serial: "VIRTIO ",
        exits_by_itself: true,
    },
    Guest {
        name: "e820",
        description: "PVH: prints MEM <addr> <size> <type> per hvm_start_info memory-map entry, then E820 END <n>, resets",
        elf: guest_elf!("e820"),
        vcpus: 1,
        expected_serial: "E820 END ",
        exits_by_itself: true,
    },
    Guest {
        name: "hello64",
        description: "ELF64 without PVH note (64-bit Linux boot protocol): prints RDY64 and E820 <boot_params e820 count>, resets",
        elf: guest_elf!("hello64"),
        vcpus: 1,
        expected_serial: "RDY64\nE820 ",
        exits_by_itself: true,
    },
    Guest {
        name: "halt",
        description: "PVH: writes the boot marker, prints HALT, then cli; hlt forever (for stop and signal tests)",
        elf: guest_elf!("halt"),
        vcpus: 1,
        expected_serial: "HALT\n",
        exits_by_itself: false,
    },
    Guest {
        name: "triple",
        description: "PVH: prints BYE, then triple-faults; the VMM must exit non-zero with a register dump",
        elf: guest_elf!("triple"),
        vcpus: 1,
        expected_serial: "BYE\n",
        exits_by_itself: true,
    },
];

/// Every test guest.
pub fn all() -> &'static [Guest] {
    GUESTS
}

/// The test guest called `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|guest| guest.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::ElfSummary;

    const LOAD_ADDRESS: u64 = 0x10_0000;

    fn summary(guest: &Guest) -> ElfSummary {
        ElfSummary::parse(guest.elf).unwrap_or_else(|error| panic!("{}: {error}", guest.name))
    }

    #[test]
    fn test_by_name_finds_every_guest_and_nothing_else() {
        for guest in all() {
            assert_eq!(by_name(guest.name), Some(guest));
        }
        assert_eq!(by_name("no-such-guest"), None);
    }

    #[test]
    fn test_guests_have_unique_names() {
        let mut names: Vec<_> = all().iter().map(|guest| guest.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
    }

    #[test]
    fn test_guests_load_at_one_mib() {
        for guest in all() {
            let elf = summary(guest);
            let lowest = elf.segments.iter().map(|segment| segment.paddr).min();
            assert_eq!(lowest, Some(LOAD_ADDRESS), "{}", guest.name);
            for segment in &elf.segments {
                assert!(
                    segment.memsz >= segment.filesz,
                    "{}: {segment:?}",
                    guest.name
                );
                // Everything stays well inside the smallest guest RAM the tests use.
                assert!(
                    segment.paddr + segment.memsz < 0x20_0000,
                    "{}: {segment:?}",
                    guest.name
                );
            }
        }
    }

    #[test]
    fn test_guests_enter_inside_their_image() {
        for guest in all() {
            let elf = summary(guest);
            let entry = elf.pvh_entry.map(u64::from).unwrap_or(elf.entry);
            let executable = elf.segments.iter().find(|segment| segment.executable);
            let text =
                executable.unwrap_or_else(|| panic!("{}: no executable segment", guest.name));
            assert!(
                (text.paddr..text.paddr + text.filesz).contains(&entry),
                "{}: entry {entry:#x}",
                guest.name
            );
        }
    }

    #[test]
    fn test_guests_except_hello64_carry_the_pvh_note() {
        for guest in all() {
            let elf = summary(guest);
            if guest.name == "hello64" {
                assert_eq!(
                    elf.pvh_entry, None,
                    "hello64 must boot through the 64-bit Linux protocol"
                );
            } else {
                assert!(elf.pvh_entry.is_some(), "{} has no PVH note", guest.name);
            }
        }
    }

    #[test]
    fn test_only_smp_asks_for_two_vcpus() {
        for guest in all() {
            assert_eq!(
                guest.vcpus,
                if guest.name == "smp" { 2 } else { 1 },
                "{}",
                guest.name
            );
        }
    }

    #[test]
    fn test_hello64_enters_at_load_address() {
        assert_eq!(
            summary(by_name("hello64").expect("hello64 exists")).entry,
            LOAD_ADDRESS
        );
    }

    #[test]
    fn test_hello_is_pvh_with_entry_at_load_address() {
        let elf = summary(by_name("hello").expect("hello exists"));
        assert_eq!(elf.pvh_entry, Some(0x10_0000));
        assert_eq!(elf.entry, 0x10_0000);
    }
}
