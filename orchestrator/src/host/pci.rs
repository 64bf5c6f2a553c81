//! PCI devices and IOMMU groups from sysfs (`/sys/bus/pci/devices`, `/sys/kernel/iommu_groups`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{list_dir, read_trimmed, HostError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. `0000:01:00.0`.
    pub address: String,
    /// 24-bit class code, e.g. `0x030000` (VGA controller).
    pub class: String,
    pub kind: String,
    pub vendor_id: String,
    pub vendor_name: String,
    pub device_id: String,
    /// Bound kernel driver (`vfio-pci`, `nvidia`, ...), if any.
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

impl PciDevice {
    pub fn is_gpu(&self) -> bool {
        self.class.starts_with("0x03")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuGroup {
    pub id: u32,
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuInfo {
    /// The kernel created IOMMU groups (the IOMMU is on and in use).
    pub enabled: bool,
    pub groups: Vec<IommuGroup>,
}

pub(super) fn detect(root: &Path) -> Result<(Vec<PciDevice>, IommuInfo), HostError> {
    let iommu = detect_iommu(root)?;
    let group_of: BTreeMap<&str, u32> = iommu
        .groups
        .iter()
        .flat_map(|g| g.devices.iter().map(move |d| (d.as_str(), g.id)))
        .collect();
    let devices_dir = root.join("sys/bus/pci/devices");
    let mut devices = Vec::new();
    for address in list_dir(&devices_dir)? {
        let dir = devices_dir.join(&address);
        let field = |name: &str| -> Result<String, HostError> {
            Ok(read_trimmed(&dir.join(name))?.unwrap_or_default())
        };
        let class = field("class")?;
        let vendor_id = field("vendor")?;
        let driver = fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
        devices.push(PciDevice {
            kind: class_kind(&class).to_string(),
            vendor_name: vendor_name(&vendor_id).to_string(),
            device_id: field("device")?,
            iommu_group: group_of.get(address.as_str()).copied(),
            address,
            class,
            vendor_id,
            driver,
        });
    }
    Ok((devices, iommu))
}

fn detect_iommu(root: &Path) -> Result<IommuInfo, HostError> {
    let groups_dir = root.join("sys/kernel/iommu_groups");
    let mut groups = Vec::new();
    for name in list_dir(&groups_dir)? {
        // Non-numeric entries are not groups; skip them rather than fail detection.
        let Ok(id) = name.parse() else { continue };
        let devices = list_dir(&groups_dir.join(&name).join("devices"))?;
        groups.push(IommuGroup { id, devices });
    }
    groups.sort_by_key(|g| g.id);
    Ok(IommuInfo {
        enabled: !groups.is_empty(),
        groups,
    })
}

/// PCI base class (first byte of the class code) as a word.
fn class_kind(class: &str) -> &'static str {
    match class.get(0..4).unwrap_or_default() {
        "0x01" => "storage",
        "0x02" => "network",
        "0x03" => "gpu",
        "0x04" => "multimedia",
        "0x06" => "bridge",
        "0x0c" => "serial-bus",
        _ => "other",
    }
}

fn vendor_name(vendor: &str) -> &'static str {
    match vendor {
        "0x10de" => "NVIDIA",
        "0x1002" => "AMD/ATI",
        "0x1022" => "AMD",
        "0x8086" => "Intel",
        "0x1af4" => "Red Hat (virtio)",
        "0x1234" => "QEMU",
        "0x15b3" => "Mellanox",
        "0x144d" => "Samsung",
        "0x13b5" => "ARM",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_class_kind_names_gpu_and_network() {
        assert_eq!(class_kind("0x030000"), "gpu");
        assert_eq!(class_kind("0x020000"), "network");
        assert_eq!(class_kind(""), "other");
    }

    #[test]
    fn test_detect_links_devices_to_groups() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("sys/bus/pci/devices/0000:01:00.0");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("class"), "0x030000\n").unwrap();
        fs::write(dev.join("vendor"), "0x10de\n").unwrap();
        fs::write(dev.join("device"), "0x2204\n").unwrap();
        fs::create_dir_all(
            root.path()
                .join("sys/kernel/iommu_groups/7/devices/0000:01:00.0"),
        )
        .unwrap();
        let (devices, iommu) = detect(root.path()).unwrap();
        assert!(iommu.enabled);
        assert_eq!(devices[0].iommu_group, Some(7));
        assert!(devices[0].is_gpu());
        assert_eq!(devices[0].vendor_name, "NVIDIA");
    }
}
