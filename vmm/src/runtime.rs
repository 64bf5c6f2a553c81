//! The VMM thread: waits for events and decides when and how the VM ends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::api::{ApiReply, VmAction, VmInfo, VmState};
use crate::builder::{RunningVm, BOOT_TIME_UNSET};
use crate::event::VmmEvent;
use crate::vstate::vcpu::kick;

/// How long a pause may take before the API reports failure (a vCPU that does not park within this
/// time is stuck in the kernel).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the VM ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 or KVM system event).
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// `PUT /vm/shutdown`.
    ApiShutdown,
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// A vCPU failed; `dump` holds its registers.
    VcpuFailed {
        index: u8,
        reason: String,
        dump: String,
    },
}

impl ExitReason {
    /// Process exit code: 0 for every orderly end, [`EXIT_GUEST_CRASH`] for a failed vCPU.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::VcpuFailed { .. } => EXIT_GUEST_CRASH,
            _ => 0,
        }
    }
}

/// Exit code when a vCPU failed (triple fault, KVM internal error, thread panic).
pub const EXIT_GUEST_CRASH: i32 = 3;

fn info(vm: &RunningVm) -> VmInfo {
    let boot = vm.boot_time_us.load(Ordering::Acquire);
    VmInfo {
        state: if vm.control.is_paused() {
            VmState::Paused
        } else {
            VmState::Running
        },
        vcpus: vm.config.vcpus,
        memory_mib: vm.config.memory_bytes >> 20,
        boot_time_us: (boot != BOOT_TIME_UNSET).then_some(boot),
    }
}

fn pause(vm: &RunningVm) -> ApiReply {
    if vm.control.is_paused() {
        return ApiReply::Done;
    }
    vm.control.request_pause();
    for thread in &vm.vcpu_threads {
        kick(thread);
    }
    if vm.control.wait_parked(vm.vcpu_threads.len(), PAUSE_TIMEOUT) {
        ApiReply::Done
    } else {
        vm.control.resume();
        ApiReply::Failed("vCPUs did not pause in time".into())
    }
}

/// Runs the VMM thread's loop until the VM ends.
pub fn run(vm: &RunningVm) -> ExitReason {
    loop {
        // The VMM itself holds a sender, so the channel never reports "disconnected".
        let Ok(event) = vm.events.recv() else {
            return ExitReason::GuestShutdown;
        };
        match event {
            VmmEvent::GuestReset => return ExitReason::GuestReset,
            VmmEvent::GuestShutdown => return ExitReason::GuestShutdown,
            VmmEvent::Signal(signal) => return ExitReason::Signal(signal),
            VmmEvent::VcpuFailed {
                index,
                reason,
                dump,
            } => {
                return ExitReason::VcpuFailed {
                    index,
                    reason,
                    dump,
                }
            }
            VmmEvent::Api { action, reply } => {
                let answer = match action {
                    VmAction::GetInfo => ApiReply::Info(info(vm)),
                    VmAction::Pause => pause(vm),
                    VmAction::Resume => {
                        vm.control.resume();
                        ApiReply::Done
                    }
                    VmAction::Shutdown => return ExitReason::ApiShutdown,
                };
                // The client may have hung up; that is its business.
                let _ = reply.send(answer);
            }
        }
    }
}
