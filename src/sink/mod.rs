//! Sinks: where messages leave floodwall. The [`Sink`] trait is the one
//! thing a destination implements; [`run`] is the sink thread around it:
//! it drains the queue (the only holder of a receiving end), gathers
//! batches into large vectored writes, retries failed writes with back-off
//! (a sink error never kills the thread), reopens on SIGHUP, and returns
//! the queue's credits only once messages are written, which keeps
//! `queue_depth` honest.
//!
//! Buffering: a sink that asks for it ([`Sink::linger`], the file sink
//! with `flush_interval`) has batches held until 1 MiB is gathered or the
//! oldest has waited `linger`, then written in one call. Held batches are
//! not yet written, so they stay in `queue_depth` and keep their queue
//! credits: lingering must never be what keeps a sender out, so a
//! lingering sink also writes at once when it holds a quarter of the
//! queue ([`LINGER_SHARE`]) or when a sender waits for room (the queue's
//! `wanted` bell). At shutdown nothing lingers, nor does a batch whose
//! RELP client waits for its acknowledgement (src/relp/ack.rs): the
//! runner fires it once the batch is written.
//!
//! The thread ends when the queue disconnects (every sender gone) and all
//! it holds is written, or when the shutdown deadline abandons it.
//!
//! The nats sink is the exception: it keeps many publishes awaiting acks
//! at once, which a synchronous `write` cannot express, so it runs its own
//! loop on the sink thread ([`SinkWorker::Nats`]).

mod backoff;
mod downstream;
mod file;
mod nats;
mod relp;
mod stdout;
mod tcp;

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{TryRecvError, select};
use log::{debug, info, warn};

use self::backoff::Backoff;
use crate::alerts::{Alerts, suppressed};
use crate::config::{Destination, SinkSettings};
use crate::queue::{Batch, QueueReceiver};
use crate::shutdown::{Reopen, Shutdown};
use crate::spool::{Spool, Taken};
use crate::stats::Stats;
use crate::systemd::Liveness;

pub use file::FileSink;
pub use nats::NatsSink;
pub use relp::RelpSink;
pub use stdout::StdoutSink;
pub use tcp::TcpSink;

/// A destination for messages.
pub trait Sink: Send {
    /// Writes every message of `batches`, in order, or fails. After a
    /// failure the runner calls again with the same batches: the sink
    /// decides whether to resume after what it already wrote (file) or
    /// start over (tcp, at-least-once).
    fn write(&mut self, batches: &[Batch]) -> io::Result<()>;

    /// SIGHUP: reopen the destination (logrotate), logging what it did.
    /// Default: nothing (stdout, tcp, null have nothing to reopen).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// How long batches may wait to be gathered into one larger write;
    /// `None` (default): write what is queued at once.
    fn linger(&self) -> Option<Duration> {
        None
    }

    /// Called on the idle tick (nothing to write): a cheap look at
    /// whether the destination is still there, so that `floodwall_sink_up`
    /// and /healthz notice a downstream that went away while nothing was
    /// being written. `None`: nothing to look at (stdout, file, null: only
    /// a write can tell); `Some(Err)`: down; `Some(Ok)`: up.
    fn check(&mut self) -> Option<io::Result<()>> {
        None
    }

    /// Messages sent again since the last call (relp: unacknowledged on a
    /// session that was lost, so possibly stored twice downstream); the
    /// runner adds them to `relp_resent`. Default: none.
    fn take_resent(&mut self) -> u64 {
        0
    }
}

/// Discards everything (for benchmarks).
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn write(&mut self, _batches: &[Batch]) -> io::Result<()> {
        Ok(())
    }
}

/// What one sink thread runs.
pub enum SinkWorker {
    /// A [`Sink`] driven by the shared runner, [`run`].
    Batches(Box<dyn Sink>),
    /// The nats sink's own publish-and-ack loop (boxed: its runtime and
    /// settings dwarf the other variant).
    Nats(Box<NatsSink>),
}

impl SinkWorker {
    /// The sink thread body.
    pub fn run(self, ctx: SinkContext) {
        match self {
            SinkWorker::Batches(sink) => run(sink, ctx),
            SinkWorker::Nats(sink) => sink.run(ctx),
        }
    }
}

impl From<Box<dyn Sink>> for SinkWorker {
    fn from(sink: Box<dyn Sink>) -> SinkWorker {
        SinkWorker::Batches(sink)
    }
}

