//! Property test: random writes, zeroings, flushes, mover passes (both policies) and reopenings of a
//! tiered volume against a plain byte-array model. Every read must match the model.

use hv_storage::heat::{DecayingCounterPolicy, LruPolicy, PlacementPolicy};
use hv_storage::meta::TierSpec;
use hv_storage::mover::rebalance;
use hv_storage::volume::Volume;
use hv_storage::BlockBackend;
use proptest::prelude::*;

const EXTENT: u64 = 16 << 10;
const EXTENTS: u64 = 12;
const SIZE: u64 = EXTENT * EXTENTS;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, byte: u8 },
    Zero { offset: u64, len: u64 },
    Read { offset: u64, len: u64 },
    Heat { extent: u64, times: u32 },
    Rebalance { lru: bool },
    Flush,
    Reopen,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE).prop_flat_map(|offset| (Just(offset), 1..=(SIZE - offset).min(3 * EXTENT)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (range(), any::<u8>()).prop_map(|((offset, len), byte)| Op::Write { offset, len, byte }),
        1 => range().prop_map(|(offset, len)| Op::Zero { offset, len }),
        3 => range().prop_map(|(offset, len)| Op::Read { offset, len }),
        3 => (0..EXTENTS, 1u32..40).prop_map(|(extent, times)| Op::Heat { extent, times }),
        3 => any::<bool>().prop_map(|lru| Op::Rebalance { lru }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn check(volume: &Volume, model: &[u8], offset: u64, len: u64) -> Result<(), TestCaseError> {
    let mut buf = vec![0xEEu8; len as usize];
    volume.read_at(&mut buf, offset).unwrap();
    prop_assert_eq!(
        &buf[..],
        &model[offset as usize..(offset + len) as usize],
        "read at {} len {}",
        offset,
        len
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn test_volume_with_mover_matches_byte_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let tiers = vec![
            TierSpec { name: "fast".into(), path: dir.path().join("fast"), capacity: 3 * EXTENT },
            TierSpec { name: "mid".into(), path: dir.path().join("mid"), capacity: 4 * EXTENT },
            TierSpec { name: "slow".into(), path: dir.path().join("slow"), capacity: SIZE },
        ];
        let path = dir.path().join("vol");
        let mut volume = Volume::create(&path, SIZE, EXTENT, tiers).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        for op in ops {
            match op {
                Op::Write { offset, len, byte } => {
                    volume.write_at(&vec![byte; len as usize], offset).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(byte);
                }
                Op::Zero { offset, len } => {
                    volume.write_zeroes(offset, len).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                Op::Read { offset, len } => check(&volume, &model, offset, len)?,
                Op::Heat { extent, times } => {
                    let mut buf = [0u8; 1];
                    for _ in 0..times {
                        volume.read_at(&mut buf, extent * EXTENT).unwrap();
                    }
                }
                Op::Rebalance { lru } => {
                    let policy: Box<dyn PlacementPolicy> =
                        if lru { Box::new(LruPolicy::default()) } else { Box::new(DecayingCounterPolicy::default()) };
                    volume.heat().decay(1.0, 5.0);
                    rebalance(&volume, policy.as_ref(), 1 << 30).unwrap();
                }
                Op::Flush => volume.flush().unwrap(),
                Op::Reopen => {
                    drop(volume);
                    volume = Volume::open(&path, false).unwrap();
                }
            }
        }
        check(&volume, &model, 0, SIZE)?;
        // Placement never exceeds a tier's capacity, and every allocated extent has a distinct slot.
        let map = volume.map_snapshot();
        for tier in 0..3u8 {
            prop_assert!(map.used_slots(tier) <= map.tier_slots(tier) as usize);
        }
    }
}
