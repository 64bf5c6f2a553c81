//! Merging a unit with its policies, tags, blueprint and the defaults, with provenance.
//!
//! Precedence, highest first: **unit > policy > tag > blueprint > defaults**. A higher layer silently
//! overrides a lower one (`explain` shows what was overridden). Two sources on the *same* layer (two tags,
//! two policies) that set one setting to different values are a conflict, unless a higher layer settles it.
//! After merging, every constraint from the unit's tags and policies is checked; all violations are
//! reported together.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::blueprint::{self, BlueprintError};
use super::catalog::{join_or_none, Catalog, CatalogError};
use super::spec::{self, Constraint, Device, Disk, LibvirtDoc, Nic, SettingsDoc, SpecError};

/// 100 abstract compute units make one vCPU (rounded up). Documented in docs/compute.md.
pub const COMPUTE_UNITS_PER_VCPU: u64 = 100;
/// hv-vmm's vCPU limit (one x2APIC-free MP table).
pub const MAX_VCPUS: u64 = 254;

/// Errors from resolving a unit.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot load the spec directory")]
    Catalog(#[source] CatalogError),
    #[error("unit {unit}: unknown {kind} {name:?} (known: {known})")]
    UnknownProfile {
        unit: String,
        kind: &'static str,
        name: String,
        known: String,
    },
    #[error("unit {unit}: cannot resolve its blueprint")]
    Blueprint {
        unit: String,
        #[source]
        source: Box<BlueprintError>,
    },
    #[error(
        "unit {unit}: conflict on {setting}: {first}, but {second}; set it in the unit to decide"
    )]
    Conflict {
        unit: String,
        setting: String,
        /// "tag a sets 2"
        first: String,
        second: String,
    },
    #[error("unit {unit} violates {}", violations.join("; "))]
    Constraints {
        unit: String,
        violations: Vec<String>,
    },
    #[error("unit {unit}: {origin} has a constraint on unknown setting {setting:?}")]
    UnknownConstraintSetting {
        unit: String,
        origin: Origin,
        setting: String,
    },
    #[error("unit {unit}: invalid setting {setting}: {reason}")]
    Invalid {
        unit: String,
        setting: String,
        reason: String,
    },
    #[error("unit {unit}: invalid memory size")]
    Size {
        unit: String,
        #[source]
        source: SpecError,
    },
}

/// The layers, in increasing precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Default,
    Blueprint,
    Tag,
    Policy,
    Unit,
}

/// Where a value came from: the layer and the document (with detail such as the component).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub layer: Layer,
    pub name: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = match self.layer {
            Layer::Default if self.name.is_empty() => return f.write_str("default"),
            Layer::Default => return write!(f, "default {}", self.name),
            Layer::Blueprint => "blueprint",
            Layer::Tag => "tag",
            Layer::Policy => "policy",
            Layer::Unit => "unit",
        };
        write!(f, "{layer} {}", self.name)
    }
}

/// One effective setting: its value, where it came from, and what it overrode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    pub value: toml::Value,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<(Origin, toml::Value)>,
}

/// The fully resolved unit, ready to launch or export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedUnit {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub policies: Vec<String>,
    pub blueprint: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub memory_current_mib: Option<u64>,
    pub cpuset: Option<String>,
    pub placement: Option<String>,
    pub replicas: u32,
    pub restart_policy: RestartPolicy,
    pub max_restarts: u32,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub disks: Vec<Disk>,
    pub network: Vec<Nic>,
    pub devices: Vec<Device>,
    pub serial_log: bool,
    pub libvirt: LibvirtDoc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

/// The resolution of a unit: effective settings with provenance plus the typed result.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub unit: String,
    pub file: String,
    pub tags: Vec<String>,
    pub policies: Vec<String>,
    pub blueprint: Option<String>,
    pub blueprint_components: Vec<String>,
    pub settings: BTreeMap<String, Effective>,
    #[serde(skip)]
    pub resolved: ResolvedUnit,
}

