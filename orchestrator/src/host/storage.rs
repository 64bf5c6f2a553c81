//! Block devices from `/sys/block`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{list_dir, read_trimmed, HostError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
    pub removable: bool,
    pub model: String,
}

/// Virtual block devices that are not disks a VM could be stored on.
const PSEUDO_PREFIXES: [&str; 5] = ["loop", "ram", "zram", "dm-", "sr"];

pub(super) fn detect(root: &Path) -> Result<Vec<Disk>, HostError> {
    let block = root.join("sys/block");
    let mut disks = Vec::new();
    for name in list_dir(&block)? {
        if PSEUDO_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = block.join(&name);
        let number = |file: &str| -> Result<u64, HostError> {
            Ok(read_trimmed(&dir.join(file))?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0))
        };
        disks.push(Disk {
            // `size` is always in 512-byte sectors, whatever the logical block size.
            size_bytes: number("size")? * 512,
            rotational: number("queue/rotational")? == 1,
            removable: number("removable")? == 1,
            model: read_trimmed(&dir.join("device/model"))?.unwrap_or_default(),
            name,
        });
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn test_detect_skips_loop_devices_and_reads_sizes() {
        let root = tempfile::tempdir().unwrap();
        for name in ["loop0", "sda"] {
            let dir = root.path().join("sys/block").join(name);
            fs::create_dir_all(dir.join("queue")).unwrap();
            fs::write(dir.join("size"), "2048\n").unwrap();
            fs::write(dir.join("queue/rotational"), "1\n").unwrap();
        }
        let disks = detect(root.path()).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(
            (
                disks[0].name.as_str(),
                disks[0].size_bytes,
                disks[0].rotational
            ),
            ("sda", 1_048_576, true)
        );
    }
}
