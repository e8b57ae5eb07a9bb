//! Talking to the service manager (sd_notify(3), `Type=notify`): when the
//! daemon is ready, reloading, stopping and how its drain goes, and the
//! watchdog's pings. The datagrams are the sd-notify crate's; without
//! `NOTIFY_SOCKET` (not under systemd) every call here does nothing.
//!
//! What each message promises:
//! - `READY=1`: every listener is bound (or was passed in, see
//!   [`crate::activation`]) and every sink thread is running, so a client
//!   connecting now is served. main sends it once [`crate::start`] returned.
//! - `RELOADING=1` (with `MONOTONIC_USEC`, as systemd 253 asks) then
//!   `READY=1`: around the work SIGHUP does (sink reopen, TLS reload).
//! - `STOPPING=1`: the drain has begun; `STATUS=` then says every half
//!   second how many connections and queued messages are left.
//! - `WATCHDOG=1`: sent every half `WatchdogSec` only while the daemon
//!   can still move messages: the accept loop went round recently (every
//!   wait in it is bounded, so a live loop always does) and no sink thread
//!   has been inside one write for half the watchdog interval. A sink
//!   waiting for work, or between retries of a failed write, is idle by
//!   choice; a sink blocked in `write(2)` on a FIFO nobody reads is not.
//!   Once pings stop, systemd kills and restarts the daemon (with a
//!   spool, what it held is replayed). The nats sink's writes are async
//!   with their own timeouts and never hold its thread, so it is not
//!   watched here. During the drain the pings go on: `shutdown.timeout`
//!   bounds it already.
//!
//! The pings and the drain status come from one thread, `fw-notify`,
//! started only under a service manager (within invariant 1's "+ 8").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};
use sd_notify::NotifyState;

use crate::queue::QueueDepth;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::threads::{self, Panics};

/// How often the drain's `STATUS=` is refreshed (and the stop flag seen)
/// when no watchdog asks for more.
const STATUS_PERIOD: Duration = Duration::from_millis(500);

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `states`; a failure is logged, never fatal (the manager's
/// timeouts will tell).
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify failed: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` and the monotonic time it began.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states.push(NotifyState::Status("reloading (SIGHUP)"));
    send(&states);
}

/// `STOPPING=1` with the drain's first status.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `STATUS=` alone.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Where the threads the watchdog vouches for show they are alive.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    /// When the accept loop last went round (ms since `epoch`).
    accept: AtomicU64,
    /// Per sink worker: when its current write began (ms since `epoch`,
    /// plus one), 0 while it is not writing.
    writing: Vec<AtomicU64>,
}

impl Liveness {
    pub fn new(sink_workers: usize) -> Liveness {
        Liveness {
            epoch: Instant::now(),
            accept: AtomicU64::new(0),
            writing: (0..sink_workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The accept loop went round.
    pub fn accept_beat(&self) {
        self.accept.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Sink `worker` enters a write.
    pub fn write_begins(&self, worker: usize) {
        if let Some(w) = self.writing.get(worker) {
            w.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Sink `worker` left its write (done or failed).
    pub fn write_ends(&self, worker: usize) {
        if let Some(w) = self.writing.get(worker) {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// The first thread that has made no progress for `limit`, by name.
    pub fn stuck(&self, limit: Duration) -> Option<String> {
        let now = self.now_ms();
        let limit = limit.as_millis() as u64;
        if now.saturating_sub(self.accept.load(Ordering::Relaxed)) > limit {
            return Some("fw-accept".to_string());
        }
        self.writing.iter().enumerate().find_map(|(n, w)| {
            let since = w.load(Ordering::Relaxed);
            (since != 0 && now.saturating_sub(since - 1) > limit).then(|| format!("fw-sink-{n}"))
        })
    }
}

/// The `fw-notify` thread: watchdog pings while [`Liveness`] allows, the
/// drain's status once the shutdown began; ends when `stop` is set.
pub struct Notifier {
    pub liveness: Arc<Liveness>,
    pub stats: Arc<Stats>,
    pub depth: QueueDepth,
    pub shutdown: Shutdown,
    /// Set by [`crate::Daemon::wait`] after the drain.
    pub stop: Arc<AtomicBool>,
}

impl Notifier {
    pub fn spawn(self, panics: &Panics) -> std::io::Result<JoinHandle<()>> {
        threads::spawn("fw-notify".to_string(), None, panics, move || self.run())
    }

    fn run(self) {
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(w) = watchdog {
            info!("watchdog on interval={w:?}: pinging every {:?}", w / 2);
        }
        let period = watchdog.map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD));
        let limit = watchdog.map_or(Duration::MAX, |w| w / 2);
        let mut last_ping: Option<Instant> = None;
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) {
            let draining = self.shutdown.is_triggered();
            if draining {
                status(&self.drain_status());
            }
            if let Some(w) = watchdog
                && last_ping.is_none_or(|t| t.elapsed() >= w / 2)
            {
                match self.liveness.stuck(limit) {
                    Some(thread) if !draining => {
                        if !warned {
                            warned = true;
                            warn!(
                                "watchdog: {thread} made no progress for {limit:?}, not pinging systemd (it restarts the daemon after {w:?})"
                            );
                        }
                    }
                    _ => {
                        warned = false;
                        last_ping = Some(Instant::now());
                        send(&[NotifyState::Watchdog]);
                    }
                }
            }
            std::thread::sleep(period);
        }
    }

    /// What the drain still holds.
    pub fn drain_status(&self) -> String {
        drain_status(&self.stats, &self.depth)
    }
}

/// The `STATUS=` of a drain: connections and messages left.
pub fn drain_status(stats: &Stats, depth: &QueueDepth) -> String {
    let s = stats.snapshot(depth);
    format!(
        "draining: {} connections open, {} messages queued, {} delivered",
        s.conns_active, s.queue_depth, s.delivered
    )
}
