//! The feature catalog: one JSON file (`orchestrator/catalog/features.json`) embedded at build time.
//!
//! The same file is read by `nixos/catalog.nix` (`builtins.fromJSON`), so Rust and Nix share one
//! source of truth. `Catalog::load` checks the data is coherent before anything uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The catalog as shipped in the repository.
pub const CATALOG_JSON: &str = include_str!("../../catalog/features.json");

/// How risky a feature is (seed 001 "Risk Level Combinations"). Ordered: low < moderate < high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Moderate,
    High,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Risk::Low => "low",
            Risk::Moderate => "moderate",
            Risk::High => "high",
        };
        f.write_str(name)
    }
}

/// A hardware capability a feature needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRequirement {
    /// Hardware virtualization usable by KVM.
    Kvm,
    /// An enabled IOMMU with groups.
    Iommu,
    /// At least one GPU on the PCI bus.
    Gpu,
}

/// A per-feature setting with its default (seed 000 "Feature Flags").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    pub description: String,
    pub default: serde_json::Value,
    /// Setting this boolean flag to `true` makes the feature this risky (seed 001: "Automated
    /// Response" is high risk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_when_true: Option<Risk>,
}

/// One feature of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub category: String,
    pub description: String,
    pub ram_mb: u64,
    /// Feature names, or patterns ending in `*` (`desktop-*`: any feature with that prefix).
    pub depends: Vec<String>,
    pub notes: String,
    pub risk: Risk,
    pub flags: Vec<Flag>,
    pub host_requirements: Vec<HostRequirement>,
    /// NixOS option path (dotted) -> value, applied by `nixos/module.nix` when the feature is on.
    pub nixos: BTreeMap<String, serde_json::Value>,
    /// `seed-000` when the feature comes from the seed catalog, `decided` when docs/features.md
    /// explains why it was added.
    pub origin: String,
}

/// A cumulative tier: each tier holds the previous tier's features plus `adds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    pub adds: Vec<String>,
    /// The seed's rough RAM figure ("~3GB"); the resolver computes the real one.
    pub approx_ram_mb: u64,
    pub use_case: String,
}

/// A set of features of which at most one may be enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conflict {
    pub features: Vec<String>,
    pub reason: String,
}

/// A pair that works together with a limitation (seed 001's ⚠️ cells).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limitation {
    pub features: Vec<String>,
    pub limitation: String,
}

/// A feature that works on an architecture only with a limitation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformLimitation {
    pub feature: String,
    pub arch: String,
    pub limitation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRequirementInfo {
    pub name: HostRequirement,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskLevelInfo {
    pub name: Risk,
    pub meaning: String,
}

/// A named ceiling on risk (seed 001's `riskTolerance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskTolerance {
    pub name: String,
    pub max_risk: Risk,
    pub meaning: String,
}

/// The whole catalog, in file order (which is also the order every output uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub schema_version: u32,
    pub features: Vec<Feature>,
    pub tiers: Vec<Tier>,
    pub conflicts: Vec<Conflict>,
    pub limitations: Vec<Limitation>,
    pub host_requirements: Vec<HostRequirementInfo>,
    pub platform_limitations: Vec<PlatformLimitation>,
    pub risk_levels: Vec<RiskLevelInfo>,
    pub risk_tolerances: Vec<RiskTolerance>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the feature catalog is not valid JSON for this schema")]
    Parse(#[source] serde_json::Error),
    #[error("feature catalog is incoherent: {0}")]
    Incoherent(String),
}

