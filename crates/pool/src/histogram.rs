//! A fixed-bucket latency histogram with lock-free recording and quantile estimates.
//!
//! Contract: [`LatencyHistogram::record`] is a bucket search plus two relaxed atomic adds. Bucket
//! bounds follow a 1–2.5–5 series from 50 µs to 60 s (the last bucket is open-ended), which is what
//! Prometheus renders; quantiles interpolate linearly inside the bucket that holds them, the same
//! estimate `histogram_quantile` makes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the finite buckets, in microseconds.
pub const BOUNDS_MICROS: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A latency histogram.
#[derive(Debug)]
#[repr(C)]
pub struct LatencyHistogram {
    /// First, so it shares a cache line with the lowest buckets, where most samples go.
    sum_micros: AtomicU64,
    /// One counter per bound plus the open-ended bucket.
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
}

/// A point-in-time copy of a histogram.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    /// Per-bucket (non-cumulative) counts; the last is the open-ended bucket.
    pub counts: Vec<u64>,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
    /// Number of samples.
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Adds one sample.
    pub fn record(&self, d: Duration) {
        self.record_micros(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Adds one sample of `nanos` nanoseconds.
    pub fn record_nanos(&self, nanos: u64) {
        self.record_micros(nanos / 1_000);
    }

    fn record_micros(&self, micros: u64) {
        let i = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl HistogramSnapshot {
    /// Upper bounds of the finite buckets, in seconds.
    pub fn bounds_seconds() -> impl Iterator<Item = f64> {
        BOUNDS_MICROS.iter().map(|&b| b as f64 / 1e6)
    }

    /// Estimated `q` quantile (0–1) in seconds, or `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lower = if i == 0 { 0 } else { BOUNDS_MICROS[i - 1] };
                let Some(&upper) = BOUNDS_MICROS.get(i) else {
                    // The open-ended bucket: its lower bound is the best honest answer.
                    return Some(lower as f64 / 1e6);
                };
                let within = (rank - seen as f64) / c as f64;
                return Some((lower as f64 + within * (upper - lower) as f64) / 1e6);
            }
            seen += c;
        }
        Some(*BOUNDS_MICROS.last().unwrap_or(&0) as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_buckets() {
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_micros(700)); // (500, 1000]
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(40)); // (25 ms, 50 ms]
        }
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.0005..=0.001).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((0.025..=0.05).contains(&p99), "{p99}");
        assert!((s.sum_seconds - (90.0 * 0.0007 + 10.0 * 0.04)).abs() < 1e-9);
    }

    #[test]
    fn empty_has_no_quantile_and_huge_samples_are_kept() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.snapshot().quantile(0.99), Some(60.0));
    }
}
