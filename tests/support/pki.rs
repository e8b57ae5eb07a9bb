//! Certificates for the TLS tests (rcgen, ring) written as PEM files into
//! a test's temp dir, and a rustls test client.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate authority whose cert is `<dir>/<name>.crt`.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub crt: PathBuf,
}

/// An issued certificate's files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub crt: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        let crt = dir.join(format!("{name}.crt"));
        write(&crt, &cert.pem());
        Ca { cert, key, crt }
    }

    /// A leaf for `dns` SANs (none: CN only) written as `<stem>.crt/.key`;
    /// `expired` makes one whose validity ended in 2001.
    pub fn issue(&self, dir: &Path, stem: &str, cn: &str, dns: &[&str], expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        let crt = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        write(&crt, &cert.pem());
        write(&key_path, &key.serialize_pem());
        Issued {
            crt,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}

/// A client config trusting `ca`, presenting `ident` if given.
pub fn client_config(ca: &Path, ident: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA pem")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match ident {
        Some(i) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(&i.crt)
                .expect("read cert")
                .map(|c| c.expect("cert pem"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(&i.key).expect("read key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    })
}

pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake (from the client's side: with
/// TLS 1.3 the server may still refuse the client certificate after).
pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<TlsClient> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// Sends `data` and flushes the TLS records.
pub fn send(client: &mut TlsClient, data: &[u8]) -> io::Result<()> {
    client.write_all(data)?;
    client.flush()
}

/// Whether the server refused the session: a read sees an alert, a reset
/// or EOF within `timeout` (a session the server accepted stays silent).
pub fn refused(client: &mut TlsClient, timeout: Duration) -> bool {
    use std::io::Read;
    client
        .sock
        .set_read_timeout(Some(timeout))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

/// The `[server.tls]` table for `server` (and `client_ca` if given).
/// `FLOODWALL_TEST_RECORD_LAYER=rustls` sets `record_layer`, so that
/// scripts/test.sh runs the TLS tests again with rustls's reader.
pub fn server_tls(server: &Issued, client_ca: Option<&Path>, extra: &str) -> String {
    let ca = client_ca.map_or(String::new(), |p| {
        format!("client_ca = \"{}\"\n", p.display())
    });
    let layer = match std::env::var("FLOODWALL_TEST_RECORD_LAYER") {
        Ok(layer) if !extra.contains("record_layer") => format!("record_layer = \"{layer}\"\n"),
        _ => String::new(),
    };
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{ca}{layer}{extra}\n",
        server.crt.display(),
        server.key.display()
    )
}
