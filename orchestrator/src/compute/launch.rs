//! Launching and supervising instances on hv-vmm.
//!
//! `launch` records the unit revision, creates one folder per instance under the state dir and starts a
//! detached supervisor (`hv-compute __supervise ID`, its own process group) for each. The supervisor runs
//! hv-vmm with the resolved settings (serial output to the instance's `serial.log`), watches hv-vmm's
//! stderr for `hv-vmm: guest ready after <N> us`, tells `launch` through a pipe (one line), keeps the
//! instance record current, and applies the unit's restart policy when hv-vmm exits. `stop` marks the
//! instance as wanted-stopped (so it is not restarted), asks hv-vmm to shut down over its API socket and
//! falls back to SIGTERM, then SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::resolve::{ResolvedUnit, RestartPolicy};
use super::state::State;
use crate::store::{now_unix_ms, InstanceRecord, InstanceState, Store, StoreError};

/// The line hv-vmm prints on stderr when the guest writes its boot marker.
pub const READY_PREFIX: &str = "hv-vmm: guest ready after ";

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

/// Supervisor processes started as soon as `launch` has parsed its arguments, so that their exec and
/// start-up overlap launch's own work (loading specs, resolving, the store). Each waits for its
/// instance id on stdin (`__supervise -`); an unused one sees end-of-file and exits.
#[derive(Debug)]
pub struct SupervisorPool {
    exe: PathBuf,
    state_dir: PathBuf,
    vmm: PathBuf,
    idle: Vec<std::process::Child>,
    /// The initial supervisors, spawned on a helper thread (spawning blocks for the child's exec).
    starting: Option<std::thread::JoinHandle<Vec<std::process::Child>>>,
}

impl SupervisorPool {
    /// Starts `count` idle supervisors (more are started on demand).
    pub fn prestart(
        state_dir: &Path,
        vmm: Option<&Path>,
        count: usize,
    ) -> Result<Self, LaunchError> {
        let vmm = locate_vmm(vmm)?;
        let exe = std::env::current_exe().map_err(|source| LaunchError::Spawn {
            program: PathBuf::from("hv-compute"),
            source,
        })?;
        let state_dir = state_dir.to_owned();
        let starting = {
            let (exe, state_dir, vmm) = (exe.clone(), state_dir.clone(), vmm.clone());
            // A failed spawn here is retried (and reported) by `assign`.
            std::thread::spawn(move || {
                (0..count)
                    .filter_map(|_| Self::spawn_supervisor(&exe, &state_dir, &vmm).ok())
                    .collect()
            })
        };
        Ok(SupervisorPool {
            exe,
            state_dir,
            vmm,
            idle: Vec::new(),
            starting: Some(starting),
        })
    }

    fn spawn_one(&self) -> std::io::Result<std::process::Child> {
        Self::spawn_supervisor(&self.exe, &self.state_dir, &self.vmm)
    }

    fn spawn_supervisor(
        exe: &Path,
        state_dir: &Path,
        vmm: &Path,
    ) -> std::io::Result<std::process::Child> {
        Command::new(exe)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--vmm")
            .arg(vmm)
            .arg("__supervise")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C on the launching terminal must not kill the VM.
            .process_group(0)
            .spawn()
    }

