//! The block queue handler: owns the queue, guest memory and backend once the device is active,
//! and turns available descriptor chains into completed requests.
//!
//! It runs wherever `process_queue` is called: today synchronously on the QueueNotify write, later
//! on a worker thread woken by an ioeventfd.

use std::sync::Arc;

use hv_storage::BlockBackend;
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::{execute, RequestContext};
use super::{BlockError, BlockMetrics};
use crate::virtio::{GuestMemory, Interrupt};

/// Serves the single request queue of a [`super::Block`].
pub struct BlockQueueHandler {
    pub(super) queue: Queue,
    pub(super) memory: GuestMemory,
    pub(super) interrupt: Interrupt,
    pub(super) disk: Arc<dyn BlockBackend>,
    pub(super) read_only: bool,
    pub(super) disk_id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub(super) metrics: Arc<BlockMetrics>,
}

impl BlockQueueHandler {
    /// Completes every available request, then interrupts the driver at most once: whenever any
    /// chain was used, or with EVENT_IDX only when the driver's used_event was passed.
    ///
    /// An error means the queue itself is broken (bad available index, a chain without a place for
    /// the status byte, an unwritable used ring): the caller sets NEEDS_RESET.
    pub fn process_queue(&mut self) -> Result<(), BlockError> {
        let result = self.complete_available();
        if result.is_err() {
            self.metrics.needs_reset.inc();
        }
        result
    }

    fn complete_available(&mut self) -> Result<(), BlockError> {
        let memory = self.memory.clone();
        let mut used_any = false;
        // Suppress driver notifications while draining, then re-enable them and look once more,
        // so a request made available in between is not left waiting (section 2.7.10).
        let drained = loop {
            self.queue
                .disable_notification(memory.as_ref())
                .map_err(BlockError::Queue)?;
            let drained = self.complete_batch(&mut used_any);
            if drained.is_err() {
                break drained;
            }
            let more = self
                .queue
                .enable_notification(memory.as_ref())
                .map_err(BlockError::Queue)?;
            if !more {
                break drained;
            }
        };
        // With VIRTIO_RING_F_EVENT_IDX the driver's used_event decides whether it wants an
        // interrupt; without it this is always true.
        let wants_interrupt = used_any
            && self
                .queue
                .needs_notification(memory.as_ref())
                .map_err(BlockError::Queue)?;
        if wants_interrupt {
            if let Err(error) = self.interrupt.signal_used_queue() {
                self.metrics.interrupt_failures.inc();
                return drained.and(Err(BlockError::Interrupt(error)));
            }
        }
        drained
    }

    /// Completes what is available now; stops at the first chain that breaks the queue.
    fn complete_batch(&mut self, used_any: &mut bool) -> Result<(), BlockError> {
        let memory = self.memory.clone();
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = self
            .queue
            .iter(memory.as_ref())
            .map_err(BlockError::Queue)?
            .collect();
        for chain in chains {
            let head = chain.head_index();
            let completed = self.complete(chain);
            // Even a chain we could not serve goes back to the driver, so its buffers are not lost.
            self.queue
                .add_used(memory.as_ref(), head, *completed.as_ref().unwrap_or(&0))
                .map_err(BlockError::Queue)?;
            *used_any = true;
            completed?;
        }
        Ok(())
    }

    /// Runs one request; returns how many bytes it wrote into device-writable buffers.
    fn complete(&self, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<u32, BlockError> {
        let memory = self.memory.as_ref();
        // Without a device-writable byte in guest memory there is nowhere to put the status.
        let mut data_out = chain
            .clone()
            .writer(memory)
            .map_err(|_| BlockError::NoStatusByte)?;
        let data_len = data_out
            .available_bytes()
            .checked_sub(1)
            .ok_or(BlockError::NoStatusByte)?;
        let mut status_out = data_out
            .split_at(data_len)
            .map_err(|_| BlockError::NoStatusByte)?;
        let readable = chain.reader(memory).ok();
        let ctx = RequestContext {
            disk: self.disk.as_ref(),
            read_only: self.read_only,
            disk_id: &self.disk_id,
            metrics: &self.metrics,
        };
        let status = execute(&ctx, readable, &mut data_out);
        status_out
            .write_obj(status)
            .map_err(|_| BlockError::NoStatusByte)?;
        // Bounded by the chain length, which virtio-queue caps below 2^32 bytes.
        Ok(u32::try_from(data_out.bytes_written() + 1).unwrap_or(u32::MAX))
    }
}
