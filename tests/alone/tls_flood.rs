//! Issue 9: handshake flood. 1,000 connections that open and send
//! nothing and 200 that send half a ClientHello and stall, against a TLS
//! listener with handshake_timeout = 1 s: every one is closed by the
//! deadline (plus a margin), counted `closed_tls`, the daemon's threads
//! never exceed SPEC invariant 1's bound, threads and descriptors come
//! back afterwards (invariant 6), and a good TLS client meanwhile gets its
//! messages through (its median latency is reported; the 50 ms goal is a
//! benchmark figure, asserted here only loosely).

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::pki::{self, Ca};
use crate::support::{Daemon, num};
use rustls::pki_types::ServerName;

const WAIT: Duration = Duration::from_secs(30);
const SILENT: usize = 1000;
const HALF_HELLO: usize = 200;
const MAX_CONNECTIONS: u64 = 1300;
/// handshake_timeout (1 s) + the 0.5 s SPEC allows + 1.5 s because 1,200
/// deadlines expire together on 2 cores shared with other builds and
/// tests, and the test reads the 1,200 sockets one after another.
const CLOSED_WITHIN: Duration = Duration::from_secs(3);
/// A message from the good client reaches the sink's downstream within
/// this even mid-flood (goal: 50 ms median, reported, not asserted).
const LATENCY_BOUND: Duration = Duration::from_secs(1);

fn raise_fd_limit() {
    let limit = crate::support::proc::raise_nofile();
    assert!(
        limit >= 4096,
        "need at least 4096 file descriptors, have {limit}"
    );
}

/// The first half of a real ClientHello.
fn half_client_hello(config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        config.clone(),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    hello.truncate(hello.len() / 2);
    hello
}

#[test]
fn handshake_flood_is_cut_at_the_deadline_and_a_good_client_keeps_going() {
    let _machine = crate::support::machine_alone();
    raise_fd_limit();
    // The sink forwards to this listener, so the test sees when each of
    // the good client's messages arrives.
    let downstream = TcpListener::bind("127.0.0.1:0").expect("bind downstream");
    let down_addr = downstream.local_addr().expect("addr");
    let (arrived_tx, arrived) = mpsc::channel::<(String, Instant)>();
    thread::spawn(move || {
        let Ok((s, _)) = downstream.accept() else {
            return;
        };
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if arrived_tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nbacklog = 4096\nframing = \"lines\"\n{}\
         [limits]\nmax_connections = {MAX_CONNECTIONS}\nidle_timeout = \"60s\"\n\
         [sink]\ntype = \"tcp\"\naddress = \"{down_addr}\"\n\
         [log]\nstats_interval = \"200ms\"\n",
        pki::server_tls(&server, None, "handshake_timeout = \"1s\"")
    );
    let mut d = Daemon::start_in(dir, &config);
    let client_config = pki::client_config(&ca.crt, None);
    let mut good = pki::connect(d.addr, &client_config).expect("good client");
    pki::send(&mut good, b"warmup\n").expect("send");
    let (line, _) = arrived.recv_timeout(WAIT).expect("warmup arrives");
    assert_eq!(line, "warmup");
    let threads_before = d.threads();
    let fds_before = d.open_fds();

    // Invariant 1, sampled every millisecond through the flood.
    let bound = MAX_CONNECTIONS + 1 + 8;
    let sampler = support::proc::Sampler::start(d.pid(), Duration::from_millis(1));

    let hello = half_client_hello(&client_config);
    let mut flood: Vec<(TcpStream, Instant)> = Vec::with_capacity(SILENT + HALF_HELLO);
    for i in 0..SILENT + HALF_HELLO {
        let mut s = TcpStream::connect(d.addr).expect("flood connect");
        if i >= SILENT {
            s.write_all(&hello).expect("half hello");
        }
        flood.push((s, Instant::now()));
    }

    // The good client meanwhile: one message at a time, timed to arrival.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        pki::send(&mut good, format!("during {i}\n").as_bytes()).expect("good send");
        let (line, at) = arrived.recv_timeout(WAIT).expect("message arrives");
        assert_eq!(line, format!("during {i}"));
        latencies.push(at - sent);
    }

    // Every flood connection is closed by the daemon within the bound.
    let mut worst = Duration::ZERO;
    let mut buf = [0u8; 64];
    for (i, (s, opened)) in flood.iter_mut().enumerate() {
        let left = (*opened + CLOSED_WITHIN).saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // an alert
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    break !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        };
        let took = opened.elapsed();
        assert!(
            closed,
            "flood connection {i} still open {took:?} after it was opened"
        );
        worst = worst.max(took);
    }
    drop(flood);
    let max = sampler.peak_threads();

    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "flood: {} connections closed, slowest observed {worst:?} after open; \
         good client median latency {median:?}, max {:?}; daemon threads max {max} (bound {bound})",
        SILENT + HALF_HELLO,
        latencies[latencies.len() - 1]
    );
    assert!(max <= bound, "threads {max} above the bound {bound}");
    assert!(
        median < LATENCY_BOUND,
        "median latency {median:?} during the flood"
    );

    let st = d
        .wait_stats(WAIT, |s| {
            num(s, "closed_tls") == (SILENT + HALF_HELLO) as u64
        })
        .unwrap_or_else(|| panic!("closed_tls never reached the flood size:\n{}", d.log_text()));
    assert_eq!(num(&st, "conns_active"), 1, "{st:?}");
    // Invariant 6: threads and descriptors are given back.
    assert!(
        support::wait_until(WAIT, || d.threads() <= threads_before),
        "threads {} > {threads_before} after the flood",
        d.threads()
    );
    assert!(
        support::wait_until(WAIT, || d.open_fds() <= fds_before),
        "fds {} > {fds_before} after the flood",
        d.open_fds()
    );
    pki::send(&mut good, b"after\n").expect("send");
    let (line, _) = arrived.recv_timeout(WAIT).expect("after arrives");
    assert_eq!(line, "after");
    drop(good);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "received"), 22, "{st:?}");
    assert_eq!(num(&st, "delivered"), 22, "{st:?}");
}
