//! Boots the PVH test guests under Debian's QEMU (`-M microvm`), a VMM that is not ours, and
//! checks their serial output: a guest that fails here is broken, whatever hv-vmm does.
//!
//! microvm has no i8042, so a guest that resets does not end QEMU: each boot is stopped once the
//! expected text has appeared (or after a generous deadline). `-no-reboot` turns a triple fault
//! into a QEMU exit. hello64 is not here: QEMU boots only PVH ELFs; hv-vmm's tests cover it.
//!
//! Skips with a printed reason when qemu-system-x86_64 is missing, unless CI=true or
//! HV_REQUIRE_TOOLS=1 (then its absence fails the test).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hv_test_guests::Guest;

const QEMU: &str = "qemu-system-x86_64";
/// Guests run emulated on the project's machines; keep far away from any real boot time.
const DEADLINE: Duration = Duration::from_secs(60);

fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
        || std::env::var("HV_REQUIRE_TOOLS").is_ok_and(|value| value == "1")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The QEMU binary, or None (after saying why) when the test should skip.
fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    match find_in_path(QEMU) {
        Some(qemu) => Some(qemu),
        None if tools_required() => panic!("{QEMU} is required (CI=true or HV_REQUIRE_TOOLS=1) but not in PATH; apt-get install qemu-system-x86"),
        None => {
            eprintln!("skipping {test}: {QEMU} not found (apt-get install qemu-system-x86)");
            None
        }
    }
}

fn accelerator() -> &'static str {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm_usable {
        "kvm"
    } else {
        "tcg"
    }
}

/// What came out of one boot.
#[derive(Debug)]
struct Boot {
    serial: String,
    /// QEMU ended by itself (e.g. triple fault with -no-reboot) before we stopped it.
    exited_by_itself: bool,
}

/// Writes `guest` to `dir`, boots it and collects COM1 until `done(serial)` holds, QEMU exits,
/// or the deadline passes.
fn boot(
    qemu: &Path,
    dir: &Path,
    guest: &Guest,
    extra_args: &[&str],
    done: impl Fn(&str) -> bool,
) -> Boot {
    let kernel = dir.join(format!("{}.elf", guest.name));
    std::fs::write(&kernel, guest.elf).expect("write the guest ELF to the temp dir");
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            accelerator(),
            "-m",
            "128",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args([
            "-smp",
            &guest.vcpus.to_string(),
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(&kernel)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let serial = collect_until(&mut child, done);
    let exited_by_itself = matches!(child.try_wait(), Ok(Some(_)));
    let _ = child.kill();
    let _ = child.wait();
    Boot {
        serial,
        exited_by_itself,
    }
}

fn collect_until(child: &mut Child, done: impl Fn(&str) -> bool) -> String {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0_u8; 4096];
        while let Ok(read) = stdout.read(&mut chunk) {
            if read == 0 || sender.send(chunk[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut bytes = Vec::new();
    while let Some(left) = DEADLINE.checked_sub(started.elapsed()) {
        match receiver.recv_timeout(left) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if done(&String::from_utf8_lossy(&bytes)) {
                    break;
                }
            }
            // Disconnected: QEMU closed stdout (exited). Timeout: deadline reached.
            Err(_) => break,
        }
    }
    // A moment for QEMU to exit by itself when it is about to (triple fault).
    std::thread::sleep(Duration::from_millis(200));
    String::from_utf8_lossy(&bytes).into_owned()
}

fn guest(name: &str) -> &'static Guest {
    hv_test_guests::by_name(name).unwrap_or_else(|| panic!("no guest {name}"))
}

/// Boots `name` with its defaults and checks its expected text; returns the boot for more checks.
fn boot_expecting_defaults(test: &str, name: &str, extra_args: &[&str]) -> Option<Boot> {
    let qemu = qemu_or_skip(test)?;
    let dir = tempdir();
    let guest = guest(name);
    let result = boot(&qemu, dir.path(), guest, extra_args, |serial| {
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
    if let Some(result) = boot_expecting_defaults("test_qemu_hello_prints_rdy", "hello", &[]) {
        assert_eq!(result.serial, "RDY\n");
    }
}

#[test]
fn test_qemu_marker_prints_rdy() {
    if let Some(result) = boot_expecting_defaults("test_qemu_marker_prints_rdy", "marker", &[]) {
        assert_eq!(result.serial, "RDY\n");
    }
}

#[test]
fn test_qemu_halt_prints_and_keeps_running() {
    if let Some(result) =
        boot_expecting_defaults("test_qemu_halt_prints_and_keeps_running", "halt", &[])
    {
        assert_eq!(result.serial, "HALT\n");
        assert!(!result.exited_by_itself, "halt must never end the VM");
    }
}

#[test]
fn test_qemu_triple_faults_once() {
    // -no-reboot: the triple fault (a shutdown) ends QEMU; one BYE shows it did not re-run.
    if let Some(result) = boot_expecting_defaults("test_qemu_triple_faults_once", "triple", &[]) {
        assert_eq!(result.serial, "BYE\n");
        assert!(
            result.exited_by_itself,
            "a triple fault must end QEMU under -no-reboot"
        );
    }
}

#[test]
fn test_qemu_timer_ticks_from_the_interrupt_handler() {
    if let Some(result) = boot_expecting_defaults(
        "test_qemu_timer_ticks_from_the_interrupt_handler",
        "timer",
        &[],
    ) {
        assert_eq!(result.serial, "TICK\n");
    }
}

#[test]
fn test_qemu_serial_irq_prints_from_the_interrupt_handler() {
    if let Some(result) = boot_expecting_defaults(
        "test_qemu_serial_irq_prints_from_the_interrupt_handler",
        "serial_irq",
        &[],
    ) {
        assert_eq!(result.serial, "SERIAL IRQ\n");
    }
}

#[test]
fn test_qemu_smp_starts_the_second_vcpu() {
    if let Some(result) =
        boot_expecting_defaults("test_qemu_smp_starts_the_second_vcpu", "smp", &[])
    {
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
    let result = boot(&qemu, dir.path(), &one_vcpu, &[], |serial| {
        serial.contains("SMP TIMEOUT\n")
    });
    assert_eq!(result.serial, "SMP TIMEOUT\n");
    assert!(result.exited_by_itself, "the timeout path triple-faults");
}

#[test]
fn test_qemu_cmdline_prints_the_command_line() {
    let text = "console=ttyS0 hv.test=cmdline";
    if let Some(result) = boot_expecting_defaults(
        "test_qemu_cmdline_prints_the_command_line",
        "cmdline",
        &["-append", text],
    ) {
        assert!(
            result.serial.contains(&format!("CMDLINE:{text}\n")),
            "{:?}",
            result.serial
        );
    }
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
