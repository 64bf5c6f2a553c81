//! `hv features ...` and `hv detect`: argument types (clap) and text/JSON rendering.
//! The binary (`src/bin/hv.rs`) only parses and dispatches here.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::catalog::{Catalog, CatalogError, Feature};
use super::manager::{
    ApplyReport, Manager, ManagerError, RollbackReport, Status, DEFAULT_APPLY_COMMAND,
    DEFAULT_KEEP_BACKUPS, DEFAULT_TEST_COMMAND,
};
use super::plan::{Plan, PlanError, SettingChange};
use super::resolver::Change;
use super::state::StateDir;
use crate::host::{self, HostError, HostFacts};

/// Options every subcommand accepts, before or after its name.
#[derive(Debug, Clone, Args)]
pub struct Globals {
    /// State directory (enabled features, tier, backups, lock).
    #[arg(
        long,
        global = true,
        env = "HV_STATE_DIR",
        default_value = "/var/lib/hypervisor"
    )]
    pub state_dir: PathBuf,
    /// Where hypervisor-features.nix and hypervisor-tier.nix are written.
    #[arg(
        long,
        global = true,
        env = "HV_CONFIG_DIR",
        default_value = "/etc/nixos"
    )]
    pub config_dir: PathBuf,
    /// Root of the /proc and /sys trees to detect the host from.
    #[arg(long, global = true, env = "HV_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// Program used to check that generated files parse.
    #[arg(
        long,
        global = true,
        env = "HV_NIX_INSTANTIATE",
        default_value = "nix-instantiate"
    )]
    pub nix_instantiate: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FeaturesCommand {
    /// List the catalog (`*` marks enabled features).
    List {
        /// Only this category (core, virtualization, networking, ...).
        #[arg(long)]
        category: Option<String>,
    },
    /// Everything about one feature.
    Show { name: String },
    /// Show what a change would do, without changing anything.
    Plan(ChangeArgs),
    /// Plan, back up, generate, check, apply, verify and record a change.
    Apply {
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        command: ApplyCommandArgs,
    },
    /// Restore the newest backup and re-apply it.
    Rollback {
        #[command(flatten)]
        command: ApplyCommandArgs,
    },
    /// What is applied, when, the security mode, backups and drift.
    Status,
    /// Enter the hardened phase: later configuration changes are refused.
    Harden,
}

