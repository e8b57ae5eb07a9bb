//! floodwall: a TCP message-ingest daemon whose threads cannot pile up.
//!
//! The data flow, one thread kind per step:
//!
//! ```text
//! fw-accept ──permit──▶ fw-conn-<id> (one per connection, <= max_connections)
//!                          read → frame → send_timeout(batch)
//!                                             │ bounded queue (messages)
//!                                             ▼
//!                                       fw-sink-<n> → stdout | file | tcp | nats | relp | null
//! fw-stats: logs the counters every stats_interval
//! ```
//!
//! With `[spool]`, one more step sits between the queue and the sinks:
//! `fw-spool` appends batches to segment files on disk (returning their
//! queue credits once appended) and the sinks read them back from the
//! [`spool`]; the overload layers then act only once the spool is full.
//!
//! Each layer bounds one resource: the [`limiter`] bounds threads, the
//! [`queue`] bounds memory, `send_timeout` bounds how long a worker can be
//! stuck, the accept loop pauses above the queue's high watermark, and
//! every message that is not delivered is counted in [`stats`].
//!
//! [`start`] brings a daemon up (bind, open sinks, spawn threads) and
//! returns a [`Daemon`]; [`Daemon::wait`] blocks until the [`Shutdown`]
//! handle fires, then drains (connections read to their clients' EOF,
//! then the queue) within `shutdown.timeout` and returns a [`Report`].
//! main turns that into an exit code. A panic in any floodwall thread
//! fires the shutdown too ([`threads`]) and makes the exit code 1.

// Denied, not forbidden: src/activation.rs owns the descriptors systemd
// passes, by number, which only `unsafe` can express (its one block says
// why it is sound).
#![deny(unsafe_code)]

pub mod access;
pub mod activation;
pub mod alerts;
pub mod config;
pub mod conn;
pub mod histogram;
pub mod limiter;
pub mod metrics;
pub mod queue;
pub mod read_buf;
pub mod relp;
pub mod rlimits;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod stats;
pub mod systemd;
pub mod threads;
pub mod tls;
pub mod wake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info};

pub use config::{Config, ConfigError, Settings};
pub use shutdown::{Reopen, Shutdown};
pub use sink::Sink;
pub use stats::Snapshot;

use access::Access;
use alerts::Alerts;
use conn::ConnContext;
use conn::worker::{Shared, Speaks};
use limiter::Limiter;
use queue::QueueDepth;
use queue::{QueueReceiver, QueueSender};
use server::Acceptor;
use sink::SinkContext;
use socket2::Socket;
use stats::Stats;
use threads::Panics;
use tls::ServerTls;
use wake::Wake;

/// After the drain deadline, how long a sink thread gets to finish the
/// write it is in (see [`Daemon::wait`]).
const SINK_EXIT_MARGIN: Duration = Duration::from_millis(100);

/// Why the daemon could not start. Each variant has a fixed exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("relp.listen: cannot listen on {addr}: {source}")]
    RelpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    MetricsBind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open sink: {0}")]
    Sink(std::io::Error),
    #[error("cannot use the spool directory: {0}")]
    Spool(std::io::Error),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot create the shutdown wake-up socket pair: {0}")]
    Wake(std::io::Error),
}

impl Error {
    /// SPEC.md exit codes: 2 configuration, 3 bind or sink at start-up.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Tls(_) => 2,
            Error::Bind { .. }
            | Error::RelpBind { .. }
            | Error::MetricsBind { .. }
            | Error::Sink(_)
            | Error::Spool(_)
            | Error::Thread { .. }
            | Error::Wake(_) => 3,
        }
    }
}

/// How a shutdown ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Nothing was lost: `lost` is 0.
    pub drained: bool,
    /// `dropped_shutdown` + messages still queued at the deadline.
    pub lost: u64,
    /// Threads that panicked (their panic started the shutdown).
    pub panicked: Vec<String>,
    /// The final counters.
    pub stats: Snapshot,
}

impl Report {
    /// 0 when drained and no thread panicked, else 1.
    pub fn exit_code(&self) -> u8 {
        if self.drained && self.panicked.is_empty() {
            0
        } else {
            1
        }
    }
}

