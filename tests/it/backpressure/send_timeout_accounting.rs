//! What happens to the rest of a connection's data when a send times out.
//!
//! - Policy "close": the worker gives up, and before closing it frames and
//!   counts as dropped what the peer had already sent (kernel buffer and
//!   read buffer), so no message the peer sent before the close vanishes
//!   uncounted.
//! - Policy "drop": after one timeout the connection sheds: while the
//!   queue stays full, later batches are dropped at once instead of each
//!   waiting `send_timeout` again; once room is back it delivers again.
//!
//! In-process with a stalled `TestSink`. The queue holds 160 messages, so
//! one read's messages travel in batches of 10 (capacity / 16): a single
//! 50-line write makes several batches.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::{TestSink, await_close, wait_until};
use floodwall::Shutdown;

const WAIT: Duration = Duration::from_secs(20);

fn lines(prefix: &str, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{prefix} {i}\n").into_bytes())
        .collect()
}

fn start(policy: &str, send_timeout: &str) -> (floodwall::Daemon, TestSink) {
    let config = Conf::bare()
        .set("limits.send_timeout", send_timeout)
        .set("limits.on_send_timeout", policy)
        .set("queue.capacity", 160)
        .no_accept_pause()
        .set("log.stats_interval", "0s")
        .parse();
    let sink = TestSink::stalled();
    let daemon =
        floodwall::start_with_sinks(config, Shutdown::new(), sink.boxed()).expect("daemon starts");
    (daemon, sink)
}

/// A connection the daemon has accepted, opened before the queue fills: a
/// full queue pauses the accept loop (pause_accept_above = 1.0), so one
/// opened after `fill` may wait in the backlog, which it did with other
/// tests running beside this one.
fn accepted(daemon: &floodwall::Daemon) -> std::net::TcpStream {
    let c = std::net::TcpStream::connect(daemon.local_addr()).unwrap();
    assert!(
        wait_until(WAIT, || daemon.stats().conns_active == 1),
        "not accepted: {:?}",
        daemon.stats()
    );
    c
}

/// Fills the queue to capacity from one connection that then closes.
fn fill(daemon: &floodwall::Daemon) {
    let mut c = std::net::TcpStream::connect(daemon.local_addr()).unwrap();
    c.write_all(&lines("fill", 160)).unwrap();
    drop(c);
    assert!(
        wait_until(WAIT, || daemon.stats().queue_depth == 160),
        "queue did not fill: {:?}",
        daemon.stats()
    );
}

#[test]
fn close_counts_what_the_peer_already_sent() {
    let (daemon, sink) = start("close", "300ms");
    let mut c = accepted(&daemon);
    fill(&daemon);
    // 50 lines in one write: the first batch of 10 times out; the other
    // 40 were sent too and must be counted, not silently discarded.
    c.write_all(&lines("late", 50)).unwrap();
    await_close(&mut c, WAIT);
    assert!(wait_until(WAIT, || daemon.stats().closed_send_timeout == 1));
    let s = daemon.stats();
    assert_eq!(s.dropped_send_timeout, 50, "{s:?}");
    assert_eq!(s.received, 210, "{s:?}");
    sink.release();
    let report = {
        let handle = daemon.shutdown_handle();
        handle.trigger();
        daemon.wait()
    };
    assert!(report.drained);
    assert!(report.stats.balanced(), "{:?}", report.stats);
    assert_eq!(report.stats.delivered, 160);
}

#[test]
fn drop_policy_sheds_instead_of_waiting_per_batch() {
    let send_timeout = Duration::from_secs(2);
    let (daemon, sink) = start("drop", "2s");
    let mut c = accepted(&daemon);
    fill(&daemon);
    let started = Instant::now();
    // Five batches of 10: waiting send_timeout for each would take 10 s.
    c.write_all(&lines("shed", 50)).unwrap();
    assert!(
        wait_until(WAIT, || daemon.stats().dropped_send_timeout == 50),
        "{:?}",
        daemon.stats()
    );
    let took = started.elapsed();
    assert!(
        took >= send_timeout - Duration::from_millis(100),
        "the first batch must wait send_timeout, took {took:?}"
    );
    assert!(
        took < send_timeout * 3,
        "later batches should be shed at once, took {took:?}"
    );
    // The connection stays open and delivers once there is room again.
    assert_eq!(daemon.stats().closed_send_timeout, 0);
    sink.release();
    assert!(wait_until(WAIT, || daemon.stats().queue_depth == 0));
    c.write_all(b"after the stall\n").unwrap();
    assert!(wait_until(WAIT, || sink
        .messages()
        .iter()
        .any(|m| m == b"after the stall")));
    drop(c);
    let handle = daemon.shutdown_handle();
    handle.trigger();
    let report = daemon.wait();
    assert!(report.drained);
    assert!(report.stats.balanced(), "{:?}", report.stats);
    assert_eq!(report.stats.delivered, 161);
}
