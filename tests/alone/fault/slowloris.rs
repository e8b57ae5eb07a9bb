//! Scenario 3, slowloris: hundreds of connections that send nothing, or a
//! byte at a time without ever finishing a message. Every one of them must
//! be closed by `idle_timeout` (counted `closed_idle`), including the
//! tricklers, since idle time counts from the last complete message; and a
//! well-behaved client on the same daemon must be served with low latency
//! the whole time.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::proc::{Sampler, raise_nofile};
use crate::support::{assert_balanced, assert_bytes, num, read};

const SILENT: usize = 150;
const TRICKLE: usize = 150;
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Exactly one permit per connection (the good client and every slowloris
/// one): all are admitted, and SPEC.md's thread bound is as tight as this
/// load allows.
const MAX_CONNECTIONS: usize = 1 + SILENT + TRICKLE;
/// Threads of an idle daemon: main, fw-accept, fw-stats, fw-signal and one
/// sink thread.
const IDLE_THREADS: u64 = 5;

#[test]
fn slowloris_connections_are_closed_idle_and_a_good_client_is_served() {
    let _machine = crate::support::machine_shared();
    raise_nofile();
    let mut daemon = Conf::new()
        .set("limits.max_connections", MAX_CONNECTIONS)
        .set(
            "limits.idle_timeout",
            format!("{}ms", IDLE_TIMEOUT.as_millis()),
        )
        // The good client's latency is measured from the file: keep the
        // file sink's buffering (up to flush_interval) out of it.
        .set("sink.flush_interval", "20ms")
        .start();
    let out = daemon.path("out.log");
    let mut good = daemon.connect();
    let mut expected = Vec::new();
    let mut latencies = Vec::new();
    let mut send_good = |good: &mut TcpStream, i: usize, expected: &mut Vec<u8>| {
        let line = format!("good client message {i:04}\n");
        let t = Instant::now();
        good.write_all(line.as_bytes()).expect("good client write");
        expected.extend_from_slice(line.as_bytes());
        assert!(
            support::wait_until(Duration::from_secs(10), || read(&out).ends_with(expected)),
            "good message {i} not delivered"
        );
        latencies.push(t.elapsed());
    };
    send_good(&mut good, 0, &mut expected);

    let sampler = Sampler::start(daemon.pid(), Duration::from_millis(20));
    let silent: Vec<TcpStream> = (0..SILENT).map(|_| daemon.connect()).collect();
    let trickle: Vec<TcpStream> = (0..TRICKLE).map(|_| daemon.connect()).collect();
    let connected = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(10), || daemon
            .stats_lines()
            .last()
            .is_some_and(|s| num(s, "conns_active") as usize == 1 + SILENT + TRICKLE)),
        "not every slowloris connection was admitted; log:\n{}",
        daemon.log_text()
    );

    // One byte per connection every 100 ms, never a delimiter, until the
    // daemon closes them all (bounded by a deadline).
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        let mut socks: Vec<Option<TcpStream>> =
            trickle.iter().map(|s| s.try_clone().ok()).collect();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut bytes = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for slot in socks.iter_mut() {
                    let Some(s) = slot else { continue };
                    if s.write_all(b"a").is_ok() {
                        bytes += 1;
                    } else {
                        *slot = None;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
            bytes
        })
    };

    // The good client keeps talking while the slowloris set is connected.
    let mut i = 1;
    let all_idle = loop {
        send_good(&mut good, i, &mut expected);
        i += 1;
        let last = daemon.stats_lines().last().cloned();
        if last
            .as_ref()
            .is_some_and(|s| num(s, "closed_idle") as usize == SILENT + TRICKLE)
        {
            break connected.elapsed();
        }
        assert!(
            connected.elapsed() < IDLE_TIMEOUT + Duration::from_secs(10),
            "slowloris connections still open: {last:?}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::SeqCst);
    let trickled = trickler.join().expect("trickler");
    let samples = sampler.finish();

    // Each slowloris client sees its connection closed.
    for (n, mut s) in silent.into_iter().chain(trickle).enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        match s.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("slowloris connection {n} not closed by the daemon: {other:?}"),
        }
    }
    // Served throughout, and still served after.
    send_good(&mut good, i, &mut expected);
    drop(good);
    let status = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let last = daemon.final_stats();
    assert_balanced(&last);
    assert_eq!(
        num(&last, "closed_idle") as usize,
        SILENT + TRICKLE,
        "{last:?}"
    );
    assert_eq!(num(&last, "received"), i as u64 + 1, "{last:?}");
    // Nothing of the tricklers' bytes is a message.
    assert_bytes(&expected, &read(&out));

    latencies.sort();
    let max_threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    eprintln!(
        "FIGURES slowloris: connections={} closed_idle={} all_closed_after={all_idle:?} (idle_timeout={IDLE_TIMEOUT:?}) \
         trickled_bytes={trickled} good_messages={} good_latency_median={:?} good_latency_max={:?} threads_max={max_threads} \
         rss_max_kib={}",
        SILENT + TRICKLE,
        num(&last, "closed_idle"),
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
    );
    assert!(
        all_idle >= IDLE_TIMEOUT,
        "closed before idle_timeout: {all_idle:?}"
    );
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "good client latency too high: {:?}",
        latencies[latencies.len() - 1]
    );
    // SPEC.md invariant 1 at every sample: max_connections + sink.workers + 8.
    let bound = MAX_CONNECTIONS as u64 + 1 + 8;
    assert!(
        max_threads <= bound,
        "thread bound broken: {max_threads} > {bound}; samples: {:?}",
        samples.iter().map(|s| s.threads).collect::<Vec<_>>()
    );
    // The samples saw the load: every connection held its worker thread
    // for idle_timeout (2 s, a hundred samples), so a sampler that missed
    // them looked at the wrong process or not at all.
    assert!(
        max_threads >= IDLE_THREADS + MAX_CONNECTIONS as u64,
        "the sampler never saw the {MAX_CONNECTIONS} workers: at most {max_threads} threads"
    );
}
