//! The relp sink against a real RELP server: rsyslog imrelp (rsyslog-relp,
//! librelp) writing every message it acknowledges to a file
//! (`scripts/peers.sh start-rsyslog-relp-file`: a Direct queue, so an ack
//! means written).
//!
//! - Plaintext: every message arrives once, byte-exact and in order, and
//!   counts delivered only as rsyslog acknowledges it.
//! - TLS with a client certificate (imrelp `tls.tlslib="openssl"`,
//!   authmode certvalid): the same.
//! - The downstream goes away twice mid-stream, once stopped (SIGTERM:
//!   librelp ends the sessions with `serverclose`) and once killed (-9),
//!   and comes back on the same port: nothing is lost, the messages that
//!   were in flight are sent again and counted (`relp_resent`), and the
//!   duplicates in the file are at most that count.
//!
//! - With `[spool]`: floodwall killed (-9) three times while it delivers from
//!   its spool and restarted on it: every message that was spooled
//!   reaches rsyslog (at least once).
//!
//! A missing peer fails the test with a pointer to scripts/install-peers.sh.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::support::peers::{Peer, line_count, require};
use crate::support::pki::Ca;
use crate::support::{Daemon, assert_balanced, num, read, wait_until};

/// Bounds for a loaded 2-core CI machine.
const WAIT: Duration = Duration::from_secs(60);

/// Letter-first (rsyslog would read a leading digit as an octet count),
/// with a tab that must survive.
fn message(i: usize) -> String {
    format!("relp message\t{i:07} {:x<60}", "")
}

fn expected(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{}\n", message(i)).into_bytes())
        .collect()
}

/// Sends messages `0..n` on one connection, in large writes, and closes.
fn send(addr: SocketAddr, n: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let data = expected(n);
        for chunk in data.chunks(1 << 20) {
            s.write_all(chunk).expect("send");
        }
    })
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn config(port: u16, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n\
         [limits]\n# Backpressure while the downstream is away, not drops.\nsend_timeout = \"120s\"\n\
         [sink]\ntype = \"relp\"\naddress = \"127.0.0.1:{port}\"\nconnect_timeout = \"2s\"\n\
         write_timeout = \"5s\"\n{tls}\n\
         [log]\nstats_interval = \"200ms\"\n[shutdown]\ntimeout = \"30s\"\n"
    )
}

/// Fails (never skips) when rsyslog's imrelp module is missing.
fn require_imrelp() {
    require("rsyslogd");
    let found = std::fs::read_dir("/usr/lib")
        .expect("read /usr/lib")
        .filter_map(Result::ok)
        .any(|d| d.path().join("rsyslog/imrelp.so").is_file());
    assert!(
        found,
        "rsyslog's imrelp.so not found: run `bash scripts/install-peers.sh` (needs root) to install rsyslog-relp"
    );
}

/// Starts imrelp -> `out` (TLS with `tls` = [CA, CERT, KEY]).
fn imrelp(work: &Path, out: &Path, tls: &[String]) -> Peer {
    require_imrelp();
    Peer::start("start-rsyslog-relp-file", work, |port| {
        let mut args = vec![port.to_string(), path_str(out), path_str(work)];
        args.extend(tls.iter().cloned());
        args
    })
}

/// Sends `n` messages through floodwall's relp sink into `peer`; checks
/// the file is exactly them, in order, and the books.
fn exactly_once(peer: &Peer, out: &Path, tls: &str, n: usize) {
    let mut d = Daemon::start(&config(peer.port, tls));
    send(d.addr, n).join().expect("sender");
    let s = d
        .wait_stats(WAIT, |s| num(s, "delivered") == n as u64)
        .unwrap_or_else(|| {
            panic!(
                "{} of {n} written by rsyslog; peer log:\n{}\ndaemon log:\n{}",
                line_count(out),
                peer.internal_log(),
                d.log_text()
            )
        });
    assert_balanced(&s);
    // Delivered means acknowledged, and rsyslog acknowledges once written.
    support::assert_bytes(&expected(n), &read(out));
    let last = d.stop_balanced(WAIT);
    assert_eq!(num(&last, "relp_resent"), 0);
    assert_eq!(num(&last, "sink_errors"), 0);
}

