//! Side-by-side boot benchmark: hv-vmm vs QEMU `-M microvm` on the same tiny PVH guest (`hello`:
//! prints RDY on COM1, then resets through the i8042), plus resident memory outside guest RAM.
//!
//! `cargo bench -p hv-benches --bench vmm_boot` after `cargo build --release -p hv-vmm`
//! (or just `scripts/bench.sh`). `HV_BENCH_ITERS` sets the runs per VMM (default 30); runs of the
//! two VMMs alternate so that both see the same machine load.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hv_benches::process::{
    hv_vmm_binaries, memory_use, on_path, start_until_marker, time_run, MemoryUse, RunTiming,
};
use hv_benches::stats::{ms, summarize};

const GUEST_MIB: u64 = 128;

fn hv_vmm_command(bin: &Path, kernel: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "--memory", "128M", "--vcpus", "1", "--kernel"])
        .arg(kernel);
    c
}

fn qemu_command(bin: &Path, kernel: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(kernel);
    c
}

fn row(name: &str, runs: &[RunTiming]) -> String {
    let ready: Vec<Duration> = runs.iter().map(|r| r.ready).collect();
    let exits: Vec<Duration> = runs.iter().filter_map(|r| r.exit).collect();
    let r = summarize(&ready).expect("at least one run");
    let cpu: Vec<Duration> = runs.iter().map(|r| r.cpu).collect();
    let cpu = summarize(&cpu).expect("at least one run");
    let exit = summarize(&exits)
        .map(|e| format!("{} ({}–{})", ms(e.median), ms(e.p10), ms(e.p90)))
        .unwrap_or_else(|| "does not exit (no i8042)".into());
    format!(
        "| {name} | {} | {} ({}–{}) | {exit} | {} |",
        r.count,
        ms(r.median),
        ms(r.p10),
        ms(r.p90),
        ms(cpu.median)
    )
}

fn measure_memory(command: Command, marker: &str) -> Option<MemoryUse> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let mut child = start_until_marker(
            {
                let mut c = Command::new(command.get_program());
                c.args(command.get_args());
                c
            },
            marker,
        )
        .ok()?;
        // Let start-up work settle (threads parked, guest halted).
        std::thread::sleep(Duration::from_millis(200));
        let sample = memory_use(child.id(), GUEST_MIB * 1024).ok();
        let _ = child.kill();
        let _ = child.wait();
        samples.push(sample?);
    }
    samples.sort_by_key(|m| m.overhead_rss_kib);
    samples.get(1).copied()
}

fn memory_row(name: &str, m: Option<MemoryUse>) -> String {
    match m {
        Some(m) if m.guest_rss_kib > 0 || m.overhead_rss_kib > 0 => format!(
            "| {name} | {:.2} | {:.2} | {} |",
            m.overhead_rss_kib as f64 / 1024.0,
            m.overhead_private_kib as f64 / 1024.0,
            m.guest_rss_kib
        ),
        _ => format!("| {name} | n/a | n/a | n/a |"),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a single round then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iterations: usize = if quick {
        1
    } else {
        std::env::var("HV_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30)
    };
    let hv_builds = hv_vmm_binaries();
    if hv_builds.is_empty() {
        eprintln!("hv-vmm release binary not found: run `cargo build --release -p hv-vmm` first (or set HV_VMM_BIN)");
        std::process::exit(if quick { 0 } else { 1 });
    }
    let qemu = on_path("qemu-system-x86_64");
    let dir = tempfile::tempdir().expect("temporary directory");
    let write_guest = |name: &str| {
        let guest = hv_test_guests::by_name(name).expect("guest exists");
        let path = dir.path().join(format!("{name}.elf"));
        std::fs::write(&path, guest.elf).expect("write guest");
        path
    };
    let hello = write_guest("hello");
    let halt = write_guest("halt");

    let mut hv_runs: Vec<Vec<RunTiming>> = vec![Vec::new(); hv_builds.len()];
    let mut qemu_runs = Vec::new();
    for _ in 0..iterations {
        for ((label, bin), runs) in hv_builds.iter().zip(hv_runs.iter_mut()) {
            match time_run(hv_vmm_command(bin, &hello), "RDY", true) {
                Ok(t) => runs.push(t),
                Err(e) => panic!("{label}: {e}"),
            }
        }
        if let Some(q) = &qemu {
            match time_run(qemu_command(q, &hello), "RDY", false) {
                Ok(t) => qemu_runs.push(t),
                Err(e) => panic!("qemu: {e}"),
            }
        }
    }

    println!("### Boot: exec → guest prints RDY → process exit (ms, median (p10–p90))\n");
    println!("| VMM | runs | exec → RDY | exec → exit | CPU time (user+sys) |");
    println!("|---|---|---|---|---|");
    for ((label, _), runs) in hv_builds.iter().zip(&hv_runs) {
        println!("{}", row(label, runs));
    }
    match &qemu {
        Some(_) => println!("{}", row("QEMU -M microvm", &qemu_runs)),
        None => println!("| QEMU -M microvm | 0 | qemu-system-x86_64 not installed | | |"),
    }
    let qemu_ready = summarize(&qemu_runs.iter().map(|r| r.ready).collect::<Vec<_>>());
    for ((label, _), runs) in hv_builds.iter().zip(&hv_runs) {
        let hv_ready = summarize(&runs.iter().map(|r| r.ready).collect::<Vec<_>>());
        if let (Some(hv_r), Some(q_r)) = (hv_ready, qemu_ready) {
            println!(
                "\n{label} reaches RDY in {:.1}% of QEMU microvm's time (median).",
                100.0 * hv_r.median.as_secs_f64() / q_r.median.as_secs_f64()
            );
        }
    }

    println!("\n### Resident memory outside guest RAM, 1 vCPU / 128 MiB, guest halted (MiB)\n");
    println!("| VMM | RSS outside guest RAM | of which private | guest RAM resident (KiB) |");
    println!("|---|---|---|---|");
    for (label, bin) in &hv_builds {
        let measured = measure_memory(hv_vmm_command(bin, &halt), "HALT");
        println!("{}", memory_row(label, measured));
    }
    if let Some(q) = &qemu {
        println!(
            "{}",
            memory_row(
                "QEMU -M microvm",
                measure_memory(qemu_command(q, &halt), "HALT")
            )
        );
    }
}
