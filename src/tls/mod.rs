//! TLS for the listener and the tcp sink (rustls with the ring provider):
//! loading the PEM files named in `[server.tls]` and `[sink.tls]`, the
//! server handshake with its single deadline, the client-certificate
//! check against `permitted_peers`, and the SIGHUP reload.
//!
//! It owns no socket and no thread: the worker thread calls
//! [`ServerTls::accept`] on its own socket after its permit (the accept
//! loop never touches TLS), then hands the resulting [`Stream`] to
//! conn.rs, which only reads from it. A refused handshake is counted
//! `closed_tls` and warned at most once a second, naming the peer and why.
//!
//! floodwall sends no TLS 1.3 session tickets and nothing else after the
//! handshake (except close_notify at shutdown): syslog senders never read,
//! and unread bytes in a client's receive buffer turn its close into a
//! reset that throws away what it had not yet sent.

#[cfg(test)]
mod diff;
pub mod record;
pub mod rustls;
pub mod stream;

pub use stream::Stream;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::rustls::client::danger::HandshakeSignatureValid;
use ::rustls::crypto::CryptoProvider;
use ::rustls::kernel::KernelConnection;
use ::rustls::server::WebPkiClientVerifier;
use ::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use ::rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use ::rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
use ::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ExtractedSecrets,
    OtherError, RootCertStore, ServerConfig, SignatureScheme, StreamOwned,
};
use log::{info, warn};
use parking_lot::RwLock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use self::rustls::RustlsSession;
use crate::alerts::{Throttle, suppressed};
use crate::config::{Config, RecordLayer, ServerTlsConfig, SinkTlsConfig, TlsVersion};
use crate::stats::Stats;
use crate::wake::{Ready, Wake};
use record::{STAGING_MIN, Session};

/// A TLS file that cannot be used; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn tls_error(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

/// The longest wait for a close_notify or an alert to leave: a client that
/// does not read must not hold the worker.
const ALERT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// TLS record type "handshake": the first byte of any ClientHello.
const RECORD_HANDSHAKE: u8 = 0x16;
/// The most handshake input held at once (a client certificate chain may
/// span several records).
const HANDSHAKE_INPUT_MAX: usize = 128 << 10;

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

/// One `permitted_peers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPattern {
    /// A DNS name, lower case.
    Name(String),
    /// `*.example.net`: the suffix after `*.`, lower case.
    Wildcard(String),
    /// `sha256:` of the leaf's DER.
    Fingerprint([u8; 32]),
}

impl PeerPattern {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<PeerPattern, String> {
        let entry = entry.trim();
        if entry.len() >= 7 && entry[..7].eq_ignore_ascii_case("sha256:") {
            let hex: String = entry[7..].chars().filter(|c| *c != ':').collect();
            let mut out = [0u8; 32];
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err("is not a sha256 fingerprint (64 hex digits, colons optional)".into());
            }
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|e| format!("bad hex: {e}"))?;
            }
            return Ok(PeerPattern::Fingerprint(out));
        }
        if entry.is_empty() {
            return Err("is empty".into());
        }
        if let Some(suffix) = entry.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || suffix.starts_with('.') {
                return Err("is not a one-label wildcard".into());
            }
            return Ok(PeerPattern::Wildcard(suffix.to_ascii_lowercase()));
        }
        if entry.contains('*') {
            return Err("has a wildcard that is not the whole first label".into());
        }
        Ok(PeerPattern::Name(entry.to_ascii_lowercase()))
    }

    /// Whether a certificate with these (lower-case) names and this
    /// fingerprint matches. A wildcard in a certificate name matches
    /// nothing.
    fn matches(&self, names: &[String], fingerprint: &[u8]) -> bool {
        let names = names.iter().filter(|n| !n.contains('*'));
        match self {
            PeerPattern::Fingerprint(f) => f[..] == *fingerprint,
            PeerPattern::Name(want) => names.into_iter().any(|n| n == want),
            PeerPattern::Wildcard(suffix) => names.into_iter().any(|n| {
                n.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }),
        }
    }
}

