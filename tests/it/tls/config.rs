//! Issue 9: TLS configuration errors are exit 2 naming the key and the
//! file, at start and with `--check-config` (which loads the files too):
//! unreadable, not PEM, key and certificate that do not match;
//! permitted_peers without client_ca; a bad min_version; `[sink.tls]`
//! files.

use std::path::Path;

use crate::support::pki::{Ca, Issued};
use crate::support::run_bin;

struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Issued,
    other: Issued,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", "localhost", &["localhost"], false);
    let other = ca.issue(dir.path(), "other", "other", &["other"], false);
    Files {
        dir,
        ca,
        server,
        other,
    }
}

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("floodwall.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn server_tls(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// Both `--check-config` and a real start refuse with exit 2 and a
/// message containing every `needles` entry.
fn refused(config_path: &str, needles: &[&str]) {
    for args in [
        vec!["--config", config_path, "--check-config"],
        vec!["--config", config_path],
    ] {
        let (code, _out, err) = run_bin(&args);
        assert_eq!(code, 2, "{args:?}: exit {code}, stderr:\n{err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {n:?} not in stderr:\n{err}");
        }
    }
}

#[test]
fn good_tls_config_checks_and_prints_the_tls_table() {
    let f = files();
    let path = config(
        f.dir.path(),
        &server_tls(
            &f.server.crt,
            &f.server.key,
            &format!(
                "client_ca = \"{}\"\npermitted_peers = [\"*.example.net\"]",
                f.ca.crt.display()
            ),
        ),
    );
    let (code, out, err) = run_bin(&["--config", &path, "--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[server.tls]"), "{out}");
    assert!(out.contains("handshake_timeout = \"10s\""), "{out}");
    assert!(out.contains("min_version = \"1.2\""), "{out}");
}

#[test]
fn unreadable_cert_names_key_and_file() {
    let f = files();
    let missing = f.dir.path().join("missing.crt");
    let path = config(f.dir.path(), &server_tls(&missing, &f.server.key, ""));
    refused(&path, &["server.tls.cert", "missing.crt"]);
}

#[test]
fn key_that_is_not_pem_names_key_and_file() {
    let f = files();
    let junk = f.dir.path().join("junk.key");
    std::fs::write(&junk, "this is not a key\n").expect("write");
    let path = config(f.dir.path(), &server_tls(&f.server.crt, &junk, ""));
    refused(&path, &["server.tls.key", "junk.key"]);
}

#[test]
fn cert_that_is_not_pem_names_key_and_file() {
    let f = files();
    let junk = f.dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let path = config(f.dir.path(), &server_tls(&junk, &f.server.key, ""));
    refused(&path, &["server.tls.cert", "junk.crt"]);
}

#[test]
fn key_of_another_certificate_is_refused() {
    let f = files();
    let path = config(f.dir.path(), &server_tls(&f.server.crt, &f.other.key, ""));
    refused(&path, &["server.tls.key", "other.key", "server.crt"]);
}

#[test]
fn bad_client_ca_names_key_and_file() {
    let f = files();
    let junk = f.dir.path().join("junk-ca.pem");
    std::fs::write(&junk, "no CA here\n").expect("write");
    let path = config(
        f.dir.path(),
        &server_tls(
            &f.server.crt,
            &f.server.key,
            &format!("client_ca = \"{}\"", junk.display()),
        ),
    );
    refused(&path, &["server.tls.client_ca", "junk-ca.pem"]);
}

#[test]
fn permitted_peers_without_client_ca_is_refused() {
    let f = files();
    let path = config(
        f.dir.path(),
        &server_tls(
            &f.server.crt,
            &f.server.key,
            "permitted_peers = [\"a.example.net\"]",
        ),
    );
    refused(&path, &["server.tls.permitted_peers", "client_ca"]);
}

#[test]
fn bad_permitted_peer_and_min_version_are_refused() {
    let f = files();
    let extra = format!(
        "client_ca = \"{}\"\npermitted_peers = [\"a.*.example.net\"]",
        f.ca.crt.display()
    );
    let path = config(
        f.dir.path(),
        &server_tls(&f.server.crt, &f.server.key, &extra),
    );
    refused(&path, &["server.tls.permitted_peers", "a.*.example.net"]);
    let path = config(
        f.dir.path(),
        &server_tls(&f.server.crt, &f.server.key, "min_version = \"1.1\""),
    );
    refused(&path, &["min_version", "1.1"]);
}

#[test]
fn sink_tls_files_are_checked_too() {
    let f = files();
    let missing = f.dir.path().join("nope-ca.pem");
    let text = format!(
        "[sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:6000\"\n[sink.tls]\nca = \"{}\"\n",
        missing.display()
    );
    let path = config(f.dir.path(), &text);
    refused(&path, &["sink.tls.ca", "nope-ca.pem"]);
    let text = format!(
        "[sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:6000\"\n[sink.tls]\nca = \"{}\"\ncert = \"{}\"\n",
        f.ca.crt.display(),
        f.server.crt.display()
    );
    let path = config(f.dir.path(), &text);
    refused(&path, &["sink.tls.key"]);
    let text = format!(
        "[sink]\ntype = \"file\"\npath = \"/tmp/x\"\n[sink.tls]\nca = \"{}\"\n",
        f.ca.crt.display()
    );
    let path = config(f.dir.path(), &text);
    refused(&path, &["sink.tls", "tcp"]);
}
