//! The one back-off of every sink (SPEC.md "Sinks"): after a failure, hold
//! off 100 ms, doubling per failure up to 5 s; a success starts over. The
//! runner's retry of a failed write ([`super::run`], which paces the tcp,
//! relp and file sinks' reconnects and retries too) and the nats sink's
//! set-up, publishes and client reconnects all take their delays from
//! here.
//!
//! Failures during a hold-off do not double it: when a nats outage fails
//! every in-flight publish at once ("no responders"), that is one failure,
//! not a thousand doublings. The type only keeps time; the caller waits in
//! its own way (a blocking sleep in short steps that watch the abandon
//! flag, or a tokio sleep).

use std::time::{Duration, Instant};

/// The first hold-off after a success.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest hold-off.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// One outage's back-off state.
#[derive(Debug)]
pub struct Backoff {
    /// The next hold-off.
    delay: Duration,
    /// The end of the current hold-off.
    until: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            delay: RETRY_MIN,
            until: None,
        }
    }
}

impl Backoff {
    /// A failure: hold off for the current delay and double it, unless
    /// already holding off.
    pub fn fail(&mut self) {
        if self.remaining().is_some() {
            return;
        }
        self.until = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    /// A success: no hold-off, and the next failure waits [`RETRY_MIN`].
    pub fn succeed(&mut self) {
        self.delay = RETRY_MIN;
        self.until = None;
    }

    /// How long to hold off still; None when free to try.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.until?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The same schedule for a caller that counts its attempts (the nats
    /// client's reconnects): the hold-off after `failures` failures in a
    /// row.
    pub fn after(failures: usize) -> Duration {
        let doublings = failures.saturating_sub(1).min(16) as u32;
        RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outage_doubles_once_not_per_failure() {
        let mut b = Backoff::default();
        assert!(b.remaining().is_none());
        b.fail();
        for _ in 0..1000 {
            b.fail();
        }
        assert_eq!(b.delay, RETRY_MIN * 2);
        assert!(b.remaining().is_some_and(|d| d <= RETRY_MIN));
        b.succeed();
        assert!(b.remaining().is_none());
        assert_eq!(b.delay, RETRY_MIN);
    }

    #[test]
    fn hold_offs_double_from_100ms_to_5s() {
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(b.delay);
            b.fail();
            // The hold-off ends: the next failure is a new one.
            b.until = Some(Instant::now());
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let counted: Vec<Duration> = (1..=8).map(Backoff::after).collect();
        assert_eq!(counted, seen);
        assert_eq!(Backoff::after(0), RETRY_MIN);
        assert_eq!(Backoff::after(usize::MAX), RETRY_MAX);
    }
}
