//! The listener and the accept loop: bind with socket2, admit connections
//! through the [`Limiter`], pause while the queue is above its high
//! watermark, and hand each socket to a named worker thread that owns its
//! permit.
//!
//! With `server.proxy_protocol`, a connection from outside
//! `trusted_proxies` is closed here (counted `closed_proxy`) before any
//! thread is started; the worker then reads the PROXY header first
//! ([`crate::conn::proxy`]) and serves the client it names.
//!
//! Access control (`server.allow`, the per-IP cap) is decided here, right
//! after accept and before a permit or a thread is given; TLS is not: the
//! handshake runs in the worker thread (src/tls/).
//!
//! Every wait here is bounded so the loop notices shutdown: accept() has a
//! socket timeout (SO_RCVTIMEO applies to accept on Linux), permit and
//! pause waits are short slices. Accept errors such as EMFILE back off
//! instead of spinning.
//!
//! At shutdown the loop closes the listener (new clients are refused at
//! once, so a balancer sends them elsewhere), wakes every worker, and
//! stays to join them until they have drained; at the drain deadline it
//! aborts the queue so that no worker waits on it any longer. A listener
//! passed by the service manager is not ours to shrink: clients waiting
//! in its backlog at shutdown stay there for the next process (a restart
//! refuses nobody), so the loop neither drains nor resizes it.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, info, warn};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::access::{Access, IpSlot, Refusal};
use crate::alerts::suppressed;
use crate::config::{Config, OnConnectionLimit};
use crate::conn::proxy::{self, Header, ProxyError};
use crate::conn::{self, ConnContext};
use crate::limiter::{Limiter, Permit};
use crate::queue::QueueDepth;
use crate::stats::Stats;
use crate::systemd::Liveness;
use crate::threads::{self, Panics};
use crate::tls::Stream;
use crate::tls::{HandshakeEnd, ServerTls};

/// How long one blocking accept or permit wait lasts before the loop
/// looks at shutdown and the watermarks again.
const POLL: Duration = Duration::from_millis(100);
/// Poll period while paused at the high watermark.
const PAUSE_POLL: Duration = Duration::from_millis(10);
/// Longest wait for a joined worker's task to leave /proc.
const TASK_GONE_WAIT: Duration = Duration::from_millis(20);
/// Back-off after an accept error (EMFILE, ENOBUFS, ...).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// After the drain deadline, how long workers get to count what is
/// unread (non-blocking reads, at most `UNREAD_BUDGET` bytes each) before
/// the accept loop stops waiting for them.
const WORKER_EXIT_MARGIN: Duration = Duration::from_millis(200);
/// Worker stack reservation. A worker touches 8 KiB of it (two pages,
/// measured in /proc/PID/smaps with trace logging and hostile input), so
/// 128 KiB is a wide margin that costs only address space: resident
/// memory per idle connection is ~9.7 KiB.
pub const WORKER_STACK: usize = 128 << 10;

