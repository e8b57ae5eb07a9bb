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

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Daemon, assert_bytes, read, wait_until};

// ---- peers.sh ----------------------------------------------------------

fn peers_sh(args: &[&str]) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "peers.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn require_syslog_ng() {
    let bin = peers_sh(&["peer-bin", "syslog-ng"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        Path::new(&bin).is_file(),
        "syslog-ng not found at {bin}: run `bash scripts/install-peers.sh` (needs root) to unpack syslog-ng-core into .peers/"
    );
}

/// A running peer; stopped (TERM, then KILL) when dropped.
struct Peer {
    port: u16,
    /// WORKDIR/<kind>-<port>: the peer's config, pid and logs.
    dir: PathBuf,
    pid: u32,
}

impl Peer {
    /// `peers.sh start-<kind> PORT args... WORKDIR extra...` on a free port,
    /// with a new port if the one picked was taken meanwhile.
    fn start(kind: &str, workdir: &Path, args: impl Fn(u16) -> Vec<String>) -> Peer {
        let mut last = String::new();
        for _ in 0..3 {
            let port: u16 = peers_sh(&["free-port"])
                .unwrap_or_else(|e| panic!("{e}"))
                .parse()
                .expect("free-port prints a port");
            match Peer::start_on(kind, workdir, port, &args(port)) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("could not start {kind}: {last}");
    }

    fn start_on(kind: &str, workdir: &Path, port: u16, args: &[String]) -> Result<Peer, String> {
        let mut argv: Vec<&str> = vec![kind];
        argv.extend(args.iter().map(String::as_str));
        let pid = peers_sh(&argv)?;
        let pid = pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?;
        let dir_kind = kind.trim_start_matches("start-");
        Ok(Peer {
            port,
            dir: workdir.join(format!("{dir_kind}-{port}")),
            pid,
        })
    }

    fn internal_log(&self) -> String {
        String::from_utf8_lossy(&read(&self.dir.join("internal.log"))).into_owned()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A stopped peer cannot act on TERM.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid.to_string())
            .status();
        if let Err(e) = peers_sh(&["stop", &self.dir.display().to_string()]) {
            eprintln!("{e}");
        }
    }
}

// ---- helpers -----------------------------------------------------------

fn line_count(path: &Path) -> usize {
    read(path).iter().filter(|&&b| b == b'\n').count()
}

/// Letter-first payloads (rsyslog reads a leading digit as an octet
/// count), with a tab and spaces that must survive.
fn payloads(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag} message\t{i:06} end"))
        .collect()
}

fn tcp_sink_config(port: u16, framing: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n\
         [sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nframing = \"{framing}\"\nworkers = 1\n\
         connect_timeout = \"1s\"\n{extra}\n\
         [log]\nstats_interval = \"200ms\"\n"
    )
}

fn floodwall_forwards_into_syslog_ng(framing: &str, source: &str) {
    require_syslog_ng();
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
    assert!(d.stop(Duration::from_secs(10)).success());
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
