//! Domain XML -> unit spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roxmltree::Node;

use super::LibvirtError;
use crate::compute::spec::{
    BootDoc, Device, Disk, LibvirtDoc, Nic, ResourcesDoc, RestartDoc, SerialDoc, SettingsDoc, Size,
    UnitDoc,
};

/// The result of an import: the unit and one warning per thing that was not carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    pub name: String,
    pub unit: UnitDoc,
    pub warnings: Vec<String>,
}

impl Imported {
    /// The unit file text, with the warnings as a comment header so they stay visible.
    pub fn unit_toml(&self) -> String {
        let mut text = format!(
            "# Imported from libvirt domain {:?} by hv-compute import.\n",
            self.name
        );
        for warning in &self.warnings {
            text.push_str(&format!("# warning: {warning}\n"));
        }
        text.push_str(&crate::compute::spec::unit_to_toml(&self.unit));
        text
    }
}

pub fn import_file(path: &Path, name: Option<&str>) -> Result<Imported, LibvirtError> {
    let text = std::fs::read_to_string(path).map_err(|source| LibvirtError::Read {
        path: path.to_owned(),
        source,
    })?;
    import_str(&text, path, name)
}

/// Bytes per libvirt memory unit (libvirt's `unit` attribute; KB/MB/GB/TB are powers of 1000).
fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    })
}

/// Renders bytes as the shortest exact size string hv understands.
fn size_text(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

struct Importer<'a> {
    path: PathBuf,
    text: &'a str,
    warnings: BTreeMap<String, usize>,
}

impl Importer<'_> {
    fn warn(&mut self, message: String) {
        *self.warnings.entry(message).or_default() += 1;
    }

    /// Warns about an element hv does not support, naming its path.
    fn unsupported(&mut self, node: Node, why: &str) {
        let path = element_path(node);
        self.warn(format!("<{path}> not imported: {why}"));
    }

    fn invalid(&self, element: &str, reason: String) -> LibvirtError {
        LibvirtError::Invalid {
            path: self.path.clone(),
            element: element.to_owned(),
            reason,
        }
    }

    fn memory(&self, node: Node) -> Result<String, LibvirtError> {
        let unit = node.attribute("unit").unwrap_or("KiB");
        let per = unit_bytes(unit).ok_or_else(|| {
            self.invalid(node.tag_name().name(), format!("unknown unit {unit:?}"))
        })?;
        let value: u64 = text_of(node).parse().map_err(|_| {
            self.invalid(
                node.tag_name().name(),
                format!("{:?} is not a number", text_of(node)),
            )
        })?;
        let bytes = value
            .checked_mul(per)
            .ok_or_else(|| self.invalid(node.tag_name().name(), "size overflows".into()))?;
        Ok(size_text(bytes))
    }
}

fn text_of(node: Node) -> String {
    node.text().unwrap_or("").trim().to_owned()
}

fn element_path(node: Node) -> String {
    // Namespaced elements keep their prefix (`qemu:commandline`), as the user wrote them.
    let mut parts: Vec<String> = node
        .ancestors()
        .filter(|n| n.is_element())
        .map(
            |n| match n.tag_name().namespace().and_then(|ns| n.lookup_prefix(ns)) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}:{}", n.tag_name().name()),
                _ => n.tag_name().name().to_owned(),
            },
        )
        .collect();
    parts.reverse();
    parts.join("/")
}

fn elements<'a, 'input>(node: Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(|n| n.is_element())
}

