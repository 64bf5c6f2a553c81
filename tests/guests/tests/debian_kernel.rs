//! Checks the kernel that scripts/fetch-debian-kernel.sh put in .guest-assets/debian/: the ELF
//! vmlinux carries the PVH note and loads through linux-loader, the bzImage is one linux-loader
//! accepts, and QEMU boots the vmlinux to its `Linux version` banner (it cannot get much further
//! on these hosts: see docs/guests.md).
//!
//! Skips with a printed reason when the files are missing, unless CI=true or HV_REQUIRE_TOOLS=1
//! (CI fetches them in .ci/install.d/20-guest-assets.sh).

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use common::{qemu_or_skip, tools_required};
use hv_test_guests::elf::ElfSummary;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const HIGHMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Enough for the 6.1 cloud kernel image (mapped lazily; only what is loaded is touched).
const GUEST_RAM: usize = 256 << 20;
/// The banner comes ~10 s after start on these hosts; leave room for a loaded machine.
const BANNER_DEADLINE: Duration = Duration::from_secs(180);
/// The bzImage decompresses itself emulated first: the banner took 138-211 s here.
const BZIMAGE_BANNER_DEADLINE: Duration = Duration::from_secs(600);

/// `.guest-assets/debian/<name>`, or None (after saying why) when the test should skip.
fn asset_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.guest-assets/debian")
        .join(name);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} is missing; run scripts/fetch-debian-kernel.sh",
        path.display()
    );
    if tools_required() {
        panic!("{test}: {why} (required: CI=true or HV_REQUIRE_TOOLS=1)");
    }
    eprintln!("skipping {test}: {why}");
    None
}

fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)]).expect("map guest RAM")
}

#[test]
fn test_debian_vmlinux_has_the_pvh_note_linux_loader_finds() {
    let Some(path) = asset_or_skip(
        "test_debian_vmlinux_has_the_pvh_note_linux_loader_finds",
        "vmlinux",
    ) else {
        return;
    };
    let image = std::fs::read(&path).expect("read vmlinux");
    let ours = ElfSummary::parse(&image).expect("vmlinux is an x86-64 ELF");
    let pvh_entry = ours.pvh_entry.expect("vmlinux has a Xen PVH note");

    let memory = guest_memory();
    let mut file = File::open(&path).expect("open vmlinux");
    let loaded = Elf::load(&memory, None, &mut file, Some(HIGHMEM_START))
        .expect("linux-loader loads vmlinux");
    assert_eq!(
        loaded.pvh_boot_cap,
        PvhBootCapability::PvhEntryPresent(GuestAddress(pvh_entry.into()))
    );
    assert!(loaded.kernel_load >= HIGHMEM_START);
}

#[test]
fn test_debian_vmlinuz_is_a_bzimage_linux_loader_accepts() {
    let Some(path) = asset_or_skip(
        "test_debian_vmlinuz_is_a_bzimage_linux_loader_accepts",
        "vmlinuz",
    ) else {
        return;
    };
    let memory = guest_memory();
    let mut file = File::open(&path).expect("open vmlinuz");
    let loaded = BzImage::load(&memory, None, &mut file, Some(HIGHMEM_START))
        .expect("linux-loader loads the bzImage");
    let header = loaded.setup_header.expect("a bzImage has a setup header");
    let version = header.version;
    assert!(
        version >= 0x020c,
        "boot protocol {version:#x}: 64-bit entry needs 2.12+"
    );
    assert_eq!(loaded.kernel_load, HIGHMEM_START);
}

fn boot_to_banner(test: &str, asset: &str, deadline: Duration) {
    let (Some(qemu), Some(kernel)) = (qemu_or_skip(test), asset_or_skip(test, asset)) else {
        return;
    };
    let args = ["-m", "512", "-append", "console=ttyS0 earlyprintk=ttyS0"];
    let result = common::boot(&qemu, &kernel, &args, deadline, |serial| {
        serial.contains("Linux version 6.")
    });
    assert!(
        result.serial.contains("Linux version 6."),
        "{asset}: no `Linux version` banner within {deadline:?}; console: {:?}",
        result.serial
    );
}

#[test]
fn test_qemu_boots_debian_vmlinux_to_its_banner() {
    boot_to_banner(
        "test_qemu_boots_debian_vmlinux_to_its_banner",
        "vmlinux",
        BANNER_DEADLINE,
    );
}

#[test]
#[ignore = "the bzImage decompresses itself emulated: 2-4 minutes; run with --ignored"]
fn test_qemu_boots_debian_bzimage_to_its_banner() {
    boot_to_banner(
        "test_qemu_boots_debian_bzimage_to_its_banner",
        "vmlinuz",
        BZIMAGE_BANNER_DEADLINE,
    );
}
