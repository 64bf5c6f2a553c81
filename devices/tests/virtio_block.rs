//! A virtio-blk device behind the MMIO transport, driven the way a guest driver does: feature
//! negotiation and queue setup through the registers, requests through `MockSplitQueue` rings in a
//! real `GuestMemoryMmap`, and a real `hv_storage` raw file as the disk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hv_devices::trigger::CallbackTrigger;
use hv_devices::virtio::block::{Block, BlockConfig, BlockMetrics};
use hv_devices::virtio::mmio::{split_address, MmioTransport};
use hv_devices::virtio::{Interrupt, VirtioDevice};
use hv_devices::BusDevice;
use hv_storage::raw::RawFileBackend;
use hv_storage::BlockBackend;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x100_0000;
const QUEUE_LEN: u16 = 16;
const RING_BASE: GuestAddress = GuestAddress(0x1000);
const HEADER_ADDR: u64 = 0x10_0000;
const DATA_ADDR: u64 = 0x20_0000;
const STATUS_ADDR: u64 = 0x30_0000;
const DISK_SIZE: u64 = 1024 * 1024;

pub struct Setup {
    pub mem: Arc<GuestMemoryMmap>,
    pub transport: MmioTransport,
    pub metrics: Arc<BlockMetrics>,
    pub disk: Arc<RawFileBackend>,
    pub interrupts: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

fn disk_file(dir: &tempfile::TempDir, read_only: bool) -> Arc<RawFileBackend> {
    let path = dir.path().join("disk.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(DISK_SIZE).unwrap();
    Arc::new(RawFileBackend::open(&path, read_only).unwrap())
}

fn setup(read_only: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(&dir, read_only);
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = interrupts.clone();
    let interrupt = Interrupt::new(CallbackTrigger::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let config = BlockConfig {
        read_only,
        disk_id: "hv-disk-0".into(),
        ..BlockConfig::default()
    };
    let block = Block::new(config, disk.clone() as Arc<dyn BlockBackend>);
    let metrics = block.metrics();
    let transport = MmioTransport::new(Box::new(block), mem.clone(), interrupt);
    Setup {
        mem,
        transport,
        metrics,
        disk,
        interrupts,
        _dir: dir,
    }
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut word = [0u8; 4];
    t.read(offset, &mut word);
    u32::from_le_bytes(word)
}

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiation by a driver without event-index support: it interrupts after every batch.
fn negotiate(t: &mut MmioTransport, queue: &MockSplitQueue<GuestMemoryMmap>) -> u64 {
    negotiate_accepting(t, queue, !(1 << VIRTIO_RING_F_EVENT_IDX))
}

/// What Linux's virtio_mmio + virtio_blk probe does, up to DRIVER_OK; the driver accepts the
/// offered features that are also in `accept`. Returns the offered features.
fn negotiate_accepting(
    t: &mut MmioTransport,
    queue: &MockSplitQueue<GuestMemoryMmap>,
    accept: u64,
) -> u64 {
    assert_eq!(read_reg(t, 0x000), 0x7472_6976, "magic");
    assert_eq!(read_reg(t, 0x004), 2, "version");
    assert_eq!(read_reg(t, 0x008), 2, "device id: block");
    write_reg(t, 0x070, 0);
    write_reg(t, 0x070, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        t,
        0x070,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write_reg(t, 0x014, 0);
    let low = read_reg(t, 0x010);
    write_reg(t, 0x014, 1);
    let high = read_reg(t, 0x010);
    let features = u64::from(high) << 32 | u64::from(low);
    assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
    let accepted = features & accept;
    write_reg(t, 0x024, 0);
    write_reg(t, 0x020, accepted as u32);
    write_reg(t, 0x024, 1);
    write_reg(t, 0x020, (accepted >> 32) as u32);
    let features_ok =
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    write_reg(t, 0x070, features_ok);
    assert_eq!(
        read_reg(t, 0x070),
        features_ok,
        "device accepted the features"
    );
    write_reg(t, 0x030, 0);
    assert_eq!(read_reg(t, 0x044), 0, "queue not ready before setup");
    assert!(read_reg(t, 0x034) >= u32::from(QUEUE_LEN));
    write_reg(t, 0x038, u32::from(QUEUE_LEN));
    for (low_reg, addr) in [
        (0x080, queue.desc_table_addr()),
        (0x090, queue.avail_addr()),
        (0x0a0, queue.used_addr()),
    ] {
        let (lo, hi) = split_address(addr);
        write_reg(t, low_reg, lo);
        write_reg(t, low_reg + 4, hi);
    }
    write_reg(t, 0x044, 1);
    write_reg(t, 0x070, features_ok | VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(read_reg(t, 0x070), features_ok | VIRTIO_CONFIG_S_DRIVER_OK);
    features
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

fn write_header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HEADER_ADDR)).unwrap();
}

/// Header, one data buffer (device-writable for IN), status; returns (status byte, used len).
fn request(
    s: &mut Setup,
    queue: &MockSplitQueue<GuestMemoryMmap>,
    kind: u32,
    sector: u64,
    data_len: u32,
) -> (u8, u32) {
    write_header(&s.mem, kind, sector);
    s.mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let data_flags = if kind == VIRTIO_BLK_T_IN || kind == VIRTIO_BLK_T_GET_ID {
        VRING_DESC_F_WRITE
    } else {
        0
    };
    let mut descs = vec![desc(HEADER_ADDR, 16, VRING_DESC_F_NEXT, 1)];
    if data_len > 0 {
        descs.push(desc(DATA_ADDR, data_len, data_flags | VRING_DESC_F_NEXT, 2));
    }
    let status_index = descs.len() as u16;
    if data_len == 0 {
        descs[0] = desc(HEADER_ADDR, 16, VRING_DESC_F_NEXT, status_index);
    }
    descs.push(desc(STATUS_ADDR, 1, VRING_DESC_F_WRITE, 0));
    submit(s, queue, &descs)
}

/// Puts `descs` in the descriptor table (one chain), notifies, returns (status, used len).
fn submit(
    s: &mut Setup,
    queue: &MockSplitQueue<GuestMemoryMmap>,
    descs: &[RawDescriptor],
) -> (u8, u32) {
    let used_before = queue.used().idx().load();
    queue.add_desc_chains(descs, 0).unwrap();
    write_reg(&mut s.transport, 0x050, 0);
    let used_after = queue.used().idx().load();
    assert_eq!(used_after, used_before.wrapping_add(1), "one chain used");
    let elem = queue
        .used()
        .ring()
        .ref_at(usize::from(used_before % QUEUE_LEN))
        .unwrap()
        .load();
    let status: u8 = s.mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap();
    (status, elem.len())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn test_block_negotiation_offers_spec_features_and_capacity() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    let features = negotiate(&mut s.transport, &queue);
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let mut capacity = [0u8; 8];
    s.transport.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SIZE / 512);
    let mut seg_max = [0u8; 4];
    s.transport.read(0x100 + 12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
}

#[test]
fn test_block_write_then_read_round_trips_through_the_raw_file() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    let data = pattern(8192, 7);
    s.mem.write_slice(&data, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_OUT, 10, 8192), (0, 1));
    let mut on_disk = vec![0u8; 8192];
    s.disk.read_at(&mut on_disk, 10 * 512).unwrap();
    assert_eq!(on_disk, data, "the write reached the backing file");

    s.mem
        .write_slice(&vec![0u8; 8192], GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_IN, 10, 8192),
        (0, 8193)
    );
    let mut read_back = vec![0u8; 8192];
    s.mem
        .read_slice(&mut read_back, GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(read_back, data);

    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_FLUSH, 0, 0), (0, 1));
    assert_eq!(s.metrics.reads.get(), 1);
    assert_eq!(s.metrics.writes.get(), 1);
    assert_eq!(s.metrics.flushes.get(), 1);
    assert_eq!(s.metrics.write_bytes.get(), 8192);
    assert_eq!(
        s.interrupts.load(Ordering::SeqCst),
        3,
        "one used-buffer interrupt per notify"
    );
    assert_eq!(
        read_reg(&mut s.transport, 0x060) & 1,
        1,
        "InterruptStatus has the vring bit"
    );
    write_reg(&mut s.transport, 0x064, 1);
    assert_eq!(
        read_reg(&mut s.transport, 0x060),
        0,
        "InterruptACK clears it"
    );
}

