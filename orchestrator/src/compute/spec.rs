//! The TOML documents a user writes: units, tags, policies, blueprints and components.
//!
//! Every document that carries VM settings uses the same [`SettingsDoc`] shape, so a setting means the
//! same thing whether a unit, a tag, a policy or a component sets it. Unknown keys are errors (a typo
//! must not silently fall back to a default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors from reading one spec document.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{} is not a valid {kind} document: {message}", path.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// (line, column), 1-based, when the parser knows it.
        position: Option<(usize, usize)>,
        kind: &'static str,
        message: String,
    },
    #[error("invalid size {text:?}: expected a number with an optional K, M, G or T suffix (binary units)")]
    Size { text: String },
}

/// VM settings, as any layer may set them. Every field is optional: a layer sets only what it cares about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<Disk>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<Nic>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Device>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDoc {
    /// Abstract compute units: 100 units = 1 vCPU, rounded up (see docs/compute.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_units: Option<i64>,
    /// An explicit vCPU count; competes with `compute_units` by precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
    /// Memory size: "512M", "2G", "32Gi" or a plain number of MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Memory the guest starts with (libvirt `currentMemory`); informational until ballooning exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_current: Option<Size>,
    /// Host CPUs the vCPUs may run on (libvirt `vcpu cpuset`), e.g. "0-3,^2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// libvirt `vcpu placement`: "static" or "auto".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
}

/// A memory size as written by the user: an integer (MiB) or a string with a binary suffix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Mib(i64),
    Text(String),
}

impl Size {
    /// The size in MiB. Suffixes are binary: K, Ki, KiB and KB all mean 1024 bytes (documented).
    pub fn to_mib(&self) -> Result<u64, SpecError> {
        match self {
            Size::Mib(n) => u64::try_from(*n).map_err(|_| SpecError::Size {
                text: n.to_string(),
            }),
            Size::Text(text) => parse_size_bytes(text)
                .map(|bytes| bytes.div_ceil(1 << 20))
                .ok_or_else(|| SpecError::Size { text: text.clone() }),
        }
    }
}

/// Parses "512M", "2G", "32Gi", "1024KiB", "64" (bytes are only implied by a `B` alone).
pub fn parse_size_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let shift = match suffix.trim() {
        "" => 20, // a bare number is MiB, like hv-vmm's --memory
        "B" | "b" => 0,
        "K" | "k" | "Ki" | "KiB" | "KB" => 10,
        "M" | "m" | "Mi" | "MiB" | "MB" => 20,
        "G" | "g" | "Gi" | "GiB" | "GB" => 30,
        "T" | "t" | "Ti" | "TiB" | "TB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartDoc {
    /// "no", "on-failure" or "always".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Restarts allowed before the supervisor gives up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDoc {
    /// "log" keeps the guest's serial output per instance; "none" discards it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtDoc {
    /// The domain's `<metadata>` element, kept verbatim for export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// libvirt `<os><type>` when it is not "hvm" (the only kind hv runs; import warns about others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: String,
    /// "raw" or "qcow2" (qcow2 must be converted before launch).
    #[serde(default = "default_disk_format")]
    pub format: String,
    /// "disk" or "cdrom".
    #[serde(default = "default_disk_device")]
    pub device: String,
    /// "file" or "block".
    #[serde(default = "default_disk_source")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

fn default_disk_format() -> String {
    "raw".into()
}
fn default_disk_device() -> String {
    "disk".into()
}
fn default_disk_source() -> String {
    "file".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// "bridge", "network", "user", "ethernet" or "isolated".
    pub mode: String,
    /// Bridge name, libvirt network name or tap device, depending on `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// "vfio-pci", "rng", "vsock", "balloon", ...
    pub kind: String,
    /// PCI address "dddd:bb:ss.f" for `vfio-pci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A unit file: which tags, policies and blueprint it builds on, plus its own settings.
/// Parse it with [`parse_unit`] (serde's `flatten` would let unknown keys through).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitDoc {
    /// Defaults to the file name without `.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// "NAME" (newest version) or "NAME@VERSION".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    #[serde(flatten)]
    pub settings: SettingsDoc,
}

/// A tag or a policy: defaults it contributes and constraints it imposes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<SettingsDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// A rule on the effective settings, checked after merging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// Dotted setting path; for lists, `network.mode` checks the mode of every interface.
    pub setting: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbid: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The setting must have a value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A blueprint: a named, versioned list of pinned components plus optional defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintDoc {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub components: Vec<ComponentPin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<SettingsDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentPin {
    pub component: String,
    pub version: String,
}

/// A component: a reusable piece (kernel, cmdline fragments, disks, devices) with a version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDoc {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Fragments appended to the kernel command line, in blueprint order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Other components (by name) that must be in the same blueprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Components (by name) that must not be in the same blueprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesDoc>,
}

/// Reads and parses one TOML document of type `T`.
pub fn read_doc<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &'static str,
) -> Result<T, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_doc(&text, path, kind)
}

