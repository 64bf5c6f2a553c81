//! Blueprints built from versioned components (seed 004, "Component Composition").
//!
//! A blueprint pins `component@version` pairs. Resolution is deterministic: components contribute in
//! blueprint order; a kernel or initrd may come from one component only; command-line fragments are
//! joined in order; disks and devices are appended; the blueprint's own `defaults` come last and win.
//! Every error names the blueprint and the missing or conflicting component.

use std::collections::BTreeMap;

use serde::Serialize;

use super::catalog::Catalog;
use super::spec::{self, ComponentDoc};

/// Errors from resolving a blueprint.
#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    #[error("no blueprint named {name:?} (known: {known})")]
    UnknownBlueprint { name: String, known: String },
    #[error("blueprint {name} has no version {version} (available: {available})")]
    UnknownVersion {
        name: String,
        version: String,
        available: String,
    },
    #[error("blueprint {blueprint}: component {component}@{version} not found (available versions: {available})")]
    MissingComponent {
        blueprint: String,
        component: String,
        version: String,
        available: String,
    },
    #[error("blueprint {blueprint}: component {component} is listed twice")]
    DuplicateComponent {
        blueprint: String,
        component: String,
    },
    #[error("blueprint {blueprint}: component {component} requires {required}, which the blueprint does not include")]
    MissingRequirement {
        blueprint: String,
        component: String,
        required: String,
    },
    #[error("blueprint {blueprint}: components {first} and {second} conflict on {what}")]
    Conflict {
        blueprint: String,
        first: String,
        second: String,
        what: String,
    },
}

/// The result of resolving a blueprint: the pinned components and the settings they produce,
/// each with the component(s) that provided it.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedBlueprint {
    pub name: String,
    pub version: String,
    pub components: Vec<String>,
    pub settings: BTreeMap<String, (toml::Value, String)>,
}

