//! The resolver: a selection (tier + extra features) and host facts -> the enabled closure,
//! with every added dependency explained, conflicts and host problems as one-line errors,
//! limitations as warnings, the RAM budget, the tier and the risk level.
//!
//! Deterministic: every output list is in catalog order, whatever order the input came in.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, HostRequirement, Risk};
use super::suggest::nearest;
use crate::host::HostFacts;

/// What the user wants: a base tier plus extra features.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub tier: Option<String>,
    pub extra: BTreeSet<String>,
    /// Seed 001's `riskTolerance`: features above its ceiling are refused.
    #[serde(default)]
    pub risk_tolerance: Option<String>,
}

/// A change to a selection, as typed on the command line (`+feat -feat --tier T`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub tier: Option<String>,
    pub risk_tolerance: Option<String>,
}

/// A feature the resolver enabled although nobody asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addition {
    pub feature: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub selection: Selection,
    /// Features the user asked for (tier features + extras), catalog order.
    pub requested: Vec<String>,
    /// The closure: requested + dependencies, catalog order.
    pub enabled: Vec<String>,
    pub added: Vec<Addition>,
    /// Each a single line; a non-empty list means the selection must not be applied.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub ram_mb: u64,
    pub host_ram_mb: Option<u64>,
    pub tier: String,
    /// Why this tier: the feature that needs it, or the requested tier.
    pub tier_reason: String,
    pub risk: Risk,
    /// The enabled features at the resulting risk level.
    pub risk_from: Vec<String>,
}