#[test]
fn test_block_get_id_discard_and_write_zeroes() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_GET_ID, 0, 20), (0, 21));
    let mut id = [0u8; 20];
    s.mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(&id[..9], b"hv-disk-0");
    assert!(id[9..].iter().all(|&b| b == 0));

    s.disk.write_at(&pattern(4096, 1), 0).unwrap();
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let mut segment = [0u8; 16];
        segment[0..8].copy_from_slice(&2u64.to_le_bytes());
        segment[8..12].copy_from_slice(&2u32.to_le_bytes());
        s.mem
            .write_slice(&segment, GuestAddress(DATA_ADDR))
            .unwrap();
        assert_eq!(request(&mut s, &queue, kind, 0, 16), (0, 1));
    }
    let mut on_disk = vec![0u8; 4096];
    s.disk.read_at(&mut on_disk, 0).unwrap();
    assert_eq!(
        &on_disk[..1024],
        &pattern(4096, 1)[..1024],
        "sectors 0-1 untouched"
    );
    assert!(
        on_disk[1024..2048].iter().all(|&b| b == 0),
        "sectors 2-3 zeroed"
    );
    assert_eq!(&on_disk[2048..], &pattern(4096, 1)[2048..]);

    // Discard has no flags: the unmap bit is unsupported there.
    let mut segment = [0u8; 16];
    segment[12..16].copy_from_slice(&1u32.to_le_bytes());
    s.mem
        .write_slice(&segment, GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_DISCARD, 0, 16).0,
        VIRTIO_BLK_S_UNSUPP as u8
    );
}

