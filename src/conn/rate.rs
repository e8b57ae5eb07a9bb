//! The per-connection rate limit (`limits.rate_per_connection`): a token
//! bucket of `rate` messages per second holding at most one second's
//! worth. A connection frames only what its tokens allow and waits for
//! more before reading on, so the limit slows the client through TCP
//! backpressure and never drops a message.

use std::time::{Duration, Instant};

/// The rate limit waits for this share of a second's tokens at least
/// (10 ms), so a paced worker wakes ~100 times a second, not per message.
const QUOTA_SLICE: f64 = 0.01;

/// A token bucket of `rate` messages per second holding at most one
/// second's worth (at least one token).
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: Bucket::burst(rate as f64),
            last: Instant::now(),
        }
    }

    fn burst(rate: f64) -> f64 {
        rate.max(1.0)
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(Bucket::burst(self.rate));
        self.last = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self) -> usize {
        self.refill();
        self.tokens.max(0.0) as usize
    }

    /// Tokens worth waiting for: 10 ms of them, at least one, at most
    /// the burst.
    pub fn slice(&self) -> f64 {
        (self.rate * QUOTA_SLICE)
            .max(1.0)
            .min(Bucket::burst(self.rate))
    }

    /// How long until at least `n` tokens are available.
    pub fn wait_for(&mut self, n: f64) -> Duration {
        self.refill();
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }

    pub fn spend(&mut self, messages: u64) {
        self.tokens -= messages as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        let mut b = Bucket::new(100);
        assert_eq!(b.available(), 100);
        assert_eq!(b.wait_for(1.0), Duration::ZERO);
        b.spend(100);
        assert_eq!(b.available(), 0);
        let wait = b.wait_for(b.slice());
        assert!(
            wait > Duration::from_millis(5) && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
    }
}
