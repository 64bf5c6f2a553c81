//! Compare and plan (seed 003 "Update Process"): the recorded state and a change become a plan
//! that says what will be enabled, disabled and set, and whether it may be applied.

use serde::Serialize;

use super::catalog::Catalog;
use super::resolver::{resolve_change, Change, Resolution, ResolveError};
use super::state::{FeatureState, Settings};
use super::suggest::nearest;
use crate::host::HostFacts;

/// `--set feature.flag=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingChange {
    pub feature: String,
    pub flag: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("`--set {0}` is not of the form feature.flag=value")]
    SettingSyntax(String),
    #[error("{feature} has no flag `{flag}`{hint}")]
    UnknownFlag {
        feature: String,
        flag: String,
        hint: String,
    },
    #[error("{feature}.{flag} must be {expected}, got `{value}`")]
    SettingType {
        feature: String,
        flag: String,
        expected: &'static str,
        value: String,
    },
    #[error("cannot set {feature}.{flag}: {feature} is not enabled by this plan")]
    SettingOnDisabled { feature: String, flag: String },
}

impl SettingChange {
    pub fn parse(text: &str) -> Result<SettingChange, PlanError> {
        let syntax = || PlanError::SettingSyntax(text.to_string());
        let (key, value) = text.split_once('=').ok_or_else(syntax)?;
        let (feature, flag) = key.split_once('.').ok_or_else(syntax)?;
        if feature.is_empty() || flag.is_empty() {
            return Err(syntax());
        }
        Ok(SettingChange {
            feature: feature.to_string(),
            flag: flag.to_string(),
            value: value.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    #[serde(flatten)]
    pub resolution: Resolution,
    pub current_tier: String,
    pub current_enabled: Vec<String>,
    pub to_enable: Vec<String>,
    pub to_disable: Vec<String>,
    /// Flag values that differ from the catalog defaults, after this plan.
    pub settings: Settings,
    pub has_changes: bool,
}

impl Plan {
    /// The state to record once this plan is applied.
    pub fn target_state(&self) -> FeatureState {
        FeatureState {
            schema_version: super::state::STATE_SCHEMA_VERSION,
            selection: self.resolution.selection.clone(),
            enabled: self.resolution.enabled.clone(),
            tier: self.resolution.tier.clone(),
            settings: self.settings.clone(),
        }
    }
}

pub fn make_plan(
    catalog: &Catalog,
    current: &FeatureState,
    change: &Change,
    sets: &[SettingChange],
    host: Option<&HostFacts>,
) -> Result<Plan, PlanError> {
    let mut resolution = resolve_change(catalog, &current.selection, change, host)?;
    let settings = apply_settings(catalog, &resolution, &current.settings, sets)?;
    apply_flag_risks(catalog, &mut resolution, &settings);
    let to_enable: Vec<String> = resolution
        .enabled
        .iter()
        .filter(|f| !current.enabled.contains(f))
        .cloned()
        .collect();
    let to_disable: Vec<String> = current
        .enabled
        .iter()
        .filter(|f| !resolution.enabled.contains(f))
        .cloned()
        .collect();
    let has_changes = !to_enable.is_empty()
        || !to_disable.is_empty()
        || resolution.tier != current.tier
        || settings != current.settings
        || resolution.selection != current.selection;
    Ok(Plan {
        current_tier: current.tier.clone(),
        current_enabled: current.enabled.clone(),
        to_enable,
        to_disable,
        settings,
        has_changes,
        resolution,
    })
}

/// Flags such as `threat-detection.automated-response = true` raise the risk of their feature;
/// the plan's risk and the risk-tolerance check follow.
fn apply_flag_risks(catalog: &Catalog, resolution: &mut Resolution, settings: &Settings) {
    let limit = resolution
        .selection
        .risk_tolerance
        .as_deref()
        .and_then(|t| catalog.risk_tolerance(t))
        .map(|t| (t.name.clone(), t.max_risk));
    for (feature, flags) in settings {
        let Some(entry) = catalog.feature(feature) else {
            continue;
        };
        for flag in &entry.flags {
            let (Some(risk), Some(serde_json::Value::Bool(true))) =
                (flag.risk_when_true, flags.get(&flag.name))
            else {
                continue;
            };
            let label = format!("{feature}.{}", flag.name);
            if risk > resolution.risk {
                resolution.risk = risk;
                resolution.risk_from.clear();
            }
            if risk == resolution.risk {
                resolution.risk_from.push(label.clone());
            }
            if let Some((name, max)) = &limit {
                if risk > *max {
                    resolution.errors.push(format!(
                        "{label} = true is {risk} risk; risk tolerance {name} allows up to {max}"
                    ));
                }
            }
        }
    }
}

/// Merges `--set` values into the stored overrides. Values are typed by the flag's default;
/// overrides of features the plan disables are dropped, as are values equal to the default.
fn apply_settings(
    catalog: &Catalog,
    resolution: &Resolution,
    current: &Settings,
    sets: &[SettingChange],
) -> Result<Settings, PlanError> {
    let mut settings: Settings = current
        .iter()
        .filter(|(feature, _)| resolution.enabled.contains(feature))
        .map(|(feature, flags)| (feature.clone(), flags.clone()))
        .collect();
    for set in sets {
        let feature = catalog.feature(&set.feature).ok_or_else(|| {
            PlanError::Resolve(ResolveError::UnknownFeature {
                name: set.feature.clone(),
                suggestion: nearest(
                    &set.feature,
                    catalog.features.iter().map(|f| f.name.as_str()),
                ),
            })
        })?;
        let Some(flag) = feature.flags.iter().find(|f| f.name == set.flag) else {
            let flags: Vec<&str> = feature.flags.iter().map(|f| f.name.as_str()).collect();
            let hint = match flags.is_empty() {
                true => " (it has no flags)".to_string(),
                false => format!(" (flags: {})", flags.join(", ")),
            };
            return Err(PlanError::UnknownFlag {
                feature: set.feature.clone(),
                flag: set.flag.clone(),
                hint,
            });
        };
        if !resolution.enabled.contains(&set.feature) {
            return Err(PlanError::SettingOnDisabled {
                feature: set.feature.clone(),
                flag: set.flag.clone(),
            });
        }
        let value = typed_value(&flag.default, set)?;
        let flags = settings.entry(set.feature.clone()).or_default();
        if value == flag.default {
            flags.remove(&set.flag);
        } else {
            flags.insert(set.flag.clone(), value);
        }
    }
    settings.retain(|_, flags| !flags.is_empty());
    Ok(settings)
}

fn typed_value(
    default: &serde_json::Value,
    set: &SettingChange,
) -> Result<serde_json::Value, PlanError> {
    let mismatch = |expected| PlanError::SettingType {
        feature: set.feature.clone(),
        flag: set.flag.clone(),
        expected,
        value: set.value.clone(),
    };
    match default {
        serde_json::Value::Bool(_) => set
            .value
            .parse::<bool>()
            .map(serde_json::Value::from)
            .map_err(|_| mismatch("true or false")),
        serde_json::Value::Number(_) => set
            .value
            .parse::<u64>()
            .map(serde_json::Value::from)
            .map_err(|_| mismatch("a non-negative integer")),
        _ => Ok(serde_json::Value::from(set.value.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(change: Change, sets: &[&str]) -> Result<Plan, PlanError> {
        let catalog = Catalog::builtin().unwrap();
        let sets: Vec<_> = sets
            .iter()
            .map(|s| SettingChange::parse(s).unwrap())
            .collect();
        make_plan(&catalog, &FeatureState::default(), &change, &sets, None)
    }

    fn add(names: &[&str]) -> Change {
        Change {
            add: names.iter().map(|s| s.to_string()).collect(),
            ..Change::default()
        }
    }

    #[test]
    fn test_make_plan_lists_enable_set() {
        let plan = plan(add(&["web-dashboard"]), &[]).unwrap();
        assert_eq!(plan.to_enable, ["core", "monitoring", "web-dashboard"]);
        assert!(plan.to_disable.is_empty());
        assert!(plan.has_changes);
    }

    #[test]
    fn test_make_plan_typed_settings() {
        let plan = plan(add(&["monitoring"]), &["monitoring.retention=90"]).unwrap();
        assert_eq!(
            plan.settings["monitoring"]["retention"],
            serde_json::json!(90)
        );
        let err =
            super::tests::plan(add(&["monitoring"]), &["monitoring.retention=lots"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "monitoring.retention must be a non-negative integer, got `lots`"
        );
    }

    #[test]
    fn test_make_plan_automated_response_is_high_risk() {
        let plan = plan(
            add(&["threat-detection"]),
            &["threat-detection.automated-response=true"],
        )
        .unwrap();
        assert_eq!(plan.resolution.risk, crate::features::Risk::High);
        assert_eq!(
            plan.resolution.risk_from,
            ["threat-detection.automated-response"]
        );
        let change = Change {
            risk_tolerance: Some("balanced".into()),
            ..add(&["threat-detection"])
        };
        let plan =
            super::tests::plan(change, &["threat-detection.automated-response=true"]).unwrap();
        assert_eq!(
            plan.resolution.errors,
            ["threat-detection.automated-response = true is high risk; risk tolerance balanced allows up to moderate"]
        );
    }

    #[test]
    fn test_make_plan_setting_default_is_not_stored() {
        let plan = plan(add(&["monitoring"]), &["monitoring.retention=30"]).unwrap();
        assert!(plan.settings.is_empty());
    }

    #[test]
    fn test_make_plan_setting_errors() {
        let err = plan(add(&["monitoring"]), &["monitoring.colour=red"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "monitoring has no flag `colour` (flags: retention)"
        );
        let err = plan(Change::default(), &["monitoring.retention=9"]).unwrap_err();
        assert!(matches!(err, PlanError::SettingOnDisabled { .. }));
        assert!(SettingChange::parse("monitoring=3").is_err());
    }
}
