//! floodwall-load: the load generator and measuring instruments for
//! floodwall's benchmarks (bench/compare.sh).
//!
//! - send (default): N connections to ADDR, a thread each, messages of
//!   `--size` bytes (lines or octet-counted) for `--duration` or `--count`,
//!   at full speed or a target aggregate `--rate`. Each payload carries
//!   connection id, sequence number and send time (see payload.rs).
//! - `--discard-listen ADDR`: the ceiling, a bare thread-per-connection
//!   reader that counts bytes and LFs.
//! - `--latency-listen ADDR`: a downstream collector (for floodwall's tcp
//!   sink) that measures latency from each message's send time to its
//!   arrival, and checks loss and order.
//! - `--idle N`: holds N idle connections (RSS and threads per connection).
//! - `--churn`: short connections: each of `--connections` threads
//!   connects, sends `--per-conn` messages, closes, and again (with
//!   `--tls-ca`, a full handshake each time); reports connections/s.
//! - `--relp`: RELP sessions (src/bin/floodwall_load/relp.rs): each of
//!   `--connections` keeps up to `--window` syslog frames unanswered and
//!   counts a message when its `rsp 200` comes; reports acknowledged
//!   msg/s and the ack latency (send to rsp) p50/p99.
//! - `--tls-ca PATH` (send and --idle): speak TLS, trusting PATH, verifying
//!   `--tls-name`; `--tls-cert`/`--tls-key` add a client certificate. Like
//!   a syslog sender, it never reads what the server sends.
//!
//! A progress line goes to stderr every second; at the end a human
//! summary and one `fwl_result key=value ...` line go to stdout. MB are
//! 10^6 bytes. Exit code: 0 done, 1 nothing could connect or bind, 2 bad
//! command line.

#[path = "floodwall_load/churn.rs"]
mod churn;
#[path = "floodwall_load/histogram.rs"]
mod histogram;
#[path = "floodwall_load/listen.rs"]
mod listen;
#[path = "floodwall_load/payload.rs"]
mod payload;
#[path = "floodwall_load/relp.rs"]
mod relp;
#[path = "floodwall_load/send.rs"]
mod send;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;

use listen::{Collected, Received};
use payload::Framing;
use send::{Counters, Plan};

/// Load generator, discard listener, latency collector and idle-connection
/// holder for benchmarking floodwall.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where to send (send and --idle modes), host:port.
    addr: Option<String>,
    /// Connections, one sender thread each.
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Bytes per message as a line, LF included (octet-counted frames
    /// carry size-1 bytes behind "LEN ").
    #[arg(short = 's', long, default_value_t = 100)]
    size: usize,
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    framing: Framing,
    /// How long to send (or to listen / hold); e.g. 5s, 500ms. Send mode
    /// defaults to 10s unless --count is given.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Total messages over all connections (split evenly).
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Target aggregate messages/s over all connections; 0 = full speed.
    #[arg(short = 'r', long, default_value_t = 0)]
    rate: u64,
    /// Bytes formatted per write() at full speed, per connection.
    #[arg(long, default_value_t = 128 << 10)]
    buffer: usize,
    /// After a write error (the server closed us), reconnect and go on.
    #[arg(long)]
    reconnect: bool,
    /// No progress lines.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Listen here and only read and count (the ceiling).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["addr", "latency_listen", "idle"])]
    discard_listen: Option<String>,
    /// Listen here as a downstream collector and measure latency, loss
    /// and order from the payload headers.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["addr", "idle"])]
    latency_listen: Option<String>,
    /// Open N idle connections to ADDR and hold them for --duration
    /// (default 30s).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// With --idle: each connection first sends one message of --size.
    #[arg(long, requires = "idle")]
    hello: bool,
    /// Short connections: each of --connections threads connects, sends
    /// --per-conn messages, closes, and again, for --duration or --count
    /// messages (TLS: a full handshake each time, no resumption).
    #[arg(long, conflicts_with_all = ["idle", "rate", "reconnect"])]
    churn: bool,
    /// With --churn: messages per connection.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "churn")]
    per_conn: u64,
    /// Speak RELP to ADDR (a `[relp]` listener, rsyslog imrelp): count
    /// acknowledged messages and their ack latency.
    #[arg(long, conflicts_with_all = ["idle", "churn", "rate", "reconnect", "tls_ca"])]
    relp: bool,
    /// With --relp: unanswered messages per connection (omrelp's
    /// windowSize).
    #[arg(long, value_name = "N", default_value_t = 128, requires = "relp")]
    window: usize,
    /// Speak TLS to ADDR, trusting the PEM CA bundle at PATH.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<std::path::PathBuf>,
    /// The server name to verify with --tls-ca.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls_ca"
    )]
    tls_name: String,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, value_name = "PATH", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// Client key (PEM) for --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

