//! Builds a running VM from a [`VmConfig`]: KVM VM, memory, kernel, boot tables, devices, vCPU
//! threads. Order matters for start-up latency: nothing is done that the first guest instruction
//! does not need, and the vCPUs start last.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hv_devices::legacy::{
    BootMarker, Serial, SerialOutput, BOOT_MARKER_MMIO_ADDR, BOOT_MARKER_MMIO_LEN, COM1_IRQ,
    COM1_PORT_BASE, COM1_PORT_LEN, I8042, I8042_PORT_BASE, I8042_PORT_LEN,
};
use hv_devices::trigger::{CallbackTrigger, EventFdTrigger};
use hv_devices::virtio::block::{Block, BlockConfig};
use hv_devices::virtio::mmio::{kernel_cmdline_fragment, MmioTransport, MMIO_REGION_SIZE};
use hv_devices::virtio::Interrupt;
use hv_devices::BusError;
use hv_storage::raw::RawFileBackend;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{spawn_api_server, ApiError, ApiSocket};
use crate::arch::acpi::{self, AcpiError};
use crate::arch::boot::{write_pvh_start_info, write_zero_page, BootInfoError, BootProtocol};
use crate::arch::cpuid::Topology;
use crate::arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_SLOT, VIRTIO_MMIO_START,
};
use crate::arch::memory_map::memory_map;
use crate::arch::mptable::{self, MpTableError};
use crate::arch::regs::{write_boot_descriptor_tables, write_identity_page_tables, RegsError};
use crate::clock::{ProcessClock, StartupTrace};
use crate::config::{SerialMode, VmConfig};
use crate::event::{IoBuses, VmmEvent};
use crate::loader::{load_initrd, load_kernel, LoaderError};
use crate::vstate::kvm::{open_kvm, KvmError};
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{
    create_vcpu, install_kick_handler, supported_cpuid, RunControl, Vcpu, VcpuError,
};
use crate::vstate::vm::{Vm, VmError};

/// "Boot marker not written yet".
pub const BOOT_TIME_UNSET: u64 = u64::MAX;
/// Stack of a vCPU thread: the run loop and device emulation need little.
const VCPU_STACK_BYTES: usize = 256 * 1024;

