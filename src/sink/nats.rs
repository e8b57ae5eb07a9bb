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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName, Subject, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use log::{debug, info, warn};

use super::backoff::Backoff;
use super::{Health, SinkContext};
use crate::alerts::suppressed;
use crate::config::NatsSettings;
use crate::queue::{Batch, SpoolPos};
use crate::spool::{Spool, Taken};
use crate::stats::Stats;

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
/// One take from the spool, at most (records are read's worth of
/// messages each): enough to fill the window in a few takes, small
/// enough that what waits unpublished stays near one window.
const SPOOL_TAKE_BYTES: usize = 256 << 10;
const SPOOL_TAKE_RECORDS: usize = 256;

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

/// Where `Nats-Msg-Id`s come from.
///
/// - From the queue (no spool): "<run>-<worker>-<seq>", unique per
///   message and per run; `<run>` is hex digits ([`run_id`]).
/// - From the spool: "s<spool id>-<segment>-<offset>-<index>", the
///   message's place in the spool (its record's place and its index in
///   the record). A replay after a crash reads the same record at the
///   same place, so it gets the same id and the stream's duplicate window
///   drops the copy. Places are never reused (segment numbers only grow,
///   see src/spool/mod.rs point 5) and the spool id tells spools apart
///   (a fleet, a wiped spool).
///
/// The two kinds never collide, whatever runs shared the stream: a run
/// id starts with a hex digit, a spool id with `s`, which is none.
#[derive(Debug)]
struct MessageIds {
    prefix: String,
    next: u64,
    /// "s<spool id>-", when reading from a spool.
    spool: Option<String>,
}

/// What a message's id is made of; [`MessageIds::text`] makes the id
/// only when it is published, so a message holds no string of its own
/// while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgId {
    /// From the queue: a per-run sequence number.
    Run(u64),
    /// From the spool: its record's place and its index in the record.
    Spooled { at: SpoolPos, index: u32 },
}

impl MessageIds {
    fn new(run_id: &str, worker: usize) -> MessageIds {
        MessageIds {
            prefix: format!("{run_id}-{worker}-"),
            next: 0,
            spool: None,
        }
    }

    /// Spooled messages get ids from their place in spool `spool_id`.
    fn use_spool(&mut self, spool_id: &str) {
        self.spool = Some(format!("s{spool_id}-"));
    }

    /// The next message from the queue.
    fn next_run(&mut self) -> MsgId {
        self.next += 1;
        MsgId::Run(self.next)
    }

    /// What the log shows as this worker's ids.
    fn prefix(&self) -> &str {
        self.spool.as_deref().unwrap_or(&self.prefix)
    }

    fn text(&self, id: MsgId) -> String {
        match id {
            MsgId::Run(seq) => format!("{}{seq}", self.prefix),
            MsgId::Spooled { at, index } => format!(
                "{}{}-{}-{index}",
                self.spool
                    .as_deref()
                    .expect("a spooled message comes from a pipeline with a spool"),
                at.segment,
                at.offset
            ),
        }
    }
}

/// One message taken from the queue or the spool and not yet
/// acknowledged.
#[derive(Debug, Clone)]
struct Message {
    /// Its `Nats-Msg-Id` is made of this ([`MessageIds::text`]), the same
    /// on every retry: the stream deduplicates on it.
    id: MsgId,
    /// "IP:PORT" or "[IPv6]:PORT"; empty when the batch had no peer.
    /// Shared by the messages of one batch.
    peer: Arc<str>,
    payload: Bytes,
    /// A RELP session's acknowledgement of the message's batch, shared
    /// by its messages: fired when the last of them is acked.
    ack: Option<Arc<BatchAck>>,
}

/// A batch's RELP acknowledgement and how many of its messages still
/// await the stream's ack.
#[derive(Debug)]
struct BatchAck {
    left: AtomicUsize,
    ack: crate::relp::ack::Ack,
}