impl ResolvedBlueprint {
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Orders versions by their numeric dot-separated parts ("1.10" > "1.9"), text parts compared as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-'])
            .map(|part| (part.parse::<u64>().unwrap_or(0), part.to_owned()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// Resolves "NAME" (newest version) or "NAME@VERSION".
pub fn resolve(catalog: &Catalog, reference: &str) -> Result<ResolvedBlueprint, BlueprintError> {
    let (name, wanted) = match reference.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (reference, None),
    };
    let mut versions: Vec<&String> = catalog
        .blueprints
        .keys()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        let mut names: Vec<String> = catalog.blueprints.keys().map(|(n, _)| n.clone()).collect();
        names.dedup();
        return Err(BlueprintError::UnknownBlueprint {
            name: name.to_owned(),
            known: super::catalog::join_or_none(names.iter()),
        });
    }
    versions.sort_by(|a, b| compare_versions(a, b));
    let version = match wanted {
        Some(v) if versions.iter().any(|x| *x == v) => v.to_owned(),
        Some(v) => {
            return Err(BlueprintError::UnknownVersion {
                name: name.to_owned(),
                version: v.to_owned(),
                available: versions
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        None => versions[versions.len() - 1].clone(),
    };
    let blueprint = &catalog.blueprints[&(name.to_owned(), version.clone())].doc;
    let id = format!("{name}@{version}");
    let components = pinned_components(catalog, &id, blueprint)?;
    let mut resolved = ResolvedBlueprint {
        name: name.to_owned(),
        version,
        components: components
            .iter()
            .map(|c| format!("{}@{}", c.name, c.version))
            .collect(),
        settings: BTreeMap::new(),
    };
    compose(&id, &components, &mut resolved.settings)?;
    if let Some(defaults) = &blueprint.defaults {
        for (key, value) in spec::flatten(defaults) {
            resolved
                .settings
                .insert(key, (value, format!("blueprint {id}")));
        }
    }
    Ok(resolved)
}

fn pinned_components<'a>(
    catalog: &'a Catalog,
    id: &str,
    blueprint: &spec::BlueprintDoc,
) -> Result<Vec<&'a ComponentDoc>, BlueprintError> {
    let mut found: Vec<&ComponentDoc> = Vec::new();
    for pin in &blueprint.components {
        if found.iter().any(|c| c.name == pin.component) {
            return Err(BlueprintError::DuplicateComponent {
                blueprint: id.to_owned(),
                component: pin.component.clone(),
            });
        }
        let key = (pin.component.clone(), pin.version.clone());
        let Some(component) = catalog.components.get(&key) else {
            let available: Vec<String> = catalog
                .components
                .keys()
                .filter(|(n, _)| *n == pin.component)
                .map(|(_, v)| v.clone())
                .collect();
            return Err(BlueprintError::MissingComponent {
                blueprint: id.to_owned(),
                component: pin.component.clone(),
                version: pin.version.clone(),
                available: super::catalog::join_or_none(available.iter()),
            });
        };
        found.push(&component.doc);
    }
    for component in &found {
        for required in &component.requires {
            if !found.iter().any(|c| &c.name == required) {
                return Err(BlueprintError::MissingRequirement {
                    blueprint: id.to_owned(),
                    component: component.name.clone(),
                    required: required.clone(),
                });
            }
        }
        for other in &component.conflicts {
            if let Some(clash) = found.iter().find(|c| &c.name == other) {
                return Err(BlueprintError::Conflict {
                    blueprint: id.to_owned(),
                    first: format!("{}@{}", component.name, component.version),
                    second: format!("{}@{}", clash.name, clash.version),
                    what: "their declared `conflicts`".to_owned(),
                });
            }
        }
    }
    Ok(found)
}

/// Merges the components' contributions into `out`, refusing ambiguous ones.
fn compose(
    id: &str,
    components: &[&ComponentDoc],
    out: &mut BTreeMap<String, (toml::Value, String)>,
) -> Result<(), BlueprintError> {
    let conflict = |first: &str, second: &ComponentDoc, what: &str| BlueprintError::Conflict {
        blueprint: id.to_owned(),
        first: first.to_owned(),
        second: format!("{}@{}", second.name, second.version),
        what: what.to_owned(),
    };
    let mut cmdline: Vec<&str> = Vec::new();
    let mut cmdline_from: Vec<String> = Vec::new();
    let mut disks = Vec::new();
    let mut disks_from: Vec<String> = Vec::new();
    let mut devices = Vec::new();
    let mut devices_from: Vec<String> = Vec::new();
    for component in components {
        let me = format!("component {}@{}", component.name, component.version);
        for (key, value) in [
            ("boot.kernel", &component.kernel),
            ("boot.initrd", &component.initrd),
        ] {
            if let Some(value) = value {
                if let Some((_, first)) = out.get(key) {
                    return Err(conflict(
                        first.trim_start_matches("component "),
                        component,
                        key,
                    ));
                }
                out.insert(
                    key.to_owned(),
                    (toml::Value::String(value.clone()), me.clone()),
                );
            }
        }
        if !component.cmdline.is_empty() {
            cmdline.extend(component.cmdline.iter().map(String::as_str));
            cmdline_from.push(me.clone());
        }
        for disk in &component.disks {
            if let Some(target) = &disk.target {
                if disks
                    .iter()
                    .any(|d: &spec::Disk| d.target.as_ref() == Some(target))
                {
                    return Err(conflict(
                        &disks_from.join(", "),
                        component,
                        &format!("disk target {target}"),
                    ));
                }
            }
            disks.push(disk.clone());
        }
        if !component.disks.is_empty() {
            disks_from.push(me.clone());
        }
        if !component.devices.is_empty() {
            devices.extend(component.devices.iter().cloned());
            devices_from.push(me.clone());
        }
        if let Some(resources) = &component.resources {
            let flat = spec::flatten(&spec::SettingsDoc {
                resources: Some(resources.clone()),
                ..Default::default()
            });
            for (key, value) in flat {
                if let Some((previous, first)) = out.get(&key) {
                    if previous != &value {
                        return Err(conflict(
                            first.trim_start_matches("component "),
                            component,
                            &key,
                        ));
                    }
                }
                out.insert(key, (value, me.clone()));
            }
        }
    }
    let mut list = |key: &str, value: Option<toml::Value>, from: Vec<String>| {
        if let Some(value) = value {
            out.insert(key.to_owned(), (value, from.join(" + ")));
        }
    };
    list(
        "boot.cmdline",
        (!cmdline.is_empty()).then(|| toml::Value::String(cmdline.join(" "))),
        cmdline_from,
    );
    list(
        "disks",
        (!disks.is_empty())
            .then(|| toml::Value::try_from(&disks).ok())
            .flatten(),
        disks_from,
    );
    list(
        "devices",
        (!devices.is_empty())
            .then(|| toml::Value::try_from(&devices).ok())
            .flatten(),
        devices_from,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::catalog::Sourced;
    use crate::compute::spec::{BlueprintDoc, ComponentPin};

    fn component(
        name: &str,
        version: &str,
        toml_body: &str,
    ) -> ((String, String), Sourced<ComponentDoc>) {
        let text = format!("name = '{name}'\nversion = '{version}'\n{toml_body}");
        let doc: ComponentDoc = toml::from_str(&text).unwrap();
        (
            (name.into(), version.into()),
            Sourced {
                doc,
                path: "c.toml".into(),
            },
        )
    }

    fn blueprint(catalog: &mut Catalog, name: &str, version: &str, pins: &[(&str, &str)]) {
        let doc = BlueprintDoc {
            name: name.into(),
            version: version.into(),
            components: pins
                .iter()
                .map(|(c, v)| ComponentPin {
                    component: (*c).into(),
                    version: (*v).into(),
                })
                .collect(),
            ..Default::default()
        };
        catalog.blueprints.insert(
            (name.into(), version.into()),
            Sourced {
                doc,
                path: "b.toml".into(),
            },
        );
    }

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        catalog.components.extend([
            component("base", "1.0", "kernel = 'vmlinux'\ncmdline = ['console=ttyS0']\n"),
            component("base", "2.0", "kernel = 'vmlinux2'\ncmdline = ['console=ttyS0', 'quiet']\n"),
            component("web", "1.0", "cmdline = ['web=1']\nrequires = ['base']\n[[disks]]\npath='web.img'\ntarget='vdb'\n"),
            component("other-kernel", "1.0", "kernel = 'other'\n"),
        ]);
        blueprint(
            &mut catalog,
            "app",
            "1.0",
            &[("base", "1.0"), ("web", "1.0")],
        );
        blueprint(
            &mut catalog,
            "app",
            "1.10",
            &[("base", "2.0"), ("web", "1.0")],
        );
        catalog
    }

    #[test]
    fn test_resolve_picks_newest_version_and_joins_cmdline_in_order() {
        let resolved = resolve(&catalog(), "app").unwrap();
        assert_eq!(resolved.version, "1.10");
        assert_eq!(
            resolved.settings["boot.cmdline"].0.as_str(),
            Some("console=ttyS0 quiet web=1")
        );
        assert_eq!(resolved.settings["boot.kernel"].1, "component base@2.0");
    }

    #[test]
    fn test_resolve_names_missing_component_and_available_versions() {
        let mut catalog = catalog();
        blueprint(&mut catalog, "broken", "1", &[("base", "9.9")]);
        let message = resolve(&catalog, "broken@1").unwrap_err().to_string();
        assert!(message.contains("base@9.9"), "{message}");
        assert!(message.contains("1.0, 2.0"), "{message}");
    }

    #[test]
    fn test_resolve_rejects_two_kernels() {
        let mut catalog = catalog();
        blueprint(
            &mut catalog,
            "two",
            "1",
            &[("base", "1.0"), ("other-kernel", "1.0")],
        );
        let message = resolve(&catalog, "two").unwrap_err().to_string();
        assert!(
            message.contains("base@1.0") && message.contains("other-kernel@1.0"),
            "{message}"
        );
    }

    #[test]
    fn test_resolve_checks_requirements() {
        let mut catalog = catalog();
        blueprint(&mut catalog, "lonely", "1", &[("web", "1.0")]);
        let message = resolve(&catalog, "lonely").unwrap_err().to_string();
        assert!(message.contains("requires base"), "{message}");
    }

    #[test]
    fn test_compare_versions_is_numeric() {
        assert!(compare_versions("1.10", "1.9").is_gt());
        assert!(compare_versions("2.0", "10.0").is_lt());
    }
}