/// Parses domain XML text into a unit named `name` (default: the domain's `<name>`).
pub fn import_str(text: &str, path: &Path, name: Option<&str>) -> Result<Imported, LibvirtError> {
    let document = roxmltree::Document::parse(text).map_err(|source| {
        let pos = source.pos();
        LibvirtError::Xml {
            path: path.to_owned(),
            line: pos.row,
            column: pos.col,
            source,
        }
    })?;
    let root = document.root_element();
    if root.tag_name().name() != "domain" {
        return Err(LibvirtError::NotADomain {
            path: path.to_owned(),
            found: root.tag_name().name().to_owned(),
        });
    }
    let mut importer = Importer {
        path: path.to_owned(),
        text,
        warnings: BTreeMap::new(),
    };
    if let Some(kind) = root.attribute("type") {
        if kind != "kvm" && kind != "qemu" {
            importer.warn(format!("<domain type={kind:?}>: hv runs KVM guests only"));
        }
    }
    let mut settings = SettingsDoc::default();
    let mut resources = ResourcesDoc::default();
    let mut boot = BootDoc::default();
    let mut libvirt = LibvirtDoc::default();
    let mut domain_name = None;
    for node in elements(root) {
        match node.tag_name().name() {
            "name" => domain_name = Some(text_of(node)),
            "uuid" => libvirt.uuid = Some(text_of(node)),
            "description" => settings.description = Some(text_of(node)),
            // Kept byte for byte (namespaces and quoting included) so export can write it back.
            "metadata" => libvirt.metadata = Some(importer.text[node.range()].to_owned()),
            "memory" => resources.memory = Some(Size::Text(importer.memory(node)?)),
            "currentMemory" => resources.memory_current = Some(Size::Text(importer.memory(node)?)),
            "vcpu" => {
                let count: i64 = text_of(node).parse().map_err(|_| {
                    importer.invalid("vcpu", format!("{:?} is not a count", text_of(node)))
                })?;
                resources.vcpus = Some(count);
                resources.placement = node.attribute("placement").map(str::to_owned);
                resources.cpuset = node.attribute("cpuset").map(str::to_owned);
                if let Some(current) = node.attribute("current") {
                    importer.warn(format!(
                        "<domain/vcpu current={current:?}> not imported: hv starts all vCPUs"
                    ));
                }
            }
            "os" => import_os(&mut importer, node, &mut boot, &mut libvirt),
            "on_crash" => match text_of(node).as_str() {
                "restart" | "coredump-restart" => {
                    settings.restart = Some(RestartDoc {
                        policy: Some("on-failure".into()),
                        max_restarts: None,
                    })
                }
                "destroy" | "coredump-destroy" => {}
                other => importer.warn(format!(
                    "<domain/on_crash>{other}</on_crash> not imported: unsupported action"
                )),
            },
            // libvirt's defaults (reboot restarts, poweroff ends) are what hv does anyway.
            "on_poweroff" if text_of(node) == "destroy" => {}
            "on_reboot" if text_of(node) == "restart" => {}
            "devices" => import_devices(&mut importer, node, &mut settings),
            "features" => {
                for feature in elements(node) {
                    match feature.tag_name().name() {
                        // Always provided by hv-vmm's machine model.
                        "acpi" | "apic" | "pae" => {}
                        _ => {
                            importer.unsupported(feature, "CPU/machine feature not modelled by hv")
                        }
                    }
                }
            }
            _ => importer.unsupported(node, "not supported by hv"),
        }
    }
    let name = name
        .map(str::to_owned)
        .or(domain_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LibvirtError::NoName {
            path: path.to_owned(),
        })?;
    if boot.kernel.is_none() {
        importer.warn(
            "no direct kernel boot (<os><kernel>): set boot.kernel before launching".to_owned(),
        );
    }
    settings.resources = Some(resources);
    settings.boot = (boot != BootDoc::default()).then_some(boot);
    settings.libvirt = (libvirt != LibvirtDoc::default()).then_some(libvirt);
    let warnings = importer
        .warnings
        .into_iter()
        .map(|(message, count)| {
            if count > 1 {
                format!("{message} (x{count})")
            } else {
                message
            }
        })
        .collect();
    Ok(Imported {
        name: name.clone(),
        unit: UnitDoc {
            name: Some(name),
            settings,
            ..Default::default()
        },
        warnings,
    })
}

fn import_os(importer: &mut Importer, os: Node, boot: &mut BootDoc, libvirt: &mut LibvirtDoc) {
    for node in elements(os) {
        match node.tag_name().name() {
            "type" => {
                // hvm is the only kind hv runs (and what export writes): keep only anything else.
                let os_type = text_of(node);
                if os_type != "hvm" {
                    importer.warn(format!(
                        "<domain/os/type>{os_type}</type>: hv runs hvm guests only"
                    ));
                    libvirt.os_type = Some(os_type);
                }
                libvirt.machine = node.attribute("machine").map(str::to_owned);
                if let Some(arch) = node.attribute("arch") {
                    if arch != "x86_64" {
                        importer.warn(format!(
                            "<domain/os/type arch={arch:?}>: hv runs x86_64 guests only"
                        ));
                    }
                }
            }
            "kernel" => boot.kernel = Some(text_of(node)),
            "initrd" => boot.initrd = Some(text_of(node)),
            "cmdline" => boot.cmdline = Some(text_of(node)),
            "boot" => {
                importer.unsupported(node, "boot order is meaningless with direct kernel boot")
            }
            "loader" | "nvram" => {
                importer.unsupported(node, "hv has no firmware (direct kernel boot only)")
            }
            _ => importer.unsupported(node, "not supported by hv"),
        }
    }
}

