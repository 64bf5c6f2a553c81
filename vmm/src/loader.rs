//! Loads the kernel (ELF vmlinux or bzImage) and the initrd into guest memory and decides how the
//! boot processor enters the kernel.
//!
//! * ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note → PVH entry (32-bit, paging off).
//! * ELF without it → 64-bit Linux boot protocol at the ELF entry (`startup_64`).
//! * bzImage → protected-mode kernel at 1 MiB, 64-bit entry 0x200 bytes in, zero page built from
//!   the image's own setup header.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::arch::boot::{BootProtocol, InitrdPlacement};
use crate::arch::layout::{HIGH_MEMORY_START, MMIO_HOLE_START};

/// Offset of the 64-bit entry point (`startup_64`) from the bzImage load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Linux's default `initrd_addr_max` for images that predate the field.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel or initrd file cannot be opened or read.
    #[error("cannot read {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither ELF nor bzImage.
    #[error(
        "{path} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" boot header)"
    )]
    UnknownFormat { path: PathBuf },
    /// The kernel image needs more memory than the guest has.
    #[error("kernel {path} needs memory up to {needed_mib} MiB but the guest has {memory_mib} MiB: raise --memory")]
    KernelDoesNotFit {
        path: PathBuf,
        needed_mib: u64,
        memory_mib: u64,
    },
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Kernel + initrd do not fit below the initrd limit.
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory above the kernel: raise --memory")]
    InitrdDoesNotFit { path: PathBuf, size_mib: u64 },
    /// The initrd could not be copied into guest memory.
    #[error("cannot copy initrd {path} into guest memory")]
    InitrdCopy {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The loaded kernel: how to enter it and what it occupies.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub protocol: BootProtocol,
    pub entry: u64,
    /// First guest address after the kernel image (including its bss).
    pub end: u64,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelFormat {
    Elf,
    BzImage,
}

fn open(path: &Path, what: &'static str) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, LoaderError> {
    let mut head = [0u8; 0x206];
    let read_err = |source| LoaderError::Open {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(read_err)? {
            0 => break,
            n => filled += n,
        }
    }
    file.rewind().map_err(read_err)?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(LoaderError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

/// Highest guest address an ELF image's loadable segments reach, read from its program headers
/// (used only to explain a failed load).
fn elf_required_end(file: &mut File) -> Option<u64> {
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut ehdr).ok()?;
    let phoff = u64::from_le_bytes(ehdr[0x20..0x28].try_into().ok()?);
    let phentsize = u16::from_le_bytes([ehdr[0x36], ehdr[0x37]]) as usize;
    let phnum = u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]) as usize;
    let mut table = vec![0u8; phentsize.checked_mul(phnum)?];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut table).ok()?;
    table
        .chunks_exact(phentsize.max(1))
        .filter(|ph| ph.len() >= 0x30 && u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == 1)
        .filter_map(|ph| {
            let paddr = u64::from_le_bytes(ph[0x18..0x20].try_into().ok()?);
            let memsz = u64::from_le_bytes(ph[0x28..0x30].try_into().ok()?);
            paddr.checked_add(memsz)
        })
        .max()
}

/// Loads the kernel at `path` into `mem` (a guest of `memory_bytes`).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    path: &Path,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = open(path, "kernel")?;
    let format = detect_format(&mut file, path)?;
    let highmem = Some(GuestAddress(HIGH_MEMORY_START));
    let result: Result<KernelLoaderResult, _> = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, highmem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, highmem),
    };
    let does_not_fit = |needed: u64| LoaderError::KernelDoesNotFit {
        path: path.to_path_buf(),
        needed_mib: needed.div_ceil(1 << 20),
        memory_mib: memory_bytes >> 20,
    };
    let loaded = match result {
        Ok(loaded) => loaded,
        Err(source) => {
            let needed = match format {
                KernelFormat::Elf => elf_required_end(&mut file),
                KernelFormat::BzImage => file.metadata().ok().map(|m| HIGH_MEMORY_START + m.len()),
            };
            return Err(match needed {
                Some(needed) if needed > memory_bytes.min(MMIO_HOLE_START) => does_not_fit(needed),
                _ => LoaderError::Load {
                    path: path.to_path_buf(),
                    source,
                },
            });
        }
    };
    if loaded.kernel_end > memory_bytes.min(MMIO_HOLE_START) {
        return Err(does_not_fit(loaded.kernel_end));
    }
    Ok(match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(entry)) => LoadedKernel {
            protocol: BootProtocol::Pvh,
            entry: entry.0,
            end: loaded.kernel_end,
            setup_header: None,
        },
        (KernelFormat::Elf, _) => LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: loaded.kernel_load.0,
            end: loaded.kernel_end,
            setup_header: None,
        },
        (KernelFormat::BzImage, _) => LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: loaded.kernel_end,
            setup_header: loaded.setup_header,
        },
    })
}

/// Where an initrd of `size` bytes goes: as high as possible below both the end of low RAM and the
/// kernel's `initrd_addr_max`, page aligned, and above the kernel.
pub fn initrd_address(memory_bytes: u64, kernel: &LoadedKernel, size: u64) -> Option<u64> {
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|max| *max != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let top = memory_bytes.min(MMIO_HOLE_START).min(addr_max + 1);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel.end.next_multiple_of(PAGE_SIZE)).then_some(addr)
}

/// Copies the initrd at `path` into guest memory above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<InitrdPlacement, LoaderError> {
    let mut file = open(path, "initrd")?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let addr = initrd_address(memory_bytes, kernel, size).ok_or_else(|| {
        LoaderError::InitrdDoesNotFit {
            path: path.to_path_buf(),
            size_mib: size.div_ceil(1 << 20),
        }
    })?;
    use vm_memory::GuestMemoryBackend;
    let copy_err = |source| LoaderError::InitrdCopy {
        path: path.to_path_buf(),
        source,
    };
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(copy_err)?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| copy_err(e.into()))?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            protocol: BootProtocol::Pvh,
            entry: HIGH_MEMORY_START,
            end,
            setup_header: None,
        }
    }

    #[test]
    fn test_initrd_goes_high_and_page_aligned() {
        let addr = initrd_address(128 << 20, &kernel(2 << 20), 5000).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 5000 <= 128 << 20);
        assert!(addr >= (128 << 20) - 3 * PAGE_SIZE);
    }

    #[test]
    fn test_initrd_respects_addr_max_and_kernel_end() {
        let big_guest = 2u64 << 30;
        let addr = initrd_address(big_guest, &kernel(2 << 20), 1 << 20).unwrap();
        assert!(addr + (1 << 20) <= DEFAULT_INITRD_ADDR_MAX + 1);
        assert_eq!(initrd_address(16 << 20, &kernel(15 << 20), 2 << 20), None);
        assert_eq!(initrd_address(1 << 20, &kernel(0), 2 << 20), None);
    }

    #[test]
    fn test_detect_format_rejects_text_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notakernel");
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(matches!(
            detect_format(&mut file, &path),
            Err(LoaderError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn test_detect_format_finds_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bz");
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&path, &image).unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(
            detect_format(&mut file, &path).unwrap(),
            KernelFormat::BzImage
        );
    }
}
