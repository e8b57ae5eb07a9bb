//! Acceptance 2 (issue 2): a real client. Messages sent with util-linux
//! `logger --tcp` (LF framing) and `logger --tcp --octet-count` (RFC 6587)
//! arrive intact in the file sink, one RFC 5424 line each.

use crate::support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::config::Conf;
use crate::support::{Daemon, assert_balanced, num};

const WAIT: Duration = Duration::from_secs(20);

fn start() -> Daemon {
    Conf::new().set("server.framing", "auto").start()
}

/// A tag and message no other test (or earlier run) uses.
fn unique(prefix: &str) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{}-{nanos}", std::process::id());
    (
        format!("fw-{prefix}"),
        format!("{prefix} message {id} with spaces, \"quotes\" and = signs"),
    )
}

fn logger(d: &Daemon, extra: &[&str], tag: &str, msg: &str) {
    let status = Command::new("logger")
        .args(["--tcp", "-n", "127.0.0.1", "-P"])
        .arg(d.addr.port().to_string())
        .args(extra)
        .args(["-t", tag, "--", msg])
        .status()
        .expect("run logger (util-linux)");
    assert!(status.success(), "logger failed: {status:?}");
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`.
/// logger writes structured data `[timeQuality ...]`, which holds spaces,
/// so MSG is what follows the SD's closing `] `.
fn assert_rfc5424(line: &str, tag: &str, msg: &str) {
    let fields: Vec<&str> = line.splitn(7, ' ').collect();
    assert_eq!(fields.len(), 7, "too few RFC 5424 fields: {line:?}");
    let (pri, version) = fields[0]
        .strip_prefix('<')
        .and_then(|f| f.split_once('>'))
        .unwrap_or_else(|| panic!("no <PRI> in {line:?}"));
    let pri: u32 = pri
        .parse()
        .unwrap_or_else(|_| panic!("bad PRI in {line:?}"));
    assert!(pri <= 191, "PRI out of range in {line:?}");
    assert_eq!(version, "1", "not RFC 5424 (VERSION 1): {line:?}");
    let ts = fields[1];
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
        "TIMESTAMP not RFC 3339: {line:?}"
    );
    assert!(!fields[2].is_empty(), "empty HOSTNAME: {line:?}");
    assert_eq!(fields[3], tag, "APP-NAME: {line:?}");
    let rest = fields[6];
    let sd_and_msg = rest
        .split_once("] ")
        .map(|(_, m)| m)
        .or_else(|| rest.strip_prefix("- "))
        .unwrap_or_else(|| panic!("no SD before MSG in {line:?}"));
    assert_eq!(sd_and_msg, msg, "MSG not intact: {line:?}");
}

fn one_message_arrives(extra: &[&str], prefix: &str) {
    let mut d = start();
    let (tag, msg) = unique(prefix);
    logger(&d, extra, &tag, &msg);
    // logger exits once its message is sent; the daemon then writes it.
    let out = d.path("out.log");
    assert!(
        support::wait_file_contains(&out, msg.as_bytes(), WAIT),
        "message never reached the file; log:\n{}",
        d.log_text()
    );
    let status = d.stop(WAIT);
    assert!(status.success(), "exit {status:?}");
    let text = String::from_utf8(support::read(&out)).expect("utf-8 output");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line expected: {text:?}");
    assert!(text.ends_with('\n'));
    assert_rfc5424(lines[0], &tag, &msg);
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "delivered"), 1);
    assert_eq!(num(&s, "closed_framing"), 0);
}

#[test]
fn logger_tcp_lines_arrive_intact() {
    one_message_arrives(&[], "lines");
}

#[test]
fn logger_tcp_octet_count_arrives_intact() {
    one_message_arrives(&["--octet-count"], "octet");
}

#[test]
fn logger_sends_many_lines_from_stdin_in_order() {
    for (extra, prefix) in [
        (&[][..], "stdin-lines"),
        (&["--octet-count"][..], "stdin-octet"),
    ] {
        let mut d = start();
        let (tag, _) = unique(prefix);
        let msgs: Vec<String> = (0..50).map(|i| format!("{prefix} number {i:02}")).collect();
        let mut child = Command::new("logger")
            .args(["--tcp", "-n", "127.0.0.1", "-P"])
            .arg(d.addr.port().to_string())
            .args(extra)
            .args(["-t", &tag])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run logger");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("logger stdin");
            for m in &msgs {
                writeln!(stdin, "{m}").expect("feed logger");
            }
        }
        assert!(child.wait().expect("wait logger").success());
        let out = d.path("out.log");
        let last = msgs.last().expect("messages");
        assert!(support::wait_file_contains(&out, last.as_bytes(), WAIT));
        // All 50 lines, in order (one connection, one sink worker).
        let status = d.stop(WAIT);
        assert!(status.success());
        let text = String::from_utf8(support::read(&out)).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), msgs.len(), "{text}");
        for (line, msg) in lines.iter().zip(&msgs) {
            assert_rfc5424(line, &tag, msg);
        }
        let s = d.final_stats();
        assert_balanced(&s);
        assert_eq!(num(&s, "delivered"), 50);
    }
}
