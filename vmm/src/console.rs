//! Host input for the guest's serial console.
//!
//! With `--serial stdio` and a terminal on stdin, a thread forwards what the user types to COM1's
//! receive FIFO. The terminal stays in its normal (line-buffered, echoing) mode, so Ctrl-C still
//! stops the VM; guests whose console echoes input show typed lines twice.

use std::io::{IsTerminal, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv_devices::legacy::Serial;

/// How long to wait before offering bytes again when the guest has not drained the FIFO.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Starts forwarding stdin to `serial` if stdin is a terminal; returns whether it did.
pub fn forward_stdin_if_terminal(serial: &Arc<Mutex<Serial>>) -> std::io::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let serial = serial.clone();
    std::thread::Builder::new()
        .name("hv-stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || forward(std::io::stdin().lock(), &serial))?;
    Ok(true)
}

/// Copies `input` into the serial FIFO until end of input.
fn forward(mut input: impl Read, serial: &Mutex<Serial>) {
    let mut buf = [0u8; 64];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = match serial.lock() {
                Ok(mut serial) => serial.enqueue_input(pending),
                Err(_) => return,
            };
            pending = &pending[taken..];
            if !pending.is_empty() {
                std::thread::sleep(FIFO_FULL_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hv_devices::trigger::EventFdTrigger;
    use hv_devices::BusDevice;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    #[test]
    fn test_forward_delivers_all_bytes_even_past_fifo_capacity() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(
            EventFdTrigger(irq),
            Box::new(std::io::sink()),
        )));
        let input: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        let reader = serial.clone();
        let expected = input.clone();
        // A "guest" draining the receive buffer while the forwarder fills it.
        let guest = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let mut lsr = [0u8];
                let mut s = reader.lock().unwrap();
                s.read(5, &mut lsr);
                if lsr[0] & 1 == 1 {
                    let mut rbr = [0u8];
                    s.read(0, &mut rbr);
                    got.push(rbr[0]);
                }
            }
            got
        });
        forward(&input[..], &serial);
        assert_eq!(guest.join().unwrap(), input);
    }
}
