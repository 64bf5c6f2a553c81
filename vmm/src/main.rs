//! `hv-vmm`: runs one VM in this process (see the crate docs and `hv-vmm run --help`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hv_vmm::builder::{build_and_start, CpuidPrefetch, RunningVm};
use hv_vmm::clock::ProcessClock;
use hv_vmm::config::{ByteSize, DiskConfig, SerialMode, VmConfigFile};
use hv_vmm::event::VmmEvent;
use hv_vmm::runtime::{self, ExitReason};
use nix::sys::signal::{SigSet, Signal};

/// Exit code for a VMM-side error (bad input, host problem).
const EXIT_VMM_ERROR: u8 = 1;

const EXIT_CODES: &str = "\
Exit codes:
  0  the guest reset or powered off, or the VM was stopped (SIGTERM, SIGINT, PUT /vm/shutdown)
  1  hv-vmm could not start or run the VM (the message says why)
  2  bad command-line usage
  3  the guest crashed: triple fault, KVM internal error or vCPU failure (registers on stderr)";

/// hv-vmm: a KVM virtual machine monitor, one VM per process.
#[derive(Parser, Debug)]
#[command(name = "hv-vmm", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a VM from a kernel image and run it until the guest resets or powers off.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Kernel image: ELF vmlinux (PVH entry when it has the Xen PVH note, else the 64-bit Linux
    /// boot protocol) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk, placed at the top of low memory below the kernel's limit.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Guest memory, with an optional K, M or G suffix (binary units) [default: 128M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Where COM1 goes: stdio, none, or file:PATH (appended) [default: stdio].
    #[arg(long, value_name = "stdio|none|file:PATH")]
    serial: Option<SerialMode>,
    /// Serve the VM's HTTP API on this Unix socket (GET /vm, PUT /vm/pause|resume|shutdown).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// A raw disk image for the guest, as a virtio-blk device on virtio-mmio (announced on the
    /// kernel command line as `virtio_mmio.device=`); `,ro` makes it read-only. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,
    /// Read the same settings from a JSON file (keys: kernel, initrd, cmdline, vcpus, memory,
    /// serial, api_socket, disks: [{"path", "read_only"}]); flags given on the command line
    /// override it.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
}

impl RunArgs {
    fn into_config_file(self) -> Result<VmConfigFile, hv_vmm::config::ConfigError> {
        let flags = VmConfigFile {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.vcpus,
            memory: self.memory,
            serial: self.serial,
            api_socket: self.api_socket,
            disks: (!self.disks.is_empty()).then_some(self.disks),
        };
        match self.config {
            Some(path) => Ok(VmConfigFile::load(&path)?.overridden_by(flags)),
            None => Ok(flags),
        }
    }
}

/// Prints an error and its causes on one line.
fn report(error: &dyn std::error::Error) {
    let mut line = format!("hv-vmm: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
}

/// SIGTERM/SIGINT are blocked in every thread and collected by one thread with sigwait, so they
/// become ordinary events for the VMM thread.
fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

fn spawn_signal_thread(vm: &RunningVm) -> std::io::Result<()> {
    let events = vm.event_sender.clone();
    std::thread::Builder::new()
        .name("hv-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let set = termination_signals();
            while let Ok(signal) = set.wait() {
                if events.send(VmmEvent::Signal(signal as i32)).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

fn run(args: RunArgs, clock: ProcessClock) -> ExitCode {
    // Block SIGTERM/SIGINT before any thread exists, so every thread inherits the mask and the
    // signal thread alone receives them.
    if let Err(e) = termination_signals().thread_block() {
        report(&e);
        return ExitCode::from(EXIT_VMM_ERROR);
    }
    let cpuid = CpuidPrefetch::start();
    let config = match args.into_config_file().and_then(|f| f.into_vm_config()) {
        Ok(config) => config,
        Err(e) => {
            report(&e);
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    let vm = match build_and_start(config, clock, cpuid) {
        Ok(vm) => vm,
        Err(e) => {
            report(&e);
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    if vm.config.serial == SerialMode::Stdio {
        if let Err(e) = hv_vmm::console::forward_stdin_if_terminal(&vm.serial) {
            report(&e);
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    }
    if let Err(e) = spawn_signal_thread(&vm) {
        report(&e);
        return ExitCode::from(EXIT_VMM_ERROR);
    }
    let reason = runtime::run(&vm);
    match &reason {
        ExitReason::VcpuFailed {
            index,
            reason,
            dump,
        } => eprint!("hv-vmm: vCPU {index} failed: {reason}\n{dump}"),
        ExitReason::Signal(signal) => eprintln!("hv-vmm: stopped by signal {signal}"),
        ExitReason::ApiShutdown => eprintln!("hv-vmm: stopped through the API"),
        ExitReason::GuestReset | ExitReason::GuestShutdown => {}
    }
    if let Ok(mut serial) = vm.serial.lock() {
        serial.flush();
    }
    if let Some(api) = &vm.api {
        api.remove();
    }
    // Leave without unwinding the VM: vCPU threads may be inside KVM_RUN, and the kernel frees the
    // VM, its memory and the threads faster than joining them would. The VM's own destruction is
    // handed to a short-lived child so that it does not delay this exit.
    if std::env::var_os("HV_VMM_SYNC_TEARDOWN").is_none() {
        hv_vmm::vstate::teardown::detach_vm_teardown(&vm.vm, &vm.vcpu_fds);
    }
    std::process::exit(reason.exit_code());
}

fn main() -> ExitCode {
    let clock = ProcessClock::start();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args, clock),
    }
}