/// The built-in defaults, the lowest layer.
pub fn defaults() -> SettingsDoc {
    spec::SettingsDoc {
        replicas: Some(1),
        resources: Some(spec::ResourcesDoc {
            compute_units: Some(COMPUTE_UNITS_PER_VCPU as i64),
            memory: Some(spec::Size::Text("128M".into())),
            ..Default::default()
        }),
        restart: Some(spec::RestartDoc {
            policy: Some("no".into()),
            max_restarts: Some(3),
        }),
        serial: Some(spec::SerialDoc {
            mode: Some("log".into()),
        }),
        ..Default::default()
    }
}

/// Settings a constraint may name; list settings accept sub-fields (`network.mode`).
const CONSTRAINABLE: &[&str] = &[
    "description",
    "replicas",
    "resources.compute_units",
    "resources.vcpus",
    "resources.memory",
    "resources.memory_current",
    "resources.cpuset",
    "resources.placement",
    "boot.kernel",
    "boot.initrd",
    "boot.cmdline",
    "restart.policy",
    "restart.max_restarts",
    "serial.mode",
    "disks",
    "disks.path",
    "disks.format",
    "disks.device",
    "disks.source",
    "disks.target",
    "disks.readonly",
    "network",
    "network.mode",
    "network.source",
    "network.mac",
    "network.model",
    "devices",
    "devices.kind",
    "devices.address",
];

/// Resolves the named unit from the catalog.
pub fn resolve_unit(catalog: &Catalog, name: &str) -> Result<Resolution, ResolveError> {
    let unit = catalog.unit(name).map_err(ResolveError::Catalog)?;
    let doc = &unit.doc;
    let mut layers: Vec<(Origin, BTreeMap<String, toml::Value>)> = Vec::new();
    layers.push((origin(Layer::Default, ""), spec::flatten(&defaults())));

    let mut blueprint_components = Vec::new();
    let blueprint_id = match &doc.blueprint {
        Some(reference) => {
            let resolved = blueprint::resolve(catalog, reference).map_err(|source| {
                ResolveError::Blueprint {
                    unit: name.to_owned(),
                    source: Box::new(source),
                }
            })?;
            let id = resolved.id();
            for (key, (value, from)) in resolved.settings {
                let detail = if from.starts_with("blueprint") {
                    id.clone()
                } else {
                    format!("{id} ({from})")
                };
                layers.push((
                    origin(Layer::Blueprint, &detail),
                    BTreeMap::from([(key, value)]),
                ));
            }
            blueprint_components = resolved.components;
            Some(id)
        }
        None => None,
    };

    let mut constraints: Vec<(Origin, &Constraint)> = Vec::new();
    for (kind, layer, names, known) in [
        ("tag", Layer::Tag, &doc.tags, &catalog.tags),
        ("policy", Layer::Policy, &doc.policies, &catalog.policies),
    ] {
        for profile_name in names {
            let profile = known
                .get(profile_name)
                .ok_or_else(|| ResolveError::UnknownProfile {
                    unit: name.to_owned(),
                    kind,
                    name: profile_name.clone(),
                    known: join_or_none(known.keys()),
                })?;
            let from = origin(layer, profile_name);
            if let Some(defaults) = &profile.doc.defaults {
                layers.push((from.clone(), spec::flatten(defaults)));
            }
            constraints.extend(profile.doc.constraints.iter().map(|c| (from.clone(), c)));
        }
    }
    layers.push((origin(Layer::Unit, name), spec::flatten(&doc.settings)));

    let mut settings = merge(name, &layers)?;
    derive_vcpus(name, &mut settings)?;
    check_constraints(name, &settings, &constraints)?;
    let resolved = typed(name, doc, blueprint_id.clone(), &settings)?;
    Ok(Resolution {
        unit: name.to_owned(),
        file: unit.path.display().to_string(),
        tags: doc.tags.clone(),
        policies: doc.policies.clone(),
        blueprint: blueprint_id,
        blueprint_components,
        settings,
        resolved,
    })
}

