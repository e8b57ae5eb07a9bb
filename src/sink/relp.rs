//! The relp sink: delivers messages to a RELP server (rsyslog imrelp)
//! and counts a message delivered only when the server acknowledged it
//! (`rsp 200`). Plaintext or TLS (`[sink.tls]`), connected through
//! [`super::downstream`] like the tcp sink.
//!
//! A session: connect, `open` with floodwall's offers (the server must
//! offer the `syslog` command), then `syslog` frames with transaction
//! numbers from 2 on (1 was the open; after 999,999,999 they wrap to 1),
//! at most `window` of them unacknowledged at once: the window refills
//! as acks come in, so the pipe stays full without waiting for a round
//! trip per message. At shutdown (the sink is dropped) an idle session
//! ends with `close` and its answer.
//!
//! [`Sink::write`] returns once every message of its batches is
//! acknowledged: only then does the runner count them delivered (or the
//! spool move its delivered position past them). When a write fails the
//! runner calls again with the same batches after its back-off (100 ms
//! doubling to 5 s), and the sink resumes where it stood:
//! - Acknowledged messages are never sent again.
//! - The session broke (reset, EOF, a protocol error, `serverclose`, a
//!   refused message, a write that timed out): the messages it had not
//!   acknowledged are sent again, first and in order, on a new session.
//!   The server may have stored some of them already (it acked them but
//!   the ack was lost, or it stored and died before acking): these are
//!   the duplicates RELP allows, and each resend counts in `relp_resent`
//!   (`floodwall_relp_resent_total`), so duplicates downstream are at
//!   most that count.
//! - No ack within `write_timeout` while the session is up (the server
//!   is alive but slow, e.g. its own queue is full): the session is kept
//!   and the retry waits for the acks again, sending nothing twice.
//!
//! A `serverclose` (the server shuts down) is not an error: the session
//! ends and the next write or idle tick opens a new one at once.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::{debug, info};

use super::Sink;
use super::downstream::{Conn, Downstream};
use super::tcp::PROBE_RETRY;
use crate::config::DownstreamSettings;
use crate::queue::Batch;
use crate::relp::codec::{self, Command, Rsp};

/// The txnr of `open`; messages start after it.
const OPEN_TXNR: u32 = 1;
/// Largest frame data taken from the server: answers are a code, a short
/// text and (for `open`) a few offers.
const RSP_DATA_MAX: usize = 64 << 10;
/// Bytes read from the socket per call.
const READ_CHUNK: usize = 16 << 10;
/// Frames sent at most before the answers are read again: with a large
/// window, writing it all first could fill both directions' socket
/// buffers (the server blocked writing answers nobody reads, so it stops
/// reading) until `write_timeout` broke the session.
const SEND_CHUNK: usize = 256 << 10;
/// How long the `close` at shutdown waits for its answer, at most.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why a step of a write stopped short.
enum Failure {
    /// The session is gone: its unacknowledged messages are resent.
    Lost(io::Error),
    /// The server ended the session (`serverclose`): as `Lost`, but no
    /// error: a new session opens at once.
    ServerClose,
    /// No ack in time; the session stays.
    Slow(io::Error),
}

/// One open RELP session.
#[derive(Debug)]
struct Session {
    conn: Conn,
    /// The txnr of the next frame sent.
    txnr: u32,
    /// Bytes read and not yet decoded (a frame cut by a read).
    input: Vec<u8>,
    /// Frames sent and not yet answered, in send order: (txnr, index of
    /// the message in the current write).
    unacked: VecDeque<(u32, usize)>,
}

/// How far the current write got; kept across a failed write (the
/// runner calls again with the same batches), reset by a successful one.
#[derive(Debug, Default)]
struct Progress {
    /// The next message of the write never sent yet.
    next: usize,
    /// Messages sent on a session that was lost before acking them: sent
    /// again, in order, before `next`.
    resend: VecDeque<usize>,
    /// Messages acknowledged.
    acked: usize,
}

