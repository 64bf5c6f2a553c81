//! The boot marker: the guest says "I am ready" and the VMM timestamps it.
//!
//! Convention (Firecracker's, so guest images built for Firecracker's boot-time tests work
//! unchanged): the guest writes the byte [`BOOT_MARKER_VALUE`] (123) to MMIO address
//! [`BOOT_MARKER_MMIO_ADDR`] (0xd000_0000). Port 0x80 (Cloud Hypervisor's choice) was not taken
//! because Linux itself writes to port 0x80 as an I/O delay (`io_delay=0x80`), so a value seen there
//! does not reliably mean "ready". Other values and offsets are ignored; reads return 0.

use crate::bus::BusDevice;
use crate::trigger::CallbackTrigger;

/// Guest-physical MMIO address of the marker (first page of the 32-bit MMIO hole).
pub const BOOT_MARKER_MMIO_ADDR: u64 = 0xd000_0000;
/// The marker owns one page.
pub const BOOT_MARKER_MMIO_LEN: u64 = 0x1000;
/// The byte that means "guest ready".
pub const BOOT_MARKER_VALUE: u8 = 123;

/// Calls its callback each time the guest writes the marker value at offset 0.
pub struct BootMarker {
    on_ready: CallbackTrigger,
}

impl std::fmt::Debug for BootMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootMarker")
    }
}

impl BootMarker {
    /// A marker that runs `on_ready` when the guest reports ready.
    pub fn new(on_ready: CallbackTrigger) -> Self {
        Self { on_ready }
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_MARKER_VALUE) {
            use vm_superio::Trigger;
            // The callback cannot fail (`Infallible`).
            let _ = self.on_ready.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn test_boot_marker_fires_only_on_value_123_at_offset_0() {
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let mut marker = BootMarker::new(CallbackTrigger::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        marker.write(0, &[1]);
        marker.write(4, &[BOOT_MARKER_VALUE]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        marker.write(0, &[BOOT_MARKER_VALUE]);
        marker.write(0, &[BOOT_MARKER_VALUE, 0, 0, 0]);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
