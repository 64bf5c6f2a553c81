//! Boot-time CPU state of the boot processor: registers, segments, control registers, FPU,
//! MSRs, local APIC interrupt pins, and the identity page tables of the 64-bit Linux boot protocol.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::boot::BootProtocol;
use super::gdt::{boot_gdt, segment_from_entry, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Errors writing boot tables to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The guest is too small to hold the boot GDT/IDT or page tables.
    #[error("cannot write the boot {what} to guest memory")]
    WriteTable {
        what: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

/// General-purpose registers at the kernel entry point.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        ..Default::default()
    };
    match protocol {
        // PVH: EBX holds the physical address of hvm_start_info.
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        // 64-bit Linux boot protocol: RSI holds the zero page; give the kernel a stack.
        BootProtocol::Linux64 => {
            regs.rsi = ZERO_PAGE_START;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
    }
    regs
}

/// Writes the boot GDT and an empty IDT to guest memory.
pub fn write_boot_descriptor_tables(
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(protocol == BootProtocol::Linux64);
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| RegsError::WriteTable {
            what: "GDT",
            source,
        })?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| RegsError::WriteTable {
            what: "IDT",
            source,
        })
}

/// Segment and control registers at the kernel entry point, starting from the vCPU's reset state.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let gdt = boot_gdt(protocol == BootProtocol::Linux64);
    let code = segment_from_entry(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_entry(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = segment_from_entry(gdt[usize::from(TSS_INDEX)], TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        // PVH: 32-bit protected mode, paging off.
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        // 64-bit mode with the identity map of `write_identity_page_tables`.
        BootProtocol::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// Identity-maps the first 1 GiB with 2 MiB pages (64-bit boot protocol only; the kernel replaces
/// these tables early).
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const LARGE_PAGE: u64 = 0x80;
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| RegsError::WriteTable {
                what: "page tables",
                source,
            })
    };
    write(PDPTE_START | PRESENT_WRITABLE, PML4_START)?;
    write(PDE_START | PRESENT_WRITABLE, PDPTE_START)?;
    let pde: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PRESENT_WRITABLE | LARGE_PAGE).to_le_bytes())
        .collect();
    mem.write_slice(&pde, GuestAddress(PDE_START))
        .map_err(|source| RegsError::WriteTable {
            what: "page tables",
            source,
        })
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;

/// MSRs every vCPU starts with: syscall MSRs cleared, fast string operations enabled (Linux checks
/// MISC_ENABLE), and MTRRs enabled with write-back as the default type so the guest does not run
/// uncached.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WRBACK: u64 = 6;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to the legacy PIC (ExtINT) and LINT1 to NMI, as the MP table says and as on a PC.
pub fn configure_lapic_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_regs_per_protocol() {
        let pvh = boot_regs(BootProtocol::Pvh, 0x10_0000);
        assert_eq!(
            (pvh.rip, pvh.rbx, pvh.rflags),
            (0x10_0000, PVH_INFO_START, 2)
        );
        let linux = boot_regs(BootProtocol::Linux64, 0x100_0000);
        assert_eq!(linux.rsi, ZERO_PAGE_START);
        assert_eq!(linux.rsp, BOOT_STACK_POINTER);
    }

    #[test]
    fn test_boot_sregs_pvh_is_flat_protected_mode_without_paging() {
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Pvh);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!(s.efer, 0);
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.base, s.cs.limit),
            (1, 0, 0, 0xffff_ffff)
        );
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.tr.selector),
            (8, 0x10, 0x18)
        );
        assert_eq!(s.gdt.base, BOOT_GDT_START);
    }

    #[test]
    fn test_boot_sregs_linux64_is_long_mode() {
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.db), (1, 0));
    }

    #[test]
    fn test_identity_page_tables_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn test_configure_lapic_lint_sets_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000); // masked, fixed
        configure_lapic_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1) & 0x700, 0x400);
    }
}