/// The names `permitted_peers` compares with: the DNS SANs, or the
/// subject CN when the certificate has no DNS SAN; lower case.
pub fn peer_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    names
}

/// The SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .to_vec()
}

/// A chained client certificate that matches no `permitted_peers` entry.
#[derive(Debug)]
struct NotPermitted(Vec<String>);

impl fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate not permitted (names: {})", self.0.join(","))
    }
}

impl std::error::Error for NotPermitted {}

/// webpki's chain check, then `permitted_peers`.
#[derive(Debug)]
struct PermittedVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    permitted: Vec<PeerPattern>,
}

impl ClientCertVerifier for PermittedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, ::rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.permitted.is_empty() {
            return Ok(verified);
        }
        let names = peer_names(end_entity);
        let print = fingerprint(end_entity);
        if self.permitted.iter().any(|p| p.matches(&names, &print)) {
            Ok(verified)
        } else {
            Err(::rustls::Error::InvalidCertificate(
                CertificateError::Other(OtherError(Arc::new(NotPermitted(names)))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, ::rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, ::rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a handshake did not produce a stream.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// Refused, timed out or abandoned: counted `closed_tls`.
    Refused(String),
    /// The daemon is shutting down.
    Shutdown,
}

/// What a handshake uses; replaced whole on SIGHUP.
struct Current {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    record_layer: RecordLayer,
    files: String,
}

/// The listener's TLS: the current config (reloadable) and the warning
/// throttle for refusals.
pub struct ServerTls {
    current: RwLock<Arc<Current>>,
    /// One warning per second for refused handshakes.
    refused: Throttle,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.current.read().files)
            .finish()
    }
}

fn describe(tls: &ServerTlsConfig) -> String {
    let path = |p: &PathBuf| p.display().to_string();
    format!(
        "cert={} key={} client_ca={} permitted_peers={}",
        path(&tls.cert),
        path(&tls.key),
        path(&tls.client_ca),
        tls.permitted_peers.len()
    )
}

impl ServerTls {
    pub fn new(tls: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(Arc::new(Current {
                config: server_config(tls)?,
                handshake_timeout: tls.handshake_timeout,
                record_layer: tls.record_layer,
                files: describe(tls),
            })),
            refused: Throttle::default(),
        })
    }

    /// SIGHUP: loads the files again for new connections; on failure the
    /// old config stays and one error line says why (naming the file).
    pub fn reload(&self, tls: &ServerTlsConfig) -> Result<(), TlsError> {
        let config = server_config(tls)?;
        let files = describe(tls);
        // Swapped before the line is logged: a connection opened after the
        // line gets the new files.
        *self.current.write() = Arc::new(Current {
            config,
            handshake_timeout: tls.handshake_timeout,
            record_layer: tls.record_layer,
            files: files.clone(),
        });
        info!("TLS reloaded for new connections {files}");
        Ok(())
    }

    /// Runs the server handshake on `tcp` within `handshake_timeout` of
    /// now (the whole handshake, reads and writes alike; the shutdown
    /// wake-up ends it too); on refusal counts `closed_tls` and warns
    /// (throttled).
    pub fn accept<'a>(
        &self,
        tcp: &'a TcpStream,
        peer: SocketAddr,
        stats: &Stats,
        wake: &Wake,
    ) -> Result<Stream<'a>, HandshakeEnd> {
        let current = self.current.read().clone();
        let deadline = Instant::now() + current.handshake_timeout;
        match handshake(
            current.config.clone(),
            tcp,
            deadline,
            wake,
            current.record_layer,
        ) {
            // conn.rs takes over the socket (non-blocking, polled); the
            // only write left is a close_notify at shutdown.
            Ok(taken) => Ok(taken.stream(tcp)),
            Err(HandshakeEnd::Refused(reason)) => Err(self.refused(peer, stats, reason)),
            Err(end) => Err(end),
        }
    }

    /// Counts and warns a refused handshake. Out of line: its formatting
    /// would otherwise widen `accept`'s frame, which sits under the whole
    /// handshake (see `Stream::Tls` on resident stack pages).
    #[cold]
    #[inline(never)]
    fn refused(&self, peer: SocketAddr, stats: &Stats, reason: String) -> HandshakeEnd {
        Stats::add(&stats.closed_tls, 1);
        if let Some(n) = self.refused.allow() {
            warn!(
                "TLS handshake refused, connection closed peer={peer} reason=\"{reason}\"{}",
                suppressed(n)
            );
        }
        HandshakeEnd::Refused(reason)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Who reads a session after its handshake.
pub enum Taken {
    /// floodwall's record layer (src/tls/record.rs).
    Floodwall(Box<Session>),
    /// rustls's reader (src/tls/rustls.rs): `record_layer = "rustls"`, or
    /// a suite floodwall's layer cannot open.
    Rustls(Box<RustlsSession>),
}

impl Taken {
    pub fn stream(self, sock: &TcpStream) -> Stream<'_> {
        match self {
            Taken::Floodwall(session) => Stream::Tls { session, sock },
            Taken::Rustls(session) => Stream::RustlsTls { session, sock },
        }
    }
}

