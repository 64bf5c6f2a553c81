//! End to end through the `hv` binary: plan -> apply -> rollback, failed applies, bad input.
//! A fake apply command stands in for `nixos-rebuild switch`. Generated files are checked with
//! the real `nix-instantiate --parse` when it is installed (required when CI=true).

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use hv_orchestrator::features::StateDir;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn features_nix(&self) -> PathBuf {
        self.etc().join("hypervisor-features.nix")
    }

    /// `hv <args>` against this sandbox, the big-server fixture and a succeeding apply command.
    fn hv(&self, args: &[&str]) -> Output {
        self.hv_with(args, "true")
    }

    fn hv_with(&self, args: &[&str], apply_command: &str) -> Output {
        let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts/server-iommu-2gpu");
        Command::new(env!("CARGO_BIN_EXE_hv"))
            .args(args)
            .env("HV_STATE_DIR", self.state())
            .env("HV_CONFIG_DIR", self.etc())
            .env("HV_HOST_ROOT", host)
            .env("HV_APPLY_COMMAND", apply_command)
            .env("HV_TEST_COMMAND", "true")
            .env("HV_NIX_INSTANTIATE", nix_instantiate())
            .output()
            .unwrap()
    }
}

/// The real nix-instantiate when present; otherwise a stand-in that accepts everything, unless
/// the environment requires the real tool.
fn nix_instantiate() -> String {
    if tool_exists("nix-instantiate") {
        return "nix-instantiate".into();
    }
    if std::env::var_os("CI").is_some_and(|v| v == "true")
        || std::env::var_os("HV_REQUIRE_TOOLS").is_some()
    {
        panic!("nix-instantiate is required (CI=true or HV_REQUIRE_TOOLS set) but not installed");
    }
    eprintln!("nix-instantiate not installed: generated Nix is not parse-checked in this run");
    "true".into()
}

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

#[test]
fn test_features_plan_web_dashboard_adds_monitoring_and_explains_ram_and_tier() {
    let sandbox = Sandbox::new();
    let output = sandbox.hv(&["features", "plan", "+web-dashboard"]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.contains("+ monitoring                 1024 MB  needed by web-dashboard"),
        "{text}"
    );
    assert!(
        text.contains(
            "RAM:  2048 MB (core 512 + monitoring 1024 + web-dashboard 512); host has 131072 MB"
        ),
        "{text}"
    );
    assert!(
        text.contains("Tier: enhanced (web-dashboard is first listed in tier enhanced)"),
        "{text}"
    );
    assert!(
        !sandbox.features_nix().exists(),
        "plan must not write anything"
    );
}

#[test]
fn test_features_plan_json_and_state_dir_after_subcommand() {
    let sandbox = Sandbox::new();
    let other = sandbox.dir.path().join("elsewhere");
    let output = sandbox.hv(&[
        "features",
        "plan",
        "+web-dashboard",
        "--json",
        "--state-dir",
        other.to_str().unwrap(),
    ]);
    assert_ok(&output);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        plan["to_enable"],
        serde_json::json!(["core", "monitoring", "web-dashboard"])
    );
    assert_eq!(plan["tier"], "enhanced");
    assert_eq!(plan["ram_mb"], 2048);
    let output = sandbox.hv(&[
        "--state-dir",
        other.to_str().unwrap(),
        "features",
        "apply",
        "+rest-api",
    ]);
    assert_ok(&output);
    assert!(other.join("state/enabled-features.json").exists());
    assert!(!sandbox.state().join("state/enabled-features.json").exists());
}