impl Catalog {
    /// The catalog embedded in the binary.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::from_json(CATALOG_JSON)
    }

    /// Parses and checks a catalog.
    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog = serde_json::from_str(text).map_err(CatalogError::Parse)?;
        catalog.check().map_err(CatalogError::Incoherent)?;
        Ok(catalog)
    }

    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Position in catalog order, used to sort every output deterministically.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Features matching a dependency entry: the name itself, or every prefix match of `x-*`.
    pub fn matching(&self, pattern: &str) -> Vec<&Feature> {
        match pattern.strip_suffix('*') {
            Some(prefix) => self
                .features
                .iter()
                .filter(|f| f.name.starts_with(prefix))
                .collect(),
            None => self.feature(pattern).into_iter().collect(),
        }
    }

    pub fn risk_tolerance(&self, name: &str) -> Option<&RiskTolerance> {
        self.risk_tolerances.iter().find(|t| t.name == name)
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// Index of a tier in ascending order (minimal = 0).
    pub fn tier_rank(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// All features of a tier, cumulative over the lower tiers.
    pub fn tier_features(&self, name: &str) -> Option<BTreeSet<String>> {
        let rank = self.tier_rank(name)?;
        Some(
            self.tiers[..=rank]
                .iter()
                .flat_map(|t| t.adds.iter().cloned())
                .collect(),
        )
    }

    /// The first tier that lists a feature, if any tier does.
    pub fn tier_of_feature(&self, feature: &str) -> Option<usize> {
        self.tiers
            .iter()
            .position(|t| t.adds.iter().any(|a| a == feature))
    }

    /// The reason two features cannot be enabled together, if they conflict.
    pub fn conflict_between(&self, a: &str, b: &str) -> Option<&str> {
        self.conflicts
            .iter()
            .find(|c| {
                a != b && c.features.iter().any(|f| f == a) && c.features.iter().any(|f| f == b)
            })
            .map(|c| c.reason.as_str())
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for feature in &self.features {
            if !seen.insert(feature.name.as_str()) {
                return Err(format!("feature `{}` is listed twice", feature.name));
            }
        }
        for feature in &self.features {
            for dep in &feature.depends {
                if self.matching(dep).is_empty() {
                    return Err(format!("`{}` depends on unknown `{dep}`", feature.name));
                }
                if dep == &feature.name {
                    return Err(format!("`{}` depends on itself", feature.name));
                }
            }
        }
        let named_elsewhere = self
            .tiers
            .iter()
            .flat_map(|t| t.adds.iter().map(move |n| (format!("tier {}", t.name), n)))
            .chain(
                self.conflicts
                    .iter()
                    .flat_map(|c| c.features.iter().map(|n| ("a conflict".to_string(), n))),
            )
            .chain(
                self.limitations
                    .iter()
                    .flat_map(|l| l.features.iter().map(|n| ("a limitation".to_string(), n))),
            )
            .chain(
                self.platform_limitations
                    .iter()
                    .map(|p| ("a platform limitation".to_string(), &p.feature)),
            );
        for (place, name) in named_elsewhere {
            if self.feature(name).is_none() {
                return Err(format!("{place} names unknown feature `{name}`"));
            }
        }
        self.check_acyclic()
    }

    /// Exact dependencies must not form a cycle (wildcards only point at leaf desktops).
    fn check_acyclic(&self) -> Result<(), String> {
        fn visit<'a>(
            catalog: &'a Catalog,
            name: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Result<(), String> {
            if done.contains(name) {
                return Ok(());
            }
            if path.contains(&name) {
                return Err(format!("dependency cycle through `{name}`"));
            }
            path.push(name);
            if let Some(feature) = catalog.feature(name) {
                for dep in &feature.depends {
                    for target in catalog.matching(dep) {
                        visit(catalog, &target.name, path, done)?;
                    }
                }
            }
            path.pop();
            done.insert(name);
            Ok(())
        }
        let mut done = BTreeSet::new();
        for feature in &self.features {
            visit(self, &feature.name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_catalog_builtin_loads_every_seed_feature() {
        let catalog = Catalog::builtin().unwrap();
        let seed_000 = [
            "core",
            "cli-tools",
            "libvirt",
            "qemu-kvm",
            "virt-manager",
            "vm-templates",
            "live-migration",
            "networking-basic",
            "networking-advanced",
            "firewall",
            "network-isolation",
            "vpn-server",
            "storage-basic",
            "storage-lvm",
            "storage-zfs",
            "storage-distributed",
            "storage-encryption",
            "security-base",
            "ssh-hardening",
            "audit-logging",
            "ai-security",
            "compliance",
            "ids-ips",
            "vulnerability-scanning",
            "monitoring",
            "logging",
            "alerting",
            "tracing",
            "metrics-export",
            "automation",
            "terraform",
            "ci-cd",
            "orchestration",
            "scheduled-tasks",
            "desktop-kde",
            "desktop-gnome",
            "desktop-xfce",
            "remote-desktop",
            "dev-tools",
            "container-support",
            "kubernetes-tools",
            "database-tools",
            "clustering",
            "high-availability",
            "multi-tenant",
            "federation",
            "backup-enterprise",
            "disaster-recovery",
            "web-dashboard",
            "rest-api",
            "graphql-api",
            "websocket-api",
        ];
        for name in seed_000 {
            let feature = catalog
                .feature(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(feature.origin, "seed-000", "{name}");
        }
        assert_eq!(catalog.feature("ai-security").unwrap().ram_mb, 4096);
        assert_eq!(
            catalog.feature("clustering").unwrap().depends,
            ["monitoring", "networking-advanced"]
        );
        let retention = &catalog.feature("monitoring").unwrap().flags[0];
        assert_eq!(
            (retention.name.as_str(), &retention.default),
            ("retention", &serde_json::json!(30))
        );
    }

    #[test]
    fn test_catalog_wildcard_matches_every_desktop() {
        let catalog = Catalog::builtin().unwrap();
        let names: Vec<_> = catalog
            .matching("desktop-*")
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(names, ["desktop-kde", "desktop-gnome", "desktop-xfce"]);
    }

    #[test]
    fn test_catalog_tiers_are_cumulative() {
        let catalog = Catalog::builtin().unwrap();
        let standard = catalog.tier_features("standard").unwrap();
        assert!(standard.contains("libvirt") && standard.contains("backup-basic"));
        assert!(!standard.contains("web-dashboard"));
        assert_eq!(catalog.tiers.len(), 5);
    }

    #[test]
    fn test_catalog_conflicts_from_the_seeds() {
        let catalog = Catalog::builtin().unwrap();
        assert!(catalog
            .conflict_between("desktop-kde", "desktop-gnome")
            .is_some());
        assert!(catalog
            .conflict_between("live-migration", "continuous-replication")
            .is_some());
        assert!(catalog
            .conflict_between("gpu-passthrough", "live-migration")
            .is_some());
        assert!(catalog
            .conflict_between("desktop-kde", "desktop-kde")
            .is_none());
        assert!(catalog
            .conflict_between("monitoring", "web-dashboard")
            .is_none());
    }

    #[test]
    fn test_catalog_rejects_unknown_dependency() {
        let mut value: serde_json::Value = serde_json::from_str(CATALOG_JSON).unwrap();
        value["features"][1]["depends"] = serde_json::json!(["nope"]);
        let err = Catalog::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("unknown `nope`"), "{err}");
    }

    #[test]
    fn test_catalog_rejects_dependency_cycle() {
        let mut value: serde_json::Value = serde_json::from_str(CATALOG_JSON).unwrap();
        value["features"][0]["depends"] = serde_json::json!(["cli-tools"]);
        let err = Catalog::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }
}
