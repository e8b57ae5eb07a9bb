//! floodwall's tcp sink forwarding into a real, unmodified syslog-ng
//! (Debian's syslog-ng-core 3.38, unpacked into .peers/ by
//! scripts/install-peers.sh and started by scripts/peers.sh on loopback
//! with its own config, pid file and work dir under a per-test temp dir):
//! LF framing into its `network()` source, octet-counted into `syslog()`.
//! Messages sent to floodwall arrive in syslog-ng's output file intact and
//! in order (one sink worker).
//!
//! A missing syslog-ng fails the tests (run scripts/install-peers.sh); it
//! never skips them.

use std::io::Write;
use std::time::Duration;

use crate::support::peers::{self, Peer, line_count, payloads, tcp_sink_config};
use crate::support::{Daemon, assert_bytes, num, read, wait_until};

// ---- helpers -----------------------------------------------------------

fn floodwall_forwards_into_syslog_ng(framing: &str, source: &str) {
    peers::require("syslog-ng");
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("syslog-ng-out.log");
    let sng = Peer::start("start-syslogng-file", work.path(), |port| {
        vec![
            port.to_string(),
            out.display().to_string(),
            work.path().display().to_string(),
            source.to_string(),
        ]
    });
    let mut d = Daemon::start(&tcp_sink_config(sng.port, framing, ""));
    let msgs = payloads(&format!("to-syslog-ng-{framing}"), 5000);
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
        "syslog-ng wrote {} of {} lines; its internal.log:\n{}\nfloodwall log:\n{}",
        line_count(&out),
        msgs.len(),
        sng.internal_log(),
        d.log_text()
    );
    let fin = d.stop_balanced(Duration::from_secs(10));
    assert_eq!(num(&fin, "delivered"), msgs.len() as u64);
    assert_bytes(expected.as_bytes(), &read(&out));
    assert_eq!(sng.internal_log(), "", "syslog-ng warned");
}

#[test]
fn floodwall_lines_into_syslog_ng_network_source() {
    floodwall_forwards_into_syslog_ng("lines", "lf");
}

#[test]
fn floodwall_octet_counted_into_syslog_ng_syslog_source() {
    floodwall_forwards_into_syslog_ng("octet-counted", "octet");
}