/// Binds the listening socket: SO_REUSEADDR, the configured backlog, and a
/// receive timeout so that accept() wakes up regularly.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// Takes a listening socket passed by the service manager
/// (src/activation.rs): the configured backlog (listen(2) again only
/// resizes the queue; clients already in it stay) and the same receive
/// timeout as [`bind`].
pub fn adopt(socket: Socket, backlog: u32) -> io::Result<Socket> {
    socket.set_nonblocking(false)?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// Everything the accept loop needs.
pub struct Acceptor {
    /// Dropped (closed) as the shutdown starts.
    listener: Option<Socket>,
    on_connection_limit: OnConnectionLimit,
    max_connections: usize,
    tcp_keepalive: Duration,
    pause_above: usize,
    resume_below: usize,
    limiter: Limiter,
    /// With `server.proxy_protocol`: the sources whose headers are
    /// believed; None: no PROXY protocol.
    trusted_proxies: Option<Vec<ipnet::IpNet>>,
    depth: QueueDepth,
    /// Shared with every worker (counters, alerts, shutdown, the queue's
    /// sending end); dropped by this loop when it returns, so the queue
    /// disconnects once the last worker is gone too.
    ctx: Arc<ConnContext>,
    /// The allowlist and per-IP counts, checked before a thread starts.
    /// Shared with the workers: behind a PROXY-protocol balancer they
    /// apply it to the client the header names.
    access: Arc<Access>,
    /// Present = every worker runs a TLS handshake first.
    tls: Option<Arc<ServerTls>>,
    /// A permit taken before an accept whose connection was then refused
    /// by `access`: kept for the next one.
    spare: Option<Permit>,
    /// Worker threads still running, with their permits.
    live: HashMap<u64, Worker>,
    /// Workers that reported their end and whose task may still be in
    /// /proc: their permits return once it is gone (see [`Acceptor::reap`]).
    leaving: Vec<Leaving>,
    /// Workers send their id here as they end.
    ended_tx: Sender<Ended>,
    ended: Receiver<Ended>,
    /// Where a panicking worker reports (it starts the shutdown).
    panics: Panics,
    /// The last connection id handed out.
    next_id: u64,
    /// The listen backlog: bounds the accepts of the shutdown drain.
    backlog: usize,
    /// What the workers speak.
    protocol: Speaks,
    /// The listener was passed by the service manager, which keeps it
    /// open after we exit: clients still in its backlog at shutdown are
    /// left there for the next process (src/activation.rs).
    passed: bool,
    /// Where the loop shows it is alive (the watchdog, src/systemd.rs).
    liveness: Arc<Liveness>,
}

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// `[server]`: framed messages (SPEC "Framing").
    Plain,
    /// `[relp]`: RELP sessions (src/relp/session.rs).
    Relp,
}

/// A worker thread the accept loop has not joined yet.
struct Worker {
    handle: JoinHandle<()>,
    /// Returned only after the thread is joined and gone.
    permit: Permit,
}

/// A worker that reported its end: joined (and its permit returned) once
/// its task has left /proc, or `TASK_GONE_WAIT` after it reported.
struct Leaving {
    worker: Worker,
    task: Option<PathBuf>,
    since: Instant,
}

impl Leaving {
    /// Whether the thread is gone (or has had its bounded wait).
    fn gone(&self, now: Instant) -> bool {
        self.worker.handle.is_finished()
            && (self.task.as_ref().is_none_or(|t| !t.exists())
                || now.duration_since(self.since) >= TASK_GONE_WAIT)
    }

    fn finish(self) {
        // The thread has finished: the join does not block. A panic was
        // logged by the hook and recorded by the thread's guard
        // (src/threads.rs), which started the shutdown.
        let _ = self.worker.handle.join();
        drop(self.worker.permit);
    }
}

