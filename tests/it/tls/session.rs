//! Issue 9: what a TLS session does once established.
//! - A client that never reads loses nothing at close: floodwall sends no
//!   session tickets and writes nothing after the handshake, so the
//!   client's close is a FIN, not a reset that discards its unsent tail.
//! - SIGHUP rotates the certificate for new connections while an old
//!   connection keeps working; a broken file on SIGHUP keeps the old
//!   certificate, logs one error naming the file, and the daemon lives on.

use crate::support;

use std::io::{self, Write};
use std::time::Duration;

use crate::support::pki::{self, Ca, Issued};
use crate::support::{Daemon, num, wait_file_contains, wait_file_len};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const WAIT: Duration = Duration::from_secs(20);

fn config(server: &Issued, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n{}\
         [sink]\ntype = \"file\"\npath = \"{{dir}}/out.log\"\nflush_interval = \"20ms\"\n\
         [log]\nstats_interval = \"100ms\"\n",
        pki::server_tls(server, None, extra)
    )
}

#[test]
fn a_client_that_never_reads_loses_nothing_at_close() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let mut d = Daemon::start_in(dir, &config(&server, "min_version = \"1.3\""));
    let out = d.path("out.log");
    let client_config = pki::client_config(&ca.crt, None);

    const MESSAGES: usize = 20_000;
    let mut expected = Vec::new();
    for i in 0..MESSAGES {
        expected
            .extend_from_slice(format!("<13>never reads {i:06} {}\n", "x".repeat(40)).as_bytes());
    }
    for round in 0..3 {
        let mut c = pki::connect(d.addr, &client_config).expect("connect");
        // Like a syslog sender: write everything, read nothing, close.
        c.conn.set_buffer_limit(None);
        c.conn.writer().write_all(&expected).expect("buffer");
        while c.conn.wants_write() {
            c.conn.write_tls(&mut c.sock).expect("send");
        }
        // Nothing from the server sits in our receive buffer: no ticket,
        // no other post-handshake record.
        c.sock.set_nonblocking(true).expect("nonblocking");
        let mut probe = [0u8; 1];
        match c.sock.peek(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("the server wrote after the handshake: {other:?}"),
        }
        drop(c); // close without reading: a FIN, since nothing is unread
        let want = expected.len() * (round + 1);
        let got = wait_file_len(&out, want, WAIT);
        assert_eq!(got.len(), want, "round {round}: bytes lost at close");
    }
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "received"), 3 * MESSAGES as u64, "{st:?}");
    assert_eq!(num(&st, "closed_error"), 0, "{st:?}");
}

fn leaf_der(client: &pki::TlsClient) -> Vec<u8> {
    client
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .to_vec()
}

fn file_der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("pem").to_vec()
}

#[test]
fn sighup_rotates_the_certificate_for_new_connections_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let old = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let old_der = old.der.clone();
    let mut d = Daemon::start_in(dir, &config(&old, ""));
    let out = d.path("out.log");
    let client_config = pki::client_config(&ca.crt, None);

    let mut before = pki::connect(d.addr, &client_config).expect("connect");
    assert_eq!(leaf_der(&before), old_der);
    pki::send(&mut before, b"old session 1\n").expect("send");
    assert!(wait_file_contains(&out, b"old session 1\n", WAIT));

    // Rotate: new files at the same paths, then SIGHUP.
    let staged = ca.issue(d.dir.path(), "staged", "localhost", &["localhost"], false);
    std::fs::copy(&staged.crt, &old.crt).expect("copy cert");
    std::fs::copy(&staged.key, &old.key).expect("copy key");
    d.signal("HUP");
    d.wait_log(WAIT, |l| l.contains("TLS reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{}", d.log_text()));
    let mut after = pki::connect(d.addr, &client_config).expect("connect");
    assert_eq!(
        leaf_der(&after),
        staged.der,
        "new connection got the old cert"
    );
    pki::send(&mut after, b"new session\n").expect("send");
    pki::send(&mut before, b"old session 2\n").expect("old session still sends");
    assert!(wait_file_contains(&out, b"new session\n", WAIT));
    assert!(wait_file_contains(&out, b"old session 2\n", WAIT));

    // A broken certificate file: the loaded one stays.
    std::fs::write(&old.crt, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("break cert");
    d.signal("HUP");
    let line = d
        .wait_log(WAIT, |l| l.contains("TLS not reloaded"))
        .unwrap_or_else(|| panic!("no reload error:\n{}", d.log_text()));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("server.tls.cert"), "{line}");
    assert!(line.contains(&old.crt.display().to_string()), "{line}");
    let mut third = pki::connect(d.addr, &client_config).expect("daemon alive, serving");
    assert_eq!(leaf_der(&third), staged.der, "the last good cert stays");
    assert_eq!(file_der(&staged.crt), staged.der);
    pki::send(&mut third, b"third\n").expect("send");
    assert!(wait_file_contains(&out, b"third\n", WAIT));
    let errors = d.log_lines().iter().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "one error line:\n{}", d.log_text());
    drop((before, after, third));
    assert!(d.stop(WAIT).success());
}

