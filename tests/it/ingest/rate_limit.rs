//! `limits.rate_per_connection`: a token bucket that slows a reader down
//! (TCP backpressure) and never drops, and whose pauses never count as the
//! peer being idle.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::{Daemon, assert_balanced, num, read, wait_until};

fn start(rate: u32, idle: &str) -> Daemon {
    Conf::new()
        .set("limits.rate_per_connection", rate)
        .set("limits.idle_timeout", idle)
        .start()
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<u8> {
    range
        .flat_map(|i| format!("{prefix} {i:04}\n").into_bytes())
        .collect()
}

#[test]
fn a_burst_over_the_rate_is_paced_and_nothing_is_dropped() {
    let mut daemon = start(50, "60s");
    let out = daemon.path("out.log");
    let mut c = daemon.connect();
    let started = Instant::now();
    // One second of burst allowance, then 100 more at 50/s: about 2 s.
    let data = lines("paced", 0..150);
    c.write_all(&data).unwrap();
    assert!(wait_until(Duration::from_secs(30), || read(&out).len() == data.len()));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "150 messages at 50/s with a burst of 50 took only {took:?}"
    );
    assert_eq!(read(&out), data);
    drop(c);
    assert_eq!(daemon.stop(Duration::from_secs(20)).code(), Some(0));
    let s = daemon.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "received"), 150);
    assert_eq!(
        num(&s, "dropped_send_timeout") + num(&s, "dropped_oversize"),
        0
    );
}

#[test]
fn pacing_pauses_do_not_count_as_idle() {
    // At 1 message/s the wait for the next token is over three times
    // idle_timeout. The worker frames "first", then waits for a token with
    // "sec" unread; the rest of the second message arrives during that
    // wait and must not be lost to an idle close.
    let mut daemon = start(1, "300ms");
    let out = daemon.path("out.log");
    let mut c = daemon.connect();
    c.write_all(b"first\nsec").unwrap();
    // Client pacing, not synchronisation: the rest must arrive while the
    // worker waits for its token.
    std::thread::sleep(Duration::from_millis(400));
    c.write_all(b"ond\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || read(&out) == b"first\nsecond\n"),
        "delivered {:?}; log:\n{}",
        String::from_utf8_lossy(&read(&out)),
        daemon.log_text()
    );
    drop(c);
    assert_eq!(daemon.stop(Duration::from_secs(20)).code(), Some(0));
    let s = daemon.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "received"), 2);
}
