//! Boots every tiny test guest through /dev/kvm with the real `hv-vmm` binary.

mod common;

use common::*;

#[test]
fn test_every_self_exiting_guest_prints_its_output_and_exits_0() {
    if !kvm_or_skip("test_every_self_exiting_guest_prints_its_output_and_exits_0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut booted = 0;
    for guest in hv_test_guests::all()
        .iter()
        .filter(|g| g.exits_by_itself && g.name != "triple")
    {
        let kernel = guest_file(dir.path(), guest.name);
        let vcpus = guest.vcpus.to_string();
        let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--vcpus", &vcpus]);
        assert!(
            out.status.success(),
            "{}: {:?}\nstdout: {}\nstderr: {}",
            guest.name,
            out.status,
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains(guest.expected_serial),
            "{}: expected {:?} on the console, got {:?}",
            guest.name,
            guest.expected_serial,
            out.stdout
        );
        booted += 1;
    }
    assert!(booted >= 7, "only {booted} guests booted");
}

#[test]
fn test_cmdline_reaches_pvh_guest() {
    if !kvm_or_skip("test_cmdline_reaches_pvh_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "cmdline");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "root=/dev/vda quiet hv.test=1",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("CMDLINE:root=/dev/vda quiet hv.test=1\n"),
        "{:?}",
        out.stdout
    );
}

#[test]
fn test_e820_map_matches_memory_size() {
    if !kvm_or_skip("test_e820_map_matches_memory_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "e820");
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", "64M"]);
    assert!(out.status.success(), "{}", out.stderr);
    // RAM from 1 MiB to the end of the 64 MiB guest.
    assert!(
        out.stdout
            .contains("MEM 0000000000100000 0000000003f00000 1"),
        "{}",
        out.stdout
    );
}

#[test]
fn test_linux64_guest_sees_zero_page_e820() {
    if !kvm_or_skip("test_linux64_guest_sees_zero_page_e820") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello64");
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap()]);
    assert!(out.status.success(), "{}", out.stderr);
    // The zero page carries the four entries of arch::memory_map for a small guest.
    assert!(out.stdout.contains("RDY64\nE820 4"), "{:?}", out.stdout);
}

#[test]
fn test_triple_fault_exits_3_with_register_dump() {
    if !kvm_or_skip("test_triple_fault_exits_3_with_register_dump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "triple");
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(out.stdout.contains("BYE"));
    assert!(out.stderr.contains("triple fault"), "{}", out.stderr);
    assert!(out.stderr.contains("RIP="), "{}", out.stderr);
    assert!(out.stderr.contains("CR0="), "{}", out.stderr);
    assert!(
        out.stderr.lines().count() <= 24,
        "dump longer than a screen"
    );
}

#[test]
fn test_boot_marker_is_logged_with_time_since_start() {
    if !kvm_or_skip("test_boot_marker_is_logged_with_time_since_start") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "marker");
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap()]);
    assert!(out.status.success(), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("hv-vmm: guest ready after "))
        .unwrap_or_else(|| panic!("no boot marker line in {:?}", out.stderr));
    let us: u64 = line
        .trim_start_matches("hv-vmm: guest ready after ")
        .trim_end_matches(" us")
        .parse()
        .unwrap();
    assert!(us > 0);
    // The plain hello guest never writes the marker.
    let hello = guest_file(dir.path(), "hello");
    let out = run_vmm(&["--kernel", hello.to_str().unwrap()]);
    assert!(!out.stderr.contains("guest ready"), "{}", out.stderr);
}

#[test]
fn test_serial_file_and_none_modes() {
    if !kvm_or_skip("test_serial_file_and_none_modes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let log = dir.path().join("serial.log");
    let serial = format!("file:{}", log.display());
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--serial", &serial]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "RDY\n");
    assert!(out.stdout.is_empty());
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--serial", "none"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn test_config_file_with_flag_override() {
    if !kvm_or_skip("test_config_file_with_flag_override") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "cmdline");
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "kernel": kernel,
        "memory": "64M",
        "cmdline": "from-file",
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let out = run_vmm(&["--config", config.to_str().unwrap()]);
    assert!(out.stdout.contains("CMDLINE:from-file\n"), "{}", out.stdout);
    let out = run_vmm(&[
        "--config",
        config.to_str().unwrap(),
        "--cmdline",
        "from-flag",
    ]);
    assert!(out.stdout.contains("CMDLINE:from-flag\n"), "{}", out.stdout);
}

#[test]
fn test_initrd_is_accepted_and_guest_still_boots() {
    if !kvm_or_skip("test_initrd_is_accepted_and_guest_still_boots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0x5a; 3 << 20]).unwrap();
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "RDY\n");
}

#[test]
fn test_virtio_disk_is_visible_to_guest_at_announced_address() {
    if !kvm_or_skip("test_virtio_disk_is_visible_to_guest_at_announced_address") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let probe = guest_file(dir.path(), "virtio_probe");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 3 << 20]).unwrap();
    let disk_arg = disk.to_str().unwrap();

    // MagicValue "virt", Version 2, DeviceID 2 (block), capacity 3 MiB = 0x1800 sectors.
    let out = run_vmm(&["--kernel", probe.to_str().unwrap(), "--disk", disk_arg]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("VIRTIO 74726976 2 2 1800\n"),
        "{}",
        out.stdout
    );

    // Without a disk nothing answers at that address: the reads float to all ones.
    let out = run_vmm(&["--kernel", probe.to_str().unwrap()]);
    assert!(
        out.stdout
            .contains("VIRTIO ffffffff ffffffff ffffffff ffffffff\n"),
        "{}",
        out.stdout
    );

    // Each disk is announced with Linux's virtio_mmio.device=<size>@<base>:<irq> syntax.
    let cmdline = guest_file(dir.path(), "cmdline");
    let read_only = format!("{disk_arg},ro");
    let out = run_vmm(&[
        "--kernel",
        cmdline.to_str().unwrap(),
        "--cmdline",
        "quiet",
        "--disk",
        disk_arg,
        "--disk",
        &read_only,
    ]);
    assert!(
        out.stdout.contains(
            "CMDLINE:quiet virtio_mmio.device=0x200@0xd0001000:5 virtio_mmio.device=0x200@0xd0002000:6\n"
        ),
        "{}",
        out.stdout
    );
}
