//! Scenario 7, connection churn: tens of thousands of short connections in
//! a row, each sending one line and closing. At the end the daemon must
//! have no more threads or open file descriptors than before, its RSS
//! must not have grown beyond a generous bound, and every message must be
//! in the file sink.
//!
//! Client sockets are spread over 127.0.0.2..=127.0.0.5 so that the
//! clients' TIME_WAIT ports (the client closes first) cannot exhaust one
//! address's ephemeral range (NOTES.md: about 28,000 ports).

use crate::support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::proc::raise_nofile;
use crate::support::{Daemon, assert_balanced, num, read};
use socket2::{Domain, Socket, Type};

const CLIENT_THREADS: u8 = 4;
const CHURN: usize = 20_000;
const WARM_UP: usize = 1_000;

/// `n` connections from `CLIENT_THREADS` threads, each from its own
/// source address; each sends one line and closes.
fn churn(daemon: SocketAddr, n: usize, tag: &'static str) {
    let per = n / CLIENT_THREADS as usize;
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            thread::spawn(move || {
                let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + t), 0));
                for i in 0..per {
                    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                    socket.bind(&source.into()).expect("bind client source");
                    socket
                        .connect_timeout(&daemon.into(), Duration::from_secs(5))
                        .expect("connect");
                    let mut s = TcpStream::from(socket);
                    writeln!(s, "{tag} {t} {i:06}").expect("send");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("churn client");
    }
}

#[test]
fn twenty_thousand_short_connections_leave_nothing_behind() {
    let _machine = crate::support::machine_shared();
    raise_nofile();
    let mut daemon = Conf::new().start();
    let idle = 5;
    let settled = |daemon: &Daemon, total: u64| {
        daemon
            .wait_stats(Duration::from_secs(30), |s| {
                num(s, "conns_active") == 0 && num(s, "delivered") == total
            })
            .unwrap_or_else(|| panic!("connections did not settle; log:\n{}", daemon.log_text()));
        assert!(
            support::wait_until(Duration::from_secs(10), || daemon.threads() == idle),
            "threads stay at {}, idle is {idle}",
            daemon.threads()
        );
    };
    // Warm up (allocator arenas, stack caches), then take the baseline.
    churn(daemon.addr, WARM_UP, "warm-up");
    settled(&daemon, WARM_UP as u64);
    let fds_before = daemon.open_fds();
    let rss_before = daemon.rss_kib();

    let started = Instant::now();
    churn(daemon.addr, CHURN, "churn");
    let elapsed = started.elapsed();
    settled(&daemon, (WARM_UP + CHURN) as u64);
    assert!(
        support::wait_until(Duration::from_secs(10), || daemon.open_fds() <= fds_before),
        "fd growth: {} open, {fds_before} before",
        daemon.open_fds()
    );
    let rss_after = daemon.rss_kib();
    let fds_after = daemon.open_fds();
    let threads_after = daemon.threads();

    let status = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let last = daemon.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "conns_total"), (WARM_UP + CHURN) as u64);
    assert_eq!(num(&last, "received"), (WARM_UP + CHURN) as u64);
    assert_eq!(num(&last, "delivered"), (WARM_UP + CHURN) as u64);
    let file = read(&daemon.path("out.log"));
    assert_eq!(
        file.iter().filter(|&&b| b == b'\n').count(),
        WARM_UP + CHURN
    );
    eprintln!(
        "FIGURES churn: connections={CHURN} in {elapsed:?} ({:.0}/s) threads_after={threads_after} (idle {idle}) \
         fds_before={fds_before} fds_after={fds_after} rss_before_kib={rss_before} rss_after_kib={rss_after}",
        CHURN as f64 / elapsed.as_secs_f64()
    );
    // Generous: allocator and thread-stack caches may keep a little.
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Short connections from more senders than `max_connections`, in both
/// limit modes: the accept loop returns a permit only once the thread
/// that held it is gone, without waiting for it on the accept path, so
/// the sampled thread count never passes `max_connections + sink.workers
/// + 8`, and (in "wait" mode) every message arrives.
#[test]
fn churn_at_the_connection_limit_keeps_the_thread_bound() {
    let _machine = crate::support::machine_shared();
    raise_nofile();
    const MAX: u64 = 8;
    const COUNT: u64 = 10_000;
    for mode in ["wait", "reject"] {
        let mut daemon = Conf::new()
            .set("limits.max_connections", MAX)
            .set("limits.on_connection_limit", mode)
            .start();
        let peak = support::proc::Sampler::start(daemon.pid(), Duration::from_millis(1));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_floodwall-load"))
            .args(["--churn", "-q", "-c", "32", "--per-conn", "1"])
            .args(["-n", &COUNT.to_string(), "-d", "120s"])
            .arg(daemon.addr.to_string())
            .output()
            .expect("run floodwall-load --churn");
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        let peak = peak.peak_threads();
        assert!(
            out.status.success(),
            "{mode}: floodwall-load failed: {report}"
        );
        let conns: u64 = report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("connections="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no connections= in {report}"));
        let bound = MAX + 1 + 8;
        assert!(peak <= bound, "{mode}: {peak} threads, bound {bound}");
        let status = daemon.stop(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{mode}");
        let last = daemon.final_stats();
        assert_balanced(&last);
        if mode == "wait" {
            assert_eq!(conns, COUNT, "{mode}: {report}");
            assert_eq!(num(&last, "delivered"), COUNT, "{mode}");
        } else {
            // Rejected ones are closed at once (their line may be lost:
            // that is what "reject" means); every accepted one is counted.
            assert_eq!(
                num(&last, "conns_total") + num(&last, "conns_rejected"),
                COUNT,
                "{mode}: every connection is counted"
            );
            assert!(num(&last, "conns_rejected") < COUNT, "{mode}: some got in");
        }
        eprintln!("FIGURES churn at limit ({mode}): peak threads {peak}, {report}");
    }
}
