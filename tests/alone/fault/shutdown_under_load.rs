//! Scenario 5, shutdown under load: SIGTERM arrives while clients are
//! still sending and the queue is full (the tcp sink's downstream is
//! frozen). Every message counted received must be at the downstream
//! unless it is counted dropped or lost, and the exit code must follow
//! SPEC.md: 0 when the queue drained before `shutdown.timeout`, 1 when
//! messages were lost at the deadline.

use crate::support;

use std::thread;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::downstream::Downstream;
use crate::support::fault::{assert_drained_into, flood};
use crate::support::proc::raise_nofile;
use crate::support::{Daemon, StatsLine, assert_balanced, num};

fn config(downstream: &Downstream, capacity: u64, shutdown_timeout: &str) -> String {
    Conf::new()
        .set("limits.max_connections", 50)
        .set("limits.send_timeout", "300ms")
        .set("queue.capacity", capacity)
        .tcp_sink(downstream.addr)
        .set("shutdown.timeout", shutdown_timeout)
        .to_string()
}

/// Floods the daemon in the background until its queue is full, then
/// sends SIGTERM while the clients are still at it.
fn sigterm_with_a_full_queue(daemon: &Daemon) -> thread::JoinHandle<(u64, u64)> {
    let addr = daemon.addr;
    let clients = thread::spawn(move || flood(addr, 40, Duration::from_secs(4), "shutdown"));
    let full = daemon.wait_stats(Duration::from_secs(10), |s| {
        s["accept_paused"] == "true" && num(s, "dropped_send_timeout") > 0
    });
    assert!(
        full.is_some(),
        "the queue never filled; log:\n{}",
        daemon.log_text()
    );
    assert!(!clients.is_finished(), "clients stopped before SIGTERM");
    daemon.signal("TERM");
    clients
}

fn received_is_accounted(last: &StatsLine, lost: u64) {
    assert_eq!(
        num(last, "received"),
        num(last, "delivered")
            + num(last, "dropped_send_timeout")
            + num(last, "dropped_oversize")
            + lost,
        "received != delivered + dropped + lost in {last:?}"
    );
}

#[test]
fn sigterm_under_load_drains_the_full_queue_and_exits_0() {
    let _machine = crate::support::machine_shared();
    raise_nofile();
    let downstream = Downstream::frozen();
    let mut daemon = Daemon::start(&config(&downstream, 20_000, "20s"));
    let clients = sigterm_with_a_full_queue(&daemon);
    // The downstream comes back during the drain.
    downstream.release();
    let status = daemon.wait_exit(Duration::from_secs(30));
    let _ = clients.join();
    let last = assert_drained_into(&daemon, status, &downstream);
    assert!(daemon.log_text().contains("shutdown drained=true lost=0"));
    received_is_accounted(&last, 0);
    eprintln!(
        "FIGURES shutdown_under_load drained: exit=0 received={} delivered={} dropped_send_timeout={} \
         downstream_lines={}",
        num(&last, "received"),
        num(&last, "delivered"),
        num(&last, "dropped_send_timeout"),
        downstream.line_count()
    );
}

#[test]
fn sigterm_with_a_dead_downstream_counts_the_lost_and_exits_1() {
    let _machine = crate::support::machine_shared();
    raise_nofile();
    let downstream = Downstream::frozen();
    let mut daemon = Daemon::start(&config(&downstream, 5_000, "1s"));
    let clients = sigterm_with_a_full_queue(&daemon);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let _ = clients.join();
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log_text());
    let shutdown = daemon
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("shutdown drained=false lost=")
        })
        .expect("shutdown line");
    let lost: u64 = shutdown
        .split("lost=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("lost=N");
    let last = daemon.final_stats();
    assert!(lost > 0);
    assert_eq!(lost, num(&last, "queue_depth"), "{last:?}");
    assert_balanced(&last);
    received_is_accounted(&last, lost);
    // What reached the downstream: everything delivered, plus at most the
    // lost batch the sink was half-way through writing.
    downstream.release();
    let delivered = num(&last, "delivered") as usize;
    assert!(
        support::wait_until(Duration::from_secs(10), || downstream.line_count()
            >= delivered),
        "downstream has {} lines, the daemon delivered {delivered}",
        downstream.line_count()
    );
    assert!(downstream.line_count() <= delivered + lost as usize);
    eprintln!(
        "FIGURES shutdown_under_load lost: exit=1 received={} delivered={} dropped_send_timeout={} lost={lost} \
         downstream_lines={}",
        num(&last, "received"),
        delivered,
        num(&last, "dropped_send_timeout"),
        downstream.line_count()
    );
}
