//! Bad input never panics: one clear line on stderr and a non-zero exit.

mod common;

use common::*;

fn assert_one_line_error(out: &Outcome, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "expected {needle:?} in {:?}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn test_missing_kernel_file_is_named() {
    let out = run_vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_one_line_error(&out, 1, "cannot read kernel /nonexistent/vmlinux");
    assert_eq!(out.stderr.lines().count(), 1);
}

#[test]
fn test_no_kernel_at_all() {
    let out = run_vmm(&[]);
    assert_one_line_error(&out, 1, "no kernel given");
}

#[test]
fn test_file_that_is_neither_elf_nor_bzimage() {
    if !kvm_or_skip("test_file_that_is_neither_elf_nor_bzimage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "just some text, certainly not a kernel\n".repeat(40)).unwrap();
    let out = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_one_line_error(&out, 1, "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn test_bad_size_strings_are_usage_errors() {
    for bad in ["12X", "lots", "1.5G", "-4M"] {
        let out = run_vmm(&["--kernel", "/k", &format!("--memory={bad}")]);
        assert_one_line_error(&out, 2, "invalid size");
    }
}

#[test]
fn test_bad_serial_setting() {
    let out = run_vmm(&["--kernel", "/k", "--serial", "tty"]);
    assert_one_line_error(&out, 2, "invalid serial setting");
}

#[test]
fn test_too_many_and_zero_vcpus() {
    let out = run_vmm(&["--kernel", "/k", "--vcpus", "300"]);
    assert_one_line_error(&out, 1, "300 vCPUs requested");
    let out = run_vmm(&["--kernel", "/k", "--vcpus", "0"]);
    assert_one_line_error(&out, 1, "at least one vCPU");
}

#[test]
fn test_memory_too_small_for_boot_tables() {
    if !kvm_or_skip("test_memory_too_small_for_boot_tables") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", "1M"]);
    assert_one_line_error(&out, 1, "too small");
}

/// An ELF whose loadable segment sits at 256 MiB cannot load into a 128 MiB guest.
#[test]
fn test_kernel_that_does_not_fit_in_memory() {
    if !kvm_or_skip("test_kernel_that_does_not_fit_in_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut elf = hv_test_guests::by_name("hello64").unwrap().elf.to_vec();
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([elf[0x36], elf[0x37]]) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    let mut moved = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1 {
            elf[ph + 0x18..ph + 0x20].copy_from_slice(&(256u64 << 20).to_le_bytes());
            moved += 1;
        }
    }
    assert!(moved > 0);
    let path = dir.path().join("big.elf");
    std::fs::write(&path, elf).unwrap();
    let out = run_vmm(&["--kernel", path.to_str().unwrap(), "--memory", "128M"]);
    assert_one_line_error(&out, 1, "raise --memory");
}

#[test]
fn test_initrd_larger_than_memory() {
    if !kvm_or_skip("test_initrd_larger_than_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 12 << 20]).unwrap();
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "8M",
    ]);
    assert_one_line_error(&out, 1, "does not fit in guest memory");
}

#[test]
fn test_malformed_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"kernel": "/k", "memory": "huge"}"#).unwrap();
    let out = run_vmm(&["--config", config.to_str().unwrap()]);
    assert_one_line_error(&out, 1, "invalid config file");
}

#[test]
fn test_help_documents_every_flag() {
    let out = hv_vmm().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--serial",
        "--api-socket",
        "--config",
        "--disk",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn test_missing_or_malformed_disk() {
    if !kvm_or_skip("test_missing_or_malformed_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        "/nonexistent/disk.raw",
    ]);
    assert_one_line_error(&out, 1, "cannot open disk /nonexistent/disk.raw");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        "/d.raw,fast",
    ]);
    assert_one_line_error(&out, 2, "invalid disk");
}