/// Errors building the VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("{requested} vCPUs requested but this host's KVM allows at most {max}")]
    TooManyVcpus { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("invalid kernel command line (at most {CMDLINE_MAX_SIZE} bytes of printable ASCII)")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line to guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the {what}")]
    Device {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("device address conflict")]
    Bus(#[from] BusError),
    #[error("cannot open serial output file {path}")]
    SerialFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot open disk {path}")]
    Disk {
        path: std::path::PathBuf,
        #[source]
        source: hv_storage::tier::TierError,
    },
    #[error("cannot install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start vCPU thread {index}")]
    Thread {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    pub config: VmConfig,
    /// Kept alive for the VM's lifetime (owns the memory the vCPUs run in).
    pub vm: Vm,
    pub vcpu_threads: Vec<JoinHandle<()>>,
    /// The vCPU file descriptors (owned by the vCPU threads), for the teardown hand-off.
    pub vcpu_fds: Vec<std::os::fd::RawFd>,
    pub control: Arc<RunControl>,
    pub events: Receiver<VmmEvent>,
    /// For the VMM's own event sources (signals, API).
    pub event_sender: Sender<VmmEvent>,
    pub serial: Arc<Mutex<Serial>>,
    /// Microseconds from process start to the boot marker, or [`BOOT_TIME_UNSET`].
    pub boot_time_us: Arc<AtomicU64>,
    pub api: Option<ApiSocket>,
}

fn serial_output(mode: &SerialMode) -> Result<SerialOutput, BuildError> {
    let device_err = |source| BuildError::Device {
        what: "serial output",
        source,
    };
    Ok(match mode {
        // A dup of fd 1 as a File: unbuffered, unlike `std::io::stdout()`.
        SerialMode::Stdio => Box::new(File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(device_err)?,
        )),
        SerialMode::None => Box::new(std::io::sink()),
        SerialMode::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

/// Guest-physical base and IRQ line of the virtio-mmio slot for disk `index`.
fn disk_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SLOT,
        VIRTIO_FIRST_IRQ + index as u32,
    )
}

/// The user's command line plus one `virtio_mmio.device=` fragment per virtio device.
fn kernel_cmdline(config: &VmConfig) -> String {
    let mut cmdline = config.cmdline.clone();
    for index in 0..config.disks.len() {
        let (base, irq) = disk_slot(index);
        cmdline.push(' ');
        cmdline.push_str(&kernel_cmdline_fragment(base, MMIO_REGION_SIZE, irq));
    }
    cmdline
}

/// Loads kernel, initrd and command line, and writes the boot tables. Returns how to enter.
fn load_guest(vm: &Vm, config: &VmConfig) -> Result<(BootProtocol, u64), BuildError> {
    let mem = &vm.memory;
    let kernel = load_kernel(mem, config.memory_bytes, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| load_initrd(mem, config.memory_bytes, &kernel, path))
        .transpose()?;
    let cmdline_text = kernel_cmdline(config);
    let cmdline =
        Cmdline::try_from(&cmdline_text, CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    load_cmdline(mem, vm_memory::GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BuildError::CmdlineWrite)?;
    let map = memory_map(config.memory_bytes);
    // ACPI for kernels that only read ACPI (e.g. built without CONFIG_X86_MPPARSE), the MP table
    // for kernels built without ACPI.
    let rsdp = acpi::write(mem, config.vcpus)?;
    mptable::write(mem, config.vcpus)?;
    match kernel.protocol {
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, &map, rsdp)?,
        BootProtocol::Linux64 => {
            let cmdline_len = cmdline_text.len();
            write_zero_page(mem, kernel.setup_header, cmdline_len, initrd, &map, rsdp)?;
            write_identity_page_tables(mem)?;
        }
    }
    write_boot_descriptor_tables(mem, kernel.protocol)?;
    Ok((kernel.protocol, kernel.entry))
}

/// Puts one virtio-blk device per `--disk` on the MMIO bus, each with its own irqfd.
fn attach_disks(vm: &Vm, config: &VmConfig, buses: &mut IoBuses) -> Result<(), BuildError> {
    if config.disks.is_empty() {
        return Ok(());
    }
    let memory = Arc::new(vm.memory.clone());
    for (index, disk) in config.disks.iter().enumerate() {
        let (base, irq) = disk_slot(index);
        let backend = RawFileBackend::open(&disk.path, disk.read_only).map_err(|source| {
            BuildError::Disk {
                path: disk.path.clone(),
                source,
            }
        })?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| BuildError::Device {
            what: "virtio interrupt eventfd",
            source,
        })?;
        vm.register_irqfd(&irq_evt, irq)?;
        let block = Block::new(
            BlockConfig {
                read_only: disk.read_only,
                disk_id: format!("hv-disk{index}"),
                ..Default::default()
            },
            Arc::new(backend),
        );
        let transport = MmioTransport::new(
            Box::new(block),
            memory.clone(),
            Interrupt::new(EventFdTrigger(irq_evt)),
        );
        buses
            .mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_REGION_SIZE)?;
    }
    Ok(())
}

/// Creates the legacy devices and the buses that route to them.
fn create_devices(
    vm: &Vm,
    config: &VmConfig,
    events: &Sender<VmmEvent>,
    clock: ProcessClock,
    boot_time_us: &Arc<AtomicU64>,
) -> Result<(IoBuses, Arc<Mutex<Serial>>), BuildError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| BuildError::Device {
        what: "serial interrupt eventfd",
        source,
    })?;
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(
        EventFdTrigger(irq),
        serial_output(&config.serial)?,
    )));

    let reset_events = events.clone();
    let i8042 = I8042::new(CallbackTrigger::new(move || {
        // The VMM thread may be gone already if the process is exiting.
        let _ = reset_events.send(VmmEvent::GuestReset);
    }));

    let boot_time = boot_time_us.clone();
    let marker = BootMarker::new(CallbackTrigger::new(move || {
        let us = clock.elapsed().as_micros() as u64;
        // Only the first marker counts as "booted".
        if boot_time
            .compare_exchange(BOOT_TIME_UNSET, us, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            eprintln!("hv-vmm: guest ready after {us} us");
        }
    }));

    let mut buses = IoBuses::default();
    attach_disks(vm, config, &mut buses)?;
    buses
        .pio
        .insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)?;
    buses
        .pio
        .insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)?;
    buses.mmio.insert(
        Arc::new(Mutex::new(marker)),
        BOOT_MARKER_MMIO_ADDR,
        BOOT_MARKER_MMIO_LEN,
    )?;
    Ok((buses, serial))
}

/// What vCPU threads and devices share with the VMM thread.
struct Wiring {
    events: Sender<VmmEvent>,
    boot_time_us: Arc<AtomicU64>,
    control: Arc<RunControl>,
    clock: ProcessClock,
    trace: StartupTrace,
}

/// vCPUs ready to start, and the devices the VMM thread keeps handles to.
struct Prepared {
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<Serial>>,
    api: Option<ApiSocket>,
}

