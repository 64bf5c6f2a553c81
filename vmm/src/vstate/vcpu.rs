//! vCPUs: creation, boot-time state, and the run loop on each vCPU's own thread.

use std::cell::Cell;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{
    kvm_run, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::boot::BootProtocol;
use crate::arch::cpuid::{filter_for_vcpu, Topology};
use crate::arch::regs::{boot_fpu, boot_msrs, boot_regs, boot_sregs, configure_lapic_lint};
use crate::event::{IoBuses, VmmEvent};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot read the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot create vCPU {index}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set the {what} of vCPU {index}")]
    Configure {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted {set} of {wanted} boot MSRs of vCPU {index}")]
    PartialMsrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    #[error("cannot build the MSR list")]
    MsrList,
}

/// What KVM can virtualise for the guest, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)
}

/// Creates vCPU `index` and gives it its boot state. Only the boot processor (index 0) gets
/// registers: the others wait in the in-kernel LAPIC for INIT/SIPI from the guest.
pub fn create_vcpu(
    vm: &VmFd,
    index: u8,
    topology: Topology,
    cpuid: &CpuId,
    boot: Option<(BootProtocol, u64)>,
) -> Result<VcpuFd, VcpuError> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(|source| VcpuError::Create { index, source })?;
    let configure = |what| {
        move |source| VcpuError::Configure {
            index,
            what,
            source,
        }
    };

    let mut cpuid = cpuid.clone();
    filter_for_vcpu(cpuid.as_mut_slice(), index, topology);
    fd.set_cpuid2(&cpuid).map_err(configure("CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList)?;
    let set = fd.set_msrs(&msrs).map_err(configure("MSRs"))?;
    if set != entries.len() {
        return Err(VcpuError::PartialMsrs {
            index,
            set,
            wanted: entries.len(),
        });
    }

    let mut lapic = fd.get_lapic().map_err(configure("LAPIC"))?;
    configure_lapic_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(configure("LAPIC"))?;

    if let Some((protocol, entry)) = boot {
        let sregs = fd.get_sregs().map_err(configure("segment registers"))?;
        fd.set_sregs(&boot_sregs(sregs, protocol))
            .map_err(configure("segment registers"))?;
        fd.set_regs(&boot_regs(protocol, entry))
            .map_err(configure("registers"))?;
        fd.set_fpu(&boot_fpu()).map_err(configure("FPU"))?;
    }
    Ok(fd)
}

/// Pause/resume rendezvous between the VMM thread and the vCPU threads.
#[derive(Debug, Default)]
pub struct RunControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ControlState {
    paused: bool,
    parked: usize,
}

impl RunControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // The state is two plain fields that stay consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the vCPUs to pause; the caller then kicks them and waits with [`Self::wait_parked`].
    pub fn request_pause(&self) {
        self.lock().paused = true;
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Blocks until `count` vCPUs are parked, the pause was cancelled, or `timeout` passed;
    /// returns whether all of them parked.
    pub fn wait_parked(&self, count: usize, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.lock();
        while state.paused && state.parked < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.parked >= count
    }

    /// Called by a vCPU thread: parks while a pause is requested.
    fn park_while_paused(&self) {
        let mut state = self.lock();
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this very thread (signals sent with `pthread_kill`
            // run on the target thread) to its vCPU's `kvm_run` mapping, which lives as long as
            // the `VcpuFd` the thread owns; writing `immediate_exit` is how KVM documents making
            // the next (or current) KVM_RUN return EINTR.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// Installs the kick handler (once per process, before vCPU threads start).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
}

/// Interrupts a vCPU thread's `KVM_RUN`.
pub fn kick(thread: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the pthread_t comes from a JoinHandle we still hold, so the thread has not been
    // joined or detached and the id is valid; the signal has a handler installed process-wide.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
}

/// One vCPU and what its thread needs.
pub struct Vcpu {
    pub fd: VcpuFd,
    pub index: u8,
    pub buses: Arc<IoBuses>,
    pub events: Sender<VmmEvent>,
    pub control: Arc<RunControl>,
}

/// Why a vCPU stopped running guest code.
enum Stop {
    Reset,
    Shutdown,
    Failed(String),
}

impl Vcpu {
    /// The thread body: runs the guest until it resets, shuts down or fails, then reports it.
    pub fn run(mut self) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_until_stop()));
        let event = match outcome {
            Ok(Stop::Reset) => VmmEvent::GuestReset,
            Ok(Stop::Shutdown) => VmmEvent::GuestShutdown,
            Ok(Stop::Failed(reason)) => VmmEvent::VcpuFailed {
                index: self.index,
                reason,
                dump: register_dump(&self.fd),
            },
            Err(panic) => VmmEvent::VcpuFailed {
                index: self.index,
                reason: format!("vCPU thread panicked: {}", panic_message(&panic)),
                dump: register_dump(&self.fd),
            },
        };
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        // The VMM thread may already be gone (process exiting): nothing left to tell.
        let _ = self.events.send(event);
    }

    fn run_until_stop(&mut self) -> Stop {
        loop {
            if self.control.is_paused() {
                self.control.park_while_paused();
            }
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.buses.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.buses.pio.read(u64::from(port), data) {
                        data.fill(0xff); // an unclaimed ISA port floats high
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.buses.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.buses.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => return Stop::Shutdown,
                Ok(VcpuExit::Shutdown) => {
                    return Stop::Failed("triple fault (KVM_EXIT_SHUTDOWN)".into())
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_RESET => return Stop::Reset,
                    KVM_SYSTEM_EVENT_SHUTDOWN => return Stop::Shutdown,
                    KVM_SYSTEM_EVENT_CRASH => return Stop::Failed("guest reported a crash".into()),
                    other => return Stop::Failed(format!("unexpected system event {other}")),
                },
                Ok(VcpuExit::InternalError) => {
                    let suberror = self.internal_error_suberror();
                    return Stop::Failed(format!(
                        "KVM internal error (suberror {suberror}: {})",
                        internal_error_name(suberror)
                    ));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Stop::Failed(format!(
                        "VM entry failed (hardware reason {reason:#x} on host CPU {cpu})"
                    ))
                }
                Ok(VcpuExit::Intr) => self.fd.set_kvm_immediate_exit(0),
                Ok(other) => return Stop::Failed(format!("unhandled exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => return Stop::Failed(format!("KVM_RUN failed: {e}")),
            }
        }
    }

    fn internal_error_suberror(&mut self) -> u32 {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member
        // of the exit union (KVM API documentation, struct kvm_run).
        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror }
    }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "instruction emulation failed",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A one-screen dump of the vCPU's registers for crash reports.
pub fn register_dump(fd: &VcpuFd) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match fd.get_regs() {
        Ok(r) => {
            let _ = writeln!(
                out,
                "RIP={:016x} RSP={:016x} RFLAGS={:08x}",
                r.rip, r.rsp, r.rflags
            );
            let _ = writeln!(
                out,
                "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
                r.rax, r.rbx, r.rcx, r.rdx
            );
            let _ = writeln!(
                out,
                "RSI={:016x} RDI={:016x} RBP={:016x}",
                r.rsi, r.rdi, r.rbp
            );
            let _ = writeln!(
                out,
                "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}",
                r.r8, r.r9, r.r10, r.r11
            );
            let _ = writeln!(
                out,
                "R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
                r.r12, r.r13, r.r14, r.r15
            );
        }
        Err(e) => {
            let _ = writeln!(out, "(registers unavailable: {e})");
        }
    }
    match fd.get_sregs() {
        Ok(s) => {
            let _ = writeln!(
                out,
                "CR0={:016x} CR2={:016x} CR3={:016x} CR4={:016x} EFER={:x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            );
            let _ = writeln!(
                out,
                "CS={:04x} base={:x} l={} db={}  SS={:04x}  DS={:04x}",
                s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.ss.selector, s.ds.selector
            );
            let _ = writeln!(
                out,
                "GDT={:x}/{:x} IDT={:x}/{:x}",
                s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
            );
        }
        Err(e) => {
            let _ = writeln!(out, "(segment registers unavailable: {e})");
        }
    }
    out
}
