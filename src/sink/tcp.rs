//! The tcp sink: forwards messages to a downstream collector over one TCP
//! connection per sink worker, LF-terminated or octet-counted (RFC 6587).
//!
//! It connects on the first idle tick or write and reconnects after any failure;
//! the sink thread ([`super::run`]) paces the retries (100 ms doubling to
//! 5 s) and logs one warning per outage.
//!
//! Two kinds of failure, two answers:
//! - The connection broke (reset, closed, refused): the batches are sent
//!   again whole on a new connection. At-least-once: the downstream may see
//!   the head of one batch twice per outage, never a gap caused by us.
//! - A write timed out (the downstream is alive but not reading, e.g.
//!   stopped): the connection is kept and the retry resumes at the byte
//!   where the write stopped, so a downstream that wakes up later reads
//!   every message once, none cut in half.
//!
//! With `[sink.tls]` the connection is TLS, verified against `ca` and
//! `server_name` during connect: a verification failure is a connect
//! error like any other (retried with backoff, warned once per outage),
//! never a reason to send in plaintext. (Connecting and TLS live in
//! [`super::downstream`], shared with the relp sink.)
//!
//! Health: on the sink thread's idle tick (nothing to write) [`Sink::check`]
//! does the same non-blocking look, and, if the connection is gone or was
//! never made, one connect attempt (at most every [`PROBE_RETRY`]). So
//! `floodwall_sink_up` and /healthz follow a downstream that closes or
//! refuses within a tick (250 ms), not only at the next write, and the
//! first write after an outage finds a connection ready. It cannot see a
//! downstream that vanished without a FIN or RST (a partition): TCP
//! keepalive is not worth it here, the next write's timeout tells.
//!
//! Before each write on an open connection the sink looks (without
//! blocking) whether the downstream has closed it: a write into a socket
//! whose peer is gone succeeds once and loses its data, so that first
//! write must go to a new connection instead.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use log::debug;

use super::downstream::{Conn, Downstream};
use super::{Sink, write_vectored_all};
use crate::config::{DownstreamSettings, SinkFraming};
use crate::queue::Batch;

/// Least time between two idle connect attempts while the downstream is
/// down: a refused connect is cheap, one to a black hole costs up to
/// `connect_timeout` of the sink thread.
pub const PROBE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct TcpSink {
    /// The address, timeouts and TLS, shared with the relp sink.
    downstream: Downstream,
    framing: SinkFraming,
    conn: Option<Conn>,
    /// Bytes of the current batches already written on `conn`: a retry
    /// after a write timeout resumes there. 0 whenever `conn` is new.
    done: usize,
    /// Octet-counted output is built here; reused between writes.
    scratch: Vec<u8>,
    /// Earliest next idle connect attempt (after a failed one).
    next_probe: Instant,
}

impl TcpSink {
    /// Loads `[sink.tls]` ([`Downstream`]); connects later.
    pub fn new(downstream: &DownstreamSettings, framing: SinkFraming) -> io::Result<TcpSink> {
        Ok(TcpSink {
            downstream: Downstream::new(downstream, "tcp sink")?,
            framing,
            conn: None,
            done: 0,
            scratch: Vec::new(),
            next_probe: Instant::now(),
        })
    }

    fn connect(&mut self) -> io::Result<Conn> {
        self.downstream.connect()
    }

    /// Writes `batches` from byte `self.done` on; on a timeout `self.done`
    /// says how far it got.
    fn send(&mut self, stream: &mut Conn, batches: &[Batch]) -> io::Result<()> {
        match self.framing {
            SinkFraming::Lines => {
                let bufs: Vec<&[u8]> = batches.iter().map(Batch::as_lines).collect();
                let total = bufs.iter().map(|b| b.len()).sum();
                write_vectored_all(stream, &bufs, &mut self.done)?;
                self.flush_tls(stream, total)
            }
            SinkFraming::OctetCounted => {
                // Rebuilt on a retry too: the same batches give the same
                // bytes, so `done` still points at the right place.
                self.scratch.clear();
                for m in batches.iter().flat_map(Batch::messages) {
                    let _ = write!(self.scratch, "{} ", m.len());
                    self.scratch.extend_from_slice(m);
                }
                write_vectored_all(stream, &[&self.scratch], &mut self.done)?;
                self.flush_tls(stream, self.scratch.len())
            }
        }
    }

