//! The counters every thread bumps, a consistent-enough [`Snapshot`] of
//! them, and the logfmt `stats` line (SPEC.md "Observability").
//!
//! Counters are plain relaxed atomics bumped once per batch or per event,
//! never per byte. The queue depth is not a counter here: it is the
//! queue's own credit count, read through [`QueueDepth`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::histogram::Histogram;
use crate::queue::QueueDepth;

#[derive(Debug, Default)]
pub struct Stats {
    /// Connections admitted and not yet closed.
    pub conns_active: AtomicU64,
    pub conns_total: AtomicU64,
    /// Connections closed at once: "reject" policy, or no thread could be
    /// spawned for them.
    pub conns_rejected: AtomicU64,
    /// Live worker threads (incremented first thing in the thread,
    /// decremented by a guard as it ends).
    pub workers: AtomicU64,
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_send_timeout: AtomicU64,
    pub dropped_oversize: AtomicU64,
    /// Unfinished frames at the end of a TLS session that ended without
    /// close_notify (SPEC "Access control and TLS"): the stream may have
    /// been cut, so they are dropped, not delivered.
    pub dropped_truncated: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_send_timeout: AtomicU64,
    pub closed_framing: AtomicU64,
    /// Connections ended by a read error (reset by peer, ...).
    pub closed_error: AtomicU64,
    /// Failed sink writes (each retried).
    pub sink_errors: AtomicU64,
    /// Messages framed from what was still unread when a connection was
    /// closed at the shutdown deadline (SPEC "Shutdown"): part of `lost`.
    pub dropped_shutdown: AtomicU64,
    /// Connections ended by the peer's clean EOF.
    pub closed_eof: AtomicU64,
    /// Connections ended by the shutdown (grace or deadline).
    pub closed_shutdown: AtomicU64,
    /// Connections closed at accept: source not in `server.allow`.
    pub conns_denied: AtomicU64,
    /// Connections closed at accept: over `max_connections_per_ip`.
    pub conns_over_ip_limit: AtomicU64,
    /// Connections closed for TLS: failed, stalled or refused handshake.
    pub closed_tls: AtomicU64,
    /// TLS sessions that ended without close_notify inside a frame or a
    /// record (one that ended on a frame boundary is `closed_eof`).
    pub closed_tls_truncated: AtomicU64,
    /// Connections closed for the PROXY protocol header.
    pub closed_proxy: AtomicU64,
    /// Messages replayed from the spool at start.
    pub recovered: AtomicU64,
    /// Bytes the spool holds on disk (a gauge).
    pub spool_bytes: AtomicU64,
    /// Messages lost to spool damage (torn or corrupt records).
    pub spool_corrupt: AtomicU64,
    /// RELP messages that found no room within send_timeout: never
    /// acknowledged, so the client resends them; not received, not
    /// dropped (nothing is lost).
    pub relp_refused: AtomicU64,
    /// relp sink: messages sent again on a new session because the last
    /// one ended before acknowledging them (each a possible duplicate).
    pub relp_resent: AtomicU64,
    /// Message bytes framed (LF excluded).
    pub bytes_received: AtomicU64,
    /// Message bytes delivered (LF excluded).
    pub bytes_delivered: AtomicU64,
    /// Set while the accept loop is paused at the high watermark.
    pub accept_paused: AtomicBool,
    /// Sink workers whose last write (or connect, or probe) failed and
    /// has not since succeeded: `floodwall_sink_up` is 1 while it is 0.
    /// A count, not a flag, so that with several sink workers one that
    /// recovers cannot hide another that is still down.
    pub sinks_down: AtomicU64,
    /// Duration of every sink write attempt (failed ones too).
    pub sink_write: Histogram,
    /// Makes multi-counter moves atomic for snapshots: a move (a sink's
    /// "delivered += n, queue_depth -= n") holds it shared, a snapshot
    /// holds it exclusively, so a stats line never sees half a move.
    ledger: RwLock<()>,
}

/// Why a connection dropped messages it received (SPEC's drop reasons
/// that a connection counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Over `max_message_bytes`.
    Oversize,
    /// The queue stayed full for `send_timeout`.
    SendTimeout,
    /// The shutdown ended the connection, or no sink was left.
    Shutdown,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// For the gauges (conns_active, workers).
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Runs `f`, a move of messages between counters, so that no
    /// snapshot sees it half done. Cheap: a shared lock, uncontended but
    /// for snapshots.
    pub fn moving<T>(&self, f: impl FnOnce() -> T) -> T {
        let _shared = self.ledger.read();
        f()
    }

    /// Counts `n` messages received and dropped at once (one move, so
    /// no snapshot sees them received and not yet dropped).
    pub fn dropped(&self, n: u64, why: Dropped) {
        let counter = match why {
            Dropped::Oversize => &self.dropped_oversize,
            Dropped::SendTimeout => &self.dropped_send_timeout,
            Dropped::Shutdown => &self.dropped_shutdown,
        };
        self.moving(|| {
            Stats::add(&self.received, n);
            Stats::add(counter, n);
        });
    }

    /// No sink worker is down (SPEC: `floodwall_sink_up`).
    pub fn sink_up(&self) -> bool {
        self.sinks_down.load(Ordering::Relaxed) == 0
    }

    pub fn snapshot(&self, depth: &QueueDepth) -> Snapshot {
        let _exclusive = self.ledger.write();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Read in data-flow order (received first, delivered last), so
        // that a worker caught between enqueueing and counting (a
        // connection mid-read) errs towards "in the queue".
        let received = get(&self.received);
        let recovered = get(&self.recovered);
        let dropped_send_timeout = get(&self.dropped_send_timeout);
        let dropped_oversize = get(&self.dropped_oversize);
        let dropped_shutdown = get(&self.dropped_shutdown);
        let dropped_truncated = get(&self.dropped_truncated);
        let queue_depth = depth.get() as u64;
        let delivered = get(&self.delivered);
        Snapshot {
            conns_active: get(&self.conns_active),
            conns_total: get(&self.conns_total),
            conns_rejected: get(&self.conns_rejected),
            workers: get(&self.workers),
            queue_depth,
            queue_capacity: depth.capacity() as u64,
            accept_paused: self.accept_paused.load(Ordering::Relaxed),
            received,
            delivered,
            dropped_send_timeout,
            dropped_oversize,
            dropped_truncated,
            closed_idle: get(&self.closed_idle),
            closed_send_timeout: get(&self.closed_send_timeout),
            closed_framing: get(&self.closed_framing),
            closed_error: get(&self.closed_error),
            sink_errors: get(&self.sink_errors),
            dropped_shutdown,
            closed_eof: get(&self.closed_eof),
            closed_shutdown: get(&self.closed_shutdown),
            conns_denied: get(&self.conns_denied),
            conns_over_ip_limit: get(&self.conns_over_ip_limit),
            closed_tls: get(&self.closed_tls),
            closed_tls_truncated: get(&self.closed_tls_truncated),
            closed_proxy: get(&self.closed_proxy),
            recovered,
            spool_bytes: get(&self.spool_bytes),
            spool_corrupt: get(&self.spool_corrupt),
            relp_refused: get(&self.relp_refused),
            relp_resent: get(&self.relp_resent),
            bytes_received: get(&self.bytes_received),
            bytes_delivered: get(&self.bytes_delivered),
        }
    }
}

