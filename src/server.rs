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
//! handshake runs in the worker thread (src/tls/). The worker's life, from
//! its PROXY header to its close, is src/conn/worker.rs.
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
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, info, warn};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::access::{IpSlot, Refusal};
use crate::alerts::suppressed;
use crate::config::{Config, OnConnectionLimit};
use crate::conn::ConnContext;
use crate::conn::worker::{self, Accepted, Ended, Shared, Speaks};
use crate::limiter::{Limiter, Permit};
use crate::queue::QueueDepth;
use crate::stats::Stats;
use crate::systemd::Liveness;
use crate::threads::Panics;

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
    /// When accepting pauses and resumes.
    watermark: Watermark,
    /// With `server.proxy_protocol`: the sources whose headers are
    /// believed; None: no PROXY protocol.
    trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// What every worker shares (counters, alerts, shutdown, the queue's
    /// sending end, access, TLS); dropped by this loop when it returns,
    /// so the queue disconnects once the last worker is gone too.
    shared: Shared,
    /// The workers started and not yet joined, and their permits.
    workers: Workers,
    /// A permit taken before an accept whose connection was then refused
    /// by `access`: kept for the next one.
    spare: Option<Permit>,
    /// Where a panicking worker reports (it starts the shutdown).
    panics: Panics,
    /// The last connection id handed out.
    next_id: u64,
    /// The listen backlog: bounds the accepts of the shutdown drain.
    backlog: usize,
    /// The listener was passed by the service manager, which keeps it
    /// open after we exit: clients still in its backlog at shutdown are
    /// left there for the next process (src/activation.rs).
    passed: bool,
    /// Where the loop shows it is alive (the watchdog, src/systemd.rs).
    liveness: Arc<Liveness>,
}

/// The queue depths between which accepting pauses and resumes.
struct Watermark {
    /// The memory queue: an outage that the spool absorbs must not pause
    /// accepting.
    depth: QueueDepth,
    pause_above: usize,
    resume_below: usize,
}