/// Kernel, boot tables, devices, API and configured vCPUs.
fn prepare_vcpus_and_devices(
    vm: &Vm,
    config: &VmConfig,
    cpuid: &kvm_bindings::CpuId,
    wiring: &Wiring,
) -> Result<Prepared, BuildError> {
    let Wiring {
        events: event_sender,
        boot_time_us,
        control,
        clock,
        trace,
    } = wiring;
    let (protocol, entry) = load_guest(vm, config)?;
    trace.phase("kernel and boot tables");
    let (buses, serial) = create_devices(vm, config, event_sender, *clock, boot_time_us)?;
    let api = config
        .api_socket
        .as_deref()
        .map(|path| spawn_api_server(path, event_sender.clone()))
        .transpose()?;
    trace.phase("devices and API");
    install_kick_handler().map_err(BuildError::KickHandler)?;
    let topology = Topology {
        vcpus: config.vcpus,
    };
    let buses = Arc::new(buses);
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for index in 0..config.vcpus {
        let boot = (index == 0).then_some((protocol, entry));
        vcpus.push(Vcpu {
            fd: create_vcpu(&vm.fd, index, topology, cpuid, boot)?,
            index,
            buses: buses.clone(),
            events: event_sender.clone(),
            control: control.clone(),
        });
    }
    trace.phase("vCPUs configured");
    Ok(Prepared { vcpus, serial, api })
}

/// `KVM_GET_SUPPORTED_CPUID` takes about 0.7 ms here, longer than creating the VM: fetch it on a
/// thread of its own from the very start of `main`, beside argument parsing and VM creation.
#[derive(Debug)]
pub struct CpuidPrefetch(Option<JoinHandle<Result<kvm_bindings::CpuId, BuildError>>>);

impl CpuidPrefetch {
    /// Starts the fetch (with its own `/dev/kvm` handle).
    pub fn start() -> Self {
        let thread = std::thread::Builder::new()
            .name("hv-cpuid".into())
            .stack_size(64 * 1024)
            .spawn(|| Ok(supported_cpuid(&open_kvm()?)?));
        Self(thread.ok())
    }

    /// The prefetched CPUID, or a fresh fetch through `kvm` if the prefetch could not run.
    fn wait(self, kvm: &kvm_ioctls::Kvm) -> Result<kvm_bindings::CpuId, BuildError> {
        match self.0.map(JoinHandle::join) {
            Some(Ok(Ok(cpuid))) => Ok(cpuid),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            // The prefetch failed (e.g. /dev/kvm raced away): ask again to report the error here.
            Some(Ok(Err(_))) | None => Ok(supported_cpuid(kvm)?),
        }
    }
}

/// Builds the VM described by `config` and starts its vCPUs.
pub fn build_and_start(
    config: VmConfig,
    clock: ProcessClock,
    cpuid: CpuidPrefetch,
) -> Result<RunningVm, BuildError> {
    let trace = StartupTrace::new(clock);
    trace.phase("main");
    let kvm = open_kvm()?;
    trace.phase("open /dev/kvm");
    let max_vcpus = kvm.get_max_vcpus().min(254);
    if usize::from(config.vcpus) > max_vcpus {
        return Err(BuildError::TooManyVcpus {
            requested: config.vcpus,
            max: max_vcpus,
        });
    }
    let vm = Vm::new(&kvm, create_guest_memory(config.memory_bytes)?)?;
    trace.phase("VM, memory slots, irqchip, PIT");
    let cpuid = cpuid.wait(&kvm)?;
    trace.phase("supported CPUID");
    let (event_sender, events) = channel();
    let wiring = Wiring {
        events: event_sender,
        boot_time_us: Arc::new(AtomicU64::new(BOOT_TIME_UNSET)),
        control: Arc::new(RunControl::default()),
        clock,
        trace,
    };

    let Prepared { vcpus, serial, api } = prepare_vcpus_and_devices(&vm, &config, &cpuid, &wiring)?;

    let vcpu_fds = vcpus
        .iter()
        .map(|v| std::os::fd::AsRawFd::as_raw_fd(&v.fd))
        .collect();
    let mut vcpu_threads = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let index = vcpu.index;
        let thread = std::thread::Builder::new()
            .name(format!("hv-vcpu{index}"))
            .stack_size(VCPU_STACK_BYTES)
            .spawn(move || vcpu.run())
            .map_err(|source| BuildError::Thread { index, source })?;
        vcpu_threads.push(thread);
    }
    wiring.trace.phase("vCPU threads started");
    Ok(RunningVm {
        config,
        vm,
        vcpu_threads,
        vcpu_fds,
        control: wiring.control,
        events,
        event_sender: wiring.events,
        serial,
        boot_time_us: wiring.boot_time_us,
        api,
    })
}
