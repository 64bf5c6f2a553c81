//! Per-extent heat and the placement policies that rank extents by it.
//!
//! Heat is a decaying access counter. Every read or write touching extent `e` adds 1 to `H(e)`; every
//! mover tick of length `dt` multiplies all counters by `2^(-dt / T½)`:
//!
//! ```text
//! H(e, t + dt) = H(e, t) · 2^(-dt / T½) + accesses(e, t .. t + dt)
//! ```
//!
//! so an access counts half as much after one half-life `T½` (default 30 s). A steady rate of `r`
//! accesses per second settles at `H ≈ r · T½ / ln 2`. Counters are fixed point (1/16 of an access) in
//! `AtomicU32`s, so the I/O path pays one relaxed atomic add per extent touched.

use std::sync::atomic::{AtomicU32, Ordering};

const FIXED_ONE: u32 = 16;

/// Heat and recency of every extent.
#[derive(Debug)]
pub struct HeatTable {
    counters: Vec<AtomicU32>,
    last_access_tick: Vec<AtomicU32>,
    tick: AtomicU32,
}

/// A snapshot of one extent's access history, as policies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtentHeat {
    /// Decayed access count.
    pub heat: f64,
    /// Mover tick of the latest access (0: never accessed since open).
    pub last_access_tick: u32,
}

impl HeatTable {
    pub fn new(extent_count: u64) -> HeatTable {
        HeatTable {
            counters: (0..extent_count).map(|_| AtomicU32::new(0)).collect(),
            last_access_tick: (0..extent_count).map(|_| AtomicU32::new(0)).collect(),
            tick: AtomicU32::new(1),
        }
    }

    /// Counts one access to `extent`.
    pub fn record(&self, extent: u64) {
        if let Some(counter) = self.counters.get(extent as usize) {
            // Saturating: a counter near u32::MAX is already as hot as it gets.
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_add(FIXED_ONE))
            });
            self.last_access_tick[extent as usize]
                .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Ages every counter by `elapsed_secs` with half-life `half_life_secs`, and advances the tick.
    pub fn decay(&self, elapsed_secs: f64, half_life_secs: f64) {
        let factor = (-elapsed_secs / half_life_secs).exp2();
        for counter in &self.counters {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some((h as f64 * factor) as u32)
            });
        }
        self.tick.fetch_add(1, Ordering::Relaxed);
    }

    pub fn current_tick(&self) -> u32 {
        self.tick.load(Ordering::Relaxed)
    }

    pub fn get(&self, extent: u64) -> ExtentHeat {
        let index = extent as usize;
        ExtentHeat {
            heat: self
                .counters
                .get(index)
                .map_or(0.0, |c| c.load(Ordering::Relaxed) as f64 / FIXED_ONE as f64),
            last_access_tick: self
                .last_access_tick
                .get(index)
                .map_or(0, |t| t.load(Ordering::Relaxed)),
        }
    }

    pub fn heats(&self) -> Vec<f64> {
        (0..self.counters.len() as u64)
            .map(|e| self.get(e).heat)
            .collect()
    }

    /// Restores heats saved by a previous run (so a restart does not forget placement reasons).
    pub fn seed(&self, heats: &[f64]) {
        for (counter, heat) in self.counters.iter().zip(heats) {
            counter.store(
                (heat * FIXED_ONE as f64).min(u32::MAX as f64) as u32,
                Ordering::Relaxed,
            );
        }
    }
}

/// Decides which extents deserve a faster tier. The mover asks for a score per extent, fills faster tiers
/// with the highest scores, and replaces a resident only when [`PlacementPolicy::should_replace`] agrees
/// (that margin is the hysteresis that keeps extents from flapping between tiers).
pub trait PlacementPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Higher means hotter.
    fn score(&self, heat: &ExtentHeat, now_tick: u32) -> f64;
    /// Whether a candidate with score `candidate` should displace a resident with score `resident`.
    fn should_replace(&self, candidate: f64, resident: f64) -> bool;
    /// Minimum score for an extent to be promoted into free space at all.
    fn worth_promoting(&self, candidate: f64) -> bool;
}

