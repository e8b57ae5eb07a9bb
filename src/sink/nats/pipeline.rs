//! The publish loop of one nats sink worker: messages taken from the
//! queue (or the spool) into a window of at most `max_in_flight`
//! publishes awaiting their acks, completing in any order; each message
//! settled once (acked: delivered; refused as oversize: dropped and
//! counted), failures retried with the same id behind the sinks' one
//! back-off, one probe publish before the window opens again. The
//! accounting (`queue_depth`, the spool's delivered position) moves only
//! when a message settles.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName, Subject, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use log::{debug, info, warn};

use super::ids::{MessageIds, MsgId};
use super::{POLL, Settings};
use crate::alerts::suppressed;
use crate::queue::{Batch, SpoolPos};
use crate::sink::backoff::Backoff;
use crate::sink::{Health, SinkContext};
use crate::spool::{Spool, Taken};
use crate::stats::Stats;

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

/// How publishing goes: the back-off and the probe after a failure, one
/// warning per outage, and this worker's share of `floodwall_sink_up`.
struct Outage {
    backoff: Backoff,
    /// After a failure only one publish goes out until one succeeds.
    probing: bool,
    /// Since when publishes fail (one warning per outage).
    since: Option<Instant>,
    /// This worker's share of `floodwall_sink_up`.
    health: Health,
}

impl Outage {
    fn new(health: Health) -> Outage {
        Outage {
            backoff: Backoff::default(),
            probing: false,
            since: None,
            health,
        }
    }

    /// A publish failed: back off, probe before opening up again. True
    /// when this starts an outage (the one to warn about).
    fn failed(&mut self) -> bool {
        self.health.set(false);
        self.backoff.fail();
        self.probing = true;
        let starts = self.since.is_none();
        if starts {
            self.since = Some(Instant::now());
        }
        starts
    }

    /// A publish was acked: open up; how long the outage lasted, if one
    /// ended.
    fn recovered(&mut self) -> Option<Duration> {
        self.probing = false;
        self.backoff.succeed();
        self.health.set(true);
        self.since.take().map(|t| t.elapsed())
    }
}

/// The publish loop of one sink worker.
pub(super) struct Pipeline {
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
    /// Back-off, probe, warnings, `floodwall_sink_up`.
    outage: Outage,
    /// Every sender is gone: finish what is held, then end.
    disconnected: bool,
    /// Where batches come from with `[spool]` (None: the queue).
    from_spool: Option<FromSpool>,
}

impl Pipeline {
    pub(super) fn new(
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
            outage: Outage::new(health),
            disconnected: false,
        }
    }

    fn window(&self) -> usize {
        if self.outage.probing {
            1
        } else {
            self.settings.nats.max_in_flight
        }
    }

    fn held(&self) -> usize {
        self.in_flight.len() + self.retries.len() + self.fresh.len()
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.ctx.abandon.load(Ordering::SeqCst) {
                // The drain deadline passed: what is unacked stays in
                // queue_depth and is reported lost.
                return;
            }
            self.take_from_queue();
            if self.outage.backoff.remaining().is_none() {
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
    pub(super) fn accept(&mut self, mut batch: Batch) {
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
        let holding = self.outage.backoff.remaining();
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
        if let Some(lasted) = self.outage.recovered() {
            info!("nats sink recovered outage={lasted:?}");
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
        self.retries.push_back(message);
        if self.outage.failed() {
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
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sink::nats::tests::spooling;

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

    #[test]
    fn peer_header_brackets_ipv6() {
        assert_eq!(peer_text("127.0.0.1:5".parse().unwrap()), "127.0.0.1:5");
        assert_eq!(peer_text("[::1]:5".parse().unwrap()), "[::1]:5");
    }
}
