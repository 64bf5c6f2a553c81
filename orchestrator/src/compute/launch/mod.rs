//! Launching and supervising instances on hv-vmm.
//!
//! `launch` records the unit revision, creates one folder per instance under the state dir and hands
//! each to a detached supervisor (its own process group), forked ahead of time (see `pool`). It runs
//! hv-vmm with the resolved settings (serial output to the instance's `serial.log`), watches hv-vmm's
//! stderr for `hv-vmm: guest ready after <N> us`, tells `launch` through a pipe (one line), keeps the
//! instance record current, and applies the unit's restart policy when hv-vmm exits. `stop` marks the
//! instance as wanted-stopped (so it is not restarted), asks hv-vmm to shut down over its API socket and
//! falls back to SIGTERM, then SIGKILL.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

mod control;
mod pool;
mod supervisor;

pub use control::{api_request, prune, query_vm, stop};
pub use pool::{supervise_assigned, SupervisorPool};
pub use supervisor::{parse_ready_line, supervise, vmm_args, READY_PREFIX};

use super::resolve::ResolvedUnit;
use super::state::State;
use crate::store::{now_unix_ms, InstanceRecord, InstanceState, Store, StoreError};

/// Errors from launching, supervising and stopping instances.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot find hv-vmm: pass --vmm PATH or set HV_VMM_BIN (looked next to {} and in PATH)", exe_dir.display())]
    VmmNotFound { exe_dir: PathBuf },
    #[error("hv-vmm not found at {} (from --vmm or HV_VMM_BIN)", path.display())]
    VmmMissing { path: PathBuf },
    #[error("unit {unit} has no kernel (set boot.kernel, or use a blueprint whose component provides one)")]
    NoKernel { unit: String },
    #[error("unit {unit}: {what} {} does not exist{}", path.display(), guest_hint(path))]
    MissingFile {
        unit: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("unit {unit}: disk {path} is qcow2; hv-vmm reads raw images only (re-import with --convert-qcow2, or `qemu-img convert -O raw`)")]
    Qcow2 { unit: String, path: String },
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store problem")]
    Store(#[source] StoreError),
    #[error("state directory problem")]
    State(#[source] Box<super::state::StateError>),
    #[error("instance {id} has no resolved spec")]
    Spec {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The built-in test guests are generated, not checked in: say how to make them.
fn guest_hint(path: &Path) -> &'static str {
    if path.to_string_lossy().contains("target/guests/") {
        " (build the tiny guests first: `cargo run -p hv-test-guests -- --out target/guests`)"
    } else {
        ""
    }
}

/// Files and sockets created for instances (hv-vmm's API socket, logs) must be usable by the whole
/// `hypervisor` group: clear only the "other" bits from the creation mode.
pub fn group_shared_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
}

/// How `launch` should run.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub vmm: Option<PathBuf>,
    /// Relative kernel/initrd/disk paths are relative to the spec directory.
    pub spec_root: PathBuf,
    pub count: Option<u32>,
    pub timeout: Duration,
    /// When the command started: overhead is measured from here.
    pub started: Instant,
}

/// What happened to one launched instance.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchOutcome {
    pub instance: String,
    pub unit: String,
    pub unit_revision: u64,
    /// From the start of the `launch` command to the guest's boot marker.
    pub ready_us: Option<u64>,
    /// hv-vmm's own exec-to-ready time.
    pub boot_time_us: Option<u64>,
    /// `ready_us - boot_time_us`: what the orchestrator added.
    pub overhead_us: Option<u64>,
    /// From the start of the `launch` command until its supervisor process was spawned.
    pub supervisor_spawned_us: u64,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl LaunchOutcome {
    pub fn describe(&self) -> String {
        let mut text = match (self.ready_us, self.boot_time_us, &self.error) {
            (Some(ready), Some(boot), _) => format!(
                "{}: guest ready after {:.2} ms (hv-vmm boot {:.2} ms, orchestrator overhead {:.2} ms)",
                self.instance,
                ready as f64 / 1000.0,
                boot as f64 / 1000.0,
                self.overhead_us.unwrap_or(0) as f64 / 1000.0
            ),
            (_, _, Some(error)) => format!("{}: FAILED: {error}", self.instance),
            _ => format!("{}: FAILED", self.instance),
        };
        for warning in &self.warnings {
            text.push_str(&format!("\n  warning: {warning}"));
        }
        text
    }
}

/// With `HV_COMPUTE_TIMING=1`, prints how long after `started` a launch phase ended (overhead analysis).
pub fn phase(started: Instant, what: &str) {
    if std::env::var_os("HV_COMPUTE_TIMING").is_some() {
        eprintln!("timing: {what} at {} us", started.elapsed().as_micros());
    }
}

