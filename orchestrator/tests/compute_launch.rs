//! Launch, list, status, logs, stop and restart policies, driven through the `hv-compute` binary
//! against a fake hv-vmm (a shell script honouring the hv-vmm contract: flags, serial on stdout, the
//! `hv-vmm: guest ready after <N> us` line on stderr, exit codes). Booting real tiny guests on
//! /dev/kvm lives in compute_kvm.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The fake VMM. Its behaviour is the first word of the "kernel" file:
/// `exit` (ready, print RDY, exit 0), `hold` (ready, then run until signalled),
/// `crash-after-ready` (ready, then exit 1), `crash` (an error line, exit 3 before ready).
const FAKE_VMM: &str = r#"#!/bin/sh
kernel=""
for arg in "$@"; do
  if [ "$prev" = "--kernel" ]; then kernel="$arg"; fi
  prev="$arg"
done
echo "$*" >> "$kernel.args"
mode=$(head -n 1 "$kernel")
case "$mode" in
  crash) echo "hv-vmm: vcpu 0 triple fault at rip 0x1000" >&2; exit 3 ;;
esac
echo "RDY"
echo "hv-vmm: guest ready after 1234 us" >&2
case "$mode" in
  exit) exit 0 ;;
  hold) exec sleep 600 ;;
  crash-after-ready) echo "hv-vmm: guest crashed" >&2; exit 1 ;;
esac
"#;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    vmm: PathBuf,
}

