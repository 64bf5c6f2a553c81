//! RAM and hugepages from `/proc/meminfo`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_required, HostError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_mb: u64,
    pub available_mb: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepage_size_kb: u64,
}

pub(super) fn detect(root: &Path) -> Result<MemoryInfo, HostError> {
    let path = root.join("proc/meminfo");
    let text = read_required(&path)?;
    let field = |name: &'static str| -> Option<u64> {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            if key.trim() != name {
                return None;
            }
            value.split_whitespace().next()?.parse().ok()
        })
    };
    let total_kb = field("MemTotal").ok_or(HostError::Missing {
        path: path.clone(),
        field: "MemTotal",
    })?;
    Ok(MemoryInfo {
        total_mb: total_kb / 1024,
        available_mb: field("MemAvailable").unwrap_or(total_kb) / 1024,
        hugepages_total: field("HugePages_Total").unwrap_or(0),
        hugepages_free: field("HugePages_Free").unwrap_or(0),
        hugepage_size_kb: field("Hugepagesize").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_detect_reads_total_and_hugepages() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/meminfo"),
            "MemTotal:       8388608 kB\nMemAvailable:   4194304 kB\nHugePages_Total:      16\nHugePages_Free:        8\nHugepagesize:       2048 kB\n",
        )
        .unwrap();
        let info = detect(root.path()).unwrap();
        assert_eq!((info.total_mb, info.available_mb), (8192, 4096));
        assert_eq!(
            (
                info.hugepages_total,
                info.hugepages_free,
                info.hugepage_size_kb
            ),
            (16, 8, 2048)
        );
    }

    #[test]
    fn test_detect_without_memtotal_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/meminfo"), "MemFree: 1 kB\n").unwrap();
        let err = detect(root.path()).unwrap_err();
        assert!(err.to_string().contains("MemTotal"), "{err}");
    }
}
