//! A connection's thread from its first instruction to its last: the
//! accept loop (src/server.rs) hands over an accepted socket with its
//! per-IP slot, and [`start`] runs the rest in a named thread of its own:
//! the PROXY header first when the listener takes one ([`super::proxy`]),
//! then the allow list and per-IP cap for the client it names, then the
//! TLS handshake when the listener has TLS (src/tls/), then the protocol
//! ([`super::serve`], or a RELP session), and the close.
//!
//! The permit is not the worker's: the accept loop holds it and returns
//! it once the thread is joined and gone from /proc, so live threads never
//! exceed `max_connections`. The worker's guard ([`WorkerGuard`]) reports
//! the end to the accept loop, on unwind too, as its last act.

use std::io;
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
use log::{debug, warn};
use socket2::SockRef;

use super::proxy::{self, Header, ProxyError};
use super::{Close, ConnContext};
use crate::access::{Access, IpSlot};
use crate::alerts::suppressed;
use crate::stats::Stats;
use crate::threads::{self, Panics};
use crate::tls::{HandshakeEnd, ServerTls, Stream};

/// Worker stack reservation. A worker touches 8 KiB of it (two pages,
/// measured in /proc/PID/smaps with trace logging and hostile input), so
/// 128 KiB is a wide margin that costs only address space: resident
/// memory per idle connection is ~9.7 KiB.
pub const WORKER_STACK: usize = 128 << 10;

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// `[server]`: framed messages (SPEC "Framing").
    Plain,
    /// `[relp]`: RELP sessions (src/relp/session.rs).
    Relp,
}

/// What every worker of one listener shares; the accept loop keeps it
/// and gives each worker it starts a share.
#[derive(Debug)]
pub struct Shared {
    /// Counters, alerts, shutdown, the queue's sending end. The accept
    /// loop drops its share when it returns, so the queue disconnects
    /// once the last worker is gone too.
    pub ctx: Arc<ConnContext>,
    /// The allowlist and per-IP counts: behind a PROXY-protocol balancer
    /// the worker applies them to the client the header names.
    pub access: Arc<Access>,
    /// Present = every worker runs a TLS handshake first.
    pub tls: Option<Arc<ServerTls>>,
    /// What the workers speak.
    pub protocol: Speaks,
}

/// An accepted connection on its way to its worker.
#[derive(Debug)]
pub struct Accepted {
    pub id: u64,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    /// The source IP's count (None without a per-IP cap, or behind a
    /// PROXY-protocol balancer, where the worker takes the client's).
    pub slot: Option<IpSlot>,
}

/// What a worker reports as it ends: its id, and its /proc task entry (to
/// see it gone) when /proc is there.
#[derive(Debug)]
pub struct Ended {
    pub id: u64,
    pub task: Option<PathBuf>,
}

/// Starts the named thread that serves `conn` (`fw-conn-<id>`, or
/// `fw-relp-<id>`); its guard reports the end to `ended`. On error the
/// closure was dropped with the stream and the slot: the connection is
/// closed.
pub fn start(
    shared: &Shared,
    conn: Accepted,
    ended: &Sender<Ended>,
    panics: &Panics,
) -> io::Result<JoinHandle<()>> {
    let name = match shared.protocol {
        Speaks::Plain => format!("fw-conn-{}", conn.id),
        Speaks::Relp => format!("fw-relp-{}", conn.id),
    };
    let ctx = shared.ctx.clone();
    let access = shared.access.clone();
    let tls = shared.tls.clone();
    let protocol = shared.protocol;
    let ended = ended.clone();
    threads::spawn(name, Some(WORKER_STACK), panics, move || {
        let Accepted {
            id,
            peer,
            stream,
            slot,
        } = conn;
        // The source IP's count is the worker's: released as it
        // ends, not when the accept loop gets round to joining it.
        let _slot = slot;
        let _alive = WorkerGuard::new(&ctx.stats, id, ended);
        worker(id, peer, stream, &ctx, tls.as_deref(), &access, protocol)
    })
}