    /// Hands instance `id` to an idle supervisor (starting one if none is left).
    fn assign(&mut self, id: &str) -> std::io::Result<std::process::Child> {
        if let Some(starting) = self.starting.take() {
            self.idle.extend(starting.join().unwrap_or_default());
        }
        let mut child = match self.idle.pop() {
            Some(child) => child,
            None => self.spawn_one()?,
        };
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("supervisor has no stdin"))?;
        writeln!(stdin, "{id}")?;
        Ok(child)
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
    // hv-vmm's command line has no disk, network or device flags yet: say so rather than drop silently.
    for (what, count) in [
        ("disks", unit.disks.len()),
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
                        let stdout = child.stdout.take();
                        let sender = sender.clone();
                        std::thread::spawn(move || {
                            let mut line = String::new();
                            if let Some(stdout) = stdout {
                                let _ = BufReader::new(stdout).read_line(&mut line);
                            }
                            let _ = sender.send((index, line, Instant::now()));
                        });
                        let mut record = record.clone();
                        record.supervisor_pid = Some(child.id());
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
                    program: pool.exe.clone(),
                    source,
                });
            }
            let Some(mut child) = assigned else {
                outcomes[index].error = Some("the supervisor did not start".to_owned());
                continue;
            };
            if let Err(error) = inserted {
                // No record, no instance: do not leave an unsupervisable VM behind.
                let _ = child.kill();
                let _ = child.wait();
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

/// Parses hv-vmm's ready line into microseconds.
pub fn parse_ready_line(line: &str) -> Option<u64> {
    line.trim_end()
        .strip_prefix(READY_PREFIX)?
        .strip_suffix(" us")?
        .parse()
        .ok()
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

/// The hv-vmm command line for a prepared unit (contract: `hv-vmm run --kernel ... --api-socket ...`).
pub fn vmm_args(unit: &ResolvedUnit, api_socket: &str) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--kernel".to_owned(),
        unit.kernel.clone().unwrap_or_default(),
    ];
    if let Some(initrd) = &unit.initrd {
        args.extend(["--initrd".to_owned(), initrd.clone()]);
    }
    if let Some(cmdline) = &unit.cmdline {
        args.extend(["--cmdline".to_owned(), cmdline.clone()]);
    }
    args.extend([
        "--vcpus".to_owned(),
        unit.vcpus.to_string(),
        "--memory".to_owned(),
        format!("{}M", unit.memory_mib),
        "--serial".to_owned(),
        if unit.serial_log { "stdio" } else { "none" }.to_owned(),
        "--api-socket".to_owned(),
        api_socket.to_owned(),
    ]);
    args
}

/// Runs in the detached supervisor process: starts hv-vmm, reports readiness once on stdout, restarts
/// per policy, and records every transition. hv-vmm is started before the store is opened so that the
/// store's open cost is not on the launch-to-ready path.
pub fn supervise(
    state_dir: &Path,
    id: &str,
    vmm: Option<&Path>,
    started: Instant,
) -> Result<(), LaunchError> {
    let dir = state_dir.join("instances").join(id);
    let spec_path = dir.join("resolved.json");
    let text = std::fs::read(&spec_path).map_err(io_error(&spec_path))?;
    let unit: ResolvedUnit = serde_json::from_slice(&text).map_err(|source| LaunchError::Spec {
        id: id.to_owned(),
        source,
    })?;
    let api_socket = dir.join("api.sock").display().to_string();
    let serial_log = dir.join("serial.log");
    let vmm_log_path = dir.join("vmm.log");
    let mut notify = Some(std::io::stdout());
    let mut tell = |message: String| {
        if let Some(mut out) = notify.take() {
            let _ = writeln!(out, "{message}");
            let _ = out.flush();
        }
    };
    let mut vmm_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&vmm_log_path)
        .map_err(io_error(&vmm_log_path))?;
    let mut store: Option<State> = None;
    loop {
        let _ = std::fs::remove_file(&api_socket);
        let spawned = locate_vmm(vmm).and_then(|vmm| {
            let serial: Stdio = if unit.serial_log {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&serial_log)
                    .map_err(io_error(&serial_log))?
                    .into()
            } else {
                Stdio::null()
            };
            Command::new(&vmm)
                .args(vmm_args(&unit, &api_socket))
                .stdin(Stdio::null())
                .stdout(serial)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| LaunchError::Spawn {
                    program: vmm,
                    source,
                })
        });
        if let Ok(child) = &spawned {
            // Overhead accounting (docs/compute.md): supervisor exec -> hv-vmm spawned.
            eprintln!(
                "supervisor: hv-vmm pid {} spawned {} us after the instance was assigned",
                child.id(),
                started.elapsed().as_micros()
            );
        }
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                tell(format!("failed {error}"));
                let state = open_store(&mut store, state_dir)?;
                let _ = state.store.update_instance(id, &mut |r| {
                    r.state = InstanceState::Failed;
                    r.last_error = Some(error.to_string());
                });
                return Err(error);
            }
        };
        let pid = child.id();
        // Record the pid from a helper thread with its own connection: the store may be busy (launch
        // holds the write lock while it starts the next supervisor) and hv-vmm's ready line must not
        // wait in the pipe meanwhile.
        let pid_writer = {
            let (dir, id) = (state_dir.to_owned(), id.to_owned());
            std::thread::spawn(move || {
                super::state::open(Some(&dir))
                    .map_err(|e| LaunchError::State(Box::new(e)))?
                    .store
                    .update_instance(&id, &mut |r| r.vmm_pid = Some(pid))
                    .map_err(LaunchError::Store)
                    .map(|_| ())
            })
        };
        let mut last_line = String::new();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(vmm_log, "{line}");
                if let Some(boot_us) = parse_ready_line(&line) {
                    // Tell `launch` first: the record update is not on the launch-to-ready path.
                    tell(format!("ready {boot_us}"));
                    let state = open_store(&mut store, state_dir)?;
                    state
                        .store
                        .update_instance(id, &mut |r| {
                            r.boot_time_us = Some(boot_us);
                            if !r.stop_requested {
                                r.state = InstanceState::Running;
                            }
                        })
                        .map_err(LaunchError::Store)?;
                } else if !line.trim().is_empty() {
                    last_line = line;
                }
            }
        }
        if let Ok(Err(error)) = pid_writer.join() {
            eprintln!("supervisor: could not record hv-vmm's pid: {error}");
        }
        let status = child.wait().map_err(|source| LaunchError::Io {
            path: PathBuf::from("hv-vmm"),
            source,
        })?;
        let code = status.code().unwrap_or_else(|| {
            -std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        });
        let why = if last_line.is_empty() {
            format!("hv-vmm exited with code {code}")
        } else {
            format!("hv-vmm exited with code {code}: {last_line}")
        };
        tell(format!(
            "failed guest ended before its boot marker ({why}){}",
            kvm_hint()
        ));
        let mut restart = false;
        let state = open_store(&mut store, state_dir)?;
        let record = state
            .store
            .update_instance(id, &mut |r| {
                r.vmm_pid = None;
                r.last_exit_code = Some(code);
                let wanted = match unit.restart_policy {
                    RestartPolicy::No => false,
                    RestartPolicy::OnFailure => code != 0,
                    RestartPolicy::Always => true,
                };
                restart = !r.stop_requested && wanted && r.restarts < unit.max_restarts;
                if r.stop_requested {
                    r.state = InstanceState::Stopped;
                } else if restart {
                    r.restarts += 1;
                    r.state = InstanceState::Restarting;
                } else {
                    r.state = if code == 0 {
                        InstanceState::Exited
                    } else {
                        InstanceState::Failed
                    };
                    if code != 0 {
                        r.last_error = Some(why.clone());
                    }
                    if wanted {
                        r.last_error =
                            Some(format!("gave up after {} restarts; {why}", r.restarts));
                    }
                }
            })
            .map_err(LaunchError::Store)?;
        if !restart {
            let _ = std::fs::remove_file(&api_socket);
            return Ok(());
        }
        // Back off a little so a crash loop does not spin the host.
        std::thread::sleep(Duration::from_millis(
            50 * u64::from(record.restarts.min(20)),
        ));
    }
}