#[test]
fn every_message_reaches_rsyslog_imrelp_once_in_order() {
    let work = tempfile::tempdir().expect("peer dir");
    let out = work.path().join("out.log");
    let peer = imrelp(work.path(), &out, &[]);
    exactly_once(&peer, &out, "", 200_000);
}

#[test]
fn every_message_reaches_rsyslog_imrelp_over_tls_with_a_client_certificate() {
    let work = tempfile::tempdir().expect("peer dir");
    let ca = Ca::new(work.path(), "ca");
    let server = ca.issue(
        work.path(),
        "server",
        "localhost",
        &["localhost", "127.0.0.1"],
        false,
    );
    let client = ca.issue(work.path(), "client", "floodwall", &["floodwall"], false);
    let out = work.path().join("out.log");
    let files = [&ca.crt, &server.crt, &server.key].map(|p| path_str(p));
    let peer = imrelp(work.path(), &out, &files);
    let tls = format!(
        "[sink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        path_str(&ca.crt),
        path_str(&client.crt),
        path_str(&client.key)
    );
    exactly_once(&peer, &out, &tls, 20_000);
}

/// Waits until `out` holds at least `lines` lines; false after [`WAIT`].
fn wait_lines(out: &Path, lines: usize) -> bool {
    wait_until(WAIT, || line_count(out) >= lines)
}

/// Starts the peer again on `port` (its old process gone: the port may
/// take a moment to be free); the file is appended to.
fn restart(work: &Path, out: &Path, port: u16) -> Peer {
    let args = vec![port.to_string(), path_str(out), path_str(work)];
    let mut last = String::new();
    for _ in 0..50 {
        match Peer::start_on("start-rsyslog-relp-file", work, port, &args) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("rsyslog did not come back on port {port}: {last}");
}

/// Whether process `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
}

#[test]
fn a_downstream_stopped_and_killed_mid_stream_loses_nothing_and_resends_are_counted() {
    const N: usize = 200_000;
    let work = tempfile::tempdir().expect("peer dir");
    let out = work.path().join("out.log");
    let peer = imrelp(work.path(), &out, &[]);
    let port = peer.port;
    let mut d = Daemon::start(&config(port, ""));
    let sender = send(d.addr, N);

    // Outage 1: SIGTERM once a fifth is written (librelp sends serverclose).
    assert!(wait_lines(&out, N / 5), "rsyslog wrote too little");
    peer.signal("TERM");
    assert!(wait_until(WAIT, || gone(peer.pid)), "rsyslog did not stop");
    let first = line_count(&out);
    drop(peer);
    let peer = restart(work.path(), &out, port);

    // Outage 2: kill -9 once more than half is written.
    assert!(
        wait_lines(&out, N / 2),
        "rsyslog wrote too little after a restart"
    );
    peer.signal("KILL");
    assert!(
        wait_until(WAIT, || gone(peer.pid)),
        "rsyslog was not killed"
    );
    let second = line_count(&out);
    drop(peer);
    let peer = restart(work.path(), &out, port);
    assert!(
        first < N && second < N,
        "both outages must land mid-stream: {first} and {second} of {N} written"
    );

    sender.join().expect("sender");
    let s = d
        .wait_stats(WAIT, |s| num(s, "delivered") == N as u64)
        .unwrap_or_else(|| {
            panic!(
                "not all delivered; peer log:\n{}\ndaemon log:\n{}",
                peer.internal_log(),
                d.log_text()
            )
        });
    assert_balanced(&s);
    let last = d.stop_balanced(WAIT);
    let resent = num(&last, "relp_resent");

    // Every message is in the file; a duplicate only where floodwall
    // counted a resend.
    let text = String::from_utf8(read(&out)).expect("utf-8 output");
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for line in text.lines() {
        let i: usize = line
            .split(['\t', ' '])
            .nth(2)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("not a test message: {line:?}"));
        assert_eq!(line, message(i), "a message arrived altered");
        *seen.entry(i).or_default() += 1;
    }
    let missing: Vec<usize> = (0..N).filter(|i| !seen.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "lost, first ones: {missing:?}");
    let duplicates: usize = seen.values().map(|&c| c - 1).sum();
    eprintln!(
        "relp sink: {N} sent, outages at {first} and {second} written, {} stored, {duplicates} duplicates, relp_resent={resent}",
        text.lines().count()
    );
    assert!(
        duplicates as u64 <= resent,
        "{duplicates} duplicates but only {resent} resends counted"
    );
    assert!(resent > 0, "an outage mid-stream resent nothing");
    assert!(
        num(&last, "sink_errors") > 0,
        "the outages were not seen as sink errors"
    );
    assert!(
        d.log_text().contains("(serverclose)"),
        "the stopped rsyslog's serverclose was not seen; log:\n{}",
        d.log_text()
    );
}

