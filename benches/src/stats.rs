//! Small statistics over repeated measurements.

use std::time::Duration;

/// Median, 10th and 90th percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: Duration,
    pub p10: Duration,
    pub p90: Duration,
    pub count: usize,
}

/// Summarises `samples` (nearest-rank percentiles); `None` when empty.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Summary {
        median: rank(0.5),
        p10: rank(0.1),
        p90: rank(0.9),
        count: sorted.len(),
    })
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_summarize_percentiles() {
        let samples: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!(s.median, Duration::from_millis(5));
        assert_eq!(s.p10, Duration::from_millis(1));
        assert_eq!(s.p90, Duration::from_millis(9));
        assert!(summarize(&[]).is_none());
    }
}
