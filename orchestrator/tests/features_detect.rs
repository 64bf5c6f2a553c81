//! Host detection against fake /proc and /sys trees, and the resolver's hardware checks on them.

use std::path::PathBuf;

use hv_orchestrator::features::{resolve, Catalog, Selection};
use hv_orchestrator::host::{detect, HostFacts};

fn fixture(name: &str) -> HostFacts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hosts")
        .join(name);
    detect(&root).unwrap_or_else(|err| panic!("detecting {name}: {err}"))
}

fn select(names: &[&str]) -> Selection {
    Selection {
        tier: None,
        extra: names.iter().map(|s| s.to_string()).collect(),
        risk_tolerance: None,
    }
}

#[test]
fn test_detect_laptop() {
    let facts = fixture("laptop");
    assert_eq!(facts.arch, "x86_64");
    assert_eq!(facts.cpu.model, "Intel(R) Core(TM) i7-8565U CPU @ 1.80GHz");
    assert_eq!((facts.cpu.logical_cpus, facts.cpu.cores), (8, 4));
    assert_eq!(facts.cpu.virtualization.as_deref(), Some("vmx"));
    assert!(facts.kvm.usable);
    assert_eq!(facts.kvm.nested, Some(false));
    assert_eq!(facts.memory.total_mb, 8192);
    assert!(!facts.iommu.enabled);
    let gpus: Vec<_> = facts.gpus().collect();
    assert_eq!(gpus.len(), 1);
    assert_eq!(
        (gpus[0].vendor_name.as_str(), gpus[0].driver.as_deref()),
        ("Intel", Some("i915"))
    );
    let disks: Vec<_> = facts.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(disks, ["nvme0n1"]);
    assert_eq!(facts.ecc_memory_controllers, None);
    let interfaces: Vec<_> = facts
        .network_interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.physical, i.speed_mbps))
        .collect();
    assert_eq!(interfaces, [("wlp0s20f3", true, None)]);
}

#[test]
fn test_detect_server_with_iommu_and_two_gpus() {
    let facts = fixture("server-iommu-2gpu");
    assert_eq!((facts.cpu.logical_cpus, facts.cpu.cores), (32, 16));
    assert_eq!(facts.memory.total_mb, 131072);
    assert_eq!(
        (facts.memory.hugepages_total, facts.memory.hugepages_free),
        (1024, 1000)
    );
    assert!(facts.iommu.enabled);
    assert_eq!(facts.iommu.groups.len(), 5);
    let gpus: Vec<_> = facts
        .gpus()
        .map(|g| (g.address.as_str(), g.iommu_group, g.driver.as_deref()))
        .collect();
    assert_eq!(
        gpus,
        [
            ("0000:17:00.0", Some(24), Some("vfio-pci")),
            ("0000:65:00.0", Some(31), Some("nvidia"))
        ]
    );
    assert_eq!(facts.kvm.nested, Some(true));
    assert_eq!(facts.ecc_memory_controllers, Some(2));
    let interfaces: Vec<_> = facts
        .network_interfaces
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.state.as_str(),
                i.bridge,
                i.speed_mbps,
                i.mtu,
            )
        })
        .collect();
    assert_eq!(
        interfaces,
        [
            ("br0", "up", true, None, 9000),
            ("eno1", "up", false, Some(10000), 9000),
            ("eno2", "down", false, None, 1500)
        ]
    );
    let hdd = facts.disks.iter().find(|d| d.name == "sda").unwrap();
    assert!(hdd.rotational);
    assert_eq!(hdd.size_bytes, 7_814_037_168 * 512);
}

#[test]
fn test_detect_arm64() {
    let facts = fixture("arm64");
    assert_eq!(facts.arch, "aarch64");
    assert_eq!(facts.cpu.model, "ARM Neoverse-N1");
    assert_eq!(facts.cpu.virtualization, None);
    assert!(facts.kvm.usable, "ARM64 KVM is usable when /dev/kvm exists");
    assert!(facts.iommu.enabled);
    assert_eq!(facts.gpus().count(), 1);
}

#[test]
fn test_resolve_gpu_passthrough_on_laptop_explains_iommu() {
    let catalog = Catalog::builtin().unwrap();
    let resolution = resolve(
        &catalog,
        &select(&["gpu-passthrough"]),
        Some(&fixture("laptop")),
    )
    .unwrap();
    assert_eq!(
        resolution.errors,
        ["gpu-passthrough: IOMMU not enabled (required for gpu-passthrough; boot with intel_iommu=on or amd_iommu=on)"]
    );
}

#[test]
fn test_resolve_gpu_passthrough_on_server_is_valid() {
    let catalog = Catalog::builtin().unwrap();
    let resolution = resolve(
        &catalog,
        &select(&["gpu-passthrough"]),
        Some(&fixture("server-iommu-2gpu")),
    )
    .unwrap();
    assert!(resolution.is_valid(), "{:?}", resolution.errors);
    assert!(resolution.warnings.is_empty(), "{:?}", resolution.warnings);
    assert_eq!(resolution.host_ram_mb, Some(131072));
}

#[test]
fn test_resolve_gpu_passthrough_on_arm64_warns_and_single_gpu() {
    let catalog = Catalog::builtin().unwrap();
    let resolution = resolve(
        &catalog,
        &select(&["gpu-passthrough"]),
        Some(&fixture("arm64")),
    )
    .unwrap();
    assert!(resolution.is_valid(), "{:?}", resolution.errors);
    assert_eq!(resolution.warnings.len(), 2, "{:?}", resolution.warnings);
    assert!(resolution.warnings[0].contains("ARM64"));
    assert!(resolution.warnings[1].contains("single GPU"));
}

#[test]
fn test_resolve_enterprise_tier_on_laptop_reports_ram() {
    let catalog = Catalog::builtin().unwrap();
    let selection = Selection {
        tier: Some("enterprise".into()),
        extra: Default::default(),
        risk_tolerance: None,
    };
    let resolution = resolve(&catalog, &selection, Some(&fixture("laptop"))).unwrap();
    let ram_line = format!(
        "Insufficient RAM: need {}MB, have 8192MB",
        resolution.ram_mb
    );
    assert_eq!(resolution.errors, [ram_line]);
}

#[test]
fn test_resolve_qemu_kvm_without_kvm_is_refused() {
    let catalog = Catalog::builtin().unwrap();
    let mut facts = fixture("laptop");
    facts.kvm.device_present = false;
    facts.kvm.usable = false;
    let resolution = resolve(&catalog, &select(&["qemu-kvm"]), Some(&facts)).unwrap();
    assert_eq!(
        resolution.errors,
        ["qemu-kvm: KVM acceleration unavailable (/dev/kvm missing: is the kvm module loaded?)"]
    );
    facts.cpu.virtualization = None;
    let resolution = resolve(&catalog, &select(&["qemu-kvm"]), Some(&facts)).unwrap();
    assert_eq!(
        resolution.errors,
        ["qemu-kvm: KVM acceleration unavailable: no /dev/kvm and no vmx/svm CPU flag (enable Intel VT-x or AMD-V in the firmware)"]
    );
}