impl BatchAck {
    /// One more message of the batch is stored in the stream.
    fn stored(&self) {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.ack.fire();
        }
    }
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
        match try_connect(settings).await {
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

/// The client, and the stream's duplicate window (as the server has it).
async fn try_connect(settings: &Settings) -> Result<(jetstream::Context, Duration), String> {
    let client = async_nats::ConnectOptions::new()
        .name("floodwall")
        .connection_timeout(settings.nats.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Other cluster members' URLs would be host names to resolve on a
        // blocking pool thread; the configured list is the list.
        .ignore_discovered_servers()
        .reconnect_delay_callback(|attempts| Backoff::after(attempts.saturating_add(1)))
        .connect(settings.nats.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(settings.nats.ack_timeout)
        // Our own window is the bound; the client's must never be the
        // one that waits.
        .max_ack_inflight(settings.nats.max_in_flight + 1)
        .build(client);
    let config = jetstream::stream::Config {
        name: settings.nats.stream.clone(),
        subjects: vec![settings.nats.subject.clone()],
        num_replicas: 1,
        ..Default::default()
    };
    match tokio::time::timeout(
        settings.nats.ack_timeout + settings.nats.connect_timeout,
        js.get_or_create_stream(config),
    )
    .await
    {
        Ok(Ok(stream)) => Ok((js, stream.cached_info().config.duplicate_window)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out waiting for the stream".to_string()),
    }
}

/// With `[spool]`: the spool, and the records taken from it whose
/// messages are not all settled yet.
struct FromSpool {
    spool: Arc<Spool>,
    /// Messages spooled and not yet delivered (their part of
    /// `queue_depth`): a settled message leaves it at once.
    spooled: Arc<AtomicUsize>,
    /// Per record taken (by its place): messages not yet settled. At 0
    /// the record is finished and stops holding the delivered position
    /// back.
    unsettled: HashMap<SpoolPos, u32>,
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
    /// Where batches come from with `[spool]` (None: the queue).
    from_spool: Option<FromSpool>,
}

impl Pipeline {
    fn new(
        settings: Settings,
        ctx: SinkContext,
        js: jetstream::Context,
        ids: MessageIds,
        health: Health,
    ) -> Pipeline {
        let from_spool = ctx.spool.clone().map(|spool| FromSpool {
            spooled: spool.spooled(),
            spool,
            unsettled: HashMap::new(),
        });
        Pipeline {
            from_spool,
            subject: Subject::from(settings.nats.subject.clone()),
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
            self.settings.nats.max_in_flight
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

    /// Moves batches from the queue (or the spool) into `fresh` while
    /// fewer than a window's worth of messages wait there. Their credits
    /// stay taken (spooled: they stay spooled): they count in
    /// `queue_depth` until acknowledged.
    fn take_from_queue(&mut self) {
        while !self.disconnected && self.fresh.len() < self.settings.nats.max_in_flight {
            if !self.receive(Duration::ZERO) {
                break;
            }
        }
    }

    /// Takes what the queue or the spool holds into `fresh`, waiting at
    /// most `wait` for something; false when nothing came. Sets
    /// `disconnected` when the source is done for good.
    fn receive(&mut self, wait: Duration) -> bool {
        if let Some(from) = &self.from_spool {
            return match from.spool.take(SPOOL_TAKE_BYTES, SPOOL_TAKE_RECORDS, wait) {
                Taken::Batches(batches) => {
                    batches.into_iter().for_each(|b| self.accept(b));
                    true
                }
                Taken::Empty => false,
                Taken::Closed => {
                    self.disconnected = true;
                    false
                }
            };
        }
        let got = if wait.is_zero() {
            self.ctx
                .queue
                .try_recv()
                .map_err(|e| e == TryRecvError::Disconnected)
        } else {
            self.ctx
                .queue
                .channel()
                .recv_timeout(wait)
                .map_err(|e| e == RecvTimeoutError::Disconnected)
        };
        match got {
            Ok(batch) => {
                self.accept(batch);
                true
            }
            Err(disconnected) => {
                self.disconnected |= disconnected;
                false
            }
        }
    }

    /// Takes a batch's messages: one copy of the batch's bytes, which each
    /// message's payload slices (a batch stores its messages back to back,
    /// each followed by LF), and one peer string for all of them. A slow
    /// message keeps its batch's copy alive until its ack: at most
    /// `max_in_flight` batches' worth, far below what the queue may hold.
    fn accept(&mut self, mut batch: Batch) {
        let ack = batch.take_ack().map(|ack| {
            Arc::new(BatchAck {
                left: batch.len().into(),
                ack,
            })
        });
        let peer: Arc<str> = batch.peer().map(peer_text).unwrap_or_default().into();
        let data = Bytes::copy_from_slice(batch.as_lines());
        let origin = batch.origin();
        if let (Some(at), Some(from)) = (origin, &mut self.from_spool) {
            match u32::try_from(batch.len()) {
                Ok(n) if n > 0 => {
                    from.unsettled.insert(at, n);
                }
                // Nothing to publish (the spool skips such records).
                _ => from.spool.finished(at),
            }
        }
        let mut start = 0;
        for (index, m) in batch.messages().enumerate() {
            let end = start + m.len();
            let id = match origin {
                Some(at) => MsgId::Spooled {
                    at,
                    index: index as u32,
                },
                None => self.ids.next_run(),
            };
            self.fresh.push_back(Message {
                id,
                peer: peer.clone(),
                payload: data.slice(start..end),
                ack: ack.clone(),
            });
            start = end + 1;
        }
        if origin.is_none() {
            self.ctx.queue.recycle(batch);
        }
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
            headers.insert(NATS_MESSAGE_ID, self.ids.text(message.id));
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

    /// Nothing in flight, nothing to publish: block on the queue (or the
    /// spool) for a short while, then let the runtime run (connection
    /// upkeep).
    async fn wait_for_queue(&mut self) {
        if self.disconnected {
            return;
        }
        self.receive(IDLE_WAIT);
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
                        debug!("nats ack was a duplicate id={}", self.ids.text(message.id));
                    }
                    delivered += 1;
                    bytes += message.payload.len() as u64;
                    if let Some(ack) = &message.ack {
                        ack.stored();
                    }
                    self.settled(message.id);
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
            self.leave_depth(delivered as usize);
        });
        self.probing = false;
        self.backoff.succeed();
        self.health.set(true);
        if let Some(since) = self.outage.take() {
            info!("nats sink recovered outage={:?}", since.elapsed());
        }
    }

    /// `n` settled messages leave `queue_depth`: their queue credits
    /// return, or (spooled) they leave the spooled count.
    fn leave_depth(&self, n: usize) {
        match &self.from_spool {
            Some(from) => {
                from.spooled.fetch_sub(n, Ordering::SeqCst);
            }
            None => self.ctx.queue.written(n),
        }
    }

    /// A spooled message is settled (acked or refused): the last one of
    /// its record finishes the record in the spool, which may then move
    /// its delivered position past it (once every older record is
    /// finished too: the spool keeps the oldest unfinished one).
    fn settled(&mut self, id: MsgId) {
        let (MsgId::Spooled { at, .. }, Some(from)) = (id, &mut self.from_spool) else {
            return;
        };
        let Some(left) = from.unsettled.get_mut(&at) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            from.unsettled.remove(&at);
            from.spool.finished(at);
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
                    self.settings.nats.stream,
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
            self.leave_depth(1);
        });
        self.settled(message.id);
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
                let (x, y) = (a.next_run(), b.next_run());
                [a.text(x), b.text(y)]
            })
            .collect();
        assert_eq!(ids.len(), 200);
        assert_ne!(run_id(), "");
    }

    /// Spooled ids begin with `s`, never a hex digit: a run id cannot
    /// begin with it, so the two kinds never collide in one stream.
    #[test]
    fn spool_ids_and_run_ids_never_collide() {
        let run = run_id();
        assert!(run.bytes().all(|b| b.is_ascii_hexdigit()), "{run}");
        let mut ids = MessageIds::new(&run, 0);
        let next = ids.next_run();
        let from_run = ids.text(next);
        ids.use_spool("0123456789abcdef");
        let at = SpoolPos {
            segment: 7,
            offset: 4096,
        };
        let spooled = ids.text(MsgId::Spooled { at, index: 3 });
        assert_eq!(spooled, "s0123456789abcdef-7-4096-3");
        assert!(from_run.starts_with(&run), "{from_run}");
        assert_ne!(spooled.as_bytes()[0], from_run.as_bytes()[0]);
    }

    /// The ids of the messages `spool` hands out next (all its records).
    fn spooled_ids(spool: &Spool) -> Vec<String> {
        let mut ids = MessageIds::new(&run_id(), 0);
        ids.use_spool(spool.id());
        let Taken::Batches(batches) = spool.take(usize::MAX, 64, Duration::from_secs(5)) else {
            panic!("nothing spooled");
        };
        batches
            .iter()
            .flat_map(|b| {
                let at = b.origin().expect("a spooled batch has its place");
                (0..b.len() as u32).map(move |index| MsgId::Spooled { at, index })
            })
            .map(|id| ids.text(id))
            .collect()
    }

    /// A spool in `dir` with its writer thread running, fed by the sender
    /// [`spooling`] returns; [`Spooling::close`] ends it.
    struct Spooling {
        settings: crate::spool::Settings,
        spool: Arc<crate::spool::Spool>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        writer: std::thread::JoinHandle<()>,
    }

    impl Spooling {
        /// Stops the writer and closes the spool; its settings reopen it.
        fn close(self) -> crate::spool::Settings {
            self.stop.store(true, Ordering::SeqCst);
            self.writer.join().unwrap();
            drop(self.spool);
            self.settings
        }
    }

    fn spooling(dir: &std::path::Path) -> (crate::queue::QueueSender, Spooling) {
        use std::sync::atomic::AtomicBool;
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

    /// Many records in flight from one worker, finished out of order (as
    /// acks come back): the durable position passes the finished ones in
    /// front and stops at the oldest unfinished one, never past it.
    #[test]
    fn the_spool_position_stops_at_the_oldest_unfinished_record() {
        use crate::spool;

        let dir = tempfile::tempdir().unwrap();
        let (tx, spooling) = spooling(dir.path());
        let spool = &spooling.spool;
        const RECORDS: usize = 40;
        for i in 0..RECORDS {
            let mut b = Batch::new();
            b.push(format!("record {i:03} padded to span segments {:x<100}", "").as_bytes());
            tx.send_timeout(b, Duration::from_secs(5)).unwrap();
        }
        drop(tx);
        let mut taken = Vec::new();
        // 5 s: appending 40 records, on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        while taken.len() < RECORDS && Instant::now() < deadline {
            if let Taken::Batches(b) = spool.take(usize::MAX, RECORDS, Duration::from_millis(50)) {
                taken.extend(b);
            }
        }
        assert_eq!(taken.len(), RECORDS);
        // Acks in a scrambled order; record 10 never acked.
        let mut order: Vec<usize> = (0..RECORDS).filter(|&i| i != 10).collect();
        order.sort_by_key(|&i| (i * 17) % RECORDS);
        for i in order {
            spool.finished(taken[i].origin().unwrap());
        }
        let settings = spooling.close();
        let stats = Arc::new(Stats::default());
        drop(spool::open(settings, stats.clone()).unwrap());
        // Replayed: record 10 and every record after it; not 0..10.
        assert_eq!(
            stats.recovered.load(Ordering::Relaxed),
            (RECORDS - 10) as u64
        );
    }

    /// A record read again (a replay after a crash: spooled, handed out,
    /// never delivered, the spool opened anew) gives its messages the
    /// same ids, which is what lets the stream drop the replayed copy.
    #[test]
    fn a_spooled_message_keeps_its_id_when_its_record_is_read_again() {
        use crate::spool;

        let dir = tempfile::tempdir().unwrap();
        let (tx, spooling) = spooling(dir.path());
        let spool = &spooling.spool;
        for (tag, n) in [("a", 2), ("b", 3)] {
            let mut b = Batch::new();
            for i in 0..n {
                b.push(format!("{tag}{i}").as_bytes());
            }
            tx.send_timeout(b, Duration::from_secs(5)).unwrap();
        }
        drop(tx);
        // The writer appends both before it closes the spool; 5 s is for
        // a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        while spool.spooled().load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "not spooled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = spooled_ids(spool);
        let settings = spooling.close();

        let stats = Arc::new(Stats::default());
        let (again, _writer) = spool::open(settings, stats.clone()).unwrap();
        assert_eq!(stats.recovered.load(Ordering::Relaxed), 5);
        let second = spooled_ids(&again);
        assert_eq!(first.len(), 5);
        assert_eq!(
            first.iter().collect::<std::collections::HashSet<_>>().len(),
            5
        );
        assert_eq!(first, second);
        assert!(first[0].starts_with(&format!("s{}-", again.id())));
    }

    #[test]
    fn peer_header_brackets_ipv6() {
        assert_eq!(peer_text("127.0.0.1:5".parse().unwrap()), "127.0.0.1:5");
        assert_eq!(peer_text("[::1]:5".parse().unwrap()), "[::1]:5");
    }
}