#[test]
fn test_block_out_of_range_and_unknown_requests_get_error_statuses() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    let last_sector = DISK_SIZE / 512 - 1;
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_IN, last_sector, 512).0,
        0
    );
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_IN, last_sector, 1024).0,
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_OUT, u64::MAX, 512).0,
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_IN, 0, 100).0,
        VIRTIO_BLK_S_IOERR as u8,
        "partial sector"
    );
    assert_eq!(
        request(&mut s, &queue, 0x1234, 0, 0).0,
        VIRTIO_BLK_S_UNSUPP as u8
    );
    assert_eq!(s.metrics.out_of_range.get(), 2);
    assert_eq!(s.metrics.io_errors.get(), 3);
    assert_eq!(s.metrics.unsupported.get(), 1);
    assert_eq!(
        read_reg(&mut s.transport, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0,
        "request errors do not break the device"
    );
}

#[test]
fn test_block_read_only_refuses_writes_and_leaves_the_disk_alone() {
    let mut s = setup(true);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    let features = negotiate(&mut s.transport, &queue);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    s.mem
        .write_slice(&pattern(512, 3), GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_OUT, 0, 512).0,
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16).0,
        VIRTIO_BLK_S_IOERR as u8
    );
    let mut on_disk = vec![0xaau8; 512];
    s.disk.read_at(&mut on_disk, 0).unwrap();
    assert!(on_disk.iter().all(|&b| b == 0));
    assert_eq!(s.metrics.read_only_writes.get(), 2);
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_IN, 0, 512).0,
        0,
        "reads still work"
    );
}

