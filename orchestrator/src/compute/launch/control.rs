//! Talking to running instances: hv-vmm's API socket, stopping, forgetting.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::LaunchError;
use crate::compute::state::State;
use crate::store::{InstanceState, Store};

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