/// A running daemon.
pub struct Daemon {
    local_addr: SocketAddr,
    relp_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shutdown_timeout: Duration,
    /// The listener's TLS, reloaded on SIGHUP.
    tls: Option<Arc<ServerTls>>,
    /// What every thread shares: the shutdown, counters, queue depths,
    /// the wake-up, the panic record.
    common: Common,
    accept: JoinHandle<()>,
    /// The RELP listener's accept loop, with `[relp]`.
    relp_accept: Option<JoinHandle<()>>,
    stats_thread: Option<JoinHandle<()>>,
    /// Every sink thread holds a sender; all dropped = all sinks done.
    sinks_done: crossbeam_channel::Receiver<()>,
    sink_threads: Vec<JoinHandle<()>>,
    /// The spool writer (with `[spool]`), stopped after the sinks.
    spool_writer: Stoppable,
    /// fw-metrics, stopped after the drain (the endpoint serves through it).
    metrics: Stoppable,
    /// fw-notify (under systemd only), stopped after the drain.
    notifier: Stoppable,
}

/// `--check-config`'s look beyond the file: what start-up would fail on
/// with exit 3. Binds the listener and the metrics port (and lets them
/// go), opens the file sink's path for appending, and writes a file in
/// the spool directory. A path that did not exist is left as it was.
pub fn probe(settings: &Settings) -> Result<(), Error> {
    let addr = settings.server.listen;
    if addr.port() != 0 {
        server::bind(addr, 1).map_err(|source| Error::Bind { addr, source })?;
    }
    if let Some(addr) = settings.relp.map(|r| r.listen)
        && addr.port() != 0
    {
        server::bind(addr, 1).map_err(|source| Error::RelpBind { addr, source })?;
    }
    if let Some(addr) = settings.metrics
        && addr.port() != 0
    {
        metrics::bind(addr).map_err(|source| Error::MetricsBind {
            addr: addr.to_string(),
            source,
        })?;
    }
    if let config::Destination::File { path, .. } = &settings.sink.destination {
        sink::FileSink::probe(path).map_err(Error::Sink)?;
    }
    if let Some(spool) = &settings.config.spool {
        spool::probe(&spool.dir).map_err(Error::Spool)?;
    }
    Ok(())
}

/// Runs a daemon until `shutdown` fires; returns how the drain went.
pub fn run(config: Config, shutdown: Shutdown) -> Result<Report, Error> {
    Ok(start(config, shutdown)?.wait())
}

/// Validates `config`, binds, opens the configured sinks and starts
/// every thread.
pub fn start(config: Config, shutdown: Shutdown) -> Result<Daemon, Error> {
    start_settings(config.validate()?, shutdown)
}

/// Like [`start`], with the configuration validated already (main's,
/// loaded once with [`Settings::load`]).
pub fn start_settings(settings: Settings, shutdown: Shutdown) -> Result<Daemon, Error> {
    // Every TLS file is loaded before anything starts: a bad one is a
    // configuration error (exit 2), never a half-started daemon.
    tls::check_files(&settings.config)?;
    let sinks = sink::open(&settings.sink).map_err(Error::Sink)?;
    start_workers(settings, shutdown, sinks)
}

/// Like [`start`], with sinks supplied by the caller (one per sink
/// worker): tests use it to stall or observe the sink.
pub fn start_with_sinks(
    config: Config,
    shutdown: Shutdown,
    sinks: Vec<Box<dyn Sink>>,
) -> Result<Daemon, Error> {
    start_workers(
        config.validate()?,
        shutdown,
        sinks.into_iter().map(Into::into).collect(),
    )
}

