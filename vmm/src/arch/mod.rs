//! x86_64 machine definition: guest physical layout, boot-time CPU state and the tables a kernel
//! reads at boot (e820 / PVH memory map, MP table, GDT, identity page tables), and CPUID.
//!
//! Everything here computes values or writes guest memory through `vm-memory`; the ioctls that
//! install CPU state live in `vstate`.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod memory_map;
pub mod mptable;
pub mod regs;

/// The byte that makes `bytes` sum to zero (mod 256): the checksum of MP and ACPI tables.
pub(crate) fn table_checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}