/// Opens `workers` sinks of the configured type. Fails only for what is
/// fatal at start-up (a file that cannot be opened); a tcp or nats
/// downstream that is down is retried later.
pub fn open(settings: &SinkSettings) -> io::Result<Vec<SinkWorker>> {
    let run_id = nats::run_id();
    (0..settings.workers)
        .map(|worker| -> io::Result<SinkWorker> {
            let sink: Box<dyn Sink> = match &settings.destination {
                Destination::Stdout => Box::new(StdoutSink),
                Destination::Null => Box::new(NullSink),
                Destination::File {
                    path,
                    flush_interval,
                } => Box::new(FileSink::open(path, *flush_interval)?),
                Destination::Tcp {
                    downstream,
                    framing,
                } => Box::new(TcpSink::new(downstream, *framing)?),
                Destination::Relp { downstream, window } => {
                    Box::new(RelpSink::new(downstream, *window)?)
                }
                Destination::Nats(nats) => {
                    return Ok(SinkWorker::Nats(Box::new(NatsSink::open(
                        nats, worker, &run_id,
                    )?)));
                }
            };
            Ok(sink.into())
        })
        .collect()
}

/// How often an idle sink thread wakes (reopen requests, the idle
/// probe): every 250 ms, or the file sink's `flush_interval` when that is
/// shorter.
pub fn tick(settings: &SinkSettings) -> Duration {
    settings
        .flush_interval()
        .map_or(IDLE_TICK, |flush| flush.min(IDLE_TICK))
}

/// See [`tick`].
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Writes gathered per call, at most: large enough to amortise the
/// syscall, small enough that credits return steadily. Public for the
/// tests, which derive the tcp sink's resend bound from it.
pub const GATHER_BYTES: usize = 1 << 20;
const GATHER_BATCHES: usize = 256;
/// Writes gathered from the spool per call, at most (plus one record): a
/// write is the unit the delivered position advances by, so a crash
/// during one replays all of it. Kept within one `sync` interval's worth
/// of a slow downstream (64 KiB: a 320 KB/s one at the default 200 ms)
/// so that those duplicates stay within the one interval SPEC allows;
/// still hundreds of messages per syscall.
const SPOOL_GATHER_BYTES: usize = 64 << 10;
/// A lingering sink writes once it holds this share of the queue's
/// capacity: the rest stays free for senders while the write runs, so a
/// small queue streams instead of waiting for the linger timer.
const LINGER_SHARE: usize = 4;
/// How often a sink waiting to retry looks at the abandon flag.
const ABANDON_POLL: Duration = Duration::from_millis(10);

/// What a sink thread shares with the daemon.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub queue: QueueReceiver,
    pub stats: Arc<Stats>,
    pub alerts: Arc<Alerts>,
    pub reopen: Reopen,
    /// How often an idle sink wakes to look at reopen requests.
    pub tick: Duration,
    /// Set when the shutdown deadline has passed: stop retrying, give up.
    pub abandon: Arc<AtomicBool>,
    /// Once triggered, nothing lingers: every batch is written at once.
    pub shutdown: Shutdown,
    /// With `[spool]`: read from it instead of the queue (the spool
    /// writer is then the queue's only reader).
    pub spool: Option<Arc<Spool>>,
    /// Where this thread shows it is not wedged in a write (the
    /// watchdog, src/systemd.rs), and its index there.
    pub liveness: Arc<Liveness>,
    pub worker: usize,
}

