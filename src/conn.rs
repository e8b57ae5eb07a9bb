//! One client connection, served by its own worker thread: read into a
//! bounded buffer, frame, enqueue each read's messages as one batch with a
//! timeout, and say why the connection ended.
//!
//! It owns nothing global: counters go to [`Stats`], backpressure comes
//! from the queue, the thread and its permit belong to the server. A
//! failure here (reset, garbage, slowloris) ends this connection only.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use log::{error, warn};

use crate::alerts::{Alerts, suppressed};
use crate::config::{Config, Framing, OnSendTimeout};
use crate::framing::{Decoder, Frame, FrameError};
use crate::queue::{Batch, QueueSender, SendError};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::stream::Stream;

/// First read buffer, allocated only once the peer has sent something, so
/// an idle connection costs no buffer at all.
const INITIAL_BUFFER: usize = 8 << 10;
/// Buffers grow (doubling) to this while reads keep filling them.
const READ_BUFFER: usize = 64 << 10;
/// Most messages in one batch (one channel send), whatever the queue size.
const BATCH_MESSAGES: usize = 4096;
/// Most bytes read and counted after a send-timeout close: about what a
/// socket's receive buffer holds, so the count covers what the peer had
/// sent when we gave up.
const UNREAD_BUDGET: usize = 8 << 20;
/// Most bytes a worker still reads at shutdown: one read's worth, what a
/// peer typically had in flight. Bounded so that a peer sending flat out
/// cannot stretch the drain (or burst past its rate limit).
const SHUTDOWN_DRAIN_BUDGET: usize = 64 << 10;
/// Bytes reserved per message of a rate-limit quota (a batch's room is
/// given back if loose, see `Batch::fit`).
const QUOTA_BYTES_GUESS: usize = 512;
/// The rate limit waits for this share of a second's tokens at least
/// (10 ms), so a paced worker wakes ~100 times a second, not per message.
const QUOTA_SLICE: f64 = 0.01;
/// Difference between the wanted and the set socket read timeout that is
/// worth a setsockopt.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The peer closed its side.
    Eof,
    /// No complete message for `idle_timeout`.
    Idle,
    /// The queue stayed full for `send_timeout` (policy "close").
    SendTimeout,
    /// A bad octet count.
    Framing,
    /// A read error (reset by peer, ...).
    Error(io::ErrorKind),
    /// The daemon is shutting down.
    Shutdown,
    /// Every sink is gone; nothing can be delivered.
    SinkGone,
}

impl Close {
    pub fn as_str(&self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::Idle => "idle",
            Close::SendTimeout => "send_timeout",
            Close::Framing => "framing",
            Close::Error(_) => "error",
            Close::Shutdown => "shutdown",
            Close::SinkGone => "sink_gone",
        }
    }
}

/// What every worker shares: settings, the queue's sending end, counters.
#[derive(Debug)]
pub struct ConnContext {
    pub framing: Framing,
    pub max_message_bytes: usize,
    pub idle_timeout: Option<Duration>,
    pub send_timeout: Duration,
    pub on_send_timeout: OnSendTimeout,
    pub rate_per_connection: u64,
    /// The workers' only handle on the queue. The last worker (and the
    /// accept loop) dropping it disconnects the channel, which is what
    /// tells the sinks to finish.
    pub queue: QueueSender,
    pub stats: std::sync::Arc<Stats>,
    pub alerts: std::sync::Arc<Alerts>,
    /// Checked before every read; a triggered shutdown also shuts the
    /// socket's read side so that a blocked read returns at once.
    pub shutdown: Shutdown,
}

impl ConnContext {
    pub fn new(
        config: &Config,
        queue: QueueSender,
        stats: std::sync::Arc<Stats>,
        alerts: std::sync::Arc<Alerts>,
        shutdown: Shutdown,
    ) -> ConnContext {
        let limits = &config.limits;
        ConnContext {
            framing: config.server.framing,
            max_message_bytes: config.server.max_message_bytes,
            idle_timeout: (!limits.idle_timeout.is_zero()).then_some(limits.idle_timeout),
            send_timeout: limits.send_timeout,
            on_send_timeout: limits.on_send_timeout,
            rate_per_connection: limits.rate_per_connection,
            queue,
            stats,
            alerts,
            shutdown,
        }
    }
}

/// Totals of one connection, for its debug close line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub messages: u64,
    pub bytes: u64,
}

