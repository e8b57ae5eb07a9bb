//! Issue 19, part 1: a TLS session that ends without close_notify may
//! have been cut by whoever closed the TCP stream, so the frame it left
//! unfinished is dropped and counted (`dropped_truncated`, close reason
//! `closed_tls_truncated`), never delivered; complete frames before it
//! are delivered (SPEC.md "Access control and TLS").
//!
//! Each test plays the attacker on the path: a real rustls client seals
//! its records into a buffer, and the test forwards only some of them (or
//! part of one) before the FIN.

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use crate::support::metrics::{metrics_addr, scrape};
use crate::support::pki::{self, Ca, TlsClient};
use crate::support::{Daemon, StatsLine, num, wait_file_contains};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

const WAIT: Duration = Duration::from_secs(20);

fn daemon(framing: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"{framing}\"\n{}\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [sink]\ntype = \"file\"\npath = \"{{dir}}/out.log\"\nflush_interval = \"20ms\"\n\
         [log]\nstats_interval = \"100ms\"\n",
        pki::server_tls(&server, None, "")
    );
    Daemon::start_in(dir, &config)
}

/// A client of one TLS version trusting the daemon's CA.
fn client(d: &Daemon, version: &'static SupportedProtocolVersion) -> TlsClient {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.path("ca.crt")).expect("read CA") {
        roots.add(c.expect("CA pem")).expect("add CA");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots)
            .with_no_client_auth();
    pki::connect(d.addr, &Arc::new(config)).expect("connect")
}

/// Seals `data` (one write: rustls cuts it into records of at most 16 KiB
/// of plaintext) and returns the records, not sent.
fn seal(c: &mut TlsClient, data: &[u8]) -> Vec<Vec<u8>> {
    c.conn.writer().write_all(data).expect("buffer");
    let mut wire = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut wire).expect("seal");
    }
    let mut records = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        records.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    records
}

/// Sends `bytes` and closes the TCP stream (a FIN, no close_notify).
fn forward_and_fin(c: &mut TlsClient, bytes: &[u8]) {
    c.sock.write_all(bytes).expect("forward");
    c.sock.shutdown(Shutdown::Write).expect("FIN");
}

/// Waits until one connection has closed, stops the daemon, and returns
/// the final (balanced) stats line.
fn closed_then_stopped(d: &mut Daemon) -> StatsLine {
    d.wait_stats(WAIT, |s| {
        num(s, "conns_active") == 0 && num(s, "conns_total") == 1
    })
    .unwrap_or_else(|| panic!("the connection never closed; log:\n{}", d.log_text()));
    d.stop_balanced(WAIT)
}

/// The issue's attack: a 20,000-byte line goes out as a 16 KiB record and
/// the rest; only the first record is forwarded, then a FIN.
fn line_cut_after_its_first_record(version: &'static SupportedProtocolVersion) {
    let mut d = daemon("lines");
    let mut c = client(&d, version);
    let before = seal(&mut c, b"<13>a whole line before the cut\n");
    let mut long = vec![b'x'; 20_000];
    long.push(b'\n');
    let cut = seal(&mut c, &long);
    assert_eq!(cut.len(), 2, "a 20,001-byte write is two records");
    forward_and_fin(&mut c, &[before.concat(), cut[0].clone()].concat());

    let out = d.path("out.log");
    assert!(
        wait_file_contains(&out, b"<13>a whole line before the cut\n", WAIT),
        "the complete line before the cut was not delivered"
    );
    let m = metrics_addr(&d);
    d.wait_stats(WAIT, |s| num(s, "closed_tls_truncated") == 1)
        .unwrap_or_else(|| panic!("no closed_tls_truncated; log:\n{}", d.log_text()));
    let scraped = scrape(m);
    assert_eq!(
        scraped.get("floodwall_messages_truncated_total"),
        Some(&1.0),
        "{scraped:?}"
    );
    assert_eq!(
        scraped.get("floodwall_connections_closed_total{reason=\"tls_truncated\"}"),
        Some(&1.0),
        "{scraped:?}"
    );
    let last = closed_then_stopped(&mut d);
    // The cut frame was never framed: not received (SPEC's identity
    // holds without it).
    assert_eq!(num(&last, "received"), 1, "{last:?}");
    assert_eq!(num(&last, "delivered"), 1, "{last:?}");
    assert_eq!(num(&last, "dropped_truncated"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_tls_truncated"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_eof"), 0, "{last:?}");
    let written = std::fs::read(&out).expect("out.log");
    assert_eq!(
        written, b"<13>a whole line before the cut\n",
        "the prefix leaked"
    );
}

