//! Host detection: what this machine offers to the feature resolver (seed 003 "Detection Phase").
//!
//! Everything is read below a configurable root (`/` on a real host, a fake tree in tests), from
//! `/proc` and `/sys` only: no commands are run, so detection works the same in a test sandbox.

mod cpu;
mod memory;
mod net;
mod pci;
mod storage;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cpu::CpuInfo;
pub use memory::MemoryInfo;
pub use net::NetInterface;
pub use pci::{IommuInfo, PciDevice};
pub use storage::Disk;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no usable `{field}` entry", path.display())]
    Missing { path: PathBuf, field: &'static str },
}

/// Whether KVM can run guests with hardware acceleration here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// `/dev/kvm` exists.
    pub device_present: bool,
    /// The kernel offers KVM (`/dev/kvm`), whatever the CPU flags say.
    pub usable: bool,
    /// `nested` parameter of kvm_intel / kvm_amd, when the module is loaded.
    pub nested: Option<bool>,
}

/// Everything detection found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub cpu: CpuInfo,
    pub kvm: KvmInfo,
    pub memory: MemoryInfo,
    /// Memory controllers with EDAC (ECC); `None` = the kernel exposes none, so unknown.
    pub ecc_memory_controllers: Option<u32>,
    pub iommu: IommuInfo,
    pub pci_devices: Vec<PciDevice>,
    pub disks: Vec<Disk>,
    pub network_interfaces: Vec<NetInterface>,
}

impl HostFacts {
    /// PCI display controllers (class 0x03xxxx).
    pub fn gpus(&self) -> impl Iterator<Item = &PciDevice> {
        self.pci_devices.iter().filter(|d| d.is_gpu())
    }
}

/// Reads the host below `root`.
pub fn detect(root: &Path) -> Result<HostFacts, HostError> {
    let cpu = cpu::detect(root)?;
    let arch = detect_arch(root, &cpu);
    let kvm = detect_kvm(root);
    let (pci_devices, iommu) = pci::detect(root)?;
    Ok(HostFacts {
        arch,
        cpu,
        kvm,
        memory: memory::detect(root)?,
        ecc_memory_controllers: net::detect_ecc_controllers(root)?,
        iommu,
        pci_devices,
        disks: storage::detect(root)?,
        network_interfaces: net::detect_interfaces(root)?,
    })
}

/// `/proc/sys/kernel/arch` where the kernel has it; otherwise the shape of cpuinfo tells.
fn detect_arch(root: &Path, cpu: &CpuInfo) -> String {
    if let Ok(Some(arch)) = read_trimmed(&root.join("proc/sys/kernel/arch")) {
        return arch;
    }
    if cpu.arm_features {
        "aarch64"
    } else {
        "x86_64"
    }
    .to_string()
}

/// KVM is usable when the kernel offers `/dev/kvm`. The CPU flag alone does not decide: a
/// nested host can run KVM without showing `vmx`/`svm` (this project's own CI machines use
/// `kvm_pvm`), and a CPU with the flag has no KVM until the module is loaded.
fn detect_kvm(root: &Path) -> KvmInfo {
    let device_present = root.join("dev/kvm").exists();
    let nested = ["kvm_intel", "kvm_amd"].iter().find_map(|module| {
        let path = root.join(format!("sys/module/{module}/parameters/nested"));
        let value = read_trimmed(&path).ok().flatten()?;
        Some(matches!(value.as_str(), "Y" | "y" | "1"))
    });
    KvmInfo {
        device_present,
        usable: device_present,
        nested,
    }
}

