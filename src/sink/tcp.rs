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
//! never a reason to send in plaintext.
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
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

use log::{debug, info};

use super::{Sink, write_vectored_all};
use crate::config::{SinkConfig, SinkFraming};
use crate::queue::Batch;
use crate::tls;

/// The downstream connection: plain, or TLS over TCP.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write_vectored(bufs),
            Conn::Tls(s) => s.write_vectored(bufs),
        }
    }

    /// TLS: pushes out the records rustls still holds.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// `[sink.tls]` loaded: what to trust and which name to verify.
struct SinkTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for SinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkTls({:?})", self.server_name)
    }
}

/// Least time between two idle connect attempts while the downstream is
/// down: a refused connect is cheap, one to a black hole costs up to
/// `connect_timeout` of the sink thread.
pub const PROBE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct TcpSink {
    address: String,
    /// `address` resolved once at start: a reconnect never waits on DNS
    /// (a name lookup has no timeout of its own).
    addrs: Vec<SocketAddr>,
    framing: SinkFraming,
    connect_timeout: Duration,
    write_timeout: Duration,
    conn: Option<Conn>,
    tls: Option<SinkTls>,
    /// Bytes of the current batches already written on `conn`: a retry
    /// after a write timeout resumes there. 0 whenever `conn` is new.
    done: usize,
    /// Octet-counted output is built here; reused between writes.
    scratch: Vec<u8>,
    connected_once: bool,
    /// Earliest next idle connect attempt (after a failed one).
    next_probe: Instant,
}

impl TcpSink {
    /// Resolves the address once and loads `[sink.tls]`; fails only if
    /// the address does not resolve or the TLS files do not load
    /// (validation and start-up have checked both once already).
    pub fn new(config: &SinkConfig) -> io::Result<TcpSink> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let client = tls::client_config(t).map_err(io::Error::other)?;
                let name = t.server_name.clone().unwrap_or_default();
                let server_name = ServerName::try_from(name)
                    .map_err(|e| io::Error::other(format!("sink.tls.server_name: {e}")))?;
                Some(SinkTls {
                    config: client,
                    server_name,
                })
            }
        };
        let address = config.address.clone().unwrap_or_default();
        let addrs: Vec<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("sink.address {address:?}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("sink.address {address:?} resolves to no address"),
            ));
        }
        Ok(TcpSink {
            tls,
            addrs,
            address,
            framing: config.framing.unwrap_or(SinkFraming::Lines),
            connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(2)),
            write_timeout: config.write_timeout.unwrap_or(Duration::from_secs(5)),
            conn: None,
            done: 0,
            scratch: Vec::new(),
            connected_once: false,
            next_probe: Instant::now(),
        })
    }

    fn connect(&mut self) -> io::Result<Conn> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: resolves to no address", self.address),
        );
        for &addr in &self.addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    let conn = match &self.tls {
                        None => Conn::Plain(stream),
                        Some(t) => Conn::Tls(Box::new(
                            tls::connect(&t.config, &t.server_name, stream, self.connect_timeout)
                                .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
                        )),
                    };
                    match &conn {
                        Conn::Plain(s) => s.set_write_timeout(Some(self.write_timeout))?,
                        Conn::Tls(s) => s.sock.set_write_timeout(Some(self.write_timeout))?,
                    }
                    if self.connected_once {
                        debug!("tcp sink reconnected addr={addr}");
                    } else {
                        info!("tcp sink connected addr={addr}");
                        self.connected_once = true;
                    }
                    return Ok(conn);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect {addr}: {e}")),
            }
        }
        Err(last)
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