/// End to end with a spool: a message floodwall spooled survives kill -9
/// of floodwall and reaches the RELP server after the restart (SPEC "Disk
/// spool": a kill -9 loses only the memory queue in front of the spool,
/// so each kill waits until the round's messages are in segment files).
#[test]
fn with_a_spool_kill_9_of_floodwall_mid_delivery_loses_nothing_spooled() {
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 30_000;
    let work = tempfile::tempdir().expect("peer dir");
    let out = work.path().join("out.log");
    let peer = imrelp(work.path(), &out, &[]);
    let spool_dir = work.path().join("spool");
    let cfg = support::spool::config(
        &format!("type = \"relp\"\naddress = \"127.0.0.1:{}\"", peer.port),
        &spool_dir,
        "[shutdown]\ntimeout = \"20s\"",
    );
    let mut sent = 0;
    let mut mid_delivery = 0;
    for round in 0..ROUNDS {
        let d = Daemon::start(&cfg);
        let before = line_count(&out);
        let text: String = (sent..sent + PER_ROUND)
            .map(|i| support::spool::message(0, i, 80) + "\n")
            .collect();
        d.send(text.as_bytes());
        sent += PER_ROUND;
        let mut max = HashMap::new();
        let spooled = wait_until(WAIT, || {
            support::spool::spooled_max(&spool_dir, &mut max);
            max.get(&0).is_some_and(|&s| s + 1 >= sent) || line_count(&out) >= sent
        });
        assert!(
            spooled,
            "round {round}: not spooled; log:\n{}",
            d.log_text()
        );
        // Kill while rsyslog is being fed: a quarter of the round written.
        let _ = wait_until(WAIT, || line_count(&out) >= before + PER_ROUND / 4);
        drop(d); // SIGKILL
        if line_count(&out) < sent {
            mid_delivery += 1;
        }
    }
    let mut d = Daemon::start(&cfg);
    let s = d
        .wait_stats(WAIT, |s| {
            num(s, "queue_depth") == 0 && num(s, "delivered") == num(s, "recovered")
        })
        .unwrap_or_else(|| panic!("the spool was not delivered; log:\n{}", d.log_text()));
    assert!(num(&s, "recovered") > 0, "nothing replayed: {s:?}");
    d.stop_balanced(WAIT);
    drop(peer);

    let text = String::from_utf8(read(&out)).expect("utf-8 output");
    let mut seen = vec![0usize; sent];
    for line in text.lines() {
        let (c, i) =
            support::spool::parse(line).unwrap_or_else(|| panic!("not a test message: {line:?}"));
        assert!(c == 0 && i < sent, "{line:?}");
        seen[i] += 1;
    }
    let missing: Vec<usize> = (0..sent).filter(|&i| seen[i] == 0).take(10).collect();
    let duplicates: usize = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    eprintln!(
        "spool + relp sink: {ROUNDS} kills ({mid_delivery} mid-delivery), {sent} sent, {} stored, {duplicates} duplicates",
        text.lines().count()
    );
    assert!(
        missing.is_empty(),
        "spooled messages lost, first: {missing:?}"
    );
    assert!(mid_delivery > 0, "no kill landed while delivering");
}
