//! Supervisor processes made ready before `launch` knows its instances, so that starting one is off
//! the launch-to-ready path.
//!
//! Two ways to make one, measured in docs/compute.md ("Benchmarks"):
//! - forked (the default): `fork(2)` without exec, right after argument parsing, while the launch
//!   process is still single-threaded and has opened neither the store nor the catalog. A fork of this
//!   small process costs ~0.1 ms where a process start of `hv-compute` costs 2-5 ms on the dev VM, and
//!   that start was the floor of the orchestrator's overhead.
//! - exec'd (`hv-compute __supervise -`), when the process already has threads (a fork would copy
//!   locks other threads may hold), when a fork fails, when more supervisors are needed than were
//!   forked, or on request with `HV_COMPUTE_SUPERVISOR=exec`.
//!
//! Either way the supervisor runs in its own process group, reads its instance id from its stdin (end
//! of file: not needed, it exits) and writes one notice line to its stdout (see `supervise`).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{locate_vmm, supervise, LaunchError};

/// Set to `exec` to make every supervisor with a process start (the slower design, for comparison).
pub const SUPERVISOR_MODE_ENV: &str = "HV_COMPUTE_SUPERVISOR";

/// One idle or assigned supervisor, seen from `launch`.
#[derive(Debug)]
pub struct Supervisor {
    pub pid: u32,
    /// Its stdin: `launch` writes the instance id here; closing it unused makes it exit.
    assignment: Option<File>,
    /// Its stdout: the one notice line (`ready N` or `failed ...`).
    pub notices: Option<File>,
}

impl Supervisor {
    /// Ends a supervisor whose instance could not be recorded (it must not run an unrecorded VM).
    pub fn kill(&mut self) {
        self.assignment = None;
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }
}

#[derive(Debug)]
pub struct SupervisorPool {
    exe: PathBuf,
    state_dir: PathBuf,
    vmm: PathBuf,
    idle: Vec<Supervisor>,
    /// Exec'd supervisors being started on a helper thread (spawning blocks for the child's exec).
    starting: Option<std::thread::JoinHandle<Vec<Supervisor>>>,
}

