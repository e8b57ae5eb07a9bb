//! Issue 9: mutual TLS refusals. Each refused client (no certificate, one
//! from another CA, an expired one, a name not permitted, plaintext sent
//! to the TLS port, 4 KiB of garbage as a ClientHello) is closed, counted
//! `closed_tls` and warned with its reason, delivers nothing, while a
//! permitted client on the same daemon keeps working. Fingerprint entries
//! accept exactly the listed certificate.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::pki::{self, Ca, Issued};
use crate::support::{Daemon, await_close, num, wait_file_contains};

const WAIT: Duration = Duration::from_secs(20);
/// A refused session shows the client an alert or EOF well within this
/// (the daemon answers at once; the bound only covers a loaded machine).
const REFUSAL: Duration = Duration::from_secs(10);

struct Pki {
    ca: Ca,
    server: Issued,
    good: Issued,
}

fn start(permitted: &str) -> (Daemon, Pki) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let good = ca.issue(
        dir.path(),
        "good",
        "good client",
        &["client.ok.example"],
        false,
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n{}\
         [sink]\ntype = \"file\"\npath = \"{{dir}}/out.log\"\nflush_interval = \"20ms\"\n\
         [log]\nstats_interval = \"100ms\"\n",
        pki::server_tls(
            &server,
            Some(&ca.crt),
            &format!("permitted_peers = {permitted}\nhandshake_timeout = \"5s\"")
        )
    );
    let d = Daemon::start_in(dir, &config);
    (d, Pki { ca, server, good })
}

/// Runs `attempt` (which must be refused) while the permitted client
/// sends before and after it; checks the reason, the counts and that
/// only the permitted client's messages reached the sink.
fn refused_while_another_client_works(reason: &str, attempt: impl FnOnce(&Daemon, &Pki)) {
    let (mut d, pki) = start(r#"["*.ok.example"]"#);
    let out = d.path("out.log");
    let config = pki::client_config(&pki.ca.crt, Some(&pki.good));
    let mut good = pki::connect(d.addr, &config).expect("permitted client connects");
    pki::send(&mut good, b"before\n").expect("send");
    assert!(wait_file_contains(&out, b"before\n", WAIT));

    attempt(&d, &pki);
    let line = d
        .wait_log(WAIT, |l| l.contains("TLS handshake refused"))
        .unwrap_or_else(|| panic!("no refusal warning; log:\n{}", d.log_text()));
    assert!(line.contains(reason), "reason {reason:?} not in: {line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");

    pki::send(&mut good, b"after\n").expect("the permitted client still sends");
    assert!(wait_file_contains(&out, b"after\n", WAIT));
    drop(good);
    let status = d.stop(WAIT);
    assert!(status.success(), "{status:?}");
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_tls"), 1, "{st:?}");
    assert_eq!(num(&st, "conns_total"), 2, "{st:?}");
    assert_eq!(num(&st, "received"), 2, "{st:?}");
    support::assert_bytes(b"before\nafter\n", &support::read(&out));
}

/// A TLS client with `ident` (None: no certificate) trusting the daemon's
/// CA: whatever the handshake looked like from its side, the session is
/// refused and what it sends is not delivered.
fn tls_attempt_refused(d: &Daemon, pki: &Pki, ident: Option<&Issued>) {
    let config = pki::client_config(&pki.ca.crt, ident);
    // TLS 1.3: the client's side of the handshake may complete before the
    // server has checked its certificate; the refusal then comes as an
    // alert on the first read.
    if let Ok(mut c) = pki::connect(d.addr, &config) {
        let _ = pki::send(&mut c, b"<13>secret must not arrive\n");
        assert!(pki::refused(&mut c, REFUSAL), "session was not refused");
    }
}

#[test]
fn no_client_certificate_is_refused() {
    refused_while_another_client_works("no client certificate", |d, pki| {
        tls_attempt_refused(d, pki, None)
    });
}

#[test]
fn certificate_from_another_ca_is_refused() {
    refused_while_another_client_works("unknown CA", |d, pki| {
        let dir = d.dir.path();
        let other = Ca::new(dir, "other-ca");
        let stranger = other.issue(dir, "stranger", "stranger", &["client.ok.example"], false);
        tls_attempt_refused(d, pki, Some(&stranger));
    });
}

#[test]
fn expired_certificate_is_refused() {
    refused_while_another_client_works("expired", |d, pki| {
        let old = pki
            .ca
            .issue(d.dir.path(), "old", "old", &["old.ok.example"], true);
        tls_attempt_refused(d, pki, Some(&old));
    });
}

#[test]
fn name_not_permitted_is_refused() {
    refused_while_another_client_works("not permitted", |d, pki| {
        // Chains to the CA, but a.b.ok.example is two labels under the
        // wildcard "*.ok.example".
        let deep = pki
            .ca
            .issue(d.dir.path(), "deep", "deep", &["a.b.ok.example"], false);
        tls_attempt_refused(d, pki, Some(&deep));
    });
}

#[test]
fn plaintext_to_the_tls_port_is_refused() {
    refused_while_another_client_works("not TLS", |d, _| {
        let mut s = TcpStream::connect(d.addr).expect("connect");
        s.write_all(b"<13>plaintext secret must not arrive\n")
            .expect("send");
        await_close(&mut s, REFUSAL);
    });
}

#[test]
fn random_bytes_as_a_client_hello_are_refused() {
    refused_while_another_client_works("bad handshake", |d, _| {
        // A handshake record header announcing 4091 bytes, then noise.
        let mut hello = vec![0x16, 0x03, 0x01, 0x0f, 0xfb];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while hello.len() < 4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            hello.push(x as u8);
        }
        let mut s = TcpStream::connect(d.addr).expect("connect");
        // The daemon may close before reading it all: a reset is fine.
        let _ = s.write_all(&hello);
        await_close(&mut s, REFUSAL);
    });
}

