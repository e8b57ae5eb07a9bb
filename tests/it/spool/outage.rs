//! A downstream that stops reading for a while: with a spool, the outage
//! fills the disk, not the drop counters. Nothing is dropped, no client is
//! closed, the spool grows and empties, and the collector gets every
//! message, in order per client.
//!
//! At the scale: 20 clients send 5,000 msgs/s in total (250 each,
//! 200 B) for 24 s, and the collector stops reading for 20 s of it: about
//! 20 MB arrive during the outage. The memory queue in front of the spool
//! is kept small (1,000 messages, 200 KB) and the kernel can buffer at
//! most ~4 MiB of it (the tcp sink's send buffer; the collector's receive
//! buffer is 8 KiB), so the spool must hold the rest; without the spool
//! the workers' send_timeout (500 ms) drops messages and closes clients
//! within a second of the outage.

use crate::support;

use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::downstream::Downstream;
use crate::support::spool::{paced_clients, per_client};
use crate::support::{assert_balanced, num};

const CLIENTS: usize = 20;
/// Per client: 250 msgs/s x 20 clients = 5,000 msgs/s in total.
const RATE: f64 = 250.0;
/// 24 s of sending: the outage starts well under a second in (see
/// BEFORE_OUTAGE) and lasts 20 s, so the clients keep sending across all
/// of it and after it.
const PER_CLIENT: usize = 6_000;
const SIZE: usize = 200;
const QUEUE: usize = 1_000;
const OUTAGE: Duration = Duration::from_secs(20);
/// The outage starts once the collector has this many messages: the
/// whole path is flowing (0.2 s of sending).
const BEFORE_OUTAGE: usize = 1_000;

#[test]
fn an_outage_fills_the_spool_and_drops_nothing() {
    let collector = Downstream::with_rcvbuf(8192);
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.send_timeout", "500ms")
        .set("queue.capacity", QUEUE)
        .tcp_sink(collector.addr)
        .set("sink.write_timeout", "200ms")
        .set("spool.dir", "{dir}/spool")
        .set("spool.segment_bytes", "1MiB")
        .set("spool.sync", "100ms")
        .set("log.stats_interval", "200ms")
        .start();
    let started = Instant::now();
    let clients = paced_clients(d.addr, CLIENTS, PER_CLIENT, RATE, SIZE);
    // 10 s: 1,000 messages are 0.2 s of sending, on a machine that may be busy.
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            collector.lines().len() >= BEFORE_OUTAGE
        }),
        "the collector got no traffic; log:\n{}",
        d.log_text()
    );
    collector.pause();
    let outage_start = started.elapsed();
    thread::sleep(OUTAGE); // the outage itself: the scenario, not a wait
    collector.resume();
    let outage_end = started.elapsed();
    let sending_after = clients.iter().any(|c| !c.is_finished());
    for c in clients {
        assert!(c.join().unwrap(), "a client's connection was closed");
    }
    // The clients' schedule runs 24 s: still sending when the outage ends
    // (4 s of margin for a slow start; if not, the scenario did not happen).
    assert!(
        sending_after,
        "the clients were done before the outage ended ({outage_start:?}..{outage_end:?})"
    );
    let total = (CLIENTS * PER_CLIENT) as u64;
    // Catching up 20 MB through loopback takes a second or two; 60 s
    // covers the sink's retry back-off (up to 5 s) on a loaded machine.
    let done = d
        .wait_stats(Duration::from_secs(60), |s| {
            num(s, "received") == total && num(s, "queue_depth") == 0
        })
        .unwrap_or_else(|| panic!("spool did not empty; log:\n{}", d.log_text()));
    assert_eq!(num(&done, "dropped_send_timeout"), 0);
    assert_eq!(num(&done, "closed_send_timeout"), 0);
    assert_eq!(num(&done, "delivered"), total);
    // The spool held the outage: 20 MB were sent during it, of which the
    // kernel buffers at most ~4 MiB and the memory queue 200 KB, so the
    // spool must have peaked near 16 MB. 10 MiB leaves room for stats
    // lines that miss the peak (every 200 ms = 1 MB of traffic) and is
    // still 50 times what the memory queue holds.
    let peak = d
        .stats_lines()
        .iter()
        .map(|s| num(s, "spool_bytes"))
        .max()
        .unwrap_or(0);
    let queue_bytes = (QUEUE * (SIZE + 1)) as u64;
    assert!(
        peak >= 10 << 20 && peak >= 50 * queue_bytes,
        "the spool peaked at {peak} B during an outage {outage_start:?}..{outage_end:?} (memory queue {queue_bytes} B)"
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
    let last = d.final_stats();
    // Every client closed its own connection (EOF), none was closed by us.
    assert_eq!(num(&last, "closed_eof"), CLIENTS as u64);
    for closed in [
        "closed_send_timeout",
        "closed_idle",
        "closed_shutdown",
        "dropped_shutdown",
    ] {
        assert_eq!(num(&last, closed), 0, "{closed}");
    }
    assert_balanced(&last);
    eprintln!(
        "outage: {CLIENTS} clients, {total} messages, collector stopped {outage_start:?}..{outage_end:?}, spool peak {peak} B, done in {:?}",
        started.elapsed()
    );
}