fn start_workers(
    settings: Settings,
    shutdown: Shutdown,
    sinks: Vec<sink::SinkWorker>,
) -> Result<Daemon, Error> {
    let Settings {
        config,
        server: server_settings,
        sink: sink_settings,
        relp,
        metrics,
    } = settings;
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(ServerTls::new(t)?)),
        None => None,
    };
    let bound = Bound::bind(
        &config,
        server_settings.listen,
        relp.map(|r| r.listen),
        metrics,
    )?;
    rlimits::check(&config);
    let stats = Arc::new(Stats::default());
    let (spool_reader, spool_writer) = open_spool(&config, &stats)?.unzip();
    let (tx, rx) = queue::queue(config.queue.capacity);
    let memory = tx.depth();
    let common = Common {
        depth: match &spool_reader {
            Some(s) => memory.with_spooled(s.spooled()),
            None => memory.clone(),
        },
        memory,
        stats,
        alerts: Arc::new(Alerts::default()),
        reopen: Reopen::default(),
        abandon: Arc::new(AtomicBool::new(false)),
        wake: Arc::new(Wake::new().map_err(Error::Wake)?),
        panics: Panics::new(shutdown.clone()),
        shutdown,
    };
    let liveness = Arc::new(systemd::Liveness::new(sinks.len()));

    // The threads, downstream first: nothing is accepted before the
    // sinks (and the spool writer) read the queue.
    let (sink_threads, sinks_done) =
        common.spawn_sinks(&sink_settings, sinks, &rx, spool_reader, &liveness)?;
    let spool_thread = common.spawn_spool_writer(spool_writer, rx)?;
    // Both listeners share one connection bound and one per-IP count.
    let limiter = Limiter::new(config.limits.max_connections);
    let access = Arc::new(Access::new(
        server_settings.allow,
        config.server.max_connections_per_ip,
    ));
    let relp_accept = match bound.relp {
        Some(listener) => {
            let mut ctx = common.conn_context(&config, tx.clone());
            ctx.proxy_header_timeout = None; // RELP takes no PROXY header
            let relp_tls = config.relp.as_ref().is_some_and(|r| r.tls);
            let shared = Shared {
                ctx: Arc::new(ctx),
                access: access.clone(),
                tls: tls.clone().filter(|_| relp_tls),
                protocol: Speaks::Relp,
            };
            // The watchdog vouches for the main accept loop only.
            let passed = bound.relp_passed;
            Some(common.spawn_accept(&config, listener, shared, limiter.clone(), passed, None)?)
        }
        None => None,
    };
    let shared = Shared {
        ctx: Arc::new(common.conn_context(&config, tx)),
        access,
        tls: tls.clone(),
        protocol: Speaks::Plain,
    };
    let passed = bound.server_passed;
    let beat = Some(liveness.clone());
    let accept = common.spawn_accept(&config, bound.server, shared, limiter, passed, beat)?;
    let stats_thread = common.spawn_stats_line(config.log.stats_interval)?;
    info!("listening addr={}", bound.local_addr);
    if let Some(addr) = bound.relp_addr {
        // Not "listening addr=": SPEC gives that line to [server] alone.
        info!("relp listener addr={addr}");
    }
    let metrics = common.spawn_metrics(bound.metrics)?;
    let notifier = common.spawn_notifier(liveness)?;
    Ok(Daemon {
        local_addr: bound.local_addr,
        relp_addr: bound.relp_addr,
        metrics_addr: bound.metrics_addr,
        shutdown_timeout: config.shutdown.timeout,
        tls,
        common,
        accept,
        relp_accept,
        stats_thread,
        sinks_done,
        sink_threads,
        spool_writer: spool_thread,
        metrics,
        notifier,
    })
}

/// Opens the spool (with `[spool]`): its readers for the sinks, its
/// writer for `fw-spool`.
fn open_spool(
    config: &Config,
    stats: &Arc<Stats>,
) -> Result<Option<(Arc<spool::Spool>, spool::SpoolWriter)>, Error> {
    let Some(c) = &config.spool else {
        return Ok(None);
    };
    let settings = spool::Settings {
        dir: c.dir.clone(),
        max_bytes: c.max_bytes,
        segment_bytes: c.segment_bytes,
        sync: c.sync,
    };
    spool::open(settings, stats.clone())
        .map(Some)
        .map_err(Error::Spool)
}

/// The sockets start-up binds, or takes from the service manager
/// (src/activation.rs), before any thread starts: a taken port is exit 3
/// with nothing started.
struct Bound {
    server: Socket,
    /// The address actually bound (the real port when 0 was asked).
    local_addr: SocketAddr,
    /// `server.listen` is a socket the service manager passed.
    server_passed: bool,
    relp: Option<Socket>,
    relp_addr: Option<SocketAddr>,
    relp_passed: bool,
    metrics: Option<Socket>,
    metrics_addr: Option<SocketAddr>,
}

