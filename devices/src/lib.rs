//! Device models for hv-vmm (see README.md).
//!
//! * [`bus`]: routes a guest port-I/O or MMIO access to the device that owns the address.
//! * [`legacy`]: 8250 serial, i8042 (reset only), and the boot-marker device.
//! * [`trigger`]: how a device signals the outside world (irqfd eventfd, callback).

pub mod bus;
pub mod legacy;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
