//! The io_uring engine for NBD connections: one ring per client, one thread per client, no other threads.
//!
//! The ring carries everything: a `RECV` on the client socket, and `READ`/`WRITE` on the tier files for
//! every request parsed from what arrived. All requests parsed from one receive are submitted with one
//! `io_uring_enter`, together with the re-armed `RECV` (batched submission). Replies are gathered and
//! written to the socket once per loop turn. Tier descriptors opened with `O_DIRECT` are used when the
//! buffer, offset and length are aligned (buffers are [`AlignedBuf`]s, so in practice whenever the
//! client's request is 4 KiB aligned).
//!
//! Exception: a read whose data all lives on memory-backed (tmpfs) tiers is copied with `pread` straight
//! into the reply on the event loop. It cannot wait for a device, and skipping the buffer allocation, the
//! ring round trip and the second copy is what makes fast-tier hits cheap.
//!
//! Registered (fixed) buffers are not used. 4 KiB request buffers are reused from a per-connection
//! spare list (not zeroed: reads zero their unallocated ranges, writes overwrite the whole buffer);
//! registering that set would save the kernel's per-request page pinning only for device-tier misses,
//! which are a minority of requests once the fast tier is warm.
//!
//! This is the crate's only `unsafe` code: pushing submission entries. Every buffer whose address a
//! submitted entry carries is owned by the [`Connection`] (the receive buffer, or a `Pending` slot) and
//! is neither moved, freed nor reused until that entry's completion has been reaped; `Connection::drop`
//! waits for all outstanding completions (and leaks the buffers if it cannot).

use std::sync::OnceLock;

use io_uring::{opcode, squeue, types, IoUring};

use crate::nbd::proto::*;
use crate::nbd::transmission::{check_length, errno_of, execute_control};
use crate::nbd::{Export, NbdError, NbdStream};
use crate::tier::AlignedBuf;
use crate::volume::{IoPlan, Segment};

const RING_ENTRIES: u32 = 256;
const RECV_TAG: u64 = u64::MAX;
const RECV_CHUNK: usize = 256 << 10;
/// Requests in flight per connection before we stop parsing (keeps the CQ from overflowing).
const MAX_IN_FLIGHT: usize = 128;
/// Request buffers of this length (the usual 4 KiB block) are kept for reuse instead of freed.
const POOLED_BUF_LEN: usize = 4096;

/// Whether this kernel lets us create an io_uring (it may be disabled by sysctl or seccomp).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| IoUring::new(2).is_ok())
}

struct Pending {
    request: Request,
    plan: Option<IoPlan>,
    buf: AlignedBuf,
    remaining: usize,
    error: u32,
}

/// A request waiting for a move to finish switching one of its extents.
struct Deferred {
    request: Request,
    /// A write's payload; reads get their buffer only once they are planned.
    buf: Option<AlignedBuf>,
}

struct Connection<'a, S: NbdStream> {
    ring: IoUring,
    stream: S,
    export: &'a Export,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<usize>,
    recv_buf: Box<[u8]>,
    recv_armed: bool,
    /// Buffers of completed requests, reused (not zeroed) by the next ones.
    spare_bufs: Vec<AlignedBuf>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    ops_in_flight: usize,
    requests_in_flight: usize,
    deferred: std::collections::VecDeque<Deferred>,
    /// The client sent NBD_CMD_DISC: stop parsing.
    closing: bool,
    /// The client closed its side: stop receiving, but still serve what arrived.
    eof: bool,
}

/// Serves one client on a fresh ring until it disconnects.
pub fn serve_connection<S: NbdStream>(stream: S, export: &Export) -> Result<(), NbdError> {
    let ring = IoUring::new(RING_ENTRIES).map_err(NbdError::Uring)?;
    let mut connection = Connection {
        ring,
        stream,
        export,
        slots: Vec::new(),
        free_slots: Vec::new(),
        recv_buf: vec![0u8; RECV_CHUNK].into_boxed_slice(),
        recv_armed: false,
        spare_bufs: Vec::new(),
        inbuf: Vec::new(),
        outbuf: Vec::new(),
        ops_in_flight: 0,
        requests_in_flight: 0,
        deferred: std::collections::VecDeque::new(),
        closing: false,
        eof: false,
    };
    let result = connection.run();
    connection.stream.close();
    result
}