impl Bound {
    fn bind(
        config: &Config,
        addr: SocketAddr,
        relp: Option<SocketAddr>,
        metrics: Option<SocketAddr>,
    ) -> Result<Bound, Error> {
        // A listener passed by the service manager is used as it is;
        // else floodwall binds its own.
        let activated = activation::take(activation::SERVER);
        let server_passed = activated.is_some();
        let server = match activated {
            Some(socket) => server::adopt(socket, config.server.backlog),
            None => server::bind(addr, config.server.backlog),
        }
        .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = bound_addr(&server).unwrap_or(addr);
        let metrics = match metrics {
            Some(addr) => Some(
                match activation::take(activation::METRICS) {
                    Some(socket) => metrics::adopt(socket),
                    None => metrics::bind(addr),
                }
                .map_err(|source| Error::MetricsBind {
                    addr: addr.to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let mut relp_passed = false;
        let relp = match relp {
            Some(addr) => Some(
                match activation::take(activation::RELP) {
                    Some(socket) => {
                        relp_passed = true;
                        server::adopt(socket, config.server.backlog)
                    }
                    None => server::bind(addr, config.server.backlog),
                }
                .inspect(relp::tune_listener)
                .map_err(|source| Error::RelpBind { addr, source })?,
            ),
            None => None,
        };
        if server_passed {
            info!("socket activation: server.listen is the passed socket {local_addr}");
        }
        for name in activation::leftover() {
            log::warn!(
                "socket activation: no listener is configured for the passed socket {name:?}"
            );
        }
        Ok(Bound {
            relp_addr: relp.as_ref().and_then(bound_addr),
            metrics_addr: metrics.as_ref().and_then(bound_addr),
            server,
            local_addr,
            server_passed,
            relp,
            relp_passed,
            metrics,
        })
    }
}

fn bound_addr(socket: &Socket) -> Option<SocketAddr> {
    socket.local_addr().ok().and_then(|a| a.as_socket())
}

/// What the daemon's threads share, made once by `start_workers` and kept
/// by the [`Daemon`] for its drain.
struct Common {
    /// Fires the shutdown; everything else watches it.
    shutdown: Shutdown,
    stats: Arc<Stats>,
    alerts: Arc<Alerts>,
    /// The depth stats report: the memory queue plus, with a spool, what
    /// is spooled and not yet delivered.
    depth: QueueDepth,
    /// The memory queue alone: what a shutdown loses if it is not empty,
    /// and what the accept loops pause on (an outage that the spool
    /// absorbs must not pause accepting).
    memory: QueueDepth,
    reopen: Reopen,
    /// Set at the drain deadline: sinks stop retrying.
    abandon: Arc<AtomicBool>,
    /// Fired as the shutdown starts: wakes every sleeping worker.
    wake: Arc<Wake>,
    /// Threads that panicked; shared with every spawned thread.
    panics: Panics,
}

impl Common {
    /// A named thread whose panic fires the shutdown.
    fn spawn(
        &self,
        name: impl Into<String>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<JoinHandle<()>, Error> {
        threads::spawn(name.into(), None, &self.panics, f).map_err(|source| Error::Thread {
            name: "fw-*",
            source,
        })
    }

    /// `fw-sink-<n>`, one per sink worker. Each holds a `done` sender:
    /// all dropped (the returned receiver disconnects) = all sinks done.
    fn spawn_sinks(
        &self,
        sink_settings: &config::SinkSettings,
        sinks: Vec<sink::SinkWorker>,
        queue: &QueueReceiver,
        spool: Option<Arc<spool::Spool>>,
        liveness: &Arc<systemd::Liveness>,
    ) -> Result<(Vec<JoinHandle<()>>, crossbeam_channel::Receiver<()>), Error> {
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let tick = sink::tick(sink_settings);
        let mut threads = Vec::new();
        for (n, sink) in sinks.into_iter().enumerate() {
            let ctx = SinkContext {
                queue: queue.clone(),
                stats: self.stats.clone(),
                alerts: self.alerts.clone(),
                reopen: self.reopen.clone(),
                tick,
                abandon: self.abandon.clone(),
                shutdown: self.shutdown.clone(),
                spool: spool.clone(),
                liveness: liveness.clone(),
                worker: n,
            };
            let done = done_tx.clone();
            threads.push(self.spawn(format!("fw-sink-{n}"), move || {
                let _done = done;
                sink.run(ctx);
            })?);
        }
        Ok((threads, done))
    }

    /// `fw-spool` (with `[spool]`): the memory queue's only reader when
    /// spooling, stopped after the sinks. Takes the last receiver: the
    /// queue is read by the sinks and this writer only.
    fn spawn_spool_writer(
        &self,
        writer: Option<spool::SpoolWriter>,
        queue: QueueReceiver,
    ) -> Result<Stoppable, Error> {
        let Some(writer) = writer else {
            return Ok(Stoppable::none());
        };
        let abandon = self.abandon.clone();
        Stoppable::start(|stop| self.spawn("fw-spool", move || writer.run(queue, abandon, stop)))
    }

    /// The settings, counters and queue end every connection worker of
    /// one listener shares.
    fn conn_context(&self, config: &Config, queue: QueueSender) -> ConnContext {
        ConnContext::new(
            config,
            queue,
            self.stats.clone(),
            self.alerts.clone(),
            self.shutdown.clone(),
            self.wake.clone(),
        )
    }

    /// `fw-accept` (`fw-accept-relp` for `[relp]`): an accept loop, which
    /// starts one worker per connection. It pauses on the memory queue;
    /// `passed`: the listener came from the service manager; `beat`: the
    /// watchdog's liveness, which it beats as it goes round.
    fn spawn_accept(
        &self,
        config: &Config,
        listener: Socket,
        shared: Shared,
        limiter: Limiter,
        passed: bool,
        beat: Option<Arc<systemd::Liveness>>,
    ) -> Result<JoinHandle<()>, Error> {
        let name = match shared.protocol {
            Speaks::Plain => "fw-accept",
            Speaks::Relp => "fw-accept-relp",
        };
        let mut acceptor = Acceptor::new(
            config,
            listener,
            self.memory.clone(),
            limiter,
            shared,
            self.panics.clone(),
        )
        .passed(passed);
        if let Some(liveness) = beat {
            acceptor = acceptor.liveness(liveness);
        }
        self.spawn(name, move || acceptor.run())
    }

    /// `fw-stats`: the periodic stats line (none when the interval is 0).
    fn spawn_stats_line(&self, interval: Duration) -> Result<Option<JoinHandle<()>>, Error> {
        if interval.is_zero() {
            return Ok(None);
        }
        let (stats, depth, shutdown) = (
            self.stats.clone(),
            self.depth.clone(),
            self.shutdown.clone(),
        );
        let thread = self.spawn("fw-stats", move || {
            while !shutdown.wait_timeout(interval) {
                info!("{}", stats.snapshot(&depth));
            }
        })?;
        Ok(Some(thread))
    }

    /// `fw-metrics` (with `metrics.listen`): it serves through the drain.
    fn spawn_metrics(&self, listener: Option<Socket>) -> Result<Stoppable, Error> {
        let Some(listener) = listener else {
            return Ok(Stoppable::none());
        };
        Stoppable::start(|stop| {
            metrics::Endpoint::new(
                listener,
                self.stats.clone(),
                self.depth.clone(),
                self.shutdown.clone(),
                stop,
            )
            .spawn(&self.panics)
            .map_err(|source| Error::Thread {
                name: "fw-metrics",
                source,
            })
        })
    }

    /// `fw-notify` (under a service manager only): the watchdog's pings
    /// and the drain's status.
    fn spawn_notifier(&self, liveness: Arc<systemd::Liveness>) -> Result<Stoppable, Error> {
        if !systemd::supervised() {
            return Ok(Stoppable::none());
        }
        Stoppable::start(|stop| {
            systemd::Notifier {
                liveness,
                stats: self.stats.clone(),
                depth: self.depth.clone(),
                shutdown: self.shutdown.clone(),
                stop,
            }
            .spawn(&self.panics)
            .map_err(|source| Error::Thread {
                name: "fw-notify",
                source,
            })
        })
    }
}

/// A thread that runs until its stop flag is set (the spool writer, the
/// metrics endpoint, the systemd notifier): [`Daemon::wait`] stops each
/// at its point of the drain, then joins it.
struct Stoppable {
    /// The thread looks at it between its bounded waits.
    stop: Arc<AtomicBool>,
    /// None when its part is not configured.
    thread: Option<JoinHandle<()>>,
}

impl Stoppable {
    fn none() -> Stoppable {
        Stoppable {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Starts the thread `spawn` makes, handing it the stop flag.
    fn start(
        spawn: impl FnOnce(Arc<AtomicBool>) -> Result<JoinHandle<()>, Error>,
    ) -> Result<Stoppable, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        Ok(Stoppable {
            thread: Some(spawn(stop.clone())?),
            stop,
        })
    }

    /// Tells the thread to end and joins it (a panic was logged and
    /// recorded by its guard already).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread {
            let _ = t.join();
        }
    }
}

impl Daemon {
    /// The address actually bound (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The RELP listener's bound address, with `[relp]`.
    pub fn relp_addr(&self) -> Option<SocketAddr> {
        self.relp_addr
    }

    /// The metrics endpoint's bound address, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn stats(&self) -> Snapshot {
        self.common.stats.snapshot(&self.common.depth)
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.common.shutdown.clone()
    }

    /// The handle SIGHUP pokes: sinks reopen their files.
    pub fn reopen_handle(&self) -> Reopen {
        self.common.reopen.clone()
    }

    /// The listener's TLS (None for plaintext): SIGHUP reloads its files.
    pub fn tls_handle(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// What a panicking thread reports to: for threads spawned outside
    /// the library (main's signal thread) with [`threads::spawn`].
    pub fn panics(&self) -> Panics {
        self.common.panics.clone()
    }

    /// Blocks until shutdown is triggered, then drains (SPEC.md
    /// "Shutdown"): stop accepting; each connection reads on until its
    /// client's EOF, a short quiet grace or the deadline (the accept loop
    /// joins them); the sinks write what is queued until the deadline.
    /// Logs the final stats and shutdown lines.
    pub fn wait(self) -> Report {
        self.common.shutdown.wait();
        self.common.wake.fire();
        systemd::stopping(&systemd::drain_status(
            &self.common.stats,
            &self.common.depth,
        ));
        let deadline = self
            .common
            .shutdown
            .deadline(self.shutdown_timeout)
            .unwrap_or_else(|| Instant::now() + self.shutdown_timeout);
        info!(
            "shutting down, draining connections and the queue timeout={:?}",
            self.shutdown_timeout
        );
        // Returns once every worker has ended (or shortly after the
        // deadline, when the queue is aborted).
        // A panic was logged by the hook and recorded by its guard
        // (src/threads.rs): it shows in `panicked` below.
        let _ = self.accept.join();
        if let Some(t) = self.relp_accept {
            let _ = t.join();
        }
        let sinks_finished = matches!(
            self.sinks_done.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if sinks_finished {
            for t in self.sink_threads {
                let _ = t.join(); // a panic was reported by its guard
            }
        } else {
            // Past the deadline: sinks take nothing more. One still
            // finishing a write gets a moment, so that what it wrote is
            // counted delivered, not lost; one stuck in a write stays
            // behind (the process is exiting).
            self.common.abandon.store(true, Ordering::SeqCst);
            let _ = self.sinks_done.recv_timeout(SINK_EXIT_MARGIN);
        }
        // The spool writer has appended what the queue held (or the
        // deadline abandoned it); its last commit makes what the sinks
        // delivered durable.
        self.spool_writer.stop();
        if let Some(t) = self.stats_thread {
            let _ = t.join();
        }
        let stats = self.common.stats.snapshot(&self.common.depth);
        // With a spool, what stays on disk is kept for the next start,
        // not lost: only the memory queue can lose messages.
        let lost = stats.dropped_shutdown + self.common.memory.in_memory() as u64;
        let drained = lost == 0;
        let panicked = self.common.panics.names();
        info!("{stats}");
        if !panicked.is_empty() {
            error!("exiting 1: thread(s) panicked: {}", panicked.join(", "));
        }
        // drained=true says nothing was lost; say too what the spool keeps.
        let spooled = stats
            .queue_depth
            .saturating_sub(self.common.memory.in_memory() as u64);
        if spooled > 0 {
            info!(
                "shutdown: {spooled} messages stay spooled on disk for the next start (not lost)"
            );
        }
        info!("shutdown drained={drained} lost={lost}");
        self.notifier.stop();
        systemd::status(&format!("stopped: drained={drained} lost={lost}"));
        self.metrics.stop();
        Report {
            drained,
            lost,
            panicked,
            stats,
        }
    }
}
