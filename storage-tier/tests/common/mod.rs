//! Helpers shared by the integration tests: volumes in temporary directories, a served child process,
//! and the rule for external tools (skip with a reason, unless CI=true or HV_REQUIRE_TOOLS=1).

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hv-storage-fabric");

/// True when `tool` can run. When it cannot, prints why and returns false, or panics where tools are
/// mandatory (CI=true or HV_REQUIRE_TOOLS=1).
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let required = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("HV_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{tool} is required here (CI=true or HV_REQUIRE_TOOLS=1) but is not installed"
        );
        eprintln!("SKIP: {tool} is not installed (apt-get install qemu-utils fio)");
    }
    found
}

/// Creates a volume: `size` bytes, 1 MiB extents, a fast tier of `fast` bytes and a slow tier of `size`.
pub fn create_volume(dir: &Path, size: u64, fast: u64, extent_size: u64) -> PathBuf {
    create_volume_with_fast_file(dir, &dir.join("fast.img"), size, fast, extent_size)
}

/// [`create_volume`] with the fast tier's file at `fast_file` (e.g. on tmpfs).
pub fn create_volume_with_fast_file(
    dir: &Path,
    fast_file: &Path,
    size: u64,
    fast: u64,
    extent_size: u64,
) -> PathBuf {
    let volume = dir.join("vol");
    let status = Command::new(BIN)
        .args(["create", "--volume"])
        .arg(&volume)
        .args([
            "--size",
            &size.to_string(),
            "--extent-size",
            &extent_size.to_string(),
        ])
        .arg("--tier")
        .arg(format!("fast={}:{fast}", fast_file.display()))
        .arg("--tier")
        .arg(format!("slow={}:{size}", dir.join("slow.img").display()))
        .stdout(Stdio::null())
        .status()
        .expect("run hv-storage-fabric create");
    assert!(status.success());
    volume
}

/// A `serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub socket: PathBuf,
}

impl Server {
    pub fn start(volume: &Path, socket: &Path, extra: &[&str]) -> Server {
        let child = Command::new(BIN)
            .args(["serve", "--volume"])
            .arg(volume)
            .arg("--unix")
            .arg(socket)
            .args(["--export", "vol"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hv-storage-fabric serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "server did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child,
            socket: socket.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("nbd+unix:///vol?socket={}", self.socket.display())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGKILL and returns what it logged.
    pub fn kill_and_log(mut self) -> String {
        self.kill();
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        }
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command, returning stdout; panics with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn tool");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