#[test]
fn shutdown_ends_a_pending_handshake_and_says_close_notify_to_a_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let mut d = Daemon::start_in(dir, &config(&server, "handshake_timeout = \"60s\""));
    let out = d.path("out.log");
    let mut session = pki::connect(d.addr, &pki::client_config(&ca.crt, None)).expect("connect");
    pki::send(&mut session, b"before shutdown\n").expect("send");
    assert!(wait_file_contains(&out, b"before shutdown\n", WAIT));
    // Silent: its handshake would wait 60 s.
    let _silent = std::net::TcpStream::connect(d.addr).expect("connect");
    d.wait_stats(WAIT, |s| num(s, "conns_active") == 2)
        .expect("both admitted");
    let started = std::time::Instant::now();
    let status = d.stop(WAIT);
    // The drain ends a quiet connection after its short grace; 5 s is a
    // margin for a loaded machine, far below the 60 s handshake timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status:?}");
    // The session was closed with close_notify: a clean TLS EOF, not a
    // truncation.
    let mut buf = [0u8; 16];
    session.sock.set_read_timeout(Some(WAIT)).expect("timeout");
    match io::Read::read(&mut session, &mut buf) {
        Ok(0) => {}
        other => panic!("expected a clean close_notify EOF, got {other:?}"),
    }
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_shutdown"), 2, "{st:?}");
    assert_eq!(num(&st, "closed_tls"), 0, "{st:?}");
}

#[test]
fn a_client_trickling_its_client_hello_is_cut_at_the_handshake_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let d = Daemon::start_in(dir, &config(&server, "handshake_timeout = \"1s\""));
    let mut conn = rustls::ClientConnection::new(
        pki::client_config(&ca.crt, None),
        rustls::pki_types::ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    let mut s = std::net::TcpStream::connect(d.addr).expect("connect");
    let opened = std::time::Instant::now();
    // One byte every 100 ms: each read resets no clock, the deadline is
    // for the whole handshake. Bounded: at most the hello's length.
    let mut cut = None;
    for b in &hello {
        if s.write_all(&[*b]).is_err() {
            cut = Some(opened.elapsed());
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match io::Read::read(&mut s, &mut buf) {
            Ok(0) => {
                cut = Some(opened.elapsed());
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            _ => {
                cut = Some(opened.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("the trickling client was never closed");
    // 1 s deadline; 2 s of margin for a loaded 2-core machine. Without the
    // single deadline it would live as long as it trickles (hello.len()
    // x 100 ms, over 20 s).
    assert!(cut < Duration::from_secs(3), "closed only after {cut:?}");
    assert!(hello.len() > 30, "the hello must outlast the deadline");
    d.wait_stats(WAIT, |s| num(s, "closed_tls") == 1)
        .expect("counted closed_tls");
    let line = d
        .wait_log(WAIT, |l| l.contains("TLS handshake refused"))
        .expect("warned");
    assert!(line.contains("handshake timeout"), "{line}");
}

#[test]
fn sighup_reloads_permitted_peers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let b = ca.issue(dir.path(), "b", "b", &["b.example"], false);
    let extra = |peer: &str| {
        format!(
            "client_ca = \"{}\"\npermitted_peers = [\"{peer}\"]",
            ca.crt.display()
        )
    };
    let mut d = Daemon::start_in(dir, &config(&server, &extra("a.example")));
    let out = d.path("out.log");
    let b_config = pki::client_config(&ca.crt, Some(&b));
    if let Ok(mut c) = pki::connect(d.addr, &b_config) {
        let _ = pki::send(&mut c, b"b before\n");
        assert!(
            pki::refused(&mut c, WAIT),
            "b.example admitted before the reload"
        );
    }
    // Permit b.example instead, then SIGHUP.
    let path = d.path("floodwall.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace("a.example", "b.example")).expect("rewrite");
    d.signal("HUP");
    d.wait_log(WAIT, |l| l.contains("TLS reloaded"))
        .expect("reloaded");
    let mut c = pki::connect(d.addr, &b_config).expect("connect");
    pki::send(&mut c, b"b after\n").expect("send");
    assert!(wait_file_contains(&out, b"b after\n", WAIT));
    drop(c);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_tls"), 1, "{st:?}");
    support::assert_bytes(b"b after\n", &support::read(&out));
}