/// Reads a file; `Ok(None)` when it does not exist (optional facts).
fn read_optional(path: &Path) -> Result<Option<String>, HostError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_required(path: &Path) -> Result<String, HostError> {
    fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_trimmed(path: &Path) -> Result<Option<String>, HostError> {
    Ok(read_optional(path)?.map(|s| s.trim().to_string()))
}

/// Sorted entry names of a directory; empty when it does not exist.
fn list_dir(path: &Path) -> Result<Vec<String>, HostError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HostError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| HostError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Renders the facts for `hv detect` (human form).
pub fn render_text(facts: &HostFacts) -> String {
    let mut out = String::new();
    let virt = facts.cpu.virtualization.as_deref().unwrap_or("none");
    out.push_str(&format!("Architecture: {}\n", facts.arch));
    out.push_str(&format!(
        "CPU:          {} ({} logical CPUs, {} cores), virtualization: {virt}\n",
        facts.cpu.model, facts.cpu.logical_cpus, facts.cpu.cores
    ));
    let nested = match facts.kvm.nested {
        Some(true) => ", nested",
        _ => "",
    };
    let kvm = if facts.kvm.usable {
        "usable"
    } else {
        "not usable"
    };
    out.push_str(&format!(
        "KVM:          {kvm} (/dev/kvm present: {}){nested}\n",
        facts.kvm.device_present
    ));
    let mem = &facts.memory;
    out.push_str(&format!(
        "RAM:          {} MB total, {} MB available; hugepages {}/{} free of {} kB\n",
        mem.total_mb,
        mem.available_mb,
        mem.hugepages_free,
        mem.hugepages_total,
        mem.hugepage_size_kb
    ));
    let ecc = match facts.ecc_memory_controllers {
        Some(n) => format!("yes ({n} memory controllers)"),
        None => "unknown (no EDAC in sysfs)".to_string(),
    };
    out.push_str(&format!("ECC memory:   {ecc}\n"));
    let iommu = if facts.iommu.enabled {
        "enabled"
    } else {
        "not enabled"
    };
    out.push_str(&format!(
        "IOMMU:        {iommu}, {} groups\n",
        facts.iommu.groups.len()
    ));
    out.push_str(&format!(
        "PCI devices:  {} ({} GPU)\n",
        facts.pci_devices.len(),
        facts.gpus().count()
    ));
    for gpu in facts.gpus() {
        let group = gpu
            .iommu_group
            .map(|g| format!(", IOMMU group {g}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  GPU {} {} [{}:{}]{group}\n",
            gpu.address, gpu.vendor_name, gpu.vendor_id, gpu.device_id
        ));
    }
    out.push_str(&format!(
        "Network:      {} interfaces\n",
        facts.network_interfaces.len()
    ));
    for interface in &facts.network_interfaces {
        let kind = match (interface.bridge, interface.physical) {
            (true, _) => "bridge",
            (false, true) => "NIC",
            (false, false) => "virtual",
        };
        let speed = interface
            .speed_mbps
            .map(|s| format!(", {s} Mbit/s"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} {kind} {} {}{speed}\n",
            interface.name, interface.mac, interface.state
        ));
    }
    out.push_str(&format!("Disks:        {}\n", facts.disks.len()));
    for disk in &facts.disks {
        let kind = if disk.rotational { "HDD" } else { "SSD/NVMe" };
        out.push_str(&format!(
            "  {} {} GB {kind} {}\n",
            disk.name,
            disk.size_bytes / 1_000_000_000,
            disk.model
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_detect_real_host_finds_cpus_and_ram() {
        // This runs on Linux only (the project targets Linux hosts).
        let facts = detect(Path::new("/")).unwrap();
        assert!(facts.cpu.logical_cpus >= 1);
        assert!(facts.memory.total_mb > 0);
    }

    #[test]
    fn test_detect_kvm_without_cpu_flag_but_with_device_is_usable() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::create_dir_all(root.path().join("dev")).unwrap();
        fs::write(
            root.path().join("proc/cpuinfo"),
            "processor\t: 0\nflags\t\t: fpu sse\n",
        )
        .unwrap();
        fs::write(root.path().join("proc/meminfo"), "MemTotal: 1048576 kB\n").unwrap();
        fs::write(root.path().join("dev/kvm"), "").unwrap();
        let facts = detect(root.path()).unwrap();
        assert_eq!(facts.cpu.virtualization, None);
        assert!(facts.kvm.usable);
        fs::remove_file(root.path().join("dev/kvm")).unwrap();
        assert!(!detect(root.path()).unwrap().kvm.usable);
    }

    #[test]
    fn test_detect_missing_cpuinfo_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = detect(root.path()).unwrap_err();
        assert!(err.to_string().contains("proc/cpuinfo"), "{err}");
    }
}
