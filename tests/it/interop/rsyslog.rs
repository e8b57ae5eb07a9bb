//! floodwall between real, unmodified rsyslog instances (Debian's
//! rsyslogd, started by scripts/peers.sh on loopback with its own config,
//! pid file and work dir under a per-test temp dir):
//!
//! 1. rsyslog's omfwd forwards into floodwall (LF and octet-counted
//!    framing); what went into rsyslog arrives in floodwall's file sink.
//! 2. floodwall's tcp sink forwards into rsyslog's imtcp (LF and
//!    octet-counted); rsyslog's output file holds the messages, in order.
//! 3. The downstream rsyslog is stopped (SIGSTOP/SIGCONT), then killed and
//!    restarted on the same port, mid-stream: floodwall stays bounded,
//!    counts what it drops and delivers again once the peer is back.
//!
//! A missing rsyslogd fails the tests (run scripts/install-peers.sh); it
//! never skips them.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::peers::{self, Peer, line_count, payloads, tcp_sink_config};
use crate::support::{Daemon, assert_balanced, assert_bytes, num, read, wait_until};

// ---- helpers -----------------------------------------------------------

fn lines(path: &Path) -> Vec<String> {
    String::from_utf8_lossy(&read(path))
        .lines()
        .map(str::to_string)
        .collect()
}

fn file_sink_config() -> &'static str {
    "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"auto\"\n\
     [sink]\ntype = \"file\"\npath = \"{dir}/out.log\"\nflush_interval = \"100ms\"\n\
     [log]\nstats_interval = \"200ms\"\n"
}

// ---- 1. rsyslog omfwd -> floodwall --------------------------------------