/// Opens the state store on first use (the supervisor starts hv-vmm before paying for it).
fn open_store<'a>(slot: &'a mut Option<State>, dir: &Path) -> Result<&'a State, LaunchError> {
    if slot.is_none() {
        *slot = Some(super::state::open(Some(dir)).map_err(|e| LaunchError::State(Box::new(e)))?);
    }
    // Just filled above when it was empty.
    slot.as_ref().ok_or_else(|| LaunchError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other("state store not open"),
    })
}

/// When the guest died early, a missing /dev/kvm permission is the most common cause: say so.
fn kvm_hint() -> String {
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return "; note: this host has no /dev/kvm".to_owned();
    }
    match nix::unistd::access(kvm, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK) {
        Ok(()) => String::new(),
        Err(_) => "; note: /dev/kvm is not read-write for this user (add the user to the group owning /dev/kvm, usually `kvm`)".to_owned(),
    }
}

/// One HTTP/1.1 request over the instance's API socket; returns (status, body).
pub fn api_request(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET /vm` on the instance's socket, if it answers.
pub fn query_vm(socket: &Path) -> Option<serde_json::Value> {
    let (status, body) = api_request(socket, "GET", "/vm").ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn alive(pid: Option<u32>) -> bool {
    pid.is_some_and(|pid| kill(Pid::from_raw(pid as i32), None).is_ok())
}

fn signal(pid: Option<u32>, sig: Signal) -> bool {
    pid.is_some_and(|pid| kill(Pid::from_raw(pid as i32), sig).is_ok())
}

/// Stops instances: no restart, API shutdown, then SIGTERM, then SIGKILL after `timeout`.
/// Returns (instance, how it was stopped).
pub fn stop(
    state: &State,
    ids: &[String],
    timeout: Duration,
) -> Result<Vec<(String, String)>, LaunchError> {
    let mut results = Vec::new();
    let mut waiting = Vec::new();
    for id in ids {
        let record = state
            .store
            .update_instance(id, &mut |r| {
                r.stop_requested = true;
                if r.state.is_active() {
                    r.state = InstanceState::Stopping;
                }
            })
            .map_err(LaunchError::Store)?;
        if !alive(record.vmm_pid) && !alive(record.supervisor_pid) {
            state
                .store
                .update_instance(id, &mut |r| {
                    if r.state.is_active() {
                        r.state = InstanceState::Stopped;
                    }
                })
                .map_err(LaunchError::Store)?;
            results.push((id.clone(), "was not running".to_owned()));
            continue;
        }
        let how = match api_request(Path::new(&record.api_socket), "PUT", "/vm/shutdown") {
            Ok((status, _)) if (200..300).contains(&status) => "API shutdown",
            _ if signal(record.vmm_pid, Signal::SIGTERM) => "SIGTERM",
            _ => "supervisor notified",
        };
        waiting.push((id.clone(), how.to_owned()));
    }
    let deadline = Instant::now() + timeout;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (id, how) in waiting {
            let record = state.store.instance(&id).map_err(LaunchError::Store)?;
            match record {
                Some(r) if r.state.is_active() && alive(r.supervisor_pid) => {
                    if Instant::now() >= deadline {
                        signal(r.vmm_pid, Signal::SIGKILL);
                        still.push((id, "killed after timeout".to_owned()));
                    } else {
                        still.push((id, how));
                    }
                }
                Some(r) if r.state.is_active() => {
                    // The supervisor is gone (killed or crashed): finish its job.
                    signal(r.vmm_pid, Signal::SIGKILL);
                    state
                        .store
                        .update_instance(&id, &mut |r| {
                            r.state = InstanceState::Stopped;
                            r.vmm_pid = None;
                        })
                        .map_err(LaunchError::Store)?;
                    results.push((id, format!("{how}, supervisor gone")));
                }
                _ => results.push((id, how)),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            if Instant::now() >= deadline + Duration::from_secs(5) {
                for (id, _) in waiting.drain(..) {
                    results.push((id, "did not stop; check `hv-compute status`".to_owned()));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(results)
}

/// Forgets instances that are no longer active: their records and folders.
pub fn prune(state: &State) -> Result<Vec<String>, LaunchError> {
    let mut pruned = Vec::new();
    for record in state.store.instances().map_err(LaunchError::Store)? {
        if record.state.is_active() && (alive(record.supervisor_pid) || alive(record.vmm_pid)) {
            continue;
        }
        state
            .store
            .remove_instance(&record.id)
            .map_err(LaunchError::Store)?;
        let dir = state.instance_dir(&record.id);
        let _ = std::fs::remove_dir_all(&dir);
        pruned.push(record.id);
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_ready_line_follows_the_vmm_contract() {
        assert_eq!(
            parse_ready_line("hv-vmm: guest ready after 8512 us\n"),
            Some(8512)
        );
        assert_eq!(parse_ready_line("hv-vmm: guest ready after 8.5 ms"), None);
        assert_eq!(parse_ready_line("RDY"), None);
    }

    #[test]
    fn test_vmm_args_carry_resolved_settings() {
        let unit = ResolvedUnit {
            name: "u".into(),
            description: None,
            tags: vec![],
            policies: vec![],
            blueprint: None,
            vcpus: 2,
            memory_mib: 256,
            memory_current_mib: None,
            cpuset: None,
            placement: None,
            replicas: 1,
            restart_policy: RestartPolicy::No,
            max_restarts: 0,
            kernel: Some("/k".into()),
            initrd: None,
            cmdline: Some("console=ttyS0".into()),
            disks: vec![],
            network: vec![],
            devices: vec![],
            serial_log: true,
            libvirt: Default::default(),
        };
        assert_eq!(
            vmm_args(&unit, "/s").join(" "),
            "run --kernel /k --cmdline console=ttyS0 --vcpus 2 --memory 256M --serial stdio --api-socket /s"
        );
    }
}
