//! The server handshake, and what takes the session over after it.
//!
//! The handshake runs on rustls's unbuffered connection over floodwall's
//! own input buffer, in the worker thread, within one deadline for every
//! read and write (a client trickling a byte at a time cannot stretch
//! it) and woken by the shutdown. Once it is done, the session goes to
//! floodwall's record layer (src/tls/record.rs) when it can open the
//! suite, else it stays with rustls's reader (src/tls/rustls.rs): see
//! [`Taken`]. Several functions here are out of line and boxed on
//! purpose: their by-value results would otherwise widen the frame that
//! sits under the whole handshake (see `Stream::Tls` on resident stack
//! pages).
//!
//! Also here: the tcp sink's client handshake ([`connect`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
use rustls::{CertificateError, ClientConfig, ExtractedSecrets, ServerConfig, StreamOwned};
use rustls_pki_types::ServerName;

use super::Stream;
use super::record::{STAGING_MIN, Session};
use super::rustls::RustlsSession;
use crate::config::RecordLayer;
use crate::wake::{Ready, Wake};

/// The longest wait for a close_notify or an alert to leave: a client that
/// does not read must not hold the worker.
const ALERT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// TLS record type "handshake": the first byte of any ClientHello.
const RECORD_HANDSHAKE: u8 = 0x16;
/// The most handshake input held at once (a client certificate chain may
/// span several records).
const HANDSHAKE_INPUT_MAX: usize = 128 << 10;

/// Why a handshake did not produce a stream.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// Refused, timed out or abandoned: counted `closed_tls`.
    Refused(String),
    /// The daemon is shutting down.
    Shutdown,
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
pub fn record_layer_opens(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
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
) -> Result<Box<(ExtractedSecrets, KernelConnection<ServerConnectionData>)>, rustls::Error> {
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
) -> Result<Box<UnbufferedServerConnection>, rustls::Error> {
    Ok(Box::new(UnbufferedServerConnection::new(config)?))
}

/// The warning's reason for a failed handshake.
#[cold]
#[inline(never)]
fn reason(e: &rustls::Error, first: Option<u8>) -> String {
    use rustls::Error as E;
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
) -> io::Result<StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut conn = rustls::ClientConnection::new(config.clone(), server_name.clone())
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