#[derive(Debug)]
pub struct RelpSink {
    downstream: Downstream,
    /// Unacknowledged messages at most (`sink.window`).
    window: usize,
    session: Option<Session>,
    progress: Progress,
    /// Messages sent again on a new session since [`Sink::take_resent`].
    resent: u64,
    /// Frames are encoded here, one write per window fill; reused.
    out: Vec<u8>,
    /// Earliest next idle connect attempt (after a failed one).
    next_probe: Instant,
}

impl RelpSink {
    /// Resolves the address and loads `[sink.tls]`; connects later (a
    /// downstream that is down at start-up is retried, not fatal).
    pub fn new(downstream: &DownstreamSettings, window: usize) -> io::Result<RelpSink> {
        Ok(RelpSink {
            downstream: Downstream::new(downstream, "relp sink")?,
            window,
            session: None,
            progress: Progress::default(),
            resent: 0,
            out: Vec::new(),
            next_probe: Instant::now(),
        })
    }

    /// Connects and opens a session: `open` with floodwall's offers,
    /// answered with `rsp 200` offering `syslog`, within
    /// `connect_timeout`.
    fn open(&mut self) -> io::Result<Session> {
        let conn = self.downstream.connect()?;
        conn.socket()
            .set_read_timeout(Some(self.downstream.connect_timeout))?;
        let mut session = Session {
            conn,
            txnr: codec::next_txnr(OPEN_TXNR),
            input: Vec::new(),
            unacked: VecDeque::new(),
        };
        self.out.clear();
        let offers = codec::encode_offers(&codec::floodwall_offers());
        codec::encode(&mut self.out, OPEN_TXNR, Command::Open, &offers);
        session.send(&self.out)?;
        let deadline = Instant::now() + self.downstream.connect_timeout;
        loop {
            if let Some(answer) = next_frame(&mut session.input, |frame| {
                if frame.txnr != OPEN_TXNR || frame.known() != Some(Command::Rsp) {
                    return Err(protocol(format!(
                        "expected the answer to open, got {:?} txnr {}",
                        String::from_utf8_lossy(frame.command),
                        frame.txnr
                    )));
                }
                let rsp = Rsp::parse(frame.data).ok_or_else(|| protocol("malformed rsp data"))?;
                if !rsp.is_ok() {
                    return Err(refused("open", &rsp));
                }
                let offers = codec::parse_offers(rsp.body);
                if !codec::offers_command(&offers, Command::Syslog) {
                    return Err(protocol("the server does not offer the syslog command"));
                }
                Ok(())
            })? {
                answer?;
                break;
            }
            let late = || {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer to open within connect_timeout",
                )
            };
            if Instant::now() >= deadline {
                return Err(late());
            }
            match session.fill() {
                Ok(()) => {}
                Err(e) if is_timeout(&e) => return Err(late()),
                Err(e) => return Err(e),
            }
        }
        session
            .conn
            .socket()
            .set_read_timeout(Some(self.downstream.write_timeout))?;
        Ok(session)
    }

    /// Ends the session: its unacknowledged messages go back to be sent
    /// again, in order, on the next one.
    fn lose_session(&mut self) {
        if let Some(session) = self.session.take() {
            let resend = &mut self.progress.resend;
            resend.extend(session.unacked.into_iter().map(|(_, index)| index));
            resend.make_contiguous().sort_unstable();
        }
    }

    /// Sends what the window has room for (resends first), then waits
    /// for at least one answer and books what came.
    fn step(&mut self, messages: &[&[u8]]) -> Result<(), Failure> {
        let session = self
            .session
            .as_mut()
            .expect("step runs with an open session");
        self.out.clear();
        while session.unacked.len() < self.window && self.out.len() < SEND_CHUNK {
            let index = if let Some(index) = self.progress.resend.pop_front() {
                self.resent += 1;
                index
            } else if self.progress.next < messages.len() {
                self.progress.next += 1;
                self.progress.next - 1
            } else {
                break;
            };
            codec::encode(
                &mut self.out,
                session.txnr,
                Command::Syslog,
                messages[index],
            );
            session.unacked.push_back((session.txnr, index));
            session.txnr = codec::next_txnr(session.txnr);
        }
        if !self.out.is_empty() {
            session.send(&self.out).map_err(Failure::Lost)?;
        }
        // At least one answer, then whatever else is already read.
        let mut answered = false;
        loop {
            let unacked = &mut session.unacked;
            match next_frame(&mut session.input, |frame| answer(frame, unacked)) {
                Err(e) => return Err(Failure::Lost(e)),
                Ok(Some(Ok(Answer::Acked))) => {
                    self.progress.acked += 1;
                    answered = true;
                }
                Ok(Some(Ok(Answer::ServerClose))) => {
                    info!(
                        "relp sink: the server closes the session (serverclose), reopening unacked={}",
                        session.unacked.len()
                    );
                    return Err(Failure::ServerClose);
                }
                Ok(Some(Err(e))) => return Err(Failure::Lost(e)),
                Ok(None) if answered || session.unacked.is_empty() => return Ok(()),
                Ok(None) => match session.fill() {
                    Ok(()) => {}
                    Err(e) if is_timeout(&e) => {
                        return Err(Failure::Slow(io::Error::new(
                            e.kind(),
                            format!(
                                "no acknowledgement within write_timeout ({:?}), unacked={}",
                                self.downstream.write_timeout,
                                session.unacked.len()
                            ),
                        )));
                    }
                    Err(e) => return Err(Failure::Lost(e)),
                },
            }
        }
    }
}