#[test]
fn test_features_apply_then_rollback_restores_files_and_state() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+web-dashboard"]));
    let first = fs::read_to_string(sandbox.features_nix()).unwrap();
    assert!(first.contains("\"monitoring\""));
    assert_eq!(
        fs::read_to_string(sandbox.state().join("state/current-tier")).unwrap(),
        "enhanced\n"
    );

    assert_ok(&sandbox.hv(&["features", "apply", "+logging", "-web-dashboard"]));
    let second = fs::read_to_string(sandbox.features_nix()).unwrap();
    assert!(second.contains("\"logging\"") && !second.contains("\"web-dashboard\""));

    let output = sandbox.hv(&["features", "rollback"]);
    assert_ok(&output);
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), first);
    let status = sandbox.hv(&["features", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(
        status["state"]["enabled"],
        serde_json::json!(["core", "monitoring", "web-dashboard"])
    );
    assert_eq!(status["drifted_files"], serde_json::json!([]));

    // Rolling back the first apply removes the files it created.
    assert_ok(&sandbox.hv(&["features", "rollback"]));
    assert!(!sandbox.features_nix().exists());
    let output = sandbox.hv(&["features", "rollback"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no backup to roll back to"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn test_features_failed_apply_rolls_back_automatically() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
    let before = fs::read_to_string(sandbox.features_nix()).unwrap();
    let state_before =
        fs::read_to_string(sandbox.state().join("state/enabled-features.json")).unwrap();

    // Fails the first time (the new config), succeeds when re-applying the restored one.
    let marker = sandbox.dir.path().join("failed-once");
    let command = format!(
        "if [ -e {m} ]; then exit 0; else touch {m}; echo 'error: build of system failed' >&2; exit 1; fi",
        m = marker.display()
    );
    let output = sandbox.hv_with(&["features", "apply", "+web-dashboard"], &command);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("error: build of system failed"),
        "{message}"
    );
    assert!(message.contains("rolled back automatically"), "{message}");
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), before);
    assert_eq!(
        fs::read_to_string(sandbox.state().join("state/enabled-features.json")).unwrap(),
        state_before
    );
}

#[test]
fn test_features_unreadable_config_file_stops_before_any_change() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
    let before = fs::read_to_string(sandbox.features_nix()).unwrap();
    // A directory where the tier file goes: it cannot be backed up, so nothing may change.
    let tier = sandbox.etc().join("hypervisor-tier.nix");
    fs::remove_file(&tier).unwrap();
    fs::create_dir_all(tier.join("in-the-way")).unwrap();
    let output = sandbox.hv(&["features", "apply", "+web-dashboard"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("hypervisor-tier.nix"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), before);
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&sandbox.hv(&["features", "status", "--json"]))).unwrap();
    assert_eq!(
        status["state"]["enabled"],
        serde_json::json!(["core", "monitoring"])
    );
    assert_eq!(
        status["backups"].as_array().unwrap().len(),
        1,
        "the failed apply leaves no backup behind"
    );
}

#[test]
fn test_features_failing_test_command_keeps_old_files() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
    let before = fs::read_to_string(sandbox.features_nix()).unwrap();
    let output = sandbox.hv(&[
        "features",
        "apply",
        "+web-dashboard",
        "--test-command",
        "exit 3",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("`exit 3` (the test before applying) failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), before);
    // An empty test command skips the test phase.
    assert_ok(&sandbox.hv(&["features", "apply", "+web-dashboard", "--test-command", ""]));
}

#[test]
fn test_features_hand_edits_are_reported_before_apply() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
    assert!(!stdout(&sandbox.hv(&["features", "plan", "+logging"])).contains("WARNING"));
    let edited = fs::read_to_string(sandbox.features_nix())
        .unwrap()
        .replace("enable = true;", "enable = false;");
    fs::write(sandbox.features_nix(), &edited).unwrap();
    let text = stdout(&sandbox.hv(&["features", "plan", "+logging"]));
    assert!(
        text.contains("hypervisor-features.nix differs from the recorded state"),
        "{text}"
    );
    assert!(stdout(&sandbox.hv(&["features", "status"])).contains("WARNING"));
    // Apply replaces the edited file and keeps it in the backup; rollback brings it back.
    assert_ok(&sandbox.hv(&["features", "apply", "+logging"]));
    assert_ok(&sandbox.hv(&["features", "rollback"]));
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), edited);
}

#[test]
fn test_features_unparseable_generated_file_is_never_applied() {
    let sandbox = Sandbox::new();
    let applied = sandbox.dir.path().join("applied");
    let output = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(["features", "apply", "+monitoring"])
        .env("HV_STATE_DIR", sandbox.state())
        .env("HV_CONFIG_DIR", sandbox.etc())
        .env(
            "HV_HOST_ROOT",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/laptop"),
        )
        .env("HV_APPLY_COMMAND", format!("touch {}", applied.display()))
        .env("HV_NIX_INSTANTIATE", "false")
        .env("HV_TEST_COMMAND", "true")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("generated configuration was not applied"),
        "{}",
        stderr(&output)
    );
    assert!(!sandbox.features_nix().exists());
    assert!(!applied.exists(), "the apply command must not run");
}

