//! A minimal reader for the facts of an x86-64 ELF image that a direct-boot VMM uses:
//! entry point, loadable segments and the Xen PVH entry note. Used by the unit tests and
//! `hv-test-guests --list`; hv-vmm itself loads kernels with linux-loader.

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const ELF64_HEADER_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;
const NOTE_HEADER_SIZE: usize = 12;
/// Xen's ELF note type for the 32-bit PVH entry point (xen/include/public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Why an image could not be read as an x86-64 ELF.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("not a little-endian 64-bit x86-64 ELF")]
    WrongKind,
    #[error("ELF image is truncated: {what} at byte {offset} runs past the end")]
    Truncated { what: &'static str, offset: usize },
    #[error("ELF program header entry size is {0}, expected 56")]
    BadProgramHeaderSize(u16),
    #[error("the Xen PVH note has a {0}-byte descriptor, too small for a 32-bit address")]
    ShortPvhNote(u32),
}

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub executable: bool,
}

/// What a direct-boot loader needs to know about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfSummary {
    /// `e_entry`: where the 64-bit Linux boot protocol enters.
    pub entry: u64,
    /// The 32-bit PVH entry from the `Xen` note of type 18, if the image has one.
    pub pvh_entry: Option<u32>,
    pub segments: Vec<LoadSegment>,
}

impl ElfSummary {
    /// Reads the header, the program headers and the notes of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, ElfError> {
        let header = bytes(image, 0, ELF64_HEADER_SIZE, "ELF header")?;
        if &header[..4] != ELF_MAGIC {
            return Err(ElfError::NotElf);
        }
        if header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB || read_u16(header, 18) != EM_X86_64
        {
            return Err(ElfError::WrongKind);
        }
        let entry = read_u64(header, 24);
        let phoff = read_u64(header, 32) as usize;
        let phentsize = read_u16(header, 54);
        let phnum = usize::from(read_u16(header, 56));
        if usize::from(phentsize) != ELF64_PHDR_SIZE {
            return Err(ElfError::BadProgramHeaderSize(phentsize));
        }

        let mut summary = ElfSummary {
            entry,
            pvh_entry: None,
            segments: Vec::new(),
        };
        for index in 0..phnum {
            let offset = phoff.saturating_add(index * ELF64_PHDR_SIZE);
            let phdr = bytes(image, offset, ELF64_PHDR_SIZE, "program header")?;
            let file_offset = read_u64(phdr, 8) as usize;
            let filesz = read_u64(phdr, 32);
            match read_u32(phdr, 0) {
                PT_LOAD => summary.segments.push(LoadSegment {
                    paddr: read_u64(phdr, 24),
                    filesz,
                    memsz: read_u64(phdr, 40),
                    executable: read_u32(phdr, 4) & PF_X != 0,
                }),
                PT_NOTE => {
                    let notes = bytes(image, file_offset, filesz as usize, "note segment")?;
                    if let Some(pvh_entry) = find_pvh_entry(notes)? {
                        summary.pvh_entry = Some(pvh_entry);
                    }
                }
                _ => {}
            }
        }
        Ok(summary)
    }
}

/// Walks the notes of one PT_NOTE segment (4-byte aligned name and descriptor, as on x86-64 Linux).
fn find_pvh_entry(notes: &[u8]) -> Result<Option<u32>, ElfError> {
    let mut offset = 0;
    while offset + NOTE_HEADER_SIZE <= notes.len() {
        let namesz = read_u32(notes, offset) as usize;
        let descsz = read_u32(notes, offset + 4);
        let note_type = read_u32(notes, offset + 8);
        let name_offset = offset + NOTE_HEADER_SIZE;
        let desc_offset = name_offset + align4(namesz);
        let name = bytes(notes, name_offset, namesz, "note name")?;
        let desc = bytes(notes, desc_offset, descsz as usize, "note descriptor")?;
        if name == b"Xen\0" && note_type == XEN_ELFNOTE_PHYS32_ENTRY {
            if desc.len() < 4 {
                return Err(ElfError::ShortPvhNote(descsz));
            }
            return Ok(Some(read_u32(desc, 0)));
        }
        offset = desc_offset + align4(descsz as usize);
    }
    Ok(None)
}

fn align4(value: usize) -> usize {
    value.next_multiple_of(4)
}

fn bytes<'a>(
    image: &'a [u8],
    offset: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], ElfError> {
    offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .ok_or(ElfError::Truncated { what, offset })
}

// The callers below have already bounds-checked `data` through `bytes`.
fn read_u16(data: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([data[offset], data[offset + 1]])
}

fn read_u32(data: &[u8], offset: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&data[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(data: &[u8], offset: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&data[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&note_type.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(align4(out.len()), 0);
        out.extend_from_slice(desc);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn test_find_pvh_entry_skips_other_notes() {
        let mut notes = note(
            b"GNU\0",
            3,
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            ],
        );
        notes.extend(note(b"Xen\0", 17, &[0; 8]));
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0123_4567_u64.to_le_bytes(),
        ));
        assert_eq!(find_pvh_entry(&notes), Ok(Some(0x0123_4567)));
    }

    #[test]
    fn test_find_pvh_entry_none_without_xen_note() {
        let notes = note(b"GNU\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        assert_eq!(find_pvh_entry(&notes), Ok(None));
    }

    #[test]
    fn test_find_pvh_entry_rejects_short_descriptor() {
        let notes = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 2]);
        assert_eq!(find_pvh_entry(&notes), Err(ElfError::ShortPvhNote(2)));
    }

    #[test]
    fn test_parse_rejects_non_elf_and_truncated_images() {
        assert_eq!(
            ElfSummary::parse(b"MZ").unwrap_err(),
            ElfError::Truncated {
                what: "ELF header",
                offset: 0
            }
        );
        assert_eq!(ElfSummary::parse(&[0; 64]).unwrap_err(), ElfError::NotElf);
        let mut header = [0_u8; 64];
        header[..4].copy_from_slice(ELF_MAGIC);
        header[4] = 1; // ELFCLASS32
        assert_eq!(ElfSummary::parse(&header).unwrap_err(), ElfError::WrongKind);
    }
}
