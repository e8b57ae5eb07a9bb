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
//! Not here: which messages exist (the queue), who sent them (the batch's
//! peer, set by the connection), and how long shutdown may take (the
//! daemon sets `SinkContext::abandon` at the drain deadline; what is
//! unacked then stays in `queue_depth` and is reported lost).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName, Subject, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use log::{debug, info, warn};

use super::{Health, SinkContext};
use crate::alerts::suppressed;
use crate::config::SinkConfig;
use crate::queue::Batch;
use crate::stats::Stats;

/// Back-off after failed publishes or stream set-up (SPEC.md "Sinks").
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest a busy loop waits before looking at the queue and the abandon
/// flag again.
const POLL: Duration = Duration::from_millis(10);
/// With room in the window and acks outstanding: how long to wait for an
/// ack before looking at the queue again.
const FEED_POLL: Duration = Duration::from_millis(1);
/// With nothing in flight: how long the thread blocks on the queue. The
/// runtime does not run meanwhile, which is harmless: with nothing in
/// flight async-nats has nothing to flush, and server pings come minutes
/// apart.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// The header naming the client that sent a message.
const PEER_HEADER: &str = "Floodwall-Peer";

/// One sink worker's settings, taken from the validated config.
#[derive(Debug, Clone)]
struct Settings {
    servers: Vec<String>,
    subject: String,
    stream: String,
    max_in_flight: usize,
    ack_timeout: Duration,
    connect_timeout: Duration,
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
    pub fn open(config: &SinkConfig, worker: usize, run_id: &str) -> io::Result<NatsSink> {
        let settings = Settings {
            servers: config.servers.clone().unwrap_or_default(),
            subject: config.subject.clone().unwrap_or_default(),
            stream: config.stream.clone().unwrap_or_default(),
            max_in_flight: config.max_in_flight.unwrap_or(1024),
            ack_timeout: config.ack_timeout.unwrap_or(Duration::from_secs(5)),
            connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(2)),
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

/// A run id for message ids: unique per daemon run (process id and start
/// time), so two runs never share an id within the stream's duplicate
/// window.
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Where `Nats-Msg-Id`s come from. Today: "<run>-<worker>-<seq>", unique
/// per message per run. The one place to change when ids must survive a
/// restart (a spool supplies them from its positions).
#[derive(Debug)]
struct MessageIds {
    prefix: String,
    next: u64,
}

impl MessageIds {
    fn new(run_id: &str, worker: usize) -> MessageIds {
        MessageIds {
            prefix: format!("{run_id}-{worker}-"),
            next: 0,
        }
    }

    /// The next message's sequence number; [`MessageIds::text`] makes
    /// the id of it (only when it is published, so a message holds no
    /// string of its own while it waits).
    fn next_seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn text(&self, seq: u64) -> String {
        format!("{}{}", self.prefix, seq)
    }
}

/// One message taken from the queue and not yet acknowledged.
#[derive(Debug, Clone)]
struct Message {
    /// Its `Nats-Msg-Id` is made of this ([`MessageIds::text`]), the same
    /// on every retry: the stream deduplicates on it.
    seq: u64,
    /// "IP:PORT" or "[IPv6]:PORT"; empty when the batch had no peer.
    /// Shared by the messages of one batch.
    peer: Arc<str>,
    payload: Bytes,
}

type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
/// The client's own (boxed) future of one ack.
type AckFuture = <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture;

/// A publish awaiting its ack: yields the message, when it was sent and
/// the ack. A plain struct rather than an `async` block: that would be
/// one more allocation per message around the client's boxed future.
struct Pending {
    message: Option<Message>,
    sent: Instant,
    ack: AckFuture,
}

impl Future for Pending {
    type Output = (Message, Instant, AckResult);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Poll::Ready(result) = this.ack.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        let message = this
            .message
            .take()
            .expect("FuturesUnordered polls a completed future never again");
        Poll::Ready((message, this.sent, result))
    }
}

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
        match try_connect(settings).await {
            Ok(js) => {
                health.set(true);
                // ids= ties the stream's messages to this run and worker.
                info!(
                    "nats sink ready servers={} stream={} subject={} ids={}*",
                    settings.servers.join(","),
                    settings.stream,
                    settings.subject,
                    ids.prefix
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
                            settings.stream,
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
/// a receive, so what it yields is kept.)
fn nothing_left(ctx: &SinkContext, early: &mut Vec<Batch>) -> bool {
    loop {
        match ctx.queue.try_recv() {
            Ok(batch) => early.push(batch),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return early.is_empty(),
        }
    }
}

async fn try_connect(settings: &Settings) -> Result<jetstream::Context, String> {
    let client = async_nats::ConnectOptions::new()
        .name("floodwall")
        .connection_timeout(settings.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Other cluster members' URLs would be host names to resolve on a
        // blocking pool thread; the configured list is the list.
        .ignore_discovered_servers()
        .reconnect_delay_callback(|attempts| {
            RETRY_MIN
                .saturating_mul(1 << attempts.min(16) as u32)
                .min(RETRY_MAX)
        })
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(settings.ack_timeout)
        // Our own window is the bound; the client's must never be the
        // one that waits.
        .max_ack_inflight(settings.max_in_flight + 1)
        .build(client);
    let config = jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject.clone()],
        num_replicas: 1,
        ..Default::default()
    };
    match tokio::time::timeout(
        settings.ack_timeout + settings.connect_timeout,
        js.get_or_create_stream(config),
    )
    .await
    {
        Ok(Ok(_)) => Ok(js),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out waiting for the stream".to_string()),
    }
}

/// Back-off state shared by every failure of one outage: many publishes
/// failing at once (every in-flight one gets "no responders") is one
/// failure, not a thousand doublings.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
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
    fn fail(&mut self) {
        if self.remaining().is_some() {
            return;
        }
        self.until = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    fn succeed(&mut self) {
        self.delay = RETRY_MIN;
        self.until = None;
    }

    /// How long to hold off still; None when free to send.
    fn remaining(&self) -> Option<Duration> {
        let left = self.until?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// The publish loop of one sink worker.
struct Pipeline {
    settings: Settings,
    ctx: SinkContext,
    js: jetstream::Context,
    ids: MessageIds,
    /// Made once: cloning them shares their bytes (per message they
    /// would be an allocation each).
    subject: Subject,
    peer_header: HeaderName,
    /// Publishes awaiting their acks, completing in any order.
    in_flight: FuturesUnordered<Pending>,
    /// Completed publishes to settle; kept to reuse its allocation.
    acks: Vec<(Message, Instant, AckResult)>,
    /// Messages whose publish failed, sent again (same id) first.
    retries: VecDeque<Message>,
    /// Messages taken from the queue and not yet published.
    fresh: VecDeque<Message>,
    backoff: Backoff,
    /// After a failure only one publish goes out until one succeeds.
    probing: bool,
    /// Since when publishes fail (one warning per outage).
    outage: Option<Instant>,
    /// Every sender is gone: finish what is held, then end.
    disconnected: bool,
    /// This worker's share of `floodwall_sink_up`.
    health: Health,
}

impl Pipeline {
    fn new(
        settings: Settings,
        ctx: SinkContext,
        js: jetstream::Context,
        ids: MessageIds,
        health: Health,
    ) -> Pipeline {
        Pipeline {
            subject: Subject::from(settings.subject.clone()),
            peer_header: HeaderName::from_static(PEER_HEADER),
            settings,
            ctx,
            js,
            ids,
            in_flight: FuturesUnordered::new(),
            acks: Vec::new(),
            retries: VecDeque::new(),
            fresh: VecDeque::new(),
            backoff: Backoff::default(),
            probing: false,
            outage: None,
            disconnected: false,
            health,
        }
    }

    fn window(&self) -> usize {
        if self.probing {
            1
        } else {
            self.settings.max_in_flight
        }
    }

    fn held(&self) -> usize {
        self.in_flight.len() + self.retries.len() + self.fresh.len()
    }

    async fn run(mut self) {
        loop {
            if self.ctx.abandon.load(Ordering::SeqCst) {
                // The drain deadline passed: what is unacked stays in
                // queue_depth and is reported lost.
                return;
            }
            self.take_from_queue();
            if self.backoff.remaining().is_none() {
                self.publish_what_fits().await;
            }
            if self.disconnected && self.held() == 0 {
                return;
            }
            self.wait().await;
        }
    }

    /// Moves batches from the queue into `fresh` while fewer than a
    /// window's worth of messages wait there. Their credits stay taken:
    /// they count in `queue_depth` until acknowledged.
    fn take_from_queue(&mut self) {
        while !self.disconnected && self.fresh.len() < self.settings.max_in_flight {
            match self.ctx.queue.try_recv() {
                Ok(batch) => self.accept(batch),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.disconnected = true,
            }
        }
    }

    /// Takes a batch's messages: one copy of the batch's bytes, which each
    /// message's payload slices (a batch stores its messages back to back,
    /// each followed by LF), and one peer string for all of them. A slow
    /// message keeps its batch's copy alive until its ack: at most
    /// `max_in_flight` batches' worth, far below what the queue may hold.
    fn accept(&mut self, batch: Batch) {
        let peer: Arc<str> = batch.peer().map(peer_text).unwrap_or_default().into();
        let data = Bytes::copy_from_slice(batch.as_lines());
        let mut start = 0;
        for m in batch.messages() {
            let end = start + m.len();
            self.fresh.push_back(Message {
                seq: self.ids.next_seq(),
                peer: peer.clone(),
                payload: data.slice(start..end),
            });
            start = end + 1;
        }
        self.ctx.queue.recycle(batch);
    }

    /// Publishes retries first, then fresh messages, while the window has
    /// room.
    /// Headers are made here, not kept: the client takes them by value,
    /// and a retry (rare) makes them again. One clock read per call: the
    /// publishes of one call go out within microseconds.
    async fn publish_what_fits(&mut self) {
        let sent = Instant::now();
        while self.in_flight.len() < self.window() {
            let Some(message) = self.retries.pop_front().or_else(|| self.fresh.pop_front()) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, self.ids.text(message.seq));
            if !message.peer.is_empty() {
                headers.insert(self.peer_header.clone(), &*message.peer);
            }
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers);
            match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => self.in_flight.push(Pending {
                    message: Some(message),
                    sent,
                    ack: std::future::IntoFuture::into_future(ack),
                }),
                Err(e) if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded) => {
                    self.refuse(message, &e)
                }
                Err(e) => {
                    self.failed(message, &e);
                    return;
                }
            }
        }
    }

    /// Waits for the next thing to do: an ack, room to publish, the end
    /// of a back-off, or a batch from the queue.
    async fn wait(&mut self) {
        let holding = self.backoff.remaining();
        let can_publish = holding.is_none()
            && self.in_flight.len() < self.window()
            && !(self.retries.is_empty() && self.fresh.is_empty());
        if can_publish {
            return;
        }
        if self.in_flight.is_empty() {
            match holding {
                Some(left) => tokio::time::sleep(left.min(POLL)).await,
                None => self.wait_for_queue().await,
            }
            return;
        }
        let mut acks = std::mem::take(&mut self.acks);
        // What has completed already settles without arming a timer.
        self.completed(&mut acks);
        if acks.is_empty() {
            let room = holding.is_none() && self.in_flight.len() < self.window();
            let poll = if room { FEED_POLL } else { POLL };
            if let Ok(Some(done)) = tokio::time::timeout(poll, self.in_flight.next()).await {
                acks.push(done);
                self.completed(&mut acks);
            }
        }
        self.settle(&mut acks);
        self.acks = acks;
    }

    /// Takes every publish whose ack is in, without waiting.
    fn completed(&mut self, acks: &mut Vec<(Message, Instant, AckResult)>) {
        while let Some(Some(done)) = futures_util::FutureExt::now_or_never(self.in_flight.next()) {
            acks.push(done);
        }
    }

    /// Nothing in flight, nothing to publish: block on the queue for a
    /// short while, then let the runtime run (connection upkeep).
    async fn wait_for_queue(&mut self) {
        if self.disconnected {
            return;
        }
        match self.ctx.queue.channel().recv_timeout(IDLE_WAIT) {
            Ok(batch) => self.accept(batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.disconnected = true,
        }
        tokio::task::yield_now().await;
    }

    /// Books completed publishes: acks move messages to `delivered` (a
    /// duplicate ack too: the message is stored once and counted once,
    /// since each message is settled once), failures go back for a retry.
    fn settle(&mut self, acks: &mut Vec<(Message, Instant, AckResult)>) {
        let mut delivered = 0u64;
        let mut bytes = 0u64;
        let now = Instant::now();
        for (message, sent, result) in acks.drain(..) {
            // floodwall_sink_write_duration_seconds: publish to ack.
            self.ctx
                .stats
                .sink_write
                .observe(now.saturating_duration_since(sent));
            match result {
                Ok(ack) => {
                    if ack.duplicate {
                        debug!("nats ack was a duplicate id={}", self.ids.text(message.seq));
                    }
                    delivered += 1;
                    bytes += message.payload.len() as u64;
                }
                Err(e) => self.failed(message, &e),
            }
        }
        if delivered == 0 {
            return;
        }
        let stats = &self.ctx.stats;
        stats.moving(|| {
            Stats::add(&stats.delivered, delivered);
            Stats::add(&stats.bytes_delivered, bytes);
            self.ctx.queue.written(delivered as usize);
        });
        self.probing = false;
        self.backoff.succeed();
        self.health.set(true);
        if let Some(since) = self.outage.take() {
            info!("nats sink recovered outage={:?}", since.elapsed());
        }
    }

    /// A publish or its ack failed: keep the message (same id) for a
    /// retry, back off, probe with one message before opening up again.
    fn failed(&mut self, message: Message, e: &jetstream::context::PublishError) {
        Stats::add(&self.ctx.stats.sink_errors, 1);
        self.health.set(false);
        self.retries.push_back(message);
        self.backoff.fail();
        self.probing = true;
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            if let Some(n) = self.ctx.alerts.sink_error.allow() {
                warn!(
                    "nats publish failed, retrying with back-off stream={} error=\"{e}\"{}",
                    self.settings.stream,
                    suppressed(n)
                );
            }
        } else {
            debug!("nats publish failed again error=\"{e}\"");
        }
    }

    /// The server can never take this message (larger than its
    /// max_payload): count it as an oversize drop, so the books balance.
    fn refuse(&mut self, message: Message, e: &jetstream::context::PublishError) {
        let stats = &self.ctx.stats;
        stats.moving(|| {
            Stats::add(&stats.dropped_oversize, 1);
            self.ctx.queue.written(1);
        });
        if let Some(n) = self.ctx.alerts.oversize.allow() {
            warn!(
                "oversize for the nats server, message dropped peer={} bytes={} error=\"{e}\"{}",
                message.peer,
                message.payload.len(),
                suppressed(n)
            );
        }
    }
}

/// "IP:PORT", or "[IPv6]:PORT": SocketAddr's own display.
fn peer_text(peer: SocketAddr) -> String {
    peer.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_per_worker_and_run() {
        let mut a = MessageIds::new("r1", 0);
        let mut b = MessageIds::new("r1", 1);
        let ids: std::collections::HashSet<String> = (0..100)
            .flat_map(|_| {
                let (x, y) = (a.next_seq(), b.next_seq());
                [a.text(x), b.text(y)]
            })
            .collect();
        assert_eq!(ids.len(), 200);
        assert_ne!(run_id(), "");
    }

    #[test]
    fn peer_header_brackets_ipv6() {
        assert_eq!(peer_text("127.0.0.1:5".parse().unwrap()), "127.0.0.1:5");
        assert_eq!(peer_text("[::1]:5".parse().unwrap()), "[::1]:5");
    }

    #[test]
    fn one_outage_doubles_once_not_per_failure() {
        let mut b = Backoff::default();
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
}