/// Finds hv-vmm: explicit path, else next to the current executable, else in PATH.
pub fn locate_vmm(explicit: Option<&Path>) -> Result<PathBuf, LaunchError> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(LaunchError::VmmMissing {
                path: path.to_owned(),
            });
        }
        return Ok(path.to_owned());
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_default();
    let beside = exe_dir.join("hv-vmm");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("hv-vmm");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(LaunchError::VmmNotFound { exe_dir })
}

fn absolute(root: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    }
}

/// Makes the unit's file paths absolute and checks what hv-vmm will need; returns warnings for
/// settings that hv-vmm cannot honour yet.
fn prepare(unit: &mut ResolvedUnit, root: &Path) -> Result<Vec<String>, LaunchError> {
    let kernel = unit
        .kernel
        .as_deref()
        .ok_or_else(|| LaunchError::NoKernel {
            unit: unit.name.clone(),
        })?;
    let kernel = absolute(root, kernel);
    if !kernel.is_file() {
        return Err(LaunchError::MissingFile {
            unit: unit.name.clone(),
            what: "kernel",
            path: kernel,
        });
    }
    unit.kernel = Some(kernel.display().to_string());
    if let Some(initrd) = &unit.initrd {
        let initrd = absolute(root, initrd);
        if !initrd.is_file() {
            return Err(LaunchError::MissingFile {
                unit: unit.name.clone(),
                what: "initrd",
                path: initrd,
            });
        }
        unit.initrd = Some(initrd.display().to_string());
    }
    let mut warnings = Vec::new();
    for disk in &mut unit.disks {
        if disk.format == "qcow2" {
            return Err(LaunchError::Qcow2 {
                unit: unit.name.clone(),
                path: disk.path.clone(),
            });
        }
        disk.path = absolute(root, &disk.path).display().to_string();
    }
    // hv-vmm attaches disks (`--disk`, virtio-blk) but has no CD-ROM, network or device flags yet:
    // say so rather than drop silently.
    let cdroms = unit.disks.iter().filter(|d| d.device != "disk").count();
    for (what, count) in [
        ("CD-ROMs", cdroms),
        ("network interfaces", unit.network.len()),
        ("devices", unit.devices.len()),
    ] {
        if count > 0 {
            warnings.push(format!(
                "{count} {what} not attached: hv-vmm has no flag for them yet"
            ));
        }
    }
    Ok(warnings)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Launches every plan (`count` instances each, default the unit's replicas) and waits for all guests.
pub fn launch(
    state: &State,
    plans: &[(ResolvedUnit, String)],
    options: &LaunchOptions,
    pool: &mut SupervisorPool,
) -> Result<Vec<LaunchOutcome>, LaunchError> {
    let mut outcomes = Vec::new();
    let (sender, receiver) = mpsc::channel::<(usize, String, Instant)>();
    for (resolved, spec_text) in plans {
        let mut unit = resolved.clone();
        let warnings = prepare(&mut unit, &options.spec_root)?;
        phase(options.started, "prepared");
        let revision = state
            .store
            .put_unit_revision(&unit.name, spec_text)
            .map_err(LaunchError::Store)?;
        phase(options.started, "revision stored");
        let count = options.count.unwrap_or(unit.replicas).max(1);
        for _ in 0..count {
            let (id, record) = prepare_instance(state, &unit, revision)?;
            phase(options.started, "instance prepared");
            let index = outcomes.len();
            outcomes.push(LaunchOutcome {
                instance: id.clone(),
                unit: unit.name.clone(),
                unit_revision: revision,
                ready_us: None,
                boot_time_us: None,
                overhead_us: None,
                supervisor_spawned_us: 0,
                error: None,
                warnings: warnings.clone(),
            });
            // The supervisor gets its instance while we hold the write lock; the record (with its pid)
            // is committed right after, while the supervisor starts hv-vmm.
            let mut assigned = None;
            let mut assign_error = None;
            let inserted = state
                .store
                .insert_instance_locked(&mut || match pool.assign(&id) {
                    Ok(mut child) => {
                        // Listen for the ready notice before committing, so a slow commit cannot
                        // delay when we see it.
                        let stdout = child.notices.take();
                        let sender = sender.clone();
                        std::thread::spawn(move || {
                            let mut line = String::new();
                            if let Some(stdout) = stdout {
                                let _ = BufReader::new(stdout).read_line(&mut line);
                            }
                            let _ = sender.send((index, line, Instant::now()));
                        });
                        let mut record = record.clone();
                        record.supervisor_pid = Some(child.pid);
                        assigned = Some(child);
                        Some(record)
                    }
                    Err(source) => {
                        assign_error = Some(source);
                        None
                    }
                })
                .map_err(LaunchError::Store);
            outcomes[index].supervisor_spawned_us = options.started.elapsed().as_micros() as u64;
            phase(options.started, "supervisor assigned, record committed");
            if let Some(source) = assign_error {
                return Err(LaunchError::Spawn {
                    program: pool.exe().to_owned(),
                    source,
                });
            }
            let Some(mut child) = assigned else {
                outcomes[index].error = Some("the supervisor did not start".to_owned());
                continue;
            };
            if let Err(error) = inserted {
                // No record, no instance: do not leave an unsupervisable VM behind.
                child.kill();
                return Err(error);
            }
            // The supervisor outlives us; it is reparented when this process exits.
            drop(child);
        }
    }
    drop(sender);
    let deadline = Instant::now() + options.timeout;
    let mut pending = outcomes.len();
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((index, line, at)) = receiver.recv_timeout(left) else {
            break;
        };
        pending -= 1;
        let outcome = &mut outcomes[index];
        match parse_notice(&line) {
            Notice::Ready(boot_us) => {
                let ready_us = at.duration_since(options.started).as_micros() as u64;
                outcome.ready_us = Some(ready_us);
                outcome.boot_time_us = Some(boot_us);
                outcome.overhead_us = Some(ready_us.saturating_sub(boot_us));
            }
            Notice::Failed(message) => outcome.error = Some(message),
        }
    }
    // The supervisors tell us before they write the store; record what we saw so that a `status`
    // right after `launch` agrees with it (a no-op when the supervisor got there first or moved on).
    for outcome in &outcomes {
        if let Some(boot_us) = outcome.boot_time_us {
            let _ = state.store.update_instance(&outcome.instance, &mut |r| {
                if r.state == InstanceState::Starting {
                    r.state = InstanceState::Running;
                    r.boot_time_us = Some(boot_us);
                }
            });
        }
    }
    for outcome in outcomes
        .iter_mut()
        .filter(|o| o.ready_us.is_none() && o.error.is_none())
    {
        outcome.error = Some(format!(
            "no boot marker within {} s (the instance is still supervised; see `hv-compute logs {}`)",
            options.timeout.as_secs(),
            outcome.instance
        ));
    }
    Ok(outcomes)
}

enum Notice {
    Ready(u64),
    Failed(String),
}

fn parse_notice(line: &str) -> Notice {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ready ") {
        if let Ok(us) = rest.parse() {
            return Notice::Ready(us);
        }
    }
    match line.strip_prefix("failed ") {
        Some(message) => Notice::Failed(message.to_owned()),
        None if line.is_empty() => {
            Notice::Failed("the supervisor ended without a report (see supervisor.log)".into())
        }
        None => Notice::Failed(line.to_owned()),
    }
}