#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// `+feature` to enable, `-feature` to disable (a bare name enables).
    #[arg(value_name = "+FEATURE|-FEATURE")]
    pub changes: Vec<String>,
    /// A feature to disable; `-feature` is rewritten to this (see `rewrite_removals`).
    #[arg(long = "remove", value_name = "FEATURE", hide = true)]
    pub removals: Vec<String>,
    /// Base tier: minimal, standard, enhanced, professional, enterprise.
    #[arg(long)]
    pub tier: Option<String>,
    /// Refuse features riskier than this: paranoid, cautious, balanced, accepting (kept).
    #[arg(long)]
    pub risk_tolerance: Option<String>,
    /// A feature flag, `feature.flag=value` (repeatable).
    #[arg(long = "set", value_name = "FEATURE.FLAG=VALUE")]
    pub settings: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyCommandArgs {
    /// Command that activates the configuration (run with `sh -c`).
    #[arg(long, env = "HV_APPLY_COMMAND", default_value = DEFAULT_APPLY_COMMAND)]
    pub apply_command: String,
    /// Command run on the new files before applying them; empty to skip.
    #[arg(long, env = "HV_TEST_COMMAND", default_value = DEFAULT_TEST_COMMAND)]
    pub test_command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("the built-in feature catalog is broken")]
    Catalog(#[source] CatalogError),
    #[error("host detection failed")]
    Host(#[source] HostError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("`{0}` is not a feature change: use +name or -name")]
    BadChange(String),
    #[error("unknown feature `{name}`{hint}")]
    UnknownFeature { name: String, hint: String },
    #[error("the plan is not valid ({0} error(s) above); nothing was changed")]
    InvalidPlan(usize),
}

pub fn run_features(command: &FeaturesCommand, globals: &Globals) -> Result<(), CliError> {
    let catalog = Catalog::builtin().map_err(CliError::Catalog)?;
    match command {
        FeaturesCommand::List { category } => list(&catalog, globals, category.as_deref()),
        FeaturesCommand::Show { name } => show(&catalog, globals, name),
        FeaturesCommand::Plan(change) => plan(catalog, globals, change),
        FeaturesCommand::Apply { change, command } => apply(catalog, globals, change, command),
        FeaturesCommand::Rollback { command } => rollback(catalog, globals, command),
        FeaturesCommand::Status => status(catalog, globals),
        FeaturesCommand::Harden => {
            StateDir::new(&globals.state_dir)
                .harden()
                .map_err(ManagerError::from)?;
            println!("hardened mode on: `hv features apply` and `rollback` now refuse configuration changes");
            Ok(())
        }
    }
}

pub fn run_detect(globals: &Globals) -> Result<(), CliError> {
    let facts = host::detect(&globals.host_root).map_err(CliError::Host)?;
    if globals.json {
        print_json(&facts);
    } else {
        print!("{}", host::render_text(&facts));
    }
    Ok(())
}

fn print_json<T: Serialize>(value: &T) {
    // Plain data with string keys always serialises.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn manager(catalog: Catalog, globals: &Globals, commands: Option<&ApplyCommandArgs>) -> Manager {
    Manager {
        catalog,
        states: StateDir::new(&globals.state_dir),
        config_dir: globals.config_dir.clone(),
        apply_command: commands
            .map_or(DEFAULT_APPLY_COMMAND, |c| &c.apply_command)
            .to_string(),
        test_command: commands
            .map_or(DEFAULT_TEST_COMMAND, |c| &c.test_command)
            .to_string(),
        nix_instantiate: globals.nix_instantiate.clone(),
        keep_backups: DEFAULT_KEEP_BACKUPS,
    }
}

/// Rewrites `-name` after `plan`/`apply` into `--remove=name`, so clap keeps recognising real
/// options (`--json`, `--tier`) anywhere on the line while `-feature` still reads naturally.
/// Short options (`-h`) are two characters and are left alone.
pub fn rewrite_removals(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut in_change_command = false;
    args.into_iter()
        .map(|arg| {
            let text = arg.to_string_lossy();
            if text == "plan" || text == "apply" {
                in_change_command = true;
            }
            let is_removal = text.len() > 2
                && text.starts_with('-')
                && !text.starts_with("--")
                && text[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if in_change_command && is_removal {
                format!("--remove={}", &text[1..]).into()
            } else {
                arg
            }
        })
        .collect()
}

/// The change arguments as the user would retype them for `apply`.
fn change_line(args: &ChangeArgs) -> String {
    let mut parts: Vec<String> = args.changes.clone();
    parts.extend(args.removals.iter().map(|r| format!("-{r}")));
    parts.extend(args.tier.iter().map(|t| format!("--tier {t}")));
    parts.extend(
        args.risk_tolerance
            .iter()
            .map(|t| format!("--risk-tolerance {t}")),
    );
    parts.extend(args.settings.iter().map(|s| format!("--set {s}")));
    parts.join(" ")
}

/// `+a -b c` -> a change; bare names enable.
fn parse_change(args: &ChangeArgs) -> Result<(Change, Vec<SettingChange>), CliError> {
    let mut change = Change {
        tier: args.tier.clone(),
        risk_tolerance: args.risk_tolerance.clone(),
        ..Change::default()
    };
    for item in &args.changes {
        match item.split_at(item.chars().next().map(char::len_utf8).unwrap_or(0)) {
            ("+", name) if !name.is_empty() => change.add.push(name.to_string()),
            ("-", name) if !name.is_empty() && !name.starts_with('-') => {
                change.remove.push(name.to_string())
            }
            _ if !item.is_empty() && !item.starts_with(['+', '-']) => change.add.push(item.clone()),
            _ => return Err(CliError::BadChange(item.clone())),
        }
    }
    change.remove.extend(args.removals.iter().cloned());
    let settings = args
        .settings
        .iter()
        .map(|s| SettingChange::parse(s))
        .collect::<Result<_, _>>()?;
    Ok((change, settings))
}

fn detect(globals: &Globals) -> Result<HostFacts, CliError> {
    host::detect(&globals.host_root).map_err(CliError::Host)
}

fn plan(catalog: Catalog, globals: &Globals, args: &ChangeArgs) -> Result<(), CliError> {
    let (change, settings) = parse_change(args)?;
    let facts = detect(globals)?;
    let manager = manager(catalog, globals, None);
    let plan = manager.plan(&change, &settings, Some(&facts))?;
    if globals.json {
        print_json(&plan);
    } else {
        print!("{}", render_plan(&manager.catalog, &plan));
        // Hand edits of the generated files are lost on apply: say so before, not after.
        let drifted = manager
            .status()
            .map(|s| s.drifted_files)
            .unwrap_or_default();
        for path in drifted {
            println!(
                "WARNING: {} differs from the recorded state (edited by hand?); apply replaces it (the old file goes to the backup)",
                path.display()
            );
        }
        if plan.resolution.is_valid() && plan.has_changes {
            println!(
                "\nRun `hv features apply {}` to apply it.",
                change_line(args)
            );
        }
    }
    match plan.resolution.errors.len() {
        0 => Ok(()),
        n => Err(CliError::InvalidPlan(n)),
    }
}

fn apply(
    catalog: Catalog,
    globals: &Globals,
    args: &ChangeArgs,
    commands: &ApplyCommandArgs,
) -> Result<(), CliError> {
    let (change, settings) = parse_change(args)?;
    let facts = detect(globals)?;
    let manager = manager(catalog, globals, Some(commands));
    let result = manager.apply(&change, &settings, Some(&facts));
    if let Err(ManagerError::Invalid { .. }) = &result {
        // Show the whole plan so each error comes with its context.
        let plan = manager.plan(&change, &settings, Some(&facts))?;
        if globals.json {
            print_json(&plan);
        } else {
            print!("{}", render_plan(&manager.catalog, &plan));
        }
        return Err(CliError::InvalidPlan(plan.resolution.errors.len()));
    }
    let report = result?;
    if globals.json {
        print_json(&report);
    } else {
        print!("{}", render_apply(&manager.catalog, &report));
    }
    Ok(())
}

fn rollback(
    catalog: Catalog,
    globals: &Globals,
    commands: &ApplyCommandArgs,
) -> Result<(), CliError> {
    let report: RollbackReport = manager(catalog, globals, Some(commands)).rollback()?;
    if globals.json {
        print_json(&report);
    } else {
        println!("Rolled back to backup {}", report.backup);
        println!("Tier: {}", report.tier);
        println!("Enabled: {}", list_or_none(&report.enabled));
    }
    Ok(())
}

fn status(catalog: Catalog, globals: &Globals) -> Result<(), CliError> {
    let status: Status = manager(catalog, globals, None).status()?;
    if globals.json {
        print_json(&status);
        return Ok(());
    }
    println!("Tier:          {}", status.state.tier);
    println!("Enabled:       {}", list_or_none(&status.state.enabled));
    println!("RAM budget:    {} MB", status.ram_mb);
    println!(
        "Last applied:  {}",
        status.last_applied.as_deref().unwrap_or("never")
    );
    println!("Security mode: {}", status.security_mode);
    println!("Backups:       {}", status.backups.len());
    for path in &status.drifted_files {
        println!(
            "WARNING: {} differs from the recorded state (edited by hand?)",
            path.display()
        );
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn list(catalog: &Catalog, globals: &Globals, category: Option<&str>) -> Result<(), CliError> {
    // Marking enabled features is a convenience: a broken state must not hide the catalog.
    let enabled = match StateDir::new(&globals.state_dir).load(catalog) {
        Ok(state) => state.enabled,
        Err(err) => {
            eprintln!("warning: {err}");
            Vec::new()
        }
    };
    let features: Vec<&Feature> = catalog
        .features
        .iter()
        .filter(|f| category.is_none_or(|c| f.category == c))
        .collect();
    if globals.json {
        print_json(&features);
        return Ok(());
    }
    println!(
        "  {:<24} {:<15} {:>6}  {:<9} {:<13} DEPENDS",
        "FEATURE", "CATEGORY", "RAM MB", "RISK", "TIER"
    );
    for feature in features {
        let mark = if enabled.contains(&feature.name) {
            "*"
        } else {
            " "
        };
        println!(
            "{mark} {:<24} {:<15} {:>6}  {:<9} {:<13} {}",
            feature.name,
            feature.category,
            feature.ram_mb,
            feature.risk.to_string(),
            tier_label(catalog, &feature.name),
            feature.depends.join(", ")
        );
    }
    Ok(())
}

fn tier_label(catalog: &Catalog, feature: &str) -> String {
    catalog
        .tier_of_feature(feature)
        .map(|rank| catalog.tiers[rank].name.clone())
        .unwrap_or_else(|| "-".to_string())
}

#[derive(Serialize)]
struct FeatureDetails<'a> {
    #[serde(flatten)]
    feature: &'a Feature,
    tier: Option<String>,
    needed_by: Vec<String>,
    conflicts: Vec<String>,
    limitations: Vec<String>,
}

fn show(catalog: &Catalog, globals: &Globals, name: &str) -> Result<(), CliError> {
    let feature = catalog
        .feature(name)
        .ok_or_else(|| CliError::UnknownFeature {
            name: name.to_string(),
            hint: super::suggest::nearest(name, catalog.features.iter().map(|f| f.name.as_str()))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default(),
        })?;
    let details = FeatureDetails {
        feature,
        tier: catalog
            .tier_of_feature(name)
            .map(|rank| catalog.tiers[rank].name.clone()),
        needed_by: catalog
            .features
            .iter()
            .filter(|f| {
                f.depends
                    .iter()
                    .any(|d| catalog.matching(d).iter().any(|m| m.name == name))
            })
            .map(|f| f.name.clone())
            .collect(),
        conflicts: catalog
            .features
            .iter()
            .filter_map(|other| {
                let reason = catalog.conflict_between(name, &other.name)?;
                Some(format!("{} ({reason})", other.name))
            })
            .collect(),
        limitations: catalog
            .limitations
            .iter()
            .filter(|l| l.features.iter().any(|f| f == name))
            .map(|l| {
                format!(
                    "with {}: {}",
                    l.features.iter().find(|f| *f != name).map_or("", |f| f),
                    l.limitation
                )
            })
            .chain(
                catalog
                    .platform_limitations
                    .iter()
                    .filter(|p| p.feature == name)
                    .map(|p| format!("on {}: {}", p.arch, p.limitation)),
            )
            .collect(),
    };
    if globals.json {
        print_json(&details);
        return Ok(());
    }
    println!("{} - {}", feature.name, feature.description);
    println!("  Category:     {}", feature.category);
    println!("  RAM:          {} MB", feature.ram_mb);
    println!("  Risk:         {}", feature.risk);
    println!(
        "  Tier:         {}",
        details.tier.as_deref().unwrap_or("- (not part of a tier)")
    );
    println!("  Depends on:   {}", list_or_none(&feature.depends));
    println!("  Needed by:    {}", list_or_none(&details.needed_by));
    println!("  Conflicts:    {}", list_or_none(&details.conflicts));
    let requirements: Vec<String> = feature
        .host_requirements
        .iter()
        .filter_map(|r| catalog.host_requirements.iter().find(|i| i.name == *r))
        .map(|i| i.description.clone())
        .collect();
    println!("  Host needs:   {}", list_or_none(&requirements));
    for limitation in &details.limitations {
        println!("  Limitation:   {limitation}");
    }
    for flag in &feature.flags {
        println!(
            "  Flag:         {}.{} = {} ({})",
            feature.name, flag.name, flag.default, flag.description
        );
    }
    for (option, value) in &feature.nixos {
        println!("  NixOS:        {option} = {value}");
    }
    println!("  Notes:        {}", feature.notes);
    Ok(())
}

/// The human plan: each change with its RAM and reason, then budget, tier, risk, warnings, errors.
pub fn render_plan(catalog: &Catalog, plan: &Plan) -> String {
    let resolution = &plan.resolution;
    let mut out = String::new();
    out.push_str(&format!(
        "Plan: {} to enable, {} to disable, tier {} -> {}\n",
        plan.to_enable.len(),
        plan.to_disable.len(),
        plan.current_tier,
        resolution.tier
    ));
    let ram = |name: &str| catalog.feature(name).map_or(0, |f| f.ram_mb);
    for name in &plan.to_enable {
        let reason = resolution
            .added
            .iter()
            .find(|a| &a.feature == name)
            .map_or("requested".to_string(), |a| a.reason.clone());
        out.push_str(&format!("  + {name:<24} {:>6} MB  {reason}\n", ram(name)));
    }
    for name in &plan.to_disable {
        out.push_str(&format!("  - {name:<24} {:>6} MB\n", ram(name)));
    }
    for name in resolution
        .enabled
        .iter()
        .filter(|n| !plan.to_enable.contains(n))
    {
        out.push_str(&format!("  = {name:<24} {:>6} MB\n", ram(name)));
    }
    if !plan.has_changes {
        out.push_str("  (no changes)\n");
    }
    let parts: Vec<String> = resolution
        .enabled
        .iter()
        .map(|n| format!("{n} {}", ram(n)))
        .collect();
    let host = resolution
        .host_ram_mb
        .map_or("host RAM unknown".to_string(), |mb| {
            format!("host has {mb} MB")
        });
    out.push_str(&format!(
        "RAM:  {} MB ({}); {host}\n",
        resolution.ram_mb,
        parts.join(" + ")
    ));
    out.push_str(&format!(
        "Tier: {} ({})\n",
        resolution.tier, resolution.tier_reason
    ));
    out.push_str(&format!(
        "Risk: {} (from {})\n",
        resolution.risk,
        resolution.risk_from.join(", ")
    ));
    if let Some(tolerance) = &resolution.selection.risk_tolerance {
        out.push_str(&format!("Risk tolerance: {tolerance}\n"));
    }
    for (feature, flags) in &plan.settings {
        for (flag, value) in flags {
            out.push_str(&format!("Set:  {feature}.{flag} = {value}\n"));
        }
    }
    for warning in &resolution.warnings {
        out.push_str(&format!("WARNING: {warning}\n"));
    }
    for error in &resolution.errors {
        out.push_str(&format!("ERROR: {error}\n"));
    }
    out
}

fn render_apply(catalog: &Catalog, report: &ApplyReport) -> String {
    let mut out = render_plan(catalog, &report.plan);
    if !report.applied {
        out.push_str("Nothing to apply: the configuration already matches.\n");
        return out;
    }
    for file in &report.files {
        out.push_str(&format!("Wrote {}\n", file.display()));
    }
    if let Some(backup) = &report.backup {
        out.push_str(&format!(
            "Backup: {backup} (`hv features rollback` restores it)\n"
        ));
    }
    out.push_str(&format!(
        "Applied: tier {}, {} features\n",
        report.plan.resolution.tier,
        report.plan.resolution.enabled.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: &[&str]) -> ChangeArgs {
        ChangeArgs {
            changes: items.iter().map(|s| s.to_string()).collect(),
            tier: None,
            risk_tolerance: None,
            settings: Vec::new(),
            removals: Vec::new(),
        }
    }

    #[test]
    fn test_parse_change_plus_minus_and_bare() {
        let (change, _) =
            parse_change(&args(&["+web-dashboard", "-monitoring", "logging"])).unwrap();
        assert_eq!(change.add, ["web-dashboard", "logging"]);
        assert_eq!(change.remove, ["monitoring"]);
    }

    #[test]
    fn test_rewrite_removals_only_after_plan_or_apply() {
        let line = [
            "hv",
            "-x1",
            "features",
            "plan",
            "+a",
            "-monitoring",
            "--json",
            "-h",
        ];
        let rewritten: Vec<String> = rewrite_removals(line.iter().map(Into::into))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            rewritten,
            [
                "hv",
                "-x1",
                "features",
                "plan",
                "+a",
                "--remove=monitoring",
                "--json",
                "-h"
            ]
        );
    }

    #[test]
    fn test_parse_change_rejects_empty_and_double_dash() {
        assert!(parse_change(&args(&["+"])).is_err());
        assert!(parse_change(&args(&["--weird"])).is_err());
    }
}
