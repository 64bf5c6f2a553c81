//! The i8042 keyboard controller, reduced to what a guest uses to reset the machine.

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::trigger::CallbackTrigger;

/// The controller's ports: data at 0x60, command/status at 0x64.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// i8042 whose "pulse reset line" command (0xFE to port 0x64) runs the reset callback.
pub struct I8042(I8042Device<CallbackTrigger>);

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("I8042")
    }
}

impl I8042 {
    /// A controller that calls `on_reset` when the guest asks for a CPU reset.
    pub fn new(on_reset: CallbackTrigger) -> Self {
        Self(I8042Device::new(on_reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.0.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // The callback cannot fail (`Infallible`).
            let _ = self.0.write(offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn test_i8042_reset_command_runs_callback_once() {
        let resets = Arc::new(AtomicU32::new(0));
        let counter = resets.clone();
        let mut dev = I8042::new(CallbackTrigger::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        dev.write(4, &[0xAA]); // self-test command: not a reset
        dev.write(0, &[0xFE]); // 0xFE on the data port is not a command
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xFE]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }
}
