//! The Nix side must not drift from the Rust side: nixos/catalog.nix evaluates to the catalog
//! `hv` embeds, nixos/rules.nix (the module's assertions) prints the same lines as
//! `validate_enabled`, every generated file parses and evaluates to what was planned, and
//! nixos/ + flake.nix parse. Needs `nix-instantiate` (Debian nix-bin); skips with a reason
//! without it unless CI=true or HV_REQUIRE_TOOLS is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_orchestrator::features::nixgen::{effective_settings, generate, nix_string};
use hv_orchestrator::features::state::Settings;
use hv_orchestrator::features::{
    make_plan, resolve, validate_enabled, Catalog, Change, FeatureState, Selection, SettingChange,
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `true` when nix-instantiate is usable; `false` (with a printed reason) when the test may skip.
fn have_nix() -> bool {
    let found = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var_os("CI").is_some_and(|v| v == "true")
        || std::env::var_os("HV_REQUIRE_TOOLS").is_some();
    if !found && required {
        panic!("nix-instantiate is required (CI=true or HV_REQUIRE_TOOLS set): install Debian's nix-bin");
    }
    if !found {
        eprintln!("SKIP: nix-instantiate not installed (apt-get install nix-bin)");
    }
    found
}

/// `nix-instantiate --eval --strict --json` of an expression or a file.
fn nix_eval(args: &[&str]) -> serde_json::Value {
    let output = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "nix-instantiate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn nix_parses(path: &Path) -> Result<(), String> {
    let output = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(path)
        .output()
        .unwrap();
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// Deterministic pseudo-random subsets of the catalog (xorshift; no test flakiness).
fn subsets(catalog: &Catalog, count: usize) -> Vec<Vec<String>> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|_| {
            let size = (next() % 9) as usize;
            (0..size)
                .map(|_| {
                    catalog.features[(next() % catalog.features.len() as u64) as usize]
                        .name
                        .clone()
                })
                .collect()
        })
        .collect()
}

#[test]
fn test_nix_catalog_equals_rust_catalog() {
    if !have_nix() {
        return;
    }
    let path = repo_root().join("nixos/catalog.nix");
    let from_nix = nix_eval(&[path.to_str().unwrap()]);
    let from_rust = serde_json::to_value(Catalog::builtin().unwrap()).unwrap();
    assert_eq!(from_nix, from_rust);
}

#[test]
fn test_nix_rules_match_rust_validation() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    let mut cases = subsets(&catalog, 300);
    // Closures the resolver produced must pass both checks.
    for case in subsets(&catalog, 50) {
        let selection = Selection {
            tier: None,
            extra: case.into_iter().collect(),
            risk_tolerance: None,
        };
        cases.push(resolve(&catalog, &selection, None).unwrap().enabled);
    }
    cases.push(vec![
        "desktop-kde".into(),
        "desktop-gnome".into(),
        "desktop-xfce".into(),
        "core".into(),
    ]);
    // Every case once without a risk tolerance and once with one (cycling through them).
    let tolerances: Vec<Option<String>> = std::iter::once(None)
        .chain(catalog.risk_tolerances.iter().map(|t| Some(t.name.clone())))
        .collect();
    let cases: Vec<(Vec<String>, Option<String>)> = cases
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [
                (c.clone(), None),
                (c.clone(), tolerances[i % tolerances.len()].clone()),
            ]
        })
        .collect();
    let expected: Vec<Vec<String>> = cases
        .iter()
        .map(|(c, t)| validate_enabled(&catalog, c, t.as_deref()))
        .collect();
    let nixos = repo_root().join("nixos");
    let expression = format!(
        "let c = import {}/catalog.nix; r = import {}/rules.nix; in \
         map (case: r.errors c (builtins.elemAt case 0) (builtins.elemAt case 1)) (builtins.fromJSON {})",
        nixos.display(),
        nixos.display(),
        nix_string(&serde_json::to_string(&cases).unwrap())
    );
    let from_nix: Vec<Vec<String>> =
        serde_json::from_value(nix_eval(&["-E", &expression])).unwrap();
    for ((case, nix), rust) in cases.iter().zip(&from_nix).zip(&expected) {
        assert_eq!(nix, rust, "enabled = {case:?}");
    }
    assert!(
        expected
            .iter()
            .any(|e| e.iter().any(|l| l.contains("conflicts with"))),
        "cases must exercise conflicts"
    );
    assert!(
        expected
            .iter()
            .any(|e| e.iter().any(|l| l.contains("risk tolerance"))),
        "cases must exercise risk"
    );
    assert!(
        expected
            .iter()
            .any(|e| e.iter().any(|l| l.contains(" needs "))),
        "cases must exercise dependencies"
    );
}

