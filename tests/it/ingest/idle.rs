//! Acceptance 6 (issue 2): a connection that completes no message for
//! `idle_timeout` is closed and counted in `closed_idle`, whether it is
//! silent or trickles bytes without ever finishing a message (slowloris);
//! a connection that keeps sending messages is not closed.
//!
//! The pauses between client writes below are the input's pacing (the
//! behaviour under test), not synchronisation.

use crate::support;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::{Daemon, await_close, num, wait_file_len};

const WAIT: Duration = Duration::from_secs(20);
/// Longer than SCHED_MARGIN plus the slacks below, so that a connection
/// held for twice the timeout fails the bound.
const IDLE: Duration = Duration::from_secs(1);
/// src/wake.rs: a worker waits for input in poll(2) with what is left of
/// the idle window, rounded up to whole milliseconds, so the wait that
/// ends the window may wake this much late.
const POLL_ROUNDING: Duration = Duration::from_millis(1);
/// The worker's idle clock may start before the client's `opened`: the
/// daemon accepts while the client is still setting socket options.
const EARLY: Duration = Duration::from_millis(20);

/// Latest a close may be seen after `opened`: idle_timeout, the poll
/// rounding, how long the client takes to notice (`notice`: its own polling
/// period), and a scheduling margin for a loaded machine.
fn latest_close(notice: Duration) -> Duration {
    IDLE + POLL_ROUNDING + notice + support::SCHED_MARGIN
}

fn start() -> Daemon {
    Conf::new()
        .set("server.framing", "lines")
        .set("limits.idle_timeout", format!("{}ms", IDLE.as_millis()))
        // Well under IDLE: the busy test reads the file before the
        // connection, quiet once the client stops, may turn idle.
        .set("sink.flush_interval", "50ms")
        .start()
}

#[test]
fn a_silent_connection_is_closed_after_idle_timeout_and_counted() {
    let mut d = start();
    let mut s = d.connect();
    let opened = Instant::now();
    await_close(&mut s, WAIT);
    let took = opened.elapsed();
    // The client blocks in read: it notices the close at once.
    let latest = latest_close(Duration::ZERO);
    assert!(
        took >= IDLE - EARLY && took <= latest,
        "closed after {took:?}, idle_timeout is {IDLE:?}, latest allowed {latest:?}"
    );
    assert!(
        d.wait_stats(WAIT, |s| num(s, "closed_idle") == 1
            && num(s, "workers") == 0)
            .is_some()
    );
    let st = d.stop_balanced(WAIT);
    assert_eq!(num(&st, "closed_idle"), 1);
    assert_eq!(num(&st, "received"), 0);
}

#[test]
fn a_connection_trickling_bytes_without_a_message_is_closed_as_idle() {
    let mut d = start();
    let mut s = d.connect();
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_millis(1)))
        .expect("read timeout");
    let opened = Instant::now();
    let mut closed = false;
    // One byte every 50 ms, never a LF: bytes flow, no message completes.
    for _ in 0..400 {
        if s.write_all(b"x").is_err() {
            closed = true;
            break;
        }
        match s.read(&mut [0u8; 16]) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => {
                closed = true;
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let took = opened.elapsed();
    assert!(closed, "a trickling connection was never closed");
    // The client looks once per turn: a 1 ms read, then 50 ms of pause.
    let latest = latest_close(Duration::from_millis(51));
    assert!(
        took >= IDLE - EARLY && took <= latest,
        "closed after {took:?}, idle_timeout is {IDLE:?}, latest allowed {latest:?}"
    );
    assert!(
        d.wait_stats(WAIT, |s| num(s, "closed_idle") == 1
            && num(s, "workers") == 0)
            .is_some()
    );
    let st = d.stop_balanced(WAIT);
    // The unfinished line is not a message.
    assert_eq!(num(&st, "received"), 0);
    assert_eq!(num(&st, "closed_idle"), 1);
    assert!(support::read(&d.path("out.log")).is_empty());
}

#[test]
fn a_busy_connection_outlives_idle_timeout() {
    let mut d = start();
    let mut s = d.connect();
    s.set_nodelay(true).expect("nodelay");
    let mut expected = Vec::new();
    // A message every 50 ms for three idle timeouts.
    let until = Instant::now() + IDLE * 3;
    let mut n = 0;
    while Instant::now() < until && n < 1000 {
        let m = format!("busy {n}\n");
        s.write_all(m.as_bytes()).expect("busy connection closed");
        expected.extend_from_slice(m.as_bytes());
        n += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
    support::assert_bytes(&expected, &got);
    let st = d.wait_stats(WAIT, |_| true).expect("a stats line");
    assert_eq!(
        num(&st, "conns_active"),
        1,
        "busy connection closed: {st:?}"
    );
    assert_eq!(num(&st, "closed_idle"), 0);
    drop(s);
    let st = d.stop_balanced(WAIT);
    assert_eq!(num(&st, "closed_idle"), 0);
    assert_eq!(num(&st, "delivered"), n);
}
