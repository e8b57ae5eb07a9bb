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
use std::time::{Duration, Instant};

use log::{debug, info};

use super::{Sink, write_vectored_all};
use crate::config::{SinkConfig, SinkFraming};
use crate::queue::Batch;

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
    conn: Option<TcpStream>,
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
    /// Resolves the address once; fails only if it does not resolve
    /// (validation has already resolved it once).
    pub fn new(config: &SinkConfig) -> io::Result<TcpSink> {
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

    fn connect(&mut self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: resolves to no address", self.address),
        );
        for &addr in &self.addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(self.write_timeout))?;
                    stream.set_nodelay(true)?;
                    if self.connected_once {
                        debug!("tcp sink reconnected addr={addr}");
                    } else {
                        info!("tcp sink connected addr={addr}");
                        self.connected_once = true;
                    }
                    return Ok(stream);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect {addr}: {e}")),
            }
        }
        Err(last)
    }

    /// Writes `batches` from byte `self.done` on; on a timeout `self.done`
    /// says how far it got.
    fn send(&mut self, stream: &mut TcpStream, batches: &[Batch]) -> io::Result<()> {
        match self.framing {
            SinkFraming::Lines => {
                let bufs: Vec<&[u8]> = batches.iter().map(Batch::as_lines).collect();
                write_vectored_all(stream, &bufs, &mut self.done)
            }
            SinkFraming::OctetCounted => {
                // Rebuilt on a retry too: the same batches give the same
                // bytes, so `done` still points at the right place.
                self.scratch.clear();
                for m in batches.iter().flat_map(Batch::messages) {
                    let _ = write!(self.scratch, "{} ", m.len());
                    self.scratch.extend_from_slice(m);
                }
                write_vectored_all(stream, &[&self.scratch], &mut self.done)
            }
        }
    }
}

/// Whether the downstream has closed or reset `stream`, looked at without
/// blocking. A syslog receiver never talks back, so anything readable is
/// either the end of the stream or bytes we discard.
fn peer_closed(stream: &TcpStream) -> bool {
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
        match &self.conn {
            Some(s) if !peer_closed(s) => return Some(Ok(())),
            Some(_) => {
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
        let mut stream = match self.conn.take() {
            Some(s) if !peer_closed(&s) => s,
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
