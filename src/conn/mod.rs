//! One client connection, served by its own worker thread: read into a
//! bounded buffer, frame, enqueue each read's messages as one batch with a
//! timeout, and say why the connection ended.
//!
//! The socket is non-blocking: the worker reads until the kernel has
//! nothing more, then sleeps in [`Wake::wait`] on the socket, the idle
//! deadline and the shared shutdown wake-up. At shutdown it keeps reading
//! and framing until the client's EOF, [`SHUTDOWN_GRACE`] of quiet, or the
//! drain deadline; what is still unread when it closes is framed and
//! counted `dropped_shutdown` (SPEC.md "Shutdown").
//!
//! It owns nothing global: counters go to [`Stats`], backpressure comes
//! from the queue, the thread and its permit belong to the server. A
//! failure here (reset, garbage, slowloris) ends this connection only.
//!
//! The connection's wing, in the order a connection meets it:
//! - `worker.rs`: the thread from its start to its close (PROXY header,
//!   the named client's admission, the TLS handshake, the protocol);
//! - `proxy.rs`: the PROXY protocol header, parsed and read exactly;
//! - this file: reading, framing and enqueueing, and why it closed; its
//!   read buffer is a [`ReadBuf`] (src/read_buf.rs, shared with the TLS
//!   record layer);
//! - `framing.rs`: the pure decoder; `rate.rs`: the token bucket of
//!   `rate_per_connection`.

pub mod framing;
pub mod proxy;
pub mod rate;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use log::warn;

use crate::alerts::{Alerts, suppressed};
use crate::config::{Config, Framing, OnSendTimeout};
use crate::queue::{Batch, QueueSender, SendError};
use crate::read_buf::ReadBuf;
use crate::shutdown::Shutdown;
use crate::stats::{Dropped, Stats};
use crate::tls::Stream;
use crate::tls::record::Ending;
use crate::wake::{Ready, Wake};
use framing::{Decoder, Frame, FrameError};
use rate::Bucket;

/// First read buffer, allocated only once the peer has sent something, so
/// an idle connection costs no buffer at all.
const INITIAL_BUFFER: usize = 8 << 10;
/// Buffers grow (doubling) to this while reads keep filling them. Public
/// for the tests, which derive the largest batch from it.
pub const READ_BUFFER: usize = 64 << 10;
/// Most messages in one batch (one channel send), whatever the queue size.
const BATCH_MESSAGES: usize = 4096;
/// The shortest run of lines a batch takes by adopting the read buffer
/// (shorter ones are copied: cheaper than a buffer's worth of zeroing).
const ADOPT_MIN: usize = 16 << 10;
/// Most bytes read and counted when closing with data still unread (send
/// timeout, shutdown deadline): about what a socket's receive buffer
/// holds, so the count covers what the peer had sent when we gave up,
/// while a peer still sending flat out cannot keep the worker reading.
const UNREAD_BUDGET: usize = 8 << 20;
/// How long a connection may stay quiet during the shutdown drain before
/// it is closed (SPEC.md allows at most 200 ms). A client that finished
/// and closed is read to its EOF without ever being quiet this long; an
/// idle one is closed after this, not after `idle_timeout`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// Bytes reserved per message of a rate-limit quota (a batch's room is
/// given back if loose, see `Batch::fit`).
const QUOTA_BYTES_GUESS: usize = 512;

/// How long a PROXY header may take without TLS (SPEC.md "Access control
/// and TLS").
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A missing, malformed or late PROXY protocol header.
    Proxy,
    /// A TLS session ended without close_notify inside a frame or a
    /// record: the stream may have been cut.
    TlsTruncated,
}

