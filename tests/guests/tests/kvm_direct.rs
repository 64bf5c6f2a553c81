//! Boots guests straight on KVM with the rust-vmm crates, for what QEMU cannot show: `hello64`
//! (QEMU boots no ELF without the PVH note), and the boot-marker write of `marker` and `halt`
//! (microvm has no device there). The 64-bit Linux boot protocol and the PVH entry are set up by
//! hand. Deliberately minimal (one vCPU, no irqchip, serial and i8042 emulated inline): a check of
//! the guests, not a VMM.
//!
//! Skips with a printed reason when /dev/kvm cannot be opened, unless HV_REQUIRE_KVM=1.

use std::io::Cursor;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use hv_test_guests::elf::ElfSummary;
use hv_test_guests::Guest;

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
const BOOT_MARKER_ADDR: u64 = 0xd000_0000;
const BOOT_MARKER_VALUE: u8 = 123;
const START_INFO_ADDR: u64 = 0x6000;
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// The guest needs a few dozen exits; anything near this is a guest stuck in a loop.
const MAX_EXITS: usize = 10_000;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const SELECTOR_CODE64: u16 = 0x08;
const SELECTOR_DATA: u16 = 0x10;
const SELECTOR_CODE32: u16 = 0x18;

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

/// GDT with 64-bit code, flat data and 32-bit code descriptors; identity page tables for the
/// first 1 GiB (2 MiB pages); the zero page with only `e820_entries` set, which is all hello64
/// reads; an hvm_start_info with only its magic (version 0: no memory map, no command line).
fn write_boot_structures(memory: &GuestMemoryMmap<()>) {
    let gdt: [u64; 4] = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00cf_9a00_0000_ffff,
    ];
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
    memory
        .write_obj(HVM_START_MAGIC, GuestAddress(START_INFO_ADDR))
        .expect("write hvm_start_info");
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
    sregs.gdt.limit = 4 * 8 - 1;
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

/// The PVH entry: 32-bit protected mode, paging off, flat segments, EBX = hvm_start_info.
fn enter_pvh(vcpu: &VcpuFd, entry: u64) {
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.cs = segment(SELECTOR_CODE32, 0xb, false);
    let data = segment(SELECTOR_DATA, 0x3, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr0 = (sregs.cr0 | CR0_PE) & !CR0_PG;
    vcpu.set_sregs(&sregs).expect("set protected-mode sregs");

    let mut regs = vcpu.get_regs().expect("get regs");
    regs.rip = entry;
    regs.rbx = START_INFO_ADDR;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).expect("set regs");
}

/// What a guest did before it stopped.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Serial(String),
    BootMarker,
    Reset,
    Halt,
}

/// Runs the vCPU until the i8042 reset or a HLT; returns what the guest did, in order, with
/// consecutive serial bytes joined.
fn run_guest(vcpu: &mut VcpuFd) -> Vec<Event> {
    let mut events = Vec::new();
    let push_serial = |events: &mut Vec<Event>, data: &[u8]| match events.last_mut() {
        Some(Event::Serial(text)) => text.push_str(&String::from_utf8_lossy(data)),
        _ => events.push(Event::Serial(String::from_utf8_lossy(data).into_owned())),
    };
    for _ in 0..MAX_EXITS {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(COM1, data) => push_serial(&mut events, data),
            VcpuExit::IoIn(COM1_LSR, data) => data.fill(LSR_THR_EMPTY),
            VcpuExit::MmioWrite(BOOT_MARKER_ADDR, [BOOT_MARKER_VALUE]) => {
                events.push(Event::BootMarker)
            }
            VcpuExit::IoOut(I8042_COMMAND, [I8042_CMD_RESET]) => {
                events.push(Event::Reset);
                return events;
            }
            VcpuExit::Hlt => {
                events.push(Event::Halt);
                return events;
            }
            other => panic!("unexpected exit {other:?} after {events:?}"),
        }
    }
    panic!("no reset or halt after {MAX_EXITS} exits: {events:?}");
}

/// Loads `guest` into fresh guest RAM on a new VM and runs it from its PVH entry, or from its ELF
/// entry in long mode when it has no PVH note.
fn boot(kvm: &Kvm, guest: &Guest) -> Vec<Event> {
    let memory: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)]).expect("map guest RAM");
    let loaded = Elf::load(
        &memory,
        None,
        &mut Cursor::new(guest.elf),
        Some(HIGHMEM_START),
    )
    .expect("load the guest");
    assert_eq!(loaded.kernel_load, HIGHMEM_START);
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
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => enter_pvh(&vcpu, entry.0),
        _ => enter_long_mode(
            &vcpu,
            ElfSummary::parse(guest.elf).expect("parse the guest").entry,
        ),
    }
    run_guest(&mut vcpu)
}

fn guest(name: &str) -> &'static Guest {
    hv_test_guests::by_name(name).unwrap_or_else(|| panic!("no guest {name}"))
}

#[test]
fn test_kvm_hello64_boots_through_the_64bit_linux_protocol() {
    let Some(kvm) = kvm_or_skip("test_kvm_hello64_boots_through_the_64bit_linux_protocol") else {
        return;
    };
    let events = boot(&kvm, guest("hello64"));
    let expected = format!("RDY64\nE820 {E820_ENTRIES_GIVEN}\n");
    assert_eq!(events, [Event::Serial(expected), Event::Reset]);
}

#[test]
fn test_kvm_marker_writes_the_boot_marker_before_rdy() {
    let Some(kvm) = kvm_or_skip("test_kvm_marker_writes_the_boot_marker_before_rdy") else {
        return;
    };
    let events = boot(&kvm, guest("marker"));
    assert_eq!(
        events,
        [
            Event::BootMarker,
            Event::Serial("RDY\n".into()),
            Event::Reset
        ]
    );
}

#[test]
fn test_kvm_halt_writes_the_marker_prints_and_halts() {
    let Some(kvm) = kvm_or_skip("test_kvm_halt_writes_the_marker_prints_and_halts") else {
        return;
    };
    let events = boot(&kvm, guest("halt"));
    assert_eq!(
        events,
        [
            Event::BootMarker,
            Event::Serial("HALT\n".into()),
            Event::Halt
        ]
    );
}

#[test]
fn test_kvm_hello_prints_and_resets() {
    let Some(kvm) = kvm_or_skip("test_kvm_hello_prints_and_resets") else {
        return;
    };
    assert_eq!(
        boot(&kvm, guest("hello")),
        [Event::Serial("RDY\n".into()), Event::Reset]
    );
}
