//! Test helpers for the metrics endpoint: find its address in the log,
//! speak just enough HTTP/1.1 to it (one request, `Connection: close`,
//! read to EOF), parse the text format into a map, and the table of
//! stats-line keys and their /metrics twins.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::{Daemon, StatsLine, num};

/// The address of the `metrics serving addr=` log line.
pub fn metrics_addr(d: &Daemon) -> SocketAddr {
    let line = d
        .wait_log(Duration::from_secs(10), |l| {
            l.contains("metrics serving addr=")
        })
        .unwrap_or_else(|| panic!("no metrics serving line; log:\n{}", d.log_text()));
    line.split("metrics serving addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad metrics serving line: {line}"))
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The head, lines joined by "\n" (lower-cased names are not assumed).
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` as is and reads the answer to EOF (5 s bounds).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no head in {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_string()))?;
    Ok(Answer {
        status,
        head: head.replace("\r\n", "\n"),
        body: body.to_string(),
    })
}

pub fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: floodwall\r\nUser-Agent: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// GET `path`, panicking on an I/O error.
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    http_raw(addr, &request("GET", path)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `name{labels} value` lines into a map keyed by `name{labels}`.
pub fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse().expect("sample value"))
        })
        .collect()
}

pub fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let a = get(addr, "/metrics");
    assert_eq!(a.status, 200, "{a:?}");
    parse(&a.body)
}

/// Every stats-line key with a /metrics twin (SPEC.md "Metrics endpoint").
pub const TWINS: &[(&str, &str)] = &[
    ("received", "floodwall_messages_received_total"),
    ("delivered", "floodwall_messages_delivered_total"),
    (
        "dropped_send_timeout",
        "floodwall_messages_dropped_total{reason=\"send_timeout\"}",
    ),
    (
        "dropped_oversize",
        "floodwall_messages_dropped_total{reason=\"oversize\"}",
    ),
    (
        "dropped_shutdown",
        "floodwall_messages_dropped_total{reason=\"shutdown\"}",
    ),
    ("dropped_truncated", "floodwall_messages_truncated_total"),
    ("recovered", "floodwall_messages_recovered_total"),
    ("relp_resent", "floodwall_relp_resent_total"),
    ("bytes_received", "floodwall_bytes_received_total"),
    ("bytes_delivered", "floodwall_bytes_delivered_total"),
    ("conns_total", "floodwall_connections_accepted_total"),
    (
        "conns_rejected",
        "floodwall_connections_refused_total{reason=\"limit\"}",
    ),
    (
        "conns_denied",
        "floodwall_connections_refused_total{reason=\"denied\"}",
    ),
    (
        "conns_over_ip_limit",
        "floodwall_connections_refused_total{reason=\"over_ip_limit\"}",
    ),
    (
        "closed_eof",
        "floodwall_connections_closed_total{reason=\"eof\"}",
    ),
    (
        "closed_idle",
        "floodwall_connections_closed_total{reason=\"idle\"}",
    ),
    (
        "closed_send_timeout",
        "floodwall_connections_closed_total{reason=\"send_timeout\"}",
    ),
    (
        "closed_framing",
        "floodwall_connections_closed_total{reason=\"framing\"}",
    ),
    (
        "closed_error",
        "floodwall_connections_closed_total{reason=\"error\"}",
    ),
    (
        "closed_tls",
        "floodwall_connections_closed_total{reason=\"tls\"}",
    ),
    (
        "closed_tls_truncated",
        "floodwall_connections_closed_total{reason=\"tls_truncated\"}",
    ),
    (
        "closed_proxy",
        "floodwall_connections_closed_total{reason=\"proxy\"}",
    ),
    (
        "closed_shutdown",
        "floodwall_connections_closed_total{reason=\"shutdown\"}",
    ),
    ("conns_active", "floodwall_connections_active"),
    ("workers", "floodwall_workers"),
    ("queue_depth", "floodwall_queue_messages"),
    ("queue_capacity", "floodwall_queue_capacity_messages"),
    ("spool_bytes", "floodwall_spool_bytes"),
    ("relp_refused", "floodwall_relp_refused_total"),
];

/// Asserts that every twin of `stats` has the same value in `m`
/// (accept_paused: true/false against 1/0).
pub fn assert_twins(stats: &StatsLine, m: &HashMap<String, f64>) {
    let mut diffs = Vec::new();
    for (key, family) in TWINS {
        let want = num(stats, key) as f64;
        match m.get(*family) {
            Some(got) if *got == want => {}
            got => diffs.push(format!("{key}={want} but {family}={got:?}")),
        }
    }
    let paused = if stats.get("accept_paused").map(String::as_str) == Some("true") {
        1.0
    } else {
        0.0
    };
    if m.get("floodwall_accept_paused") != Some(&paused) {
        diffs.push(format!(
            "accept_paused={:?} but floodwall_accept_paused={:?}",
            stats.get("accept_paused"),
            m.get("floodwall_accept_paused")
        ));
    }
    assert!(
        diffs.is_empty(),
        "/metrics disagrees with the stats line:\n{}\nstats: {stats:?}",
        diffs.join("\n")
    );
}

/// Fails (never skips) when a Prometheus tool is missing.
pub fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run `bash scripts/install-peers.sh` (Debian package prometheus)"
    );
}