pub fn parse_doc<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    kind: &'static str,
) -> Result<T, SpecError> {
    toml::from_str(text).map_err(|error| parse_error(text, path, kind, &error))
}

/// One-line parse error with the position from the TOML parser's span.
fn parse_error(text: &str, path: &Path, kind: &'static str, error: &toml::de::Error) -> SpecError {
    let position = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    });
    SpecError::Parse {
        path: path.to_owned(),
        position,
        kind,
        message: error
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Parses a unit file, rejecting keys that are neither unit keys nor settings.
pub fn parse_unit(text: &str, path: &Path) -> Result<UnitDoc, SpecError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Head {
        name: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        policies: Vec<String>,
        blueprint: Option<String>,
    }
    let unit_error = |error: toml::de::Error| parse_error(text, path, "unit", &error);
    let mut table: toml::Table = toml::from_str(text).map_err(unit_error)?;
    let mut head = toml::Table::new();
    for key in ["name", "tags", "policies", "blueprint"] {
        if let Some(value) = table.remove(key) {
            head.insert(key.to_owned(), value);
        }
    }
    let head: Head = toml::Value::Table(head).try_into().map_err(unit_error)?;
    let settings: SettingsDoc = toml::Value::Table(table).try_into().map_err(unit_error)?;
    Ok(UnitDoc {
        name: head.name,
        tags: head.tags,
        policies: head.policies,
        blueprint: head.blueprint,
        settings,
    })
}

/// Renders a unit as TOML (used by `import`).
pub fn unit_to_toml(unit: &UnitDoc) -> String {
    toml::to_string_pretty(unit).unwrap_or_default()
}

/// Flattens settings into dotted keys ("resources.memory"); lists stay whole values.
pub fn flatten(settings: &SettingsDoc) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    // Serializing a plain struct of options and vectors cannot fail.
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(settings) {
        flatten_into(&mut out, "", table);
    }
    out
}

fn flatten_into(out: &mut BTreeMap<String, toml::Value>, prefix: &str, table: toml::Table) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten_into(out, &path, inner),
            leaf => {
                out.insert(path, leaf);
            }
        }
    }
}

/// Rebuilds a [`SettingsDoc`] from dotted keys (the inverse of [`flatten`]).
pub fn unflatten(flat: &BTreeMap<String, toml::Value>) -> Result<SettingsDoc, toml::de::Error> {
    let mut root = toml::Table::new();
    for (path, value) in flat {
        let mut table = &mut root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value.clone());
            } else {
                let entry = table
                    .entry(part.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !entry.is_table() {
                    *entry = toml::Value::Table(toml::Table::new());
                }
                let toml::Value::Table(inner) = entry else {
                    unreachable!("just made a table")
                };
                table = inner;
            }
        }
    }
    toml::Value::Table(root).try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_bytes_binary_suffixes() {
        assert_eq!(parse_size_bytes("128M"), Some(128 << 20));
        assert_eq!(parse_size_bytes("32Gi"), Some(32 << 30));
        assert_eq!(parse_size_bytes("1KiB"), Some(1024));
        assert_eq!(parse_size_bytes("64"), Some(64 << 20));
        assert_eq!(parse_size_bytes("12 parsecs"), None);
        assert_eq!(parse_size_bytes("G"), None);
    }

    #[test]
    fn test_unit_doc_rejects_unknown_keys() {
        let err = parse_unit("[resources]\ncpus = 4\n", Path::new("u.toml"));
        assert!(err.is_err());
        assert!(parse_unit("colour = 'red'\n", Path::new("u.toml")).is_err());
        assert!(parse_unit(
            "tags = ['a']\n[resources]\nvcpus = 4\n",
            Path::new("u.toml")
        )
        .is_ok());
    }

    #[test]
    fn test_flatten_roundtrips_through_unflatten() {
        let doc = parse_unit(
            "tags=['a']\nreplicas = 2\n[resources]\nmemory = '1G'\n[[network]]\nmode = 'bridge'\nsource='br0'\n",
            Path::new("u.toml"),
        )
        .unwrap();
        let flat = flatten(&doc.settings);
        assert!(flat.contains_key("resources.memory"));
        assert!(flat.contains_key("network"));
        assert_eq!(unflatten(&flat).unwrap(), doc.settings);
    }
}
