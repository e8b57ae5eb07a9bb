//! Issue 9: real peers over mutual TLS, every message intact.
//! - rsyslog omfwd (ossl stream driver, client certificate) -> floodwall
//! - syslog-ng network(transport("tls")) -> floodwall
//! - openssl s_client (client certificate) -> floodwall
//! - floodwall's tcp sink over TLS -> rsyslog imtcp (ossl, TLS only,
//!   client certificate required); and with a CA that did not sign the
//!   downstream: sink errors, nothing sent in plaintext.
//!
//! A missing peer fails the test with a pointer to scripts/install-peers.sh.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::peers::{Peer, line_count, payloads, require};
use crate::support::pki::{self, Ca, Issued};
use crate::support::{Daemon, num, wait_file_len, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const MESSAGES: usize = 500;

struct Pki {
    ca: Ca,
    server: Issued,
    client: Issued,
}

/// A CA, a server cert for localhost and 127.0.0.1 (peers verify either),
/// and a client cert for `client_name`.
fn pki(dir: &Path, client_name: &str) -> Pki {
    let ca = Ca::new(dir, "ca");
    let server = ca.issue(
        dir,
        "server",
        "localhost",
        &["localhost", "127.0.0.1"],
        false,
    );
    let client = ca.issue(dir, "client", client_name, &[client_name], false);
    Pki { ca, server, client }
}

/// floodwall over mutual TLS admitting only `*.clients.example`.
fn tls_daemon(dir: tempfile::TempDir, p: &Pki) -> Daemon {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"auto\"\n{}\
         [sink]\ntype = \"file\"\npath = \"{{dir}}/out.log\"\nflush_interval = \"20ms\"\n\
         [log]\nstats_interval = \"200ms\"\n",
        pki::server_tls(
            &p.server,
            Some(&p.ca.crt),
            "permitted_peers = [\"*.clients.example\"]"
        )
    );
    Daemon::start_in(dir, &config)
}

