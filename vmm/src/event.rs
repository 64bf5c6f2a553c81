//! What the VMM thread hears about: guest lifecycle events from vCPU threads and devices, signals,
//! and API requests. Everything arrives on one channel, so the VMM thread is a plain loop.

use std::sync::mpsc::SyncSender;

use hv_devices::Bus;

use crate::api::{ApiReply, VmAction};

/// The buses a vCPU routes its exits through.
#[derive(Debug, Default)]
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// An event for the VMM thread.
#[derive(Debug)]
pub enum VmmEvent {
    /// The guest asked for a reset (i8042 or KVM system event): the VM ends, successfully.
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// A vCPU stopped on an error: triple fault, KVM internal error, failed entry, thread panic.
    VcpuFailed {
        index: u8,
        reason: String,
        dump: String,
    },
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// An API request and where to send its answer.
    Api {
        action: VmAction,
        reply: SyncSender<ApiReply>,
    },
}
