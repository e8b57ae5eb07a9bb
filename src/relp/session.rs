//! One RELP session on the `[relp]` listener, served by its own worker
//! thread (the same thread bound, permit, allow list, per-IP cap, idle and
//! handshake timeouts as a `[server]` connection: src/server.rs).
//!
//! The session reads frames ([`codec`]), answers `open` with floodwall's
//! offers, and queues each read's `syslog` messages as one batch that
//! carries an [`Ack`]. It answers `rsp 200 OK` for a message only once
//! that ack fired, i.e. once the message is durable (src/relp/ack.rs says
//! who fires it), and always in txnr order: the answers of a batch wait
//! for the batches before it, never for a full window.
//!
//! Overload: a batch that finds no room within `send_timeout` is never
//! answered. The session is closed at once, unanswered, and its messages
//! counted `relp_refused` (not received, not dropped): the client still
//! holds them and resends them after it reconnects. Why not `rsp 500`:
//! librelp's client treats a 500 as final and drops the message, so a
//! 500 would turn an overload into a loss (docs/relp.md).
//!
//! The protocol's errors (a frame that does not parse, an unknown command,
//! a txnr out of sequence, `syslog` before `open`) end the session: a
//! frame error gets `serverclose`, a bad command `rsp 500` for its txnr;
//! both count `closed_framing`.
//!
//! Shutdown: the session stops reading (what the client sent and was not
//! read is not acknowledged: the client resends it to the next instance),
//! answers what becomes durable until the drain deadline, then sends
//! `serverclose` and closes.
//!
//! Idle: the idle clock runs only while no answer is owed; a client
//! waiting for acks (a stalled sink) is not idle.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::alerts::suppressed;
use crate::conn::{Close, ConnContext, Totals};
use crate::queue::{Batch, SendError};
use crate::relp::ack::{Ack, Bell};
use crate::relp::codec::{self, Command, FrameError, Offer};
use crate::stats::Stats;
use crate::tls::Stream;

/// First read buffer; it doubles up to one maximal frame.
const INITIAL_BUFFER: usize = 16 << 10;
/// Frames decode with at least this much data allowed, so that `open`
/// (a few hundred bytes of offers) fits whatever `max_message_bytes`.
const MIN_FRAME_DATA: usize = 4096;
/// Most messages per batch (one queue send, one ack).
const BATCH_MESSAGES: usize = 1024;
/// Answers waiting to be written past this: stop reading until the
/// client takes them (it is not reading its acks).
const OUT_LIMIT: usize = 256 << 10;
/// How long a closing session tries to hand over its last frames (an
/// error answer, `serverclose`) to a client that does not read.
const FAREWELL_WRITE: Duration = Duration::from_secs(1);

/// What the session owes the client, in txnr order.
#[derive(Debug)]
enum Owed {
    /// `count` messages from `first` on: 200 OK each once `ack` fired.
    Batch { ack: Ack, first: u32, count: u32 },
    /// An answer that needs nothing durable (open, an oversize message,
    /// close). `last`: the session ends once it is written.
    Reply {
        txnr: u32,
        code: u16,
        text: &'static str,
        body: Vec<u8>,
        last: bool,
    },
}

/// Serves one RELP session until it ends; returns why, and its totals.
pub fn serve(ctx: &ConnContext, stream: &mut Stream<'_>, peer: SocketAddr) -> (Close, Totals) {
    let bell = match Bell::new() {
        Ok(bell) => bell,
        Err(e) => {
            Stats::add(&ctx.stats.closed_error, 1);
            return (Close::Error(e.kind()), Totals::default());
        }
    };
    // Answers are small writes the client waits for: Nagle would hold
    // each behind the client's delayed ACK (40 ms a window).
    let _ = stream.tcp().set_nodelay(true);
    if let Err(e) = stream.set_nonblocking(true) {
        Stats::add(&ctx.stats.closed_error, 1);
        return (Close::Error(e.kind()), Totals::default());
    }
    let max_data = ctx.max_message_bytes.max(MIN_FRAME_DATA);
    let mut session = Session {
        ctx,
        stream,
        peer,
        bell,
        buf: Vec::new(),
        start: 0,
        end: 0,
        limit: codec::HEADER_MAX + max_data + 1,
        max_data,
        out: Vec::new(),
        plain: Vec::new(),
        expect: 1,
        opened: false,
        reading: true,
        owed: VecDeque::new(),
        batch_limit: BATCH_MESSAGES.min((ctx.queue.capacity() / 16).max(1)),
        last_activity: Instant::now(),
        totals: Totals::default(),
    };
    let close = session.run();
    Stats::add(close.counter(&ctx.stats), 1);
    (close, session.totals)
}

