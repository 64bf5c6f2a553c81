//! Boots the PVH test guests under Debian's QEMU (`-M microvm`), a VMM that is not ours, and
//! checks their serial output: a guest that fails here is broken, whatever hv-vmm does.
//!
//! microvm has no i8042, so a guest that resets does not end QEMU: each boot is stopped once the
//! expected text has appeared (or after a generous deadline). `-no-reboot` turns a triple fault
//! into a QEMU exit. hello64 is not here: QEMU boots only PVH ELFs; hv-vmm's tests cover it.
//! Skips without qemu-system-x86_64 unless CI=true or HV_REQUIRE_TOOLS=1 (tests/common).

mod common;

use std::path::Path;

use common::{qemu_or_skip, Boot, GUEST_DEADLINE};
use hv_test_guests::Guest;

/// Writes `guest` to `dir` and boots it with 128 MiB and its vCPU count.
fn boot(
    qemu: &Path,
    dir: &Path,
    guest: &Guest,
    extra_args: &[&str],
    done: impl Fn(&str) -> bool,
) -> Boot {
    let kernel = dir.join(format!("{}.elf", guest.name));
    std::fs::write(&kernel, guest.elf).expect("write the guest ELF to the temp dir");
    let vcpus = guest.vcpus.to_string();
    let mut args = vec!["-m", "128", "-smp", &vcpus];
    args.extend_from_slice(extra_args);
    common::boot(qemu, &kernel, &args, GUEST_DEADLINE, done)
}

fn guest(name: &str) -> &'static Guest {
    hv_test_guests::by_name(name).unwrap_or_else(|| panic!("no guest {name}"))
}

/// Boots `name` with its defaults and checks its expected text; returns the boot for more checks.
fn boot_expecting_defaults(test: &str, name: &str) -> Option<Boot> {
    let qemu = qemu_or_skip(test)?;
    let dir = tempdir();
    let guest = guest(name);
    let result = boot(&qemu, dir.path(), guest, &[], |serial| {
        serial.contains(guest.expected_serial)
    });
    assert!(
        result.serial.contains(guest.expected_serial),
        "{name}: expected {:?} on COM1, got {:?}",
        guest.expected_serial,
        result.serial
    );
    Some(result)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temp dir")
}

#[test]
fn test_qemu_hello_prints_rdy() {
    if let Some(result) = boot_expecting_defaults("test_qemu_hello_prints_rdy", "hello") {
        assert_eq!(result.serial, "RDY\n");
    }
}

#[test]
fn test_qemu_marker_prints_rdy() {
    if let Some(result) = boot_expecting_defaults("test_qemu_marker_prints_rdy", "marker") {
        assert_eq!(result.serial, "RDY\n");
    }
}

#[test]
fn test_qemu_halt_prints_and_keeps_running() {
    if let Some(result) = boot_expecting_defaults("test_qemu_halt_prints_and_keeps_running", "halt")
    {
        assert_eq!(result.serial, "HALT\n");
        assert!(!result.exited_by_itself, "halt must never end the VM");
    }
}

#[test]
fn test_qemu_triple_faults_once() {
    let Some(qemu) = qemu_or_skip("test_qemu_triple_faults_once") else {
        return;
    };
    let dir = tempdir();
    // -no-reboot: the triple fault (a shutdown) ends QEMU, so wait for that; one BYE shows the
    // guest did not run again.
    let result = boot(&qemu, dir.path(), guest("triple"), &[], |_| false);
    assert_eq!(result.serial, "BYE\n");
    assert!(
        result.exited_by_itself,
        "a triple fault must end QEMU under -no-reboot"
    );
}

#[test]
fn test_qemu_timer_ticks_from_the_interrupt_handler() {
    if let Some(result) =
        boot_expecting_defaults("test_qemu_timer_ticks_from_the_interrupt_handler", "timer")
    {
        assert_eq!(result.serial, "TICK\n");
    }
}

#[test]
fn test_qemu_pit_ticks_through_the_legacy_pic() {
    if let Some(result) =
        boot_expecting_defaults("test_qemu_pit_ticks_through_the_legacy_pic", "pit")
    {
        assert_eq!(result.serial, "PIT TICK\n");
    }
}

#[test]
fn test_qemu_serial_irq_prints_from_the_interrupt_handler() {
    if let Some(result) = boot_expecting_defaults(
        "test_qemu_serial_irq_prints_from_the_interrupt_handler",
        "serial_irq",
    ) {
        assert_eq!(result.serial, "SERIAL IRQ\n");
    }
}

#[test]
fn test_qemu_smp_starts_the_second_vcpu() {
    if let Some(result) = boot_expecting_defaults("test_qemu_smp_starts_the_second_vcpu", "smp") {
        assert_eq!(result.serial, "AP1\nSMP OK\n");
    }
}

#[test]
fn test_qemu_smp_reports_timeout_without_a_second_vcpu() {
    let Some(qemu) = qemu_or_skip("test_qemu_smp_reports_timeout_without_a_second_vcpu") else {
        return;
    };
    let dir = tempdir();
    let one_vcpu = Guest {
        vcpus: 1,
        ..*guest("smp")
    };
    // The timeout path triple-faults, which ends QEMU: wait for that.
    let result = boot(&qemu, dir.path(), &one_vcpu, &[], |_| false);
    assert_eq!(result.serial, "SMP TIMEOUT\n");
    assert!(result.exited_by_itself, "the timeout path triple-faults");
}

#[test]
fn test_qemu_cmdline_prints_the_command_line() {
    let Some(qemu) = qemu_or_skip("test_qemu_cmdline_prints_the_command_line") else {
        return;
    };
    let dir = tempdir();
    let text = "console=ttyS0 hv.test=cmdline";
    let line = format!("CMDLINE:{text}\n");
    // Wait for the whole line: the guest's expected_serial is only its prefix.
    let result = boot(
        &qemu,
        dir.path(),
        guest("cmdline"),
        &["-append", text],
        |serial| serial.contains(&line),
    );
    assert_eq!(result.serial, line);
}

#[test]
fn test_qemu_e820_prints_the_ram_above_one_mib() {
    let Some(qemu) = qemu_or_skip("test_qemu_e820_prints_the_ram_above_one_mib") else {
        return;
    };
    let dir = tempdir();
    let result = boot(&qemu, dir.path(), guest("e820"), &[], |serial| {
        serial.contains("E820 END ") && serial.ends_with('\n')
    });
    // 128 MiB of RAM: QEMU maps [1 MiB, 128 MiB) as usable (type 1).
    assert!(
        result
            .serial
            .contains("MEM 0000000000100000 0000000007f00000 1\n"),
        "{:?}",
        result.serial
    );
    let entries = result
        .serial
        .lines()
        .filter(|line| line.starts_with("MEM "))
        .count();
    let count_line = result
        .serial
        .lines()
        .find_map(|line| line.strip_prefix("E820 END "))
        .expect("E820 END line");
    assert_eq!(
        usize::from_str_radix(count_line, 16),
        Ok(entries),
        "{:?}",
        result.serial
    );
}
