//! Every guest loads through linux-loader (the loader hv-vmm uses) at 1 MiB, with the boot
//! protocol our own ELF reader finds: the PVH entry for PVH guests, none for hello64.

use std::io::Cursor;

use hv_test_guests::elf::ElfSummary;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GUEST_RAM: usize = 4 << 20;
const HIGHMEM_START: GuestAddress = GuestAddress(0x10_0000);

#[test]
fn test_linux_loader_loads_every_guest_where_our_reader_says() {
    for guest in hv_test_guests::all() {
        let memory: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)])
                .expect("map 4 MiB of guest RAM");
        let loaded = Elf::load(
            &memory,
            None,
            &mut Cursor::new(guest.elf),
            Some(HIGHMEM_START),
        )
        .unwrap_or_else(|error| panic!("{}: linux-loader refuses it: {error}", guest.name));
        let ours = ElfSummary::parse(guest.elf).expect("our reader parses it");

        assert_eq!(loaded.kernel_load, HIGHMEM_START, "{}", guest.name);
        let expected_pvh = match ours.pvh_entry {
            Some(entry) => PvhBootCapability::PvhEntryPresent(GuestAddress(entry.into())),
            None => PvhBootCapability::PvhEntryNotPresent,
        };
        assert_eq!(loaded.pvh_boot_cap, expected_pvh, "{}", guest.name);

        // The first bytes at 1 MiB are the guest's first instructions, copied from its text segment.
        let text = ours
            .segments
            .iter()
            .find(|segment| segment.executable)
            .expect("a text segment");
        let mut first_bytes = [0_u8; 4];
        memory
            .read_slice(&mut first_bytes, GuestAddress(text.paddr))
            .expect("read back guest RAM");
        assert_ne!(
            first_bytes, [0; 4],
            "{}: nothing was loaded at {:#x}",
            guest.name, text.paddr
        );
    }
}