/// The take-over check: floodwall's record layer opens exactly these
/// suites (AES-GCM and ChaCha20-Poly1305, TLS 1.3 and 1.2); a session on
/// any other (a provider may offer more one day) stays with rustls.
pub fn record_layer_opens(suite: ::rustls::CipherSuite) -> bool {
    use ::rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// The handshake loop, on rustls's unbuffered connection over our own
/// input buffer, which then becomes the session's (src/tls/record.rs, or
/// src/tls/rustls.rs: see [`Taken`]).
/// Every wait for input is a poll bounded by what is left before
/// `deadline` (and woken at shutdown), every write has that as its
/// timeout, so a client trickling one byte at a time cannot stretch it.
pub(crate) fn handshake(
    config: Arc<ServerConfig>,
    tcp: &TcpStream,
    deadline: Instant,
    wake: &Wake,
    layer: RecordLayer,
) -> Result<Taken, HandshakeEnd> {
    let refused = |why: String| HandshakeEnd::Refused(why);
    let mut conn = new_session(config).map_err(|e| refused(format!("cannot start TLS: {e}")))?;
    let mut sock = tcp;
    let mut input = vec![0u8; STAGING_MIN];
    let mut end = 0;
    let mut out = Vec::new();
    // Records that came with the client's Finished, opened by rustls.
    let mut early = Vec::new();
    let mut peer_closed = false;
    // The first byte read: a plaintext client is named as such.
    let mut first: Option<u8> = None;
    // Blocking, so that a write waits (bounded by its timeout); reads only
    // follow a poll that saw input.
    let _ = tcp.set_nonblocking(false);
    // The handshake flight may take several writes: Nagle would hold the
    // later ones for the client's (delayed) ACK.
    let _ = tcp.set_nodelay(true);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(refused("handshake timeout".into()));
        }
        let status = conn.process_tls_records(&mut input[..end]);
        let mut discard = status.discard;
        // rustls waits for the client (a TLS 1.3 server reaches
        // WriteTraffic before the client's Finished).
        let mut waiting = false;
        let mut failed = None;
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                let used = out.len();
                let mut room = 4096;
                loop {
                    out.resize(used + room, 0);
                    match data.encode(&mut out[used..]) {
                        Ok(k) => {
                            out.truncate(used + k);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => room = required_size,
                        Err(e) => return Err(refused(format!("cannot encode: {e}"))),
                    }
                }
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                let _ = tcp.set_write_timeout(Some(left));
                if let Err(e) = sock.write_all(&out) {
                    return Err(refused(if is_timeout(&e) {
                        "handshake timeout".into()
                    } else {
                        format!("write failed during handshake: {e}")
                    }));
                }
                out.clear();
                data.done();
            }
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(|e| refused(format!("bad record: {e}")))?;
                    discard += record.discard;
                    early.extend_from_slice(record.payload);
                }
            }
            Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                waiting = true;
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => peer_closed = true,
            Ok(_) => return Err(refused("unexpected state during the handshake".into())),
            Err(e) => failed = Some(e),
        }
        input.copy_within(discard..end, 0);
        end -= discard;
        if let Some(e) = failed {
            // Let the client see the alert, briefly.
            send_alert(&mut conn, &mut input[..end], tcp, left);
            return Err(refused(reason(&e, first)));
        }
        let handshaking = conn.is_handshaking();
        if peer_closed && handshaking {
            return Err(refused("closed during the handshake".into()));
        }
        if !handshaking && out.is_empty() {
            break;
        }
        if !waiting {
            continue;
        }
        match wake.wait(tcp, Some(left), true) {
            Ok(Ready::Socket) => {}
            Ok(Ready::Woken) => return Err(HandshakeEnd::Shutdown),
            Ok(Ready::TimedOut) => continue,
            Err(e) => return Err(refused(format!("poll failed: {e}"))),
        }
        if end == input.len() {
            // One handshake message may span records (a long client chain).
            if input.len() >= HANDSHAKE_INPUT_MAX {
                return Err(refused("handshake message too large".into()));
            }
            input.resize((input.len() * 2).min(HANDSHAKE_INPUT_MAX), 0);
        }
        // Input is there: a read cannot block past it; the timeout is a
        // second bound.
        let _ = tcp.set_read_timeout(Some(left));
        match sock.read(&mut input[end..]) {
            Ok(0) if first.is_none() => {
                return Err(refused("closed before the handshake".into()));
            }
            Ok(0) => return Err(refused("closed during the handshake".into())),
            Ok(k) => {
                first = first.or(Some(input[end]));
                end += k;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(refused(format!("read failed during handshake: {e}"))),
        }
    }
    let _ = tcp.set_read_timeout(None);
    let _ = tcp.set_write_timeout(Some(ALERT_WRITE_TIMEOUT));
    if end == 0 {
        // Most clients wait for nothing after their Finished, but not all
        // of them send at once: an idle session holds no buffer.
        input = Vec::new();
    }
    hand_over(conn, input, end, early, peer_closed, layer).map_err(refused)
}

