//! A fixed-bucket, lock-free latency histogram: what
//! `floodwall_sink_write_duration_seconds` is made of.
//!
//! Observing is a handful of relaxed atomic adds (one bucket, the sum, no
//! lock), so a sink thread can afford it on every write. The buckets are
//! fixed at compile time (100 µs to 10 s: a write to a page cache or a
//! loopback socket at the low end, a write that hit the tcp sink's write
//! timeout at the high end). It does not render itself: src/metrics.rs
//! turns a [`HistogramSnapshot`] into the text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (`le` labels); +Inf is implied.
pub const BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];
/// The same bounds in nanoseconds, for comparing without floating point.
const BOUNDS_NS: [u64; 12] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    500_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Counts per bucket (not cumulative; the last one is +Inf) and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// The histogram at one moment, buckets cumulative as Prometheus wants them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations <= `BOUNDS[i]`; the last entry is +Inf (= count).
    pub cumulative: [u64; BOUNDS.len() + 1],
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[BOUNDS.len()]
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Reads the buckets once each; the count is their total, so the
    /// +Inf bucket and `_count` always agree (the sum may lag by an
    /// observation in flight, which Prometheus tolerates).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; BOUNDS.len() + 1];
        let mut total = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *c = total;
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree_in_both_units() {
        for (s, ns) in BOUNDS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // le=0.0001 (inclusive)
        h.observe(Duration::from_micros(101)); // le=0.00025
        h.observe(Duration::from_secs(60)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[BOUNDS.len() - 1], 2);
        assert_eq!(s.count(), 3);
        assert!((s.sum_seconds - 60.000201).abs() < 1e-9);
    }
}