impl Acceptor {
    /// `limiter` and `access` are shared by every listener: one
    /// connection bound and one per-IP count for `[server]` and `[relp]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        protocol: Speaks,
        listener: Socket,
        depth: QueueDepth,
        ctx: Arc<ConnContext>,
        tls: Option<Arc<ServerTls>>,
        limiter: Limiter,
        access: Arc<Access>,
        panics: Panics,
    ) -> Acceptor {
        let capacity = config.queue.capacity as f64;
        let (ended_tx, ended) = crossbeam_channel::unbounded();
        Acceptor {
            live: HashMap::new(),
            leaving: Vec::new(),
            ended_tx,
            ended,
            listener: Some(listener),
            on_connection_limit: config.limits.on_connection_limit,
            max_connections: config.limits.max_connections,
            tcp_keepalive: config.server.tcp_keepalive,
            pause_above: ((config.queue.pause_accept_above * capacity).ceil() as usize).max(1),
            resume_below: (config.queue.resume_accept_below * capacity).ceil() as usize,
            limiter,
            // Validated before start: a list that did not parse never
            // gets here (and an empty one would only refuse everyone).
            // The RELP listener takes no PROXY header.
            trusted_proxies: (config.server.proxy_protocol && protocol == Speaks::Plain)
                .then(|| config.trusted_proxies().unwrap_or_default()),
            depth,
            ctx,
            access,
            tls,
            spare: None,
            panics,
            next_id: 0,
            backlog: config.server.backlog as usize,
            protocol,
            passed: false,
            liveness: Arc::new(Liveness::new(0)),
        }
    }

    /// The listener came from the service manager: see `passed`.
    pub fn passed(mut self, passed: bool) -> Acceptor {
        self.passed = passed;
        self
    }

    /// Beats `liveness` as the loop goes round.
    pub fn liveness(mut self, liveness: Arc<Liveness>) -> Acceptor {
        self.liveness = liveness;
        self
    }

    /// The accept loop; returns at shutdown.
    pub fn run(mut self) {
        while !self.ctx.shutdown.is_triggered() {
            self.liveness.accept_beat();
            self.reap();
            if !self.wait_below_watermark() {
                break;
            }
            let permit = match (self.spare.take(), self.on_connection_limit) {
                (Some(p), _) => Some(p),
                (None, OnConnectionLimit::Wait) => match self.acquire(POLL) {
                    Some(p) => Some(p),
                    None => continue,
                },
                (None, OnConnectionLimit::Reject) => None,
            };
            let Some(listener) = &self.listener else {
                break;
            };
            let (socket, peer) = match listener.accept() {
                Ok((socket, addr)) => match addr.as_socket() {
                    Some(peer) => (socket, peer),
                    None => continue,
                },
                Err(e) => {
                    self.accept_error(e);
                    continue;
                }
            };
            if !self.trusted(peer) {
                self.spare = permit;
                self.refuse_untrusted(socket, peer);
                continue;
            }
            // With the PROXY protocol the allow list and the per-IP cap
            // apply to the client the header names (in the worker), not
            // to the proxy's own address (SPEC "Access control and TLS").
            let slot = match self.admit_direct(peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.spare = permit;
                    self.refuse(socket, peer, refusal);
                    continue;
                }
            };
            let permit = match permit.or_else(|| self.permit_now()) {
                Some(p) => p,
                None => {
                    self.reject(socket, peer);
                    continue;
                }
            };
            self.spawn(socket, peer, permit, slot);
        }
        self.ctx.wake.fire();
        if !self.passed {
            self.drain_backlog();
        }
        // No new connections now: refuse them at once.
        self.listener = None;
        self.drain_workers();
        debug!("accept loop stopped");
    }

    /// Shutdown: connections the kernel completed but this loop had not
    /// accepted yet (accept paused, or at the connection limit) may hold a
    /// client's whole output: it wrote and closed while it waited. Closing
    /// the listener would reset them and lose that uncounted, so they are
    /// accepted and drained like the others, within the deadline and the
    /// thread bound. Meanwhile the accept queue is shrunk to its minimum
    /// (listen(0)), so new clients are turned away, not queued.
    fn drain_backlog(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let _ = listener.listen(0);
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        let deadline = self.ctx.drain_deadline();
        // Bounded even if clients keep arriving: what the queue can have
        // held at the signal, plus slack for those that raced in.
        for _ in 0..self.backlog + self.max_connections {
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, peer) = match listener.accept() {
                Ok((socket, addr)) => match addr.as_socket() {
                    Some(peer) => (socket, peer),
                    None => continue,
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock: the queue is empty
            };
            // The trusted proxies, the allowlist and the per-IP cap hold
            // here too.
            if !self.trusted(peer) {
                self.refuse_untrusted(socket, peer);
                continue;
            }
            let slot = match self.admit_direct(peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.refuse(socket, peer, refusal);
                    continue;
                }
            };
            // A permit as workers finish their drain; none by the
            // deadline: the connection is refused like any other.
            let permit = loop {
                if let Some(p) = self.acquire(POLL) {
                    break Some(p);
                }
                if Instant::now() >= deadline {
                    break None;
                }
            };
            match permit {
                Some(permit) => self.spawn(socket, peer, permit, slot),
                None => {
                    self.reject(socket, peer);
                    return;
                }
            }
        }
    }

    /// Shutdown: joins the workers as they finish their drain. At the
    /// deadline the queue is aborted (a worker waiting for room gives up
    /// and counts its batch); workers then get `WORKER_EXIT_MARGIN` to
    /// count what is unread before the loop stops waiting for them.
    fn drain_workers(&mut self) {
        let timeout = self.ctx.shutdown_timeout;
        let deadline = self
            .ctx
            .shutdown
            .deadline(timeout)
            .unwrap_or_else(Instant::now);
        let give_up = deadline + WORKER_EXIT_MARGIN;
        let mut aborted = false;
        loop {
            self.reap();
            if self.unfinished() == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline && !aborted {
                self.ctx.queue.abort();
                aborted = true;
            }
            if now >= give_up {
                error!(
                    "{} connections still open {:?} after the drain deadline; exiting without them",
                    self.live.len(),
                    WORKER_EXIT_MARGIN
                );
                return;
            }
            if self.live.is_empty() {
                // Only leaving threads: they finish in microseconds.
                thread::yield_now();
                continue;
            }
            let until = if aborted { give_up } else { deadline };
            if let Ok(ended) = self.ended.recv_deadline(until) {
                self.leave(ended);
            }
        }
        if !aborted {
            // Nothing may enter the queue once every worker is gone.
            self.ctx.queue.abort();
        }
    }

    /// Returns the permits of the workers that have ended and are gone:
    /// a permit freed by the worker itself would let the next thread
    /// start while the old one is still exiting, and live threads could
    /// briefly exceed max_connections. Never waits: a worker whose task
    /// is still in /proc (the kernel takes a few microseconds after the
    /// thread stops) stays in `leaving` for the next round, so that short
    /// connections do not put a join or a /proc wait on the accept path.
    fn reap(&mut self) {
        while let Ok(ended) = self.ended.try_recv() {
            self.leave(ended);
        }
        if self.leaving.is_empty() {
            return;
        }
        let now = Instant::now();
        // At shutdown no thread is started any more: no need to wait for
        // /proc.
        let starting = self.listener.is_some();
        let mut i = 0;
        while i < self.leaving.len() {
            let l = &self.leaving[i];
            if l.gone(now) || (!starting && l.worker.handle.is_finished()) {
                self.leaving.swap_remove(i).finish();
            } else {
                i += 1;
            }
        }
    }

    /// A worker reported its end (its guard's last act).
    fn leave(&mut self, ended: Ended) {
        if let Some(worker) = self.live.remove(&ended.id) {
            self.leaving.push(Leaving {
                worker,
                task: ended.task,
                since: Instant::now(),
            });
        }
    }

    /// Workers not yet finished: running, or reported and leaving.
    fn unfinished(&self) -> usize {
        self.live.len() + self.leaving.len()
    }

    /// A permit if one is free or about to be: at the connection limit, a
    /// worker that has ended but is still leaving /proc is waited for
    /// (microseconds, at most `TASK_GONE_WAIT`). Only at the limit does
    /// the loop wait for a thread to leave.
    fn permit_now(&mut self) -> Option<Permit> {
        loop {
            self.reap();
            if let Some(p) = self.limiter.try_acquire() {
                return Some(p);
            }
            if self.leaving.is_empty() {
                return None;
            }
            thread::yield_now();
        }
    }

    /// A permit, waiting at most `timeout` for a worker to end.
    fn acquire(&mut self, timeout: Duration) -> Option<Permit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.permit_now() {
                return Some(p);
            }
            let ended = self.ended.recv_deadline(deadline).ok()?;
            self.leave(ended);
        }
    }

    /// Pauses while the queue is above the high watermark, until it is
    /// below the low one. Returns false if shutdown came first.
    fn wait_below_watermark(&mut self) -> bool {
        let depth = self.depth.get();
        if depth < self.pause_above {
            return true;
        }
        self.ctx.stats.accept_paused.store(true, Ordering::Relaxed);
        let since = Instant::now();
        // Every pause shows: one that starts within a second of the last
        // line gets its line as soon as the throttle allows.
        let mut warned = false;
        loop {
            if !warned && let Some(n) = self.ctx.alerts.accept_paused.ready() {
                warned = true;
                warn!(
                    "accept paused queue_depth={} queue_capacity={} pause_accept_above={}{}",
                    self.depth.get().max(depth),
                    self.depth.capacity(),
                    self.pause_above,
                    suppressed(n)
                );
            }
            if self.depth.get() < self.resume_below.max(1) {
                break;
            }
            self.liveness.accept_beat();
            if self.ctx.shutdown.wait_timeout(PAUSE_POLL) {
                self.ctx.stats.accept_paused.store(false, Ordering::Relaxed);
                return false;
            }
            self.reap();
        }
        self.ctx.stats.accept_paused.store(false, Ordering::Relaxed);
        if let Some(n) = self.ctx.alerts.accept_resumed.allow() {
            info!(
                "accept resumed queue_depth={} paused_for={:?}{}",
                self.depth.get(),
                since.elapsed(),
                suppressed(n)
            );
        }
        true
    }

    fn accept_error(&self, e: io::Error) {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
            // The peer gave up between SYN and accept: nothing to do.
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {}
            _ => {
                if let Some(n) = self.ctx.alerts.accept_error.allow() {
                    warn!("accept failed, backing off error=\"{e}\"{}", suppressed(n));
                }
                self.ctx.shutdown.wait_timeout(ACCEPT_ERROR_BACKOFF);
            }
        }
    }

    /// Whether `peer` may connect at all: with the PROXY protocol on, only
    /// the trusted proxies may.
    fn trusted(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted_proxies
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }

    /// The allow list and the per-IP cap for a direct client; with the
    /// PROXY protocol the peer is a trusted proxy, admitted as such.
    fn admit_direct(&self, peer: SocketAddr) -> Result<Option<IpSlot>, Refusal> {
        if self.trusted_proxies.is_some() {
            return Ok(None);
        }
        self.access.admit(peer.ip())
    }

    fn refuse_untrusted(&self, socket: Socket, peer: SocketAddr) {
        Stats::add(&self.ctx.stats.conns_total, 1);
        Stats::add(&self.ctx.stats.closed_proxy, 1);
        drop(socket);
        if let Some(n) = self.ctx.alerts.proxy_untrusted.allow() {
            warn!(
                "PROXY protocol: source is not a trusted proxy, closed peer={peer}{}",
                suppressed(n)
            );
        }
    }

    fn reject(&self, socket: Socket, peer: SocketAddr) {
        Stats::add(&self.ctx.stats.conns_rejected, 1);
        drop(socket);
        if let Some(n) = self.ctx.alerts.connection_limit.allow() {
            warn!(
                "connection limit reached, rejected peer={peer} max_connections={}{}",
                self.max_connections,
                suppressed(n)
            );
        }
    }

    /// Closes a connection `access` refused: no permit, no thread.
    fn refuse(&self, socket: Socket, peer: SocketAddr, refusal: Refusal) {
        let stats = &self.ctx.stats;
        Stats::add(&stats.conns_total, 1);
        drop(socket);
        let (counter, alert, why) = match refusal {
            Refusal::Denied => (
                &stats.conns_denied,
                &self.access.denied_alert,
                "source not in server.allow",
            ),
            Refusal::OverIpLimit => (
                &stats.conns_over_ip_limit,
                &self.access.over_ip_limit_alert,
                "over server.max_connections_per_ip",
            ),
        };
        Stats::add(counter, 1);
        if let Some(n) = alert.allow() {
            warn!(
                "connection refused at accept peer={peer} reason=\"{why}\"{}",
                suppressed(n)
            );
        }
    }

    fn spawn(&mut self, socket: Socket, peer: SocketAddr, permit: Permit, slot: Option<IpSlot>) {
        self.next_id += 1;
        let id = self.next_id;
        if let Err(e) = self.prepare(&socket) {
            debug!("conn setup failed id={id} peer={peer} error=\"{e}\"");
        }
        let stream = TcpStream::from(socket);
        Stats::add(&self.ctx.stats.conns_total, 1);
        Stats::add(&self.ctx.stats.conns_active, 1);
        debug!("conn open id={id} peer={peer}");
        let ctx = self.ctx.clone();
        let ended = self.ended_tx.clone();
        let tls = self.tls.clone();
        let access = self.access.clone();
        let protocol = self.protocol;
        let name = match protocol {
            Speaks::Plain => format!("fw-conn-{id}"),
            Speaks::Relp => format!("fw-relp-{id}"),
        };
        let spawned = threads::spawn(name, Some(WORKER_STACK), &self.panics, move || {
            // The source IP's count is the worker's: released as it
            // ends, not when the accept loop gets round to joining it.
            let _slot = slot;
            worker(id, peer, stream, ctx, tls, &access, ended, protocol)
        });
        match spawned {
            Ok(handle) => {
                let w = Worker { handle, permit };
                self.live.insert(id, w);
            }
            Err(e) => self.spawn_failed(peer, e),
        }
    }

    /// The closure was dropped with the error; the stream and the permit
    /// go as the caller drops them.
    fn spawn_failed(&self, peer: SocketAddr, e: io::Error) {
        Stats::sub(&self.ctx.stats.conns_active, 1);
        Stats::add(&self.ctx.stats.conns_rejected, 1);
        if let Some(n) = self.ctx.alerts.spawn_failed.allow() {
            error!(
                "cannot start a worker thread, connection closed peer={peer} error=\"{e}\"{}",
                suppressed(n)
            );
        }
    }

    /// Per-socket settings: keepalive to find dead peers. The read
    /// timeout is set by the worker (the listener's would be inherited).
    fn prepare(&self, socket: &Socket) -> io::Result<()> {
        socket.set_read_timeout(None)?;
        if !self.tcp_keepalive.is_zero() {
            let interval = self.tcp_keepalive.min(Duration::from_secs(10));
            let keepalive = TcpKeepalive::new()
                .with_time(self.tcp_keepalive)
                .with_interval(interval)
                .with_retries(3);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        Ok(())
    }
}

