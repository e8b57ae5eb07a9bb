//! From the files `[server.tls]` and `[sink.tls]` name to rustls configs:
//! reading the PEM certificates, keys and CA roots (an error names the
//! key and the file, in words), and building the listener's and the tcp
//! sink's configs with the ring provider. Whether a client certificate
//! is permitted is src/tls/peer.rs; what a config is used for,
//! src/tls/handshake.rs.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::peer::{PeerPattern, PermittedVerifier};
use super::{TlsError, tls_error};
use crate::config::{Config, ServerTlsConfig, SinkTlsConfig, TlsVersion};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(::rustls::crypto::ring::default_provider())
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| tls_error(key, format!("cannot read {path:?}: {e}")))
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(key, format!("{path:?} is not valid PEM: {}", pem_why(&e))))?;
    if certs.is_empty() {
        return Err(tls_error(
            key,
            format!("{path:?} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"),
        ));
    }
    Ok(certs)
}

/// pki-types' PEM errors print bytes; say it in words.
fn pem_why(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a BEGIN line has no matching END line".into(),
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        E::Base64Decode(m) => format!("bad base64 ({m})"),
        other => format!("{other:?}"),
    }
}

fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        tls_error(
            key,
            format!("{path:?} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

fn load_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(key, format!("{path:?}: unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Loads every TLS file the config names (for `--check-config` and start):
/// the first one that cannot be used is the error.
pub fn check_files(config: &Config) -> Result<(), TlsError> {
    if let Some(tls) = &config.server.tls {
        server_config(tls)?;
    }
    if let Some(tls) = &config.sink.tls {
        client_config(tls)?;
    }
    Ok(())
}

/// Builds the listener's rustls config from `[server.tls]`.
pub fn server_config(tls: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("server.tls.cert", &tls.cert)?;
    let key = load_key("server.tls.key", &tls.key)?;
    let provider = provider();
    let versions: &[&::rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&::rustls::version::TLS13, &::rustls::version::TLS12],
        TlsVersion::V1_3 => &[&::rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| tls_error("server.tls.min_version", e.to_string()))?;
    let builder = if tls.client_ca.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = load_roots("server.tls.client_ca", &tls.client_ca)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_error("server.tls.client_ca", format!("{:?}: {e}", tls.client_ca)))?;
        let permitted = tls
            .permitted_peers
            .iter()
            .map(|p| PeerPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("server.tls.permitted_peers", e))?;
        builder.with_client_cert_verifier(Arc::new(PermittedVerifier { inner, permitted }))
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| key_error("server.tls.key", &tls.key, &tls.cert, e))?;
    // Syslog clients never read: a ticket left unread in a client's
    // receive buffer makes its close a reset that loses its unsent tail.
    config.send_tls13_tickets = 0;
    // After the handshake, src/tls/record.rs opens the records itself.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Builds the tcp sink's rustls config from `[sink.tls]`.
pub fn client_config(tls: &SinkTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots("sink.tls.ca", &tls.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("sink.tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = load_certs("sink.tls.cert", cert)?;
            let der = load_key("sink.tls.key", key)?;
            builder
                .with_client_auth_cert(certs, der)
                .map_err(|e| key_error("sink.tls.key", key, cert, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn key_error(key: &'static str, key_file: &Path, cert: &Path, e: ::rustls::Error) -> TlsError {
    let why = match e {
        ::rustls::Error::InconsistentKeys(_) => "does not match".to_string(),
        other => format!("cannot be used ({other}) with"),
    };
    tls_error(
        key,
        format!("{key_file:?} {why} the certificate in {cert:?}"),
    )
}
