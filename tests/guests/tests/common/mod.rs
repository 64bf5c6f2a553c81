//! Running QEMU (`-M microvm`) for the tests: a VMM that is not ours, to check that guests and
//! kernels behave before hv-vmm is blamed for anything.
//!
//! Skips with a printed reason when qemu-system-x86_64 is missing, unless CI=true or
//! HV_REQUIRE_TOOLS=1 (then its absence fails the test).
#![allow(dead_code)] // each test binary uses a different part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
/// Test guests run emulated on the project's machines; keep far away from any real boot time.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(60);

pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
        || std::env::var("HV_REQUIRE_TOOLS").is_ok_and(|value| value == "1")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The QEMU binary, or None (after saying why) when the test should skip.
pub fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    match find_in_path(QEMU) {
        Some(qemu) => Some(qemu),
        None if tools_required() => panic!("{QEMU} is required (CI=true or HV_REQUIRE_TOOLS=1) but not in PATH; apt-get install qemu-system-x86"),
        None => {
            eprintln!("skipping {test}: {QEMU} not found (apt-get install qemu-system-x86)");
            None
        }
    }
}

pub fn accelerator() -> &'static str {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm_usable {
        "kvm"
    } else {
        "tcg"
    }
}

/// What came out of one boot.
#[derive(Debug)]
pub struct Boot {
    pub serial: String,
    /// QEMU ended by itself (e.g. a triple fault under -no-reboot) before we stopped it.
    pub exited_by_itself: bool,
}

/// Boots `kernel` with `args` and collects COM1 until `done(serial)` holds, QEMU exits, or
/// `deadline` passes; then stops QEMU.
pub fn boot(
    qemu: &Path,
    kernel: &Path,
    args: &[&str],
    deadline: Duration,
    done: impl Fn(&str) -> bool,
) -> Boot {
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            accelerator(),
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let (serial, exited_by_itself) = collect_until(&mut child, deadline, done);
    if !exited_by_itself {
        let _ = child.kill();
    }
    let _ = child.wait();
    Boot {
        serial,
        exited_by_itself,
    }
}

/// Returns the serial text and whether QEMU closed its stdout (it exited) before we stopped.
fn collect_until(
    child: &mut Child,
    deadline: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0_u8; 4096];
        while let Ok(read) = stdout.read(&mut chunk) {
            if read == 0 || sender.send(chunk[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut ended = false;
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        match receiver.recv_timeout(left) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if done(&String::from_utf8_lossy(&bytes)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    (String::from_utf8_lossy(&bytes).into_owned(), ended)
}