fn rsyslog_forwards_into_floodwall(framing: &str) {
    peers::require("rsyslogd");
    let work = tempfile::tempdir().expect("temp dir");
    let mut d = Daemon::start(file_sink_config());
    let target = d.addr.port().to_string();
    let rs = Peer::start("start-rsyslog-forward", work.path(), |port| {
        vec![
            port.to_string(),
            target.clone(),
            framing.to_string(),
            work.path().display().to_string(),
            "raw".to_string(),
        ]
    });

    // Raw lines over one TCP connection: forwarded as received.
    let raw = payloads(&format!("raw-{framing}"), 1000);
    let mut s = TcpStream::connect(("127.0.0.1", rs.port)).expect("connect to rsyslog");
    s.write_all(format!("{}\n", raw.join("\n")).as_bytes())
        .expect("send");
    drop(s);
    // And RFC 5424 messages from util-linux logger, one per stdin line.
    let via_logger = payloads(&format!("logger-{framing}"), 50);
    let mut logger = Command::new("logger")
        .args([
            "--tcp",
            "-n",
            "127.0.0.1",
            "-P",
            &rs.port.to_string(),
            "-t",
            "fwtag",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run logger");
    logger
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", via_logger.join("\n")).as_bytes())
        .expect("feed logger");
    assert!(logger.wait().expect("logger").success());

    let out = d.path("out.log");
    let want = raw.len() + via_logger.len();
    assert!(
        wait_until(Duration::from_secs(20), || line_count(&out) >= want),
        "floodwall wrote {} of {want} lines; rsyslog internal.log:\n{}",
        line_count(&out),
        rs.internal_log()
    );
    let fin = d.stop_balanced(Duration::from_secs(10));
    let got = lines(&out);
    assert_eq!(got.len(), want, "no extra lines");
    // The raw ones byte for byte, in the order sent (one connection).
    let got_raw: Vec<&String> = got.iter().filter(|l| l.starts_with("raw-")).collect();
    assert_eq!(got_raw.len(), raw.len());
    assert!(got_raw.iter().zip(&raw).all(|(g, w)| *g == w));
    // logger's: its RFC 5424 header, our tag, the payload at the end.
    let got_logger: Vec<&String> = got.iter().filter(|l| l.starts_with("<13>1 ")).collect();
    assert_eq!(got_logger.len(), via_logger.len(), "{got_logger:?}");
    for (g, w) in got_logger.iter().zip(&via_logger) {
        assert!(
            g.contains(" fwtag ") && g.ends_with(w.as_str()),
            "{g:?} should end with {w:?}"
        );
    }
    assert_eq!(num(&fin, "delivered"), want as u64);
}

#[test]
fn rsyslog_omfwd_traditional_framing_into_floodwall() {
    rsyslog_forwards_into_floodwall("traditional");
}

#[test]
fn rsyslog_omfwd_octet_counted_framing_into_floodwall() {
    rsyslog_forwards_into_floodwall("octet-counted");
}

// ---- 2. floodwall tcp sink -> rsyslog imtcp ------------------------------

fn floodwall_forwards_into_rsyslog(framing: &str) {
    peers::require("rsyslogd");
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("rsyslog-out.log");
    let rs = Peer::start("start-rsyslog-file", work.path(), |port| {
        vec![
            port.to_string(),
            out.display().to_string(),
            work.path().display().to_string(),
        ]
    });
    let mut d = Daemon::start(&tcp_sink_config(rs.port, framing, ""));
    let msgs = payloads(&format!("to-rsyslog-{framing}"), 5000);
    let expected = format!("{}\n", msgs.join("\n"));
    // Several client writes, one connection: one global order.
    let mut s = d.connect();
    for chunk in msgs.chunks(500) {
        s.write_all(format!("{}\n", chunk.join("\n")).as_bytes())
            .expect("send");
    }
    drop(s);
    assert!(
        wait_until(Duration::from_secs(20), || line_count(&out) >= msgs.len()),
        "rsyslog wrote {} of {} lines; its internal.log:\n{}",
        line_count(&out),
        msgs.len(),
        rs.internal_log()
    );
    let fin = d.stop_balanced(Duration::from_secs(10));
    assert_eq!(num(&fin, "delivered"), msgs.len() as u64);
    assert_bytes(expected.as_bytes(), &read(&out));
}

#[test]
fn floodwall_lines_into_rsyslog_imtcp() {
    floodwall_forwards_into_rsyslog("lines");
}

#[test]
fn floodwall_octet_counted_into_rsyslog_imtcp() {
    floodwall_forwards_into_rsyslog("octet-counted");
}

// ---- 3. downstream rsyslog stopped, killed, restarted -------------------

/// Padding: 300-byte messages, so a stopped peer's socket buffers fill
/// within seconds and floodwall's own layers must act.
const PAD: &str = concat!(
    "padding-padding-padding-padding-padding-padding-padding-padding-padding-padding-",
    "padding-padding-padding-padding-padding-padding-padding-padding-padding-padding-",
    "padding-padding-padding-padding-padding-padding-padding-padding-padding-padding-",
    "padding-padding-padding-padding-padding-padding-padding-padding-padd"
);

/// Streams `seq-NNNNNNN PAD` lines at a steady pace (about 10k/s), reconnecting
/// whenever floodwall closes the connection, until `stop` is set or
/// `count` messages have been written.
fn paced_client(
    target: SocketAddr,
    first: usize,
    count: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut next = first;
        let end = first + count;
        let deadline = Instant::now() + Duration::from_secs(40);
        while next < end && !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok(mut s) = TcpStream::connect(target) else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            while next < end && !stop.load(Ordering::SeqCst) {
                let n = 50.min(end - next);
                let chunk: String = (next..next + n)
                    .map(|i| format!("seq-{i:07} {PAD}\n"))
                    .collect();
                let sent = s.write_all(chunk.as_bytes());
                // Never written twice by the client: any duplicate seen
                // downstream is floodwall's.
                next += n;
                if sent.is_err() {
                    break; // closed by a send timeout: its drops are counted
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

fn seq_counts(path: &Path) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for l in lines(path) {
        if let Some(n) = l
            .strip_prefix("seq-")
            .and_then(|n| n.get(..7)?.parse().ok())
        {
            assert!(l.ends_with(PAD), "message cut: {l:?}");
            *m.entry(n).or_default() += 1;
        }
    }
    m
}

#[test]
fn downstream_rsyslog_stopped_and_killed_mid_stream() {
    const MAX_CONNECTIONS: u64 = 16;
    const QUEUE_CAPACITY: usize = 5000;
    const PHASE: usize = 40_000;
    peers::require("rsyslogd");
    let work = tempfile::tempdir().expect("temp dir");
    let workdir = work.path().display().to_string();
    let out = work.path().join("rsyslog-out.log");
    let out_arg = out.display().to_string();
    let rs = Peer::start("start-rsyslog-file", work.path(), |port| {
        vec![port.to_string(), out_arg.clone(), workdir.clone()]
    });
    let port = rs.port;
    let extra = format!(
        "write_timeout = \"500ms\"\n\
         [queue]\ncapacity = {QUEUE_CAPACITY}\n\
         [limits]\nmax_connections = {MAX_CONNECTIONS}\nsend_timeout = \"200ms\""
    );
    let mut d = Daemon::start(&tcp_sink_config(port, "lines", &extra));
    let max_threads = MAX_CONNECTIONS + 1 + 8;
    let mut peak_threads = 0;
    let mut sample = |d: &Daemon| {
        peak_threads = peak_threads.max(d.threads());
    };

    // Phase A: SIGSTOP for 4 s mid-stream, then SIGCONT.
    let stop = Arc::new(AtomicBool::new(false));
    let client = paced_client(d.addr, 0, PHASE, stop.clone());
    assert!(wait_until(Duration::from_secs(20), || line_count(&out) >= 5000));
    rs.signal("STOP");
    let stopped_at = Instant::now();
    while stopped_at.elapsed() < Duration::from_secs(4) {
        sample(&d);
        let _ = d.wait_log(Duration::from_millis(50), |_| false);
    }
    let before_cont = line_count(&out);
    rs.signal("CONT");
    let cont_at = Instant::now();
    assert!(wait_until(Duration::from_secs(20), || line_count(&out) > before_cont));
    let recover_stop = cont_at.elapsed();
    client.join().expect("client");
    // Quiescent: everything received was written to rsyslog's file or
    // counted as dropped; nothing twice.
    let quiet = d.wait_stats(Duration::from_secs(20), |s| {
        num(s, "queue_depth") == 0 && line_count(&out) as u64 == num(s, "delivered")
    });
    let Some(a) = quiet else {
        panic!(
            "after SIGCONT, rsyslog's file ({} lines) never matched floodwall's delivered count; log:\n{}",
            line_count(&out),
            d.log_text()
        );
    };
    assert_balanced(&a);
    let counts = seq_counts(&out);
    let dup_stop: usize = counts.values().map(|c| c - 1).sum();
    let dropped_stop = num(&a, "dropped_send_timeout");
    eprintln!(
        "SIGSTOP 4s: sent={PHASE} received={} (the rest died unread in connections floodwall closed) \
         delivered={} dropped_send_timeout={dropped_stop} closed_send_timeout={} \
         duplicates={dup_stop} recover_after_SIGCONT={recover_stop:?}",
        num(&a, "received"),
        num(&a, "delivered"),
        num(&a, "closed_send_timeout")
    );
    assert_eq!(
        dup_stop, 0,
        "a stopped peer's connection is resumed, not re-sent"
    );

    // Phase B: SIGKILL mid-stream, restart on the same port after 1 s.
    let (received_a, delivered_a, lines_a) =
        (num(&a, "received"), num(&a, "delivered"), line_count(&out));
    let warns_before = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("sink write failed"))
        .count();
    let recovered_before = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("sink recovered"))
        .count();
    let client = paced_client(d.addr, PHASE, PHASE, stop.clone());
    assert!(wait_until(Duration::from_secs(20), || line_count(&out)
        >= lines_a + 5000));
    rs.signal("KILL");
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{}",
            rs.pid
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", rs.pid))
                .is_ok_and(|s| s.contains(") Z "))),
        "rsyslogd did not die"
    );
    // Dead: its guard must not signal a pid that may be reused.
    std::mem::forget(rs);
    let killed_at = Instant::now();
    while killed_at.elapsed() < Duration::from_secs(1) {
        sample(&d);
        let _ = d.wait_log(Duration::from_millis(50), |_| false);
    }
    let args = vec![
        port.to_string(),
        out.display().to_string(),
        work.path().display().to_string(),
    ];
    let rs2 = Peer::start_on("start-rsyslog-file", work.path(), port, &args)
        .unwrap_or_else(|e| panic!("restart on port {port}: {e}"));
    let restarted_at = Instant::now();
    let recovered = wait_until(Duration::from_secs(15), || {
        d.log_lines()
            .iter()
            .filter(|l| l.contains("sink recovered"))
            .count()
            > recovered_before
    });
    let recover_kill = restarted_at.elapsed();
    assert!(
        recovered,
        "no recovery after restart; log:\n{}",
        d.log_text()
    );
    client.join().expect("client");
    let quiet = d.wait_stats(Duration::from_secs(20), |s| {
        num(s, "queue_depth") == 0 && num(s, "conns_active") == 0
    });
    let Some(b) = quiet else {
        panic!("never quiescent after the restart; log:\n{}", d.log_text());
    };
    assert!(
        wait_until(Duration::from_secs(10), || seq_counts(&out)
            .contains_key(&(2 * PHASE - 1))),
        "the stream's last message never reached the restarted rsyslog; its internal.log:\n{}",
        rs2.internal_log()
    );
    sample(&d);
    assert_balanced(&b);
    let counts = seq_counts(&out);
    let dup_kill: usize = counts
        .iter()
        .filter(|(k, _)| **k >= PHASE)
        .map(|(_, c)| c - 1)
        .sum();
    let unique_b = counts.keys().filter(|k| **k >= PHASE).count() as u64;
    let delivered_b = num(&b, "delivered") - delivered_a;
    let received_b = num(&b, "received") - received_a;
    let dropped_kill = num(&b, "dropped_send_timeout") - dropped_stop;
    let lost_in_peer = delivered_b.saturating_sub(unique_b);
    eprintln!(
        "SIGKILL + restart after 1s: sent={PHASE} received={received_b} delivered={delivered_b} dropped_send_timeout={dropped_kill} \
         written_by_rsyslog={unique_b} lost_inside_killed_rsyslog={lost_in_peer} duplicates={dup_kill} \
         recover_after_restart={recover_kill:?}"
    );
    eprintln!("peak floodwall threads={peak_threads} (bound {max_threads})");
    assert!(peak_threads <= max_threads, "{peak_threads} threads");
    // Delivery resumed on the new rsyslog: the stream's end arrived.
    assert!(
        counts.contains_key(&(2 * PHASE - 1)),
        "the last message never arrived"
    );
    // At most the one gathered write whose connection broke was sent
    // twice (src/sink/tcp.rs): bounded by the sink's gather size in
    // messages of this size, and by the queue, which holds all a write
    // can gather.
    let message_bytes = format!("seq-{:07} {PAD}\n", 0).len();
    let max_duplicates = support::max_resent_per_outage(message_bytes).min(QUEUE_CAPACITY);
    assert!(
        dup_kill <= max_duplicates,
        "{dup_kill} duplicates after one outage: more than one gathered write \
         ({max_duplicates} messages of {message_bytes} bytes at most)"
    );
    // One warning for the kill outage, one recovery line.
    let warns = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("sink write failed"))
        .count();
    let recovered_lines = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("sink recovered"))
        .count();
    assert_eq!(warns - warns_before, 1, "log:\n{}", d.log_text());
    assert_eq!(
        recovered_lines - recovered_before,
        1,
        "log:\n{}",
        d.log_text()
    );
    d.stop_balanced(Duration::from_secs(10));
    drop(rs2);
}