/// The sink thread body.
pub fn run(mut sink: Box<dyn Sink>, ctx: SinkContext) {
    if let Some(spool) = ctx.spool.clone() {
        return run_spooled(sink, &ctx, &spool);
    }
    let linger = sink.linger();
    let mut seen_reopen = ctx.reopen.generation();
    let mut health = Health::new(ctx.stats.clone());
    let mut pending: Vec<Batch> = Vec::new();
    let mut bytes = 0usize;
    // Messages in `pending`, and how many make a lingering sink write.
    let mut held = 0usize;
    let share = (ctx.queue.capacity() / LINGER_SHARE).max(1);
    // When the oldest pending batch arrived (lingering sinks only).
    let mut oldest: Option<Instant> = None;
    let mut disconnected = false;
    // A pending batch whose RELP client waits for its ack: its window is
    // stalled until we write, so nothing lingers then.
    let mut awaited = false;
    loop {
        if ctx.abandon.load(Ordering::SeqCst) {
            // Past the drain deadline: what is still queued is lost (and
            // counted in queue_depth); take nothing more.
            return;
        }
        if !disconnected {
            let wait = match (oldest, linger) {
                (Some(t), Some(l)) => (t + l).saturating_duration_since(Instant::now()),
                _ => ctx.tick,
            }
            .min(ctx.tick);
            select! {
                recv(ctx.queue.channel()) -> msg => match msg {
                    Ok(batch) => {
                        bytes += batch.byte_len();
                        held += batch.len();
                        awaited |= batch.has_ack();
                        pending.push(batch);
                    }
                    Err(_) => disconnected = true,
                },
                // A sender waits for room: `due` below sees it.
                recv(ctx.queue.wanted()) -> _ => {}
                default(wait) => {}
            }
        }
        // Gather what else is already queued into one write.
        while !disconnected && bytes < GATHER_BYTES && pending.len() < GATHER_BATCHES {
            match ctx.queue.try_recv() {
                Ok(batch) => {
                    bytes += batch.byte_len();
                    held += batch.len();
                    awaited |= batch.has_ack();
                    pending.push(batch);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => disconnected = true,
            }
        }
        reopen_if_asked(&mut *sink, &ctx, &mut seen_reopen);
        if pending.is_empty() {
            if disconnected {
                return;
            }
            probe(&mut *sink, &mut health);
            continue;
        }
        let since = *oldest.get_or_insert_with(Instant::now);
        let due = match linger {
            None => true,
            Some(l) => {
                disconnected
                    || awaited
                    || bytes >= GATHER_BYTES
                    || pending.len() >= GATHER_BATCHES
                    || held >= share
                    || ctx.queue.is_wanted()
                    || since.elapsed() >= l
                    || ctx.shutdown.is_triggered()
            }
        };
        if !due {
            continue;
        }
        if !write_all(&mut *sink, &pending, &ctx, &mut seen_reopen, &mut health) {
            return;
        }
        let n = held;
        ctx.stats.moving(|| {
            Stats::add(&ctx.stats.delivered, n as u64);
            ctx.queue.written(n);
        });
        for mut batch in pending.drain(..) {
            // Written: a RELP session may acknowledge it now.
            batch.acknowledge();
            ctx.queue.recycle(batch);
        }
        bytes = 0;
        held = 0;
        awaited = false;
        oldest = None;
    }
}

/// The sink thread body with a spool: records come back from disk in
/// order, and each successful write advances the delivered position
/// (the caller of [`write_all`] counts the delivery: queue credits here,
/// the spool's position there). No lingering: a take already gathers up
/// to [`SPOOL_GATHER_BYTES`] of records. Ends when the spool writer is done and everything
/// was delivered, or when the shutdown deadline abandons the sink (what
/// it held stays spooled).
fn run_spooled(mut sink: Box<dyn Sink>, ctx: &SinkContext, spool: &Spool) {
    let mut seen_reopen = ctx.reopen.generation();
    let mut health = Health::new(ctx.stats.clone());
    loop {
        let taken = spool.take(SPOOL_GATHER_BYTES, GATHER_BATCHES, ctx.tick);
        reopen_if_asked(&mut *sink, ctx, &mut seen_reopen);
        match taken {
            Taken::Batches(batches) => {
                if !write_all(&mut *sink, &batches, ctx, &mut seen_reopen, &mut health) {
                    return;
                }
                spool.delivered(&batches);
            }
            Taken::Empty => probe(&mut *sink, &mut health),
            Taken::Closed => return,
        }
        if ctx.abandon.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Writes `batches`, retrying with back-off (100 ms doubling to 5 s) until
/// it works or the shutdown deadline abandons the sink (returns false
/// then). Every outage gets one warning (deferred while the throttle is
/// closed, never dropped) and one line on recovery.
fn write_all(
    sink: &mut dyn Sink,
    batches: &[Batch],
    ctx: &SinkContext,
    seen_reopen: &mut u64,
    health: &mut Health,
) -> bool {
    let mut backoff = Backoff::default();
    let mut outage: Option<Instant> = None;
    let mut warned = false;
    loop {
        let started = Instant::now();
        ctx.liveness.write_begins(ctx.worker);
        let result = sink.write(batches);
        ctx.liveness.write_ends(ctx.worker);
        ctx.stats.sink_write.observe(started.elapsed());
        Stats::add(&ctx.stats.relp_resent, sink.take_resent());
        health.set(result.is_ok());
        match result {
            Ok(()) => {
                // Message bytes: each message is followed by one LF. (The
                // caller counts the messages: queue credits or spool.)
                let bytes: usize = batches.iter().map(|b| b.byte_len() - b.len()).sum();
                Stats::add(&ctx.stats.bytes_delivered, bytes as u64);
                if let Some(since) = outage
                    && let Some(s) = ctx.alerts.sink_recovered.allow()
                {
                    info!(
                        "sink recovered outage={:?}{}",
                        since.elapsed(),
                        suppressed(s)
                    );
                }
                return true;
            }
            Err(e) => {
                Stats::add(&ctx.stats.sink_errors, 1);
                outage.get_or_insert_with(Instant::now);
                backoff.fail();
                if !warned && let Some(n) = ctx.alerts.sink_error.ready() {
                    warned = true;
                    warn!(
                        "sink write failed, retrying with back-off error=\"{e}\"{}",
                        suppressed(n)
                    );
                } else {
                    let wait = backoff.remaining().unwrap_or_default();
                    debug!("sink write failed again, retry in {wait:?} error=\"{e}\"");
                }
                while let Some(left) = backoff.remaining() {
                    if ctx.abandon.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(left.min(ABANDON_POLL));
                }
                // A SIGHUP during an outage may be the fix (a new file).
                reopen_if_asked(sink, ctx, seen_reopen);
            }
        }
    }
}

/// The idle tick's look at the destination (`Sink::check`): it moves
/// `floodwall_sink_up` only. Its findings are debug lines: the outage
/// warning ("sink write failed") belongs to the first write that fails,
/// so an outage still gets exactly one warning, and an outage while idle
/// loses nothing that a warning would have to report.
fn probe(sink: &mut dyn Sink, health: &mut Health) {
    match sink.check() {
        None => {}
        Some(Ok(())) => {
            if !health.up {
                debug!("sink up again (idle probe)");
            }
            health.set(true);
        }
        Some(Err(e)) => {
            if health.up {
                debug!("sink down (idle probe) error=\"{e}\"");
            }
            health.set(false);
        }
    }
}

/// One sink worker's share of `Stats::sinks_down`: whether its last
/// write, connect or probe failed. Leaving the thread (shutdown, abandon)
/// takes its "down" back, so a finished sink counts as not down.
struct Health {
    stats: Arc<Stats>,
    up: bool,
}

impl Health {
    fn new(stats: Arc<Stats>) -> Health {
        Health { stats, up: true }
    }

    fn set(&mut self, up: bool) {
        if up != self.up {
            self.up = up;
            if up {
                Stats::sub(&self.stats.sinks_down, 1);
            } else {
                Stats::add(&self.stats.sinks_down, 1);
            }
        }
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        self.set(true);
    }
}

/// Reopens the sink if SIGHUP asked for it since `seen` was taken.
fn reopen_if_asked(sink: &mut dyn Sink, ctx: &SinkContext, seen: &mut u64) {
    let generation = ctx.reopen.generation();
    if generation == *seen {
        return;
    }
    *seen = generation;
    if let Err(e) = sink.reopen() {
        Stats::add(&ctx.stats.sink_errors, 1);
        if let Some(n) = ctx.alerts.sink_reopen.allow() {
            warn!(
                "sink reopen failed, still writing to the old file error=\"{e}\"{}",
                suppressed(n)
            );
        }
    }
}

/// Writes all of `bufs` to `w` with vectored writes, starting `*done`
/// bytes in; `*done` tracks progress across failures so a retry resumes
/// where the last attempt stopped. Resets `*done` to 0 on success.
pub fn write_vectored_all(
    w: &mut impl io::Write,
    bufs: &[&[u8]],
    done: &mut usize,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len());
    while *done < total {
        slices.clear();
        let mut skip = *done;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            slices.push(IoSlice::new(&b[skip..]));
            skip = 0;
            if slices.len() == 1024 {
                break; // IOV_MAX
            }
        }
        match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    *done = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `limit` bytes per call, fails every other call.
    struct Flaky {
        out: Vec<u8>,
        limit: usize,
        fail_next: bool,
    }

    impl io::Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.fail_next = !self.fail_next;
            if !self.fail_next {
                return Err(io::Error::other("disk full"));
            }
            let mut n = 0;
            for b in bufs {
                let take = (self.limit - n).min(b.len());
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_write_resumes_after_partial_writes_and_errors() {
        let mut w = Flaky {
            out: Vec::new(),
            limit: 3,
            fail_next: false,
        };
        let bufs: [&[u8]; 3] = [b"hello\n", b"", b"world\n"];
        let mut done = 0;
        let mut attempts = 0;
        while write_vectored_all(&mut w, &bufs, &mut done).is_err() {
            attempts += 1;
            assert!(attempts < 100);
        }
        assert_eq!(w.out, b"hello\nworld\n");
        assert_eq!(done, 0);
    }
}