    /// TLS: rustls accepted the bytes; they are sent only once its
    /// records are flushed. On a flush timeout every byte counts as
    /// written (`done = total`), so the retry flushes instead of resending.
    fn flush_tls(&mut self, stream: &mut Conn, total: usize) -> io::Result<()> {
        if let Conn::Plain(_) = stream {
            return Ok(());
        }
        stream.flush().inspect_err(|e| {
            if is_timeout(e) {
                self.done = total;
            }
        })
    }
}

/// Whether the downstream has closed or reset `stream`, looked at without
/// blocking. A syslog receiver never talks back, so anything readable is
/// either the end of the stream or bytes we discard.
fn peer_closed(conn: &mut Conn) -> bool {
    match conn {
        Conn::Plain(s) => tcp_peer_closed(s),
        Conn::Tls(s) => tls_peer_closed(s),
    }
}

/// TLS: reads what the downstream sent (session tickets, close_notify,
/// alerts) without blocking; closed if the TCP stream ended, the session
/// failed or the peer sent close_notify.
fn tls_peer_closed(s: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    if s.sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut closed = false;
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => match s.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => {
                    closed = true;
                    break;
                }
                Ok(_) => while matches!(s.conn.reader().read(&mut buf), Ok(n) if n > 0) {},
                Err(_) => {
                    closed = true;
                    break;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    closed || s.sock.set_nonblocking(false).is_err()
}

fn tcp_peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 512];
    let mut reader = stream;
    let mut closed = false;
    // Bounded: a chatty downstream cannot keep us here.
    for _ in 0..64 {
        match reader.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    closed || stream.set_nonblocking(false).is_err()
}

/// SO_SNDTIMEO expired: the downstream is alive but not reading.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Sink for TcpSink {
    fn check(&mut self) -> Option<io::Result<()>> {
        match self.conn.as_mut().map(peer_closed) {
            Some(false) => return Some(Ok(())),
            Some(true) => {
                debug!("tcp sink: downstream closed the connection while idle");
                self.conn = None;
                self.done = 0;
            }
            None => {}
        }
        let now = Instant::now();
        if now < self.next_probe {
            return None; // still down as far as we know: keep the state
        }
        match self.connect() {
            Ok(stream) => {
                self.conn = Some(stream);
                self.done = 0;
                Some(Ok(()))
            }
            Err(e) => {
                self.next_probe = now + PROBE_RETRY;
                Some(Err(e))
            }
        }
    }

    fn write(&mut self, batches: &[Batch]) -> io::Result<()> {
        let open = self
            .conn
            .take()
            .map(|mut s| (!peer_closed(&mut s)).then_some(s));
        let mut stream = match open {
            Some(Some(s)) => s,
            old => {
                if old.is_some() {
                    debug!("tcp sink: downstream closed the connection, reconnecting");
                }
                // A new connection starts the batches over.
                self.done = 0;
                self.connect()?
            }
        };
        match self.send(&mut stream, batches) {
            Ok(()) => {
                self.conn = Some(stream);
                Ok(())
            }
            Err(e) if is_timeout(&e) => {
                // Keep the connection and the progress: resume, not resend.
                self.conn = Some(stream);
                Err(io::Error::new(
                    e.kind(),
                    format!("write timed out, downstream not reading: {e}"),
                ))
            }
            Err(e) => {
                self.done = 0;
                Err(e)
            }
        }
    }
}
