//! Shared helpers for tests that run the `hv-vmm` binary against the tiny test guests.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous upper bound for a tiny guest run (guests are emulated here; this is a hang guard, not
/// a timing assertion).
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Whether guest-level tests can run. Without `/dev/kvm` they skip with a printed reason, unless
/// `HV_REQUIRE_KVM=1`, which turns the skip into a failure.
pub fn kvm_or_skip(test: &str) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        if std::env::var("HV_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{test}: /dev/kvm is not usable and HV_REQUIRE_KVM=1");
        }
        eprintln!("SKIP {test}: /dev/kvm is not usable (set HV_REQUIRE_KVM=1 to make this fail)");
    }
    usable
}

pub fn hv_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hv-vmm"))
}

/// Writes a guest ELF into `dir` and returns its path.
pub fn guest_file(dir: &Path, name: &str) -> PathBuf {
    let guest = hv_test_guests::by_name(name).unwrap_or_else(|| panic!("no guest {name}"));
    let path = dir.join(format!("{name}.elf"));
    std::fs::write(&path, guest.elf).unwrap();
    path
}

pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Waits for `child` (killing it after [`RUN_LIMIT`]) and collects its output.
pub fn finish(mut child: Child) -> Outcome {
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hv-vmm did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).unwrap();
    }
    Outcome {
        status,
        stdout,
        stderr,
    }
}

/// Runs `hv-vmm run <args>` to completion.
pub fn run_vmm(args: &[&str]) -> Outcome {
    let child = hv_vmm()
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child)
}

/// Polls until `path` exists.
pub fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + RUN_LIMIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
