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

static GUESTS: &[Guest] = &[Guest {
    name: "hello",
    description: "PVH: prints RDY and resets through the i8042; the boot-time benchmark guest (11 instructions)",
    elf: guest_elf!("hello"),
    vcpus: 1,
    expected_serial: "RDY\n",
    exits_by_itself: true,
}];

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
    fn test_hello_is_pvh_with_entry_at_load_address() {
        let elf = summary(by_name("hello").expect("hello exists"));
        assert_eq!(elf.pvh_entry, Some(0x10_0000));
        assert_eq!(elf.entry, 0x10_0000);
    }
}