#[test]
fn test_features_malformed_state_is_refused_and_kept() {
    let sandbox = Sandbox::new();
    let file = sandbox.state().join("state/enabled-features.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, "{\"schema_version\": 1, \"enabled\": [").unwrap();
    for args in [
        &["features", "plan", "+monitoring"][..],
        &["features", "apply", "+monitoring"],
        &["features", "status"],
    ] {
        let output = sandbox.hv(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("is malformed; refusing to continue"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "{\"schema_version\": 1, \"enabled\": ["
    );
    assert!(!sandbox.features_nix().exists());
}

#[test]
fn test_features_hardened_mode_refuses_changes() {
    let sandbox = Sandbox::new();
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
    assert_ok(&sandbox.hv(&["features", "harden"]));
    let before = fs::read_to_string(sandbox.features_nix()).unwrap();
    for args in [
        &["features", "apply", "+web-dashboard"][..],
        &["features", "rollback"],
    ] {
        let output = sandbox.hv(args);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("hardened mode"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(fs::read_to_string(sandbox.features_nix()).unwrap(), before);
    // Read-only commands still work.
    assert_ok(&sandbox.hv(&["features", "plan", "+web-dashboard"]));
    assert!(stdout(&sandbox.hv(&["features", "status"])).contains("Security mode: hardened"));
}

#[test]
fn test_features_concurrent_apply_is_locked_out() {
    let sandbox = Sandbox::new();
    let lock = StateDir::new(sandbox.state()).lock().unwrap();
    let output = sandbox.hv(&["features", "apply", "+monitoring"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("another `hv features` change is running"),
        "{}",
        stderr(&output)
    );
    drop(lock);
    assert_ok(&sandbox.hv(&["features", "apply", "+monitoring"]));
}

#[test]
fn test_features_bad_input_is_one_line_and_nonzero() {
    let sandbox = Sandbox::new();
    let cases: [(&[&str], &str); 5] = [
        (&["features", "plan", "+monitorng"], "error: unknown feature `monitorng`; did you mean `monitoring`?\n"),
        (&["features", "show", "web-dashbord"], "error: unknown feature `web-dashbord`; did you mean `web-dashboard`?\n"),
        (&["features", "plan", "--tier", "gold"], "error: unknown tier `gold` (tiers: minimal, standard, enhanced, professional, enterprise)\n"),
        (&["features", "plan", "+desktop-kde", "+desktop-gnome"], "error: the plan is not valid (1 error(s) above); nothing was changed\n"),
        (&["features", "plan", "+monitoring", "--set", "monitoring.retention=forever"], "error: monitoring.retention must be a non-negative integer, got `forever`\n"),
    ];
    for (args, expected) in cases {
        let output = sandbox.hv(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output), expected, "{args:?}");
    }
    let output = sandbox.hv(&["features", "plan", "+desktop-kde", "+desktop-gnome"]);
    assert!(stdout(&output).contains("ERROR: desktop-kde conflicts with desktop-gnome"));
}

#[test]
fn test_features_list_and_show() {
    let sandbox = Sandbox::new();
    let output = sandbox.hv(&["features", "list", "--json"]);
    assert_ok(&output);
    let features: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(features.len() >= 55);
    let output = sandbox.hv(&["features", "show", "gpu-passthrough"]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(text.contains("Conflicts:    live-migration (a VM holding a host GPU through VFIO cannot be migrated)"), "{text}");
    assert!(text.contains("Risk:         high"), "{text}");
}

#[test]
fn test_detect_json_on_fixture() {
    let sandbox = Sandbox::new();
    let output = sandbox.hv(&["detect", "--json"]);
    assert_ok(&output);
    let facts: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(facts["iommu"]["enabled"], true);
    assert_eq!(facts["memory"]["total_mb"], 131072);
    let text = stdout(&sandbox.hv(&["detect"]));
    assert!(text.contains("GPU 0000:17:00.0 NVIDIA"), "{text}");
    assert!(
        text.contains("ECC memory:   yes (2 memory controllers)"),
        "{text}"
    );
    assert!(
        text.contains("  eno1 NIC 3c:fd:fe:aa:bb:01 up, 10000 Mbit/s"),
        "{text}"
    );
}
