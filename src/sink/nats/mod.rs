//! The nats sink: publishes each message to a NATS JetStream stream and
//! counts it delivered only when the stream acknowledges it. The only
//! async code in floodwall: each nats sink thread owns one current-thread
//! tokio runtime and stays inside `block_on` for its whole life, so the
//! thread count is what SPEC.md invariant 1 says (async-nats's tasks run
//! on this thread; servers are IP literals, so nothing is resolved on a
//! blocking pool).
//!
//! Why its own loop instead of [`super::Sink::write`]: a synchronous
//! write of a batch would wait for the slowest ack of the batch before
//! taking the next. Here up to `max_in_flight` publishes await their acks
//! at once, and acks complete in any order (a `FuturesUnordered`, no FIFO
//! head-of-line wait). Each message keeps its queue credit (and so counts
//! in `queue_depth`) until its ack; then it moves to `delivered`.
//!
//! Failures: a publish whose ack failed or timed out is sent again with
//! the same `Nats-Msg-Id`, so the stream stores it once even if the first
//! ack was only lost. While acks fail (no server, a stream without a
//! leader: "no responders") the sink backs off, 100 ms doubling to 5 s,
//! and then probes with one message before opening the window again:
//! spinning on "no responders" was measured to stretch a 5-8 s leader
//! election to 30 s.
//!
//! With `[spool]` the batches come from the spool instead of the queue
//! (the spool writer is then the queue's only reader). A message's id is
//! then its place in the spool, the same on every read of its record,
//! also after a restart, so a replay after a crash is deduplicated by
//! the stream ([`MessageIds`]). A record counts as delivered to the spool
//! only once every message of it is settled (acked, or refused as
//! oversize): acks come back in any order, and the spool's delivered
//! position stays at the oldest record not yet settled.
//! The stream drops a copy only within its duplicate window, so at start
//! the first worker reads the window and warns when it is shorter than 2
//! minutes (JetStream's default), too short to cover a restart.
//!
//! Not here: which messages exist (the queue, the spool), who sent them
//! (the batch's peer, set by the connection, kept by a spool record),
//! and how long shutdown may take (the daemon sets
//! `SinkContext::abandon` at the drain deadline; what is unacked then
//! stays in `queue_depth` and is reported lost, or stays spooled).
//!
//! The files, by role (as Vector's sinks are cut): this one holds the
//! sink worker, its start-up and the connect loop with its back-off;
//! `config.rs` turns the validated settings into the client's connect
//! options and the stream's config; `ids.rs` makes the `Nats-Msg-Id`s;
//! `pipeline.rs` is the publish-and-ack loop and its accounting.

mod config;
mod ids;
mod pipeline;

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use crossbeam_channel::TryRecvError;
use log::{debug, info, warn};

use self::ids::MessageIds;
use self::pipeline::Pipeline;
use super::backoff::Backoff;
use super::{Health, SinkContext};
use crate::alerts::suppressed;
use crate::config::NatsSettings;
use crate::queue::Batch;
use crate::spool::Taken;
use crate::stats::Stats;

pub use self::ids::run_id;

/// Longest a busy loop waits before looking at the queue and the abandon
/// flag again.
const POLL: Duration = Duration::from_millis(10);
/// One sink worker's settings: the validated `[sink]` keys, and its part.
#[derive(Debug, Clone)]
struct Settings {
    nats: NatsSettings,
    /// This worker checks the stream's duplicate window at start (the
    /// first one only: one warning, not one per worker).
    check_window: bool,
}