impl Close {
    /// The stats counter of connections closed for this reason.
    pub(crate) fn counter(self, stats: &Stats) -> &AtomicU64 {
        match self {
            Close::Eof => &stats.closed_eof,
            Close::Idle => &stats.closed_idle,
            Close::SendTimeout => &stats.closed_send_timeout,
            Close::Framing => &stats.closed_framing,
            Close::Error(_) | Close::SinkGone => &stats.closed_error,
            Close::Shutdown => &stats.closed_shutdown,
            Close::Proxy => &stats.closed_proxy,
            Close::TlsTruncated => &stats.closed_tls_truncated,
        }
    }
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
            Close::Proxy => "proxy",
            Close::TlsTruncated => "tls_truncated",
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
    /// With `server.proxy_protocol`: how long a worker waits for the
    /// PROXY header (5 s; the TLS handshake_timeout when TLS is on).
    pub proxy_header_timeout: Option<Duration>,
    /// The workers' only handle on the queue. The last worker (and the
    /// accept loop) dropping it disconnects the channel, which is what
    /// tells the sinks to finish.
    pub queue: QueueSender,
    pub stats: std::sync::Arc<Stats>,
    pub alerts: std::sync::Arc<Alerts>,
    /// Checked before every wait; once triggered the worker drains.
    pub shutdown: Shutdown,
    /// `shutdown.timeout`: the drain deadline counts from the trigger.
    pub shutdown_timeout: Duration,
    /// Fired at shutdown: wakes every worker sleeping on its socket.
    pub wake: Arc<Wake>,
}

impl ConnContext {
    /// When the shutdown drain ends (now, if the deadline cannot be
    /// known): what every connection's last reads and answers wait for.
    pub fn drain_deadline(&self) -> Instant {
        self.shutdown
            .deadline(self.shutdown_timeout)
            .unwrap_or_else(Instant::now)
    }

    pub fn new(
        config: &Config,
        queue: QueueSender,
        stats: std::sync::Arc<Stats>,
        alerts: std::sync::Arc<Alerts>,
        shutdown: Shutdown,
        wake: Arc<Wake>,
    ) -> ConnContext {
        let limits = &config.limits;
        ConnContext {
            framing: config.server.framing,
            max_message_bytes: config.server.max_message_bytes,
            idle_timeout: (!limits.idle_timeout.is_zero()).then_some(limits.idle_timeout),
            send_timeout: limits.send_timeout,
            on_send_timeout: limits.on_send_timeout,
            rate_per_connection: limits.rate_per_connection,
            // TLS starts after the header and shares its deadline:
            // handshake_timeout instead of 5 s then.
            proxy_header_timeout: config.server.proxy_protocol.then(|| {
                config
                    .server
                    .tls
                    .as_ref()
                    .map_or(PROXY_HEADER_TIMEOUT, |t| t.handshake_timeout)
            }),
            queue,
            stats,
            alerts,
            shutdown,
            shutdown_timeout: config.shutdown.timeout,
            wake,
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
    if let Err(e) = stream.set_nonblocking(true) {
        Stats::add(&ctx.stats.closed_error, 1);
        return (Close::Error(e.kind()), Totals::default());
    }
    let mut conn = Connection {
        ctx,
        stream,
        peer,
        decoder: Decoder::new(ctx.framing, ctx.max_message_bytes),
        // A read's worth, and always room for one maximal frame
        // (`Decoder::max_pending`), so the decoder can make progress.
        buf: ReadBuf::new(
            INITIAL_BUFFER,
            READ_BUFFER.max(ctx.max_message_bytes + 16 + 1),
        ),
        batch_limit: BATCH_MESSAGES.min((ctx.queue.capacity() / 16).max(1)),
        last_message: Instant::now(),
        bucket: (ctx.rate_per_connection > 0).then(|| Bucket::new(ctx.rate_per_connection)),
        run_ends: Vec::new(),
        shedding: false,
        timed_out: 0,
        totals: Totals::default(),
    };
    let close = conn.run();
    Stats::add(close.counter(&ctx.stats), 1);
    (close, conn.totals)
}

/// What waiting for input produced.
enum Input {
    /// Bytes read into the buffer.
    Data(usize),
    /// The client closed its side.
    Eof,
    /// The shutdown wake-up fired.
    Woken,
    /// The wait's timeout passed with nothing to read.
    TimedOut,
}

/// Which counter takes messages still unread when a connection closes.
#[derive(Debug, Clone, Copy)]
enum Unread {
    SendTimeout,
    Shutdown,
}

/// What one framing step of [`Connection::decode`] did.
enum Step {
    /// Framed this many messages (0: an oversize one was skipped).
    Framed(usize),
    /// Nothing complete is left in the buffer.
    NeedMore,
    /// A frame that cannot be framed: the connection ends.
    Bad(FrameError),
}

/// The batch one [`Connection::decode`] fills, and the run of clean
/// lines still in the read buffer that goes into it with one copy.
struct Building {
    batch: Batch,
    /// Buffer positions of the run; its message ends are in `run_ends`.
    run: Range<usize>,
}

/// Messages and bytes counted while closing (see `count_unread`).
#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, message: Range<usize>) {
        self.messages += 1;
        self.bytes += message.len() as u64;
    }
}

