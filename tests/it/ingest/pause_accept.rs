//! Acceptance 5 (issue 2): the accept loop pauses while the queue is above
//! `pause_accept_above` (one warn line "accept paused", accept_paused=true,
//! a new connection is not taken) and resumes below `resume_accept_below`
//! (one info line "accept resumed"; the waiting client is then served).
//!
//! The sink is a file sink on a FIFO the test does not read: the pipe
//! fills, the sink blocks and the queue backs up; draining the pipe is
//! the release.

use crate::support;

use std::io::Write;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{Fifo, assert_balanced, num};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn accept_pauses_above_the_high_watermark_and_resumes_below_the_low_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fifo = Fifo::create(&dir.path().join("sink.fifo"));
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.send_timeout", "30s")
        .set("limits.idle_timeout", "30s")
        .set("queue.capacity", 10)
        .set("queue.pause_accept_above", 0.8)
        .set("queue.resume_accept_below", 0.3)
        .set("sink.path", "{dir}/sink.fifo")
        .start_in(dir);
    // Two 60 KB messages overflow the 64 KiB pipe, so the sink blocks;
    // eight more fill the queue to 9 or 10 of 10: above 8, the watermark.
    let big = "B".repeat(60_000);
    let mut expected = Vec::new();
    for m in [format!("1{big}"), format!("2{big}")]
        .into_iter()
        .chain((0..8).map(|i| format!("small {i}")))
    {
        expected.extend_from_slice(m.as_bytes());
        expected.push(b'\n');
    }
    d.send(&expected);
    let paused = d.wait_log(WAIT, |l| l.contains("accept paused"));
    assert!(paused.is_some(), "no pause; log:\n{}", d.log_text());
    assert!(
        d.wait_stats(WAIT, |s| s["accept_paused"] == "true"
            && num(s, "received") == 10)
            .is_some()
    );

    // A client connecting now is not taken: three stats periods later
    // the daemon still counts one connection.
    let mut waiting = d.connect();
    waiting.write_all(b"while paused\n").expect("send");
    for _ in 0..3 {
        let st = d
            .wait_stats(WAIT, |_| true)
            .expect("stats lines keep coming");
        assert_eq!(st["accept_paused"], "true", "{st:?}");
        assert_eq!(num(&st, "conns_total"), 1, "accepted while paused: {st:?}");
        assert_eq!(num(&st, "received"), 10, "{st:?}");
    }
    assert!(d.log_lines().iter().all(|l| !l.contains("accept resumed")));

    // Release: the queue drains below 3, accept resumes, and the waiting
    // client's message follows everything queued before it.
    assert!(fifo.drain_until_len(expected.len(), WAIT));
    let resumed = d.wait_log(WAIT, |l| l.contains("accept resumed"));
    assert!(resumed.is_some(), "no resume; log:\n{}", d.log_text());
    expected.extend_from_slice(b"while paused\n");
    assert!(
        fifo.drain_until_len(expected.len(), WAIT),
        "waiting client never served; log:\n{}",
        d.log_text()
    );
    support::assert_bytes(&expected, &fifo.data);
    drop(waiting);

    let status = d.stop(WAIT);
    assert!(status.success(), "exit {status:?}");
    let lines = d.log_lines();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("accept paused"), 1, "one warn line per pause");
    assert_eq!(count("accept resumed"), 1, "one info line per resume");
    let pause_line = lines
        .iter()
        .find(|l| l.contains("accept paused"))
        .expect("pause line");
    assert!(pause_line.contains("WARN"), "{pause_line}");
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "delivered"), 11);
    assert_eq!(num(&s, "conns_total"), 2);
    assert_eq!(num(&s, "dropped_send_timeout"), 0);
    assert_eq!(s["accept_paused"], "false");
}