/// Allocates `UNIT.N` (the smallest N without a record), creates its folder with the resolved spec and
/// returns the record to insert.
fn prepare_instance(
    state: &State,
    unit: &ResolvedUnit,
    revision: u64,
) -> Result<(String, InstanceRecord), LaunchError> {
    let existing = state.store.instances().map_err(LaunchError::Store)?;
    let mut n = 0;
    let id = loop {
        let id = format!("{}.{n}", unit.name);
        if !existing.iter().any(|r| r.id == id) {
            break id;
        }
        n += 1;
    };
    let dir = state.instance_dir(&id);
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770));
    let spec_path = dir.join("resolved.json");
    let json = serde_json::to_vec_pretty(unit).map_err(|source| LaunchError::Spec {
        id: id.clone(),
        source,
    })?;
    std::fs::write(&spec_path, json).map_err(io_error(&spec_path))?;
    let now = now_unix_ms();
    let record = InstanceRecord {
        id: id.clone(),
        unit: unit.name.clone(),
        unit_revision: revision,
        state: InstanceState::Starting,
        stop_requested: false,
        supervisor_pid: None,
        vmm_pid: None,
        api_socket: dir.join("api.sock").display().to_string(),
        serial_log: dir.join("serial.log").display().to_string(),
        vmm_log: dir.join("vmm.log").display().to_string(),
        boot_time_us: None,
        restarts: 0,
        last_exit_code: None,
        last_error: None,
        created_unix_ms: now,
        updated_unix_ms: now,
    };
    Ok((id, record))
}
