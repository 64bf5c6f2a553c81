//! Intel MultiProcessor Specification 1.4 tables, so a kernel without ACPI finds every vCPU, the
//! IOAPIC and how ISA interrupts are wired.
//!
//! Written at 0xf0000 in the BIOS area, one of the places Linux scans for the `_MP_` floating
//! pointer (the 1 KiB EBDA would only hold ~40 processor entries). Layout: floating pointer
//! (16 bytes), then the configuration table header (44 bytes) followed by its entries.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::table_checksum;

use super::layout::{APIC_START, BIOS_AREA_END, IOAPIC_START, MPTABLE_START};

const MP_SPEC_REV: u8 = 4; // 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and the CPUID feature bits (FPU, APIC) the table advertises per CPU.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_IRQS: u8 = 16;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than APIC ids the IOAPIC can sit after (the IOAPIC id follows the last CPU).
    #[error("{vcpus} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus { vcpus: u8 },
    /// The table does not fit in the BIOS area.
    #[error("MP table of {size} bytes does not fit in the BIOS area")]
    TooLarge { size: usize },
    /// Guest memory write failed.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] GuestMemoryError),
}

fn processor_entry(apic_id: u8) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[0] = ENTRY_PROCESSOR;
    e[1] = apic_id;
    e[2] = APIC_VERSION;
    e[3] = CPU_ENABLED | if apic_id == 0 { CPU_BOOTPROCESSOR } else { 0 };
    e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    e
}

fn interrupt_entry(kind: u8, int_type: u8, src_irq: u8, dst_apic: u8, dst_pin: u8) -> [u8; 8] {
    // flags 0: polarity and trigger mode "conform to bus" (ISA: active high, edge).
    [kind, int_type, 0, 0, 0, src_irq, dst_apic, dst_pin]
}

/// Builds the whole table (floating pointer + config table) for `vcpus` CPUs, to be placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(MpTableError::TooManyCpus { vcpus });
    }
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for apic_id in 0..vcpus {
        push(&processor_entry(apic_id));
    }
    push(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic_addr = (IOAPIC_START as u32).to_le_bytes();
    push(&[
        ENTRY_IOAPIC,
        ioapic_id,
        IOAPIC_VERSION,
        1, // enabled
        ioapic_addr[0],
        ioapic_addr[1],
        ioapic_addr[2],
        ioapic_addr[3],
    ]);
    // ISA IRQ n goes to IOAPIC pin n, except the timer (IRQ 0), which a PC wires to pin 2, as
    // KVM's default GSI routing does. IRQ 2 is the PIC cascade and has no IOAPIC pin of its own.
    push(&interrupt_entry(
        ENTRY_IO_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ioapic_id,
        0,
    ));
    for irq in (0..ISA_IRQS).filter(|irq| *irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        push(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            ioapic_id,
            pin,
        ));
    }
    // LINT0 = ExtINT (legacy PIC), LINT1 = NMI, on every local APIC (0xff).
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0xff,
        0,
    ));
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0xff,
        1,
    ));

    let config_addr = base + 16;
    let mut config = Vec::with_capacity(44 + entries.len());
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    config.push(MP_SPEC_REV);
    config.push(0); // checksum, below
    config.extend_from_slice(b"HYPERNIX");
    config.extend_from_slice(b"HV-VMM      ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&[0, 0, 0, 0]); // extended table length + checksum + reserved
    config.extend_from_slice(&entries);
    config[7] = table_checksum(&config);

    let mut table = Vec::with_capacity(16 + config.len());
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(config_addr as u32).to_le_bytes());
    table.push(1); // length in 16-byte units
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    table[10] = table_checksum(&table);
    table.extend_from_slice(&config);
    Ok(table)
}

/// Writes the MP table for `vcpus` CPUs in the BIOS area.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    let table = build(vcpus, MPTABLE_START)?;
    if MPTABLE_START + table.len() as u64 > BIOS_AREA_END {
        return Err(MpTableError::TooLarge { size: table.len() });
    }
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mptable_checksums_and_counts() {
        let table = build(4, MPTABLE_START).unwrap();
        assert_eq!(&table[0..4], b"_MP_");
        assert_eq!(table_checksum(&table[..16]), 0, "floating pointer checksum");
        let config = &table[16..];
        assert_eq!(&config[0..4], b"PCMP");
        let len = u16::from_le_bytes([config[4], config[5]]) as usize;
        assert_eq!(len, config.len());
        assert_eq!(table_checksum(config), 0, "config table checksum");
        let count = u16::from_le_bytes([config[34], config[35]]);
        // 4 CPUs + bus + IOAPIC + ExtINT + 15 ISA IRQs + 2 local interrupts
        assert_eq!(count, 4 + 1 + 1 + 1 + 15 + 2);
        let physptr = u32::from_le_bytes(table[4..8].try_into().unwrap());
        assert_eq!(physptr as u64, MPTABLE_START + 16);
    }

    #[test]
    fn test_mptable_marks_only_cpu0_as_bsp() {
        let table = build(3, MPTABLE_START).unwrap();
        let cpus: Vec<&[u8]> = table[16 + 44..].chunks(20).take(3).collect();
        assert_eq!(cpus[0][3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(cpus[1][3], CPU_ENABLED);
        assert_eq!((cpus[2][0], cpus[2][1]), (ENTRY_PROCESSOR, 2));
    }

    #[test]
    fn test_mptable_fits_in_bios_area_for_max_cpus() {
        assert!(build(254, MPTABLE_START).unwrap().len() as u64 <= BIOS_AREA_END - MPTABLE_START);
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(MpTableError::TooManyCpus { .. })
        ));
    }
}
