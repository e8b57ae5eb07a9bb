//! A downstream that stops reading for a while: with a spool, the outage
//! fills the disk, not the drop counters. Nothing is dropped, no client is
//! closed, the spool grows and empties, and the collector gets every
//! message, in order per client.
//!
//! Scaled to stay short: 10 clients at 4,000 msgs/s in total (500 B each)
//! for 7 s, the collector paused for 4 s in the middle: 8 MB arrive
//! during the outage, more than the memory queue (2,000 messages, 1 MB)
//! plus the kernel's socket buffers (4 MiB at most here) can hold, so
//! without the spool the workers' send_timeout (500 ms) drops messages.

mod spool_support;
mod support;

use std::thread;
use std::time::{Duration, Instant};

use spool_support::{Collector, paced_clients, per_client};
use support::{Daemon, assert_balanced, num};

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 2800;
const RATE: f64 = 400.0;
const SIZE: usize = 500;

#[test]
fn an_outage_fills_the_spool_and_drops_nothing() {
    let collector = Collector::start(8192, 0);
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
framing = "lines"
[limits]
send_timeout = "500ms"
[queue]
capacity = 2000
[sink]
type = "tcp"
address = "{}"
write_timeout = "200ms"
[spool]
dir = "{{dir}}/spool"
segment_bytes = "1MiB"
sync = "100ms"
[log]
stats_interval = "200ms"
"#,
        collector.addr
    );
    let mut d = Daemon::start(&config);
    let clients = paced_clients(d.addr, CLIENTS, PER_CLIENT, RATE, SIZE);
    // The outage: from 1 s to 5 s into the 7 s of sending.
    let started = Instant::now();
    thread::sleep(Duration::from_secs(1));
    collector.pause();
    thread::sleep(Duration::from_secs(4));
    collector.resume();
    let outage_end = started.elapsed();
    for c in clients {
        assert!(c.join().unwrap(), "a client's connection was closed");
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    // Catching up 8 MB through loopback takes well under a second; 60 s
    // covers the sink's retry back-off (up to 5 s) on a loaded machine.
    let done = d
        .wait_stats(Duration::from_secs(60), |s| {
            num(s, "received") == total && num(s, "queue_depth") == 0
        })
        .unwrap_or_else(|| panic!("spool did not empty; log:\n{}", d.log_text()));
    assert_eq!(num(&done, "dropped_send_timeout"), 0);
    assert_eq!(num(&done, "closed_send_timeout"), 0);
    assert_eq!(num(&done, "delivered"), total);
    let peak = d
        .stats_lines()
        .iter()
        .map(|s| num(s, "spool_bytes"))
        .max()
        .unwrap_or(0);
    assert!(
        peak >= 2 << 20,
        "the spool never grew past 2 MiB during a {outage_end:?} run (peak {peak})"
    );
    // Empty again: at most the active segment (1 MiB) is left on disk.
    let emptied = d.wait_stats(Duration::from_secs(10), |s| {
        num(s, "spool_bytes") <= 1 << 20
    });
    assert!(
        emptied.is_some(),
        "spool_bytes stayed high: {:?}",
        d.stats_lines().last()
    );

    // Delivered = written into the socket; the collector reads on.
    assert!(support::wait_until(Duration::from_secs(20), || {
        collector.lines().len() as u64 >= total
    }));
    let lines = collector.lines();
    let per = per_client(&lines);
    assert_eq!(per.len(), CLIENTS);
    for (client, seqs) in per {
        let expected: Vec<usize> = (0..PER_CLIENT).collect();
        assert!(
            seqs == expected,
            "client {client}: {} messages, first out of order at {:?}",
            seqs.len(),
            seqs.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    assert!(d.stop(Duration::from_secs(15)).success());
    assert_balanced(&d.final_stats());
}