fn origin(layer: Layer, name: &str) -> Origin {
    Origin {
        layer,
        name: name.to_owned(),
    }
}

/// Merges layers given in increasing precedence. Pure: the property tests drive it directly.
pub fn merge(
    unit: &str,
    layers: &[(Origin, BTreeMap<String, toml::Value>)],
) -> Result<BTreeMap<String, Effective>, ResolveError> {
    let mut by_key: BTreeMap<&str, Vec<(&Origin, &toml::Value)>> = BTreeMap::new();
    for (from, settings) in layers {
        for (key, value) in settings {
            by_key.entry(key).or_default().push((from, value));
        }
    }
    let mut out = BTreeMap::new();
    for (key, mut contributions) in by_key {
        // Stable sort: within a layer, the order the unit lists its tags/policies is kept.
        contributions.sort_by_key(|(from, _)| from.layer);
        let top = contributions[contributions.len() - 1].0.layer;
        let split = contributions
            .iter()
            .position(|(from, _)| from.layer == top)
            .unwrap_or(0);
        let (lower, winners) = contributions.split_at(split);
        let (first_origin, first_value) = winners[0];
        if let Some((second_origin, second_value)) = winners.iter().find(|(_, v)| *v != first_value)
        {
            return Err(ResolveError::Conflict {
                unit: unit.to_owned(),
                setting: key.to_owned(),
                first: format!("{first_origin} sets {first_value}"),
                second: format!("{second_origin} sets {second_value}"),
            });
        }
        out.insert(
            key.to_owned(),
            Effective {
                value: first_value.clone(),
                origin: first_origin.clone(),
                overrides: lower
                    .iter()
                    .rev()
                    .map(|(o, v)| ((*o).clone(), (*v).clone()))
                    .collect(),
            },
        );
    }
    Ok(out)
}

/// `resources.vcpus` and `resources.compute_units` describe the same thing; the one set on the higher
/// layer wins, and the effective `resources.vcpus` always exists afterwards.
fn derive_vcpus(
    unit: &str,
    settings: &mut BTreeMap<String, Effective>,
) -> Result<(), ResolveError> {
    let units = settings.get("resources.compute_units").cloned();
    let explicit = settings.get("resources.vcpus").cloned();
    let from_units = |e: &Effective| -> Result<i64, ResolveError> {
        let n = e
            .value
            .as_integer()
            .filter(|n| *n > 0)
            .ok_or_else(|| ResolveError::Invalid {
                unit: unit.to_owned(),
                setting: "resources.compute_units".into(),
                reason: format!("{} is not a positive integer", e.value),
            })?;
        Ok((n as u64).div_ceil(COMPUTE_UNITS_PER_VCPU) as i64)
    };
    let derived = match (&units, &explicit) {
        (Some(u), Some(v)) if u.origin.layer > v.origin.layer => Some(u),
        (Some(u), Some(v))
            if u.origin.layer == v.origin.layer && Some(from_units(u)?) != v.value.as_integer() =>
        {
            return Err(ResolveError::Conflict {
                unit: unit.to_owned(),
                setting: "resources.vcpus".into(),
                first: format!("{} sets compute_units = {}", u.origin, u.value),
                second: format!("{} sets vcpus = {}", v.origin, v.value),
            })
        }
        (Some(u), None) => Some(u),
        _ => None,
    };
    if let Some(u) = derived {
        let vcpus = from_units(u)?;
        let mut effective = Effective {
            value: toml::Value::Integer(vcpus),
            origin: Origin {
                layer: u.origin.layer,
                name: format!(
                    "{}(from compute_units = {}, {} units per vCPU)",
                    if u.origin.name.is_empty() {
                        String::new()
                    } else {
                        format!("{} ", u.origin.name)
                    },
                    u.value,
                    COMPUTE_UNITS_PER_VCPU
                ),
            },
            overrides: Vec::new(),
        };
        if let Some(v) = explicit {
            effective.overrides.push((v.origin, v.value));
        }
        settings.insert("resources.vcpus".into(), effective);
    }
    Ok(())
}

