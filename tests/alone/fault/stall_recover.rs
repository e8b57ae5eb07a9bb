//! Scenario 2, stall then recover: the tcp sink's downstream freezes for a
//! few seconds under a flood, then drains. The accept loop must pause
//! (log line and `accept_paused=true` in stats) and resume, delivery must
//! resume right after the release, and the books must balance on the
//! final stats line with every delivered message at the downstream.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::downstream::Downstream;
use crate::support::fault::{assert_drained_into, flood, send_and_close};
use crate::support::num;

const MARKER: &[u8] = b"marker sent while the downstream was frozen\n";

#[test]
fn accept_pauses_during_a_stall_and_delivery_resumes_after_it() {
    let _machine = crate::support::machine_shared();
    let downstream = Downstream::frozen();
    let mut daemon = Conf::new()
        .set("limits.max_connections", 50)
        .set("limits.send_timeout", "500ms")
        .set("queue.capacity", 2000)
        .set("queue.pause_accept_above", 0.9)
        .set("queue.resume_accept_below", 0.5)
        .tcp_sink(downstream.addr)
        .start();

    // Freeze: a flood fills the queue while the downstream reads nothing.
    let (sent, _) = flood(daemon.addr, 20, Duration::from_secs(3), "stall");
    assert!(sent > 0);
    assert!(
        daemon
            .wait_log(Duration::from_secs(5), |l| l.contains("accept paused"))
            .is_some(),
        "no accept paused line; log:\n{}",
        daemon.log_text()
    );
    let paused = daemon
        .wait_stats(Duration::from_secs(5), |s| s["accept_paused"] == "true")
        .expect("a stats line with accept_paused=true");
    assert!(num(&paused, "dropped_send_timeout") > 0, "{paused:?}");
    let delivered_frozen = num(&paused, "delivered");
    // Made while paused: waits in the kernel backlog.
    send_and_close(daemon.addr, MARKER);

    let released = Instant::now();
    downstream.release();
    let resumed_line = daemon.wait_log(Duration::from_secs(10), |l| l.contains("accept resumed"));
    let resumed_after = released.elapsed();
    assert!(
        resumed_line.is_some(),
        "no accept resumed line; log:\n{}",
        daemon.log_text()
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || downstream.contains(MARKER)),
        "the marker never arrived; log:\n{}",
        daemon.log_text()
    );
    let marker_after = released.elapsed();
    daemon
        .wait_stats(Duration::from_secs(5), |s| {
            num(s, "delivered") > delivered_frozen && s["accept_paused"] == "false"
        })
        .expect("a stats line after the release: delivered grew, accept not paused");
    eprintln!(
        "FIGURES stall_recover: accept_resumed_after_release={resumed_after:?} \
         marker_delivered_after_release={marker_after:?} dropped_send_timeout_during_stall={} \
         closed_send_timeout={} delivered_before_release={delivered_frozen}",
        num(&paused, "dropped_send_timeout"),
        num(&paused, "closed_send_timeout"),
    );
    // Generous for a loaded 2-core machine; the figure above is the real one.
    assert!(marker_after < Duration::from_secs(5), "{marker_after:?}");

    let status = daemon.stop(Duration::from_secs(20));
    let last = assert_drained_into(&daemon, status, &downstream);
    eprintln!(
        "FIGURES stall_recover: final received={} delivered={} dropped_send_timeout={} dropped_oversize={}",
        num(&last, "received"),
        num(&last, "delivered"),
        num(&last, "dropped_send_timeout"),
        num(&last, "dropped_oversize")
    );
}