impl<S: NbdStream> Connection<'_, S> {
    fn run(&mut self) -> Result<(), NbdError> {
        loop {
            self.retry_deferred();
            if !self.closing && !self.eof && !self.recv_armed && self.backlog() < MAX_IN_FLIGHT {
                self.arm_recv()?;
            }
            if (self.closing || self.eof) && self.backlog() == 0 {
                return Ok(());
            }
            if self.deferred.is_empty() {
                self.ring.submit_and_wait(1).map_err(NbdError::Uring)?;
            } else {
                // A move is switching an extent (microseconds): poll instead of sleeping on the ring.
                self.ring.submit().map_err(NbdError::Uring)?;
                std::thread::yield_now();
            }
            self.reap()?;
            self.parse_requests()?;
            self.send_replies()?;
        }
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), NbdError> {
        loop {
            // SAFETY: every entry pushed here points at a buffer owned by this Connection (`recv_buf` or
            // a `Pending::buf` in `slots`) that stays allocated and untouched until its completion is
            // reaped in `reap`, and `Drop` waits for all completions. The file descriptors belong to the
            // socket and tier files, which outlive the connection.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what we have to the kernel and retry.
            self.ring.submit().map_err(NbdError::Uring)?;
        }
    }

    fn arm_recv(&mut self) -> Result<(), NbdError> {
        let fd = types::Fd(self.stream.as_raw_fd());
        let entry = opcode::Recv::new(fd, self.recv_buf.as_mut_ptr(), self.recv_buf.len() as u32)
            .build()
            .user_data(RECV_TAG);
        self.push(&entry)?;
        self.recv_armed = true;
        Ok(())
    }

    fn reap(&mut self) -> Result<(), NbdError> {
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, result) in completions {
            if user_data == RECV_TAG {
                self.recv_armed = false;
                match result {
                    n if n > 0 => self.inbuf.extend_from_slice(&self.recv_buf[..n as usize]),
                    0 => self.eof = true,
                    n if -n == libc::EINTR || -n == libc::EAGAIN => {}
                    n => {
                        self.eof = true;
                        tracing::warn!(error = %std::io::Error::from_raw_os_error(-n), "socket receive failed");
                    }
                }
                continue;
            }
            self.ops_in_flight -= 1;
            let slot = (user_data >> 32) as usize;
            let segment = (user_data & 0xFFFF_FFFF) as usize;
            self.complete_segment(slot, segment, result);
        }
        Ok(())
    }

    fn complete_segment(&mut self, slot: usize, segment_index: usize, result: i32) {
        let export = self.export;
        let Some(pending) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let segment = pending
            .plan
            .as_ref()
            .map(|plan| plan.segments[segment_index]);
        if let Some(Segment::Tier {
            tier,
            file_offset,
            buf_offset,
            len,
        }) = segment
        {
            let done = result.max(0) as usize;
            if result < 0 {
                let error = std::io::Error::from_raw_os_error(-result);
                tracing::warn!(error = %error, offset = pending.request.offset, "tier I/O failed");
                pending.error = libc::EIO as u32;
            } else if done < len {
                // Short transfer (rare on files): finish the rest synchronously.
                let tier = export.volume.tier(tier);
                let rest = buf_offset + done..buf_offset + len;
                let finished = if pending.request.kind == CMD_READ {
                    tier.read_exact_at(
                        &mut pending.buf.as_mut_slice()[rest],
                        file_offset + done as u64,
                    )
                } else {
                    tier.write_all_at(&pending.buf.as_slice()[rest], file_offset + done as u64)
                };
                if finished.is_err() {
                    pending.error = libc::EIO as u32;
                }
            }
        }
        pending.remaining -= 1;
        if pending.remaining == 0 {
            self.finish(slot);
        }
    }

    fn finish(&mut self, slot: usize) {
        let Some(mut pending) = self.slots[slot].take() else {
            return;
        };
        self.free_slots.push(slot);
        self.requests_in_flight -= 1;
        if pending.error != 0 {
            if let Some(plan) = pending.plan.as_mut() {
                plan.mark_failed();
            }
        }
        // Dropping the plan releases the extents (and confirms newly allocated ones) before the reply.
        drop(pending.plan.take());
        let request = pending.request;
        if pending.error == 0 && request.kind == CMD_WRITE && request.flags & CMD_FLAG_FUA != 0 {
            if let Err(error) = crate::BlockBackend::flush(&self.export.volume) {
                pending.error = errno_of(&error, &request);
            }
        }
        push_simple_reply(&mut self.outbuf, pending.error, request.cookie);
        if pending.error == 0 && request.kind == CMD_READ {
            self.outbuf.extend_from_slice(pending.buf.as_slice());
        }
        // Every operation on the buffer has been reaped (remaining == 0): the kernel is done with it.
        self.recycle_buf(pending.buf);
    }

    /// A buffer for a request of `len` bytes. A reused one holds an earlier request's bytes: callers
    /// overwrite all of it (write payloads) or zero what the ring will not fill (reads).
    fn take_buf(&mut self, len: usize) -> AlignedBuf {
        if len == POOLED_BUF_LEN {
            if let Some(buf) = self.spare_bufs.pop() {
                return buf;
            }
        }
        AlignedBuf::zeroed(len)
    }

    fn recycle_buf(&mut self, buf: AlignedBuf) {
        if buf.len() == POOLED_BUF_LEN && self.spare_bufs.len() < MAX_IN_FLIGHT {
            self.spare_bufs.push(buf);
        }
    }

    fn parse_requests(&mut self) -> Result<(), NbdError> {
        let mut consumed = 0;
        while !self.closing && self.backlog() < MAX_IN_FLIGHT {
            let available = &self.inbuf[consumed..];
            let Some(header) = available.get(..REQUEST_LEN) else {
                break;
            };
            let mut header_bytes = [0u8; REQUEST_LEN];
            header_bytes.copy_from_slice(header);
            let request = Request::parse(&header_bytes)
                .ok_or_else(|| NbdError::Protocol("bad request magic".into()))?;
            if request.kind == CMD_WRITE {
                check_length(&request)?;
            }
            let total = REQUEST_LEN + request.payload_len();
            if available.len() < total {
                break;
            }
            let payload_range = consumed + REQUEST_LEN..consumed + total;
            consumed += total;
            self.start_request(request, payload_range)?;
        }
        self.inbuf.drain(..consumed);
        Ok(())
    }

    fn start_request(
        &mut self,
        request: Request,
        payload: std::ops::Range<usize>,
    ) -> Result<(), NbdError> {
        match request.kind {
            CMD_DISC => {
                self.closing = true;
                Ok(())
            }
            CMD_READ | CMD_WRITE => {
                self.start_io(request, payload);
                Ok(())
            }
            _ => {
                // Control requests run synchronously once this connection's own I/O has drained, so a
                // discard never waits for extents this thread itself holds.
                self.wait_idle()?;
                let error = execute_control(self.export, &request);
                push_simple_reply(&mut self.outbuf, error, request.cookie);
                Ok(())
            }
        }
    }

    /// Retries deferred requests once each (those still blocked go back in the queue).
    fn retry_deferred(&mut self) {
        for _ in 0..self.deferred.len() {
            if let Some(deferred) = self.deferred.pop_front() {
                self.try_start(deferred.request, deferred.buf);
            }
        }
    }

    fn start_io(&mut self, request: Request, payload: std::ops::Range<usize>) {
        if request.kind == CMD_READ {
            if let Ok(Some(error)) = check_length(&request) {
                push_simple_reply(&mut self.outbuf, error, request.cookie);
                return;
            }
        }
        let mut buf = None;
        if request.kind == CMD_WRITE {
            if self.export.read_only {
                let error = errno_of(&crate::BlockError::ReadOnly, &request);
                push_simple_reply(&mut self.outbuf, error, request.cookie);
                return;
            }
            let mut payload_buf = self.take_buf(request.length as usize);
            payload_buf
                .as_mut_slice()
                .copy_from_slice(&self.inbuf[payload]);
            buf = Some(payload_buf);
        }
        self.try_start(request, buf);
    }

    /// Plans and submits a READ/WRITE whose buffer is ready. If a move is switching one of its extents it
    /// is deferred instead of waiting: the move may be waiting for requests only this thread can reap.
    fn try_start(&mut self, request: Request, buf: Option<AlignedBuf>) {
        let volume = &self.export.volume;
        let planned = if request.kind == CMD_READ {
            volume.try_plan_read(request.offset, request.length as u64)
        } else {
            volume.try_plan_write(request.offset, request.length as u64)
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(crate::BlockError::Busy) => {
                self.deferred.push_back(Deferred { request, buf });
                return;
            }
            Err(error) => {
                push_simple_reply(&mut self.outbuf, errno_of(&error, &request), request.cookie);
                return;
            }
        };
        let plan = match request.kind {
            CMD_READ => match self.try_read_inline(&request, plan) {
                Some(plan) => plan,
                None => return,
            },
            _ => plan,
        };
        let buf = match buf {
            Some(buf) => buf,
            None => {
                let mut buf = self.take_buf(request.length as usize);
                // Unallocated ranges read as zeros; a reused buffer still holds another request's data.
                for segment in &plan.segments {
                    if let Segment::Zero { buf_offset, len } = *segment {
                        buf.as_mut_slice()[buf_offset..buf_offset + len].fill(0);
                    }
                }
                buf
            }
        };
        let io_segments: Vec<(usize, Segment)> = plan
            .segments
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, s)| matches!(s, Segment::Tier { .. }))
            .collect();
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.requests_in_flight += 1;
        self.slots[slot] = Some(Pending {
            request,
            plan: Some(plan),
            buf,
            remaining: io_segments.len().max(1),
            error: 0,
        });
        if io_segments.is_empty() {
            // Only unallocated (zero) ranges: nothing to do on the ring.
            self.finish(slot);
            return;
        }
        for (index, segment) in io_segments {
            let Segment::Tier {
                tier,
                file_offset,
                buf_offset,
                len,
            } = segment
            else {
                continue;
            };
            let Some(pending) = self.slots[slot].as_mut() else {
                return;
            };
            let address = pending.buf.as_mut_slice()[buf_offset..].as_mut_ptr();
            let fd = types::Fd(self.export.volume.tier(tier).fd_for(
                address as usize,
                file_offset,
                len,
            ));
            let entry = if request.kind == CMD_READ {
                opcode::Read::new(fd, address, len as u32)
                    .offset(file_offset)
                    .build()
            } else {
                opcode::Write::new(fd, address, len as u32)
                    .offset(file_offset)
                    .build()
            };
            let entry = entry.user_data(((slot as u64) << 32) | index as u64);
            if self.push(&entry).is_err() {
                // The ring is broken; fail this segment as if the kernel had.
                self.complete_segment(slot, index, -libc::EIO);
                continue;
            }
            self.ops_in_flight += 1;
        }
    }

    /// Serves a read whose allocated pieces all live on memory-backed (tmpfs) tiers by copying them
    /// straight into the reply: no buffer allocation, no ring round trip, no second copy. A tmpfs read
    /// is a memory copy that cannot wait for a device, so doing it on the event loop stalls nothing.
    /// Returns the plan untouched when some piece lives on a device-backed tier.
    fn try_read_inline(&mut self, request: &Request, plan: IoPlan) -> Option<IoPlan> {
        let volume = &self.export.volume;
        let in_memory = plan.segments.iter().all(|segment| match segment {
            Segment::Tier { tier, .. } => volume.tier(*tier).is_memory_backed(),
            Segment::Zero { .. } => true,
        });
        if !in_memory {
            return Some(plan);
        }
        let reply_start = self.outbuf.len();
        push_simple_reply(&mut self.outbuf, 0, request.cookie);
        let data_start = self.outbuf.len();
        // Zero-filled, so unallocated (Zero) segments need no further work.
        self.outbuf.resize(data_start + request.length as usize, 0);
        let mut failed = false;
        for segment in &plan.segments {
            let Segment::Tier {
                tier,
                file_offset,
                buf_offset,
                len,
            } = *segment
            else {
                continue;
            };
            let start = data_start + buf_offset;
            let destination = &mut self.outbuf[start..start + len];
            if let Err(error) = volume.tier(tier).read_exact_at(destination, file_offset) {
                tracing::warn!(error = %error, offset = request.offset, "tier read failed");
                failed = true;
                break;
            }
        }
        // Releases the extents (a move may be waiting for them) before the reply leaves.
        drop(plan);
        if failed {
            self.outbuf.truncate(reply_start);
            push_simple_reply(&mut self.outbuf, libc::EIO as u32, request.cookie);
        }
        None
    }

    /// Waits until every tier operation of this connection has completed.
    fn wait_idle(&mut self) -> Result<(), NbdError> {
        while self.ops_in_flight > 0 || !self.deferred.is_empty() {
            if self.ops_in_flight > 0 {
                self.ring.submit_and_wait(1).map_err(NbdError::Uring)?;
                self.reap()?;
            } else {
                std::thread::yield_now();
            }
            self.retry_deferred();
        }
        Ok(())
    }

    /// Requests accepted but not yet answered.
    fn backlog(&self) -> usize {
        self.requests_in_flight + self.deferred.len()
    }

    fn send_replies(&mut self) -> Result<(), NbdError> {
        if !self.outbuf.is_empty() {
            self.stream.write_all(&self.outbuf)?;
            self.outbuf.clear();
        }
        Ok(())
    }

    /// Waits for every outstanding completion, including the receive (ended by closing the socket).
    fn drain(&mut self) -> std::io::Result<()> {
        if self.recv_armed {
            self.stream.close();
        }
        while self.ops_in_flight > 0 || self.recv_armed {
            self.ring.submit_and_wait(1)?;
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (user_data, _) in completions {
                if user_data == RECV_TAG {
                    self.recv_armed = false;
                } else {
                    self.ops_in_flight -= 1;
                }
            }
        }
        Ok(())
    }
}

impl<S: NbdStream> Drop for Connection<'_, S> {
    fn drop(&mut self) {
        if let Err(error) = self.drain() {
            tracing::error!(error = %error, "cannot wait for in-flight io_uring operations; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.recv_buf));
        }
    }
}
