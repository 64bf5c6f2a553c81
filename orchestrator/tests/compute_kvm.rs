//! Launch, stop and restart of the tiny built-in guests on the real hv-vmm through /dev/kvm.
//! Skips with a printed reason when /dev/kvm (or the hv-vmm binary) is missing, unless
//! HV_REQUIRE_KVM=1, which turns the skip into a failure.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn require_kvm() -> bool {
    std::env::var("HV_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

fn skip(reason: &str) -> Option<PathBuf> {
    assert!(!require_kvm(), "HV_REQUIRE_KVM=1 but {reason}");
    eprintln!("skipping: {reason}");
    None
}

/// hv-vmm next to hv-compute (target/<profile>/); built with cargo when absent.
fn vmm_binary() -> Option<PathBuf> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return skip("/dev/kvm cannot be opened read-write");
    }
    let beside = Path::new(env!("CARGO_BIN_EXE_hv-compute")).with_file_name("hv-vmm");
    if !beside.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-q", "-p", "hv-vmm", "--bin", "hv-vmm"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        if !built.is_ok_and(|s| s.success()) || !beside.is_file() {
            return skip("hv-vmm is not built and `cargo build -p hv-vmm` failed");
        }
    }
    Some(beside)
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    vmm: PathBuf,
}

impl Env {
    fn new(vmm: PathBuf, units: &[(&str, &str, &str)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("spec/units")).unwrap();
        for (unit, guest, extra) in units {
            let elf = hv_test_guests::by_name(guest).unwrap().elf;
            let path = root.join(format!("spec/{guest}.elf"));
            std::fs::write(&path, elf).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(
                root.join(format!("spec/units/{unit}.toml")),
                format!("boot.kernel = \"{guest}.elf\"\n{extra}[resources]\nmemory = '32M'\n"),
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

    fn status(&self, id: &str) -> serde_json::Value {
        let output = self.run(&["--json", "status", id]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(id);
            if status["instance"]["state"] == state {
                return status["instance"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state}: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serial(&self, id: &str) -> String {
        String::from_utf8_lossy(&self.run(&["logs", id]).stdout).into_owned()
    }
}

#[test]
fn test_kvm_launch_marker_guest_reports_boot_time() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(vmm, &[("marker", "marker", "")]);
    let output = env.run(&["--json", "launch", "marker"]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let boot = outcome[0]["boot_time_us"].as_u64().unwrap();
    assert!(boot > 0 && outcome[0]["ready_us"].as_u64().unwrap() > boot);
    let record = env.wait_for_state("marker.0", "exited");
    assert_eq!(record["last_exit_code"], 0, "the marker guest resets");
    let expected = hv_test_guests::by_name("marker").unwrap().expected_serial;
    assert!(
        env.serial("marker.0").contains(expected),
        "serial: {:?}",
        env.serial("marker.0")
    );
}

#[test]
fn test_kvm_stop_uses_the_api_and_does_not_restart() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(vmm, &[("idle", "halt", "restart.policy = 'always'\n")]);
    let output = env.run(&["launch", "idle"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    env.wait_for_state("idle.0", "running");
    let live = env.status("idle.0")["vm"].clone();
    assert_eq!(live["state"], "running", "GET /vm answers: {live}");
    assert_eq!(live["memory_mib"], 32);
    let stopped = env.run(&["stop", "idle.0"]);
    assert_eq!(
        String::from_utf8_lossy(&stopped.stdout),
        "stopped idle.0 (API shutdown)\n"
    );
    let record = env.wait_for_state("idle.0", "stopped");
    assert_eq!(record["restarts"], 0);
    assert_eq!(record["last_exit_code"], 0);
}

#[test]
fn test_kvm_restart_policy_boots_the_guest_again() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(
        vmm,
        &[(
            "again",
            "marker",
            "restart.policy = 'always'\nrestart.max_restarts = 2\n",
        )],
    );
    assert!(env.run(&["launch", "again"]).status.success());
    let record = env.wait_for_state("again.0", "exited");
    assert_eq!(record["restarts"], 2);
    let expected = hv_test_guests::by_name("marker").unwrap().expected_serial;
    assert_eq!(
        env.serial("again.0").matches(expected).count(),
        3,
        "three boots in the serial log"
    );
}

/// Live processes whose environment names `needle` (our unique state dir): launch and its supervisors.
fn processes_with_env(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Zombies (state Z after the command name) are gone for our purposes.
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if !zombie && String::from_utf8_lossy(&environ).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Field 5 of /proc/PID/stat: the process group.
fn process_group(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split(' ').nth(2).unwrap().parse().unwrap()
}

#[test]
fn test_kvm_forked_supervisor_is_detached_and_keeps_supervising() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(vmm, &[("idle", "halt", "")]);
    // `output()` waits for end of file on launch's stdout: it returns only if the forked supervisor
    // does not keep launch's stdout open.
    let output = env.run(&["--json", "launch", "idle"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = env.wait_for_state("idle.0", "running");
    let supervisor = record["supervisor_pid"].as_u64().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{supervisor}")).exists(),
        "the supervisor outlives the launch command"
    );
    assert_eq!(
        process_group(supervisor),
        supervisor,
        "the supervisor leads its own process group (Ctrl-C on launch's terminal spares it)"
    );
    assert!(env.run(&["stop", "idle.0"]).status.success());
    let record = env.wait_for_state("idle.0", "stopped");
    assert_eq!(record["last_exit_code"], 0, "the exit code is recorded");
}

#[test]
fn test_kvm_exec_supervisors_still_launch_and_record_exits() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(vmm, &[("marker", "marker", "")]);
    let output = Command::new(env!("CARGO_BIN_EXE_hv-compute"))
        .env("HV_SPEC_DIR", env.root.join("spec"))
        .env("HV_STATE_DIR", env.root.join("state"))
        .env("HV_VMM_BIN", &env.vmm)
        .env("HV_COMPUTE_SUPERVISOR", "exec")
        .args(["--json", "launch", "marker"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(outcome[0]["boot_time_us"].as_u64().unwrap() > 0);
    let record = env.wait_for_state("marker.0", "exited");
    assert_eq!(record["last_exit_code"], 0);
}

#[test]
fn test_kvm_unused_forked_supervisors_exit_while_a_sibling_runs() {
    let Some(vmm) = vmm_binary() else { return };
    let env = Env::new(vmm, &[("idle", "halt", "")]);
    std::fs::write(
        env.root.join("spec/units/broken.toml"),
        "boot.kernel = 'missing.elf'\n",
    )
    .unwrap();
    // Two supervisors are forked; `idle` gets one, then `broken` fails before using the other. The
    // running sibling must not keep the unused one alive through an inherited pipe end.
    let output = env.run(&["launch", "idle", "broken"]);
    assert!(!output.status.success());
    let record = env.wait_for_state("idle.0", "running");
    let mut expected = vec![
        record["supervisor_pid"].as_u64().unwrap() as u32,
        record["vmm_pid"].as_u64().unwrap() as u32,
    ];
    expected.sort();
    let state_dir = env.root.join("state").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = processes_with_env(&state_dir);
        left.sort();
        if left == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected only the supervisor and hv-vmm of idle.0 {expected:?}, found {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.run(&["stop", "idle.0"]).status.success());
    env.wait_for_state("idle.0", "stopped");
}
