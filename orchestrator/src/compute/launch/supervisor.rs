//! The supervisor process (`hv-compute __supervise`): runs hv-vmm for one instance, reports readiness
//! to `launch`, keeps the record current and applies the restart policy.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_error, locate_vmm, LaunchError};
use crate::compute::resolve::{ResolvedUnit, RestartPolicy};
use crate::compute::state::State;
use crate::store::{InstanceRecord, InstanceState, Store};

/// The line hv-vmm prints on stderr when the guest writes its boot marker.
pub const READY_PREFIX: &str = "hv-vmm: guest ready after ";

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
    // Disks (not CD-ROMs) become hv-vmm's virtio-blk devices; `prepare` has made paths absolute
    // and refused qcow2.
    for disk in unit.disks.iter().filter(|d| d.device == "disk") {
        let mode = if disk.readonly { ",ro" } else { "" };
        args.extend(["--disk".to_owned(), format!("{}{mode}", disk.path)]);
    }
    args
}

/// Parses hv-vmm's ready line into microseconds.
pub fn parse_ready_line(line: &str) -> Option<u64> {
    line.trim_end()
        .strip_prefix(READY_PREFIX)?
        .strip_suffix(" us")?
        .parse()
        .ok()
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
                crate::compute::state::open(Some(&dir))
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
                restart = record_exit(r, &unit, code, &why);
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
        *slot = Some(
            crate::compute::state::open(Some(dir)).map_err(|e| LaunchError::State(Box::new(e)))?,
        );
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

/// Applies hv-vmm's exit to the record and the unit's restart policy; true when it must be restarted.
fn record_exit(record: &mut InstanceRecord, unit: &ResolvedUnit, code: i32, why: &str) -> bool {
    record.vmm_pid = None;
    record.last_exit_code = Some(code);
    let wanted = match unit.restart_policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Always => true,
    };
    if record.stop_requested {
        record.state = InstanceState::Stopped;
        return false;
    }
    if wanted && record.restarts < unit.max_restarts {
        record.restarts += 1;
        record.state = InstanceState::Restarting;
        return true;
    }
    record.state = if code == 0 {
        InstanceState::Exited
    } else {
        InstanceState::Failed
    };
    if wanted {
        record.last_error = Some(format!("gave up after {} restarts; {why}", record.restarts));
    } else if code != 0 {
        record.last_error = Some(why.to_owned());
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InstanceRecord;

    fn unit(policy: RestartPolicy, max_restarts: u32) -> ResolvedUnit {
        serde_json::from_value(serde_json::json!({
            "name": "u", "description": null, "tags": [], "policies": [], "blueprint": null,
            "vcpus": 1, "memory_mib": 32, "memory_current_mib": null, "cpuset": null, "placement": null,
            "replicas": 1, "restart_policy": policy, "max_restarts": max_restarts,
            "kernel": "/k", "initrd": null, "cmdline": null, "disks": [], "network": [], "devices": [],
            "serial_log": true, "libvirt": {}
        }))
        .unwrap()
    }

    fn running() -> InstanceRecord {
        serde_json::from_value(serde_json::json!({
            "id": "u.0", "unit": "u", "unit_revision": 1, "state": "running", "stop_requested": false,
            "supervisor_pid": 1, "vmm_pid": 2, "api_socket": "s", "serial_log": "l", "vmm_log": "v",
            "boot_time_us": 5, "restarts": 0, "last_exit_code": null, "last_error": null,
            "created_unix_ms": 0, "updated_unix_ms": 0
        }))
        .unwrap()
    }

    #[test]
    fn test_record_exit_follows_restart_policy() {
        let mut r = running();
        assert!(!record_exit(&mut r, &unit(RestartPolicy::No, 3), 0, "ok"));
        assert_eq!(
            (r.state, r.vmm_pid, r.last_error.clone()),
            (InstanceState::Exited, None, None)
        );

        let mut r = running();
        assert!(
            !record_exit(&mut r, &unit(RestartPolicy::OnFailure, 3), 0, "ok"),
            "clean exit is final"
        );
        let mut r = running();
        assert!(record_exit(
            &mut r,
            &unit(RestartPolicy::OnFailure, 3),
            3,
            "crash"
        ));
        assert_eq!((r.state, r.restarts), (InstanceState::Restarting, 1));

        let mut r = running();
        r.restarts = 2;
        assert!(!record_exit(
            &mut r,
            &unit(RestartPolicy::Always, 2),
            0,
            "reset"
        ));
        assert_eq!(r.state, InstanceState::Exited);
        assert_eq!(
            r.last_error.as_deref(),
            Some("gave up after 2 restarts; reset")
        );

        let mut r = running();
        r.stop_requested = true;
        assert!(
            !record_exit(&mut r, &unit(RestartPolicy::Always, 9), 143, "killed"),
            "stops are final"
        );
        assert_eq!(r.state, InstanceState::Stopped);

        let mut r = running();
        assert!(!record_exit(&mut r, &unit(RestartPolicy::No, 3), 1, "boom"));
        assert_eq!(
            (r.state, r.last_error.as_deref()),
            (InstanceState::Failed, Some("boom"))
        );
    }

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
            disks: vec![
                disk("/img/root.raw", "disk", false),
                disk("/img/data.raw", "disk", true),
                disk("/img/install.iso", "cdrom", true),
            ],
            network: vec![],
            devices: vec![],
            serial_log: true,
            libvirt: Default::default(),
        };
        assert_eq!(
            vmm_args(&unit, "/s").join(" "),
            "run --kernel /k --cmdline console=ttyS0 --vcpus 2 --memory 256M --serial stdio --api-socket /s \
             --disk /img/root.raw --disk /img/data.raw,ro"
        );
    }

    fn disk(path: &str, device: &str, readonly: bool) -> crate::compute::spec::Disk {
        crate::compute::spec::Disk {
            path: path.into(),
            format: "raw".into(),
            device: device.into(),
            source: "file".into(),
            target: None,
            readonly,
        }
    }
}