struct Session<'a, 'b> {
    ctx: &'a ConnContext,
    stream: &'a mut Stream<'b>,
    peer: SocketAddr,
    /// Rung by whoever fires one of this session's acks.
    bell: Arc<Bell>,
    /// Read buffer; unread bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest buffer: one maximal frame.
    limit: usize,
    /// Largest DATALEN accepted.
    max_data: usize,
    /// Bytes for the wire (sealed, with TLS) not yet written.
    out: Vec<u8>,
    /// Answers being built, before sealing (reused).
    plain: Vec<u8>,
    /// The txnr the client must send next.
    expect: u32,
    opened: bool,
    /// False once the client sent `close` (or at shutdown).
    reading: bool,
    owed: VecDeque<Owed>,
    batch_limit: usize,
    /// The idle clock: the last frame read or answer written.
    last_activity: Instant,
    totals: Totals,
}

/// What one decoded frame asks for (decided while the frame borrows the
/// read buffer, acted on after).
enum Step {
    Syslog,
    Open(Vec<Offer>),
    Close,
    Oversize,
    Bad(&'static str),
}

impl Session<'_, '_> {
    fn run(&mut self) -> Close {
        loop {
            match self.answer() {
                Ok(true) => return self.farewell(None, false, Close::Eof),
                Ok(false) => {}
                Err(e) => return Close::Error(e.kind()),
            }
            if self.ctx.shutdown.is_triggered() {
                return self.at_shutdown();
            }
            let idle = match self.ctx.idle_timeout {
                Some(idle) if self.owed.is_empty() => {
                    let left = idle.saturating_sub(self.last_activity.elapsed());
                    if left.is_zero() {
                        return Close::Idle;
                    }
                    Some(left)
                }
                _ => None,
            };
            let readable = match self.wait(idle, true) {
                Ok(r) => r,
                Err(e) => return Close::Error(e.kind()),
            };
            if readable && let Err(close) = self.receive() {
                return close;
            }
        }
    }

    /// Shutdown: read no more; answer what becomes durable until the drain
    /// deadline; then `serverclose`.
    fn at_shutdown(&mut self) -> Close {
        self.reading = false;
        let deadline = self.ctx.drain_deadline();
        loop {
            match self.answer() {
                Ok(true) => return self.farewell(None, false, Close::Eof),
                Ok(false) => {}
                Err(e) => return Close::Error(e.kind()),
            }
            let waiting = self.owed.iter().any(|o| matches!(o, Owed::Batch { .. }));
            let left = deadline.saturating_duration_since(Instant::now());
            if !waiting || left.is_zero() {
                break;
            }
            if let Err(e) = self.wait(Some(left), false) {
                return Close::Error(e.kind());
            }
        }
        self.farewell(None, true, Close::Shutdown)
    }

    /// Writes the answers that are due, in order: each leading batch whose
    /// ack fired, and the replies behind them. True once the `last` reply
    /// (the answer to `close`) is out.
    fn answer(&mut self) -> io::Result<bool> {
        self.bell.answer();
        self.plain.clear();
        let mut last = false;
        while let Some(front) = self.owed.front() {
            match front {
                Owed::Batch { ack, first, count } => {
                    if !ack.is_done() {
                        break;
                    }
                    let mut txnr = *first;
                    for _ in 0..*count {
                        codec::encode_rsp(&mut self.plain, txnr, 200, "OK", b"");
                        txnr = codec::next_txnr(txnr);
                    }
                }
                Owed::Reply {
                    txnr,
                    code,
                    text,
                    body,
                    last: is_last,
                } => {
                    codec::encode_rsp(&mut self.plain, *txnr, *code, text, body);
                    last = *is_last;
                }
            }
            self.owed.pop_front();
            if last {
                break;
            }
        }
        if !self.plain.is_empty() {
            self.last_activity = Instant::now();
            self.stream.seal(&self.plain, &mut self.out)?;
        }
        self.write_out()?;
        Ok(last && self.out.is_empty())
    }