/// What a frame from the server meant while messages are in flight.
enum Answer {
    Acked,
    ServerClose,
}

/// Books one frame from the server against `unacked`: an `rsp 200` for
/// a message in flight acknowledges it (in any order, though librelp
/// answers in order); anything else ends the session.
fn answer(frame: codec::Frame<'_>, unacked: &mut VecDeque<(u32, usize)>) -> io::Result<Answer> {
    match frame.known() {
        Some(Command::ServerClose) => Ok(Answer::ServerClose),
        Some(Command::Rsp) => {
            let rsp = Rsp::parse(frame.data).ok_or_else(|| protocol("malformed rsp data"))?;
            let Some(at) = unacked.iter().position(|&(t, _)| t == frame.txnr) else {
                return Err(protocol(format!(
                    "rsp for txnr {} that is not in flight",
                    frame.txnr
                )));
            };
            if !rsp.is_ok() {
                return Err(refused("syslog", &rsp));
            }
            unacked.remove(at);
            Ok(Answer::Acked)
        }
        _ => Err(protocol(format!(
            "unexpected command {:?} from the server",
            String::from_utf8_lossy(frame.command)
        ))),
    }
}

impl Session {
    /// Writes all of `bytes` (and pushes TLS records out).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.write_all(bytes)?;
        self.conn.flush()
    }

    /// Reads once (blocking up to the socket's read timeout) into
    /// `input`; EOF is an error: the session is over.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.conn.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// On the idle tick: reads what the server sent without blocking. An
    /// error when the session is over (EOF, reset, `serverclose`, or
    /// anything else unasked for).
    fn poll_idle(&mut self) -> io::Result<()> {
        self.conn.socket().set_nonblocking(true)?;
        let read = self.fill();
        self.conn.socket().set_nonblocking(false)?;
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
        match next_frame(&mut self.input, |frame| frame.known())? {
            None => Ok(()),
            Some(Some(Command::ServerClose)) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "serverclose",
            )),
            Some(_) => Err(protocol("unexpected frame from the server while idle")),
        }
    }

    /// `close`, and its answer within [`CLOSE_WAIT`]: the server then
    /// knows the session ended on purpose.
    fn close(mut self) {
        let mut out = Vec::new();
        let txnr = self.txnr;
        codec::encode(&mut out, txnr, Command::Close, b"");
        let wait = self.conn.socket().set_read_timeout(Some(CLOSE_WAIT));
        if wait.is_err() || self.send(&out).is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline {
            match next_frame(&mut self.input, |frame| frame.txnr == txnr) {
                Ok(Some(true)) => break,
                Ok(Some(false)) => {}
                Ok(None) => {
                    if self.fill().is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if let Conn::Tls(s) = &mut self.conn {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

/// Decodes the next whole frame in `input` and hands it to `f`, then
/// removes it; `Ok(None)` when no whole frame is there yet. A frame that
/// cannot be decoded is an error (a RELP stream cannot resync).
fn next_frame<T>(
    input: &mut Vec<u8>,
    f: impl FnOnce(codec::Frame<'_>) -> T,
) -> io::Result<Option<T>> {
    let (result, used) = match codec::decode(input, RSP_DATA_MAX) {
        Ok(Some((frame, used))) => (f(frame), used),
        Ok(None) => return Ok(None),
        Err(e) => return Err(protocol(e.to_string())),
    };
    input.drain(..used);
    Ok(Some(result))
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("RELP protocol error: {}", what.into()),
    )
}

fn refused(command: &str, rsp: &Rsp<'_>) -> io::Error {
    io::Error::other(format!(
        "the server refused {command}: {} {}",
        rsp.code,
        String::from_utf8_lossy(rsp.text)
    ))
}

/// SO_RCVTIMEO expired (or, non-blocking, nothing there).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Sink for RelpSink {
    fn write(&mut self, batches: &[Batch]) -> io::Result<()> {
        // One slice per message, per write (not per message): the index
        // a frame in flight refers to.
        let messages: Vec<&[u8]> = batches.iter().flat_map(Batch::messages).collect();
        // A server that ends every session at once gets the back-off.
        let mut reopened = false;
        loop {
            if self.progress.acked == messages.len() {
                self.progress = Progress::default();
                return Ok(());
            }
            if self.session.is_none() {
                self.session = Some(self.open()?);
            }
            match self.step(&messages) {
                Ok(()) => {}
                Err(Failure::Slow(e)) => return Err(e),
                Err(Failure::Lost(e)) => {
                    self.lose_session();
                    return Err(e);
                }
                // Reopen at once, once per write (the runner's back-off
                // applies after that, or if reopening fails).
                Err(Failure::ServerClose) => {
                    self.lose_session();
                    if reopened {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server sent serverclose again",
                        ));
                    }
                    reopened = true;
                }
            }
        }
    }

    fn check(&mut self) -> Option<io::Result<()>> {
        if let Some(session) = &mut self.session {
            match session.poll_idle() {
                Ok(()) => return Some(Ok(())),
                Err(e) => {
                    debug!("relp sink: session ended while idle error=\"{e}\"");
                    self.lose_session();
                }
            }
        }
        let now = Instant::now();
        if now < self.next_probe {
            return None;
        }
        match self.open() {
            Ok(session) => {
                self.session = Some(session);
                Some(Ok(()))
            }
            Err(e) => {
                self.next_probe = now + PROBE_RETRY;
                Some(Err(e))
            }
        }
    }

    fn take_resent(&mut self) -> u64 {
        std::mem::take(&mut self.resent)
    }
}

impl Drop for RelpSink {
    /// Shutdown: an idle session is closed with `close`.
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && session.unacked.is_empty()
        {
            session.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    fn sink(addr: std::net::SocketAddr, write_timeout: Duration) -> RelpSink {
        let downstream = DownstreamSettings {
            address: addr.to_string(),
            addrs: vec![addr],
            connect_timeout: Duration::from_secs(5),
            write_timeout,
            tls: None,
        };
        RelpSink::new(&downstream, 128).unwrap()
    }

    fn batch(messages: &[&str]) -> Vec<Batch> {
        let mut b = Batch::new();
        for m in messages {
            b.push(m.as_bytes());
        }
        vec![b]
    }

    /// The server side of a test: reads one whole frame (blocking).
    fn frame(s: &mut TcpStream, input: &mut Vec<u8>) -> (u32, String, Vec<u8>) {
        loop {
            if let Some((f, used)) = codec::decode(input, 1 << 20).unwrap() {
                let got = (
                    f.txnr,
                    String::from_utf8_lossy(f.command).into_owned(),
                    f.data.to_vec(),
                );
                input.drain(..used);
                return got;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the sink closed the connection");
            input.extend_from_slice(&chunk[..n]);
        }
    }

    fn rsp(s: &mut TcpStream, txnr: u32, body: &[u8]) {
        let mut out = Vec::new();
        codec::encode_rsp(&mut out, txnr, 200, "OK", body);
        s.write_all(&out).unwrap();
    }

    /// Accepts a session: the open, answered with librelp's offers.
    fn accept(l: &TcpListener) -> (TcpStream, Vec<u8>) {
        let (mut s, _) = l.accept().unwrap();
        // Bounded: a sink that never sends what is awaited fails the test.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut input = Vec::new();
        let (txnr, command, data) = frame(&mut s, &mut input);
        assert_eq!((txnr, command.as_str()), (1, "open"));
        assert!(String::from_utf8_lossy(&data).contains("commands=syslog"));
        rsp(
            &mut s,
            txnr,
            b"relp_version=0\nrelp_software=librelp,1.11.0\ncommands=syslog",
        );
        (s, input)
    }

    /// A session lost with messages in flight: the acknowledged ones are
    /// never sent again, the others are sent first on the next session,
    /// in order, and counted.
    #[test]
    fn unacked_messages_are_resent_on_the_next_session_and_counted() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, mut input) = accept(&l);
            for k in 0..5 {
                let (txnr, command, _) = frame(&mut s, &mut input);
                assert_eq!((txnr, command.as_str()), (2 + k, "syslog"));
                if k < 3 {
                    rsp(&mut s, txnr, b"");
                }
            }
            drop(s); // two unanswered
            let (mut s, mut input) = accept(&l);
            let mut again = Vec::new();
            for _ in 0..2 {
                let (txnr, _, data) = frame(&mut s, &mut input);
                again.push(String::from_utf8(data).unwrap());
                rsp(&mut s, txnr, b"");
            }
            // The sink is dropped idle: it says close.
            let (txnr, command, _) = frame(&mut s, &mut input);
            assert_eq!(command, "close");
            rsp(&mut s, txnr, b"");
            again
        });
        let mut sink = sink(addr, Duration::from_secs(5));
        let batches = batch(&["m0", "m1", "m2", "m3", "m4"]);
        let mut failures = 0;
        while let Err(e) = sink.write(&batches) {
            failures += 1;
            assert!(failures < 5, "{e}");
        }
        assert_eq!(failures, 1);
        assert_eq!(sink.take_resent(), 2);
        assert_eq!(sink.take_resent(), 0);
        drop(sink);
        assert_eq!(server.join().unwrap(), ["m3", "m4"]);
    }

    /// No ack within write_timeout: an error, but the session stays and
    /// the retry waits for the acks; nothing is sent twice.
    #[test]
    fn a_slow_server_keeps_its_session_and_nothing_is_resent() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, mut input) = accept(&l);
            let a = frame(&mut s, &mut input);
            let b = frame(&mut s, &mut input);
            wait.recv().unwrap(); // the sink's write timed out
            rsp(&mut s, a.0, b"");
            rsp(&mut s, b.0, b"");
            let (txnr, command, _) = frame(&mut s, &mut input);
            assert_eq!(command, "close");
            rsp(&mut s, txnr, b"");
            l.set_nonblocking(true).unwrap();
            // One session only: no second connection is waiting.
            assert!(l.accept().is_err());
        });
        let mut sink = sink(addr, Duration::from_millis(200));
        let batches = batch(&["a", "b"]);
        let e = sink.write(&batches).unwrap_err();
        assert!(is_timeout(&e), "{e}");
        go.send(()).unwrap();
        sink.write(&batches).unwrap();
        assert_eq!(sink.take_resent(), 0);
        drop(sink);
        server.join().unwrap();
    }
}
