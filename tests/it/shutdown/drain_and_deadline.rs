//! Acceptance 7 and 10 (issue 2): a graceful shutdown (SIGTERM, or the
//! library's shutdown handle) with messages queued flushes them all to
//! the sink and reports `drained=true lost=0` (exit 0); a shutdown whose
//! deadline passes reports the lost count (exit 1). SIGHUP after the file
//! was moved makes later messages go to a new file at the configured path.
//!
//! A stalled file sink is a FIFO the test does not read (the pipe holds
//! 64 KiB, then the sink's write blocks); draining it is the release.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{
    Daemon, Fifo, TestSink, assert_balanced, num, wait_file_contains, wait_until,
};
use floodwall::Shutdown;

const WAIT: Duration = Duration::from_secs(20);
const SMALL: usize = 50;

fn start_on_fifo(shutdown_timeout: &str) -> (Daemon, Fifo) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = Fifo::create(&dir.path().join("sink.fifo"));
    let d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.idle_timeout", "30s")
        .set("limits.send_timeout", "30s")
        .set("sink.path", "{dir}/sink.fifo")
        .set("shutdown.timeout", shutdown_timeout)
        .start_in(dir);
    (d, fifo)
}

/// Two 60 KB messages (more than the pipe holds, so the sink blocks) and
/// SMALL lines queued behind them; returns the bytes the sink should
/// write, once the daemon has received them all and the queue holds at
/// least the SMALL lines. Leaves a client connected (idle) too.
fn queue_behind_a_stalled_sink(d: &Daemon) -> (Vec<u8>, TcpStream) {
    let big = "B".repeat(60_000);
    let mut wire = Vec::new();
    for m in [format!("1{big}"), format!("2{big}")]
        .into_iter()
        .chain((0..SMALL).map(|i| format!("queued {i}")))
    {
        wire.extend_from_slice(m.as_bytes());
        wire.push(b'\n');
    }
    let mut s = d.connect();
    s.write_all(&wire).expect("send");
    let queued = d.wait_stats(WAIT, |s| {
        num(s, "received") == SMALL as u64 + 2 && num(s, "queue_depth") >= SMALL as u64
    });
    assert!(
        queued.is_some(),
        "messages not queued; log:\n{}",
        d.log_text()
    );
    (wire, s)
}

#[test]
fn sigterm_with_messages_queued_flushes_them_all_and_exits_0() {
    let (mut d, mut fifo) = start_on_fifo("30s");
    let (expected, _open_client) = queue_behind_a_stalled_sink(&d);

    d.signal("TERM");
    assert!(d.wait_log(WAIT, |l| l.contains("shutting down")).is_some());
    // Released while shutting down: everything queued comes out.
    assert!(
        fifo.drain_until_len(expected.len(), WAIT),
        "got {} of {} bytes; log:\n{}",
        fifo.data.len(),
        expected.len(),
        d.log_text()
    );
    let status = d.wait_exit(WAIT);
    fifo.drain();
    support::assert_bytes(&expected, &fifo.data);
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log_text());
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("shutdown drained=true lost=0"))
    );
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "queue_depth"), 0);
    assert_eq!(num(&s, "delivered"), SMALL as u64 + 2);
}

#[test]
fn a_shutdown_past_its_deadline_reports_the_lost_messages_and_exits_1() {
    let (mut d, _fifo) = start_on_fifo("500ms");
    let (_, _open_client) = queue_behind_a_stalled_sink(&d);
    let before = d.stats_lines().pop().expect("a stats line");

    let status = d.stop(WAIT);
    assert_eq!(status.code(), Some(1), "log:\n{}", d.log_text());
    let s = d.final_stats();
    assert_balanced(&s);
    let lost = num(&s, "queue_depth");
    assert_eq!(
        lost,
        num(&before, "queue_depth"),
        "the queue moved while stalled"
    );
    assert_eq!(lost, num(&s, "received") - num(&s, "delivered"));
    assert!(lost >= SMALL as u64, "lost={lost}");
    let line = format!("shutdown drained=false lost={lost}");
    assert!(
        d.log_lines().iter().any(|l| l.contains(&line)),
        "no {line:?}; log:\n{}",
        d.log_text()
    );
}

#[test]
fn sighup_after_the_file_was_moved_writes_later_messages_to_a_new_file() {
    let mut d = Conf::new().set("server.framing", "lines").start();
    let out = d.path("out.log");
    let moved = d.path("out.log.1");
    d.send(b"before rotation\n");
    assert!(wait_file_contains(&out, b"before rotation\n", WAIT));

    std::fs::rename(&out, &moved).expect("move the file away");
    d.signal("HUP");
    assert!(
        wait_until(WAIT, || out.exists()),
        "no new file at the configured path; log:\n{}",
        d.log_text()
    );
    d.send(b"after rotation\n");
    assert!(wait_file_contains(&out, b"after rotation\n", WAIT));

    let status = d.stop(WAIT);
    assert!(status.success());
    support::assert_bytes(b"before rotation\n", &support::read(&moved));
    support::assert_bytes(b"after rotation\n", &support::read(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777;
    assert_eq!(
        mode & !0o640,
        0,
        "new file mode {mode:o} is wider than 0640"
    );
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "delivered"), 2);
}

fn in_process_stalled(shutdown_timeout: &str) -> (floodwall::Daemon, TestSink) {
    let config = Conf::bare()
        .set("server.framing", "lines")
        .set("limits.send_timeout", "30s")
        .set("shutdown.timeout", shutdown_timeout)
        .set("log.stats_interval", "0s")
        .parse();
    let sink = TestSink::stalled();
    let daemon = floodwall::start_with_sinks(config, Shutdown::new(), sink.boxed())
        .expect("start in-process daemon");
    let mut s = TcpStream::connect(daemon.local_addr()).expect("connect");
    let wire: String = (0..SMALL).map(|i| format!("queued {i}\n")).collect();
    s.write_all(wire.as_bytes()).expect("send");
    drop(s);
    assert!(wait_until(WAIT, || daemon.stats().queue_depth
        == SMALL as u64
        && sink.blocked() == 1));
    (daemon, sink)
}

#[test]
fn the_library_shutdown_handle_drains_what_is_queued() {
    let (daemon, sink) = in_process_stalled("30s");
    let shutdown = daemon.shutdown_handle();
    let waiter = std::thread::spawn(move || daemon.wait());
    shutdown.trigger();
    sink.release();
    let report = waiter.join().expect("daemon wait");
    assert!(report.drained, "{report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(report.exit_code(), 0);
    assert!(report.stats.balanced(), "{:?}", report.stats);
    assert_eq!(report.stats.queue_depth, 0);
    let expected: Vec<Vec<u8>> = (0..SMALL)
        .map(|i| format!("queued {i}").into_bytes())
        .collect();
    assert_eq!(sink.messages(), expected);
}

#[test]
fn the_library_reports_lost_messages_when_the_deadline_passes() {
    let (daemon, sink) = in_process_stalled("300ms");
    daemon.shutdown_handle().trigger();
    let report = daemon.wait();
    assert!(!report.drained);
    assert_eq!(report.lost, SMALL as u64);
    assert_eq!(report.exit_code(), 1);
    assert!(report.stats.balanced(), "{:?}", report.stats);
    assert_eq!(report.stats.delivered, 0);
    sink.release();
}