struct Connection<'a, 'b> {
    ctx: &'a ConnContext,
    stream: &'a mut Stream<'b>,
    peer: SocketAddr,
    decoder: Decoder,
    /// Unread input. Empty until the peer first sends, then 8 KiB
    /// doubling up to a read's worth; given back when the peer goes quiet.
    buf: ReadBuf,
    /// Most messages per batch: a sixteenth of the queue at most, so a
    /// big batch does not wait long for room that small ones keep taking.
    batch_limit: usize,
    /// Idle time counts from the last complete message, so a peer that
    /// trickles bytes without ever finishing a message is idle too.
    last_message: Instant,
    bucket: Option<Bucket>,
    /// Message ends of the current run of clean lines (see `decode`).
    run_ends: Vec<u32>,
    /// Policy "drop" and the last send timed out: drop without waiting
    /// until a send succeeds again.
    shedding: bool,
    /// Messages of the batch whose send timed out under policy "close":
    /// the warning adds what is unread at the close.
    timed_out: u64,
    totals: Totals,
}

impl Connection<'_, '_> {
    fn run(&mut self) -> Close {
        loop {
            if self.ctx.shutdown.is_triggered() {
                return self.drain_at_shutdown();
            }
            let idle_left = self
                .ctx
                .idle_timeout
                .map(|idle| idle.saturating_sub(self.last_message.elapsed()));
            if idle_left.is_some_and(|left| left.is_zero()) {
                return Close::Idle;
            }
            match self.fill(idle_left, true) {
                Ok(Input::Data(n)) => {
                    if let Err(close) = self.take(n) {
                        return close;
                    }
                }
                Ok(Input::Eof) => return self.at_eof(),
                // The next turn looks at the shutdown and the idle clock.
                Ok(Input::Woken | Input::TimedOut) => {}
                Err(e) => return Close::Error(e.kind()),
            }
        }
    }

