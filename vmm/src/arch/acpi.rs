//! ACPI tables (RSDP, XSDT, FADT, DSDT, MADT) so that kernels find every vCPU, the IOAPIC and how
//! ISA interrupts are wired. Many distribution kernels (Debian's cloud kernel among them) are
//! built without `CONFIG_X86_MPPARSE` and ignore the MP table, so ACPI is what they read.
//!
//! The platform is "hardware-reduced ACPI" (FADT flag), as in Firecracker and Cloud Hypervisor: no
//! PM timer, no SCI, no AML to run. Tables live in the BIOS area from [`ACPI_START`], where the
//! RSDP is also found by kernels that scan for it; PVH guests get its address in
//! `hvm_start_info.rsdp_paddr`, Linux-protocol guests in `boot_params.acpi_rsdp_addr`.
//!
//! Layouts follow the ACPI 6.x specification (sections 5.2.5 RSDP, 5.2.6 header, 5.2.8 XSDT,
//! 5.2.9 FADT, 5.2.12 MADT); each table is built as bytes with its checksum.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::table_checksum;

use super::layout::{ACPI_START, APIC_START, IOAPIC_START, MPTABLE_START};

const OEM_ID: [u8; 6] = *b"HYPNIX";
const OEM_TABLE_ID: [u8; 8] = *b"HV-VMM  ";
const CREATOR_ID: [u8; 4] = *b"HVMM";
const HEADER_LEN: usize = 36;

const FADT_LEN: usize = 276;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

const MADT_REVISION: u8 = 5;
const MADT_FLAG_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_ENABLED: u32 = 1;

/// Errors writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables of {size} bytes do not fit below the MP table")]
    TooLarge { size: usize },
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// A system description table: header + `body`, checksummed.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = Vec::with_capacity(HEADER_LEN + body.len());
    table.extend_from_slice(signature);
    table.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    table.push(revision);
    table.push(0); // checksum, below
    table.extend_from_slice(&OEM_ID);
    table.extend_from_slice(&OEM_TABLE_ID);
    table.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    table.extend_from_slice(&CREATOR_ID);
    table.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    table.extend_from_slice(body);
    table[9] = table_checksum(&table);
    table
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |offset: usize| offset - HEADER_LEN;
    body[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    let boot_arch = IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT;
    body[at(109)..at(111)].copy_from_slice(&boot_arch.to_le_bytes());
    body[at(112)..at(116)].copy_from_slice(&FADT_FLAG_HW_REDUCED_ACPI.to_le_bytes());
    body[at(131)] = FADT_MINOR_REVISION;
    body[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    body[at(268)..at(276)].copy_from_slice(b"HYPNIXVM"); // hypervisor vendor identity
    sdt(b"FACP", FADT_REVISION, &body)
}

fn madt(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut body = Vec::new();
    body.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    body.extend_from_slice(&MADT_FLAG_PCAT_COMPAT.to_le_bytes());
    for apic_id in 0..vcpus {
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, apic_id, apic_id]);
        body.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, ioapic_id, 0]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                                 // ISA IRQ 0 (the PIT) is wired to GSI 2, as on a PC and in KVM's default routing.
    body.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, 0]);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes()); // polarity/trigger: conform to the bus
                                                 // NMI on LINT1 of every local APIC (processor UID 0xff = all).
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", MADT_REVISION, &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes, below
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision: ACPI 2.0+ (has XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum, below
    r.extend_from_slice(&[0; 3]);
    r[8] = table_checksum(&r[..20]);
    r[32] = table_checksum(&r);
    r
}

fn align16(n: u64) -> u64 {
    (n + 15) & !15
}

/// Builds all tables for `vcpus` CPUs laid out from `base`; returns the bytes to write at `base`.
/// The RSDP comes first, at `base` itself.
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let dsdt_addr = align16(base + 36);
    let dsdt = sdt(b"DSDT", 2, &[]);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let xsdt_addr = align16(madt_addr + madt.len() as u64);
    let xsdt = xsdt(&[fadt_addr, madt_addr]);

    let mut image = vec![0u8; (xsdt_addr - base) as usize + xsdt.len()];
    let mut place = |addr: u64, bytes: &[u8]| {
        let at = (addr - base) as usize;
        image[at..at + bytes.len()].copy_from_slice(bytes);
    };
    place(base, &rsdp(xsdt_addr));
    place(dsdt_addr, &dsdt);
    place(fadt_addr, &fadt);
    place(madt_addr, &madt);
    place(xsdt_addr, &xsdt);
    image
}

/// Writes the tables for `vcpus` CPUs at [`ACPI_START`]; returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<u64, AcpiError> {
    let image = build(vcpus, ACPI_START);
    if ACPI_START + image.len() as u64 > MPTABLE_START {
        return Err(AcpiError::TooLarge { size: image.len() });
    }
    mem.write_slice(&image, GuestAddress(ACPI_START))
        .map_err(AcpiError::Write)?;
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(image: &[u8], base: u64, addr: u64) -> &[u8] {
        let at = (addr - base) as usize;
        let len = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize;
        &image[at..at + len]
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn test_acpi_tables_chain_from_rsdp_with_valid_checksums() {
        let base = ACPI_START;
        let image = build(4, base);
        assert_eq!(&image[..8], b"RSD PTR ");
        assert_eq!(table_checksum(&image[..20]), 0, "RSDP v1 checksum");
        assert_eq!(table_checksum(&image[..36]), 0, "RSDP extended checksum");
        let xsdt = table_at(&image, base, u64_at(&image, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(table_checksum(xsdt), 0);
        let fadt = table_at(&image, base, u64_at(xsdt, 36));
        let madt = table_at(&image, base, u64_at(xsdt, 44));
        assert_eq!((&fadt[..4], fadt.len()), (&b"FACP"[..], FADT_LEN));
        assert_eq!(table_checksum(fadt), 0);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_FLAG_HW_REDUCED_ACPI, 0);
        let dsdt = table_at(&image, base, u64_at(fadt, 140));
        assert_eq!((&dsdt[..4], table_checksum(dsdt)), (&b"DSDT"[..], 0));
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(table_checksum(madt), 0);
    }

    #[test]
    fn test_madt_lists_every_vcpu_ioapic_and_timer_override() {
        let madt = madt(3);
        let mut at = HEADER_LEN + 8;
        let mut cpus = Vec::new();
        let mut kinds = Vec::new();
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            kinds.push(kind);
            if kind == MADT_LOCAL_APIC {
                cpus.push(madt[at + 3]);
            }
            if kind == MADT_INTERRUPT_OVERRIDE {
                assert_eq!(madt[at + 3], 0, "source IRQ 0");
                assert_eq!(
                    u32::from_le_bytes(madt[at + 4..at + 8].try_into().unwrap()),
                    2
                );
            }
            at += len;
        }
        assert_eq!(at, madt.len(), "entries end exactly at the table length");
        assert_eq!(cpus, vec![0, 1, 2]);
        assert!(kinds.contains(&MADT_IO_APIC));
        assert!(kinds.contains(&MADT_LOCAL_APIC_NMI));
    }

    #[test]
    fn test_acpi_tables_fit_below_mptable_for_max_vcpus() {
        assert!(ACPI_START + build(254, ACPI_START).len() as u64 <= MPTABLE_START);
    }
}
