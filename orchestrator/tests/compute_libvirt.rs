//! libvirt import/export against a corpus of realistic domain XMLs (virt-install q35 + qcow2 + bridge,
//! direct kernel boot, VFIO GPU passthrough, memory units and verbatim metadata), with round trips and,
//! where libvirt's own validator is installed, schema validation of what we export.

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_orchestrator::compute::catalog::{Catalog, Sourced};
use hv_orchestrator::compute::resolve::{resolve_unit, ResolvedUnit, RestartPolicy};
use hv_orchestrator::compute::spec::{self, UnitDoc};
use hv_orchestrator::libvirt::{export, import_file, import_str, Imported};

const CORPUS: &[&str] = &[
    "virt-install-q35-qcow2-bridge.xml",
    "direct-kernel-boot.xml",
    "vfio-gpu-passthrough.xml",
    "memory-units-and-metadata.xml",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/libvirt")
        .join(name)
}

fn import(name: &str) -> Imported {
    import_file(&fixture(name), None).unwrap()
}

fn resolved(unit: &UnitDoc) -> ResolvedUnit {
    let mut catalog = Catalog::default();
    let name = unit.name.clone().unwrap();
    catalog.units.insert(
        name.clone(),
        Sourced {
            doc: unit.clone(),
            path: "units/x.toml".into(),
        },
    );
    resolve_unit(&catalog, &name).unwrap().resolved
}

fn has_warning(imported: &Imported, needle: &str) -> bool {
    imported.warnings.iter().any(|w| w.contains(needle))
}

/// Fails (instead of skipping) when CI=true or HV_REQUIRE_TOOLS=1.
fn tool_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("HV_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !tool_required(),
            "{tool} is required (CI=true or HV_REQUIRE_TOOLS=1) but missing"
        );
        eprintln!("skipping: {tool} not installed");
    }
    found
}

#[test]
fn test_import_virt_install_q35_qcow2_bridge() {
    let i = import("virt-install-q35-qcow2-bridge.xml");
    assert_eq!(i.name, "web01");
    let u = resolved(&i.unit);
    assert_eq!(
        (u.vcpus, u.memory_mib, u.memory_current_mib),
        (2, 4096, Some(4096))
    );
    assert_eq!(
        u.disks.len(),
        1,
        "the empty cdrom is skipped (with a warning)"
    );
    assert_eq!(u.disks[0].format, "qcow2");
    assert_eq!(u.network[0].mode, "bridge");
    assert_eq!(u.network[0].source.as_deref(), Some("br0"));
    assert_eq!(u.network[0].mac.as_deref(), Some("52:54:00:6b:3c:58"));
    assert_eq!(u.libvirt.machine.as_deref(), Some("pc-q35-7.2"));
    for expected in [
        "<domain/devices/graphics>",
        "<domain/devices/video>",
        "<domain/devices/controller> not imported: device not supported by hv (x4)",
        "<domain/devices/channel>",
        "<domain/cpu>",
        "<domain/clock>",
        "<domain/pm>",
        "<domain/os/boot>",
        "device=\"cdrom\"> without <source> skipped",
        "is qcow2",
        "no direct kernel boot",
        "bus=\"sata\"",
    ] {
        assert!(
            has_warning(&i, expected),
            "missing warning {expected:?} in {:#?}",
            i.warnings
        );
    }
}

#[test]
fn test_import_direct_kernel_boot() {
    let i = import("direct-kernel-boot.xml");
    let u = resolved(&i.unit);
    assert_eq!(u.kernel.as_deref(), Some("/var/lib/hv/kernels/vmlinux-6.1"));
    assert_eq!(
        u.initrd.as_deref(),
        Some("/var/lib/hv/kernels/initrd.img-6.1")
    );
    assert_eq!(
        u.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda rw quiet")
    );
    assert_eq!(
        (u.vcpus, u.memory_mib, u.memory_current_mib),
        (3, 2048, Some(1536))
    );
    assert_eq!(u.cpuset.as_deref(), Some("0-3,^2"));
    assert_eq!(u.placement.as_deref(), Some("static"));
    assert_eq!(
        u.restart_policy,
        RestartPolicy::OnFailure,
        "on_crash=restart"
    );
    assert_eq!(
        u.description.as_deref(),
        Some("Direct kernel boot & raw disks")
    );
    let sources: Vec<(&str, &str)> = u
        .disks
        .iter()
        .map(|d| (d.source.as_str(), d.device.as_str()))
        .collect();
    assert_eq!(
        sources,
        [("file", "disk"), ("block", "disk"), ("file", "cdrom")]
    );
    assert!(u.disks[2].readonly);
    let nics: Vec<(&str, Option<&str>)> = u
        .network
        .iter()
        .map(|n| (n.mode.as_str(), n.source.as_deref()))
        .collect();
    assert_eq!(
        nics,
        [
            ("network", Some("default")),
            ("user", None),
            ("ethernet", Some("tap7"))
        ]
    );
    assert!(
        i.warnings.is_empty(),
        "everything here is supported: {:#?}",
        i.warnings
    );
}

