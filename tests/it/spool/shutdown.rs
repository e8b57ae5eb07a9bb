//! Shutdown with the downstream away: the daemon exits 0 within
//! `shutdown.timeout`, what it could not deliver stays spooled (the final
//! `queue_depth`, not `lost`), and the next start delivers it.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::downstream::Downstream;
use crate::support::spool::{config, message, per_client, tcp_sink};
use crate::support::{Daemon, assert_balanced, num};

const N: usize = 5000;

#[test]
fn a_shutdown_keeps_the_spool_and_the_next_start_delivers_it() {
    let spool = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&config(
        &tcp_sink(crate::support::free_port()),
        spool.path(),
        "[shutdown]\ntimeout = \"2s\"",
    ));
    let mut text = String::new();
    for i in 0..N {
        text.push_str(&message(0, i, 100));
        text.push('\n');
    }
    d.send(text.as_bytes());
    assert!(
        d.wait_stats(Duration::from_secs(10), |s| num(s, "received") == N as u64
            && num(s, "spool_bytes") > 0)
            .is_some(),
        "not spooled; log:\n{}",
        d.log_text()
    );
    let asked = Instant::now();
    let status = d.stop(Duration::from_secs(20));
    let took = asked.elapsed();
    assert!(status.success(), "exit {status:?}; log:\n{}", d.log_text());
    // The 2 s deadline, plus 3 s for process exit on a loaded machine.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let last = d.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "queue_depth"), N as u64, "what stays spooled");
    assert_eq!(num(&last, "delivered"), 0);
    assert!(d.log_text().contains("shutdown drained=true lost=0"));
    // drained=true alone reads as "all delivered": the line before it says
    // what stays on disk.
    assert!(
        d.log_text().contains(&format!(
            "shutdown: {N} messages stay spooled on disk for the next start (not lost)"
        )),
        "log:\n{}",
        d.log_text()
    );

    let collector = Downstream::with_rcvbuf(1 << 16);
    let mut d = Daemon::start(&config(&tcp_sink(collector.addr), spool.path(), ""));
    let s = d
        .wait_stats(Duration::from_secs(20), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("spool not delivered; log:\n{}", d.log_text()));
    assert_eq!(num(&s, "recovered"), N as u64);
    assert_eq!(num(&s, "delivered"), N as u64);
    assert_eq!(num(&s, "spool_corrupt"), 0);
    assert!(d.stop(Duration::from_secs(15)).success());
    assert_balanced(&d.final_stats());
    assert!(support::wait_until(Duration::from_secs(5), || collector
        .lines()
        .len()
        == N));
    let per = per_client(&collector.lines());
    assert_eq!(
        per[&0],
        (0..N).collect::<Vec<_>>(),
        "replayed in order, once"
    );
}
