//! Network interfaces from `/sys/class/net` and ECC memory controllers from EDAC
//! (seed 003: "detects special features (IOMMU, ECC RAM), identifies network configuration").

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{list_dir, read_trimmed, HostError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub mac: String,
    /// `up`, `down`, `unknown`...
    pub state: String,
    pub mtu: u32,
    /// Link speed in Mbit/s when the driver reports one.
    pub speed_mbps: Option<u32>,
    /// Backed by a device (NIC) rather than virtual (bridge, veth, tap).
    pub physical: bool,
    pub bridge: bool,
}

pub(super) fn detect_interfaces(root: &Path) -> Result<Vec<NetInterface>, HostError> {
    let class = root.join("sys/class/net");
    let mut interfaces = Vec::new();
    for name in list_dir(&class)? {
        if name == "lo" {
            continue;
        }
        let dir = class.join(&name);
        // Attributes a driver does not support fail to read (`speed` gives EINVAL on ifb,
        // -1 when the link is down): they are unknown, not a detection failure.
        let text = |file: &str| -> String {
            read_trimmed(&dir.join(file))
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let speed_mbps = text("speed")
            .parse::<i64>()
            .ok()
            .and_then(|s| u32::try_from(s).ok());
        interfaces.push(NetInterface {
            mac: text("address"),
            state: text("operstate"),
            mtu: text("mtu").parse().unwrap_or(0),
            speed_mbps,
            physical: dir.join("device").exists(),
            bridge: dir.join("bridge").is_dir(),
            name,
        });
    }
    Ok(interfaces)
}

/// `Some(n)` memory controllers with EDAC (error detection, i.e. ECC) when the kernel exposes
/// any; `None` when it does not, which means "unknown" rather than "no ECC".
pub(super) fn detect_ecc_controllers(root: &Path) -> Result<Option<u32>, HostError> {
    let controllers = list_dir(&root.join("sys/devices/system/edac/mc"))?
        .into_iter()
        .filter(|name| name.starts_with("mc"))
        .count();
    Ok((controllers > 0).then_some(controllers as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn test_detect_interfaces_skips_loopback_and_reads_link() {
        let root = tempfile::tempdir().unwrap();
        for (name, speed) in [("lo", "-1"), ("eno1", "10000"), ("br0", "-1")] {
            let dir = root.path().join("sys/class/net").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("speed"), speed).unwrap();
            fs::write(dir.join("mtu"), "1500\n").unwrap();
        }
        fs::create_dir_all(root.path().join("sys/class/net/eno1/device")).unwrap();
        fs::create_dir_all(root.path().join("sys/class/net/br0/bridge")).unwrap();
        let interfaces = detect_interfaces(root.path()).unwrap();
        let summary: Vec<_> = interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.speed_mbps, i.physical, i.bridge, i.mtu))
            .collect();
        assert_eq!(
            summary,
            [
                ("br0", None, false, true, 1500),
                ("eno1", Some(10000), true, false, 1500)
            ]
        );
    }

    #[test]
    fn test_detect_ecc_controllers_unknown_without_edac() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect_ecc_controllers(root.path()).unwrap(), None);
        fs::create_dir_all(root.path().join("sys/devices/system/edac/mc/mc0")).unwrap();
        fs::create_dir_all(root.path().join("sys/devices/system/edac/mc/mc1")).unwrap();
        assert_eq!(detect_ecc_controllers(root.path()).unwrap(), Some(2));
    }
}