    /// Writes what `out` holds without blocking; the rest waits for the
    /// socket to take it (the poll watches for that).
    fn write_out(&mut self) -> io::Result<()> {
        let mut sock = self.stream.tcp();
        let mut done = 0;
        while done < self.out.len() {
            match sock.write(&self.out[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..done);
        Ok(())
    }

    /// Waits for input (while reading and the client takes its answers),
    /// room to write (answers pending), an ack, the shutdown (`watch`) or
    /// `timeout`; true when there is input to read.
    fn wait(&mut self, timeout: Option<Duration>, watch: bool) -> io::Result<bool> {
        self.write_out()?;
        let read = self.reading && self.out.len() < OUT_LIMIT;
        if read && self.stream.has_input() {
            return Ok(true);
        }
        let mut flags = PollFlags::empty();
        if read {
            flags |= PollFlags::IN | PollFlags::RDHUP;
        }
        if !self.out.is_empty() {
            flags |= PollFlags::OUT;
        }
        let timeout = timeout.map(|t| {
            Timespec::try_from(t.max(Duration::from_millis(1))).unwrap_or(Timespec {
                tv_sec: i32::MAX as i64,
                tv_nsec: 0,
            })
        });
        let mut fds = [
            PollFd::new(self.stream.tcp(), flags),
            PollFd::new(self.bell.watch(), PollFlags::IN),
            PollFd::new(self.ctx.wake.watch(), PollFlags::IN),
        ];
        let n = if watch { 3 } else { 2 };
        loop {
            match poll(&mut fds[..n], timeout.as_ref()) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // An error or hang-up shows as readable: the read reports it.
        let got = fds[0].revents();
        Ok(read
            && got.intersects(PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR))
    }

    /// Reads what the socket holds and acts on every complete frame.
    fn receive(&mut self) -> Result<(), Close> {
        self.make_room();
        let n = loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(Close::Eof),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Close::Error(e.kind())),
            }
        };
        self.end += n;
        self.totals.bytes += n as u64;
        self.frames()
    }