/// The worker thread's body, under its guard.
fn worker(
    id: u64,
    peer: SocketAddr,
    stream: TcpStream,
    ctx: &ConnContext,
    tls: Option<&ServerTls>,
    access: &Access,
    protocol: Speaks,
) {
    let started = Instant::now();
    // The PROXY header comes first, before TLS (SPEC); the client it
    // names is the peer from here on, held to the allow list and the
    // per-IP cap like a direct one (its slot lives as long as this worker).
    let (peer, _client_slot) = match client(ctx, access, &stream, peer, started) {
        Ok((client, slot)) => {
            if client != peer {
                debug!("conn proxied id={id} proxy={peer} peer={client}");
            }
            (client, slot)
        }
        Err(close) => {
            debug!("conn closed id={id} peer={peer} reason={}", close.as_str());
            let _ = SockRef::from(&stream).shutdown(SocketShutdown::Both);
            return;
        }
    };
    let mut reader = match tls {
        None => Stream::Plain(&stream),
        Some(tls) => match tls.accept(&stream, peer, &ctx.stats, &ctx.wake) {
            Ok(s) => s,
            Err(end) => {
                if matches!(end, HandshakeEnd::Shutdown) {
                    Stats::add(&ctx.stats.closed_shutdown, 1);
                }
                debug!("conn closed id={id} peer={peer} reason=tls {end:?}");
                let _ = SockRef::from(&stream).shutdown(SocketShutdown::Both);
                return;
            }
        },
    };
    let (close, totals) = match protocol {
        Speaks::Plain => super::serve(ctx, &mut reader, peer),
        Speaks::Relp => crate::relp::session::serve(ctx, &mut reader, peer),
    };
    if close == Close::Shutdown {
        reader.close_notify();
    }
    drop(reader);
    debug!(
        "conn closed id={id} peer={peer} reason={} messages={} bytes={} duration={:?}",
        close.as_str(),
        totals.messages,
        totals.bytes,
        started.elapsed()
    );
    // Let the peer see the close now, before the guard reports the end.
    let _ = SockRef::from(&stream).shutdown(SocketShutdown::Both);
    drop(stream);
}

/// The peer this connection serves: the socket's peer, or with the PROXY
/// protocol the client its header names (read within the header deadline
/// from `started`). A missing, malformed or late header closes the
/// connection, counted `closed_proxy`.
fn client(
    ctx: &ConnContext,
    access: &Access,
    stream: &TcpStream,
    peer: SocketAddr,
    started: Instant,
) -> Result<(SocketAddr, Option<IpSlot>), Close> {
    let Some(timeout) = ctx.proxy_header_timeout else {
        return Ok((peer, None));
    };
    let client = match proxy::read_header(stream, started + timeout, &ctx.wake) {
        Ok(Header::Proxied { source }) => source,
        // A balancer's health check: the proxy itself is the peer, and
        // `allow` does not apply to the proxy's own address (SPEC).
        Ok(Header::Local) => return Ok((peer, None)),
        Err(ProxyError::Shutdown) => {
            Stats::add(&ctx.stats.closed_shutdown, 1);
            return Err(Close::Shutdown);
        }
        Err(e) => {
            Stats::add(&ctx.stats.closed_proxy, 1);
            if let Some(n) = ctx.alerts.proxy_header.allow() {
                let e = match e {
                    ProxyError::Timeout => format!("{e} ({timeout:?})"),
                    e => e.to_string(),
                };
                warn!(
                    "PROXY protocol: bad header, closed peer={peer} error=\"{e}\"{}",
                    suppressed(n)
                );
            }
            return Err(Close::Proxy);
        }
    };
    match access.admit(client.ip()) {
        Ok(slot) => Ok((client, slot)),
        Err(refusal) => {
            if let Some((n, why)) = access.refused(refusal, &ctx.stats) {
                warn!(
                    "connection refused after its PROXY header peer={client} proxy={peer} reason=\"{why}\"{}",
                    suppressed(n)
                );
            }
            // Counted above (not closed_proxy); the label is for the
            // debug line only.
            Err(Close::Proxy)
        }
    }
}

/// Counts the thread as live and undoes everything on the way out.
struct WorkerGuard<'a> {
    stats: &'a Stats,
    id: u64,
    ended: Sender<Ended>,
    task: Option<PathBuf>,
}

impl<'a> WorkerGuard<'a> {
    fn new(stats: &'a Stats, id: u64, ended: Sender<Ended>) -> Self {
        Stats::add(&stats.workers, 1);
        WorkerGuard {
            stats,
            id,
            ended,
            task: std::fs::read_link("/proc/thread-self")
                .ok()
                .map(|rel| PathBuf::from("/proc").join(rel)),
        }
    }
}

impl Drop for WorkerGuard<'_> {
    fn drop(&mut self) {
        Stats::sub(&self.stats.conns_active, 1);
        Stats::sub(&self.stats.workers, 1);
        // Fails only once the accept loop is gone (shutdown): nothing
        // left to free then.
        let _ = self.ended.send(Ended {
            id: self.id,
            task: self.task.take(),
        });
    }
}
