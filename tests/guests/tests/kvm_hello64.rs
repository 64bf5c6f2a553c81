//! Boots `hello64` straight on KVM with the rust-vmm crates, following the 64-bit Linux boot
//! protocol by hand: QEMU cannot boot an ELF without the PVH note, and the guest must be known
//! good before hv-vmm's own 64-bit boot path is tested with it. Deliberately minimal (one vCPU, no
//! irqchip, serial and i8042 emulated inline); it is a check of the guest, not a VMM.
//!
//! Skips with a printed reason when /dev/kvm cannot be opened, unless HV_REQUIRE_KVM=1.

use std::io::Cursor;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const GUEST_RAM: usize = 4 << 20;
const HIGHMEM_START: GuestAddress = GuestAddress(0x10_0000);
// The VMM's low-memory layout of the boot contract (docs/guests.md).
const GDT_ADDR: u64 = 0x500;
const ZERO_PAGE_ADDR: u64 = 0x7000;
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
const PD_ADDR: u64 = 0xb000;
const BOOT_PARAMS_E820_ENTRIES: u64 = 0x1e8;
const E820_ENTRIES_GIVEN: u8 = 3;

const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 0x20;
const I8042_COMMAND: u16 = 0x64;
const I8042_CMD_RESET: u8 = 0xfe;
/// The guest needs a few dozen exits; anything near this is a guest stuck in a loop.
const MAX_EXITS: usize = 10_000;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const SELECTOR_CODE64: u16 = 0x08;
const SELECTOR_DATA: u16 = 0x10;

fn kvm_or_skip(test: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(error) if std::env::var("HV_REQUIRE_KVM").is_ok_and(|value| value == "1") => {
            panic!("{test}: /dev/kvm is required (HV_REQUIRE_KVM=1) but cannot be opened: {error}")
        }
        Err(error) => {
            eprintln!("skipping {test}: cannot open /dev/kvm: {error}");
            None
        }
    }
}

/// GDT with a 64-bit code and a flat data descriptor; identity page tables for the first 1 GiB
/// (2 MiB pages); the zero page with only `e820_entries` set, which is all hello64 reads.
fn write_boot_structures(memory: &GuestMemoryMmap<()>) {
    let gdt: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (index, descriptor) in gdt.iter().enumerate() {
        memory
            .write_obj(*descriptor, GuestAddress(GDT_ADDR + 8 * index as u64))
            .expect("write GDT");
    }
    memory
        .write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))
        .expect("write PML4");
    memory
        .write_obj(PD_ADDR | 0x3, GuestAddress(PDPT_ADDR))
        .expect("write PDPT");
    for index in 0..512_u64 {
        let two_mib_page = (index << 21) | 0x83; // present, writable, page size
        memory
            .write_obj(two_mib_page, GuestAddress(PD_ADDR + 8 * index))
            .expect("write PD");
    }
    memory
        .write_obj(
            E820_ENTRIES_GIVEN,
            GuestAddress(ZERO_PAGE_ADDR + BOOT_PARAMS_E820_ENTRIES),
        )
        .expect("write zero page");
}

fn segment(selector: u16, type_: u8, long_mode: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long_mode),
        s: 1,
        l: u8::from(long_mode),
        g: 1,
        ..Default::default()
    }
}

fn enter_long_mode(vcpu: &VcpuFd, entry: u64) {
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.cs = segment(SELECTOR_CODE64, 0xb, true);
    let data = segment(SELECTOR_DATA, 0x3, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).expect("set long-mode sregs");

    let mut regs = vcpu.get_regs().expect("get regs");
    regs.rip = entry;
    regs.rsi = ZERO_PAGE_ADDR;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).expect("set regs");
}

/// Runs the vCPU until the i8042 reset; returns what the guest wrote to COM1.
fn run_until_reset(vcpu: &mut VcpuFd) -> String {
    let mut serial = Vec::new();
    for _ in 0..MAX_EXITS {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(COM1, data) => serial.extend_from_slice(data),
            VcpuExit::IoIn(COM1_LSR, data) => data.fill(LSR_THR_EMPTY),
            VcpuExit::IoOut(I8042_COMMAND, [I8042_CMD_RESET]) => {
                return String::from_utf8_lossy(&serial).into_owned()
            }
            other => panic!(
                "unexpected exit {other:?}; serial so far {:?}",
                String::from_utf8_lossy(&serial)
            ),
        }
    }
    panic!(
        "no reset after {MAX_EXITS} exits; serial {:?}",
        String::from_utf8_lossy(&serial)
    );
}

#[test]
fn test_kvm_hello64_boots_through_the_64bit_linux_protocol() {
    let Some(kvm) = kvm_or_skip("test_kvm_hello64_boots_through_the_64bit_linux_protocol") else {
        return;
    };
    let guest = hv_test_guests::by_name("hello64").expect("hello64 exists");
    let memory: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)]).expect("map guest RAM");
    let loaded = Elf::load(
        &memory,
        None,
        &mut Cursor::new(guest.elf),
        Some(HIGHMEM_START),
    )
    .expect("load hello64");
    assert_eq!(loaded.pvh_boot_cap, PvhBootCapability::PvhEntryNotPresent);
    write_boot_structures(&memory);

    let vm = kvm.create_vm().expect("create VM");
    let host_address = memory
        .get_host_address(GuestAddress(0))
        .expect("guest RAM is mapped");
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: GUEST_RAM as u64,
        userspace_addr: host_address as u64,
    };
    // SAFETY: `region` describes `memory`'s single mapping of GUEST_RAM bytes, which outlives
    // `vm` (declared before it, so dropped after it) and is never unmapped while the VM runs.
    unsafe { vm.set_user_memory_region(region) }.expect("register guest RAM");

    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    // KVM accepts EFER.LME only when the guest's CPUID offers long mode.
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    vcpu.set_cpuid2(&cpuid).expect("set CPUID");
    // The ELF entry: linux-loader reports where the image went, e_entry is where it starts.
    let entry = hv_test_guests::elf::ElfSummary::parse(guest.elf)
        .expect("parse hello64")
        .entry;
    assert_eq!(loaded.kernel_load, HIGHMEM_START);
    enter_long_mode(&vcpu, entry);

    let serial = run_until_reset(&mut vcpu);
    assert_eq!(serial, format!("RDY64\nE820 {E820_ENTRIES_GIVEN}\n"));
}