impl Env {
    /// A spec dir with one unit per (name, mode, extra TOML), a state dir and the fake VMM.
    fn new(units: &[(&str, &str, &str)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let vmm = root.join("fake-hv-vmm");
        std::fs::write(&vmm, FAKE_VMM).unwrap();
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(root.join("spec/units")).unwrap();
        for (name, mode, extra) in units {
            std::fs::write(
                root.join(format!("spec/{name}.kernel")),
                format!("{mode}\n"),
            )
            .unwrap();
            std::fs::write(
                root.join(format!("spec/units/{name}.toml")),
                format!(
                    "boot.kernel = \"{name}.kernel\"\nboot.cmdline = \"console=ttyS0\"\n{extra}"
                ),
            )
            .unwrap();
        }
        Env {
            _dir: dir,
            root,
            vmm,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hv-compute"))
            .env("HV_SPEC_DIR", self.root.join("spec"))
            .env("HV_STATE_DIR", self.root.join("state"))
            .env("HV_VMM_BIN", &self.vmm)
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(&all);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn instance(&self, id: &str) -> serde_json::Value {
        self.json(&["status", id])["instance"].clone()
    }

    /// Polls until the instance reaches `state` (supervisors record transitions asynchronously).
    fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let record = self.instance(id);
            if record["state"] == state {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state}: {record}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn args_log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("spec/{unit}.kernel.args")))
            .unwrap_or_default()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn test_launch_waits_for_ready_and_keeps_serial_log() {
    let env = Env::new(&[(
        "fast",
        "exit",
        "[resources]\ncompute_units = 150\nmemory = '64M'\n",
    )]);
    let output = env.run(&["launch", "fast"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(text.starts_with("fast.0: guest ready after "), "{text}");
    assert!(
        text.contains("(hv-vmm boot 1.23 ms, orchestrator overhead "),
        "{text}"
    );
    let record = env.wait_for_state("fast.0", "exited");
    assert_eq!(record["boot_time_us"], 1234);
    assert_eq!(record["last_exit_code"], 0);
    assert_eq!(record["restarts"], 0);
    let args = env.args_log("fast");
    assert!(
        args.contains(
            "--cmdline console=ttyS0 --vcpus 2 --memory 64M --serial stdio --api-socket "
        ),
        "{args}"
    );
    assert!(
        args.starts_with("run --kernel /"),
        "kernel path made absolute: {args}"
    );
    assert_eq!(stdout(&env.run(&["logs", "fast.0"])), "RDY\n");
    assert!(
        stdout(&env.run(&["logs", "fast.0", "--vmm-log"])).contains("guest ready after 1234 us")
    );
}

#[test]
fn test_launch_json_reports_boot_time_and_overhead() {
    let env = Env::new(&[("fast", "exit", "")]);
    let outcomes = env.json(&["launch", "fast", "--count", "3"]);
    let outcomes = outcomes.as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    for (n, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome["instance"], format!("fast.{n}"));
        assert_eq!(outcome["boot_time_us"], 1234);
        let ready = outcome["ready_us"].as_u64().unwrap();
        assert_eq!(outcome["overhead_us"].as_u64().unwrap(), ready - 1234);
        assert_eq!(outcome["unit_revision"], 1);
    }
    let listed = env.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[test]
fn test_stop_ends_a_running_instance_without_restart() {
    let env = Env::new(&[("idle", "hold", "restart.policy = 'always'\n")]);
    let output = env.run(&["launch", "idle"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = env.wait_for_state("idle.0", "running");
    let vmm_pid = record["vmm_pid"].as_u64().unwrap() as i32;
    // state dir flag after the subcommand works too
    let state_dir = env.root.join("state");
    let stopped = env.run(&["stop", "idle", "--state-dir", state_dir.to_str().unwrap()]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    // The fake has no API socket, so stop falls back to SIGTERM.
    assert_eq!(stdout(&stopped), "stopped idle.0 (SIGTERM)\n");
    let record = env.wait_for_state("idle.0", "stopped");
    assert_eq!(record["restarts"], 0, "a stop is never restarted: {record}");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(vmm_pid), None).is_err(),
        "hv-vmm process gone"
    );
    let pruned = env.json(&["prune"]);
    assert_eq!(pruned, serde_json::json!(["idle.0"]));
}

#[test]
fn test_restart_policy_restarts_until_max_then_fails() {
    let env = Env::new(&[(
        "flaky",
        "crash-after-ready",
        "restart.policy = 'on-failure'\nrestart.max_restarts = 2\n",
    )]);
    assert!(
        env.run(&["launch", "flaky"]).status.success(),
        "first boot did get ready"
    );
    let record = env.wait_for_state("flaky.0", "failed");
    assert_eq!(record["restarts"], 2);
    assert_eq!(record["last_exit_code"], 1);
    let error = record["last_error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 2 restarts") && error.contains("guest crashed"),
        "{error}"
    );
    assert_eq!(
        env.args_log("flaky").lines().count(),
        3,
        "one start plus two restarts"
    );
}

#[test]
fn test_launch_failure_before_ready_names_the_vmm_error() {
    let env = Env::new(&[("broken", "crash", "")]);
    let output = env.run(&["launch", "broken"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("broken.0: FAILED: guest ended before its boot marker (hv-vmm exited with code 3: hv-vmm: vcpu 0 triple fault"),
        "{text}"
    );
    assert_eq!(
        env.wait_for_state("broken.0", "failed")["last_exit_code"],
        3
    );
}

#[test]
fn test_launch_errors_are_one_clear_line() {
    let env = Env::new(&[("fast", "exit", ""), ("nokernel", "exit", "")]);
    std::fs::write(
        env.root.join("spec/units/nokernel.toml"),
        "description = 'x'\n",
    )
    .unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["launch", "nokernel"], "unit nokernel has no kernel"),
        (
            &["launch", "fast", "--vmm", "/nonexistent/hv-vmm"],
            "hv-vmm not found at /nonexistent/hv-vmm",
        ),
        (&["launch", "ghost"], "no unit named \"ghost\""),
    ];
    for (args, expected) in cases {
        let output = env.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected) && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn test_unit_revisions_are_recorded_on_change() {
    let env = Env::new(&[("fast", "exit", "")]);
    assert!(env.run(&["launch", "fast"]).status.success());
    assert!(env.run(&["launch", "fast"]).status.success());
    let unit = env.root.join("spec/units/fast.toml");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, format!("{text}replicas = 1\n")).unwrap();
    let outcome = env.json(&["launch", "fast"]);
    assert_eq!(outcome[0]["unit_revision"], 2);
    assert_eq!(outcome[0]["instance"], "fast.2");
    let history = env.json(&["history", "fast"]);
    assert_eq!(history.as_array().unwrap().len(), 2);
}

#[test]
fn test_unwritable_state_dir_is_explained() {
    let env = Env::new(&[("fast", "exit", "")]);
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = env.root.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let mut command = if nix::unistd::Uid::effective().is_root() {
        // root passes every permission check: run as `nobody`, who is not in the directory's group.
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_hv-compute"),
        ]);
        command
    } else {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_hv-compute"))
    };
    let output = command
        .args(["list", "--state-dir", locked.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not writable by user"), "{stderr}");
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            stderr.contains(
                "user nobody, who is not in group root: run `sudo usermod -aG root nobody`"
            ),
            "{stderr}"
        );
    }
}

#[test]
fn test_group_member_uses_state_dir_without_root() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: setting up another user's group membership needs root");
        return;
    }
    let env = Env::new(&[("fast", "exit", "")]);
    for path in [
        env.root.clone(),
        env.root.join("spec"),
        env.root.join("spec/units"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A state dir as an admin would set it up: root-owned, group "hypervisor" (gid 4242 here), 2770.
    let state = env.root.join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(0), Some(4242)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--groups=4242",
            env!("CARGO_BIN_EXE_hv-compute"),
        ])
        .env("HV_SPEC_DIR", env.root.join("spec"))
        .env("HV_STATE_DIR", &state)
        .env("HV_VMM_BIN", &env.vmm)
        .args(["launch", "fast"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).starts_with("fast.0: guest ready after "));
    // Everything created is usable by the group, nothing by others.
    use std::os::unix::fs::MetadataExt;
    for file in [
        "state.db",
        "instances/fast.0",
        "instances/fast.0/serial.log",
    ] {
        let meta = std::fs::metadata(state.join(file)).unwrap();
        assert_eq!(meta.gid(), 4242, "{file} stays in the group (setgid dir)");
        assert_eq!(
            meta.mode() & 0o060,
            0o060,
            "{file}: group can read and write"
        );
        assert_eq!(meta.mode() & 0o007, 0, "{file}: others get nothing");
    }
}
