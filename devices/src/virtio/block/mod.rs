//! virtio-blk (virtio 1.2, section 5.2) over an `hv_storage::BlockBackend`.
//!
//! * [`Block`] (this file): features, config space, activation.
//! * [`handler::BlockQueueHandler`]: owns the queue and backend once active.
//! * [`request`]: parses and runs one request.

pub mod handler;
pub mod request;

use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hv_storage::BlockBackend;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};

use self::handler::BlockQueueHandler;
use self::request::{RequestError, MAX_SEGMENTS, SECTOR_SIZE};
use super::{GuestMemory, Interrupt, InterruptError, VirtioDevice, VirtioError};

/// Default (and maximum) number of descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// How a block device is set up (what the API / command line fills in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Offer VIRTIO_BLK_F_RO and refuse every write.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes are used).
    pub disk_id: String,
    /// Maximum queue size offered to the driver (a power of two, at most [`QUEUE_SIZE`]).
    pub queue_size: u16,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            read_only: false,
            disk_id: String::new(),
            queue_size: QUEUE_SIZE,
        }
    }
}

/// Errors that stop the block queue (the transport then sets NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The chain has no device-writable byte in guest memory for the status.
    #[error("descriptor chain has no writable status byte in guest memory")]
    NoStatusByte,
    /// The queue rings are inconsistent (bad available index, unwritable used ring).
    #[error("the request queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// The used-buffer interrupt could not be raised.
    #[error("could not interrupt the driver")]
    Interrupt(#[source] InterruptError),
}

/// A monotonically increasing counter, shared with whoever exports metrics.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a block device has done, for the VMM's metrics endpoint.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub reads: Counter,
    pub read_bytes: Counter,
    pub writes: Counter,
    pub write_bytes: Counter,
    pub flushes: Counter,
    /// Completed DISCARD and WRITE_ZEROES requests.
    pub zeroings: Counter,
    /// Requests answered with VIRTIO_BLK_S_IOERR.
    pub io_errors: Counter,
    /// Requests answered with VIRTIO_BLK_S_UNSUPP.
    pub unsupported: Counter,
    /// Of the failures, how many were writes to a read-only disk.
    pub read_only_writes: Counter,
    /// Of the failures, how many addressed sectors past the end of the disk.
    pub out_of_range: Counter,
    /// Times the device had to set NEEDS_RESET (broken chain or queue).
    pub needs_reset: Counter,
    /// Used-buffer interrupts that could not be raised.
    pub interrupt_failures: Counter,
}

impl BlockMetrics {
    fn record_failure(&self, error: &RequestError) {
        match error {
            RequestError::Unsupported(_) => self.unsupported.inc(),
            _ => self.io_errors.inc(),
        }
        match error {
            RequestError::ReadOnly => self.read_only_writes.inc(),
            RequestError::OutOfRange { .. } => self.out_of_range.inc(),
            _ => {}
        }
    }
}

/// A virtio block device.
pub struct Block {
    config: BlockConfig,
    disk: Arc<dyn BlockBackend>,
    queue_sizes: [u16; 1],
    acked_features: u64,
    config_space: Vec<u8>,
    metrics: Arc<BlockMetrics>,
    handler: Option<BlockQueueHandler>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("capacity_sectors", &(self.disk.size() / SECTOR_SIZE))
            .field("active", &self.handler.is_some())
            .finish()
    }
}

impl Block {
    /// A block device serving `disk`.
    pub fn new(config: BlockConfig, disk: Arc<dyn BlockBackend>) -> Self {
        let queue_size = config.queue_size;
        let config_space = config_space(disk.size(), queue_size);
        Self {
            config,
            disk,
            queue_sizes: [queue_size],
            acked_features: 0,
            config_space,
            metrics: Arc::new(BlockMetrics::default()),
            handler: None,
        }
    }

    /// The counters this device updates.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn disk_id(&self) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let bytes = self.config.disk_id.as_bytes();
        let len = bytes.len().min(id.len());
        id[..len].copy_from_slice(&bytes[..len]);
        id
    }
}