#[test]
fn test_import_vfio_gpu_passthrough_hex_addresses() {
    let i = import("vfio-gpu-passthrough.xml");
    let u = resolved(&i.unit);
    let vfio: Vec<&str> = u
        .devices
        .iter()
        .filter(|d| d.kind == "vfio-pci")
        .filter_map(|d| d.address.as_deref())
        .collect();
    assert_eq!(vfio, ["0000:41:00.0", "0000:41:00.1"]);
    assert!(has_warning(&i, "<domain/devices/hostdev type=\"usb\">"));
    assert!(has_warning(&i, "<domain/devices/hostdev/rom>"));
    assert!(has_warning(&i, "<domain/features/kvm>"));
    assert!(has_warning(&i, "cache=\"none\""));
    let xml = export(&u);
    assert!(
        xml.contains("<address domain=\"0x0000\" bus=\"0x41\" slot=\"0x00\" function=\"0x1\"/>"),
        "{xml}"
    );
}

#[test]
fn test_import_keeps_metadata_verbatim() {
    let text = std::fs::read_to_string(fixture("memory-units-and-metadata.xml")).unwrap();
    let start = text.find("<metadata>").unwrap();
    let end = text.find("</metadata>").unwrap() + "</metadata>".len();
    let i = import("memory-units-and-metadata.xml");
    let u = resolved(&i.unit);
    assert_eq!(u.libvirt.metadata.as_deref(), Some(&text[start..end]));
    assert_eq!(
        (u.memory_mib, u.memory_current_mib),
        (1024, Some(768)),
        "unit='b' and unit='M'"
    );
    assert!(
        has_warning(&i, "<domain/qemu:commandline>"),
        "{:#?}",
        i.warnings
    );
    let again = import_str(&export(&u), Path::new("export.xml"), None).unwrap();
    assert_eq!(resolved(&again.unit).libvirt.metadata, u.libvirt.metadata);
}

#[test]
fn test_import_export_round_trip_over_corpus() {
    for name in CORPUS {
        let first = import(name);
        // The unit file we write parses back to the same unit.
        let toml_text = first.unit_toml();
        let reparsed = spec::parse_unit(&toml_text, Path::new("x.toml")).unwrap();
        assert_eq!(reparsed, first.unit, "{name}: TOML round trip");
        // export then import gives the same resolved unit.
        let unit = resolved(&first.unit);
        let second = import_str(&export(&unit), Path::new("export.xml"), None).unwrap();
        assert_eq!(resolved(&second.unit), unit, "{name}: XML round trip");
    }
}