    /// Shutdown: go on reading and framing until the client's EOF,
    /// [`SHUTDOWN_GRACE`] without input, or the drain deadline; then count
    /// what is still unread as `dropped_shutdown`. A client that wrote and
    /// closed before the signal thus loses nothing, whatever its volume,
    /// while the deadline allows.
    fn drain_at_shutdown(&mut self) -> Close {
        let deadline = self.ctx.drain_deadline();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.count_unread(Unread::Shutdown);
                return Close::Shutdown;
            }
            let wait = SHUTDOWN_GRACE.min(left);
            match self.fill(Some(wait), false) {
                Ok(Input::Data(n)) => {
                    if let Err(close) = self.take(n) {
                        return close;
                    }
                }
                Ok(Input::Eof) => return self.at_eof(),
                Ok(Input::TimedOut) if wait == SHUTDOWN_GRACE => {
                    // Quiet: nothing unread but a frame the client never
                    // finished, which is counted, not delivered.
                    self.count_unread(Unread::Shutdown);
                    return Close::Shutdown;
                }
                // The deadline: the next turn counts what is unread.
                Ok(Input::TimedOut | Input::Woken) => {}
                Err(e) => return Close::Error(e.kind()),
            }
        }
    }

    /// Frames the `n` bytes just read, at the rate limit's pace: frame
    /// what the tokens allow, wait for more, go on from the buffer; read
    /// again only when it holds nothing complete. Not reading is the
    /// backpressure: the peer's sends block in TCP.
    fn take(&mut self, n: usize) -> Result<(), Close> {
        self.totals.bytes += n as u64;
        loop {
            let quota = self.quota();
            let before = self.totals.messages;
            let more = self.decode(quota);
            if let Some(bucket) = &mut self.bucket {
                bucket.spend(self.totals.messages - before);
            }
            match more {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(close) => return Err(self.closing(close)),
            }
        }
    }

    /// Reads what the socket holds; when it holds nothing, waits for
    /// input, for the shutdown wake-up (if `watch`) or for `timeout`.
    fn fill(&mut self, timeout: Option<Duration>, watch: bool) -> io::Result<Input> {
        loop {
            // Everything read was consumed and the peer is not streaming:
            // memory follows busy connections, not connected ones (an
            // idle connection then waits with no buffer).
            if self.buf.release_if_quiet() {
                self.stream.release();
            }
            if self.buf.should_read() {
                match self.read() {
                    Ok(0) => return Ok(Input::Eof),
                    Ok(n) => return Ok(Input::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            match self.stream.wait(&self.ctx.wake, timeout, watch)? {
                Ready::Socket => self.buf.mark_readable(),
                Ready::Woken => return Ok(Input::Woken),
                Ready::TimedOut => return Ok(Input::TimedOut),
            }
        }
    }

    /// One non-blocking read into the buffer (allocated on first use).
    fn read(&mut self) -> io::Result<usize> {
        self.buf.make_room(0);
        let stream = &mut *self.stream;
        self.buf.read_from(|free| stream.read(free))
    }

    /// Frames the next unread bytes and consumes them: a message as its
    /// buffer positions, an oversize one counted and skipped, or NeedMore
    /// (a partial frame stays unread). The one place a frame is taken.
    #[inline]
    fn frame(&mut self) -> Result<Frame, FrameError> {
        let at = self.buf.start();
        let (frame, used) = self.decoder.decode(self.buf.unread())?;
        self.buf.consume(used);
        Ok(match frame {
            Frame::Message(m) => Frame::Message(at + m.start..at + m.end),
            Frame::Oversize => {
                self.oversize();
                Frame::Oversize
            }
            Frame::NeedMore => Frame::NeedMore,
        })
    }

    /// At the end of input: the final unterminated frame (a message, SPEC
    /// "Framing") as its buffer positions; an oversize one is counted
    /// here. Consumes what is unread.
    fn last_frame(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        let at = self.buf.start();
        let frame = self.decoder.finish(self.buf.unread())?;
        self.buf.consume_all();
        match frame {
            Some(Frame::Message(m)) => Ok(Some(at + m.start..at + m.end)),
            Some(_) => {
                self.oversize();
                Ok(None)
            }
            None => Ok(None),
        }
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
        let room = (self.buf.unread().len() + 1).min(quota.saturating_mul(QUOTA_BYTES_GUESS));
        let start = self.buf.start();
        let mut out = Building {
            batch: self.ctx.queue.batch(room, self.peer),
            run: start..start,
        };
        self.run_ends.clear();
        let mut framed = 0usize;
        while framed < quota {
            match self.frame_some(&mut out, quota - framed)? {
                Step::Framed(n) => framed += n,
                Step::NeedMore => {
                    self.send(out)?;
                    return Ok(false);
                }
                Step::Bad(e) => {
                    // Deliver what came before the bad frame, then close.
                    self.send(out)?;
                    return Err(self.framing_error(e));
                }
            }
        }
        self.send(out)?;
        // More to frame only if unread bytes are left.
        Ok(!self.buf.is_drained())
    }

    /// Frames what comes next into `out`, at most `quota` messages: a run
    /// of clean lines at once where one continues the pending run, else
    /// one frame. Sends `out` whenever it holds `batch_limit` messages.
    #[inline]
    fn frame_some(&mut self, out: &mut Building, quota: usize) -> Result<Step, Close> {
        if self.buf.start() == out.run.end {
            let n = self.clean_lines(out, quota);
            if n > 0 {
                self.send_if_full(out)?;
                return Ok(Step::Framed(n));
            }
        }
        match self.frame() {
            Ok(Frame::Message(m)) => {
                if m.start == out.run.end && m.end + 1 == self.buf.start() {
                    // A clean line after the run: it joins the run.
                    self.run_ends.push((m.end - out.run.start) as u32);
                    out.run.end = self.buf.start();
                } else {
                    // The run goes first; the bytes from this message on
                    // stay with the connection if the batch adopts the
                    // buffer (shifted down by `moved`).
                    let moved = self.flush_run(out, m.start);
                    out.batch
                        .push(self.buf.bytes(m.start - moved..m.end - moved));
                    let start = self.buf.start();
                    out.run = start..start;
                }
                self.send_if_full(out)?;
                Ok(Step::Framed(1))
            }
            Ok(Frame::Oversize) => {
                self.flush_run(out, self.buf.start());
                let start = self.buf.start();
                out.run = start..start;
                Ok(Step::Framed(0))
            }
            Ok(Frame::NeedMore) => Ok(Step::NeedMore),
            Err(e) => Ok(Step::Bad(e)),
        }
    }

    /// The fast path: the clean lines at the front of the unread bytes
    /// (at most `quota`, and what fits the batch) join the run; how many.
    #[inline]
    fn clean_lines(&mut self, out: &mut Building, quota: usize) -> usize {
        let room = quota.min(self.batch_limit - out.batch.len() - self.run_ends.len());
        let before = self.run_ends.len();
        let used = self.decoder.clean_lines(
            self.buf.unread(),
            room,
            self.buf.start() - out.run.start,
            &mut self.run_ends,
        );
        self.buf.consume(used);
        out.run.end = self.buf.start();
        self.run_ends.len() - before
    }

    /// Moves the run of clean lines (`buf[run]`, message ends in
    /// `run_ends`, relative to the run) into the batch and starts an empty
    /// run after it. A run that is the whole batch and fills at least half
    /// the read buffer is not copied: the batch adopts the buffer and the
    /// connection reads on into the batch's own allocation, taking the
    /// bytes from `keep` on along (at most a partial frame, or a message
    /// not yet added); returns how far they moved down (0 when copied).
    /// That copy was a fifth of the CPU of a connection streaming into the
    /// null sink.
    fn flush_run(&mut self, out: &mut Building, keep: usize) -> usize {
        let run = out.run.clone();
        if self.run_ends.is_empty() {
            out.run = run.end..run.end;
            return 0;
        }
        let mut moved = 0;
        if out.batch.is_empty() && run.len() >= ADOPT_MIN && 2 * run.len() >= self.buf.size() {
            let fresh = out.batch.take_allocation();
            let full = self.buf.exchange(fresh, keep);
            out.batch.adopt_lines(full, run, &self.run_ends);
            let start = self.buf.start();
            out.run = start..start;
            moved = keep;
        } else {
            out.batch
                .extend_lines(self.buf.bytes(run.clone()), &self.run_ends);
            out.run = run.end..run.end;
        }
        self.run_ends.clear();
        moved
    }

    /// Sends the batch (with the pending run) once it holds `batch_limit`
    /// messages, and starts a new one.
    fn send_if_full(&mut self, out: &mut Building) -> Result<(), Close> {
        if out.batch.len() + self.run_ends.len() < self.batch_limit {
            return Ok(());
        }
        self.flush_run(out, self.buf.start());
        let rest = self.buf.unread().len() + 1;
        let full = std::mem::replace(&mut out.batch, self.ctx.queue.batch(rest, self.peer));
        self.enqueue(full)
    }

    /// Sends what `out` holds, its run included.
    fn send(&mut self, mut out: Building) -> Result<(), Close> {
        self.flush_run(&mut out, self.buf.start());
        self.enqueue(out.batch)
    }

    /// The client closed its side: a final unterminated line is a
    /// message (SPEC.md "Framing"), at shutdown too. Not over TLS without
    /// close_notify: see [`Connection::truncated`].
    fn at_eof(&mut self) -> Close {
        match self.stream.tls_ending() {
            Some(Ending::NoCloseNotify) => return self.truncated(false),
            Some(Ending::RecordCut) => return self.truncated(true),
            None | Some(Ending::CloseNotify | Ending::Open) => {}
        }
        match self.last_frame() {
            Ok(Some(m)) => {
                let mut batch = self.ctx.queue.batch(m.len() + 1, self.peer);
                batch.push(self.buf.bytes(m));
                if let Err(close) = self.enqueue(batch) {
                    if close == Close::SendTimeout {
                        // Nothing is unread after EOF.
                        self.warn_send_timeout(self.timed_out, true);
                    }
                    return close;
                }
            }
            Ok(None) => {}
            Err(e) => return self.framing_error(e),
        }
        Close::Eof
    }

    /// A TLS session ended without close_notify (SPEC.md "Access control
    /// and TLS"): whoever closed the TCP stream may have cut it, so a
    /// frame left unfinished is dropped and counted `dropped_truncated`,
    /// never delivered (a 16 KiB record of a 20 KB line would otherwise
    /// pass for a whole message). Complete frames before it were
    /// delivered already: most syslog clients never send close_notify.
    /// Ending on a frame boundary with no record cut is an ordinary EOF.
    fn truncated(&mut self, record_cut: bool) -> Close {
        let rest = self.buf.unread();
        let mid_frame = self.decoder.mid_frame(rest);
        if !mid_frame && !record_cut {
            return Close::Eof;
        }
        // An unfinished frame was never framed, so it is not `received`
        // (SPEC: a message is received once framed) and stays outside
        // the accounting identity, like relp_refused: counted on its own.
        let unfinished = matches!(self.decoder.finish(rest), Ok(Some(_)) | Err(_));
        if unfinished {
            Stats::add(&self.ctx.stats.dropped_truncated, 1);
        }
        self.buf.consume_all();
        Close::TlsTruncated
    }

    fn framing_error(&mut self, e: FrameError) -> Close {
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
        self.ctx.stats.dropped(1, Dropped::Oversize);
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
    fn enqueue(&mut self, batch: Batch) -> Result<(), Close> {
        let n = batch.len() as u64;
        if n == 0 {
            return Ok(());
        }
        self.last_message = Instant::now();
        self.totals.messages += n;
        let stats = &self.ctx.stats;
        // Counted received below whatever the send's outcome: message
        // bytes, without the LF the batch stores after each.
        Stats::add(
            &stats.bytes_received,
            (batch.byte_len() - batch.len()) as u64,
        );
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
                Ok(())
            }
            Err(e) => self.not_sent(e, n),
        }
    }

    /// The queue did not take a batch of `n` messages: they are counted
    /// dropped, and the connection goes on only under policy "drop".
    #[cold]
    fn not_sent(&mut self, e: SendError, n: u64) -> Result<(), Close> {
        let stats = &self.ctx.stats;
        match e {
            SendError::Timeout(_) => {
                stats.dropped(n, Dropped::SendTimeout);
                let close = self.ctx.on_send_timeout == OnSendTimeout::Close;
                self.shedding = !close;
                if !close {
                    self.warn_send_timeout(n, false);
                    return Ok(());
                }
                // Warned as the connection closes, with what is still
                // unread then counted in (see `closing`).
                self.timed_out = n;
                Err(Close::SendTimeout)
            }
            SendError::Shutdown(_) => {
                // The drain deadline passed while this batch waited.
                stats.dropped(n, Dropped::Shutdown);
                Err(Close::Shutdown)
            }
            SendError::Disconnected(_) => {
                // Only if every sink thread died, which (a panic) starts
                // the shutdown: the messages are lost to it, and counted.
                stats.dropped(n, Dropped::Shutdown);
                if let Some(s) = self.ctx.alerts.sink_gone.allow() {
                    warn!(
                        "no sink left to deliver to, closing peer={}{}",
                        self.peer,
                        suppressed(s)
                    );
                }
                Err(Close::SinkGone)
            }
        }
    }

    /// The last step before ending the connection for a reason found while
    /// decoding: a send timeout or the shutdown deadline first counts what
    /// the peer already sent.
    fn closing(&mut self, close: Close) -> Close {
        match close {
            Close::SendTimeout => {
                let unread = self.count_unread(Unread::SendTimeout);
                self.warn_send_timeout(self.timed_out + unread, true);
            }
            Close::Shutdown => {
                self.count_unread(Unread::Shutdown);
            }
            _ => {}
        }
        close
    }

    /// The send-timeout warning, naming every message the timeout cost
    /// this connection: the batch that waited and, when it closes, what
    /// it had sent that was still unread (all counted
    /// `dropped_send_timeout`).
    fn warn_send_timeout(&self, dropped: u64, closed: bool) {
        if let Some(s) = self.ctx.alerts.send_timeout.allow() {
            warn!(
                "send timeout: queue full for {:?}, dropped {dropped} messages peer={}{}{}",
                self.ctx.send_timeout,
                self.peer,
                if closed { ", connection closed" } else { "" },
                suppressed(s)
            );
        }
    }

    /// Before closing with input left: frames what the peer already sent
    /// and the kernel holds for us (a frame it never finished included),
    /// and counts it dropped, so that closing does not make those messages
    /// vanish uncounted. Bounded by `UNREAD_BUDGET` bytes and by what is
    /// readable without waiting (the socket is non-blocking).
    fn count_unread(&mut self, why: Unread) -> u64 {
        let mut tally = Tally::default();
        let mut budget = UNREAD_BUDGET;
        while self.tally_complete(&mut tally) && budget > 0 {
            match self.read() {
                Ok(0) => {
                    if let Ok(Some(m)) = self.last_frame() {
                        tally.add(m);
                    }
                    break;
                }
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // WouldBlock: nothing more is here. At shutdown the
                    // connection is closed now, so a frame the client
                    // began is one more message it will never finish.
                    if matches!(why, Unread::Shutdown) && !matches!(self.last_frame(), Ok(None)) {
                        tally.messages += 1;
                    }
                    break;
                }
            }
        }
        self.ctx.stats.dropped(
            tally.messages,
            match why {
                Unread::SendTimeout => Dropped::SendTimeout,
                Unread::Shutdown => Dropped::Shutdown,
            },
        );
        Stats::add(&self.ctx.stats.bytes_received, tally.bytes);
        self.totals.messages += tally.messages;
        tally.messages
    }

    /// Tallies every complete frame in the buffer; false after a framing
    /// error (no safe way on).
    fn tally_complete(&mut self, tally: &mut Tally) -> bool {
        loop {
            match self.frame() {
                Ok(Frame::Message(m)) => tally.add(m),
                Ok(Frame::Oversize) => {}
                Ok(Frame::NeedMore) => return true,
                Err(_) => return false,
            }
        }
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
}
