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

pub use config::{Config, ConfigError};
pub use shutdown::{Reopen, Shutdown};
pub use sink::Sink;
pub use stats::Snapshot;

use access::Access;
use alerts::Alerts;
use conn::ConnContext;
use conn::worker::{Shared, Speaks};
use limiter::Limiter;
use queue::QueueDepth;
use server::Acceptor;
use sink::SinkContext;
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
    shutdown_timeout: Duration,
    stats: Arc<Stats>,
    /// The depth stats report: the memory queue plus, with a spool, what
    /// is spooled and not yet delivered.
    depth: QueueDepth,
    /// The memory queue alone: what a shutdown loses if it is not empty.
    memory: QueueDepth,
    reopen: Reopen,
    /// The listener's TLS, reloaded on SIGHUP.
    tls: Option<Arc<ServerTls>>,
    /// Fires the shutdown; everything else watches it.
    shutdown: Shutdown,
    /// Set at the drain deadline: sinks stop retrying.
    abandon: Arc<AtomicBool>,
    /// Fired as the shutdown starts: wakes every sleeping worker.
    wake: Arc<Wake>,
    /// Threads that panicked; shared with every spawned thread.
    panics: Panics,
    accept: JoinHandle<()>,
    /// The RELP listener's accept loop, with `[relp]`.
    relp_accept: Option<JoinHandle<()>>,
    relp_addr: Option<SocketAddr>,
    stats_thread: Option<JoinHandle<()>>,
    /// Every sink thread holds a sender; all dropped = all sinks done.
    sinks_done: crossbeam_channel::Receiver<()>,
    sink_threads: Vec<JoinHandle<()>>,
    /// The spool writer (with `[spool]`), stopped after the sinks.
    spool_thread: Option<JoinHandle<()>>,
    /// Tells the spool writer to make its last commit and end.
    spool_stop: Arc<AtomicBool>,
    metrics_addr: Option<SocketAddr>,
    /// Set after the drain (the endpoint serves through it): fw-metrics ends.
    metrics_stop: Arc<AtomicBool>,
    metrics_thread: Option<JoinHandle<()>>,
    /// Set after the drain: fw-notify (under systemd only) ends.
    notify_stop: Arc<AtomicBool>,
    notify_thread: Option<JoinHandle<()>>,
}

/// `--check-config`'s look beyond the file: what start-up would fail on
/// with exit 3. Binds the listener and the metrics port (and lets them
/// go), opens the file sink's path for appending, and writes a file in
/// the spool directory. A path that did not exist is left as it was.
pub fn probe(config: &Config) -> Result<(), Error> {
    let addr = config.listen_addr()?;
    if addr.port() != 0 {
        server::bind(addr, 1).map_err(|source| Error::Bind { addr, source })?;
    }
    if let Some(addr) = config.relp_addr()?
        && addr.port() != 0
    {
        server::bind(addr, 1).map_err(|source| Error::RelpBind { addr, source })?;
    }
    if let Some(addr) = config.metrics_addr()?
        && addr.port() != 0
    {
        metrics::bind(addr).map_err(|source| Error::MetricsBind {
            addr: addr.to_string(),
            source,
        })?;
    }
    if config.sink.kind == config::SinkType::File
        && let Some(path) = &config.sink.path
    {
        sink::FileSink::probe(path).map_err(Error::Sink)?;
    }
    if let Some(spool) = &config.spool {
        spool::probe(&spool.dir).map_err(Error::Spool)?;
    }
    Ok(())
}

/// Runs a daemon until `shutdown` fires; returns how the drain went.
pub fn run(config: Config, shutdown: Shutdown) -> Result<Report, Error> {
    Ok(start(config, shutdown)?.wait())
}

/// Binds, opens the configured sinks and starts every thread.
pub fn start(config: Config, shutdown: Shutdown) -> Result<Daemon, Error> {
    let config = config.validate()?;
    // Every TLS file is loaded before anything starts: a bad one is a
    // configuration error (exit 2), never a half-started daemon.
    tls::check_files(&config)?;
    let sinks = sink::open(&config.sink).map_err(Error::Sink)?;
    start_workers(config, shutdown, sinks)
}