#[test]
fn test_block_malformed_chains_get_ioerr_or_needs_reset() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    // Header too short: the status byte is still there, so the driver gets IOERR.
    s.mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let short_header = [
        desc(HEADER_ADDR, 8, VRING_DESC_F_NEXT, 1),
        desc(STATUS_ADDR, 1, VRING_DESC_F_WRITE, 0),
    ];
    assert_eq!(
        submit(&mut s, &queue, &short_header),
        (VIRTIO_BLK_S_IOERR as u8, 1)
    );
    // Data buffer outside guest memory (readable part): IOERR, device keeps going.
    write_header(&s.mem, VIRTIO_BLK_T_OUT, 0);
    let wild_data = [
        desc(HEADER_ADDR, 16, VRING_DESC_F_NEXT, 1),
        desc(MEM_SIZE as u64 - 256, 512, VRING_DESC_F_NEXT, 2),
        desc(STATUS_ADDR, 1, VRING_DESC_F_WRITE, 0),
    ];
    assert_eq!(
        submit(&mut s, &queue, &wild_data).0,
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(
        read_reg(&mut s.transport, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    // No device-writable descriptor at all: nowhere to put a status, so NEEDS_RESET.
    let no_status = [desc(HEADER_ADDR, 16, 0, 0)];
    let (_, used_len) = submit(&mut s, &queue, &no_status);
    assert_eq!(used_len, 0);
    let status = read_reg(&mut s.transport, 0x070);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_ne!(
        read_reg(&mut s.transport, 0x060) & 2,
        0,
        "config-change interrupt"
    );
    assert_eq!(s.metrics.needs_reset.get(), 1);
    // Writing 0 resets the device; the driver can start again.
    write_reg(&mut s.transport, 0x070, 0);
    assert_eq!(read_reg(&mut s.transport, 0x070), 0);
    assert_eq!(read_reg(&mut s.transport, 0x060), 0);
}

#[test]
fn test_block_features_without_version_1_are_refused() {
    let mut s = setup(false);
    let t = &mut s.transport;
    write_reg(t, 0x070, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        t,
        0x070,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write_reg(t, 0x024, 0);
    write_reg(t, 0x020, 1 << VIRTIO_BLK_F_FLUSH);
    write_reg(
        t,
        0x070,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(
        read_reg(t, 0x070) & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "legacy-only driver refused"
    );
}

#[test]
fn test_block_device_trait_reports_block_identity() {
    let dir = tempfile::tempdir().unwrap();
    let block = Block::new(BlockConfig::default(), disk_file(&dir, false));
    assert_eq!(block.device_type(), 2);
    assert_eq!(block.queue_max_sizes(), &[256]);
}

#[test]
fn test_block_follows_indirect_descriptor_tables() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    let features = negotiate(&mut s.transport, &queue);
    assert_ne!(features & (1 << VIRTIO_RING_F_INDIRECT_DESC), 0);
    let data = pattern(1024, 9);
    s.disk.write_at(&data, 4 * 512).unwrap();
    write_header(&s.mem, VIRTIO_BLK_T_IN, 4);
    s.mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let table = GuestAddress(0x38_0000);
    let inner = [
        desc(HEADER_ADDR, 16, VRING_DESC_F_NEXT, 1),
        desc(DATA_ADDR, 1024, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
        desc(STATUS_ADDR, 1, VRING_DESC_F_WRITE, 0),
    ];
    for (i, d) in inner.iter().enumerate() {
        s.mem
            .write_obj(*d, table.unchecked_add(16 * i as u64))
            .unwrap();
    }
    let outer = [desc(table.0, 48, VRING_DESC_F_INDIRECT, 0)];
    assert_eq!(submit(&mut s, &queue, &outer), (0, 1025));
    let mut read_back = vec![0u8; 1024];
    s.mem
        .read_slice(&mut read_back, GuestAddress(DATA_ADDR))
        .unwrap();
    assert_eq!(read_back, data);
}

/// A disk whose every operation fails the way a dying host disk does.
struct FailingDisk;

impl BlockBackend for FailingDisk {
    fn size(&self) -> u64 {
        DISK_SIZE
    }
    fn read_at(&self, _: &mut [u8], offset: u64) -> Result<(), hv_storage::BlockError> {
        Err(hv_storage::BlockError::Io {
            offset,
            source: std::io::Error::other("medium error"),
        })
    }
    fn write_at(&self, _: &[u8], offset: u64) -> Result<(), hv_storage::BlockError> {
        Err(hv_storage::BlockError::Io {
            offset,
            source: std::io::Error::other("medium error"),
        })
    }
    fn flush(&self) -> Result<(), hv_storage::BlockError> {
        Err(hv_storage::BlockError::NoSpace)
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), hv_storage::BlockError> {
        Err(hv_storage::BlockError::Busy)
    }
    fn write_zeroes(&self, _: u64, _: u64) -> Result<(), hv_storage::BlockError> {
        Err(hv_storage::BlockError::ReadOnly)
    }
}

#[test]
fn test_block_host_io_errors_become_ioerr_statuses() {
    let mut s = setup(false);
    let block = Block::new(BlockConfig::default(), Arc::new(FailingDisk));
    let metrics = block.metrics();
    let interrupt = Interrupt::new(CallbackTrigger::new(|| {}));
    s.transport = MmioTransport::new(Box::new(block), s.mem.clone(), interrupt);
    s.metrics = metrics;
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_IN, 0, 512).0, ioerr);
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_OUT, 0, 512).0, ioerr);
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_FLUSH, 0, 0).0, ioerr);
    assert_eq!(
        request(&mut s, &queue, VIRTIO_BLK_T_DISCARD, 0, 16).0,
        ioerr
    );
    assert_eq!(s.metrics.io_errors.get(), 4);
    assert_eq!(s.metrics.reads.get() + s.metrics.writes.get(), 0);
    assert_eq!(
        read_reg(&mut s.transport, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn test_block_batch_completes_every_chain_with_one_interrupt() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    // Three FLUSH requests (header + status each) made available before a single notify.
    write_header(&s.mem, VIRTIO_BLK_T_FLUSH, 0);
    let mut descs = Vec::new();
    for i in 0..3u16 {
        descs.push(desc(HEADER_ADDR, 16, VRING_DESC_F_NEXT, 2 * i + 1));
        descs.push(desc(STATUS_ADDR + u64::from(i), 1, VRING_DESC_F_WRITE, 0));
    }
    queue.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(queue.avail().idx().load(), 3);
    write_reg(&mut s.transport, 0x050, 0);
    assert_eq!(queue.used().idx().load(), 3);
    for i in 0..3u16 {
        let elem = queue.used().ring().ref_at(usize::from(i)).unwrap().load();
        assert_eq!((elem.id(), elem.len()), (u32::from(2 * i), 1));
    }
    assert_eq!(s.metrics.flushes.get(), 3);
    assert_eq!(s.interrupts.load(Ordering::SeqCst), 1);
    // A notify with nothing new available completes nothing and raises nothing.
    write_reg(&mut s.transport, 0x050, 0);
    assert_eq!(queue.used().idx().load(), 3);
    assert_eq!(s.interrupts.load(Ordering::SeqCst), 1);
}

#[test]
fn test_block_notify_for_a_missing_queue_needs_reset() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    negotiate(&mut s.transport, &queue);
    write_reg(&mut s.transport, 0x050, 1);
    assert_ne!(
        read_reg(&mut s.transport, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn test_block_event_idx_interrupts_only_when_the_driver_asks() {
    let mut s = setup(false);
    let mem = s.mem.clone();
    let queue = MockSplitQueue::create(mem.as_ref(), RING_BASE, QUEUE_LEN);
    let features = negotiate_accepting(&mut s.transport, &queue, u64::MAX);
    assert_ne!(features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    // used_event sits after the available ring entries; the driver wants an interrupt once the
    // used index moves past 1, i.e. at the second completion.
    let used_event = queue
        .avail_addr()
        .unchecked_add(4 + 2 * u64::from(QUEUE_LEN));
    s.mem.write_obj(1u16, used_event).unwrap();
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_FLUSH, 0, 0), (0, 1));
    assert_eq!(
        s.interrupts.load(Ordering::SeqCst),
        0,
        "first completion suppressed"
    );
    assert_eq!(request(&mut s, &queue, VIRTIO_BLK_T_FLUSH, 0, 0), (0, 1));
    assert_eq!(
        s.interrupts.load(Ordering::SeqCst),
        1,
        "second completion interrupts"
    );
    // The device publishes avail_event (after the used ring entries) = where it will look next.
    let avail_event = queue
        .used_addr()
        .unchecked_add(4 + 8 * u64::from(QUEUE_LEN));
    assert_eq!(s.mem.read_obj::<u16>(avail_event).unwrap(), 2);
}

#[test]
fn test_block_transport_is_reachable_through_the_mmio_bus() {
    let s = setup(false);
    let base = 0xd000_1000;
    let mut bus = hv_devices::Bus::new();
    let transport = Arc::new(std::sync::Mutex::new(s.transport));
    bus.insert(transport, base, hv_devices::virtio::mmio::MMIO_REGION_SIZE)
        .unwrap();
    let mut word = [0u8; 4];
    assert!(bus.read(base, &mut word));
    assert_eq!(u32::from_le_bytes(word), 0x7472_6976);
    let mut capacity = [0u8; 8];
    assert!(bus.read(base + 0x100, &mut capacity));
    assert_eq!(u64::from_le_bytes(capacity), DISK_SIZE / 512);
    assert!(
        !bus.read(base + 0x200, &mut word),
        "the region ends at 0x200"
    );
}