impl Args {
    /// How long the send modes run: --duration, else 10 s unless --count
    /// bounds the run instead.
    fn send_duration(&self) -> Option<Duration> {
        match (self.duration, self.count) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        }
    }
}

/// The TLS client settings from --tls-*.
fn tls_client(args: &Args) -> Result<Option<send::Tls>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--tls-ca {ca:?}: {e}"))? {
        let cert = cert.map_err(|e| format!("--tls-ca {ca:?}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca {ca:?}: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("--tls-cert {cert:?}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--tls-cert {cert:?}: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key:?}: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("--tls-key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(args.tls_name.clone())
        .map_err(|e| format!("--tls-name {:?}: {e}", args.tls_name))?;
    Ok(Some(send::Tls {
        config: Arc::new(config),
        name,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("floodwall-load: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    if let Some(addr) = &args.discard_listen {
        return listen_mode(&args, resolve(addr)?, None, &stop);
    }
    if let Some(addr) = &args.latency_listen {
        let collected = Arc::new(Mutex::new(Collected::default()));
        return listen_mode(&args, resolve(addr)?, Some(collected), &stop);
    }
    let addr = match &args.addr {
        Some(a) => resolve(a)?,
        None => return usage("ADDR is required to send or to hold --idle connections"),
    };
    if let Some(n) = args.idle {
        return idle_mode(&args, addr, n, &stop);
    }
    if args.churn {
        return churn_mode(&args, addr, &stop);
    }
    if args.relp {
        return relp_mode(&args, addr, &stop);
    }
    send_mode(&args, addr, &stop)
}

fn usage(msg: &str) -> Result<ExitCode, String> {
    eprintln!("floodwall-load: {msg} (see --help)");
    Ok(ExitCode::from(2))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: resolves to no address"))
}

/// This process's CPU seconds (user + system, all threads) from
/// /proc/self/stat, assuming the usual 100 clock ticks per second.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Sleeps until `until` or `stop`, in short steps.
fn sleep_until(until: Instant, stop: &AtomicBool, also: impl Fn() -> bool) {
    while !stop.load(Ordering::Relaxed) && !also() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

fn send_mode(args: &Args, addr: SocketAddr, stop: &Arc<AtomicBool>) -> Result<ExitCode, String> {
    if args.connections == 0 {
        return usage("--connections must be at least 1");
    }
    if args.size < payload::MIN_SIZE {
        return usage(&format!(
            "--size must be at least {} (the payload header and LF)",
            payload::MIN_SIZE
        ));
    }
    let duration = args.send_duration();
    let plan = Arc::new(Plan {
        addr,
        conns: args.connections,
        size: args.size,
        framing: args.framing,
        duration,
        count: args.count,
        rate: args.rate,
        buffer: args.buffer,
        reconnect: args.reconnect,
        tls: tls_client(args)?,
    });
    let counters = Arc::new(Counters::default());
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let cpu0 = cpu_seconds();
    let handles = send::spawn_senders(
        plan.clone(),
        counters.clone(),
        stop.clone(),
        barrier.clone(),
    );
    barrier.wait();
    let t0 = Instant::now();
    let connected = counters.connected.load(Ordering::SeqCst);
    if !args.quiet {
        eprintln!(
            "[fwl] sending to {addr}: conns={connected}/{} size={} framing={} rate={}",
            args.connections,
            args.size,
            framing_name(args.framing),
            if args.rate == 0 {
                "max".to_string()
            } else {
                args.rate.to_string()
            }
        );
    }
    let finished = || counters.live.load(Ordering::SeqCst) == 0;
    let (mut last_sent, mut last_bytes, mut tick) = (0, 0, 1u32);
    while !finished() {
        sleep_until(t0 + Duration::from_secs(u64::from(tick)), stop, finished);
        if stop.load(Ordering::Relaxed) || finished() {
            break;
        }
        let (s, b) = (
            counters.sent.load(Ordering::Relaxed),
            counters.bytes.load(Ordering::Relaxed),
        );
        if !args.quiet {
            eprintln!(
                "[fwl] t={tick}s sent={s} rate={} msg/s {:.1} MB/s errors={}",
                s - last_sent,
                mb(b - last_bytes),
                counters.write_errors.load(Ordering::Relaxed)
            );
        }
        (last_sent, last_bytes, tick) = (s, b, tick + 1);
    }
    for h in handles {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let sent = counters.sent.load(Ordering::SeqCst);
    let bytes = counters.bytes.load(Ordering::SeqCst);
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    println!(
        "sent {sent} messages ({:.1} MB) in {secs:.3} s: {:.0} msg/s, {:.1} MB/s, client cpu {cpu:.2} s",
        mb(bytes),
        sent as f64 / secs,
        mb(bytes) / secs
    );
    println!(
        "fwl_result mode=send conns={} connected={connected} size={} framing={} secs={secs:.3} \
         sent={sent} bytes={bytes} msgs_per_s={:.0} mb_per_s={:.2} connect_errors={} \
         write_errors={} reconnects={} client_cpu_s={cpu:.2}",
        args.connections,
        args.size,
        framing_name(args.framing),
        sent as f64 / secs,
        mb(bytes) / secs,
        c(&counters.connect_errors),
        c(&counters.write_errors),
        c(&counters.reconnects),
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(if connected == 0 { 1 } else { 0 }))
}

fn churn_mode(args: &Args, addr: SocketAddr, stop: &Arc<AtomicBool>) -> Result<ExitCode, String> {
    if args.connections == 0 || args.per_conn == 0 {
        return usage("--connections and --per-conn must be at least 1");
    }
    if args.size < payload::MIN_SIZE {
        return usage(&format!("--size must be at least {}", payload::MIN_SIZE));
    }
    // A full handshake every time: no session to resume.
    let tls = tls_client(args)?.map(|t| {
        let mut config = (*t.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        send::Tls {
            config: Arc::new(config),
            name: t.name,
        }
    });
    let duration = args.send_duration();
    let plan = Arc::new(churn::Churn {
        addr,
        threads: args.connections,
        per_conn: args.per_conn,
        size: args.size,
        framing: args.framing,
        duration,
        count: args.count,
        tls,
        bind_sources: std::env::var_os("FWL_BIND_SOURCES").is_some(),
    });
    let counters = Arc::new(churn::ChurnCounters::default());
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let cpu0 = cpu_seconds();
    let handles = churn::spawn(plan, counters.clone(), stop.clone(), barrier.clone());
    barrier.wait();
    let t0 = Instant::now();
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    let finished = || counters.live.load(Ordering::SeqCst) == 0;
    let (mut last, mut tick) = (0, 1u32);
    while !finished() {
        sleep_until(t0 + Duration::from_secs(u64::from(tick)), stop, finished);
        if stop.load(Ordering::Relaxed) || finished() {
            break;
        }
        let n = c(&counters.connections);
        if !args.quiet {
            eprintln!(
                "[fwl] t={tick}s connections={n} rate={} conn/s errors={}",
                n - last,
                c(&counters.connect_errors) + c(&counters.write_errors)
            );
        }
        (last, tick) = (n, tick + 1);
    }
    for h in handles {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let conns = c(&counters.connections);
    let sent = c(&counters.sent);
    println!(
        "{conns} connections ({sent} messages) in {secs:.3} s: {:.0} conn/s, client cpu {cpu:.2} s",
        conns as f64 / secs
    );
    println!(
        "fwl_result mode=churn threads={} per_conn={} tls={} size={} secs={secs:.3} \
         connections={conns} sent={sent} conns_per_s={:.0} msgs_per_s={:.0} connect_errors={} \
         write_errors={} client_cpu_s={cpu:.2}",
        args.connections,
        args.per_conn,
        args.tls_ca.is_some(),
        args.size,
        conns as f64 / secs,
        sent as f64 / secs,
        c(&counters.connect_errors),
        c(&counters.write_errors),
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(if conns == 0 { 1 } else { 0 }))
}

fn relp_mode(args: &Args, addr: SocketAddr, stop: &Arc<AtomicBool>) -> Result<ExitCode, String> {
    if args.connections == 0 || args.window == 0 {
        return usage("--connections and --window must be at least 1");
    }
    let duration = args.send_duration();
    let plan = Arc::new(relp::Plan {
        addr,
        threads: args.connections,
        window: args.window,
        size: args.size,
        duration,
        per_thread: args.count.map(|n| n.div_ceil(args.connections as u64)),
    });
    let counters = Arc::new(relp::Counters::default());
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let cpu0 = cpu_seconds();
    let handles = relp::spawn(plan, counters.clone(), stop.clone(), barrier.clone());
    barrier.wait();
    let t0 = Instant::now();
    let finished = || counters.live.load(Ordering::SeqCst) == 0;
    let (mut last, mut tick) = (0, 1u32);
    while !finished() {
        sleep_until(t0 + Duration::from_secs(u64::from(tick)), stop, finished);
        if stop.load(Ordering::Relaxed) || finished() {
            break;
        }
        let n = counters.acked.load(Ordering::SeqCst);
        if !args.quiet {
            eprintln!("[fwl] t={tick}s acked={n} rate={} msg/s", n - last);
        }
        (last, tick) = (n, tick + 1);
    }
    for h in handles {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let acked = counters.acked.load(Ordering::SeqCst);
    let latency = counters.latency.lock();
    let (p50, p99) = (latency.quantile(0.5), latency.quantile(0.99));
    println!(
        "{acked} messages acknowledged in {secs:.3} s: {:.0} msg/s, ack latency p50 {p50} us p99 {p99} us, client cpu {cpu:.2} s",
        acked as f64 / secs
    );
    println!(
        "fwl_result mode=relp connections={} window={} size={} secs={secs:.3} acked={acked} \
         refused={} errors={} msgs_per_s={:.0} ack_p50_us={p50} ack_p99_us={p99} ack_max_us={} \
         client_cpu_s={cpu:.2}",
        args.connections,
        args.window,
        args.size,
        counters.refused.load(Ordering::SeqCst),
        counters.errors.load(Ordering::SeqCst),
        acked as f64 / secs,
        latency.max(),
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(if acked == 0 { 1 } else { 0 }))
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Lines => "lines",
        Framing::OctetCounted => "octet-counted",
    }
}

fn listen_mode(
    args: &Args,
    addr: SocketAddr,
    collected: Option<Arc<Mutex<Collected>>>,
    stop: &Arc<AtomicBool>,
) -> Result<ExitCode, String> {
    let listener = listen::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let mode = if collected.is_some() {
        "latency"
    } else {
        "discard"
    };
    // On stdout too, so a script can read the real port when 0 was asked.
    println!("listening addr={local} mode={mode}");
    let _ = std::io::stdout().flush();
    let received = Arc::new(Received::new());
    {
        let (received, collected) = (received.clone(), collected.clone());
        thread::Builder::new()
            .name("fwl-accept".to_string())
            .spawn(move || listen::serve(listener, received, collected))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
    }
    let t0 = Instant::now();
    let end = args.duration.map(|d| t0 + d);
    let (mut last_m, mut last_b, mut tick) = (0, 0, 1u32);
    loop {
        let next = t0 + Duration::from_secs(u64::from(tick));
        sleep_until(end.map_or(next, |e| e.min(next)), stop, || false);
        if stop.load(Ordering::Relaxed) || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        let (m, b) = (
            received.messages.load(Ordering::Relaxed),
            received.bytes.load(Ordering::Relaxed),
        );
        if !args.quiet {
            let extra = collected.as_ref().map_or(String::new(), |c| {
                let c = c.lock();
                format!(
                    " p50={:.0}us p99={:.0}us gaps={}",
                    c.latency.quantile(0.5) as f64 / 1e3,
                    c.latency.quantile(0.99) as f64 / 1e3,
                    c.gaps
                )
            });
            eprintln!(
                "[fwl {mode}] t={tick}s msgs={} msg/s {:.1} MB/s conns={}{extra}",
                m - last_m,
                mb(b - last_b),
                received.live.load(Ordering::Relaxed)
            );
        }
        (last_m, last_b, tick) = (m, b, tick + 1);
    }
    let msgs = received.messages.load(Ordering::SeqCst);
    let bytes = received.bytes.load(Ordering::SeqCst);
    let active = received.active_secs();
    let rate = |v: f64| if active > 0.0 { v / active } else { 0.0 };
    println!(
        "received {msgs} messages ({:.1} MB) over {active:.3} s of traffic: {:.0} msg/s, {:.1} MB/s",
        mb(bytes),
        rate(msgs as f64),
        rate(mb(bytes))
    );
    let mut result = format!(
        "fwl_result mode={mode} msgs={msgs} bytes={bytes} active_secs={active:.3} msgs_per_s={:.0} \
         mb_per_s={:.2} conns_total={} cpu_s={:.2}",
        rate(msgs as f64),
        rate(mb(bytes)),
        received.conns.load(Ordering::SeqCst),
        cpu_seconds()
    );
    if let Some(c) = collected {
        let c = c.lock();
        let us = |q: f64| c.latency.quantile(q) as f64 / 1e3;
        println!(
            "latency p50={:.1}us p90={:.1}us p99={:.1}us p999={:.1}us max={:.1}us; gaps={} backwards={} unparsed={}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            c.latency.max() as f64 / 1e3,
            c.gaps,
            c.backwards,
            c.unparsed
        );
        result += &format!(
            " p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} gaps={} \
             backwards={} unparsed={} senders={} latency_n={}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            c.latency.max() as f64 / 1e3,
            c.gaps,
            c.backwards,
            c.unparsed,
            c.senders,
            c.latency.count()
        );
    }
    println!("{result}");
    let _ = std::io::stdout().flush();
    // Reader threads may still be blocked in read; the process ends here.
    Ok(ExitCode::SUCCESS)
}

fn idle_mode(
    args: &Args,
    addr: SocketAddr,
    n: usize,
    stop: &AtomicBool,
) -> Result<ExitCode, String> {
    let hello = if args.hello {
        Some(args.size.max(payload::MIN_SIZE))
    } else {
        None
    };
    let t0 = Instant::now();
    let tls = tls_client(args)?;
    let (held, failed) = send::open_idle(addr, n, hello, tls.as_ref());
    println!(
        "fwl idle connected={} failed={failed} in {:.2}s",
        held.len(),
        t0.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    let hold = args.duration.unwrap_or(Duration::from_secs(30));
    sleep_until(Instant::now() + hold, stop, || false);
    println!(
        "fwl_result mode=idle asked={n} connected={} failed={failed} held_secs={:.1}",
        held.len(),
        (Instant::now() - t0).as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(if held.is_empty() { 1 } else { 0 }))
}
