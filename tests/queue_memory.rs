//! SPEC.md invariant 4: memory is bounded by configuration. A queued
//! batch keeps no more room than about twice its bytes, so a queue of
//! `capacity` small messages stays small even when each arrived in a
//! read full of skipped empty lines (a read's worth of reserved room for
//! one message).
//!
//! In-process with a stalled sink; measures the test process's VmData.
//! One test per file: nothing else allocates meanwhile.

mod support;

use std::io::Write;
use std::time::Duration;

use floodwall::Shutdown;
use support::config::Conf;
use support::{TestSink, proc_status, wait_until};

#[test]
fn queued_messages_hold_memory_in_proportion_to_their_size() {
    const CAPACITY: u64 = 4000;
    let config = Conf::bare()
        .set("server.max_message_bytes", 100)
        .set("limits.send_timeout", "60s")
        .set("queue.capacity", CAPACITY)
        .no_accept_pause()
        .set("log.stats_interval", "0s")
        .parse();
    let sink = TestSink::stalled();
    let daemon =
        floodwall::start_with_sinks(config, Shutdown::new(), sink.boxed()).expect("daemon starts");
    let pid = std::process::id();
    let before = proc_status(pid, "VmData:");
    // Each chunk: 16,000 empty lines (skipped), then one message.
    let mut chunk = vec![b'\n'; 16_000];
    chunk.extend_from_slice(&[b'y'; 99]);
    chunk.push(b'\n');
    let mut c = std::net::TcpStream::connect(daemon.local_addr()).unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..CAPACITY {
            if c.write_all(&chunk).is_err() {
                break;
            }
        }
        c
    });
    assert!(
        wait_until(Duration::from_secs(60), || daemon.stats().queue_depth
            == CAPACITY),
        "{:?}",
        daemon.stats()
    );
    let after = proc_status(pid, "VmData:");
    let grown_kib = after.saturating_sub(before);
    eprintln!("FIGURES queue_memory: messages={CAPACITY} vmdata_growth_kib={grown_kib}");
    // 4,000 messages of 100 bytes: well under 1 MiB of payload. Without
    // giving back loose room each batch kept up to 64 KiB (~250 MiB).
    assert!(
        grown_kib < 48 * 1024,
        "VmData grew {grown_kib} KiB for {CAPACITY} messages of 100 bytes"
    );
    sink.release();
    let _c = writer.join().expect("writer");
    let handle = daemon.shutdown_handle();
    handle.trigger();
    let report = daemon.wait();
    assert!(report.stats.balanced(), "{:?}", report.stats);
}