/// Serves one connection until it ends; returns why, and its totals.
/// `stream` is plain TCP or a TLS session whose handshake is done.
pub fn serve(ctx: &ConnContext, stream: &mut Stream<'_>, peer: SocketAddr) -> (Close, Totals) {
    let mut conn = Connection {
        ctx,
        stream,
        peer,
        decoder: Decoder::new(ctx.framing, ctx.max_message_bytes),
        buf: Vec::new(),
        start: 0,
        end: 0,
        limit: READ_BUFFER.max(ctx.max_message_bytes + 16 + 1),
        grow: false,
        quiet: false,
        timeout: None,
        batch_limit: BATCH_MESSAGES.min((ctx.queue.capacity() / 16).max(1)),
        last_message: Instant::now(),
        bucket: (ctx.rate_per_connection > 0).then(|| Bucket::new(ctx.rate_per_connection)),
        run_ends: Vec::new(),
        shedding: false,
        totals: Totals::default(),
    };
    let close = conn.run();
    (close, conn.totals)
}

struct Connection<'a, 'b> {
    ctx: &'a ConnContext,
    stream: &'a mut Stream<'b>,
    peer: SocketAddr,
    decoder: Decoder,
    /// Read buffer; unread bytes are `buf[start..end]`. Empty until the
    /// peer first sends, then 8 KiB doubling up to `limit`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest buffer: a read's worth, and always room for one maximal
    /// frame (`Decoder::max_pending`), so the decoder can make progress.
    limit: usize,
    /// The last read filled all free space: grow before the next one.
    grow: bool,
    /// The last read used under a quarter of the free space: the peer
    /// sends little, so an emptied buffer is released.
    quiet: bool,
    /// Most messages per batch: a sixteenth of the queue at most, so a
    /// big batch does not wait long for room that small ones keep taking.
    batch_limit: usize,
    /// The read timeout currently set on the socket.
    timeout: Option<Duration>,
    /// Idle time counts from the last complete message, so a peer that
    /// trickles bytes without ever finishing a message is idle too.
    last_message: Instant,
    bucket: Option<Bucket>,
    /// Message ends of the current run of clean lines (see `decode`).
    run_ends: Vec<u32>,
    /// Policy "drop" and the last send timed out: drop without waiting
    /// until a send succeeds again.
    shedding: bool,
    totals: Totals,
}

