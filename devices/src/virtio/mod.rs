//! Virtio devices over the virtio-mmio transport (virtio 1.2).
//!
//! The split follows STYLE.md section 4:
//! * the *transport* ([`mmio::MmioTransport`]) owns the register file, feature negotiation, the
//!   status state machine and the queue configuration, and knows nothing about what a device does;
//! * the *device* (a [`VirtioDevice`], e.g. [`block::Block`]) offers features and a config space and,
//!   on activation, builds a *queue handler* that owns the queues and the backend;
//! * the *backend* is a trait from another crate (`hv_storage::BlockBackend` for block).
//!
//! Queue work runs synchronously in the vCPU thread that wrote QueueNotify for now; the handler is
//! a separate struct so the VMM can later move it to a worker thread woken by an ioeventfd.

pub mod block;
pub mod mmio;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Guest memory as the devices see it. Shared with the VMM, which maps it into KVM.
pub type GuestMemory = Arc<GuestMemoryMmap>;

/// Bit 0 of InterruptStatus: the device used a buffer in at least one queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Bit 1 of InterruptStatus: the device configuration (or NEEDS_RESET) changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Why raising a guest interrupt failed (the irqfd write failed).
#[derive(Debug, thiserror::Error)]
#[error("could not raise the device interrupt")]
pub struct InterruptError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// The interrupt line of one virtio-mmio device: the InterruptStatus bits the guest reads and acks,
/// plus the trigger (an irqfd eventfd in the VMM) that raises the line.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    raise: Arc<dyn Fn() -> Result<(), InterruptError> + Send + Sync>,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .finish()
    }
}

impl Interrupt {
    /// An interrupt raised through `trigger` (e.g. [`crate::trigger::EventFdTrigger`]).
    pub fn new<T>(trigger: T) -> Self
    where
        T: vm_superio::Trigger + Send + Sync + 'static,
        T::E: std::error::Error + Send + Sync + 'static,
    {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            raise: Arc::new(move || trigger.trigger().map_err(|e| InterruptError(Box::new(e)))),
        }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) -> Result<(), InterruptError> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver to re-read the status and config space (config change, NEEDS_RESET).
    pub fn signal_config_change(&self) -> Result<(), InterruptError> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> Result<(), InterruptError> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        (self.raise)()
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver has handled the bits in `bits`.
    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// Why a device could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver handed over a different number of queues than the device has.
    #[error("the device has {expected} queues but {got} were configured")]
    QueueCount { expected: usize, got: usize },
    /// A queue is not ready or its rings lie outside guest memory.
    #[error("queue {index} is not ready or its rings lie outside guest memory")]
    InvalidQueue { index: usize },
    /// QueueNotify named a queue the device does not have.
    #[error("queue {index} does not exist")]
    NoSuchQueue { index: u32 },
    /// The device was notified before the driver set DRIVER_OK.
    #[error("the device is not active")]
    NotActive,
    /// The queue handler failed in a way the driver must see (the device needs a reset).
    #[error("the queue handler failed")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What a virtio device offers to a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (5.x: 2 = block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn available_features(&self) -> u64;
    /// The features the driver accepted (a subset of [`Self::available_features`]), set at
    /// FEATURES_OK before activation.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific config space. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (ignored where the fields are read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: the device takes the configured queues and starts serving them.
    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), VirtioError>;
    /// The driver wrote `queue_index` to QueueNotify. An error means the device needs a reset.
    fn queue_notify(&mut self, queue_index: u32) -> Result<(), VirtioError>;
    /// The driver wrote 0 to Status: drop the queues and forget negotiated state.
    fn reset(&mut self);
}