#[test]
fn a_line_cut_after_its_first_16k_record_is_dropped_and_counted_tls13() {
    line_cut_after_its_first_record(&rustls::version::TLS13);
}

#[test]
fn a_line_cut_after_its_first_16k_record_is_dropped_and_counted_tls12() {
    line_cut_after_its_first_record(&rustls::version::TLS12);
}

/// Cut inside a record that begins a new frame: the record cannot be
/// opened, so nothing of the frame is known, but the session was cut.
#[test]
fn a_record_cut_on_a_frame_boundary_is_a_truncated_close_with_nothing_to_drop() {
    let mut d = daemon("lines");
    let mut c = client(&d, &rustls::version::TLS13);
    let first = seal(&mut c, b"<13>first\n");
    let second = seal(&mut c, b"<13>second, never seen\n");
    let half = &second[0][..second[0].len() / 2];
    forward_and_fin(&mut c, &[&first.concat()[..], half].concat());
    let last = closed_then_stopped(&mut d);
    assert_eq!(num(&last, "delivered"), 1, "{last:?}");
    assert_eq!(num(&last, "dropped_truncated"), 0, "{last:?}");
    assert_eq!(num(&last, "closed_tls_truncated"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_eof"), 0, "{last:?}");
}

/// Most syslog clients close without close_notify after whole frames:
/// an ordinary EOF, everything delivered.
#[test]
fn no_close_notify_after_whole_frames_is_an_ordinary_eof() {
    let mut d = daemon("lines");
    let mut c = client(&d, &rustls::version::TLS13);
    let records = seal(&mut c, b"<13>one\n<13>two\n");
    forward_and_fin(&mut c, &records.concat());
    let last = closed_then_stopped(&mut d);
    assert_eq!(num(&last, "delivered"), 2, "{last:?}");
    assert_eq!(num(&last, "dropped_truncated"), 0, "{last:?}");
    assert_eq!(num(&last, "closed_tls_truncated"), 0, "{last:?}");
    assert_eq!(num(&last, "closed_eof"), 1, "{last:?}");
}

/// With close_notify nothing was cut: a final unterminated line is a
/// message, as at a plain EOF (SPEC.md "Framing").
#[test]
fn close_notify_after_an_unterminated_line_delivers_it() {
    let mut d = daemon("lines");
    let mut c = client(&d, &rustls::version::TLS13);
    let mut wire = seal(&mut c, b"<13>no LF but closed properly").concat();
    c.conn.send_close_notify();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut wire).expect("seal");
    }
    forward_and_fin(&mut c, &wire);
    assert!(wait_file_contains(
        &d.path("out.log"),
        b"<13>no LF but closed properly\n",
        WAIT
    ));
    let last = closed_then_stopped(&mut d);
    assert_eq!(num(&last, "delivered"), 1, "{last:?}");
    assert_eq!(num(&last, "dropped_truncated"), 0, "{last:?}");
    assert_eq!(num(&last, "closed_eof"), 1, "{last:?}");
}

/// An octet-counted frame cut short without close_notify is a truncation
/// (dropped, counted), not a framing error.
#[test]
fn an_octet_frame_cut_without_close_notify_is_dropped_and_counted() {
    let mut d = daemon("octet-counted");
    let mut c = client(&d, &rustls::version::TLS13);
    let whole = seal(&mut c, b"9 <13>whole");
    let cut = seal(&mut c, b"30 <13>only part of");
    forward_and_fin(&mut c, &[whole.concat(), cut.concat()].concat());
    let last = closed_then_stopped(&mut d);
    assert_eq!(num(&last, "delivered"), 1, "{last:?}");
    assert_eq!(num(&last, "dropped_truncated"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_tls_truncated"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_framing"), 0, "{last:?}");
}