impl SupervisorPool {
    /// Makes `count` idle supervisors (more are exec'd on demand). Call it before anything starts a
    /// thread or opens the store, so that they can be forked.
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
        let mut pool = SupervisorPool {
            exe,
            state_dir: state_dir.to_owned(),
            vmm,
            idle: Vec::new(),
            starting: None,
        };
        let exec_wanted = std::env::var(SUPERVISOR_MODE_ENV).is_ok_and(|mode| mode == "exec");
        if !exec_wanted && is_single_threaded() {
            for _ in 0..count {
                // A failed fork is not fatal: `assign` exec's the missing ones (and reports failures).
                let Ok(supervisor) = pool.fork_supervisor() else {
                    break;
                };
                pool.idle.push(supervisor);
            }
            return Ok(pool);
        }
        let (exe, state_dir, vmm) = (pool.exe.clone(), pool.state_dir.clone(), pool.vmm.clone());
        pool.starting = Some(std::thread::spawn(move || {
            (0..count)
                .filter_map(|_| exec_supervisor(&exe, &state_dir, &vmm).ok())
                .collect()
        }));
        Ok(pool)
    }

    /// The hv-compute executable (exec'd supervisors run it).
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Forks an idle supervisor. Only called while the process has one thread (checked by `prestart`)
    /// and before the store is opened: the child then owns a consistent copy of the heap (no lock can
    /// be held by a thread that does not exist in it), no SQLite connection (SQLite forbids using one
    /// across fork), and no tokio runtime (this crate has none). The child never returns from here.
    fn fork_supervisor(&mut self) -> std::io::Result<Supervisor> {
        let (assignment_reader, assignment_writer) = std::io::pipe()?;
        let (notice_reader, notice_writer) = std::io::pipe()?;
        // Unflushed output would be written twice, once by each process.
        let _ = std::io::stdout().flush();
        // `fork::fork` is a safe wrapper around fork(2) (this crate forbids `unsafe`); what makes the
        // call sound is the single-threadedness above.
        match fork::fork() {
            Err(_) => Err(std::io::Error::last_os_error()),
            Ok(fork::Fork::Parent(pid)) => Ok(Supervisor {
                pid: pid as u32,
                assignment: Some(File::from(OwnedFd::from(assignment_writer))),
                notices: Some(File::from(OwnedFd::from(notice_reader))),
            }),
            Ok(fork::Fork::Child) => {
                // Close the other supervisors' pipe ends (or an unused sibling would never see end of
                // file) and launch's own ends of ours.
                self.idle.clear();
                drop(assignment_writer);
                drop(notice_reader);
                let code = run_forked_supervisor(
                    OwnedFd::from(assignment_reader),
                    OwnedFd::from(notice_writer),
                    &self.state_dir,
                    &self.vmm,
                );
                // Never return into launch's code: this process is the supervisor now.
                std::process::exit(code)
            }
        }
    }

    /// Hands instance `id` to an idle supervisor (exec'ing one if none is left).
    pub fn assign(&mut self, id: &str) -> std::io::Result<Supervisor> {
        if let Some(starting) = self.starting.take() {
            self.idle.extend(starting.join().unwrap_or_default());
        }
        let mut supervisor = match self.idle.pop() {
            Some(supervisor) => supervisor,
            // Threads may exist by now (launch reads notices on threads): exec, never fork, here.
            None => exec_supervisor(&self.exe, &self.state_dir, &self.vmm)?,
        };
        let mut assignment = supervisor
            .assignment
            .take()
            .ok_or_else(|| std::io::Error::other("supervisor has no stdin"))?;
        writeln!(assignment, "{id}")?;
        Ok(supervisor)
    }
}

/// True when the calling process has exactly one thread (Linux: one entry in /proc/self/task).
fn is_single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

fn exec_supervisor(exe: &Path, state_dir: &Path, vmm: &Path) -> std::io::Result<Supervisor> {
    let mut child = Command::new(exe)
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
        .spawn()?;
    Ok(Supervisor {
        pid: child.id(),
        assignment: child.stdin.take().map(|s| File::from(OwnedFd::from(s))),
        notices: child.stdout.take().map(|s| File::from(OwnedFd::from(s))),
    })
}

/// The forked child: the same set-up as an exec'd `__supervise -` gets from `exec_supervisor`.
fn run_forked_supervisor(
    assignment: OwnedFd,
    notices: OwnedFd,
    state_dir: &Path,
    vmm: &Path,
) -> i32 {
    // Its own process group: Ctrl-C on the launching terminal must not kill the VM.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let redirected = File::options()
        .write(true)
        .open("/dev/null")
        .ok()
        .and_then(|null| {
            nix::unistd::dup2_stdin(&assignment).ok()?;
            nix::unistd::dup2_stdout(&notices).ok()?;
            // Not launch's terminal: the supervisor outlives it. `supervise_assigned` moves it to
            // the instance's supervisor.log.
            nix::unistd::dup2_stderr(&null).ok()
        });
    drop(assignment);
    drop(notices);
    if redirected.is_none() {
        return 1;
    }
    match supervise_assigned(state_dir, Some(vmm)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("supervisor: {}", error_chain(&error));
            1
        }
    }
}

/// Runs an idle supervisor: waits for its instance id on stdin, logs to the instance's
/// `supervisor.log`, then supervises it. End of file without an id: not needed, returns.
pub fn supervise_assigned(state_dir: &Path, vmm: Option<&Path>) -> Result<(), LaunchError> {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let id = line.trim();
    if id.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let log_path = state_dir.join("instances").join(id).join("supervisor.log");
    if let Ok(log) = File::create(&log_path) {
        let _ = nix::unistd::dup2_stderr(&log);
    }
    supervise(state_dir, id, vmm, started)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
