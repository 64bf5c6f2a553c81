//! Assembles every test guest in asm/ into an ELF in OUT_DIR with the C compiler that the
//! `cc` crate picks for the target, run as a driver (it preprocesses the `.S`, assembles and links).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest sources, one ELF each. Keep in sync with `GUESTS` in src/lib.rs.
const GUESTS: &[&str] = &[
    "hello",
    "marker",
    "smp",
    "timer",
    "pit",
    "serial_irq",
    "cmdline",
    "e820",
    "hello64",
    "halt",
    "triple",
    "virtio_probe",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let asm_dir = manifest_dir.join("asm");
    println!("cargo:rerun-if-changed={}", asm_dir.display());

    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .debug(false)
        .pic(false)
        .opt_level(0)
        .get_compiler();

    for name in GUESTS {
        let source = asm_dir.join(format!("{name}.S"));
        assemble(
            &compiler,
            &asm_dir,
            &source,
            &out_dir.join(format!("{name}.elf")),
        );
    }
}

fn assemble(compiler: &cc::Tool, asm_dir: &Path, source: &Path, output: &Path) {
    let mut command: Command = compiler.to_command();
    command
        .args([
            "-nostdlib",
            "-static",
            "-ffreestanding",
            "-no-pie",
            "-fno-asynchronous-unwind-tables",
        ])
        .arg(format!("-I{}", asm_dir.display()))
        .arg(format!("-Wl,-T,{}", asm_dir.join("guest.ld").display()))
        .args([
            "-Wl,--build-id=none",
            "-Wl,-z,noexecstack",
            "-Wl,--fatal-warnings",
        ])
        .arg("-o")
        .arg(output)
        .arg(source);
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler {:?}: {error}", compiler.path()));
    if !status.success() {
        panic!(
            "assembling {} failed ({status}): {command:?}",
            source.display()
        );
    }
}
