//! Running a VMM process and timing it from the outside.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Timings of one run, measured from just before `spawn` (fork + exec included).
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    /// Until the marker text appeared on the VMM's stdout (the guest's serial console).
    pub ready: Duration,
    /// Until the process exited (`None` if it had to be killed, e.g. QEMU microvm has no i8042).
    pub exit: Option<Duration>,
    /// CPU time (user + system) the process used, from the children's rusage.
    pub cpu: Duration,
}

fn children_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let user = u.user_time();
            let system = u.system_time();
            let micros =
                (user.tv_sec() + system.tv_sec()) * 1_000_000 + user.tv_usec() + system.tv_usec();
            Duration::from_micros(micros.max(0) as u64)
        })
        .unwrap_or_default()
}

/// Errors running a VMM under measurement.
#[derive(Debug)]
pub enum RunError {
    Spawn(std::io::Error),
    NoMarker { output: String },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot start: {e}"),
            RunError::NoMarker { output } => write!(f, "marker never printed; output: {output:?}"),
        }
    }
}

/// Runs `command`, waits for `marker` on stdout, then waits for exit when `expect_exit`, else kills.
pub fn time_run(command: Command, marker: &str, expect_exit: bool) -> Result<RunTiming, RunError> {
    let cpu_before = children_cpu_time();
    let start = Instant::now();
    let mut child = start_until_marker(command, marker)?;
    let ready = start.elapsed();
    let exit = if expect_exit {
        let _ = child.wait();
        Some(start.elapsed())
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    Ok(RunTiming {
        ready,
        exit,
        cpu: children_cpu_time().saturating_sub(cpu_before),
    })
}

/// Reads `output` until `marker` has appeared (or the stream ends: then the error holds what came).
fn read_until_marker(output: &mut impl Read, marker: &str) -> Result<(), RunError> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        match output.read(&mut buf) {
            Ok(0) | Err(_) => {
                return Err(RunError::NoMarker {
                    output: String::from_utf8_lossy(&seen).into_owned(),
                })
            }
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
}

/// Resident memory of a process split into guest RAM and everything else, from /proc/PID/smaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Resident KiB of all mappings except guest RAM.
    pub overhead_rss_kib: u64,
    /// Private (not shared with other processes) resident KiB outside guest RAM.
    pub overhead_private_kib: u64,
    /// Resident KiB of the guest RAM mapping.
    pub guest_rss_kib: u64,
}

/// Reads /proc/PID/smaps; the guest RAM mapping is the one whose size is `guest_kib`.
pub fn memory_use(pid: u32, guest_kib: u64) -> std::io::Result<MemoryUse> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&smaps, guest_kib))
}

fn field_kib(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Splits smaps text into guest RAM and the rest. The guest RAM mapping is the first anonymous
/// mapping between `guest_kib` and `guest_kib` + 4 MiB: the kernel merges an adjacent anonymous
/// mapping (a malloc arena, typically 132 KiB) into the same VMA, and that neighbour's few
/// resident pages are then counted as guest RAM.
pub fn parse_smaps(smaps: &str, guest_kib: u64) -> MemoryUse {
    let mut result = MemoryUse {
        overhead_rss_kib: 0,
        overhead_private_kib: 0,
        guest_rss_kib: 0,
    };
    let mut in_guest = false;
    let mut guest_found = false;
    for line in smaps.lines() {
        if let Some(size) = field_kib(line, "Size:") {
            in_guest = !guest_found && (guest_kib..=guest_kib + 4096).contains(&size);
            guest_found |= in_guest;
        } else if let Some(rss) = field_kib(line, "Rss:") {
            if in_guest {
                result.guest_rss_kib += rss;
            } else {
                result.overhead_rss_kib += rss;
            }
        } else if let Some(private) =
            field_kib(line, "Private_Clean:").or_else(|| field_kib(line, "Private_Dirty:"))
        {
            if !in_guest {
                result.overhead_private_kib += private;
            }
        }
    }
    result
}

/// The `hv-vmm` builds to measure, with a label: `HV_VMM_BIN` alone if set; else the default
/// release build next to this bench executable (`target/release/hv-vmm`, glibc linked
/// dynamically) and, if `scripts/bench.sh` built it, the static build
/// (`target/x86_64-unknown-linux-gnu/release/hv-vmm`, `-C target-feature=+crt-static`).
pub fn hv_vmm_binaries() -> Vec<(String, PathBuf)> {
    if let Some(path) = std::env::var_os("HV_VMM_BIN") {
        return vec![("hv-vmm".into(), PathBuf::from(path))];
    }
    let Some(release_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
    else {
        return Vec::new();
    };
    let candidates = [
        ("hv-vmm", release_dir.join("hv-vmm")),
        (
            "hv-vmm (static)",
            release_dir.join("../x86_64-unknown-linux-gnu/release/hv-vmm"),
        ),
    ];
    candidates
        .into_iter()
        .filter(|(_, path)| path.exists())
        .map(|(label, path)| (label.to_string(), path))
        .collect()
}

/// A program on PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Starts `command` in the background with stdout piped, returning once `marker` was printed.
pub fn start_until_marker(mut command: Command, marker: &str) -> Result<Child, RunError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let mut stdout = child.stdout.take().ok_or(RunError::NoMarker {
        output: String::new(),
    })?;
    if let Err(e) = read_until_marker(&mut stdout, marker) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // Keep the pipe open so the guest's later output does not hit a closed pipe.
    child.stdout = Some(stdout);
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_smaps_separates_guest_mapping() {
        let smaps = "\
55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/hv-vmm
Size:                100 kB
Rss:                  80 kB
Private_Clean:        10 kB
Private_Dirty:         5 kB
7f00-7f10 rw-p 00000000 00:00 0
Size:             131204 kB
Rss:                  12 kB
Private_Clean:         0 kB
Private_Dirty:        12 kB
7f20-7f21 rw-p 00000000 00:00 0
Size:                  8 kB
Rss:                   8 kB
Private_Clean:         0 kB
Private_Dirty:         8 kB
";
        let m = parse_smaps(smaps, 131072);
        assert_eq!(m.guest_rss_kib, 12);
        assert_eq!(m.overhead_rss_kib, 88);
        assert_eq!(m.overhead_private_kib, 23);
    }
}
