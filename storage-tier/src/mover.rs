//! The background mover: every tick it ages the heat, then promotes the hottest extents of each slower
//! tier into the tier above and demotes the coldest residents to make room, within a byte budget.
//!
//! Per adjacent pair of tiers (fast, slow), candidates on `slow` are taken hottest first. A candidate fills
//! a free `fast` slot if [`PlacementPolicy::worth_promoting`]; otherwise it must beat the coldest resident
//! of `fast` by the policy's hysteresis margin ([`PlacementPolicy::should_replace`]). Victims are demoted
//! first, the map is committed (their fast slots become reusable only once no committed map points at
//! them), then candidates are promoted. Each moved extent costs `extent_size` bytes of the tick's budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::heat::PlacementPolicy;
use crate::volume::{MoveOutcome, Volume};

/// How the mover runs.
#[derive(Debug, Clone)]
pub struct MoverConfig {
    pub tick: Duration,
    pub half_life: Duration,
    /// Bytes per second the mover may copy.
    pub budget_bytes_per_sec: u64,
    /// How often `stats.json` is rewritten (zero: never).
    pub stats_interval: Duration,
    /// An extent that moved stays put at least this long (hysteresis in time, on top of the policy's
    /// margin): noisy heat near the tier boundary cannot make it flap.
    pub min_residency: Duration,
}

impl Default for MoverConfig {
    fn default() -> Self {
        MoverConfig {
            tick: Duration::from_millis(250),
            half_life: Duration::from_secs(30),
            budget_bytes_per_sec: 256 << 20,
            stats_interval: Duration::from_secs(1),
            min_residency: Duration::from_secs(10),
        }
    }
}

