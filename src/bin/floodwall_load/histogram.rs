//! A small log-linear latency histogram: exact below 128 ns, then 64
//! linear buckets per power of two (at most 1.6% relative error), about
//! 3,800 counters whatever the range. Recording is an index computation
//! and an increment, so a collector can record every message.

/// Linear sub-buckets per power of two.
const SUB: u64 = 64;
const BUCKETS: usize = (2 * SUB + (63 - 7 + 1) * SUB) as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros()); // floor(log2 v) >= 7
    let shift = e - 6; // v >> shift keeps the top 7 bits: 64..=127
    (2 * SUB + (e - 7) * SUB + ((v >> shift) - SUB)) as usize
}

/// The largest value that lands in bucket `idx`.
fn upper(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < 2 * SUB {
        return idx;
    }
    let e = 7 + (idx - 2 * SUB) / SUB;
    let m = SUB + (idx - 2 * SUB) % SUB;
    let shift = e - 6;
    ((m + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): an upper bound within 1.6%,
    /// never above the largest recorded value. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(idx).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(i >= last, "index not monotonic at {v}");
            assert!(upper(i) >= v, "{v} above its bucket's upper {}", upper(i));
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_small() {
        for v in [128u64, 1000, 12_345, 999_999, 5_000_000_000] {
            let up = upper(index(v));
            assert!((up - v) as f64 <= v as f64 / 64.0, "{v} -> {up}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "p50={p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "p99={p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let mut h = Histogram::default();
        h.record(5);
        h.record(5);
        h.record(900);
        assert_eq!(h.count(), 3);
        assert_eq!(h.quantile(0.5), 5);
        assert_eq!(h.quantile(0.99), 900);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