fn import_devices(importer: &mut Importer, devices: Node, settings: &mut SettingsDoc) {
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    let mut extra = Vec::new();
    let mut serial = false;
    for node in elements(devices) {
        match node.tag_name().name() {
            "disk" => {
                if let Some(disk) = import_disk(importer, node) {
                    disks.push(disk);
                }
            }
            "interface" => {
                if let Some(nic) = import_interface(importer, node) {
                    nics.push(nic);
                }
            }
            "hostdev" => {
                if let Some(device) = import_hostdev(importer, node) {
                    extra.push(device);
                }
            }
            "serial" | "console" => {
                serial = true;
                let kind = node.attribute("type").unwrap_or("pty");
                if !["pty", "stdio", "file", "null"].contains(&kind) {
                    importer.warn(format!(
                        "<{} type={kind:?}>: hv keeps serial output in the instance log instead",
                        element_path(node)
                    ));
                }
            }
            "rng" | "memballoon" | "vsock" => {
                if node.attribute("model") == Some("none") {
                    continue;
                }
                let kind = match node.tag_name().name() {
                    "memballoon" => "balloon",
                    other => other,
                };
                for child in elements(node) {
                    match child.tag_name().name() {
                        // hv's rng reads the host's getrandom; vsock CIDs are assigned per instance.
                        "backend" | "cid" => {}
                        "address" | "alias" => {
                            importer.unsupported(child, "hv assigns device addresses itself")
                        }
                        _ => importer.unsupported(child, "device option not supported by hv"),
                    }
                }
                extra.push(Device {
                    kind: kind.into(),
                    address: None,
                });
            }
            "emulator" => importer.unsupported(node, "hv-vmm is the VMM"),
            _ => importer.unsupported(node, "device not supported by hv"),
        }
    }
    if serial {
        settings.serial = Some(SerialDoc {
            mode: Some("log".into()),
        });
    }
    settings.disks = (!disks.is_empty()).then_some(disks);
    settings.network = (!nics.is_empty()).then_some(nics);
    settings.devices = (!extra.is_empty()).then_some(extra);
}

fn import_disk(importer: &mut Importer, node: Node) -> Option<Disk> {
    let source_type = node.attribute("type").unwrap_or("file");
    let device = node.attribute("device").unwrap_or("disk");
    let path = element_path(node);
    if !["file", "block"].contains(&source_type) {
        importer.warn(format!(
            "<{path} type={source_type:?}> not imported: only file and block disks"
        ));
        return None;
    }
    if !["disk", "cdrom"].contains(&device) {
        importer.warn(format!(
            "<{path} device={device:?}> not imported: only disk and cdrom"
        ));
        return None;
    }
    let mut disk = Disk {
        device: device.to_owned(),
        source: source_type.to_owned(),
        format: "raw".to_owned(),
        ..Default::default()
    };
    let mut has_source = false;
    for child in elements(node) {
        match child.tag_name().name() {
            "driver" => {
                let format = child.attribute("type").unwrap_or("raw");
                if format != "raw" && format != "qcow2" {
                    importer.warn(format!(
                        "<{path}/driver type={format:?}> not imported: only raw and qcow2"
                    ));
                    return None;
                }
                disk.format = format.to_owned();
                for attr in child.attributes() {
                    if !["name", "type"].contains(&attr.name()) {
                        importer.warn(format!(
                            "<{path}/driver {}={:?}> not imported: hv-vmm chooses its own I/O engine",
                            attr.name(),
                            attr.value()
                        ));
                    }
                }
            }
            "source" => {
                if let Some(p) = child.attribute("file").or(child.attribute("dev")) {
                    disk.path = p.to_owned();
                    has_source = true;
                }
            }
            "target" => {
                disk.target = child.attribute("dev").map(str::to_owned);
                if let Some(bus) = child.attribute("bus") {
                    if bus != "virtio" {
                        importer.warn(format!(
                            "<{path}/target bus={bus:?}>: hv attaches every disk as virtio-blk"
                        ));
                    }
                }
            }
            "readonly" => disk.readonly = true,
            "address" | "alias" => {
                importer.unsupported(child, "hv assigns device addresses itself")
            }
            _ => importer.unsupported(child, "disk option not supported by hv"),
        }
    }
    if !has_source {
        importer.warn(format!(
            "<{path} device={device:?}> without <source> skipped (empty drive)"
        ));
        return None;
    }
    if disk.format == "qcow2" {
        importer.warn(format!(
            "disk {} is qcow2: hv-vmm needs raw; re-import with --convert-qcow2 or convert with qemu-img",
            disk.path
        ));
    }
    Some(disk)
}