/// The default: rank by decayed access count; a candidate must be 25 % hotter than the resident plus
/// one access, so equal-heat extents (uniform random workloads) never swap.
#[derive(Debug, Clone, Copy)]
pub struct DecayingCounterPolicy {
    pub margin: f64,
    pub min_delta: f64,
}

impl Default for DecayingCounterPolicy {
    fn default() -> Self {
        DecayingCounterPolicy {
            margin: 0.25,
            min_delta: 1.0,
        }
    }
}

impl PlacementPolicy for DecayingCounterPolicy {
    fn name(&self) -> &'static str {
        "decaying-counter"
    }
    fn score(&self, heat: &ExtentHeat, _now_tick: u32) -> f64 {
        heat.heat
    }
    fn should_replace(&self, candidate: f64, resident: f64) -> bool {
        candidate > resident * (1.0 + self.margin) + self.min_delta
    }
    fn worth_promoting(&self, candidate: f64) -> bool {
        candidate >= self.min_delta
    }
}

/// Baseline: least recently used. Score is the tick of the last access; a candidate must have been used
/// at least `min_ticks` more recently than the resident.
#[derive(Debug, Clone, Copy)]
pub struct LruPolicy {
    pub min_ticks: u32,
}

impl Default for LruPolicy {
    fn default() -> Self {
        LruPolicy { min_ticks: 2 }
    }
}

impl PlacementPolicy for LruPolicy {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn score(&self, heat: &ExtentHeat, _now_tick: u32) -> f64 {
        heat.last_access_tick as f64
    }
    fn should_replace(&self, candidate: f64, resident: f64) -> bool {
        candidate >= resident + self.min_ticks as f64
    }
    fn worth_promoting(&self, candidate: f64) -> bool {
        candidate > 0.0
    }
}

/// Looks a policy up by its command-line name.
pub fn policy_by_name(name: &str) -> Option<Box<dyn PlacementPolicy>> {
    match name {
        "decaying-counter" | "heat" => Some(Box::new(DecayingCounterPolicy::default())),
        "lru" => Some(Box::new(LruPolicy::default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_heat_table_halves_after_one_half_life() {
        let table = HeatTable::new(2);
        for _ in 0..64 {
            table.record(1);
        }
        assert_eq!(table.get(1).heat, 64.0);
        table.decay(30.0, 30.0);
        assert_eq!(table.get(1).heat, 32.0);
        table.decay(15.0, 30.0);
        assert!((table.get(1).heat - 32.0 / 2f64.sqrt()).abs() < 0.1);
        assert_eq!(table.get(0).heat, 0.0);
    }

    #[test]
    fn test_heat_table_records_recency() {
        let table = HeatTable::new(2);
        table.decay(1.0, 30.0);
        table.record(0);
        assert_eq!(table.get(0).last_access_tick, 2);
        table.record(99); // beyond the table: ignored, not a panic
    }

    #[test]
    fn test_decaying_counter_policy_has_hysteresis() {
        let policy = DecayingCounterPolicy::default();
        assert!(!policy.should_replace(10.0, 10.0));
        assert!(!policy.should_replace(13.0, 10.0));
        assert!(policy.should_replace(14.0, 10.0));
        assert!(!policy.worth_promoting(0.5));
    }

    #[test]
    fn test_lru_policy_prefers_recent() {
        let policy = LruPolicy::default();
        let old = ExtentHeat {
            heat: 100.0,
            last_access_tick: 3,
        };
        let new = ExtentHeat {
            heat: 1.0,
            last_access_tick: 9,
        };
        assert!(policy.should_replace(policy.score(&new, 10), policy.score(&old, 10)));
        assert!(policy_by_name("lru").is_some() && policy_by_name("nope").is_none());
    }
}