/// The values a constraint path designates: one for a plain setting, one per element for `list.field`,
/// none when unset.
fn values_at(settings: &BTreeMap<String, Effective>, path: &str) -> Vec<(toml::Value, Origin)> {
    if let Some(e) = settings.get(path) {
        return vec![(e.value.clone(), e.origin.clone())];
    }
    let Some((list, field)) = path.split_once('.') else {
        return Vec::new();
    };
    let Some(e) = settings.get(list) else {
        return Vec::new();
    };
    let Some(items) = e.value.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| item.get(field).cloned())
        .map(|v| (v, e.origin.clone()))
        .collect()
}

/// A number for min/max checks: integers as is, sizes in MiB, lists by length.
fn magnitude(value: &toml::Value) -> Option<i64> {
    match value {
        toml::Value::Integer(n) => Some(*n),
        toml::Value::String(s) => spec::parse_size_bytes(s).map(|b| (b >> 20) as i64),
        toml::Value::Array(items) => Some(items.len() as i64),
        _ => None,
    }
}

fn display(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_constraints(
    unit: &str,
    settings: &BTreeMap<String, Effective>,
    constraints: &[(Origin, &Constraint)],
) -> Result<(), ResolveError> {
    let mut violations = Vec::new();
    for (from, constraint) in constraints {
        let path = constraint.setting.as_str();
        if !CONSTRAINABLE.contains(&path) {
            return Err(ResolveError::UnknownConstraintSetting {
                unit: unit.to_owned(),
                origin: from.clone(),
                setting: path.to_owned(),
            });
        }
        let mut values = values_at(settings, path);
        if values.is_empty() && matches!(path, "disks" | "network" | "devices") {
            values.push((toml::Value::Array(Vec::new()), origin(Layer::Default, "")));
        }
        let because = |what: String| match &constraint.message {
            Some(message) => format!("{from}: {message} ({what})"),
            None => format!("{from}: {what}"),
        };
        if constraint.required && values.is_empty() {
            violations.push(because(format!("{path} must be set")));
        }
        for (value, set_by) in &values {
            let shown = display(value);
            if let (Some(min), Some(n)) = (constraint.min, magnitude(value)) {
                if n < min {
                    violations.push(because(format!(
                        "{path} must be >= {min}, but is {shown} (set by {set_by})"
                    )));
                }
            }
            if let (Some(max), Some(n)) = (constraint.max, magnitude(value)) {
                if n > max {
                    violations.push(because(format!(
                        "{path} must be <= {max}, but is {shown} (set by {set_by})"
                    )));
                }
            }
            if constraint.forbid.contains(&shown) {
                violations.push(because(format!(
                    "{path} = {shown} is forbidden (set by {set_by})"
                )));
            }
            if !constraint.allow.is_empty() && !constraint.allow.contains(&shown) {
                violations.push(because(format!(
                    "{path} = {shown} is not one of {} (set by {set_by})",
                    constraint.allow.join(", ")
                )));
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ResolveError::Constraints {
            unit: unit.to_owned(),
            violations,
        })
    }
}

fn typed(
    name: &str,
    doc: &spec::UnitDoc,
    blueprint: Option<String>,
    settings: &BTreeMap<String, Effective>,
) -> Result<ResolvedUnit, ResolveError> {
    let invalid = |setting: &str, reason: String| ResolveError::Invalid {
        unit: name.to_owned(),
        setting: setting.to_owned(),
        reason,
    };
    let flat: BTreeMap<String, toml::Value> = settings
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect();
    let merged = spec::unflatten(&flat).map_err(|e| invalid("(all)", e.to_string()))?;
    let resources = merged.resources.unwrap_or_default();
    let vcpus = resources.vcpus.unwrap_or(1);
    if !(1..=MAX_VCPUS as i64).contains(&vcpus) {
        return Err(invalid(
            "resources.vcpus",
            format!("{vcpus} is outside 1..={MAX_VCPUS}"),
        ));
    }
    let size = |s: Option<spec::Size>| -> Result<Option<u64>, ResolveError> {
        s.map(|s| s.to_mib())
            .transpose()
            .map_err(|source| ResolveError::Size {
                unit: name.to_owned(),
                source,
            })
    };
    let memory_mib = size(resources.memory)?.unwrap_or(128);
    if memory_mib == 0 {
        return Err(invalid("resources.memory", "must be more than 0".into()));
    }
    let replicas = merged.replicas.unwrap_or(1);
    let replicas = u32::try_from(replicas)
        .map_err(|_| invalid("replicas", format!("{replicas} is negative")))?;
    let restart = merged.restart.unwrap_or_default();
    let restart_policy = match restart.policy.as_deref().unwrap_or("no") {
        "no" => RestartPolicy::No,
        "on-failure" => RestartPolicy::OnFailure,
        "always" => RestartPolicy::Always,
        other => {
            return Err(invalid(
                "restart.policy",
                format!("{other:?} is not no, on-failure or always"),
            ))
        }
    };
    let max_restarts = restart.max_restarts.unwrap_or(3);
    let max_restarts = u32::try_from(max_restarts).map_err(|_| {
        invalid(
            "restart.max_restarts",
            format!("{max_restarts} is negative"),
        )
    })?;
    let serial_log = match merged
        .serial
        .and_then(|s| s.mode)
        .as_deref()
        .unwrap_or("log")
    {
        "log" => true,
        "none" => false,
        other => {
            return Err(invalid(
                "serial.mode",
                format!("{other:?} is not log or none"),
            ))
        }
    };
    let network = merged.network.unwrap_or_default();
    for nic in &network {
        if !["bridge", "network", "user", "ethernet", "isolated"].contains(&nic.mode.as_str()) {
            return Err(invalid(
                "network.mode",
                format!(
                    "{:?} is not bridge, network, user, ethernet or isolated",
                    nic.mode
                ),
            ));
        }
    }
    let devices = merged.devices.unwrap_or_default();
    for device in &devices {
        match (device.kind.as_str(), device.address.as_deref()) {
            ("vfio-pci", Some(address)) if is_pci_address(address) => {}
            ("vfio-pci", other) => {
                return Err(invalid(
                    "devices.address",
                    format!("vfio-pci needs a PCI address like 0000:41:00.0, got {other:?}"),
                ))
            }
            ("rng" | "balloon" | "vsock", _) => {}
            (other, _) => {
                return Err(invalid(
                    "devices.kind",
                    format!("{other:?} is not vfio-pci, rng, balloon or vsock"),
                ))
            }
        }
    }
    let disks = merged.disks.unwrap_or_default();
    for disk in &disks {
        if !["raw", "qcow2"].contains(&disk.format.as_str()) {
            return Err(invalid(
                "disks.format",
                format!("{:?} is not raw or qcow2", disk.format),
            ));
        }
    }
    let boot = merged.boot.unwrap_or_default();
    Ok(ResolvedUnit {
        name: name.to_owned(),
        description: merged.description,
        tags: doc.tags.clone(),
        policies: doc.policies.clone(),
        blueprint,
        vcpus: vcpus as u32,
        memory_mib,
        memory_current_mib: size(resources.memory_current)?,
        cpuset: resources.cpuset,
        placement: resources.placement,
        replicas,
        restart_policy,
        max_restarts,
        kernel: boot.kernel,
        initrd: boot.initrd,
        cmdline: boot.cmdline,
        disks,
        network,
        devices,
        serial_log,
        libvirt: merged.libvirt.unwrap_or_default(),
    })
}

/// "dddd:bb:ss.f" in hex, as sysfs names PCI devices.
fn is_pci_address(address: &str) -> bool {
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    let Some((rest, function)) = address.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    parts.len() == 3 && hex(parts[0], 4) && hex(parts[1], 2) && hex(parts[2], 2) && hex(function, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::catalog::Sourced;
    use proptest::prelude::*;

    fn layer_map(pairs: &[(&str, i64)]) -> BTreeMap<String, toml::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), toml::Value::Integer(*v)))
            .collect()
    }

    fn catalog(unit: &str, tags: &[(&str, &str)], policies: &[(&str, &str)]) -> Catalog {
        let mut catalog = Catalog::default();
        let doc = spec::parse_unit(unit, "u.toml".as_ref()).unwrap();
        catalog.units.insert(
            "u".into(),
            Sourced {
                doc,
                path: "units/u.toml".into(),
            },
        );
        for (map, items) in [(&mut catalog.tags, tags), (&mut catalog.policies, policies)] {
            for (name, text) in items {
                let doc: spec::ProfileDoc = toml::from_str(text).unwrap();
                map.insert(
                    (*name).into(),
                    Sourced {
                        doc,
                        path: "p.toml".into(),
                    },
                );
            }
        }
        catalog
    }

    #[test]
    fn test_resolve_unit_beats_policy_beats_tag_beats_default() {
        let catalog = catalog(
            "tags = ['t']\npolicies = ['p']\n[resources]\nmemory = '1G'\n",
            &[(
                "t",
                "[defaults]\nreplicas = 3\n[defaults.resources]\nmemory = '256M'\ncpuset = '0-1'\n",
            )],
            &[("p", "[defaults]\nreplicas = 4\n")],
        );
        let r = resolve_unit(&catalog, "u").unwrap();
        assert_eq!(r.resolved.memory_mib, 1024);
        assert_eq!(r.resolved.replicas, 4);
        assert_eq!(r.settings["replicas"].origin.to_string(), "policy p");
        assert_eq!(r.settings["resources.cpuset"].origin.to_string(), "tag t");
        assert_eq!(r.settings["resources.memory"].overrides.len(), 2);
    }

    #[test]
    fn test_resolve_conflicting_tags_are_reported_unless_unit_decides() {
        let tags = [
            ("a", "[defaults]\nreplicas = 2\n"),
            ("b", "[defaults]\nreplicas = 5\n"),
        ];
        let err = resolve_unit(&catalog("tags = ['a', 'b']\n", &tags, &[]), "u").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("tag a") && message.contains("tag b"),
            "{message}"
        );
        let ok = resolve_unit(
            &catalog("tags = ['a', 'b']\nreplicas = 7\n", &tags, &[]),
            "u",
        )
        .unwrap();
        assert_eq!(ok.resolved.replicas, 7);
    }

    #[test]
    fn test_resolve_production_requires_two_replicas() {
        let production = "[[constraints]]\nsetting = 'replicas'\nmin = 2\n";
        let err = resolve_unit(
            &catalog(
                "tags = ['production']\n",
                &[("production", production)],
                &[],
            ),
            "u",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("replicas must be >= 2, but is 1 (set by default)"),
            "{err}"
        );
        assert!(resolve_unit(
            &catalog(
                "tags = ['production']\nreplicas = 2\n",
                &[("production", production)],
                &[]
            ),
            "u"
        )
        .is_ok());
    }

    #[test]
    fn test_resolve_public_facing_forbids_isolated_network() {
        let public = "[[constraints]]\nsetting = 'network.mode'\nforbid = ['isolated']\n";
        let unit = "tags = ['public']\n[[network]]\nmode = 'bridge'\nsource = 'br0'\n[[network]]\nmode = 'isolated'\n";
        let err = resolve_unit(&catalog(unit, &[("public", public)], &[]), "u")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("network.mode = isolated is forbidden"),
            "{err}"
        );
    }

    #[test]
    fn test_resolve_compute_units_map_to_vcpus() {
        let r = resolve_unit(
            &catalog("[resources]\ncompute_units = 250\n", &[], &[]),
            "u",
        )
        .unwrap();
        assert_eq!(r.resolved.vcpus, 3);
        let r = resolve_unit(&catalog("[resources]\nvcpus = 2\n", &[], &[]), "u").unwrap();
        assert_eq!(
            r.resolved.vcpus, 2,
            "explicit unit vcpus beat default compute units"
        );
        let err = resolve_unit(
            &catalog("[resources]\nvcpus = 2\ncompute_units = 400\n", &[], &[]),
            "u",
        );
        assert!(
            err.is_err(),
            "contradicting vcpus and compute_units in one layer"
        );
    }

    #[test]
    fn test_resolve_checks_vfio_addresses() {
        let ok = "[[devices]]\nkind = 'vfio-pci'\naddress = '0000:41:00.1'\n";
        assert!(resolve_unit(&catalog(ok, &[], &[]), "u").is_ok());
        let bad = "[[devices]]\nkind = 'vfio-pci'\naddress = '41:00.1'\n";
        let err = resolve_unit(&catalog(bad, &[], &[]), "u")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vfio-pci needs a PCI address"), "{err}");
    }

    #[test]
    fn test_resolve_unknown_tag_is_named() {
        let err = resolve_unit(&catalog("tags = ['nope']\n", &[], &[]), "u")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown tag \"nope\""), "{err}");
    }

    fn arb_layer() -> impl Strategy<Value = Layer> {
        prop_oneof![
            Just(Layer::Default),
            Just(Layer::Blueprint),
            Just(Layer::Tag),
            Just(Layer::Policy),
            Just(Layer::Unit)
        ]
    }

    proptest! {
        // The winner of every key is a value from the highest layer that sets it, and merging never
        // invents keys or values.
        #[test]
        fn test_merge_highest_layer_wins(
            contributions in proptest::collection::vec((arb_layer(), 0usize..4, 0i64..3), 1..20)
        ) {
            let keys = ["a", "b", "c", "d"];
            let layers: Vec<(Origin, BTreeMap<String, toml::Value>)> = contributions
                .iter()
                .enumerate()
                .map(|(i, (layer, key, value))| (origin(*layer, &i.to_string()), layer_map(&[(keys[*key], *value)])))
                .collect();
            let mut sorted = layers.clone();
            sorted.sort_by_key(|(o, _)| o.layer);
            match merge("u", &sorted) {
                Ok(merged) => {
                    for (key, effective) in &merged {
                        let top = contributions.iter().filter(|(_, k, _)| keys[*k] == key).map(|(l, _, _)| *l).max();
                        prop_assert_eq!(Some(effective.origin.layer), top);
                        let candidates: Vec<i64> = contributions.iter()
                            .filter(|(l, k, _)| keys[*k] == key && Some(*l) == top)
                            .map(|(_, _, v)| *v).collect();
                        prop_assert!(candidates.iter().all(|v| Some(*v) == effective.value.as_integer()));
                    }
                    let used: std::collections::BTreeSet<&str> = contributions.iter().map(|(_, k, _)| keys[*k]).collect();
                    prop_assert_eq!(merged.len(), used.len());
                }
                Err(ResolveError::Conflict { first, second, .. }) => {
                    // Both sides name the same layer kind (e.g. "tag 3 sets 1", "tag 5 sets 2").
                    prop_assert_eq!(first.split(' ').next(), second.split(' ').next());
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        // Adding a unit-level value for a key always makes the unit win, whatever the lower layers say.
        #[test]
        fn test_merge_unit_settles_any_conflict(
            lower in proptest::collection::vec((arb_layer(), 0i64..5), 0..10),
            unit_value in 0i64..5,
        ) {
            let mut layers: Vec<(Origin, BTreeMap<String, toml::Value>)> = lower
                .iter()
                .filter(|(layer, _)| *layer != Layer::Unit)
                .enumerate()
                .map(|(i, (layer, v))| (origin(*layer, &i.to_string()), layer_map(&[("k", *v)])))
                .collect();
            layers.sort_by_key(|(o, _)| o.layer);
            layers.push((origin(Layer::Unit, "u"), layer_map(&[("k", unit_value)])));
            let merged = merge("u", &layers).unwrap();
            prop_assert_eq!(merged["k"].value.as_integer(), Some(unit_value));
            prop_assert_eq!(merged["k"].origin.layer, Layer::Unit);
        }
    }
}
