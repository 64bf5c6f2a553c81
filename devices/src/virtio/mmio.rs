//! The virtio-mmio transport, version 2 ("modern") register layout (virtio 1.2, section 4.2.2).

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{GuestMemory, Interrupt, VirtioDevice};
use crate::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The non-legacy register layout.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("HVNX"); drivers do not interpret it.
pub const MMIO_VENDOR_ID: u32 = 0x584e_5648;
/// Bytes of MMIO space each device needs: 0x100 of registers plus the config space.
pub const MMIO_REGION_SIZE: u64 = 0x200;

/// Register offsets (section 4.2.2, table "MMIO Device Register Layout").
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The Linux kernel command-line fragment that declares one virtio-mmio device
/// (`virtio_mmio.device=<size>@<baseaddr>:<irq>`, drivers/virtio/virtio_mmio.c).
pub fn kernel_cmdline_fragment(base: u64, size: u64, irq: u32) -> String {
    format!("virtio_mmio.device={size:#x}@{base:#x}:{irq}")
}

/// A virtio device behind the MMIO register file. Insert it on the MMIO bus with
/// [`MMIO_REGION_SIZE`] bytes.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`; its queues live in `memory` and it signals through `interrupt`.
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemory, interrupt: Interrupt) -> Self {
        let queues = new_queues(device.as_ref());
        Self {
            device,
            memory,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
        }
    }

    /// The Status register (device status bits, section 2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt the transport raises (the VMM wires its trigger to an irqfd).
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// The queue registers may only change before the driver sets DRIVER_OK (section 4.2.3.2).
    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        if self.has_status(VIRTIO_CONFIG_S_DRIVER_OK) {
            return None;
        }
        let queue = self.queues.get_mut(self.queue_select as usize)?;
        // The driver must not change a queue it has marked ready.
        (!queue.ready()).then_some(queue)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.available_features() as u32,
                1 => (self.device.available_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones means "does not exist" (4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            // The config space never changes after creation.
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => {
                if let Some(queue) = self.selected_queue_mut() {
                    // An invalid size (zero, too big, not a power of two) is refused and the old one
                    // stays; activation then checks the rings against guest memory.
                    let _ = queue.try_set_size(value as u16);
                }
            }
            reg::QUEUE_READY if !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK) => {
                if let Some(queue) = self.queues.get_mut(self.queue_select as usize) {
                    queue.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW => {
                self.set_queue_address(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.set_queue_address(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.set_queue_address(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.set_queue_address(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.set_queue_address(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.set_queue_address(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => self.queue_notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            // Read-only or unknown registers: writes are ignored.
            _ => {}
        }
    }

    fn set_queue_address(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.selected_queue_mut() {
            set(queue);
        }
    }

    /// Features may be written after DRIVER and before FEATURES_OK (section 3.1.1).
    fn write_driver_features(&mut self, value: u32) {
        if !self.has_status(VIRTIO_CONFIG_S_DRIVER) || self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
        {
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.driver_features &= !(0xffff_ffffu64 << shift);
        self.driver_features |= u64::from(value) << shift;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device; it stays failed until a reset.
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // The driver only ever adds one step to the bits it already set (section 3.1.1).
        let added = value & !self.status;
        if value & self.status != self.status {
            return;
        }
        match added {
            VIRTIO_CONFIG_S_ACKNOWLEDGE if self.status == 0 => self.status = value,
            VIRTIO_CONFIG_S_DRIVER if self.has_status(VIRTIO_CONFIG_S_ACKNOWLEDGE) => {
                self.status = value
            }
            // Unacceptable features leave FEATURES_OK clear: the driver sees the refusal on re-read.
            VIRTIO_CONFIG_S_FEATURES_OK
                if self.has_status(VIRTIO_CONFIG_S_DRIVER) && self.features_acceptable() =>
            {
                self.device.set_acked_features(self.driver_features);
                self.status = value;
            }
            VIRTIO_CONFIG_S_DRIVER_OK if self.has_status(VIRTIO_CONFIG_S_FEATURES_OK) => {
                self.status = value;
                self.activate();
            }
            _ => {}
        }
    }

    /// Version 1 is mandatory on a modern transport, and the driver may only accept offered bits.
    fn features_acceptable(&self) -> bool {
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        self.driver_features & version_1 != 0
            && self.driver_features & !self.device.available_features() == 0
    }

    fn activate(&mut self) {
        // The device gets its own copies; the transport keeps its view for register reads.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|queue| Queue::try_from(queue.state()))
            .collect();
        let activated = queues.map_err(|_| ()).and_then(|queues| {
            self.device
                .activate(self.memory.clone(), self.interrupt.clone(), queues)
                .map_err(|_| ())
        });
        if activated.is_err() {
            self.set_needs_reset();
        }
    }

    fn queue_notify(&mut self, queue_index: u32) {
        if !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK)
            || self.has_status(VIRTIO_CONFIG_S_NEEDS_RESET)
        {
            return;
        }
        if self.device.queue_notify(queue_index).is_err() {
            self.set_needs_reset();
        }
    }

    /// The device cannot go on: tell the driver through NEEDS_RESET and a config interrupt
    /// (section 2.1.2). The device's own metrics record why.
    fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        // If even the interrupt fails the status bit is still there for the next read.
        let _ = self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(self.device.as_ref());
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.clear();
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        // A max size of 0 or not a power of two is a bug in the device, not guest input; such a
        // queue is left out and activation reports the missing queue.
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and only accessed as such (section 4.2.2.2).
        match <&mut [u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            Ok(word) => word.fill(0),
            Err(_) => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if let (Ok(word), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(word));
        }
    }
}

/// Used by tests and the VMM to compute the queue register values of a guest address.
pub fn split_address(addr: GuestAddress) -> (u32, u32) {
    (addr.0 as u32, (addr.0 >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::trigger::CallbackTrigger;
    use crate::virtio::{VirtioError, VIRTIO_MMIO_INT_CONFIG};

    /// A device with two queues that records what the transport tells it.
    #[derive(Default)]
    struct Probe {
        acked: Arc<std::sync::Mutex<u64>>,
        notified: Arc<std::sync::Mutex<Vec<u32>>>,
        resets: Arc<AtomicUsize>,
        fail_notify: bool,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 4]
        }
        fn available_features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1 | 1 << 3
        }
        fn set_acked_features(&mut self, features: u64) {
            *self.acked.lock().unwrap() = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _memory: GuestMemory,
            _interrupt: Interrupt,
            queues: Vec<Queue>,
        ) -> Result<(), VirtioError> {
            assert_eq!(queues.len(), 2);
            Ok(())
        }
        fn queue_notify(&mut self, queue_index: u32) -> Result<(), VirtioError> {
            self.notified.lock().unwrap().push(queue_index);
            if self.fail_notify {
                return Err(VirtioError::NotActive);
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn transport(probe: Probe) -> (MmioTransport, Arc<AtomicUsize>) {
        let memory = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let raised = Arc::new(AtomicUsize::new(0));
        let counter = raised.clone();
        let interrupt = Interrupt::new(CallbackTrigger::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        (
            MmioTransport::new(Box::new(probe), memory, interrupt),
            raised,
        )
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut word = [0u8; 4];
        t.read(offset, &mut word);
        u32::from_le_bytes(word)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn drive_to_driver_ok(t: &mut MmioTransport) {
        write(t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(t, reg::STATUS, 3);
        write(t, reg::DRIVER_FEATURES_SEL, 1);
        write(t, reg::DRIVER_FEATURES, 1);
        write(t, reg::STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        for (index, size) in [(0, 8), (1, 4)] {
            write(t, reg::QUEUE_SEL, index);
            write(t, reg::QUEUE_NUM, size);
            write(t, reg::QUEUE_DESC_LOW, 0x1000 * (index + 1));
            write(t, reg::QUEUE_DRIVER_LOW, 0x4000 * (index + 1));
            write(t, reg::QUEUE_DEVICE_LOW, 0x8000);
            write(t, reg::QUEUE_READY, 1);
        }
        write(
            t,
            reg::STATUS,
            3 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
    }

    #[test]
    fn test_kernel_cmdline_fragment_uses_linux_syntax() {
        assert_eq!(
            kernel_cmdline_fragment(0xd000_1000, MMIO_REGION_SIZE, 5),
            "virtio_mmio.device=0x200@0xd0001000:5"
        );
    }

    #[test]
    fn test_mmio_identity_registers_and_unaligned_accesses() {
        let (mut t, _) = transport(Probe::default());
        assert_eq!(read(&mut t, reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(read(&mut t, reg::VERSION), 2);
        assert_eq!(read(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(read(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(read(&mut t, reg::SHM_LEN_LOW), u32::MAX, "no shared memory");
        let mut half = [0xaau8; 2];
        t.read(reg::MAGIC_VALUE, &mut half);
        assert_eq!(half, [0xaa, 0xaa], "sub-word register reads are ignored");
        assert_eq!(read(&mut t, 0x2), 0, "misaligned register reads return 0");
        let mut config = [0u8; 2];
        t.read(reg::CONFIG + 5, &mut config);
        assert_eq!(config, [5, 5], "config space takes any width");
    }

    #[test]
    fn test_mmio_feature_pages_and_negotiation() {
        let probe = Probe::default();
        let acked = probe.acked.clone();
        let (mut t, _) = transport(probe);
        write(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&mut t, reg::DEVICE_FEATURES), 1 << 3);
        write(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, reg::DEVICE_FEATURES), 1);
        // Feature writes before DRIVER are ignored.
        write(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        write(&mut t, reg::DRIVER_FEATURES, 1);
        write(&mut t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(&mut t, reg::STATUS, 3);
        write(&mut t, reg::STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(t.status(), 3, "no VERSION_1 yet, so FEATURES_OK is refused");
        // A bit the device never offered is refused too.
        write(&mut t, reg::DRIVER_FEATURES, 1);
        write(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        write(&mut t, reg::DRIVER_FEATURES, 1 << 4);
        write(&mut t, reg::STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(t.status(), 3);
        write(&mut t, reg::DRIVER_FEATURES, 1 << 3);
        write(&mut t, reg::STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(t.status(), 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(*acked.lock().unwrap(), 1 << VIRTIO_F_VERSION_1 | 1 << 3);
    }

    #[test]
    fn test_mmio_status_rejects_skipped_steps() {
        let (mut t, _) = transport(Probe::default());
        write(&mut t, reg::STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(t.status(), 0, "DRIVER before ACKNOWLEDGE");
        write(&mut t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(&mut t, reg::STATUS, 1 | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(t.status(), 1, "DRIVER_OK before FEATURES_OK");
        write(&mut t, reg::STATUS, 1 | VIRTIO_CONFIG_S_FAILED);
        assert_eq!(t.status(), 1 | VIRTIO_CONFIG_S_FAILED);
    }

    #[test]
    fn test_mmio_queue_setup_locks_after_driver_ok_and_notify_reaches_device() {
        let probe = Probe::default();
        let notified = probe.notified.clone();
        let (mut t, _) = transport(probe);
        write(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(read(&mut t, reg::QUEUE_NUM_MAX), 4);
        write(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(read(&mut t, reg::QUEUE_NUM_MAX), 0, "missing queue");
        write(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(
            notified.lock().unwrap().is_empty(),
            "no notify before DRIVER_OK"
        );
        drive_to_driver_ok(&mut t);
        assert_eq!(
            t.status() & VIRTIO_CONFIG_S_DRIVER_OK,
            VIRTIO_CONFIG_S_DRIVER_OK
        );
        write(&mut t, reg::QUEUE_SEL, 0);
        write(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(
            read(&mut t, reg::QUEUE_READY),
            1,
            "queue stays ready after DRIVER_OK"
        );
        write(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(*notified.lock().unwrap(), vec![1]);
    }

    #[test]
    fn test_mmio_failed_notify_sets_needs_reset_and_reset_clears_everything() {
        let probe = Probe {
            fail_notify: true,
            ..Probe::default()
        };
        let resets = probe.resets.clone();
        let (mut t, raised) = transport(probe);
        drive_to_driver_ok(&mut t);
        write(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(read(&mut t, reg::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(raised.load(Ordering::SeqCst), 1);
        write(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
        assert_eq!(read(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        write(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(
            read(&mut t, reg::QUEUE_READY),
            0,
            "queues are fresh after reset"
        );
    }
}