fn import_interface(importer: &mut Importer, node: Node) -> Option<Nic> {
    let kind = node.attribute("type").unwrap_or("");
    let path = element_path(node);
    if !["bridge", "network", "user", "ethernet"].contains(&kind) {
        importer.warn(format!(
            "<{path} type={kind:?}> not imported: only bridge, network, user and ethernet"
        ));
        return None;
    }
    let mut nic = Nic {
        mode: kind.to_owned(),
        ..Default::default()
    };
    for child in elements(node) {
        match child.tag_name().name() {
            "mac" => nic.mac = child.attribute("address").map(str::to_owned),
            "source" => {
                nic.source = child
                    .attribute("bridge")
                    .or(child.attribute("network"))
                    .or(child.attribute("dev"))
                    .map(str::to_owned)
            }
            // For type=ethernet the tap device is the target.
            "target" if kind == "ethernet" => {
                nic.source = child.attribute("dev").map(str::to_owned)
            }
            "model" => nic.model = child.attribute("type").map(str::to_owned),
            "address" | "alias" => {
                importer.unsupported(child, "hv assigns device addresses itself")
            }
            _ => importer.unsupported(child, "interface option not supported by hv"),
        }
    }
    Some(nic)
}

/// Parses libvirt's hex (or decimal) address attributes: "0x01", "1".
fn number(value: Option<&str>) -> Option<u32> {
    let value = value?.trim();
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn import_hostdev(importer: &mut Importer, node: Node) -> Option<Device> {
    let path = element_path(node);
    if node.attribute("mode").unwrap_or("subsystem") != "subsystem"
        || node.attribute("type") != Some("pci")
    {
        importer.warn(format!(
            "<{path} type={:?}> not imported: only PCI subsystem passthrough (VFIO)",
            node.attribute("type").unwrap_or("")
        ));
        return None;
    }
    let address = node
        .children()
        .find(|c| c.has_tag_name("source"))
        .and_then(|source| source.children().find(|c| c.has_tag_name("address")));
    let Some(address) = address else {
        importer.warn(format!("<{path}> without <source><address> skipped"));
        return None;
    };
    let parts = (
        number(address.attribute("domain")).or(Some(0)),
        number(address.attribute("bus")),
        number(address.attribute("slot")),
        number(address.attribute("function")),
    );
    let (Some(domain), Some(bus), Some(slot), Some(function)) = parts else {
        importer.warn(format!(
            "<{path}/source/address> has an unreadable PCI address; skipped"
        ));
        return None;
    };
    for child in elements(node) {
        match child.tag_name().name() {
            "source" => {}
            "address" | "alias" => {
                importer.unsupported(child, "hv assigns guest PCI addresses itself")
            }
            _ => importer.unsupported(child, "hostdev option not supported by hv"),
        }
    }
    Some(Device {
        kind: "vfio-pci".into(),
        address: Some(format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(xml: &str) -> Imported {
        import_str(xml, Path::new("t.xml"), None).unwrap()
    }

    #[test]
    fn test_import_memory_units_default_to_kib() {
        let unit = |m: &str| {
            let i = import(&format!("<domain><name>a</name>{m}</domain>"));
            match i.unit.settings.resources.unwrap().memory.unwrap() {
                Size::Text(t) => t,
                Size::Mib(n) => n.to_string(),
            }
        };
        assert_eq!(unit("<memory>1048576</memory>"), "1G");
        assert_eq!(unit("<memory unit='MiB'>512</memory>"), "512M");
        assert_eq!(unit("<memory unit=\"GB\">2</memory>"), "1953125K");
        assert_eq!(unit("<memory unit='b'>1000</memory>"), "1000B");
        assert_eq!(unit("<memory unit='KB'>1024</memory>"), "1000K");
        assert_eq!(unit("<memory unit='b'>4294967296</memory>"), "4G");
        assert_eq!(unit("<memory unit='TiB'>1</memory>"), "1T");
    }

    #[test]
    fn test_import_reports_line_and_column() {
        let err = import_str(
            "<domain>\n  <name>a</name>\n  <memory>1<memory>\n</domain>",
            Path::new("t.xml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("t.xml:"), "{err}");
        let LibvirtError::Xml { line, .. } = import_str(
            "<domain>\n<name>a</nam>\n</domain>",
            Path::new("t.xml"),
            None,
        )
        .unwrap_err() else {
            panic!("expected an XML error")
        };
        assert_eq!(line, 2);
    }

    #[test]
    fn test_import_hostdev_hex_address() {
        let i = import(
            "<domain><name>g</name><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>\
             <address domain='0x0000' bus='0x0a' slot='0x1f' function='0x3'/></source></hostdev></devices></domain>",
        );
        let devices = i.unit.settings.devices.unwrap();
        assert_eq!(devices[0].address.as_deref(), Some("0000:0a:1f.3"));
    }

    #[test]
    fn test_import_warns_about_unknown_elements() {
        let i = import("<domain><name>g</name><clock offset='utc'/><devices><graphics type='vnc'/></devices></domain>");
        let all = i.warnings.join("\n");
        assert!(all.contains("<domain/clock>"), "{all}");
        assert!(all.contains("<domain/devices/graphics>"), "{all}");
    }
}
