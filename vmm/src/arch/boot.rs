//! The boot information a kernel receives: PVH `hvm_start_info` or the Linux zero page.
//!
//! Contracts: the PVH boot ABI (xenbits `docs/misc/pvh.html`: EBX points at `hvm_start_info`
//! version 1 with a memory map) and the Linux x86 boot protocol (`Documentation/x86/boot.rst`:
//! zero page with `setup_header`, e820 table, command line and initrd pointers).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use super::memory_map::MemoryMapEntry;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode at the ELF note's entry, EBX = `hvm_start_info`.
    Pvh,
    /// 64-bit Linux boot protocol: long mode at `startup_64`, RSI = zero page.
    Linux64,
}

/// Where an initrd was placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Errors writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// The memory map does not fit the structure the protocol defines.
    #[error("memory map has {entries} entries, more than the {max} the boot protocol allows")]
    TooManyMemoryMapEntries { entries: usize, max: usize },
    /// Writing to guest memory failed (the guest is smaller than the boot area).
    #[error("cannot write the {what} to guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

fn write_obj<T: ByteValued>(
    mem: &GuestMemoryMmap,
    value: T,
    addr: u64,
    what: &'static str,
) -> Result<(), BootInfoError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| BootInfoError::Write { what, source })
}

/// Writes `hvm_start_info` (version 1) at [`PVH_INFO_START`], followed by the module list (the
/// initrd, if any) and the memory map.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    memory_map: &[MemoryMapEntry],
    rsdp_addr: u64,
) -> Result<(), BootInfoError> {
    let modlist_addr = PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64;
    let nr_modules = u32::from(initrd.is_some());
    let memmap_addr =
        modlist_addr + u64::from(nr_modules) * std::mem::size_of::<hvm_modlist_entry>() as u64;
    let max_entries = (0x1000 - (memmap_addr - PVH_INFO_START)) as usize
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if memory_map.len() > max_entries {
        return Err(BootInfoError::TooManyMemoryMapEntries {
            entries: memory_map.len(),
            max: max_entries,
        });
    }

    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules,
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: memory_map.len() as u32,
        ..Default::default()
    };
    write_obj(mem, start_info, PVH_INFO_START, "PVH start info")?;
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        write_obj(mem, module, modlist_addr, "PVH module list")?;
    }
    for (i, entry) in memory_map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let at = memmap_addr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write_obj(mem, e, at, "PVH memory map")?;
    }
    Ok(())
}

/// Linux boot protocol constants (Documentation/x86/boot.rst).
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const LOADFLAG_LOADED_HIGH: u8 = 0x01;

/// Writes the zero page at [`ZERO_PAGE_START`]. `header` is the bzImage's own setup header, or
/// `None` for an ELF vmlinux (the VMM fills in the fields a loader must set).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    memory_map: &[MemoryMapEntry],
    rsdp_addr: u64,
) -> Result<(), BootInfoError> {
    let mut params = boot_params {
        // Boot protocol 2.14: where the ACPI RSDP is, so the kernel need not scan for it.
        acpi_rsdp_addr: rsdp_addr,
        ..Default::default()
    };
    let max = params.e820_table.len();
    if memory_map.len() > max {
        return Err(BootInfoError::TooManyMemoryMapEntries {
            entries: memory_map.len(),
            max,
        });
    }
    let mut hdr = header.unwrap_or_default();
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.loadflags |= LOADFLAG_CAN_USE_HEAP | LOADFLAG_LOADED_HIGH;
    hdr.heap_end_ptr = 0xfe00; // end of the real-mode heap, relative to the setup segment
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(initrd) = initrd {
        // Callers place the initrd below 4 GiB (checked in the loader).
        hdr.ramdisk_image = initrd.addr as u32;
        hdr.ramdisk_size = initrd.size as u32;
    }
    params.hdr = hdr;

    let mut table = params.e820_table;
    for (slot, entry) in table.iter_mut().zip(memory_map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_table = table;
    params.e820_entries = memory_map.len() as u8;
    write_obj(mem, params, ZERO_PAGE_START, "zero page")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::memory_map::memory_map;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn test_pvh_start_info_layout_follows_abi() {
        let mem = guest();
        let map = memory_map(128 << 20);
        let initrd = InitrdPlacement {
            addr: 0x700_0000,
            size: 0x1234,
        };
        write_pvh_start_info(&mem, Some(initrd), &map, 0xe0000).unwrap();
        // Read back by raw offsets, as a guest does.
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        let version: u32 = mem.read_obj(GuestAddress(PVH_INFO_START + 4)).unwrap();
        let nr_modules: u32 = mem.read_obj(GuestAddress(PVH_INFO_START + 12)).unwrap();
        let modlist: u64 = mem.read_obj(GuestAddress(PVH_INFO_START + 16)).unwrap();
        let cmdline: u64 = mem.read_obj(GuestAddress(PVH_INFO_START + 24)).unwrap();
        let rsdp: u64 = mem.read_obj(GuestAddress(PVH_INFO_START + 32)).unwrap();
        assert_eq!(rsdp, 0xe0000);
        let memmap: u64 = mem.read_obj(GuestAddress(PVH_INFO_START + 40)).unwrap();
        let entries: u32 = mem.read_obj(GuestAddress(PVH_INFO_START + 48)).unwrap();
        assert_eq!((magic, version, nr_modules), (0x336e_c578, 1, 1));
        assert_eq!(cmdline, CMDLINE_START);
        assert_eq!(entries as usize, map.len());
        let module_addr: u64 = mem.read_obj(GuestAddress(modlist)).unwrap();
        assert_eq!(module_addr, initrd.addr);
        let last_type: u32 = mem
            .read_obj(GuestAddress(memmap + 24 * (map.len() as u64 - 1) + 16))
            .unwrap();
        assert_eq!(last_type, 1);
    }

    #[test]
    fn test_zero_page_has_header_cmdline_and_e820() {
        let mem = guest();
        let map = memory_map(64 << 20);
        write_zero_page(&mem, None, 42, None, &map, 0xe0000).unwrap();
        let hdr_magic: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x202)).unwrap();
        let boot_flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        let cmd_line_ptr: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x228)).unwrap();
        let e820_entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap();
        let rsdp: u64 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x70)).unwrap();
        assert_eq!(rsdp, 0xe0000);
        let first_type: u32 = mem
            .read_obj(GuestAddress(ZERO_PAGE_START + 0x2d0 + 16))
            .unwrap();
        assert_eq!(hdr_magic, KERNEL_HDR_MAGIC);
        assert_eq!(boot_flag, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(cmd_line_ptr as u64, CMDLINE_START);
        assert_eq!(e820_entries as usize, map.len());
        assert_eq!(first_type, 1);
    }
}
