//! Crash loop: kill -9 the daemon at a random moment while it delivers
//! from its spool, restart it on the same spool, again and again. Every
//! message framed (and spooled) before a kill is delivered at least once,
//! duplicates stay within about one sync interval's worth per crash, and
//! no start fails.
//!
//! Each round sends a burst, waits until the daemon has framed all of it
//! and one more stats line has passed (100 ms for the spool writer to
//! append what the memory queue holds: a kill -9 loses that queue, SPEC
//! "Disk spool"), then kills at a random moment within the next 400 ms,
//! while the collector (reading at ~400 KB/s) is still being fed.

mod spool_support;
mod support;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use spool_support::{Collector, Rng, config, message, per_client, tcp_sink};
use support::{Daemon, num};

const ROUNDS: usize = 12;
const BURST: usize = 20_000;
const SIZE: usize = 100;
/// Collector read rate, bytes/s: slow enough that a burst (2 MB) takes
/// ~0.5 s to deliver, so kills land mid-delivery.
const READ_RATE: usize = 4_000_000;

#[test]
fn kill_9_in_a_loop_loses_nothing_spooled() {
    let mut rng = Rng::from_env_or_time();
    let collector = Collector::start(8192, READ_RATE);
    let spool = tempfile::tempdir().unwrap();
    let cfg = config(&tcp_sink(collector.addr), spool.path(), "");
    let started = Instant::now();
    let mut sent = 0usize;
    let mut recovered = Vec::new();
    for round in 0..ROUNDS {
        // Daemon::start panics unless the daemon reports listening.
        let d = Daemon::start(&cfg);
        let mut burst = String::new();
        for i in sent..sent + BURST {
            burst.push_str(&message(0, i, SIZE));
            burst.push('\n');
        }
        d.send(burst.as_bytes());
        let framed = d.wait_stats(Duration::from_secs(20), |s| {
            num(s, "received") == BURST as u64
        });
        assert!(
            framed.is_some(),
            "round {round}: burst not framed; log:\n{}",
            d.log_text()
        );
        assert!(d.wait_stats(Duration::from_secs(5), |_| true).is_some());
        sent += BURST;
        let first = d
            .stats_lines()
            .first()
            .map(|s| num(s, "recovered"))
            .unwrap_or(0);
        recovered.push(first);
        // The random kill moment (not synchronisation: any moment must do).
        thread::sleep(Duration::from_millis(rng.below(400)));
        drop(d); // SIGKILL, then reaped
    }
    let mut d = Daemon::start(&cfg);
    d.wait_stats(Duration::from_secs(60), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("final run did not drain; log:\n{}", d.log_text()));
    assert!(d.stop(Duration::from_secs(15)).success());
    assert!(
        support::wait_until(Duration::from_secs(20), || {
            let seqs = &per_client(&collector.lines())[&0];
            let mut seen = vec![false; sent];
            seqs.iter().for_each(|&s| seen[s] = true);
            seen.iter().all(|&b| b)
        }),
        "messages missing after {ROUNDS} crashes"
    );
    let seqs = per_client(&collector.lines()).remove(&0).unwrap();
    let mut counts: HashMap<usize, usize> = HashMap::new();
    seqs.iter()
        .for_each(|&s| *counts.entry(s).or_default() += 1);
    let duplicates = seqs.len() - sent;
    // One sync interval (50 ms) plus the commit tick and scheduling
    // (allow 200 ms in all) at the collector's rate is ~800 messages;
    // the kernel's socket buffers hold up to ~1,000 more of them that
    // were written (delivered) but not yet read when the kill came.
    let per_crash = READ_RATE / (SIZE + 1) / 5 + 1000;
    eprintln!(
        "crash loop: {ROUNDS} kills in {:?}, {sent} sent, {duplicates} duplicates, recovered per start {recovered:?}",
        started.elapsed()
    );
    assert!(
        duplicates <= ROUNDS * per_crash,
        "{duplicates} duplicates after {ROUNDS} crashes (bound {per_crash} per crash)"
    );
    assert!(counts.values().all(|&c| c <= ROUNDS + 1));
}