#[test]
fn test_nix_module_and_flake_parse() {
    if !have_nix() {
        return;
    }
    let root = repo_root();
    let mut files = vec![root.join("flake.nix")];
    for dir in ["nixos", "nixos/tests"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "nix") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        nix_parses(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    }
}

#[test]
fn test_generated_files_parse_and_evaluate_to_the_plan() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut selections: Vec<Selection> = catalog
        .tiers
        .iter()
        .map(|t| Selection {
            tier: Some(t.name.clone()),
            extra: Default::default(),
            risk_tolerance: None,
        })
        .collect();
    selections.extend(
        subsets(&catalog, 20)
            .into_iter()
            .enumerate()
            .map(|(i, s)| Selection {
                tier: None,
                extra: s.into_iter().collect(),
                risk_tolerance: (i % 2 == 0).then(|| "accepting".to_string()),
            }),
    );
    let mut settings = Settings::new();
    settings
        .entry("ai-security".into())
        .or_default()
        .insert("sensitivity".into(), "quote\" ${not-antiquoted}".into());
    for (index, selection) in selections.iter().enumerate() {
        let resolution = resolve(&catalog, selection, None).unwrap();
        let tolerance = resolution.selection.risk_tolerance.as_deref();
        let generated = generate(
            &catalog,
            &resolution.enabled,
            &resolution.tier,
            &settings,
            tolerance,
        );
        let features = dir.path().join(format!("features-{index}.nix"));
        let tier = dir.path().join(format!("tier-{index}.nix"));
        std::fs::write(&features, &generated.features_nix).unwrap();
        std::fs::write(&tier, &generated.tier_nix).unwrap();
        nix_parses(&features).unwrap();
        nix_parses(&tier).unwrap();

        let value = nix_eval(&[
            "-E",
            &format!(
                "(import {} {{}}).hypervisor.featureManager",
                features.display()
            ),
        ]);
        assert_eq!(value["enable"], true);
        assert_eq!(
            value["riskTolerance"],
            serde_json::json!(tolerance),
            "{selection:?}"
        );
        assert_eq!(
            value["enabledFeatures"],
            serde_json::json!(resolution.enabled)
        );
        let effective = effective_settings(&catalog, &resolution.enabled, &settings);
        assert_eq!(value["settings"], serde_json::to_value(&effective).unwrap());
        let value = nix_eval(&[
            "-E",
            &format!("(import {} {{}}).hypervisor.systemTier", tier.display()),
        ]);
        assert_eq!(value, serde_json::json!(resolution.tier));
    }
}

/// `nixos/tests/eval-module.nix` with the given enabled features and extra arguments.
fn eval_module(enabled: &[String], extra: &str) -> serde_json::Value {
    let script = repo_root().join("nixos/tests/eval-module.nix");
    let expression = format!(
        "import {} {{ enabledFeatures = builtins.fromJSON {}; {extra} }}",
        script.display(),
        nix_string(&serde_json::to_string(enabled).unwrap())
    );
    nix_eval(&["-E", &expression])
}

fn definition<'a>(module: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    module["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == path)
        .map(|d| &d["value"])
}