/// The worker threads the loop has started and not joined yet, with
/// their permits: a permit returns only once its thread is gone.
struct Workers {
    limiter: Limiter,
    /// Running, with their permits.
    live: HashMap<u64, Worker>,
    /// Reported their end and whose task may still be in /proc: their
    /// permits return once it is gone (see [`Workers::reap`]).
    leaving: Vec<Leaving>,
    /// Each worker's guard sends its end here.
    ended_tx: Sender<Ended>,
    ended: Receiver<Ended>,
    /// Threads are still being started: a reaped one waits to leave /proc
    /// (false at shutdown, once the listener is closed).
    starting: bool,
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
    /// `limiter` and `shared.access` are shared by every listener: one
    /// connection bound and one per-IP count for `[server]` and `[relp]`.
    /// The loop pauses on `depth`.
    pub fn new(
        config: &Config,
        listener: Socket,
        depth: QueueDepth,
        limiter: Limiter,
        shared: Shared,
        panics: Panics,
    ) -> Acceptor {
        let capacity = config.queue.capacity as f64;
        Acceptor {
            listener: Some(listener),
            on_connection_limit: config.limits.on_connection_limit,
            max_connections: config.limits.max_connections,
            tcp_keepalive: config.server.tcp_keepalive,
            watermark: Watermark {
                depth,
                pause_above: ((config.queue.pause_accept_above * capacity).ceil() as usize).max(1),
                resume_below: (config.queue.resume_accept_below * capacity).ceil() as usize,
            },
            // Validated before start: a list that did not parse never
            // gets here (and an empty one would only refuse everyone).
            // The RELP listener takes no PROXY header.
            trusted_proxies: (config.server.proxy_protocol && shared.protocol == Speaks::Plain)
                .then(|| config.trusted_proxies().unwrap_or_default()),
            shared,
            workers: Workers::new(limiter),
            spare: None,
            panics,
            next_id: 0,
            backlog: config.server.backlog as usize,
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

    fn ctx(&self) -> &ConnContext {
        &self.shared.ctx
    }

    /// The accept loop; returns at shutdown.
    pub fn run(mut self) {
        while !self.ctx().shutdown.is_triggered() {
            self.liveness.accept_beat();
            self.workers.reap();
            if !self.wait_below_watermark() {
                break;
            }
            let permit = match (self.spare.take(), self.on_connection_limit) {
                (Some(p), _) => Some(p),
                (None, OnConnectionLimit::Wait) => match self.workers.acquire(POLL) {
                    Some(p) => Some(p),
                    None => continue,
                },
                (None, OnConnectionLimit::Reject) => None,
            };
            let (socket, peer, slot) = match self.admit_next() {
                Ok(Some(admitted)) => admitted,
                Ok(None) => {
                    self.spare = permit;
                    continue;
                }
                Err(e) => {
                    self.spare = permit;
                    self.accept_error(e);
                    continue;
                }
            };
            let permit = match permit.or_else(|| self.workers.permit_now()) {
                Some(p) => p,
                None => {
                    self.reject(socket, peer);
                    continue;
                }
            };
            self.spawn(socket, peer, permit, slot);
        }
        self.ctx().wake.fire();
        if !self.passed {
            self.drain_backlog();
        }
        // No new connections now: refuse them at once.
        self.listener = None;
        self.workers.starting = false;
        self.drain_workers();
        debug!("accept loop stopped");
    }

    /// Accepts one connection and holds it to the trusted proxies, the
    /// allowlist and the per-IP cap: Ok(None) when it was refused (closed,
    /// counted and warned here) or came from no IP address. With the
    /// PROXY protocol the allowlist and the cap apply to the client the
    /// header names (in the worker), not to the proxy's own address (SPEC
    /// "Access control and TLS").
    fn admit_next(&mut self) -> io::Result<Option<(Socket, SocketAddr, Option<IpSlot>)>> {
        let Some(listener) = &self.listener else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let (socket, addr) = listener.accept()?;
        let Some(peer) = addr.as_socket() else {
            return Ok(None);
        };
        if !self.trusted(peer) {
            self.refuse_untrusted(socket, peer);
            return Ok(None);
        }
        match self.admit_direct(peer) {
            Ok(slot) => Ok(Some((socket, peer, slot))),
            Err(refusal) => {
                self.refuse(socket, peer, refusal);
                Ok(None)
            }
        }
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
        let deadline = self.ctx().drain_deadline();
        // Bounded even if clients keep arriving: what the queue can have
        // held at the signal, plus slack for those that raced in.
        for _ in 0..self.backlog + self.max_connections {
            let (socket, peer, slot) = match self.admit_next() {
                Ok(Some(admitted)) => admitted,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock: the queue is empty
            };
            // A permit as workers finish their drain; none by the
            // deadline: the connection is refused like any other.
            match self.workers.acquire_by(deadline) {
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
        let deadline = self.ctx().drain_deadline();
        let give_up = deadline + WORKER_EXIT_MARGIN;
        let mut aborted = false;
        loop {
            self.workers.reap();
            if self.workers.unfinished() == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline && !aborted {
                self.ctx().queue.abort();
                aborted = true;
            }
            if now >= give_up {
                error!(
                    "{} connections still open {:?} after the drain deadline; exiting without them",
                    self.workers.live.len(),
                    WORKER_EXIT_MARGIN
                );
                return;
            }
            if self.workers.live.is_empty() {
                // Only leaving threads: they finish in microseconds.
                thread::yield_now();
                continue;
            }
            self.workers
                .wait_for_end(if aborted { give_up } else { deadline });
        }
        if !aborted {
            // Nothing may enter the queue once every worker is gone.
            self.ctx().queue.abort();
        }
    }

    /// Pauses while the queue is above the high watermark, until it is
    /// below the low one. Returns false if shutdown came first.
    fn wait_below_watermark(&mut self) -> bool {
        let mark = &self.watermark;
        let depth = mark.depth.get();
        if depth < mark.pause_above {
            return true;
        }
        let ctx = &*self.shared.ctx;
        ctx.stats.accept_paused.store(true, Ordering::Relaxed);
        let since = Instant::now();
        // Every pause shows: one that starts within a second of the last
        // line gets its line as soon as the throttle allows.
        let mut warned = false;
        loop {
            if !warned && let Some(n) = ctx.alerts.accept_paused.ready() {
                warned = true;
                warn!(
                    "accept paused queue_depth={} queue_capacity={} pause_accept_above={}{}",
                    mark.depth.get().max(depth),
                    mark.depth.capacity(),
                    mark.pause_above,
                    suppressed(n)
                );
            }
            if mark.depth.get() < mark.resume_below.max(1) {
                break;
            }
            self.liveness.accept_beat();
            if ctx.shutdown.wait_timeout(PAUSE_POLL) {
                ctx.stats.accept_paused.store(false, Ordering::Relaxed);
                return false;
            }
            self.workers.reap();
        }
        ctx.stats.accept_paused.store(false, Ordering::Relaxed);
        if let Some(n) = ctx.alerts.accept_resumed.allow() {
            info!(
                "accept resumed queue_depth={} paused_for={:?}{}",
                mark.depth.get(),
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
                if let Some(n) = self.ctx().alerts.accept_error.allow() {
                    warn!("accept failed, backing off error=\"{e}\"{}", suppressed(n));
                }
                self.ctx().shutdown.wait_timeout(ACCEPT_ERROR_BACKOFF);
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
        self.shared.access.admit(peer.ip())
    }

    fn refuse_untrusted(&self, socket: Socket, peer: SocketAddr) {
        Stats::add(&self.ctx().stats.conns_total, 1);
        Stats::add(&self.ctx().stats.closed_proxy, 1);
        drop(socket);
        if let Some(n) = self.ctx().alerts.proxy_untrusted.allow() {
            warn!(
                "PROXY protocol: source is not a trusted proxy, closed peer={peer}{}",
                suppressed(n)
            );
        }
    }

    fn reject(&self, socket: Socket, peer: SocketAddr) {
        Stats::add(&self.ctx().stats.conns_rejected, 1);
        drop(socket);
        if let Some(n) = self.ctx().alerts.connection_limit.allow() {
            warn!(
                "connection limit reached, rejected peer={peer} max_connections={}{}",
                self.max_connections,
                suppressed(n)
            );
        }
    }

    /// Closes a connection `access` refused: no permit, no thread.
    fn refuse(&self, socket: Socket, peer: SocketAddr, refusal: Refusal) {
        Stats::add(&self.ctx().stats.conns_total, 1);
        drop(socket);
        if let Some((n, why)) = self.shared.access.refused(refusal, &self.ctx().stats) {
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
        Stats::add(&self.ctx().stats.conns_total, 1);
        Stats::add(&self.ctx().stats.conns_active, 1);
        debug!("conn open id={id} peer={peer}");
        let conn = Accepted {
            id,
            peer,
            stream,
            slot,
        };
        match worker::start(&self.shared, conn, &self.workers.ended_tx, &self.panics) {
            Ok(handle) => {
                self.workers.live.insert(id, Worker { handle, permit });
            }
            Err(e) => self.spawn_failed(peer, e),
        }
    }

    /// The closure was dropped with the error; the stream and the permit
    /// go as the caller drops them.
    fn spawn_failed(&self, peer: SocketAddr, e: io::Error) {
        Stats::sub(&self.ctx().stats.conns_active, 1);
        Stats::add(&self.ctx().stats.conns_rejected, 1);
        if let Some(n) = self.ctx().alerts.spawn_failed.allow() {
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

impl Workers {
    fn new(limiter: Limiter) -> Workers {
        let (ended_tx, ended) = crossbeam_channel::unbounded();
        Workers {
            limiter,
            live: HashMap::new(),
            leaving: Vec::new(),
            ended_tx,
            ended,
            starting: true,
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
        let mut i = 0;
        while i < self.leaving.len() {
            let l = &self.leaving[i];
            // At shutdown no thread is started any more: no need to wait
            // for /proc.
            if l.gone(now) || (!self.starting && l.worker.handle.is_finished()) {
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

    /// Waits until `until` for a worker to report its end.
    fn wait_for_end(&mut self, until: Instant) {
        if let Ok(ended) = self.ended.recv_deadline(until) {
            self.leave(ended);
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

    /// A permit as workers end, in `POLL` slices until `deadline`.
    fn acquire_by(&mut self, deadline: Instant) -> Option<Permit> {
        loop {
            if let Some(p) = self.acquire(POLL) {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
}
