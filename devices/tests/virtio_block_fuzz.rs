//! Random descriptor chains against a live virtio-blk device: the device must never panic, and
//! every chain either comes back on the used ring with a status byte written (used length >= 1)
//! or the device reports NEEDS_RESET.

use std::sync::Arc;

use hv_devices::trigger::CallbackTrigger;
use hv_devices::virtio::block::{Block, BlockConfig};
use hv_devices::virtio::mmio::{split_address, MmioTransport};
use hv_devices::virtio::Interrupt;
use hv_devices::BusDevice;
use hv_storage::raw::RawFileBackend;
use hv_storage::BlockBackend;
use proptest::prelude::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x40_0000;
const QUEUE_LEN: u16 = 16;

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut word = [0u8; 4];
    t.read(offset, &mut word);
    u32::from_le_bytes(word)
}

#[derive(Debug, Clone)]
struct RandomDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn descriptor() -> impl Strategy<Value = RandomDescriptor> {
    let addr = prop_oneof![
        // Inside the data area, near the end of memory, and far outside it.
        (0x10_0000u64..0x30_0000),
        (MEM_SIZE - 0x1000..MEM_SIZE + 0x1000),
        any::<u64>(),
    ];
    let len = prop_oneof![
        Just(1u32),
        Just(16),
        0u32..2048,
        Just(512 * 8),
        any::<u32>()
    ];
    let flags = prop_oneof![
        Just(VRING_DESC_F_NEXT as u16),
        Just(VRING_DESC_F_WRITE as u16),
        Just((VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16),
        Just(0),
        Just(VRING_DESC_F_INDIRECT as u16),
        any::<u16>(),
    ];
    (addr, len, flags, 0u16..QUEUE_LEN + 4).prop_map(|(addr, len, flags, next)| RandomDescriptor {
        addr,
        len,
        flags,
        next,
    })
}

/// A header / data / status chain as a driver builds it, with one descriptor field then replaced
/// by a random value, so most cases get past chain validation into request handling.
fn mostly_valid_chain() -> impl Strategy<Value = Vec<RandomDescriptor>> {
    let data_len = prop_oneof![Just(512u32), Just(4096), Just(16), Just(20), 0u32..8192];
    (data_len, any::<bool>(), 0usize..3, 0usize..5, descriptor()).prop_map(
        |(data_len, data_writable, victim, field, noise)| {
            let write = if data_writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = VRING_DESC_F_NEXT as u16;
            let mut chain = vec![
                RandomDescriptor {
                    addr: 0x10_0000,
                    len: 16,
                    flags: next,
                    next: 1,
                },
                RandomDescriptor {
                    addr: 0x20_0000,
                    len: data_len,
                    flags: next | write,
                    next: 2,
                },
                RandomDescriptor {
                    addr: 0x30_0000,
                    len: 1,
                    flags: VRING_DESC_F_WRITE as u16,
                    next: 0,
                },
            ];
            let d = &mut chain[victim];
            match field {
                0 => d.addr = noise.addr,
                1 => d.len = noise.len,
                2 => d.flags = noise.flags,
                3 => d.next = noise.next,
                _ => {} // left intact
            }
            chain
        },
    )
}

fn chain() -> impl Strategy<Value = Vec<RandomDescriptor>> {
    prop_oneof![
        1 => proptest::collection::vec(descriptor(), 1..8),
        3 => mostly_valid_chain(),
    ]
}

/// Header contents the device will parse: known request types with random sectors, or noise.
fn header() -> impl Strategy<Value = (u32, u64)> {
    let kind = prop_oneof![
        6 => proptest::sample::select(vec![0u32, 1, 4, 8, 11, 13]),
        1 => 0u32..16,
        1 => any::<u32>(),
    ];
    let sector = prop_oneof![4 => 0u64..2048, 1 => any::<u64>()];
    (kind, sector)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn test_block_random_chains_never_panic_and_always_complete(
        descs in chain(),
        headers in proptest::collection::vec(header(), 1..4),
        read_only in any::<bool>(),
        event_idx in any::<bool>(),
        used_event in any::<u16>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let disk: Arc<dyn BlockBackend> = Arc::new(RawFileBackend::open(&path, read_only).unwrap());
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap());
        let config = BlockConfig { read_only, ..BlockConfig::default() };
        let block = Block::new(config, disk);
        let metrics = block.metrics();
        let interrupt = Interrupt::new(CallbackTrigger::new(|| {}));
        let mut t = MmioTransport::new(Box::new(block), mem.clone(), interrupt);
        let queue = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1000), QUEUE_LEN);

        // Negotiate and set the queue up the way a driver does.
        write_reg(&mut t, 0x070, 1);
        write_reg(&mut t, 0x070, 3);
        if event_idx {
            write_reg(&mut t, 0x024, 0);
            write_reg(&mut t, 0x020, 1 << VIRTIO_RING_F_EVENT_IDX);
            let used_event_addr = queue.avail_addr().unchecked_add(4 + 2 * u64::from(QUEUE_LEN));
            mem.write_obj(used_event, used_event_addr).unwrap();
        }
        write_reg(&mut t, 0x024, 1);
        write_reg(&mut t, 0x020, 1);
        write_reg(&mut t, 0x070, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        write_reg(&mut t, 0x038, u32::from(QUEUE_LEN));
        for (reg, addr) in [(0x080, queue.desc_table_addr()), (0x090, queue.avail_addr()), (0x0a0, queue.used_addr())] {
            let (lo, hi) = split_address(addr);
            write_reg(&mut t, reg, lo);
            write_reg(&mut t, reg + 4, hi);
        }
        write_reg(&mut t, 0x044, 1);
        write_reg(&mut t, 0x070, 3 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        prop_assert_ne!(read_reg(&mut t, 0x070) & VIRTIO_CONFIG_S_DRIVER_OK, 0);

        // Plant plausible headers where descriptors point, so parsing goes past the header check.
        for (desc, (kind, sector)) in descs.iter().zip(headers.iter().cycle()) {
            let mut bytes = [0u8; 16];
            bytes[0..4].copy_from_slice(&kind.to_le_bytes());
            bytes[8..16].copy_from_slice(&sector.to_le_bytes());
            let _ = mem.write_slice(&bytes, GuestAddress(desc.addr));
        }
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|d| RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, d.flags, d.next)))
            .collect();
        queue.add_desc_chains(&raw, 0).unwrap();
        let available = queue.avail().idx().load();

        write_reg(&mut t, 0x050, 0);

        let needs_reset = read_reg(&mut t, 0x070) & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        prop_assert_eq!(needs_reset, metrics.needs_reset.get() > 0);
        if !needs_reset {
            prop_assert_eq!(queue.used().idx().load(), available, "every chain was used");
            for i in 0..available {
                let elem = queue.used().ring().ref_at(usize::from(i)).unwrap().load();
                prop_assert!(elem.len() >= 1, "status byte written for chain {}", elem.id());
            }
        }
    }
}
