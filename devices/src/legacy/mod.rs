//! Legacy PC devices: what a direct-boot x86 guest expects without firmware.

mod boot_marker;
mod i8042;
mod serial;

pub use boot_marker::{BootMarker, BOOT_MARKER_MMIO_ADDR, BOOT_MARKER_MMIO_LEN, BOOT_MARKER_VALUE};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{Serial, SerialOutput, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