/// The counters at one moment; `Display` is the `stats` log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub conns_active: u64,
    pub conns_total: u64,
    pub conns_rejected: u64,
    pub workers: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub accept_paused: bool,
    pub received: u64,
    pub delivered: u64,
    pub dropped_send_timeout: u64,
    pub dropped_oversize: u64,
    pub dropped_truncated: u64,
    pub closed_idle: u64,
    pub closed_send_timeout: u64,
    pub closed_framing: u64,
    pub closed_error: u64,
    pub sink_errors: u64,
    pub dropped_shutdown: u64,
    pub closed_eof: u64,
    pub closed_shutdown: u64,
    pub conns_denied: u64,
    pub conns_over_ip_limit: u64,
    pub closed_tls: u64,
    pub closed_tls_truncated: u64,
    pub closed_proxy: u64,
    pub recovered: u64,
    pub spool_bytes: u64,
    pub spool_corrupt: u64,
    pub relp_refused: u64,
    pub relp_resent: u64,
    pub bytes_received: u64,
    pub bytes_delivered: u64,
}

impl Snapshot {
    /// SPEC.md invariant 3: received + recovered = delivered + dropped
    /// (send_timeout, oversize, shutdown) + queue_depth (dropped_truncated is
    /// outside: an unfinished frame was never received).
    pub fn balanced(&self) -> bool {
        self.received + self.recovered
            == self.delivered
                + self.dropped_send_timeout
                + self.dropped_oversize
                + self.dropped_shutdown
                + self.queue_depth
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stats conns_active={} conns_total={} conns_rejected={} workers={} \
             queue_depth={} queue_capacity={} accept_paused={} received={} delivered={} \
             dropped_send_timeout={} dropped_oversize={} closed_idle={} \
             closed_send_timeout={} closed_framing={} closed_error={} sink_errors={} \
             dropped_shutdown={} closed_eof={} closed_shutdown={} conns_denied={} \
             conns_over_ip_limit={} closed_tls={} closed_proxy={} recovered={} \
             spool_bytes={} spool_corrupt={} relp_refused={} relp_resent={} bytes_received={} \
             bytes_delivered={} dropped_truncated={} closed_tls_truncated={}",
            self.conns_active,
            self.conns_total,
            self.conns_rejected,
            self.workers,
            self.queue_depth,
            self.queue_capacity,
            self.accept_paused,
            self.received,
            self.delivered,
            self.dropped_send_timeout,
            self.dropped_oversize,
            self.closed_idle,
            self.closed_send_timeout,
            self.closed_framing,
            self.closed_error,
            self.sink_errors,
            self.dropped_shutdown,
            self.closed_eof,
            self.closed_shutdown,
            self.conns_denied,
            self.conns_over_ip_limit,
            self.closed_tls,
            self.closed_proxy,
            self.recovered,
            self.spool_bytes,
            self.spool_corrupt,
            self.relp_refused,
            self.relp_resent,
            self.bytes_received,
            self.bytes_delivered,
            self.dropped_truncated,
            self.closed_tls_truncated,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_is_logfmt_with_every_spec_key() {
        let line = Snapshot::default().to_string();
        assert!(line.starts_with("stats "));
        for key in [
            "conns_active",
            "conns_total",
            "conns_rejected",
            "workers",
            "queue_depth",
            "queue_capacity",
            "accept_paused",
            "received",
            "delivered",
            "dropped_send_timeout",
            "dropped_oversize",
            "closed_idle",
            "closed_send_timeout",
            "closed_framing",
            "dropped_shutdown",
            "conns_denied",
            "conns_over_ip_limit",
            "closed_tls",
            "closed_proxy",
            "dropped_truncated",
            "closed_tls_truncated",
            "recovered",
            "spool_bytes",
            "spool_corrupt",
            "relp_refused",
            "relp_resent",
        ] {
            assert!(
                line.contains(&format!(" {key}=")),
                "{key} missing in {line}"
            );
        }
    }
}
