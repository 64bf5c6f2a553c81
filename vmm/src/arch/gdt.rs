//! Global descriptor table entries for the boot GDT, and their `kvm_segment` form.
//!
//! An x86 segment descriptor packs base (32 bits), limit (20 bits) and flags (access byte plus the
//! G/DB/L/AVL nibble) into 64 bits; KVM wants the same information unpacked in `kvm_segment`.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment: present, DPL 0, code execute/read accessed, L=1, G=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment: present, code execute/read accessed, D=1, G=1.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a data segment: present, data read/write accessed, B=1, G=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a busy 32/64-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// Boot GDT index of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// Boot GDT index of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// Boot GDT index of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// Packs one descriptor. `flags` holds the access byte in bits 0-7 and the G/DB/L/AVL nibble in
/// bits 12-15, as written in the constants above.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn entry_base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn entry_limit(entry: u64) -> u32 {
    (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32
}

fn flag(entry: u64, shift: u32, width: u32) -> u8 {
    ((entry >> shift) & ((1 << width) - 1)) as u8
}

/// The `kvm_segment` that loading selector `index * 8` from a GDT holding `entry` produces.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let granularity = flag(entry, 55, 1);
    let raw_limit = entry_limit(entry);
    kvm_segment {
        base: entry_base(entry),
        // With G=1 the limit counts 4 KiB pages; KVM wants it in bytes.
        limit: if granularity == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: flag(entry, 40, 4),
        present: flag(entry, 47, 1),
        dpl: flag(entry, 45, 2),
        db: flag(entry, 54, 1),
        s: flag(entry, 44, 1),
        l: flag(entry, 53, 1),
        g: granularity,
        avl: flag(entry, 52, 1),
        unusable: u8::from(flag(entry, 47, 1) == 0),
        padding: 0,
    }
}

/// The four-entry boot GDT: null, code, data, TSS. `long_mode` picks a 64-bit code segment (Linux
/// 64-bit boot protocol) or a flat 32-bit one (PVH).
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gdt_entry_matches_known_encodings() {
        // The classic flat descriptors every x86 boot loader writes.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn test_segment_from_entry_unpacks_fields() {
        let seg = segment_from_entry(gdt_entry(0xa09b, 0x1234_5678, 0xabcde), CODE_INDEX);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd_efff);
        assert_eq!(seg.selector, 8);
        assert_eq!((seg.type_, seg.present, seg.dpl, seg.s), (0xb, 1, 0, 1));
        assert_eq!((seg.l, seg.db, seg.g, seg.unusable), (1, 0, 1, 0));
        let data = segment_from_entry(gdt_entry(DATA_FLAGS, 0, 0xfffff), DATA_INDEX);
        assert_eq!(
            (data.type_, data.db, data.l, data.limit),
            (3, 1, 0, 0xffff_ffff)
        );
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }
}