/// The `virtio_blk_config` structure, little endian, laid out at the offsets of the kernel's
/// definition. A partial last sector is not addressable, so the capacity rounds down.
fn config_space(disk_size: u64, queue_size: u16) -> Vec<u8> {
    let mut space = vec![0u8; std::mem::size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &(disk_size / SECTOR_SIZE).to_le_bytes(),
    );
    // Two descriptors of every chain carry the header and the status byte.
    let seg_max = u32::from(queue_size.saturating_sub(2)).max(1);
    put(
        offset_of!(virtio_blk_config, seg_max),
        &seg_max.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &1u16.to_le_bytes(),
    );
    let max_sectors = u32::MAX.to_le_bytes();
    let max_segments = MAX_SEGMENTS.to_le_bytes();
    put(
        offset_of!(virtio_blk_config, max_discard_sectors),
        &max_sectors,
    );
    put(
        offset_of!(virtio_blk_config, max_discard_seg),
        &max_segments,
    );
    put(
        offset_of!(virtio_blk_config, discard_sector_alignment),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        &max_sectors,
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_seg),
        &max_segments,
    );
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    space
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn available_features(&self) -> u64 {
        // Indirect tables cost nothing extra: virtio-queue follows them while walking a chain.
        let mut features = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if self.config.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(bytes) = self.config_space.get(start..) {
            let len = bytes.len().min(data.len());
            data[..len].copy_from_slice(&bytes[..len]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field we offer is read-only (there is no CONFIG_WCE); the spec lets the device
        // ignore such writes.
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let mut queue = queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(VirtioError::QueueCount { expected: 1, got })?;
        queue.set_event_idx(self.acked_features & 1 << VIRTIO_RING_F_EVENT_IDX != 0);
        if !queue.is_valid(memory.as_ref()) {
            self.metrics.needs_reset.inc();
            return Err(VirtioError::InvalidQueue { index: 0 });
        }
        self.handler = Some(BlockQueueHandler {
            queue,
            memory,
            interrupt,
            disk: self.disk.clone(),
            read_only: self.config.read_only,
            disk_id: self.disk_id(),
            metrics: self.metrics.clone(),
        });
        Ok(())
    }

    fn queue_notify(&mut self, queue_index: u32) -> Result<(), VirtioError> {
        let Some(handler) = self.handler.as_mut().filter(|_| queue_index == 0) else {
            // The transport turns this into NEEDS_RESET; count it like every other reset cause.
            self.metrics.needs_reset.inc();
            return Err(match self.handler {
                None => VirtioError::NotActive,
                Some(_) => VirtioError::NoSuchQueue { index: queue_index },
            });
        };
        handler
            .process_queue()
            .map_err(|error| VirtioError::Handler(Box::new(error)))
    }

    fn reset(&mut self) {
        self.handler = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(space: &[u8], offset: usize, len: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(&space[offset..offset + len]);
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn test_config_space_matches_virtio_blk_config_layout() {
        let space = config_space(10 * 512 + 100, 128);
        // Offsets from the virtio 1.2 spec, section 5.2.4, independent of the bindings.
        assert_eq!(
            field(&space, 0, 8),
            10,
            "capacity rounds down to whole sectors"
        );
        assert_eq!(field(&space, 12, 4), 126, "seg_max");
        assert_eq!(field(&space, 34, 2), 1, "num_queues");
        assert_eq!(
            field(&space, 36, 4),
            u64::from(u32::MAX),
            "max_discard_sectors"
        );
        assert_eq!(
            field(&space, 40, 4),
            u64::from(MAX_SEGMENTS),
            "max_discard_seg"
        );
        assert_eq!(field(&space, 44, 4), 1, "discard_sector_alignment");
        assert_eq!(
            field(&space, 52, 4),
            u64::from(MAX_SEGMENTS),
            "max_write_zeroes_seg"
        );
        assert_eq!(space[56], 1, "write_zeroes_may_unmap");
        assert_eq!(field(&space, 20, 4), 0, "blk_size not offered");
    }

    #[test]
    fn test_block_features_follow_read_only_and_config_reads_past_end_are_zero() {
        struct Empty;
        impl BlockBackend for Empty {
            fn size(&self) -> u64 {
                4096
            }
            fn read_at(&self, _: &mut [u8], _: u64) -> Result<(), hv_storage::BlockError> {
                Ok(())
            }
            fn write_at(&self, _: &[u8], _: u64) -> Result<(), hv_storage::BlockError> {
                Ok(())
            }
            fn flush(&self) -> Result<(), hv_storage::BlockError> {
                Ok(())
            }
            fn discard(&self, _: u64, _: u64) -> Result<(), hv_storage::BlockError> {
                Ok(())
            }
            fn write_zeroes(&self, _: u64, _: u64) -> Result<(), hv_storage::BlockError> {
                Ok(())
            }
        }
        let read_only = BlockConfig {
            read_only: true,
            ..BlockConfig::default()
        };
        let block = Block::new(read_only, Arc::new(Empty));
        assert_ne!(block.available_features() & 1 << VIRTIO_BLK_F_RO, 0);
        let writable = Block::new(BlockConfig::default(), Arc::new(Empty));
        assert_eq!(writable.available_features() & 1 << VIRTIO_BLK_F_RO, 0);
        let mut bytes = [0xffu8; 8];
        writable.read_config(0, &mut bytes);
        assert_eq!(u64::from_le_bytes(bytes), 8);
        writable.read_config(10_000, &mut bytes);
        assert_eq!(bytes, [0; 8]);
        writable.read_config(u64::MAX, &mut bytes);
        assert_eq!(bytes, [0; 8]);
    }
}