/// A running mover thread; stopped and joined on drop.
#[derive(Debug)]
pub struct Mover {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mover {
    pub fn start(
        volume: Volume,
        policy: Box<dyn PlacementPolicy>,
        config: MoverConfig,
    ) -> std::io::Result<Mover> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hv-storage-mover".into())
            .spawn(move || run(&volume, policy.as_ref(), &config, &thread_stop))?;
        Ok(Mover {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(volume: &Volume, policy: &dyn PlacementPolicy, config: &MoverConfig, stop: &AtomicBool) {
    let mut last_tick = Instant::now();
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(config.tick);
        let elapsed = last_tick.elapsed();
        last_tick = Instant::now();
        volume
            .heat()
            .decay(elapsed.as_secs_f64(), config.half_life.as_secs_f64());
        if !volume.is_read_only() {
            let budget = (config.budget_bytes_per_sec as f64 * elapsed.as_secs_f64()) as u64;
            let residency =
                (config.min_residency.as_secs_f64() / config.tick.as_secs_f64()).ceil() as u32;
            if let Err(error) = rebalance_with_residency(volume, policy, budget, residency) {
                tracing::warn!(error = %error, "mover pass failed; retrying next tick");
            }
        }
        if !config.stats_interval.is_zero() && last_stats.elapsed() >= config.stats_interval {
            last_stats = Instant::now();
            write_stats(volume, policy.name());
        }
    }
    write_stats(volume, policy.name());
}

/// Writes `stats.json` for the CLI's `tiers`, `heatmap` and `stats`.
pub fn write_stats(volume: &Volume, policy: &str) {
    let stats = volume.stats(policy);
    match serde_json::to_vec(&stats) {
        Ok(bytes) => {
            if let Err(error) =
                crate::meta::replace_file(volume.dir(), crate::meta::STATS_FILE, &bytes)
            {
                tracing::warn!(error = %error, "could not write stats.json");
            }
        }
        Err(error) => tracing::warn!(error = %error, "could not encode stats"),
    }
}

/// One pass over every adjacent tier pair. Returns the number of extents moved.
pub fn rebalance(
    volume: &Volume,
    policy: &dyn PlacementPolicy,
    budget_bytes: u64,
) -> Result<usize, crate::BlockError> {
    rebalance_with_residency(volume, policy, budget_bytes, 0)
}

/// One pass over every adjacent tier pair; extents that moved less than `residency_ticks` heat ticks ago
/// are neither promoted nor demoted. Returns the number of extents moved.
pub fn rebalance_with_residency(
    volume: &Volume,
    policy: &dyn PlacementPolicy,
    budget_bytes: u64,
    residency_ticks: u32,
) -> Result<usize, crate::BlockError> {
    let extent_size = volume.extent_size();
    let mut budget_extents = budget_bytes / extent_size;
    let mut moved = 0;
    for fast in 0..volume.tier_count().saturating_sub(1) as u8 {
        let slow = fast + 1;
        let (promote, demote) = plan_pair(
            volume,
            policy,
            fast,
            slow,
            residency_ticks,
            &mut budget_extents,
        );
        for &extent in &demote {
            if volume.move_extent(extent, slow)? == MoveOutcome::Moved {
                moved += 1;
            }
        }
        if !demote.is_empty() {
            volume.commit()?;
        }
        for &extent in &promote {
            if volume.move_extent(extent, fast)? == MoveOutcome::Moved {
                moved += 1;
            }
        }
    }
    if moved > 0 {
        volume.commit()?;
    }
    Ok(moved)
}

fn plan_pair(
    volume: &Volume,
    policy: &dyn PlacementPolicy,
    fast: u8,
    slow: u8,
    residency_ticks: u32,
    budget_extents: &mut u64,
) -> (Vec<u64>, Vec<u64>) {
    let map = volume.map_snapshot();
    let now = volume.heat().current_tick();
    let settled = |extent: u64| {
        let moved = volume.last_move_tick(extent);
        moved == 0 || now.saturating_sub(moved) >= residency_ticks
    };
    let score = |extent: u64| policy.score(&volume.heat().get(extent), now);
    let placed_on = |tier: u8| {
        let mut extents: Vec<(f64, u64)> = map
            .entries()
            .iter()
            .enumerate()
            .filter(|(index, e)| {
                !e.provisional
                    && e.location.is_some_and(|l| l.tier == tier)
                    && settled(*index as u64)
            })
            .map(|(index, _)| (score(index as u64), index as u64))
            .collect();
        extents.sort_by(|a, b| a.0.total_cmp(&b.0));
        extents
    };
    let mut candidates = placed_on(slow);
    candidates.reverse(); // hottest first
    let residents = placed_on(fast); // coldest first
    let mut free_fast = map.free_slots(fast);
    let mut free_slow = map.free_slots(slow);
    let mut victims = residents.iter();
    let (mut promote, mut demote) = (Vec::new(), Vec::new());
    for &(candidate_score, candidate) in &candidates {
        if *budget_extents == 0 || !policy.worth_promoting(candidate_score) {
            break;
        }
        if free_fast > 0 {
            free_fast -= 1;
            *budget_extents -= 1;
            promote.push(candidate);
            continue;
        }
        let Some(&(victim_score, victim)) = victims.next() else {
            break;
        };
        if !policy.should_replace(candidate_score, victim_score)
            || free_slow == 0
            || *budget_extents < 2
        {
            break;
        }
        free_slow -= 1;
        *budget_extents -= 2;
        demote.push(victim);
        promote.push(candidate);
    }
    (promote, demote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heat::{DecayingCounterPolicy, LruPolicy};
    use crate::meta::TierSpec;
    use crate::BlockBackend;

    fn volume(dir: &std::path::Path) -> Volume {
        let tiers = vec![
            TierSpec {
                name: "fast".into(),
                path: dir.join("fast.img"),
                capacity: 2 * 65536,
            },
            TierSpec {
                name: "slow".into(),
                path: dir.join("slow.img"),
                capacity: 8 * 65536,
            },
        ];
        Volume::create(&dir.join("vol"), 8 * 65536, 65536, tiers).unwrap()
    }

    /// Eight written extents, of which the last was read 50 times (hot) and the rest never.
    fn volume_with_hot_last_extent(dir: &std::path::Path) -> Volume {
        let volume = volume(dir);
        for extent in 0..8u64 {
            volume.write_at(&[1u8; 65536], extent * 65536).unwrap();
        }
        let mut buf = vec![0u8; 512];
        for _ in 0..50 {
            volume.read_at(&mut buf, 7 * 65536).unwrap();
        }
        volume
    }

    fn tier_of(volume: &Volume, extent: u64) -> u8 {
        volume
            .map_snapshot()
            .entry(extent)
            .unwrap()
            .location
            .unwrap()
            .tier
    }

    #[test]
    fn test_rebalance_promotes_hot_and_demotes_cold() {
        let dir = tempfile::tempdir().unwrap();
        let volume = volume(dir.path());
        for extent in 0..8u64 {
            volume
                .write_at(&[extent as u8; 65536], extent * 65536)
                .unwrap();
        }
        assert_eq!((tier_of(&volume, 0), tier_of(&volume, 7)), (0, 1));
        let mut buf = vec![0u8; 4096];
        for _ in 0..50 {
            volume.read_at(&mut buf, 7 * 65536).unwrap();
            volume.read_at(&mut buf, 6 * 65536).unwrap();
        }
        let moved = rebalance(&volume, &DecayingCounterPolicy::default(), 1 << 30).unwrap();
        assert_eq!(moved, 4);
        assert_eq!((tier_of(&volume, 6), tier_of(&volume, 7)), (0, 0));
        assert_eq!((tier_of(&volume, 0), tier_of(&volume, 1)), (1, 1));
        for extent in 0..8u64 {
            volume.read_at(&mut buf, extent * 65536).unwrap();
            assert!(buf.iter().all(|&b| b == extent as u8));
        }
        // Hysteresis: equal heat does not swap back.
        assert_eq!(
            rebalance(&volume, &DecayingCounterPolicy::default(), 1 << 30).unwrap(),
            0
        );
    }

    #[test]
    fn test_rebalance_respects_budget() {
        let dir = tempfile::tempdir().unwrap();
        let volume = volume_with_hot_last_extent(dir.path());
        assert_eq!(
            rebalance(&volume, &DecayingCounterPolicy::default(), 65536).unwrap(),
            0
        );
        assert_eq!(
            rebalance(&volume, &DecayingCounterPolicy::default(), 2 * 65536).unwrap(),
            2
        );
    }

    #[test]
    fn test_rebalance_residency_keeps_recent_moves_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let volume = volume_with_hot_last_extent(dir.path());
        let policy = DecayingCounterPolicy::default();
        assert_eq!(
            rebalance_with_residency(&volume, &policy, 1 << 30, 100).unwrap(),
            2
        );
        // Extent 0 was demoted just now; even far hotter, it may not come back before its residency ends.
        let mut buf = vec![0u8; 512];
        for _ in 0..500 {
            volume.read_at(&mut buf, 0).unwrap();
        }
        assert_eq!(
            rebalance_with_residency(&volume, &policy, 1 << 30, 100).unwrap(),
            0
        );
        assert_eq!(tier_of(&volume, 0), 1);
        for _ in 0..100 {
            volume.heat().decay(0.001, 30.0);
        }
        assert_eq!(
            rebalance_with_residency(&volume, &policy, 1 << 30, 100).unwrap(),
            2
        );
        assert_eq!(tier_of(&volume, 0), 0);
    }

    #[test]
    fn test_rebalance_lru_promotes_recent() {
        let dir = tempfile::tempdir().unwrap();
        let volume = volume(dir.path());
        for extent in 0..8u64 {
            volume.write_at(&[1u8; 65536], extent * 65536).unwrap();
        }
        for _ in 0..3 {
            volume.heat().decay(1.0, 30.0);
        }
        let mut buf = vec![0u8; 512];
        volume.read_at(&mut buf, 5 * 65536).unwrap();
        rebalance(&volume, &LruPolicy::default(), 1 << 30).unwrap();
        assert_eq!(tier_of(&volume, 5), 0);
    }
}