/// Like [`start`], with sinks supplied by the caller (one per sink
/// worker): tests use it to stall or observe the sink.
pub fn start_with_sinks(
    config: Config,
    shutdown: Shutdown,
    sinks: Vec<Box<dyn Sink>>,
) -> Result<Daemon, Error> {
    start_workers(
        config,
        shutdown,
        sinks.into_iter().map(Into::into).collect(),
    )
}

fn start_workers(
    config: Config,
    shutdown: Shutdown,
    sinks: Vec<sink::SinkWorker>,
) -> Result<Daemon, Error> {
    let config = config.validate()?;
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(ServerTls::new(t)?)),
        None => None,
    };
    let addr = config.listen_addr()?;
    // A listener passed by the service manager (src/activation.rs) is
    // used as it is; else floodwall binds its own.
    let activated = activation::take(activation::SERVER);
    let passed_server = activated.is_some();
    let listener = match activated {
        Some(socket) => server::adopt(socket, config.server.backlog)
            .map_err(|source| Error::Bind { addr, source })?,
        None => server::bind(addr, config.server.backlog)
            .map_err(|source| Error::Bind { addr, source })?,
    };
    let local_addr = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    // Bound before any thread starts: a taken metrics port is exit 3.
    let metrics_listener = match config.metrics_addr()? {
        Some(addr) => Some(match activation::take(activation::METRICS) {
            Some(socket) => metrics::adopt(socket).map_err(|source| Error::MetricsBind {
                addr: addr.to_string(),
                source,
            })?,
            None => metrics::bind(addr).map_err(|source| Error::MetricsBind {
                addr: addr.to_string(),
                source,
            })?,
        }),
        None => None,
    };
    // The RELP listener, bound before any thread starts like the others.
    let mut passed_relp = false;
    let relp_listener = match config.relp_addr()? {
        Some(addr) => Some(
            match activation::take(activation::RELP) {
                Some(socket) => {
                    passed_relp = true;
                    server::adopt(socket, config.server.backlog)
                }
                None => server::bind(addr, config.server.backlog),
            }
            .map_err(|source| Error::RelpBind { addr, source })?,
        ),
        None => None,
    };
    let relp_local = relp_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket());
    if passed_server {
        info!("socket activation: server.listen is the passed socket {local_addr}");
    }
    for name in activation::leftover() {
        log::warn!("socket activation: no listener is configured for the passed socket {name:?}");
    }
    rlimits::check(&config);
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket());

    let stats = Arc::new(Stats::default());
    let alerts = Arc::new(Alerts::default());
    let spool = match &config.spool {
        Some(c) => Some(
            spool::open(
                spool::Settings {
                    dir: c.dir.clone(),
                    max_bytes: c.max_bytes,
                    segment_bytes: c.segment_bytes,
                    sync: c.sync,
                },
                stats.clone(),
            )
            .map_err(Error::Spool)?,
        ),
        None => None,
    };
    let (tx, rx) = queue::queue(config.queue.capacity);
    let memory = tx.depth();
    let depth = match &spool {
        Some((s, _)) => memory.with_spooled(s.spooled()),
        None => memory.clone(),
    };
    let reopen = Reopen::default();
    let abandon = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Wake::new().map_err(Error::Wake)?);
    let panics = Panics::new(shutdown.clone());
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        threads::spawn(name, None, &panics, f).map_err(|source| Error::Thread {
            name: "fw-*",
            source,
        })
    };

    // Sinks: each thread holds a `done` sender; all dropped = all done.
    let (done_tx, sinks_done) = crossbeam_channel::bounded::<()>(0);
    let tick = config
        .sink
        .flush_interval
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_millis(250));
    let liveness = Arc::new(systemd::Liveness::new(sinks.len()));
    let mut sink_threads = Vec::new();
    for (n, sink) in sinks.into_iter().enumerate() {
        let ctx = SinkContext {
            queue: rx.clone(),
            stats: stats.clone(),
            alerts: alerts.clone(),
            reopen: reopen.clone(),
            tick,
            abandon: abandon.clone(),
            shutdown: shutdown.clone(),
            spool: spool.as_ref().map(|(s, _)| s.clone()),
            liveness: liveness.clone(),
            worker: n,
        };
        let done = done_tx.clone();
        sink_threads.push(spawn(
            format!("fw-sink-{n}"),
            Box::new(move || {
                let _done = done;
                sink.run(ctx);
            }),
        )?);
    }
    drop(done_tx);
    // The spool writer: the memory queue's only reader when spooling.
    let spool_stop = Arc::new(AtomicBool::new(false));
    let spool_thread = match spool {
        Some((_, writer)) => {
            let (abandon, stop, rx) = (abandon.clone(), spool_stop.clone(), rx.clone());
            Some(spawn(
                "fw-spool".to_string(),
                Box::new(move || writer.run(rx, abandon, stop)),
            )?)
        }
        None => None,
    };
    drop(rx);

    // The accept loops, which spawn one worker per connection. Both
    // listeners share one connection bound and one per-IP count.
    let limiter = Limiter::new(config.limits.max_connections);
    let access = Arc::new(Access::new(&config.server));
    let relp_accept = match relp_listener {
        Some(listener) => {
            let mut ctx = ConnContext::new(
                &config,
                tx.clone(),
                stats.clone(),
                alerts.clone(),
                shutdown.clone(),
                wake.clone(),
            );
            ctx.proxy_header_timeout = None;
            let relp_tls = config
                .relp
                .as_ref()
                .is_some_and(|r| r.tls)
                .then(|| tls.clone())
                .flatten();
            let acceptor = Acceptor::new(
                &config,
                listener,
                memory.clone(),
                limiter.clone(),
                Shared {
                    ctx: Arc::new(ctx),
                    access: access.clone(),
                    tls: relp_tls,
                    protocol: Speaks::Relp,
                },
                panics.clone(),
            )
            // The watchdog vouches for the main accept loop only.
            .passed(passed_relp);
            Some(spawn(
                "fw-accept-relp".to_string(),
                Box::new(move || acceptor.run()),
            )?)
        }
        None => None,
    };
    let ctx = Arc::new(ConnContext::new(
        &config,
        tx,
        stats.clone(),
        alerts.clone(),
        shutdown.clone(),
        wake.clone(),
    ));
    // The accept loop watches the memory queue only: an outage that the
    // spool absorbs must not pause accepting.
    let acceptor = Acceptor::new(
        &config,
        listener,
        memory.clone(),
        limiter,
        Shared {
            ctx,
            access,
            tls: tls.clone(),
            protocol: Speaks::Plain,
        },
        panics.clone(),
    )
    .passed(passed_server)
    .liveness(liveness.clone());
    let accept = spawn("fw-accept".to_string(), Box::new(move || acceptor.run()))?;

    // The periodic stats line.
    let stats_thread = if config.log.stats_interval.is_zero() {
        None
    } else {
        let (stats, depth, shutdown) = (stats.clone(), depth.clone(), shutdown.clone());
        let interval = config.log.stats_interval;
        Some(spawn(
            "fw-stats".to_string(),
            Box::new(move || {
                while !shutdown.wait_timeout(interval) {
                    info!("{}", stats.snapshot(&depth));
                }
            }),
        )?)
    };

    info!("listening addr={local_addr}");
    if let Some(addr) = relp_local {
        // Not "listening addr=": SPEC gives that line to [server] alone.
        info!("relp listener addr={addr}");
    }
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match metrics_listener {
        Some(listener) => Some(
            metrics::Endpoint::new(
                listener,
                stats.clone(),
                depth.clone(),
                shutdown.clone(),
                metrics_stop.clone(),
            )
            .spawn(&panics)
            .map_err(|source| Error::Thread {
                name: "fw-metrics",
                source,
            })?,
        ),
        None => None,
    };
    // Under a service manager: the watchdog's pings and the drain's status.
    let notify_stop = Arc::new(AtomicBool::new(false));
    let notify_thread = if systemd::supervised() {
        Some(
            systemd::Notifier {
                liveness,
                stats: stats.clone(),
                depth: depth.clone(),
                shutdown: shutdown.clone(),
                stop: notify_stop.clone(),
            }
            .spawn(&panics)
            .map_err(|source| Error::Thread {
                name: "fw-notify",
                source,
            })?,
        )
    } else {
        None
    };
    Ok(Daemon {
        notify_stop,
        notify_thread,
        metrics_addr,
        metrics_stop,
        metrics_thread,
        local_addr,
        shutdown_timeout: config.shutdown.timeout,
        stats,
        depth,
        memory,
        reopen,
        tls,
        shutdown,
        abandon,
        wake,
        panics,
        accept,
        relp_accept,
        relp_addr: relp_local,
        stats_thread,
        sinks_done,
        sink_threads,
        spool_thread,
        spool_stop,
    })
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
        self.stats.snapshot(&self.depth)
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The handle SIGHUP pokes: sinks reopen their files.
    pub fn reopen_handle(&self) -> Reopen {
        self.reopen.clone()
    }

    /// The listener's TLS (None for plaintext): SIGHUP reloads its files.
    pub fn tls_handle(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// What a panicking thread reports to: for threads spawned outside
    /// the library (main's signal thread) with [`threads::spawn`].
    pub fn panics(&self) -> Panics {
        self.panics.clone()
    }

    /// Blocks until shutdown is triggered, then drains (SPEC.md
    /// "Shutdown"): stop accepting; each connection reads on until its
    /// client's EOF, a short quiet grace or the deadline (the accept loop
    /// joins them); the sinks write what is queued until the deadline.
    /// Logs the final stats and shutdown lines.
    pub fn wait(self) -> Report {
        self.shutdown.wait();
        self.wake.fire();
        systemd::stopping(&systemd::drain_status(&self.stats, &self.depth));
        let deadline = self
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
            self.abandon.store(true, Ordering::SeqCst);
            let _ = self.sinks_done.recv_timeout(SINK_EXIT_MARGIN);
        }
        // The spool writer has appended what the queue held (or the
        // deadline abandoned it); its last commit makes what the sinks
        // delivered durable.
        if let Some(t) = self.spool_thread {
            self.spool_stop.store(true, Ordering::SeqCst);
            let _ = t.join(); // a panic was reported by its guard
        }
        if let Some(t) = self.stats_thread {
            let _ = t.join();
        }
        let stats = self.stats.snapshot(&self.depth);
        // With a spool, what stays on disk is kept for the next start,
        // not lost: only the memory queue can lose messages.
        let lost = stats.dropped_shutdown + self.memory.in_memory() as u64;
        let drained = lost == 0;
        let panicked = self.panics.names();
        info!("{stats}");
        if !panicked.is_empty() {
            error!("exiting 1: thread(s) panicked: {}", panicked.join(", "));
        }
        // drained=true says nothing was lost; say too what the spool keeps.
        let spooled = stats
            .queue_depth
            .saturating_sub(self.memory.in_memory() as u64);
        if spooled > 0 {
            info!(
                "shutdown: {spooled} messages stay spooled on disk for the next start (not lost)"
            );
        }
        info!("shutdown drained={drained} lost={lost}");
        self.notify_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.notify_thread {
            let _ = t.join(); // a panic was logged and recorded already
        }
        systemd::status(&format!("stopped: drained={drained} lost={lost}"));
        self.metrics_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.metrics_thread {
            let _ = t.join(); // a panic was logged and recorded already
        }
        Report {
            drained,
            lost,
            panicked,
            stats,
        }
    }
}