/// What a worker reports as it ends: its id, and its /proc task entry (to
/// see it gone) when /proc is there.
#[derive(Debug)]
struct Ended {
    id: u64,
    task: Option<PathBuf>,
}

/// The worker thread's body. Its guard reports the end to the accept loop
/// (also on unwind), which joins the thread and returns its permit.
#[allow(clippy::too_many_arguments)]
fn worker(
    id: u64,
    peer: SocketAddr,
    stream: TcpStream,
    ctx: Arc<ConnContext>,
    tls: Option<Arc<ServerTls>>,
    access: &Access,
    ended: Sender<Ended>,
    protocol: Speaks,
) {
    let _alive = WorkerGuard::new(&ctx.stats, id, ended);
    let started = Instant::now();
    // The PROXY header comes first, before TLS (SPEC); the client it
    // names is the peer from here on, held to the allow list and the
    // per-IP cap like a direct one (its slot lives as long as this worker).
    let (peer, _client_slot) = match client(&ctx, access, &stream, peer, started) {
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
    let mut reader = match &tls {
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
        Speaks::Plain => conn::serve(&ctx, &mut reader, peer),
        Speaks::Relp => crate::relp::session::serve(&ctx, &mut reader, peer),
    };
    if close == conn::Close::Shutdown {
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
) -> Result<(SocketAddr, Option<IpSlot>), conn::Close> {
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
            return Err(conn::Close::Shutdown);
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
            return Err(conn::Close::Proxy);
        }
    };
    match access.admit(client.ip()) {
        Ok(slot) => Ok((client, slot)),
        Err(refusal) => {
            let stats = &ctx.stats;
            let (counter, alert, why) = match refusal {
                Refusal::Denied => (
                    &stats.conns_denied,
                    &access.denied_alert,
                    "source not in server.allow",
                ),
                Refusal::OverIpLimit => (
                    &stats.conns_over_ip_limit,
                    &access.over_ip_limit_alert,
                    "over server.max_connections_per_ip",
                ),
            };
            Stats::add(counter, 1);
            if let Some(n) = alert.allow() {
                warn!(
                    "connection refused after its PROXY header peer={client} proxy={peer} reason=\"{why}\"{}",
                    suppressed(n)
                );
            }
            // Counted above (not closed_proxy); the label is for the
            // debug line only.
            Err(conn::Close::Proxy)
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
