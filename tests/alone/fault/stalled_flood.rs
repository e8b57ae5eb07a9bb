//! Scenario 1, stalled downstream flood: ten times `max_connections`
//! clients send as fast as they can for a few seconds while the tcp sink's
//! downstream accepts and never reads. The daemon's OS threads must stay
//! within SPEC.md's bound (max_connections + sink.workers + 8) at every
//! sample, fall back to the idle baseline within send_timeout + 1 s of the
//! clients stopping, and the daemon must still admit a connection and
//! count its messages once the downstream drains.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::downstream::Downstream;
use crate::support::fault::{assert_drained_into, flood, send_and_close};
use crate::support::proc::{Sampler, raise_nofile};
use crate::support::{assert_balanced, num};

const MAX_CONNECTIONS: u64 = 20;
const SINK_WORKERS: u64 = 1;
const CLIENTS: usize = 200;
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Policy "drop": the admitted workers stay, reading and dropping (the
/// queue is full, so they shed), and hold their permits while the flood
/// lasts; they leave when their clients stop. How many get in before the
/// full queue pauses accept depends on timing; the bound holds anyway.
#[test]
fn drop_policy_holds_every_permit_within_the_bound_and_releases_them() {
    let _machine = crate::support::machine_shared();
    let threads_max = stalled_flood("drop");
    assert!(
        threads_max > 4 + SINK_WORKERS,
        "the flood never admitted a worker: threads max {threads_max}"
    );
}

/// Policy "close" (the default): send timeouts close the workers and the
/// full queue pauses accept, so the threads drain while the flood goes on.
#[test]
fn close_policy_sheds_workers_within_the_bound_under_a_stalled_flood() {
    let _machine = crate::support::machine_shared();
    stalled_flood("close");
}

/// Floods a daemon whose downstream never reads; checks the thread bound,
/// the release after the clients stop, the counters, and that the daemon
/// serves a new connection once the downstream drains. Returns the most
/// threads sampled.
fn stalled_flood(on_send_timeout: &str) -> u64 {
    raise_nofile();
    let downstream = Downstream::frozen();
    let mut daemon = Conf::new()
        .set("limits.max_connections", MAX_CONNECTIONS)
        .set(
            "limits.send_timeout",
            format!("{}ms", SEND_TIMEOUT.as_millis()),
        )
        .set("limits.on_send_timeout", on_send_timeout)
        .set("queue.capacity", 100000)
        .tcp_sink(downstream.addr)
        .set("sink.workers", SINK_WORKERS)
        .set("log.stats_interval", "200ms")
        .start();
    // Idle: main, fw-accept, fw-stats, fw-signal and the sink threads.
    let idle = 4 + SINK_WORKERS;
    let bound = MAX_CONNECTIONS + SINK_WORKERS + 8;
    assert!(
        support::wait_until(Duration::from_secs(10), || daemon.threads() == idle),
        "idle daemon has {} threads, expected {idle}",
        daemon.threads()
    );

    let sampler = Sampler::start(daemon.pid(), Duration::from_millis(20));
    let started = Instant::now();
    // Meanwhile, note each stats line's queue depth and when it was seen.
    let flooding = AtomicBool::new(true);
    let (depths, (sent, connects)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut depths: Vec<(Instant, u64)> = Vec::new();
            // Bounded: the flood lasts 3 s, a stats line comes every 200 ms.
            for _ in 0..1000 {
                if !flooding.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(s) = daemon.wait_stats(Duration::from_millis(300), |_| true) {
                    depths.push((Instant::now(), num(&s, "queue_depth")));
                }
            }
            depths
        });
        let flooded = flood(daemon.addr, CLIENTS, Duration::from_secs(3), "flood");
        flooding.store(false, Ordering::SeqCst);
        (watcher.join().expect("depth watcher"), flooded)
    });
    let stopped = Instant::now();
    let threads_at_stop = daemon.threads();
    let close = on_send_timeout == "close";
    // With "close" every worker gives up within send_timeout of its last
    // enqueue, frames what its socket still holds without waiting
    // (count_unread) and exits; its OS thread is gone when it returns,
    // whenever the accept loop joins it. The accept loop admits nobody new
    // meanwhile (accept is paused: the queue is full and the downstream
    // frozen). So: send_timeout plus a scheduling margin for a loaded
    // machine. With "drop" a worker keeps reading what its gone client
    // left in the kernel buffers, one send_timeout per read; it is
    // checked after the release below.
    let back_to_idle = close
        && support::wait_until(SEND_TIMEOUT + support::SCHED_MARGIN, || {
            daemon.threads() == idle
        });
    let release = stopped.elapsed();
    let samples = sampler.finish();
    // With "close", once the queue is as full as it gets (the frozen
    // downstream takes nothing; accept is paused, so nobody new comes in),
    // every worker's next enqueue blocks and gives up after send_timeout,
    // and the worker exits. So while the flood goes on, the last worker
    // thread is gone by then plus send_timeout plus a scheduling margin.
    // "Then" is the first stats line showing the final depth, which is at
    // most one stats_interval late: that only loosens the bound.
    let full_depth = depths.iter().map(|&(_, d)| d).max().unwrap_or(0);
    let full_seen = depths
        .iter()
        .find(|&&(_, d)| d == full_depth)
        .map(|&(at, _)| at)
        .unwrap_or_else(|| {
            panic!(
                "no stats line during the flood; log:\n{}",
                daemon.log_text()
            )
        });
    let workers_gone_by = full_seen + SEND_TIMEOUT + support::SCHED_MARGIN;
    let last_worker = samples
        .iter()
        .filter(|s| s.threads > idle && s.at <= stopped)
        .map(|s| s.at)
        .max();
    if close {
        let late = last_worker.filter(|&at| at > workers_gone_by);
        assert!(
            late.is_none(),
            "worker threads alive {:?} after the queue was full (allowed {:?}) while the flood went on",
            late.map(|at| at - full_seen),
            workers_gone_by - full_seen
        );
    }
    let max_threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    eprintln!(
        "FIGURES stalled_flood {on_send_timeout}: clients={CLIENTS} flood={:?} lines_written={sent} \
         connects={connects} samples={} threads_max={max_threads} bound={bound} idle={idle} \
         threads_at_stop={threads_at_stop} idle_after_stop={back_to_idle} release_after_stop={release:?} \
         queue_full_seen_after={:?} last_worker_after_full={:?} rss_max_kib={max_rss}",
        stopped - started,
        samples.len(),
        full_seen - started,
        last_worker.map(|at| at.saturating_duration_since(full_seen)),
    );
    assert!(
        samples.len() > 50,
        "too few thread samples: {}",
        samples.len()
    );
    assert!(
        max_threads <= bound,
        "thread bound broken: {max_threads} > {bound}; samples: {:?}",
        samples.iter().map(|s| s.threads).collect::<Vec<_>>()
    );
    assert!(max_threads > idle, "the flood never reached a worker");
    assert!(
        back_to_idle || !close,
        "threads did not return to the idle {idle} after the clients stopped: {} now",
        daemon.threads()
    );
    // The bound is kept by send timeouts and the accept pause, and both
    // are counted.
    let paused = daemon.wait_stats(Duration::from_secs(5), |s| {
        s["accept_paused"] == "true" && num(s, "dropped_send_timeout") > 0
    });
    let stall =
        paused.unwrap_or_else(|| panic!("accept never paused; log:\n{}", daemon.log_text()));
    if close {
        assert!(num(&stall, "closed_send_timeout") > 0, "{stall:?}");
        assert_eq!(num(&stall, "workers"), 0, "{stall:?}");
        assert_balanced(&stall);
    } else {
        assert_eq!(num(&stall, "closed_send_timeout"), 0, "{stall:?}");
    }
    eprintln!(
        "FIGURES stalled_flood {on_send_timeout}: during stall received={} dropped_send_timeout={} \
         closed_send_timeout={} queue_depth={}",
        num(&stall, "received"),
        num(&stall, "dropped_send_timeout"),
        num(&stall, "closed_send_timeout"),
        num(&stall, "queue_depth")
    );

    // Still admits: a connection made during the stall waits in the
    // backlog (accept is paused, by design) and is served once the
    // downstream drains.
    send_and_close(daemon.addr, b"marker after the stalled flood\n");
    downstream.release();
    assert!(
        support::wait_until(Duration::from_secs(30), || downstream
            .contains(b"marker after the stalled flood\n")),
        "the marker never reached the downstream; log:\n{}",
        daemon.log_text()
    );
    assert!(
        support::wait_until(Duration::from_secs(20), || daemon.threads() == idle),
        "threads did not return to the idle {idle} after the drain: {} now",
        daemon.threads()
    );
    let status = daemon.stop(Duration::from_secs(20));
    assert_drained_into(&daemon, status, &downstream);
    max_threads
}