#[test]
fn test_nix_module_maps_features_and_flags_to_nixos_options() {
    if !have_nix() {
        return;
    }
    let enabled: Vec<String> = ["core", "monitoring", "web-dashboard"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let module = eval_module(&enabled, "settings.monitoring.retention = 90;");
    assert_eq!(module["failedAssertions"], serde_json::json!([]));
    assert_eq!(
        definition(&module, "services.prometheus.enable"),
        Some(&serde_json::json!(true))
    );
    assert_eq!(
        definition(&module, "services.grafana.enable"),
        Some(&serde_json::json!(true))
    );
    assert_eq!(
        definition(&module, "services.nginx.enable"),
        Some(&serde_json::json!(true))
    );
    assert_eq!(
        definition(&module, "services.prometheus.retentionTime"),
        Some(&serde_json::json!("90d"))
    );
    assert_eq!(
        definition(&module, "networking.firewall.allowedTCPPorts"),
        Some(&serde_json::json!([443]))
    );
    assert_eq!(definition(&module, "services.xserver.enable"), None);
    let options = module["optionNames"].as_array().unwrap();
    for name in ["featureManager", "systemTier", "securityMode", "package"] {
        assert!(
            options.contains(&serde_json::json!(name)),
            "hypervisor.{name} missing"
        );
    }
}

#[test]
fn test_nix_module_defines_exactly_the_catalog_mapping_of_each_closure() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    for feature in catalog.features.iter().filter(|f| !f.nixos.is_empty()) {
        let selection = Selection {
            tier: None,
            extra: [feature.name.clone()].into(),
            risk_tolerance: None,
        };
        let enabled = resolve(&catalog, &selection, None).unwrap().enabled;
        let module = eval_module(&enabled, "");
        assert_eq!(
            module["failedAssertions"],
            serde_json::json!([]),
            "{}",
            feature.name
        );
        let mut expected: Vec<(String, serde_json::Value)> = enabled
            .iter()
            .flat_map(|name| catalog.feature(name).unwrap().nixos.clone())
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        expected.dedup();
        let mut from_features: Vec<(String, serde_json::Value)> = module["definitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                catalog
                    .features
                    .iter()
                    .any(|f| f.nixos.contains_key(d["path"].as_str().unwrap()))
            })
            .map(|d| (d["path"].as_str().unwrap().to_string(), d["value"].clone()))
            .collect();
        from_features.sort_by(|a, b| a.0.cmp(&b.0));
        from_features.dedup();
        assert_eq!(from_features, expected, "{}", feature.name);
    }
}

#[test]
fn test_nix_module_asserts_the_resolver_rules() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    let enabled: Vec<String> = ["core", "desktop-kde", "desktop-gnome", "virt-manager"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let module = eval_module(&enabled, "");
    let expected = validate_enabled(&catalog, &enabled, None);
    assert_eq!(expected, ["virt-manager needs libvirt", "desktop-kde conflicts with desktop-gnome (desktop environments are mutually exclusive)"]);
    assert_eq!(module["failedAssertions"], serde_json::json!(expected));
}

#[test]
fn test_nix_module_asserts_risk_tolerance() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    let selection = Selection {
        tier: None,
        extra: ["gpu-passthrough".to_string()].into(),
        risk_tolerance: None,
    };
    let enabled = resolve(&catalog, &selection, None).unwrap().enabled;
    let module = eval_module(&enabled, "riskTolerance = \"balanced\";");
    assert_eq!(
        module["failedAssertions"],
        serde_json::json!([
            "gpu-passthrough is high risk; risk tolerance balanced allows up to moderate"
        ])
    );
}

#[test]
fn test_nix_module_asserts_risky_flags_like_the_planner() {
    if !have_nix() {
        return;
    }
    let catalog = Catalog::builtin().unwrap();
    let change = Change {
        add: vec!["threat-detection".into()],
        risk_tolerance: Some("cautious".into()),
        ..Change::default()
    };
    let sets = [SettingChange::parse("threat-detection.automated-response=true").unwrap()];
    let plan = make_plan(&catalog, &FeatureState::default(), &change, &sets, None).unwrap();
    assert_eq!(plan.resolution.errors.len(), 1);
    let module = eval_module(
        &plan.resolution.enabled,
        "riskTolerance = \"cautious\"; settings.threat-detection.automated-response = true;",
    );
    assert_eq!(
        module["failedAssertions"],
        serde_json::json!(plan.resolution.errors)
    );
    let module = eval_module(&plan.resolution.enabled, "riskTolerance = \"cautious\";");
    assert_eq!(module["failedAssertions"], serde_json::json!([]));
}

#[test]
fn test_nix_module_hardened_mode_is_forced_at_boot() {
    if !have_nix() {
        return;
    }
    let module = eval_module(&["core".to_string()], "securityMode = \"hardened\";");
    let rules = definition(&module, "systemd.tmpfiles.rules").unwrap();
    assert!(rules.as_array().unwrap().contains(&serde_json::json!(
        "F /var/lib/hypervisor/state/security-mode 0640 root root - hardened"
    )));
    let module = eval_module(&["core".to_string()], "");
    let rules = definition(&module, "systemd.tmpfiles.rules").unwrap();
    assert!(!rules.to_string().contains("security-mode"));
}