    /// Moves unread bytes to the front and grows the buffer (up to one
    /// maximal frame) when it is full.
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; INITIAL_BUFFER.min(self.limit)];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < self.limit {
            let size = (self.buf.len() * 2).min(self.limit);
            self.buf.resize(size, 0);
        }
    }

    /// Acts on every complete frame in the buffer: `syslog` messages go
    /// into one batch (queued at the end, or when full, or before any
    /// other command so that answers stay in txnr order).
    fn frames(&mut self) -> Result<(), Close> {
        let mut batch = self.ctx.queue.batch(self.end - self.start, self.peer);
        let mut first = self.expect;
        while self.reading {
            let input = &self.buf[self.start..self.end];
            let (txnr, step, used) = match codec::decode(input, self.max_data) {
                Ok(Some((frame, used))) => {
                    let step = if frame.txnr != self.expect {
                        Step::Bad("txnr out of sequence")
                    } else {
                        match frame.known() {
                            Some(Command::Syslog) if !self.opened => {
                                Step::Bad("syslog before open")
                            }
                            Some(Command::Syslog)
                                if frame.data.len() > self.ctx.max_message_bytes =>
                            {
                                Step::Oversize
                            }
                            Some(Command::Syslog) => {
                                if batch.is_empty() {
                                    first = frame.txnr;
                                }
                                batch.push(frame.data);
                                Step::Syslog
                            }
                            Some(Command::Open) if !self.opened => {
                                Step::Open(codec::parse_offers(frame.data))
                            }
                            Some(Command::Close) => Step::Close,
                            Some(Command::Open) => Step::Bad("open twice"),
                            _ => Step::Bad("unknown command"),
                        }
                    };
                    (frame.txnr, step, used)
                }
                Ok(None) => break,
                Err(e) => {
                    self.enqueue(std::mem::take(&mut batch), first)?;
                    return Err(self.frame_error(&e));
                }
            };
            self.start += used;
            self.last_activity = Instant::now();
            if !matches!(step, Step::Bad(_)) {
                self.expect = codec::next_txnr(self.expect);
            }
            match step {
                Step::Syslog => {
                    if batch.len() >= self.batch_limit {
                        let full =
                            std::mem::replace(&mut batch, self.ctx.queue.batch(0, self.peer));
                        self.enqueue(full, first)?;
                    }
                }
                Step::Open(offers) => {
                    if !codec::offers_command(&offers, Command::Syslog) {
                        return Err(
                            self.bad_command(txnr, "500 required command not supported by client")
                        );
                    }
                    self.opened = true;
                    let mut body = Vec::new();
                    body.extend_from_slice(&codec::encode_offers(&codec::floodwall_offers()));
                    self.owe_reply(txnr, 200, "OK", body, false);
                }
                Step::Oversize => {
                    // Dropped and counted as on a plain connection; the
                    // 500 tells the client (librelp drops it too).
                    self.enqueue(std::mem::take(&mut batch), first)?;
                    let stats = &self.ctx.stats;
                    stats.moving(|| {
                        Stats::add(&stats.received, 1);
                        Stats::add(&stats.dropped_oversize, 1);
                    });
                    self.totals.messages += 1;
                    self.owe_reply(txnr, 500, "message too large", Vec::new(), false);
                }
                Step::Close => {
                    self.enqueue(std::mem::take(&mut batch), first)?;
                    self.owe_reply(txnr, 200, "OK", Vec::new(), true);
                    self.reading = false;
                }
                Step::Bad(why) => {
                    self.enqueue(std::mem::take(&mut batch), first)?;
                    return Err(self.bad_command(txnr, why));
                }
            }
        }
        self.enqueue(batch, first)
    }

    fn owe_reply(&mut self, txnr: u32, code: u16, text: &'static str, body: Vec<u8>, last: bool) {
        self.owed.push_back(Owed::Reply {
            txnr,
            code,
            text,
            body,
            last,
        });
    }

    /// Queues one batch with its ack, waiting at most `send_timeout` for
    /// room. No room: nothing of it is answered, the session ends, and
    /// its messages count `relp_refused` (the client resends them).
    fn enqueue(&mut self, mut batch: Batch, first: u32) -> Result<(), Close> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        let ack = Ack::new(&self.bell);
        batch.set_ack(ack.clone());
        let bytes = (batch.byte_len() - n) as u64;
        let stats = &self.ctx.stats;
        match self.ctx.queue.send_timeout(batch, self.ctx.send_timeout) {
            Ok(()) => {
                Stats::add(&stats.bytes_received, bytes);
                Stats::add(&stats.received, n as u64);
                self.totals.messages += n as u64;
                self.owed.push_back(Owed::Batch {
                    ack,
                    first,
                    count: n as u32,
                });
                Ok(())
            }
            Err(e) => {
                Stats::add(&stats.relp_refused, n as u64);
                let close = match e {
                    SendError::Timeout(_) => Close::SendTimeout,
                    SendError::Shutdown(_) => Close::Shutdown,
                    SendError::Disconnected(_) => Close::SinkGone,
                };
                if let Some(s) = self.ctx.alerts.relp_refused.allow() {
                    warn!(
                        "relp: no room for {n} messages within {:?}, closing the session unanswered (the client resends them) peer={}{}",
                        self.ctx.send_timeout,
                        self.peer,
                        suppressed(s)
                    );
                }
                Err(close)
            }
        }
    }

    /// A frame that does not parse: `serverclose`, then close.
    fn frame_error(&mut self, e: &FrameError) -> Close {
        if let Some(n) = self.ctx.alerts.relp_protocol.allow() {
            warn!(
                "relp: bad frame, closing the session peer={} error=\"{e}\"{}",
                self.peer,
                suppressed(n)
            );
        }
        self.farewell(None, true, Close::Framing)
    }

    /// A command the session cannot take: `rsp 500` for it, then close.
    fn bad_command(&mut self, txnr: u32, why: &'static str) -> Close {
        if let Some(n) = self.ctx.alerts.relp_protocol.allow() {
            warn!(
                "relp: {why}, closing the session peer={} txnr={txnr}{}",
                self.peer,
                suppressed(n)
            );
        }
        self.farewell(Some((txnr, why)), false, Close::Framing)
    }

    /// The session's last words, written within [`FAREWELL_WRITE`]: what
    /// is already answerable, an error answer, `serverclose`.
    fn farewell(
        &mut self,
        error: Option<(u32, &'static str)>,
        serverclose: bool,
        close: Close,
    ) -> Close {
        let _ = self.answer();
        self.plain.clear();
        if let Some((txnr, why)) = error {
            codec::encode_rsp(&mut self.plain, txnr, 500, why, b"");
        }
        if serverclose {
            codec::encode(&mut self.plain, 0, Command::ServerClose, b"");
        }
        if !self.plain.is_empty() && self.stream.seal(&self.plain, &mut self.out).is_err() {
            return close;
        }
        self.reading = false;
        let deadline = Instant::now() + FAREWELL_WRITE;
        while self.write_out().is_ok() && !self.out.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait(Some(left), false).is_err() {
                debug!(
                    "relp: client did not take the last frames peer={}",
                    self.peer
                );
                break;
            }
        }
        close
    }
}
