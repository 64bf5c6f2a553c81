//! Resolved unit -> domain XML (double-quoted, two-space indented, as virsh dumpxml writes it).

use std::fmt::Write as _;

use crate::compute::resolve::{ResolvedUnit, RestartPolicy};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Splits "dddd:bb:ss.f" into libvirt's hex attributes.
fn pci_attributes(address: &str) -> Option<String> {
    let (rest, function) = address.rsplit_once('.')?;
    let mut parts = rest.split(':');
    let (domain, bus, slot) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!(
        "domain=\"0x{domain}\" bus=\"0x{bus}\" slot=\"0x{slot}\" function=\"0x{function}\""
    ))
}

/// Writes the unit as a libvirt `<domain type="kvm">`.
pub fn export(unit: &ResolvedUnit) -> String {
    let mut x = String::new();
    let _ = writeln!(x, "<domain type=\"kvm\">");
    let _ = writeln!(x, "  <name>{}</name>", escape(&unit.name));
    if let Some(uuid) = &unit.libvirt.uuid {
        let _ = writeln!(x, "  <uuid>{}</uuid>", escape(uuid));
    }
    if let Some(description) = &unit.description {
        let _ = writeln!(x, "  <description>{}</description>", escape(description));
    }
    if let Some(metadata) = &unit.libvirt.metadata {
        // Verbatim, as imported.
        let _ = writeln!(x, "  {metadata}");
    }
    let _ = writeln!(
        x,
        "  <memory unit=\"KiB\">{}</memory>",
        unit.memory_mib * 1024
    );
    if let Some(current) = unit.memory_current_mib {
        let _ = writeln!(
            x,
            "  <currentMemory unit=\"KiB\">{}</currentMemory>",
            current * 1024
        );
    }
    let mut vcpu_attrs = String::new();
    if let Some(placement) = &unit.placement {
        let _ = write!(vcpu_attrs, " placement=\"{}\"", escape(placement));
    }
    if let Some(cpuset) = &unit.cpuset {
        let _ = write!(vcpu_attrs, " cpuset=\"{}\"", escape(cpuset));
    }
    let _ = writeln!(x, "  <vcpu{vcpu_attrs}>{}</vcpu>", unit.vcpus);
    let _ = writeln!(x, "  <os>");
    let machine = unit
        .libvirt
        .machine
        .as_ref()
        .map(|m| format!(" machine=\"{}\"", escape(m)))
        .unwrap_or_default();
    let os_type = unit.libvirt.os_type.as_deref().unwrap_or("hvm");
    let _ = writeln!(
        x,
        "    <type arch=\"x86_64\"{machine}>{}</type>",
        escape(os_type)
    );
    for (tag, value) in [
        ("kernel", &unit.kernel),
        ("initrd", &unit.initrd),
        ("cmdline", &unit.cmdline),
    ] {
        if let Some(value) = value {
            let _ = writeln!(x, "    <{tag}>{}</{tag}>", escape(value));
        }
    }
    let _ = writeln!(x, "  </os>");
    if unit.restart_policy != RestartPolicy::No {
        let _ = writeln!(x, "  <on_crash>restart</on_crash>");
    }
    let _ = writeln!(x, "  <devices>");
    for disk in &unit.disks {
        let source_attr = if disk.source == "block" {
            "dev"
        } else {
            "file"
        };
        let _ = writeln!(
            x,
            "    <disk type=\"{}\" device=\"{}\">",
            escape(&disk.source),
            escape(&disk.device)
        );
        let _ = writeln!(
            x,
            "      <driver name=\"qemu\" type=\"{}\"/>",
            escape(&disk.format)
        );
        let _ = writeln!(
            x,
            "      <source {source_attr}=\"{}\"/>",
            escape(&disk.path)
        );
        if let Some(target) = &disk.target {
            let _ = writeln!(
                x,
                "      <target dev=\"{}\" bus=\"virtio\"/>",
                escape(target)
            );
        }
        if disk.readonly {
            let _ = writeln!(x, "      <readonly/>");
        }
        let _ = writeln!(x, "    </disk>");
    }
    for nic in &unit.network {
        let mode = if nic.mode == "isolated" {
            "user"
        } else {
            nic.mode.as_str()
        };
        let _ = writeln!(x, "    <interface type=\"{}\">", escape(mode));
        if let Some(mac) = &nic.mac {
            let _ = writeln!(x, "      <mac address=\"{}\"/>", escape(mac));
        }
        if let Some(source) = &nic.source {
            let _ = match mode {
                "bridge" => writeln!(x, "      <source bridge=\"{}\"/>", escape(source)),
                "network" => writeln!(x, "      <source network=\"{}\"/>", escape(source)),
                "ethernet" => writeln!(x, "      <target dev=\"{}\"/>", escape(source)),
                _ => Ok(()),
            };
        }
        if let Some(model) = &nic.model {
            let _ = writeln!(x, "      <model type=\"{}\"/>", escape(model));
        }
        let _ = writeln!(x, "    </interface>");
    }
    for device in &unit.devices {
        match (device.kind.as_str(), &device.address) {
            ("vfio-pci", Some(address)) => {
                if let Some(attrs) = pci_attributes(address) {
                    let _ = writeln!(
                        x,
                        "    <hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\">"
                    );
                    let _ = writeln!(x, "      <source>");
                    let _ = writeln!(x, "        <address {attrs}/>");
                    let _ = writeln!(x, "      </source>");
                    let _ = writeln!(x, "    </hostdev>");
                }
            }
            ("rng", _) => {
                let _ = writeln!(x, "    <rng model=\"virtio\">");
                let _ = writeln!(x, "      <backend model=\"random\">/dev/urandom</backend>");
                let _ = writeln!(x, "    </rng>");
            }
            ("balloon", _) => {
                let _ = writeln!(x, "    <memballoon model=\"virtio\"/>");
            }
            ("vsock", _) => {
                let _ = writeln!(x, "    <vsock model=\"virtio\">");
                let _ = writeln!(x, "      <cid auto=\"yes\"/>");
                let _ = writeln!(x, "    </vsock>");
            }
            (other, _) => {
                let _ = writeln!(
                    x,
                    "    <!-- hv device {} has no libvirt equivalent -->",
                    escape(other)
                );
            }
        }
    }
    if unit.serial_log {
        let _ = writeln!(x, "    <serial type=\"pty\">");
        let _ = writeln!(x, "      <target port=\"0\"/>");
        let _ = writeln!(x, "    </serial>");
        let _ = writeln!(x, "    <console type=\"pty\">");
        let _ = writeln!(x, "      <target type=\"serial\" port=\"0\"/>");
        let _ = writeln!(x, "    </console>");
    }
    let _ = writeln!(x, "  </devices>");
    let _ = writeln!(x, "</domain>");
    x
}