/// The take-over, right after the handshake: floodwall's layer gets the
/// session if it is asked to and can open its suite, else rustls keeps
/// reading it. `input[..end]` is what the handshake left unread, `early`
/// the plaintext rustls opened with the client's Finished.
#[inline(never)]
pub(crate) fn hand_over(
    conn: Box<UnbufferedServerConnection>,
    input: Vec<u8>,
    end: usize,
    early: Vec<u8>,
    peer_closed: bool,
    layer: RecordLayer,
) -> Result<Taken, String> {
    let ours = layer == RecordLayer::Floodwall
        && conn
            .negotiated_cipher_suite()
            .is_some_and(|s| record_layer_opens(s.suite()));
    if !ours {
        return Ok(Taken::Rustls(Box::new(RustlsSession::new(
            conn,
            input,
            end,
            early,
            peer_closed,
        ))));
    }
    let parts = extract(conn).map_err(|e| format!("cannot take over the session: {e}"))?;
    Ok(Taken::Floodwall(take_over(
        parts,
        input,
        end,
        early,
        peer_closed,
    )))
}

/// rustls's keys and key schedule, out of the finished handshake. Out of
/// line and boxed, like `new_session`: the by-value result (over 1 KiB,
/// moved twice) inlined into the handshake's frame widened it by 3.4 KiB
/// under the whole handshake (see `Stream::Tls`).
#[inline(never)]
fn extract(
    conn: Box<UnbufferedServerConnection>,
) -> Result<Box<(ExtractedSecrets, KernelConnection<ServerConnectionData>)>, ::rustls::Error> {
    conn.dangerous_into_kernel_connection().map(Box::new)
}

