//! Aggregated warnings: at most one log line per second per kind of
//! overload event, however hard the daemon is hit. A suppressed event is
//! not lost: the next line that gets out says how many it stands for.
//! Events that must each show (a sink outage, an accept pause) wait for
//! their turn with [`Throttle::ready`] instead of being suppressed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const NEVER: u64 = u64::MAX;
const INTERVAL_MS: u64 = 1000;

/// One kind of event: when it last got a line, and how many were held back.
#[derive(Debug)]
pub struct Throttle {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            last_ms: AtomicU64::new(NEVER),
            suppressed: AtomicU64::new(0),
        }
    }
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Throttle {
    /// `Some(n)` if a line may be logged now, where `n` events were
    /// suppressed since the last line; `None` (and the event counted as
    /// suppressed) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let got = self.ready();
        if got.is_none() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    /// Like [`Throttle::allow`] for an event that must show (an outage,
    /// a pause): the caller retries until it gets its line, so a refusal
    /// is not counted as suppressed.
    pub fn ready(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == NEVER || now >= last + INTERVAL_MS)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        None
    }
}

/// " (N similar suppressed)" or nothing.
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

/// One throttle per kind of warning the daemon can emit under load.
#[derive(Debug, Default)]
pub struct Alerts {
    pub accept_paused: Throttle,
    pub accept_resumed: Throttle,
    pub accept_error: Throttle,
    pub connection_limit: Throttle,
    pub spawn_failed: Throttle,
    pub send_timeout: Throttle,
    pub oversize: Throttle,
    pub framing: Throttle,
    pub sink_error: Throttle,
    /// PROXY protocol: a source that is not a trusted proxy.
    pub proxy_untrusted: Throttle,
    /// PROXY protocol: a missing, malformed or late header.
    pub proxy_header: Throttle,
    pub sink_recovered: Throttle,
    pub sink_reopen: Throttle,
    pub sink_gone: Throttle,
    /// RELP: messages refused for want of room (the session is closed).
    pub relp_refused: Throttle,
    /// RELP: a frame or command the protocol does not allow.
    pub relp_protocol: Throttle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_and_the_rest_counted() {
        let t = Throttle::default();
        assert_eq!(t.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.allow(), None);
        }
        // Pretend the last line was long ago.
        t.last_ms.store(NEVER, Ordering::Relaxed);
        assert_eq!(t.allow(), Some(1000));
    }
}