impl Connection<'_, '_> {
    fn run(&mut self) -> Close {
        loop {
            if self.ctx.shutdown.is_triggered() {
                return self.drain_at_shutdown();
            }
            if let Some(close) = self.arm_idle_timeout() {
                return close;
            }
            match self.read() {
                Ok(0) => return self.at_eof(),
                Ok(n) => {
                    self.end += n;
                    self.totals.bytes += n as u64;
                    // With a rate limit, frame what the tokens allow, wait
                    // for more, go on from the buffer; read only when it
                    // holds nothing complete. Not reading is the
                    // backpressure: the peer's sends block in TCP.
                    loop {
                        let quota = self.quota();
                        let before = self.totals.messages;
                        let more = self.decode(quota);
                        if let Some(bucket) = &mut self.bucket {
                            bucket.spend(self.totals.messages - before);
                        }
                        match more {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(close) => return self.closing(close),
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Timed out: the next turn decides whether it is idle.
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.ctx.shutdown.is_triggered() {
                        return Close::Shutdown;
                    }
                    Stats::add(&self.ctx.stats.closed_error, 1);
                    return Close::Error(e.kind());
                }
            }
        }
    }

    /// Sets the socket read timeout to what is left of the idle window;
    /// returns `Close::Idle` when nothing is left.
    fn arm_idle_timeout(&mut self) -> Option<Close> {
        let idle = self.ctx.idle_timeout?;
        let left = idle.saturating_sub(self.last_message.elapsed());
        if left.is_zero() {
            Stats::add(&self.ctx.stats.closed_idle, 1);
            return Some(Close::Idle);
        }
        let left = left.max(Duration::from_millis(1));
        let stale = self
            .timeout
            .is_none_or(|t| t.abs_diff(left) > TIMEOUT_SLACK);
        if stale {
            // A failed setsockopt leaves the old timeout; the loop then
            // re-checks the idle window after every read anyway.
            if self.stream.set_read_timeout(Some(left)).is_ok() {
                self.timeout = Some(left);
            }
        }
        None
    }

    fn read(&mut self) -> io::Result<usize> {
        if self.start == self.end && !self.buf.is_empty() && !self.grow && self.quiet {
            // Everything read was consumed and the peer is not streaming:
            // give the buffer back, so that memory follows busy
            // connections, not connected ones.
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
        if self.buf.is_empty() {
            // Wait for the first byte before allocating: idle connections
            // then hold no buffer.
            let n = self.stream.wait_readable()?;
            if n == 0 {
                return Ok(0);
            }
            self.buf = vec![0; INITIAL_BUFFER.min(self.limit)];
        }
        self.make_room();
        let free = self.buf.len() - self.end;
        let n = self.stream.read(&mut self.buf[self.end..])?;
        self.grow = n == free;
        self.quiet = n < free / 4;
        Ok(n)
    }

    /// Moves unread bytes to the front and grows the buffer if the last
    /// read filled it or a partial frame needs more room.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let full = self.end == self.buf.len();
        if (self.grow || full) && self.buf.len() < self.limit {
            let size = (self.buf.len() * 2).min(self.limit);
            self.buf.resize(size, 0);
        }
        self.grow = false;
    }

    /// Frames everything complete in the buffer and enqueues it.
    ///
    /// Hot path. Lines that arrive clean (`msg LF`, no CR stripped, no
    /// empty line skipped) sit back to back in the read buffer exactly as
    /// the batch stores them, so a run of them is copied with one memcpy
    /// instead of one per message; `run_ends` is reused across reads.
    ///
    /// Frames at most `quota` messages (the rate limit's tokens); returns
    /// Ok(true) if it stopped at the quota with input left, Ok(false) when
    /// everything complete was framed, Err(close) when the connection
    /// must end.
    fn decode(&mut self, quota: usize) -> Result<bool, Close> {
        // Rate-limited: room for about the quota, not the whole buffer.
        let room = (self.end - self.start + 1).min(quota.saturating_mul(QUOTA_BYTES_GUESS));
        let mut batch = self.ctx.queue.batch(room);
        let mut run = self.start..self.start;
        self.run_ends.clear();
        let mut framed = 0usize;
        loop {
            if framed == quota {
                flush_run(&mut batch, &self.buf, &mut run, &mut self.run_ends);
                return match self.enqueue(batch) {
                    Some(close) => Err(close),
                    // More to frame only if unread bytes are left.
                    None => Ok(self.start < self.end),
                };
            }
            if self.start == run.end {
                let room =
                    (quota - framed).min(self.batch_limit - batch.len() - self.run_ends.len());
                let before = self.run_ends.len();
                let used = self.decoder.clean_lines(
                    &self.buf[self.start..self.end],
                    room,
                    self.start - run.start,
                    &mut self.run_ends,
                );
                if used > 0 {
                    framed += self.run_ends.len() - before;
                    self.start += used;
                    run.end = self.start;
                    self.send_if_full(&mut batch, &mut run)?;
                    continue;
                }
            }
            match self.decoder.decode(&self.buf[self.start..self.end]) {
                Ok((Frame::Message(range), used)) => {
                    framed += 1;
                    if range.start == 0 && range.end + 1 == used && self.start == run.end {
                        self.run_ends
                            .push((self.start + range.end - run.start) as u32);
                        run.end = self.start + used;
                    } else {
                        flush_run(&mut batch, &self.buf, &mut run, &mut self.run_ends);
                        batch.push(&self.buf[self.start + range.start..self.start + range.end]);
                        run = self.start + used..self.start + used;
                    }
                    self.start += used;
                    self.send_if_full(&mut batch, &mut run)?;
                }
                Ok((Frame::Oversize, used)) => {
                    flush_run(&mut batch, &self.buf, &mut run, &mut self.run_ends);
                    self.start += used;
                    run = self.start..self.start;
                    self.oversize();
                }
                Ok((Frame::NeedMore, used)) => {
                    self.start += used;
                    break;
                }
                Err(e) => {
                    // Deliver what came before the bad frame, then close.
                    flush_run(&mut batch, &self.buf, &mut run, &mut self.run_ends);
                    if let Some(close) = self.enqueue(batch) {
                        return Err(close);
                    }
                    return Err(self.framing_error(e));
                }
            }
        }
        flush_run(&mut batch, &self.buf, &mut run, &mut self.run_ends);
        match self.enqueue(batch) {
            Some(close) => Err(close),
            None => Ok(false),
        }
    }

    /// Sends `batch` (with the pending run) once it holds `batch_limit`
    /// messages, and starts a new one.
    fn send_if_full(&mut self, batch: &mut Batch, run: &mut Range<usize>) -> Result<(), Close> {
        if batch.len() + self.run_ends.len() < self.batch_limit {
            return Ok(());
        }
        flush_run(batch, &self.buf, run, &mut self.run_ends);
        let rest = self.end - self.start + 1;
        let full = std::mem::replace(batch, self.ctx.queue.batch(rest));
        match self.enqueue(full) {
            Some(close) => Err(close),
            None => Ok(()),
        }
    }

    fn at_eof(&mut self) -> Close {
        if self.ctx.shutdown.is_triggered() {
            // Our own shutdown(Read), not the peer: a partial line is not
            // a message.
            return Close::Shutdown;
        }
        match self.decoder.finish(&self.buf[self.start..self.end]) {
            Ok(Some(Frame::Message(range))) => {
                let mut batch = Batch::with_capacity(range.len() + 1, 1);
                batch.push(&self.buf[self.start + range.start..self.start + range.end]);
                if let Some(close) = self.enqueue(batch) {
                    return close;
                }
            }
            Ok(Some(_)) => self.oversize(),
            Ok(None) => {}
            Err(e) => return self.framing_error(e),
        }
        Close::Eof
    }

    fn framing_error(&mut self, e: FrameError) -> Close {
        Stats::add(&self.ctx.stats.closed_framing, 1);
        if let Some(n) = self.ctx.alerts.framing.allow() {
            warn!(
                "framing error, closing connection peer={} error=\"{e}\"{}",
                self.peer,
                suppressed(n)
            );
        }
        Close::Framing
    }

    fn oversize(&mut self) {
        self.last_message = Instant::now();
        let stats = &self.ctx.stats;
        stats.moving(|| {
            Stats::add(&stats.received, 1);
            Stats::add(&stats.dropped_oversize, 1);
        });
        if let Some(n) = self.ctx.alerts.oversize.allow() {
            warn!(
                "oversize message dropped peer={} max_message_bytes={}{}",
                self.peer,
                self.ctx.max_message_bytes,
                suppressed(n)
            );
        }
    }

    /// Sends one batch with the send timeout; on expiry its messages are
    /// counted dropped, and with policy "close" the connection ends.
    fn enqueue(&mut self, batch: Batch) -> Option<Close> {
        let n = batch.len() as u64;
        if n == 0 {
            return None;
        }
        self.last_message = Instant::now();
        self.totals.messages += n;
        let stats = &self.ctx.stats;
        // Shedding (policy "drop" after a timeout): while the queue stays
        // full, later batches are dropped at once instead of each waiting
        // send_timeout again, so a reader in "drop" mode keeps pace with
        // its peer and never lingers on data it cannot deliver.
        let timeout = if self.shedding {
            Duration::ZERO
        } else {
            self.ctx.send_timeout
        };
        match self.ctx.queue.send_timeout(batch, timeout) {
            Ok(()) => {
                Stats::add(&stats.received, n);
                self.shedding = false;
                None
            }
            Err(SendError::Timeout(_)) => {
                stats.moving(|| {
                    Stats::add(&stats.received, n);
                    Stats::add(&stats.dropped_send_timeout, n);
                });
                let close = self.ctx.on_send_timeout == OnSendTimeout::Close;
                self.shedding = !close;
                if close {
                    Stats::add(&stats.closed_send_timeout, 1);
                }
                if let Some(s) = self.ctx.alerts.send_timeout.allow() {
                    warn!(
                        "send timeout: queue full for {:?}, dropped {n} messages peer={}{}{}",
                        self.ctx.send_timeout,
                        self.peer,
                        if close { ", connection closed" } else { "" },
                        suppressed(s)
                    );
                }
                close.then_some(Close::SendTimeout)
            }
            Err(SendError::Disconnected(_)) => {
                // Only if every sink thread died; count the messages as
                // dropped so the books still balance.
                Stats::add(&stats.received, n);
                Stats::add(&stats.dropped_send_timeout, n);
                error!("no sink left to deliver to, closing peer={}", self.peer);
                Some(Close::SinkGone)
            }
        }
    }

    /// The last step before ending the connection for a reason found while
    /// decoding: a send timeout first counts what the peer already sent.
    fn closing(&mut self, close: Close) -> Close {
        if close == Close::SendTimeout {
            self.count_unread();
        }
        close
    }

    /// Before closing on a send timeout: frames what the peer already sent
    /// and the kernel holds for us, and counts it dropped, so that closing
    /// does not make those messages vanish uncounted. Bounded by
    /// `UNREAD_BUDGET` bytes and by what is readable without waiting.
    fn count_unread(&mut self) {
        if self.stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut budget = UNREAD_BUDGET;
        let mut dropped = 0u64;
        loop {
            loop {
                match self.decoder.decode(&self.buf[self.start..self.end]) {
                    Ok((Frame::Message(_), used)) => {
                        dropped += 1;
                        self.start += used;
                    }
                    Ok((Frame::Oversize, used)) => {
                        self.start += used;
                        self.oversize();
                    }
                    Ok((Frame::NeedMore, used)) => {
                        self.start += used;
                        break;
                    }
                    Err(_) => {
                        budget = 0; // no safe way on
                        break;
                    }
                }
            }
            if budget == 0 {
                break;
            }
            match self.read() {
                Ok(0) => {
                    match self.decoder.finish(&self.buf[self.start..self.end]) {
                        Ok(Some(Frame::Message(_))) => dropped += 1,
                        Ok(Some(_)) => self.oversize(),
                        Ok(None) | Err(_) => {}
                    }
                    break;
                }
                Ok(n) => {
                    self.end += n;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: nothing more is here
            }
        }
        let stats = &self.ctx.stats;
        stats.moving(|| {
            Stats::add(&stats.received, dropped);
            Stats::add(&stats.dropped_send_timeout, dropped);
        });
        self.totals.messages += dropped;
    }

    /// Per-connection rate limit: how many messages may be framed now,
    /// waiting (interruptibly) for at least one token first. Unlimited
    /// without a limit, and at shutdown (the drain takes over).
    fn quota(&mut self) -> usize {
        let Some(bucket) = &mut self.bucket else {
            return usize::MAX;
        };
        let mut waited = false;
        loop {
            let wait = bucket.wait_for(bucket.slice());
            if wait.is_zero() {
                break;
            }
            waited = true;
            if self.ctx.shutdown.wait_timeout(wait) {
                return usize::MAX;
            }
        }
        if waited {
            // The peer was not idle while we chose not to read: restart
            // its idle clock, or a long pause would close it as idle and
            // lose what it sent meanwhile.
            self.last_message = Instant::now();
        }
        bucket.available()
    }

    /// Shutdown: before closing, frames and enqueues what the peer already
    /// sent and the kernel holds (without waiting for more, at most
    /// `UNREAD_BUDGET` bytes), so that messages sent before the signal
    /// are delivered. A partial last line is dropped: the peer may not
    /// have finished it.
    fn drain_at_shutdown(&mut self) -> Close {
        if self.stream.set_nonblocking(true).is_err() {
            return Close::Shutdown;
        }
        let mut budget = SHUTDOWN_DRAIN_BUDGET;
        while budget > 0 {
            match self.read() {
                Ok(0) => break,
                Ok(n) => {
                    self.end += n;
                    self.totals.bytes += n as u64;
                    budget = budget.saturating_sub(n);
                    if let Err(close) = self.decode(usize::MAX) {
                        return self.closing(close);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: all that was sent is read
            }
        }
        Close::Shutdown
    }
}

/// Copies a run of clean lines (`buf[run]`, message ends in `ends`,
/// relative to the run) into `batch` and starts an empty run after it.
fn flush_run(batch: &mut Batch, buf: &[u8], run: &mut Range<usize>, ends: &mut Vec<u32>) {
    if !ends.is_empty() {
        batch.extend_lines(&buf[run.clone()], ends);
        ends.clear();
    }
    *run = run.end..run.end;
}

/// A token bucket of `rate` messages per second holding at most one
/// second's worth (at least one token).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
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
    fn available(&mut self) -> usize {
        self.refill();
        self.tokens.max(0.0) as usize
    }

    /// Tokens worth waiting for: 10 ms of them, at least one, at most
    /// the burst.
    fn slice(&self) -> f64 {
        (self.rate * QUOTA_SLICE)
            .max(1.0)
            .min(Bucket::burst(self.rate))
    }

    /// How long until at least `n` tokens are available.
    fn wait_for(&mut self, n: f64) -> Duration {
        self.refill();
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }

    fn spend(&mut self, messages: u64) {
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