/// The session after the handshake, with the input rustls left.
#[inline(never)]
fn take_over(
    parts: Box<(ExtractedSecrets, KernelConnection<ServerConnectionData>)>,
    input: Vec<u8>,
    end: usize,
    early: Vec<u8>,
    peer_closed: bool,
) -> Box<Session> {
    let (secrets, kernel) = *parts;
    Box::new(Session::new(
        secrets,
        kernel,
        input,
        end,
        early,
        peer_closed,
    ))
}

/// Writes the fatal alert rustls queued for a failed handshake, if any.
/// `input` is what the failed call left (rustls's deframer counts on it).
#[cold]
#[inline(never)]
fn send_alert(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    mut tcp: &TcpStream,
    left: Duration,
) {
    let mut out = [0u8; 64];
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process_tls_records(input).state
        && let Ok(k) = data.encode(&mut out)
    {
        let _ = tcp.set_write_timeout(Some(ALERT_WRITE_TIMEOUT.min(left)));
        let _ = tcp.write_all(&out[..k]);
    }
}

/// A boxed connection, built in its own frame: it is over 1 KiB, and the
/// by-value temporary would otherwise widen the frame that sits under the
/// whole handshake (see `Stream::Tls`).
#[inline(never)]
fn new_session(
    config: Arc<ServerConfig>,
) -> Result<Box<UnbufferedServerConnection>, ::rustls::Error> {
    Ok(Box::new(UnbufferedServerConnection::new(config)?))
}

/// The warning's reason for a failed handshake.
#[cold]
#[inline(never)]
fn reason(e: &::rustls::Error, first: Option<u8>) -> String {
    use ::rustls::Error as E;
    match e {
        E::NoCertificatesPresented => "no client certificate".into(),
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "client certificate expired".into(),
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "client certificate from an unknown CA".into()
        }
        E::InvalidCertificate(CertificateError::Other(o)) => o.to_string(),
        E::InvalidCertificate(c) => format!("bad client certificate: {c:?}"),
        _ if first != Some(RECORD_HANDSHAKE) => "not TLS (plaintext or garbage)".into(),
        other => format!("bad handshake: {other}"),
    }
}

/// The tcp sink's view: a verified client connection over `tcp`.
pub fn connect(
    config: &Arc<ClientConfig>,
    server_name: &ServerName<'static>,
    mut tcp: TcpStream,
    timeout: Duration,
) -> io::Result<StreamOwned<::rustls::ClientConnection, TcpStream>> {
    let mut conn = ::rustls::ClientConnection::new(config.clone(), server_name.clone())
        .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
    let deadline = Instant::now() + timeout;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake failed: {e}"),
                ));
            }
        }
    }
    tcp.set_read_timeout(None)?;
    Ok(StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn matches(pattern: &str, cert_names: &[&str]) -> bool {
        PeerPattern::parse(pattern)
            .unwrap()
            .matches(&names(cert_names), &[0u8; 32])
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        assert!(matches("*.example.net", &["a.example.net"]));
        assert!(!matches("*.example.net", &["example.net"]));
        assert!(!matches("*.example.net", &["a.b.example.net"]));
        assert!(matches("*.Example.NET", &["a.example.net"]));
    }

    #[test]
    fn names_compare_case_insensitively_and_certificate_wildcards_match_nothing() {
        assert!(matches("Host.Example.net", &["host.example.net"]));
        assert!(!matches("host.example.net", &["*.example.net"]));
        assert!(!matches("*.example.net", &["*.example.net"]));
    }

    #[test]
    fn fingerprints_accept_colons_and_either_case() {
        let print: Vec<u8> = (0u8..32).collect();
        let hex: Vec<String> = print.iter().map(|b| format!("{b:02X}")).collect();
        for text in [
            format!("sha256:{}", hex.join(":")),
            format!("SHA256:{}", hex.join("").to_lowercase()),
        ] {
            let p = PeerPattern::parse(&text).unwrap();
            assert!(p.matches(&[], &print), "{text}");
            let mut other = print.clone();
            other[0] ^= 1;
            assert!(!p.matches(&[], &other), "{text}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "sha256:abcd", "a.*.example.net", "*.", "**.x"] {
            assert!(PeerPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
