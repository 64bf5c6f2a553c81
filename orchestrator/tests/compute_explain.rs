//! `hv-compute explain` golden tests over examples/units, and the resolution errors users will meet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn hv_compute(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hv-compute"))
        .current_dir(dir)
        .env_remove("HV_SPEC_DIR")
        .args(args)
        .output()
        .unwrap()
}

/// Compares with tests/fixtures/units/golden/NAME; `UPDATE_GOLDEN=1` rewrites the file instead.
fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/units/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        actual,
        expected,
        "explain output differs from {}",
        path.display()
    );
}

#[test]
fn test_explain_examples_match_golden_files() {
    for unit in ["hello", "idle", "webserver", "database"] {
        let output = hv_compute(
            &workspace(),
            &["--spec-dir", "examples/units", "explain", unit],
        );
        assert!(
            output.status.success(),
            "{unit}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_golden(
            &format!("{unit}.explain"),
            &String::from_utf8(output.stdout).unwrap(),
        );
    }
}

#[test]
fn test_explain_json_carries_provenance_and_global_flags_go_anywhere() {
    let before = hv_compute(
        &workspace(),
        &[
            "--json",
            "--spec-dir",
            "examples/units",
            "explain",
            "webserver",
        ],
    );
    let after = hv_compute(
        &workspace(),
        &[
            "explain",
            "webserver",
            "--spec-dir",
            "examples/units",
            "--json",
        ],
    );
    assert_eq!(before.stdout, after.stdout);
    let json: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    let replicas = &json["settings"]["replicas"];
    assert_eq!(replicas["value"], 2);
    assert_eq!(replicas["origin"]["layer"], "tag");
    assert_eq!(replicas["origin"]["name"], "production");
    assert_eq!(
        json["settings"]["resources.memory"]["origin"]["layer"],
        "policy"
    );
    assert_eq!(json["settings"]["resources.vcpus"]["value"], 4);
    assert_eq!(json["blueprint"], "web-app@1.2.0");
}

#[test]
fn test_blueprint_command_resolves_components() {
    let output = hv_compute(
        &workspace(),
        &[
            "--spec-dir",
            "examples/units",
            "blueprint",
            "web-app",
            "--json",
        ],
    );
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["version"], "1.2.0", "newest version by default");
    assert_eq!(json["components"][3], "security-hardening@1.0");
    let old = hv_compute(
        &workspace(),
        &["--spec-dir", "examples/units", "blueprint", "web-app@1.1.0"],
    );
    let text = String::from_utf8(old.stdout).unwrap();
    assert!(
        text.starts_with(
            "blueprint web-app@1.1.0 (alpine-base@3.18, nodejs@18, nginx-optimized@1.24)"
        ),
        "{text}"
    );
}

/// Writes a spec dir from (relative path, contents) pairs.
fn spec_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn explain_error(files: &[(&str, &str)], unit: &str) -> String {
    let dir = spec_dir(files);
    let output = hv_compute(dir.path(), &["explain", unit]);
    assert_eq!(output.status.code(), Some(1), "expected failure for {unit}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one-line error: {stderr}");
    stderr
}

#[test]
fn test_explain_reports_policy_violations_and_conflicts() {
    let production = (
        "tags/production.toml",
        "[[constraints]]\nsetting = 'replicas'\nmin = 2\n",
    );
    let public = (
        "tags/public.toml",
        "[[constraints]]\nsetting = 'network.mode'\nforbid = ['isolated']\n",
    );
    let error = explain_error(
        &[
            production,
            public,
            (
                "units/web.toml",
                "tags = ['production', 'public']\n[[network]]\nmode = 'isolated'\n",
            ),
        ],
        "web",
    );
    assert!(
        error.contains("tag production: replicas must be >= 2, but is 1 (set by default)"),
        "{error}"
    );
    assert!(
        error.contains("tag public: network.mode = isolated is forbidden (set by unit web)"),
        "{error}"
    );

    let error = explain_error(
        &[
            ("tags/a.toml", "[defaults.resources]\nmemory = '1G'\n"),
            ("tags/b.toml", "[defaults.resources]\nmemory = '2G'\n"),
            ("units/u.toml", "tags = ['a', 'b']\n"),
        ],
        "u",
    );
    assert!(
        error.contains("conflict on resources.memory: tag a sets \"1G\", but tag b sets \"2G\""),
        "{error}"
    );
}

#[test]
fn test_explain_reports_missing_component_and_bad_files() {
    let error = explain_error(
        &[
            (
                "blueprints/app.toml",
                "name = 'app'\nversion = '1'\n[[components]]\ncomponent = 'base'\nversion = '2'\n",
            ),
            ("components/base-1.toml", "name = 'base'\nversion = '1'\n"),
            ("units/u.toml", "blueprint = 'app@1'\n"),
        ],
        "u",
    );
    assert!(
        error.contains("component base@2 not found (available versions: 1)"),
        "{error}"
    );

    let error = explain_error(&[("units/u.toml", "[resources]\ncpus = 2\n")], "u");
    assert!(
        error.contains("u.toml is not a valid unit document") && error.contains("cpus"),
        "{error}"
    );

    let error = explain_error(&[("units/u.toml", "")], "nope");
    assert!(
        error.contains("no unit named \"nope\"") && error.contains("known: u"),
        "{error}"
    );
}

#[test]
fn test_hv_compose_name_accepts_the_same_blueprint_command() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("hv-compose");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hv-compute"), &link).unwrap();
    let output = Command::new(&link)
        .current_dir(workspace())
        .args(["blueprint", "web-app", "--spec-dir", "examples/units"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .starts_with("blueprint web-app@1.2.0 ("));
}
