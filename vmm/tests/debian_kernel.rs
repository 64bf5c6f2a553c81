//! Boots Debian's cloud kernel (fetched by `scripts/fetch-debian-kernel.sh`) as ELF vmlinux (PVH
//! entry) and as bzImage (64-bit Linux boot protocol) until its `Linux version` banner appears on
//! the serial console.
//!
//! Why only the banner: on the project's machines guest code is emulated instruction by
//! instruction (nested KVM through kvm_pvm, ~1.4 µs per instruction) and a stock kernel stops
//! later with KVM_EXIT_INTERNAL_ERROR on an instruction the emulator lacks (`lock cmpxchg16b`,
//! then XSAVE) under every VMM (ENVIRONMENT.md). The banner proves the whole direct-boot path:
//! loader, entry protocol, boot information, command line, memory map and serial console.
//! The bzImage run is slow (its LZ4 decompressor runs emulated: about 2-4 minutes here), hence
//! the generous limits. Both tests run in parallel threads of this one test binary.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn asset(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.guest-assets/debian")
        .join(name);
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("HV_REQUIRE_TOOLS").as_deref() == Ok("1");
    let reason = format!(
        "{} is missing: run scripts/fetch-debian-kernel.sh",
        path.display()
    );
    assert!(
        !required,
        "{reason} (required because CI=true or HV_REQUIRE_TOOLS=1)"
    );
    eprintln!("SKIP: {reason}");
    None
}

/// Runs the kernel until a whole console line containing `marker` arrived (or `limit` passes),
/// then stops the VMM with SIGTERM. Returns the console output.
fn boot_until(kernel: &PathBuf, vcpus: u8, marker: &str, limit: Duration) -> String {
    let mut child = hv_vmm()
        .args([
            "run",
            "--memory",
            "512M",
            "--vcpus",
            &vcpus.to_string(),
            "--kernel",
        ])
        .arg(kernel)
        .args([
            "--cmdline",
            "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut console = Vec::new();
    while !has_complete_line(&String::from_utf8_lossy(&console), marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => console.extend(chunk),
            Err(_) => break,
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    String::from_utf8_lossy(&console).into_owned()
}

/// True once a whole line holding `marker` has arrived.
fn has_complete_line(console: &str, marker: &str) -> bool {
    console
        .find(marker)
        .is_some_and(|at| console[at..].contains('\n'))
}

fn assert_banner(console: &str, what: &str) {
    let banner = console
        .lines()
        .find(|l| l.contains("Linux version"))
        .unwrap_or_else(|| panic!("{what}: no banner; console so far:\n{console}"));
    assert!(banner.contains("Linux version 6."), "{banner}");
}

/// The PVH path gets further in little time: past the banner to the kernel's SMP enumeration,
/// which must find both vCPUs in our ACPI MADT (this kernel has no MP-table support).
#[test]
fn test_debian_vmlinux_pvh_boots_past_banner_and_sees_both_vcpus() {
    if !kvm_or_skip("test_debian_vmlinux_pvh_boots_past_banner_and_sees_both_vcpus") {
        return;
    }
    let Some(kernel) = asset("vmlinux") else {
        return;
    };
    let console = boot_until(&kernel, 2, "smpboot: Allowing", Duration::from_secs(300));
    assert_banner(&console, "vmlinux (PVH)");
    assert!(
        console.contains("Command line: console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1"),
        "{console}"
    );
    assert!(
        console.contains("ACPI: Using ACPI (MADT) for SMP configuration"),
        "{console}"
    );
    assert!(console.contains("smpboot: Allowing 2 CPUs"), "{console}");
}

#[test]
fn test_debian_bzimage_prints_banner() {
    if !kvm_or_skip("test_debian_bzimage_prints_banner") {
        return;
    }
    let Some(kernel) = asset("vmlinuz") else {
        return;
    };
    let console = boot_until(&kernel, 1, "Linux version", Duration::from_secs(900));
    assert_banner(&console, "bzImage");
}