/// A nats sink worker: its settings, its runtime, and where its message
/// ids come from.
pub struct NatsSink {
    settings: Settings,
    runtime: tokio::runtime::Runtime,
    ids: MessageIds,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Builds worker `worker`'s runtime (failing to is fatal at start-up);
    /// connects later, in [`NatsSink::run`]: a server that is down at
    /// start-up is retried, not fatal.
    pub fn open(nats: &NatsSettings, worker: usize, run_id: &str) -> io::Result<NatsSink> {
        let settings = Settings {
            nats: nats.clone(),
            check_window: worker == 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(NatsSink {
            settings,
            runtime,
            ids: MessageIds::new(run_id, worker),
        })
    }

    /// The sink thread body: runs until the queue is disconnected and
    /// every message is acknowledged, or the drain deadline abandons it.
    pub fn run(self, ctx: SinkContext) {
        let NatsSink {
            settings,
            runtime,
            ids,
        } = self;
        let mut ids = ids;
        if let Some(spool) = &ctx.spool {
            ids.use_spool(spool.id());
        }
        runtime.block_on(async move {
            let mut early = Vec::new();
            let mut health = Health::new(ctx.stats.clone());
            let Some(js) = connect(&settings, &ctx, &ids, &mut early, &mut health).await else {
                return;
            };
            let mut pipeline = Pipeline::new(settings, ctx, js, ids, health);
            for batch in early {
                pipeline.accept(batch);
            }
            pipeline.run().await;
        });
    }
}

/// The shortest duplicate window that covers a restart: a replay after a
/// crash comes within seconds of the start (the spool replays first), but
/// a crash loop with back-off, or a restart after a slow shutdown, can
/// take a minute; JetStream's own default is this too.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Connects (the client keeps reconnecting in the background) and makes
/// sure the stream exists, retrying with back-off until it works or the
/// daemon no longer needs this sink (abandoned, or shut down with nothing
/// queued). None: give up. Batches taken from the queue meanwhile (to
/// see whether it is disconnected) are left in `early`.
async fn connect(
    settings: &Settings,
    ctx: &SinkContext,
    ids: &MessageIds,
    early: &mut Vec<Batch>,
    health: &mut Health,
) -> Option<jetstream::Context> {
    let mut backoff = Backoff::default();
    let mut outage: Option<Instant> = None;
    loop {
        match config::try_connect(&settings.nats).await {
            Ok((js, window)) => {
                health.set(true);
                if settings.check_window && window < MIN_DUPLICATE_WINDOW {
                    warn!(
                        "nats stream duplicate window is shorter than {}, a message resent after a restart or a lost ack may be stored twice stream={} duplicate_window={}",
                        humantime::format_duration(MIN_DUPLICATE_WINDOW),
                        settings.nats.stream,
                        humantime::format_duration(window)
                    );
                }
                // ids= ties the stream's messages to this run and worker.
                info!(
                    "nats sink ready servers={} stream={} subject={} ids={}*",
                    settings.nats.servers.join(","),
                    settings.nats.stream,
                    settings.nats.subject,
                    ids.prefix()
                );
                return Some(js);
            }
            Err(e) => {
                Stats::add(&ctx.stats.sink_errors, 1);
                health.set(false);
                if outage.replace(Instant::now()).is_none() {
                    if let Some(n) = ctx.alerts.sink_error.allow() {
                        warn!(
                            "nats sink cannot reach the stream, retrying with back-off stream={} error=\"{e}\"{}",
                            settings.nats.stream,
                            suppressed(n)
                        );
                    }
                } else {
                    debug!("nats sink set-up failed again error=\"{e}\"");
                }
            }
        }
        backoff.fail();
        while let Some(wait) = backoff.remaining() {
            if ctx.abandon.load(Ordering::SeqCst) || nothing_left(ctx, early) {
                return None;
            }
            tokio::time::sleep(wait.min(POLL)).await;
        }
    }
}

/// Shut down with nothing queued: a sink that never got its stream has
/// nothing to deliver either. (crossbeam can tell "disconnected" only by
/// a receive, so what it yields is kept; so does the spool, but one
/// record taken is enough to know, and taking all would read the whole
/// spool into memory.)
fn nothing_left(ctx: &SinkContext, early: &mut Vec<Batch>) -> bool {
    if let Some(spool) = &ctx.spool {
        if !early.is_empty() {
            return false;
        }
        return match spool.take(1, 1, Duration::ZERO) {
            Taken::Batches(batches) => {
                early.extend(batches);
                false
            }
            Taken::Empty => false,
            Taken::Closed => true,
        };
    }
    loop {
        match ctx.queue.try_recv() {
            Ok(batch) => early.push(batch),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return early.is_empty(),
        }
    }
}

/// What the ids' and the pipeline's spool tests share.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use crate::stats::Stats;

    /// A spool in `dir` with its writer thread running, fed by the sender
    /// [`spooling`] returns; [`Spooling::close`] ends it.
    pub(super) struct Spooling {
        settings: crate::spool::Settings,
        pub(super) spool: Arc<crate::spool::Spool>,
        stop: Arc<AtomicBool>,
        writer: std::thread::JoinHandle<()>,
    }

    impl Spooling {
        /// Stops the writer and closes the spool; its settings reopen it.
        pub(super) fn close(self) -> crate::spool::Settings {
            self.stop.store(true, Ordering::SeqCst);
            self.writer.join().unwrap();
            drop(self.spool);
            self.settings
        }
    }

    pub(super) fn spooling(dir: &std::path::Path) -> (crate::queue::QueueSender, Spooling) {
        let settings = crate::spool::Settings {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            segment_bytes: 4 << 10,
            sync: Duration::from_millis(10),
        };
        let (spool, writer) =
            crate::spool::open(settings.clone(), Arc::new(Stats::default())).unwrap();
        let (tx, rx) = crate::queue::queue(100);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer =
            std::thread::spawn(move || writer.run(rx, Arc::new(AtomicBool::new(false)), s));
        let spooling = Spooling {
            settings,
            spool,
            stop,
            writer,
        };
        (tx, spooling)
    }
}