#[test]
fn common_name_counts_only_without_a_dns_san() {
    let (mut d, pki) = start(r#"["cn.ok.example"]"#);
    let dir = d.dir.path().to_path_buf();
    let out = d.path("out.log");
    // CN only: matched by its CN.
    let cn_only = pki.ca.issue(&dir, "cn", "cn.ok.example", &[], false);
    let mut c =
        pki::connect(d.addr, &pki::client_config(&pki.ca.crt, Some(&cn_only))).expect("connect");
    pki::send(&mut c, b"from cn\n").expect("send");
    assert!(wait_file_contains(&out, b"from cn\n", WAIT));
    // The same CN with a DNS SAN that does not match: the SAN decides.
    let with_san = pki
        .ca
        .issue(&dir, "san", "cn.ok.example", &["other.example"], false);
    tls_attempt_refused(&d, &pki, Some(&with_san));
    drop(c);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_tls"), 1, "{st:?}");
    support::assert_bytes(b"from cn\n", &support::read(&out));
    let _ = pki.server;
}

/// `openssl x509 -fingerprint -sha256` output, as an operator would paste it.
fn openssl_fingerprint(crt: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(crt)
        .output()
        .expect("openssl: run `bash scripts/install-peers.sh` to install it");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().split('=').nth(1).expect("Fingerprint=...");
    format!("sha256:{hex}")
}

#[test]
fn fingerprint_allowlist_accepts_exactly_the_listed_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    // Same CA, same name, different key: only the fingerprint differs.
    let listed = ca.issue(dir.path(), "listed", "twin", &["twin.example"], false);
    let twin = ca.issue(dir.path(), "twin", "twin", &["twin.example"], false);
    let print = openssl_fingerprint(&listed.crt);
    assert!(print.contains(':'), "openssl prints colons: {print}");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n{}\
         [sink]\ntype = \"file\"\npath = \"{{dir}}/out.log\"\nflush_interval = \"20ms\"\n\
         [log]\nstats_interval = \"100ms\"\n",
        pki::server_tls(
            &server,
            Some(&ca.crt),
            &format!("permitted_peers = [\"{print}\"]")
        )
    );
    let mut d = Daemon::start_in(dir, &config);
    let out = d.path("out.log");
    let mut c = pki::connect(d.addr, &pki::client_config(&ca.crt, Some(&listed))).expect("connect");
    pki::send(&mut c, b"listed\n").expect("send");
    assert!(wait_file_contains(&out, b"listed\n", WAIT));

    let config = pki::client_config(&ca.crt, Some(&twin));
    if let Ok(mut t) = pki::connect(d.addr, &config) {
        let _ = pki::send(&mut t, b"twin must not arrive\n");
        assert!(pki::refused(&mut t, REFUSAL), "twin was not refused");
    }
    drop(c);
    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "closed_tls"), 1, "{st:?}");
    support::assert_bytes(b"listed\n", &support::read(&out));
}