impl Resolution {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("unknown feature `{name}`{}", did_you_mean(suggestion))]
    UnknownFeature {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "unknown tier `{name}`{} (tiers: minimal, standard, enhanced, professional, enterprise)",
        did_you_mean(suggestion)
    )]
    UnknownTier {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "unknown risk tolerance `{name}`{} (paranoid, cautious, balanced, accepting)",
        did_you_mean(suggestion)
    )]
    UnknownRiskTolerance {
        name: String,
        suggestion: Option<String>,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// Applies `change` to `current` and resolves the result.
pub fn resolve_change(
    catalog: &Catalog,
    current: &Selection,
    change: &Change,
    host: Option<&HostFacts>,
) -> Result<Resolution, ResolveError> {
    let mut selection = current.clone();
    if let Some(tier) = &change.tier {
        selection.tier = Some(tier.clone());
    }
    if let Some(tolerance) = &change.risk_tolerance {
        selection.risk_tolerance = Some(tolerance.clone());
    }
    for name in &change.add {
        check_name(catalog, name)?;
        selection.extra.insert(name.clone());
    }
    for name in &change.remove {
        check_name(catalog, name)?;
        selection.extra.remove(name);
    }
    let mut resolution = resolve(catalog, &selection, host)?;
    explain_removals(catalog, &change.remove, &mut resolution);
    Ok(resolution)
}

fn check_name(catalog: &Catalog, name: &str) -> Result<(), ResolveError> {
    if catalog.feature(name).is_some() {
        return Ok(());
    }
    let names = catalog.features.iter().map(|f| f.name.as_str());
    Err(ResolveError::UnknownFeature {
        name: name.to_string(),
        suggestion: nearest(name, names),
    })
}

/// A removed feature that stays enabled is an error: say what keeps it.
fn explain_removals(catalog: &Catalog, removed: &[String], resolution: &mut Resolution) {
    for name in removed {
        if !resolution.enabled.contains(name) {
            continue;
        }
        let message = if resolution.requested.contains(name) {
            let tier = resolution.selection.tier.as_deref().unwrap_or("?");
            format!("cannot remove {name}: it belongs to tier {tier} (choose a lower tier)")
        } else {
            let users = dependents(catalog, name, &resolution.enabled);
            format!("cannot remove {name}: needed by {}", users.join(", "))
        };
        resolution.errors.insert(0, message);
    }
}

/// Enabled features that depend on `name` (directly, or through a wildcard it matches).
fn dependents(catalog: &Catalog, name: &str, enabled: &[String]) -> Vec<String> {
    enabled
        .iter()
        .filter(|e| {
            catalog.feature(e).is_some_and(|f| {
                f.depends
                    .iter()
                    .any(|d| catalog.matching(d).iter().any(|m| m.name == name))
            })
        })
        .cloned()
        .collect()
}

/// Resolves a selection.
pub fn resolve(
    catalog: &Catalog,
    selection: &Selection,
    host: Option<&HostFacts>,
) -> Result<Resolution, ResolveError> {
    let mut requested: BTreeSet<String> = BTreeSet::new();
    if let Some(tier) = &selection.tier {
        let features = catalog
            .tier_features(tier)
            .ok_or_else(|| ResolveError::UnknownTier {
                name: tier.clone(),
                suggestion: nearest(tier, catalog.tiers.iter().map(|t| t.name.as_str())),
            })?;
        requested.extend(features);
    }
    for name in &selection.extra {
        check_name(catalog, name)?;
        requested.insert(name.clone());
    }
    let mut added = Vec::new();
    if !requested.contains("core") {
        added.push(Addition {
            feature: "core".into(),
            reason: "always required".into(),
        });
    }
    let mut enabled: BTreeSet<String> = requested.clone();
    enabled.insert("core".into());
    close_under_dependencies(catalog, &mut enabled, &mut added);

    let enabled = in_catalog_order(catalog, &enabled);
    let mut errors = conflicts(catalog, &enabled);
    errors.extend(risk_errors(
        catalog,
        &enabled,
        selection.risk_tolerance.as_deref(),
    )?);
    let mut warnings = limitations(catalog, &enabled);
    let ram_mb = enabled
        .iter()
        .filter_map(|n| catalog.feature(n))
        .map(|f| f.ram_mb)
        .sum();
    match host {
        Some(facts) => check_host(catalog, &enabled, facts, ram_mb, &mut errors, &mut warnings),
        None => warnings.push("host not detected: hardware and RAM checks skipped".into()),
    }
    let added = in_catalog_order_by(catalog, added, |a| &a.feature);
    let (tier, tier_reason) =
        resulting_tier(catalog, selection.tier.as_deref(), &enabled, &mut warnings);
    let features = || enabled.iter().filter_map(|n| catalog.feature(n));
    let risk = features().map(|f| f.risk).max().unwrap_or(Risk::Low);
    let risk_from = features()
        .filter(|f| f.risk == risk)
        .map(|f| f.name.clone())
        .collect();
    Ok(Resolution {
        tier,
        tier_reason,
        risk,
        risk_from,
        requested: in_catalog_order(catalog, &requested),
        selection: selection.clone(),
        enabled,
        added,
        errors,
        warnings,
        ram_mb,
        host_ram_mb: host.map(|h| h.memory.total_mb),
    })
}

/// Adds dependencies until nothing is missing. Exact dependencies first; a wildcard one
/// (`desktop-*`) is satisfied by any enabled match, else by the lightest match, which is the
/// cheapest deterministic choice (the user can pick another one explicitly).
fn close_under_dependencies(
    catalog: &Catalog,
    enabled: &mut BTreeSet<String>,
    added: &mut Vec<Addition>,
) {
    loop {
        let mut changed = false;
        for feature in &catalog.features {
            if !enabled.contains(&feature.name) {
                continue;
            }
            for dep in &feature.depends {
                let matches = catalog.matching(dep);
                if matches.iter().any(|m| enabled.contains(&m.name)) {
                    continue;
                }
                let choice = if dep.ends_with('*') {
                    matches.iter().min_by_key(|m| m.ram_mb)
                } else {
                    matches.first()
                };
                let Some(choice) = choice else { continue };
                let reason = if dep.ends_with('*') {
                    format!(
                        "needed by {} (any {dep}; picked the lightest)",
                        feature.name
                    )
                } else {
                    format!("needed by {}", feature.name)
                };
                enabled.insert(choice.name.clone());
                added.push(Addition {
                    feature: choice.name.clone(),
                    reason,
                });
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

fn in_catalog_order(catalog: &Catalog, names: &BTreeSet<String>) -> Vec<String> {
    catalog
        .features
        .iter()
        .filter(|f| names.contains(&f.name))
        .map(|f| f.name.clone())
        .collect()
}

fn in_catalog_order_by<T>(
    catalog: &Catalog,
    mut items: Vec<T>,
    key: impl Fn(&T) -> &String,
) -> Vec<T> {
    items.sort_by_key(|item| catalog.index_of(key(item)).unwrap_or(usize::MAX));
    items
}

/// Checks a hand-written list of enabled features (what `nixos/module.nix` receives): every
/// dependency present and no conflict. `nixos/rules.nix` produces the same lines for the
/// module's assertions; a test keeps the two identical.
pub fn validate_enabled(
    catalog: &Catalog,
    enabled: &[String],
    risk_tolerance: Option<&str>,
) -> Vec<String> {
    let enabled: BTreeSet<String> = enabled.iter().cloned().collect();
    let ordered = in_catalog_order(catalog, &enabled);
    let mut errors = Vec::new();
    for name in &ordered {
        let Some(feature) = catalog.feature(name) else {
            continue;
        };
        for dep in &feature.depends {
            if !catalog
                .matching(dep)
                .iter()
                .any(|m| enabled.contains(&m.name))
            {
                errors.push(format!("{name} needs {dep}"));
            }
        }
    }
    errors.extend(conflicts(catalog, &ordered));
    // An unknown tolerance cannot reach here from the module (its option is an enum).
    errors.extend(risk_errors(catalog, &ordered, risk_tolerance).unwrap_or_default());
    errors
}

/// One line per enabled feature riskier than the tolerance allows.
fn risk_errors(
    catalog: &Catalog,
    enabled: &[String],
    tolerance: Option<&str>,
) -> Result<Vec<String>, ResolveError> {
    let Some(name) = tolerance else {
        return Ok(Vec::new());
    };
    let tolerance =
        catalog
            .risk_tolerance(name)
            .ok_or_else(|| ResolveError::UnknownRiskTolerance {
                name: name.to_string(),
                suggestion: nearest(
                    name,
                    catalog.risk_tolerances.iter().map(|t| t.name.as_str()),
                ),
            })?;
    Ok(enabled
        .iter()
        .filter_map(|n| catalog.feature(n))
        .filter(|f| f.risk > tolerance.max_risk)
        .map(|f| {
            format!(
                "{} is {} risk; risk tolerance {} allows up to {}",
                f.name, f.risk, tolerance.name, tolerance.max_risk
            )
        })
        .collect())
}

/// One line per conflicting pair, in catalog order (`desktop-kde conflicts with desktop-gnome`).
fn conflicts(catalog: &Catalog, enabled: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, a) in enabled.iter().enumerate() {
        for b in &enabled[i + 1..] {
            if let Some(reason) = catalog.conflict_between(a, b) {
                errors.push(format!("{a} conflicts with {b} ({reason})"));
            }
        }
    }
    errors
}

fn limitations(catalog: &Catalog, enabled: &[String]) -> Vec<String> {
    catalog
        .limitations
        .iter()
        .filter(|l| l.features.iter().all(|f| enabled.contains(f)))
        .map(|l| {
            format!(
                "{} with {}: {}",
                l.features[0],
                l.features[1..].join(", "),
                l.limitation
            )
        })
        .collect()
}

fn check_host(
    catalog: &Catalog,
    enabled: &[String],
    host: &HostFacts,
    ram_mb: u64,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    for feature in enabled.iter().filter_map(|n| catalog.feature(n)) {
        for requirement in &feature.host_requirements {
            if let Some(problem) = host_problem(*requirement, host, &feature.name) {
                errors.push(format!("{}: {problem}", feature.name));
            }
        }
        for limit in &catalog.platform_limitations {
            if limit.feature == feature.name && limit.arch == host.arch {
                warnings.push(format!("{}: {}", feature.name, limit.limitation));
            }
        }
        if feature.host_requirements.contains(&HostRequirement::Gpu) && host.gpus().count() == 1 {
            warnings.push(format!(
                "{}: the host has a single GPU; it loses its console while the GPU is passed through",
                feature.name
            ));
        }
    }
    if ram_mb > host.memory.total_mb {
        errors.push(format!(
            "Insufficient RAM: need {ram_mb}MB, have {}MB",
            host.memory.total_mb
        ));
    }
}

fn host_problem(requirement: HostRequirement, host: &HostFacts, feature: &str) -> Option<String> {
    match requirement {
        HostRequirement::Kvm if !host.kvm.usable => Some(
            if host.arch == "x86_64" && host.cpu.virtualization.is_none() {
                "KVM acceleration unavailable: no /dev/kvm and no vmx/svm CPU flag (enable Intel VT-x or AMD-V in the firmware)"
                    .to_string()
            } else {
                "KVM acceleration unavailable (/dev/kvm missing: is the kvm module loaded?)"
                    .to_string()
            },
        ),
        HostRequirement::Iommu if !host.iommu.enabled => Some(format!(
            "IOMMU not enabled (required for {feature}; boot with intel_iommu=on or amd_iommu=on)"
        )),
        HostRequirement::Gpu if host.gpus().next().is_none() => {
            Some("no GPU (PCI class 0x03) found on the host".to_string())
        }
        _ => None,
    }
}

/// The lowest tier whose features include every tier-listed enabled feature, raised to the
/// requested tier. Features no tier lists (desktops, dev tools) do not move the tier.
/// Returns the tier and why.
fn resulting_tier(
    catalog: &Catalog,
    requested: Option<&str>,
    enabled: &[String],
    warnings: &mut Vec<String>,
) -> (String, String) {
    let needed = enabled
        .iter()
        .filter_map(|f| catalog.tier_of_feature(f).map(|rank| (rank, f)))
        .max_by_key(|(rank, _)| *rank);
    let requested_rank = requested.and_then(|t| catalog.tier_rank(t));
    let name = |rank: usize| catalog.tiers[rank].name.clone();
    match (needed, requested_rank) {
        (Some((needed, feature)), Some(requested)) if needed > requested => {
            warnings.push(format!(
                "{feature} belongs to tier {}: tier raised from {}",
                name(needed),
                name(requested)
            ));
            (
                name(needed),
                format!("{feature} is first listed in tier {}", name(needed)),
            )
        }
        (Some((needed, feature)), None) => (
            name(needed),
            format!("{feature} is first listed in tier {}", name(needed)),
        ),
        (_, Some(requested)) => (name(requested), "requested with --tier".to_string()),
        (None, None) => (name(0), "no feature needs a higher tier".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().unwrap()
    }

    fn select(names: &[&str]) -> Selection {
        Selection {
            tier: None,
            extra: names.iter().map(|s| s.to_string()).collect(),
            risk_tolerance: None,
        }
    }

    #[test]
    fn test_resolve_web_dashboard_adds_monitoring_with_reason() {
        let resolution = resolve(&catalog(), &select(&["web-dashboard"]), None).unwrap();
        assert_eq!(resolution.enabled, ["core", "monitoring", "web-dashboard"]);
        let monitoring = resolution
            .added
            .iter()
            .find(|a| a.feature == "monitoring")
            .unwrap();
        assert_eq!(monitoring.reason, "needed by web-dashboard");
        assert_eq!(resolution.ram_mb, 512 + 1024 + 512);
        assert_eq!(resolution.tier, "enhanced");
        assert_eq!(resolution.risk, Risk::Moderate);
    }

    #[test]
    fn test_resolve_desktop_conflict_is_one_line() {
        let resolution =
            resolve(&catalog(), &select(&["desktop-gnome", "desktop-kde"]), None).unwrap();
        assert_eq!(
            resolution.errors,
            ["desktop-kde conflicts with desktop-gnome (desktop environments are mutually exclusive)"]
        );
    }

    #[test]
    fn test_resolve_wildcard_picks_lightest_desktop_unless_one_is_chosen() {
        let resolution = resolve(&catalog(), &select(&["virt-manager"]), None).unwrap();
        assert!(resolution.enabled.contains(&"desktop-xfce".to_string()));
        let resolution =
            resolve(&catalog(), &select(&["virt-manager", "desktop-kde"]), None).unwrap();
        assert!(resolution.enabled.contains(&"desktop-kde".to_string()));
        assert!(!resolution.enabled.contains(&"desktop-xfce".to_string()));
        assert!(resolution.is_valid());
    }

    #[test]
    fn test_resolve_limitation_is_a_warning() {
        let resolution = resolve(
            &catalog(),
            &select(&["ai-security", "live-migration"]),
            None,
        )
        .unwrap();
        assert!(resolution.is_valid());
        assert!(resolution
            .warnings
            .iter()
            .any(|w| w.starts_with("ai-security with live-migration:")));
        assert_eq!(resolution.risk, Risk::High);
    }

    #[test]
    fn test_resolve_unknown_feature_suggests_nearest() {
        let change = Change {
            add: vec!["monitorng".into()],
            ..Change::default()
        };
        let err = resolve_change(&catalog(), &Selection::default(), &change, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown feature `monitorng`; did you mean `monitoring`?"
        );
    }

    #[test]
    fn test_resolve_change_refuses_removing_a_needed_dependency() {
        let current = select(&["web-dashboard"]);
        let change = Change {
            remove: vec!["monitoring".into()],
            ..Change::default()
        };
        let resolution = resolve_change(&catalog(), &current, &change, None).unwrap();
        assert_eq!(
            resolution.errors,
            ["cannot remove monitoring: needed by web-dashboard"]
        );
    }

    #[test]
    fn test_resolve_tier_is_raised_by_features_and_warns() {
        let selection = Selection {
            tier: Some("minimal".into()),
            extra: ["clustering".to_string()].into(),
            risk_tolerance: None,
        };
        let resolution = resolve(&catalog(), &selection, None).unwrap();
        assert_eq!(resolution.tier, "enterprise");
        assert!(resolution
            .warnings
            .iter()
            .any(|w| w.contains("tier raised from minimal")));
    }

    #[test]
    fn test_validate_enabled_reports_missing_and_conflicts() {
        let enabled: Vec<String> = [
            "web-dashboard",
            "desktop-gnome",
            "desktop-kde",
            "remote-desktop",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            validate_enabled(&catalog(), &enabled, None),
            [
                "desktop-kde needs core",
                "desktop-gnome needs core",
                "web-dashboard needs monitoring",
                "desktop-kde conflicts with desktop-gnome (desktop environments are mutually exclusive)",
            ]
        );
    }

    #[test]
    fn test_resolve_risk_tolerance_refuses_riskier_features() {
        let mut selection = select(&["gpu-passthrough", "web-dashboard"]);
        selection.risk_tolerance = Some("cautious".into());
        let resolution = resolve(&catalog(), &selection, None).unwrap();
        assert_eq!(
            resolution.errors,
            ["gpu-passthrough is high risk; risk tolerance cautious allows up to moderate"]
        );
        selection.risk_tolerance = Some("accepting".into());
        assert!(resolve(&catalog(), &selection, None).unwrap().is_valid());
        selection.risk_tolerance = Some("paranoyd".into());
        let err = resolve(&catalog(), &selection, None).unwrap_err();
        assert!(err.to_string().contains("did you mean `paranoid`"), "{err}");
    }

    #[test]
    fn test_resolve_unknown_tier_suggests_nearest() {
        let selection = Selection {
            tier: Some("standrd".into()),
            extra: BTreeSet::new(),
            risk_tolerance: None,
        };
        let err = resolve(&catalog(), &selection, None).unwrap_err();
        assert!(err.to_string().contains("did you mean `standard`"), "{err}");
    }
}
