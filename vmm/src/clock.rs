//! Time since this process started, for the boot-marker log line.
//!
//! `Instant::now()` at the top of `main` misses the work done before it (exec, dynamic loading,
//! Rust runtime start-up). The kernel's per-task scheduler statistics
//! (`/proc/self/schedstat`: time on CPU + time waiting for a CPU, in ns) cover everything since the
//! task was created; added to the wall time measured from `main`, they give the time since the
//! process started. (The count includes the fork that preceded exec, a few microseconds.)

use std::time::{Duration, Instant};

/// A clock that reads "time since process start".
#[derive(Debug, Clone, Copy)]
pub struct ProcessClock {
    main_entered: Instant,
    before_main: Duration,
}

impl ProcessClock {
    /// Call first thing in `main`.
    pub fn start() -> Self {
        let main_entered = Instant::now();
        let before_main = std::fs::read_to_string("/proc/self/schedstat")
            .ok()
            .and_then(|text| parse_schedstat(&text))
            .unwrap_or_default();
        Self {
            main_entered,
            before_main,
        }
    }

    /// Time since the process started.
    pub fn elapsed(&self) -> Duration {
        self.before_main + self.main_entered.elapsed()
    }
}

/// Start-up phase tracing for performance work: with `HV_VMM_TRACE_STARTUP=1` in the environment,
/// each phase prints `hv-vmm: +N us <phase>` (time since process start) on stderr.
#[derive(Debug, Clone, Copy)]
pub struct StartupTrace {
    clock: ProcessClock,
    enabled: bool,
}

impl StartupTrace {
    /// Reads the switch once.
    pub fn new(clock: ProcessClock) -> Self {
        let enabled = std::env::var_os("HV_VMM_TRACE_STARTUP").is_some_and(|v| v == "1");
        Self { clock, enabled }
    }

    /// Marks the end of a phase.
    pub fn phase(&self, name: &str) {
        if self.enabled {
            eprintln!("hv-vmm: +{} us {name}", self.clock.elapsed().as_micros());
        }
    }
}

fn parse_schedstat(text: &str) -> Option<Duration> {
    let mut fields = text.split_whitespace();
    let on_cpu: u64 = fields.next()?.parse().ok()?;
    let waiting: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_nanos(on_cpu + waiting))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_schedstat_sums_run_and_wait() {
        assert_eq!(
            parse_schedstat("1500 500 3\n"),
            Some(Duration::from_nanos(2000))
        );
        assert_eq!(parse_schedstat("garbage"), None);
    }

    #[test]
    fn test_process_clock_counts_time_before_main() {
        let clock = ProcessClock::start();
        // This test process has certainly run for more than a microsecond before this point.
        assert!(clock.elapsed() > Duration::from_micros(1));
    }
}