#[test]
fn test_export_validates_against_libvirt_schema() {
    if !have("virt-xml-validate") || !have("xmllint") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in CORPUS {
        let path = dir.path().join(name);
        std::fs::write(&path, export(&resolved(&import(name).unit))).unwrap();
        let output = Command::new("virt-xml-validate")
            .arg(&path)
            .arg("domain")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn hv_compute(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hv-compute"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn test_cli_import_malformed_xml_reports_line_and_column() {
    let path = fixture("malformed.xml");
    let output = hv_compute(&["import", path.to_str().unwrap(), "--stdout"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("malformed.xml:4:28: malformed XML"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn test_cli_import_writes_unit_then_explain_and_export_use_it() {
    let spec = tempfile::tempdir().unwrap();
    let spec_dir = spec.path().to_str().unwrap();
    let xml = fixture("direct-kernel-boot.xml");
    let xml = xml.to_str().unwrap();
    let output = hv_compute(&["--spec-dir", spec_dir, "import", xml, "--name", "kb"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(spec.path().join("units/kb.toml").exists());
    let again = hv_compute(&["import", xml, "--name", "kb", "--spec-dir", spec_dir]);
    assert!(
        !again.status.success(),
        "refuses to overwrite without --force"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let explain = hv_compute(&["explain", "kb", "--spec-dir", spec_dir, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(json["settings"]["resources.vcpus"]["value"], 3);
    assert_eq!(json["settings"]["boot.kernel"]["origin"]["layer"], "unit");
    let exported = hv_compute(&["export", "kb", "--spec-dir", spec_dir]);
    let xml_out = String::from_utf8(exported.stdout).unwrap();
    assert!(xml_out.contains("<name>kb</name>"));
    assert!(xml_out.contains("<cmdline>console=ttyS0 root=/dev/vda rw quiet</cmdline>"));
}

#[test]
fn test_cli_import_converts_qcow2_with_qemu_img() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("disk.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("4M")
        .status()
        .unwrap();
    assert!(created.success());
    let xml = format!(
        "<domain type='kvm'><name>q</name><memory>65536</memory><vcpu>1</vcpu>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        qcow2.display()
    );
    let xml_path = dir.path().join("q.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let spec_dir = dir.path().join("spec");
    let output = hv_compute(&[
        "--spec-dir",
        spec_dir.to_str().unwrap(),
        "import",
        xml_path.to_str().unwrap(),
        "--convert-qcow2",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let raw = dir.path().join("disk.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 << 20);
    let unit = std::fs::read_to_string(spec_dir.join("units/q.toml")).unwrap();
    assert!(
        unit.contains("format = \"raw\"") && unit.contains("disk.raw"),
        "{unit}"
    );
}

mod round_trip_properties {
    use super::*;
    use hv_orchestrator::compute::spec::{Device, Disk, Nic, ResourcesDoc, SettingsDoc, Size};
    use proptest::prelude::*;

    /// Text with XML's special characters, to exercise escaping.
    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 /._<>&'\"=-]{1,24}"
            .prop_map(|s| s.trim().to_owned())
            .prop_filter("non-empty", |s| !s.is_empty())
    }

    fn disk() -> impl Strategy<Value = Disk> {
        (
            text(),
            prop::bool::ANY,
            prop::bool::ANY,
            prop::bool::ANY,
            "vd[a-z]",
        )
            .prop_map(|(path, qcow2, block, cdrom, target)| Disk {
                path,
                format: if qcow2 { "qcow2" } else { "raw" }.into(),
                device: if cdrom { "cdrom" } else { "disk" }.into(),
                source: if block { "block" } else { "file" }.into(),
                target: Some(target),
                readonly: cdrom,
            })
    }

    fn nic() -> impl Strategy<Value = Nic> {
        (
            0..4usize,
            "[a-z][a-z0-9-]{0,8}",
            "52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}",
        )
            .prop_map(|(mode, source, mac)| {
                let mode = ["bridge", "network", "user", "ethernet"][mode];
                Nic {
                    mode: mode.into(),
                    source: (mode != "user").then_some(source),
                    mac: Some(mac),
                    model: Some("virtio".into()),
                }
            })
    }

    fn device() -> impl Strategy<Value = Device> {
        (0..4usize, 0u32..0xffff, 0u32..0x100, 0u32..0x20, 0u32..8).prop_map(
            |(kind, domain, bus, slot, function)| match kind {
                0 => Device {
                    kind: "vfio-pci".into(),
                    address: Some(format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}")),
                },
                1 => Device {
                    kind: "rng".into(),
                    address: None,
                },
                2 => Device {
                    kind: "balloon".into(),
                    address: None,
                },
                _ => Device {
                    kind: "vsock".into(),
                    address: None,
                },
            },
        )
    }

    prop_compose! {
        fn unit()(
            name in "[a-z][a-z0-9-]{0,12}",
            description in proptest::option::of(text()),
            vcpus in 1i64..64,
            memory_mib in 1i64..(1 << 20),
            cmdline in proptest::option::of(text()),
            kernel in proptest::option::of(text()),
            disks in proptest::collection::vec(disk(), 0..4),
            network in proptest::collection::vec(nic(), 0..3),
            devices in proptest::collection::vec(device(), 0..4),
        ) -> UnitDoc {
            UnitDoc {
                name: Some(name),
                settings: SettingsDoc {
                    description,
                    resources: Some(ResourcesDoc {
                        vcpus: Some(vcpus),
                        memory: Some(Size::Mib(memory_mib)),
                        ..Default::default()
                    }),
                    boot: Some(spec::BootDoc { kernel, cmdline, initrd: None }),
                    disks: (!disks.is_empty()).then_some(disks),
                    network: (!network.is_empty()).then_some(network),
                    devices: (!devices.is_empty()).then_some(devices),
                    ..Default::default()
                },
                ..Default::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]
        // Whatever a unit holds, export then import gives the same resolved unit back.
        #[test]
        fn test_export_import_round_trips_any_unit(unit in unit()) {
            let before = resolved(&unit);
            let xml = export(&before);
            let again = import_str(&xml, Path::new("export.xml"), None).unwrap();
            prop_assert_eq!(resolved(&again.unit), before, "{}", xml);
        }
    }
}
