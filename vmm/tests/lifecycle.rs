//! Lifecycle through the API socket and signals, on the `halt` guest (marker, then halts forever).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;

use common::*;

fn http(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Starts `hv-vmm run --kernel KERNEL --api-socket SOCKET EXTRA...` and waits for the socket.
fn spawn_with_api(kernel: &Path, socket: &Path, extra: &[&str]) -> std::process::Child {
    let child = hv_vmm()
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args(["--api-socket", socket.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(socket);
    child
}

fn get_vm(socket: &Path) -> serde_json::Value {
    let (status, body) = http(socket, "GET", "/vm");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn test_api_reports_pauses_resumes_and_shuts_down() {
    if !kvm_or_skip("test_api_reports_pauses_resumes_and_shuts_down") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "halt");
    let socket = dir.path().join("api.sock");
    let child = spawn_with_api(&kernel, &socket, &["--vcpus", "2", "--memory", "256M"]);

    // Wait until the guest has written its boot marker.
    let mut info = get_vm(&socket);
    while info["boot_time_us"].is_null() {
        std::thread::sleep(std::time::Duration::from_millis(5));
        info = get_vm(&socket);
    }
    assert_eq!(info["state"], "running");
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["memory_mib"], 256);
    assert!(info["boot_time_us"].as_u64().unwrap() > 0);

    assert_eq!(http(&socket, "PUT", "/vm/pause").0, 204);
    assert_eq!(get_vm(&socket)["state"], "paused");
    assert_eq!(
        http(&socket, "PUT", "/vm/pause").0,
        204,
        "pause is idempotent"
    );
    assert_eq!(http(&socket, "PUT", "/vm/resume").0, 204);
    assert_eq!(get_vm(&socket)["state"], "running");

    assert_eq!(http(&socket, "GET", "/nothing").0, 404);
    assert_eq!(http(&socket, "DELETE", "/vm").0, 405);

    assert_eq!(http(&socket, "PUT", "/vm/shutdown").0, 204);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("HALT"), "{}", out.stdout);
    assert!(!socket.exists(), "API socket left behind");
}

#[test]
fn test_sigterm_and_sigint_stop_the_vm_with_exit_0() {
    if !kvm_or_skip("test_sigterm_and_sigint_stop_the_vm_with_exit_0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "halt");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let socket = dir.path().join(format!("api-{signal}.sock"));
        let child = spawn_with_api(&kernel, &socket, &[]);
        while get_vm(&socket)["boot_time_us"].is_null() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = finish(child);
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("stopped by signal {signal}")),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn test_second_vmm_cannot_take_a_live_api_socket() {
    if !kvm_or_skip("test_second_vmm_cannot_take_a_live_api_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "halt");
    let socket = dir.path().join("api.sock");
    let first = spawn_with_api(&kernel, &socket, &[]);
    let second = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(second.stderr.contains("in use"), "{}", second.stderr);
    assert_eq!(http(&socket, "PUT", "/vm/shutdown").0, 204);
    assert!(finish(first).status.success());
}
