//! 8250/16550 UART on COM1, modelled by `vm-superio`.

use std::io::Write;

use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// COM1's I/O port base.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// Number of COM1 registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// COM1. Guest output is written straight to `out`, byte by byte as the guest sends it (no
/// buffering: a console prompt without a newline must show at once).
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, SerialOutput>,
    /// Writes the output sink refused (closed pipe, full disk); the guest never notices.
    pub lost_output_bytes: u64,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("lost_output_bytes", &self.lost_output_bytes)
            .finish()
    }
}

impl Serial {
    /// A UART that raises its interrupt through `irq` and writes guest output to `out`.
    pub fn new(irq: EventFdTrigger, out: SerialOutput) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, out),
            lost_output_bytes: 0,
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Flushes the output sink (before the process exits).
    pub fn flush(&mut self) {
        // Nothing useful can be done about a sink that fails to flush at exit.
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            if self.uart.write(offset, *value).is_err() {
                self.lost_output_bytes += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_serial_thr_writes_reach_output_and_raise_irq_when_enabled() {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            Box::new(out.clone()),
        );
        serial.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"RDY\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"RDY\n");
        assert!(irq.read().unwrap() >= 1, "THR-empty interrupt not raised");
    }

    #[test]
    fn test_serial_input_is_readable_from_rbr() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(EventFdTrigger(irq), Box::new(std::io::sink()));
        assert_eq!(serial.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "LSR data-ready bit");
        let mut rbr = [0u8];
        serial.read(0, &mut rbr);
        assert_eq!(rbr, *b"x");
    }
}