fn expected(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

/// Sends `lines` to a peer's plain TCP input, LF-framed.
fn feed(port: u16, lines: &[String]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to peer input");
    s.write_all(&expected(lines)).expect("send to peer");
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn forwarder_into_floodwall(kind: &str, tag: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("peer dir");
    let p = pki(dir.path(), &format!("{tag}.clients.example"));
    let mut d = tls_daemon(dir, &p);
    let out = d.path("out.log");
    let target = d.addr.port().to_string();
    let files = [
        path_str(&p.ca.crt),
        path_str(&p.client.crt),
        path_str(&p.client.key),
    ];
    let peer = Peer::start(kind, work.path(), |port| {
        let mut args = vec![port.to_string(), target.clone(), path_str(work.path())];
        args.extend(files.iter().cloned());
        args
    });
    let lines = payloads(tag, MESSAGES);
    feed(peer.port, &lines);
    let want = expected(&lines);
    let got = wait_file_len(&out, want.len(), WAIT);
    if got.len() < want.len() {
        panic!(
            "{kind}: {} of {MESSAGES} lines arrived; peer log:\n{}\ndaemon log:\n{}",
            line_count(&out),
            peer.internal_log(),
            d.log_text()
        );
    }
    support::assert_bytes(&want, &got);
    drop(peer);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_tls"), 0, "{st:?}");
    assert_eq!(num(&st, "received"), MESSAGES as u64, "{st:?}");
}

#[test]
fn rsyslog_omfwd_ossl_with_a_client_certificate_into_floodwall() {
    require("rsyslogd");
    forwarder_into_floodwall("start-rsyslog-tls-forward", "rsyslog");
}

#[test]
fn syslog_ng_network_tls_into_floodwall() {
    require("syslog-ng");
    forwarder_into_floodwall("start-syslogng-tls-forward", "syslogng");
}

#[test]
fn openssl_s_client_into_floodwall() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = pki(dir.path(), "sclient.clients.example");
    let mut d = tls_daemon(dir, &p);
    let out = d.path("out.log");
    let lines = payloads("s_client", MESSAGES);
    let want = expected(&lines);
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .arg("-connect")
        .arg(d.addr.to_string())
        .arg("-CAfile")
        .arg(&p.ca.crt)
        .arg("-cert")
        .arg(&p.client.crt)
        .arg("-key")
        .arg(&p.client.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl not found: run `bash scripts/install-peers.sh`");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&want)
        .expect("feed s_client");
    let got = wait_file_len(&out, want.len(), WAIT);
    let status = child.wait().expect("s_client exits at EOF");
    assert!(status.success(), "s_client: {status:?}");
    support::assert_bytes(&want, &got);
    assert!(d.stop(WAIT).success());
    assert_eq!(num(&d.final_stats(), "closed_tls"), 0);
}

/// floodwall (plain listener) forwarding over TLS to rsyslog's imtcp
/// (ossl, TLS only, client certificate required); `sink_ca` is the CA
/// floodwall trusts for the downstream.
/// Returns the peer's work dir first: bound first, it is dropped last,
/// after the peer has been stopped.
fn floodwall_into_rsyslog(
    sink_ca: Option<&Path>,
) -> (tempfile::TempDir, Daemon, Peer, std::path::PathBuf) {
    require("rsyslogd");
    let dir = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("peer dir");
    let p = pki(dir.path(), "floodwall.clients.example");
    let received = work.path().join("rsyslog-out.log");
    let files = [
        path_str(&p.ca.crt),
        path_str(&p.server.crt),
        path_str(&p.server.key),
    ];
    let peer = Peer::start("start-rsyslog-tls-file", work.path(), |port| {
        let mut args = vec![port.to_string(), path_str(&received), path_str(work.path())];
        args.extend(files.iter().cloned());
        args
    });
    let ca = sink_ca.map_or(path_str(&p.ca.crt), path_str);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n\
         [sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:{}\"\nconnect_timeout = \"2s\"\n\
         [sink.tls]\nca = \"{ca}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [log]\nstats_interval = \"200ms\"\n",
        peer.port,
        path_str(&p.client.crt),
        path_str(&p.client.key)
    );
    let d = Daemon::start_in(dir, &config);
    (work, d, peer, received)
}

#[test]
fn floodwall_tcp_sink_over_tls_into_rsyslog_imtcp_ossl() {
    let (_work, mut d, peer, received) = floodwall_into_rsyslog(None);
    let lines = payloads("to rsyslog", MESSAGES);
    let want = expected(&lines);
    let mut s = d.connect();
    s.write_all(&want).expect("send");
    drop(s);
    let got = wait_file_len(&received, want.len(), WAIT);
    if got.len() < want.len() {
        panic!(
            "{} of {MESSAGES} arrived; rsyslog:\n{}\nfloodwall:\n{}",
            line_count(&received),
            peer.internal_log(),
            d.log_text()
        );
    }
    support::assert_bytes(&want, &got);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "delivered"), MESSAGES as u64, "{st:?}");
    assert_eq!(num(&st, "sink_errors"), 0, "{st:?}");
}

#[test]
fn tcp_sink_refuses_a_downstream_it_cannot_verify_and_never_sends_plaintext() {
    let stranger_dir = tempfile::tempdir().expect("temp dir");
    let stranger = Ca::new(stranger_dir.path(), "stranger");
    let (_work, d, peer, received) = floodwall_into_rsyslog(Some(&stranger.crt));
    let mut s = d.connect();
    s.write_all(b"must not leave in plaintext\n").expect("send");
    d.wait_stats(WAIT, |s| num(s, "sink_errors") >= 2)
        .unwrap_or_else(|| panic!("no retried sink errors:\n{}", d.log_text()));
    let warning = d
        .wait_log(WAIT, |l| l.contains("WARN") && l.contains("sink"))
        .expect("a sink warning");
    assert!(
        warning.to_lowercase().contains("certificate") || warning.contains("TLS"),
        "{warning}"
    );
    let warnings = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("sink"))
        .count();
    assert_eq!(warnings, 1, "one warning per outage:\n{}", d.log_text());
    // rsyslog wrote nothing: no plaintext fallback reached it.
    assert!(
        !wait_until(Duration::from_millis(500), || received.exists()
            && line_count(&received) > 0),
        "the downstream received data"
    );
    drop(peer);
}
