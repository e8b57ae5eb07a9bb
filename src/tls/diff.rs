//! Differential proof of the record layer (issue 19): the same byte
//! stream, after the same handshake, goes to floodwall's record layer
//! (src/tls/record.rs) and to a rustls `ServerConnection` holding the same
//! keys, and both must give the same plaintext and the same class of
//! ending (clean close, truncated, protocol error).
//!
//! Two servers with the same keys need the same handshake: both servers
//! here draw their randomness from a constant source, sign with Ed25519
//! (deterministic signatures) and use one fixed X25519 key for every key
//! exchange. Given the same client flight they then answer byte for byte
//! the same (checked at every step), so the client's Finished is valid for
//! both and they derive the same traffic keys. Real clients take part
//! unchanged over a socket: openssl s_client, and rsyslog (omfwd, ossl)
//! and syslog-ng (network(), tls()) run by scripts/peers.sh. Such a
//! session is captured (the client's handshake input as read, then every
//! byte it sent after) and replayed: fresh servers fed the same handshake
//! input answer the same and hold the same keys, so the captured stream
//! can be read again, paused or cut at any offset. The server allows one
//! suite and one version, which forces a client that offers several.
//! None of this is how a server should run: it only makes a handshake
//! reproducible.
//!
//! The client is rustls's unbuffered client. After the handshake it either
//! stays a real rustls client (its own records, KeyUpdates and
//! close_notify) or becomes a forger: its traffic secrets and key schedule
//! (`rustls::kernel`) seal whatever records a script asks for, of any
//! inner type, padding and length, KeyUpdates whole or split across
//! records. The stream is then cut at chosen offsets: each consumer reads
//! it piece by piece, a `WouldBlock` between pieces, as from a socket.
//!
//! Where floodwall is deliberately stricter than rustls, the script says
//! so ([`Op::stricter`]) and the harness requires that floodwall refuses
//! and that what it handed out before is a prefix of rustls's plaintext;
//! docs/tls.md lists those cases and why.

use std::io::{self, Read};
use std::sync::Arc;

use proptest::prelude::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup, ring as provider,
};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
use rustls::{
    ClientConfig, ConnectionTrafficSecrets, NamedGroup, RootCertStore, ServerConfig,
    ServerConnection, SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::config::RecordLayer;
use crate::tls::Taken;
use crate::tls::handshake::hand_over;
use crate::tls::record::{Ending, Session};

/// Randomness that is not: every byte the same.
#[derive(Debug)]
struct Constant;

impl SecureRandom for Constant {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        buf.fill(0x5a);
        Ok(())
    }
}

/// X25519 with one fixed private key: every exchange the same on the
/// server's side.
#[derive(Debug)]
struct FixedX25519;

struct FixedShare(x25519_dalek::StaticSecret, [u8; 32]);

impl SupportedKxGroup for FixedX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let secret = x25519_dalek::StaticSecret::from([0x42; 32]);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(FixedShare(secret, public)))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for FixedShare {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| rustls::Error::General("bad X25519 share".into()))?;
        let shared = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.1
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

static FIXED_X25519: FixedX25519 = FixedX25519;

fn reproducible() -> CryptoProvider {
    CryptoProvider {
        kx_groups: vec![&FIXED_X25519],
        secure_random: &Constant,
        ..provider::default_provider()
    }
}

/// One suite's configs: two identical servers' and a client's.
struct Setup {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    tls12: bool,
    /// The server's certificate, for a real client to trust.
    cert_pem: String,
}

fn setup(suite: SupportedCipherSuite) -> Setup {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    // Named as real clients check it: localhost, or the address.
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let version: &'static SupportedProtocolVersion = match suite {
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
    };
    // The server takes `suite` alone, so a real client that offers more
    // (rsyslog and syslog-ng cannot be told which) uses exactly it.
    let only = || CryptoProvider {
        cipher_suites: vec![suite],
        ..reproducible()
    };
    let mut server = ServerConfig::builder_with_provider(Arc::new(only()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.send_tls13_tickets = 0;
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = ClientConfig::builder_with_provider(Arc::new(only()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    Setup {
        server: Arc::new(server),
        client: Arc::new(client),
        tls12: matches!(suite, SupportedCipherSuite::Tls12(_)),
        cert_pem: cert.pem(),
    }
}

/// One step of an unbuffered connection: encodes what it wants to send
/// into `out`, takes plaintext into `plain`; false when it waits for
/// input (or can write application data).
macro_rules! step {
    ($conn:expr, $input:expr, $out:expr, $plain:expr) => {{
        let status = $conn.process_tls_records(&mut $input[..]);
        let discard = status.discard;
        let more = match status.state.expect("handshake step") {
            ConnectionState::EncodeTlsData(mut data) => {
                let used = $out.len();
                let mut room = 4096;
                loop {
                    $out.resize(used + room, 0);
                    match data.encode(&mut $out[used..]) {
                        Ok(k) => {
                            $out.truncate(used + k);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => room = required_size,
                        Err(e) => panic!("encode: {e}"),
                    }
                }
                true
            }
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                true
            }
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    $plain.extend_from_slice(record.expect("record").payload);
                }
                true
            }
            _ => false,
        };
        $input.drain(..discard);
        more
    }};
}

/// Both servers after one handshake.
struct Servers {
    ours: Box<UnbufferedServerConnection>,
    /// Plaintext our side's handshake opened (none: the client sends
    /// after its handshake here); it leaves no input unread.
    ours_early: Vec<u8>,
    ours_in: Vec<u8>,
    theirs: ServerConnection,
    /// Plaintext rustls's server opened during the handshake (what a real
    /// client sent with its Finished): the start of its output.
    theirs_early: Vec<u8>,
}

fn handshake(setup: &Setup) -> (Servers, UnbufferedClientConnection) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = UnbufferedClientConnection::new(setup.client.clone(), name).unwrap();
    let mut ours = Box::new(UnbufferedServerConnection::new(setup.server.clone()).unwrap());
    let mut theirs = ServerConnection::new(setup.server.clone()).unwrap();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut ours_in, mut client_in) = (Vec::new(), Vec::new());
    let mut ours_early = Vec::new();
    let mut unused = Vec::new();
    for _ in 0..100 {
        while step!(client, client_in, to_server, unused) {}
        ours_in.extend_from_slice(&to_server);
        // An empty read would be the end of input to rustls.
        let mut rest = &to_server[..];
        while !rest.is_empty() {
            theirs.read_tls(&mut rest).unwrap();
            theirs.process_new_packets().expect("rustls server");
        }
        to_server.clear();
        while step!(ours, ours_in, to_client, ours_early) {}
        let mut theirs_out = Vec::new();
        while theirs.wants_write() {
            theirs.write_tls(&mut theirs_out).unwrap();
        }
        assert!(
            theirs_out == to_client,
            "the two servers answered differently"
        );
        client_in.append(&mut to_client);
        if !client.is_handshaking() && !ours.is_handshaking() && !theirs.is_handshaking() {
            assert!(ours_in.is_empty() && client_in.is_empty());
            let servers = Servers {
                ours,
                ours_early,
                ours_in,
                theirs,
                theirs_early: Vec::new(),
            };
            return (servers, client);
        }
    }
    panic!("no handshake in 100 rounds");
}

/// A sealing key: a direction's AEAD key, IV and record counter.
struct Sealer {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    tls12: bool,
    explicit: bool,
}

impl Sealer {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets), tls12: bool) -> Sealer {
        use ring::aead::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
        let (alg, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&CHACHA20_POLY1305, key, iv, false)
            }
            _ => unreachable!("ring's suites"),
        };
        Sealer {
            key: LessSafeKey::new(UnboundKey::new(alg, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
            tls12,
            explicit: tls12 && gcm,
        }
    }

    /// One record: `typ` holding `content` (TLS 1.3: inside, `pad` zeros
    /// after the type; `typ` 0 leaves the type out, all zeros).
    fn seal(&mut self, typ: u8, content: &[u8], pad: usize) -> Vec<u8> {
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        let explicit = if self.explicit {
            nonce[4..].to_vec()
        } else {
            Vec::new()
        };
        let mut payload = content.to_vec();
        if !self.tls12 {
            if typ != 0 {
                payload.push(typ);
            }
            payload.resize(payload.len() + pad, 0);
        }
        let outer = if self.tls12 { typ } else { 23 };
        let len = (explicit.len() + payload.len() + 16) as u16;
        let mut header = [outer, 3, 3, 0, 0];
        header[3..].copy_from_slice(&len.to_be_bytes());
        let aad = if self.tls12 {
            let mut aad = self.seq.to_be_bytes().to_vec();
            aad.extend_from_slice(&[typ, 3, 3]);
            aad.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            aad
        } else {
            header.to_vec()
        };
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut payload,
            )
            .unwrap();
        self.seq += 1;
        [&header[..], &explicit, &payload, tag.as_ref()].concat()
    }
}

/// What a forging client does, one record (or a few) at a time.
#[derive(Debug, Clone)]
enum Op {
    /// Application data (TLS 1.3: with `pad` zeros of padding).
    Data(Vec<u8>, usize),
    /// An application data record with no data.
    Empty,
    /// An alert (level, description).
    Alert(u8, u8),
    /// A TLS 1.3 KeyUpdate (request byte), its 5 bytes split after `at`
    /// (0 or 5: whole) across two records; then the next key seals.
    KeyUpdate(u8, usize),
    /// A handshake message of another type (a TLS 1.2 ClientHello is a
    /// renegotiation).
    Handshake(u8),
    /// A change_cipher_spec, sealed (TLS 1.2) or in the clear.
    ChangeCipherSpec,
    /// TLS 1.3: a record of an unknown inner type, or with no type at all
    /// (0); TLS 1.2: an unknown record type.
    OddType(u8),
    /// Data of 2^14 + `over` bytes, or (TLS 1.3) 2^14 of data with `over`
    /// bytes of padding: over the limit when `over` > 0 (1.3: > 0 padding
    /// is allowed up to the type byte's room).
    Long(usize),
    /// The next record with one bit flipped at `at` (mod its length).
    Flip(usize),
    /// Raw bytes, as if a client wrote garbage.
    Garbage(Vec<u8>),
}

impl Op {
    /// Where floodwall refuses what rustls lets pass (docs/tls.md,
    /// "Stricter than rustls").
    fn stricter(&self, tls12: bool) -> bool {
        match self {
            // A TLS 1.2 ClientHello after the handshake: rustls answers a
            // no_renegotiation warning and goes on; floodwall ends the
            // session (it writes nothing to a client after the handshake).
            Op::Handshake(1) => tls12,
            // A handshake message floodwall does not take (any in TLS 1.2,
            // any but KeyUpdate in TLS 1.3) is refused at its first byte;
            // rustls waits for the whole message, so when the stream ends
            // first it reports a truncation where floodwall reports the
            // refusal.
            Op::Handshake(_) => true,
            Op::KeyUpdate(..) => tls12,
            // A TLS 1.2 warning alert other than close_notify and
            // user_canceled: rustls logs it and goes on; floodwall ends
            // the session, as TLS 1.3 requires for every such alert.
            Op::Alert(1, description) => tls12 && !matches!(description, 0 | 90),
            _ => false,
        }
    }
}

/// How a client ends its stream.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// close_notify, then the FIN.
    Notify,
    /// The FIN alone, after whole records.
    Fin,
    /// The FIN inside the last record, `n` bytes before its end.
    Cut(usize),
}

/// The class of ending each reader reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Clean,
    Truncated,
    Error,
}

/// A forging client's stream: the records of `ops` and its close.
fn forge(client: UnbufferedClientConnection, tls12: bool, ops: &[Op], close: Close) -> Vec<u8> {
    let (secrets, mut kernel): (_, KernelConnection<_>) =
        client.dangerous_into_kernel_connection().unwrap();
    let mut tx = Sealer::new(secrets.tx, tls12);
    let mut wire = Vec::new();
    let mut flip: Option<usize> = None;
    for op in ops {
        let start = wire.len();
        match op {
            Op::Data(data, pad) => wire.extend(tx.seal(23, data, *pad)),
            Op::Empty => wire.extend(tx.seal(23, b"", 0)),
            Op::Alert(level, description) => wire.extend(tx.seal(21, &[*level, *description], 0)),
            Op::KeyUpdate(request, at) => {
                let message = [24, 0, 0, 1, *request];
                let at = *at % 6;
                if at == 0 || at == 5 {
                    wire.extend(tx.seal(22, &message, 0));
                } else {
                    wire.extend(tx.seal(22, &message[..at], 0));
                    wire.extend(tx.seal(22, &message[at..], 0));
                }
                if !tls12 && *request <= 1 {
                    tx = Sealer::new(kernel.update_tx_secret().unwrap(), tls12);
                }
            }
            Op::Handshake(typ) => wire.extend(tx.seal(22, &[*typ, 0, 0, 2, 3, 3], 0)),
            Op::ChangeCipherSpec if tls12 => wire.extend(tx.seal(20, &[1], 0)),
            Op::ChangeCipherSpec => wire.extend([20, 3, 3, 0, 1, 1]),
            Op::OddType(typ) => wire.extend(tx.seal(*typ, b"odd\n", 0)),
            Op::Long(over) if tls12 => wire.extend(tx.seal(23, &vec![b'l'; (16 << 10) + over], 0)),
            Op::Long(over) => {
                // Data up to the limit, the type byte, `over` of padding.
                let data = vec![b'l'; (16 << 10) - 1];
                wire.extend(tx.seal(23, &data, *over));
            }
            Op::Flip(at) => flip = Some(*at),
            Op::Garbage(bytes) => wire.extend_from_slice(bytes),
        }
        if let Some(at) = flip.filter(|_| !matches!(op, Op::Flip(_)))
            && wire.len() > start
        {
            let len = wire.len() - start;
            wire[start + at % len] ^= 0x10;
            flip = None;
        }
    }
    match close {
        Close::Notify => wire.extend(tx.seal(21, &[1, 0], 0)),
        Close::Fin => {}
        Close::Cut(n) => {
            let last = tx.seal(23, b"cut off\n", 0);
            let keep = last.len() - 1 - n % (last.len() - 1);
            wire.extend_from_slice(&last[..keep]);
        }
    }
    wire
}

/// A socket stand-in: the stream in pieces cut at `cuts`, a `WouldBlock`
/// between pieces, then the end of input.
struct Pieces<'a> {
    data: &'a [u8],
    cuts: Vec<usize>,
    at: usize,
}

impl<'a> Pieces<'a> {
    fn new(data: &'a [u8], cuts: &[usize]) -> Pieces<'a> {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .filter(|_| !data.is_empty())
            .map(|c| c % data.len())
            .filter(|&c| c > 0)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.reverse(); // the next cut last
        Pieces { data, cuts, at: 0 }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cuts.last() == Some(&self.at) {
            self.cuts.pop();
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let end = self.cuts.last().copied().unwrap_or(self.data.len());
        let k = (end - self.at).min(buf.len());
        buf[..k].copy_from_slice(&self.data[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

/// floodwall's layer over the pieces: plaintext and ending. Reads with
/// small and large buffers in turn, and releases its buffer whenever the
/// socket is empty, as a quiet connection does.
fn read_ours(session: &mut Session, wire: &[u8], cuts: &[usize]) -> (Vec<u8>, End) {
    let mut pieces = Pieces::new(wire, cuts);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 40 << 10];
    for turn in 0usize.. {
        assert!(turn < 1_000_000, "no end");
        let size = if turn % 3 == 0 { 7 } else { buf.len() };
        match session.read(&mut pieces, &mut buf[..size]) {
            Ok(0) => {
                let end = match session.ending() {
                    Ending::CloseNotify => End::Clean,
                    _ => End::Truncated,
                };
                return (got, end);
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => session.release(),
            Err(_) => return (got, End::Error),
        }
    }
    unreachable!()
}

/// rustls's reader over the same pieces.
fn read_theirs(conn: &mut ServerConnection, wire: &[u8], cuts: &[usize]) -> (Vec<u8>, End) {
    let mut pieces = Pieces::new(wire, cuts);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 40 << 10];
    let mut eof = false;
    for turn in 0usize.. {
        assert!(turn < 1_000_000, "no end");
        if !eof {
            match conn.read_tls(&mut pieces) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return (got, End::Error),
            }
        }
        let failed = conn.process_new_packets().is_err();
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return (got, End::Clean),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return (got, End::Truncated);
                }
                Err(_) => return (got, End::Error),
            }
        }
        if failed {
            return (got, End::Error);
        }
        if eof {
            // read_tls saw the end and nothing more came of it.
            return (got, End::Truncated);
        }
    }
    unreachable!()
}

/// Runs one stream through both readers and compares: the plaintext and
/// the ending (the same for both).
fn compare(
    servers: Servers,
    wire: &[u8],
    cuts: &[usize],
    stricter: bool,
) -> Result<(Vec<u8>, End), String> {
    let Servers {
        ours,
        ours_early,
        ours_in,
        mut theirs,
        theirs_early,
    } = servers;
    let end = ours_in.len();
    let taken = hand_over(
        ours,
        ours_in,
        end,
        ours_early,
        false,
        RecordLayer::Floodwall,
    )?;
    let Taken::Floodwall(mut session) = taken else {
        return Err("not taken over by floodwall's layer".into());
    };
    let (ours, ours_end) = read_ours(&mut session, wire, cuts);
    let (after, theirs_end) = read_theirs(&mut theirs, wire, cuts);
    let theirs = [theirs_early, after].concat();
    if stricter && ours_end == End::Error {
        if !theirs.starts_with(&ours) {
            return Err(format!(
                "stricter case: floodwall handed out {} bytes that rustls did not",
                ours.len()
            ));
        }
        return Ok((ours, End::Error));
    }
    if ours_end != theirs_end || ours != theirs {
        return Err(format!(
            "floodwall {ours_end:?} after {} bytes, rustls {theirs_end:?} after {} bytes{}",
            ours.len(),
            theirs.len(),
            if ours == theirs {
                ""
            } else {
                " (plaintext differs)"
            }
        ));
    }
    Ok((ours, ours_end))
}

fn suites() -> Vec<SupportedCipherSuite> {
    use provider::cipher_suite as s;
    vec![
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::collection::vec(any::<u8>(), 1..300), 0..40usize)
            .prop_map(|(d, p)| Op::Data(d, p)),
        1 => Just(Op::Empty),
        1 => (prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
              prop_oneof![Just(0u8), Just(90u8), Just(10u8), any::<u8>()])
            .prop_map(|(l, d)| Op::Alert(l, d)),
        2 => (prop_oneof![4 => 0..2u8, 1 => any::<u8>()], 0..6usize)
            .prop_map(|(r, at)| Op::KeyUpdate(r, at)),
        1 => prop_oneof![Just(1u8), Just(4u8), Just(0u8), any::<u8>()].prop_map(Op::Handshake),
        1 => Just(Op::ChangeCipherSpec),
        1 => prop_oneof![Just(0u8), Just(25u8), any::<u8>()].prop_map(Op::OddType),
        1 => prop_oneof![Just(0usize), Just(1usize), Just(2usize), 0..300usize].prop_map(Op::Long),
        1 => any::<usize>().prop_map(Op::Flip),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::Garbage),
    ]
}

fn close() -> impl Strategy<Value = Close> {
    prop_oneof![
        Just(Close::Notify),
        Just(Close::Fin),
        any::<usize>().prop_map(Close::Cut)
    ]
}

/// How many cases the proptests run: `FLOODWALL_DIFF_CASES` for the
/// longer run (docs/tls.md), else enough for seconds in the suite.
fn cases(default: u32) -> u32 {
    std::env::var("FLOODWALL_DIFF_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(10_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A forging client's records, any suite, cut anywhere.
    #[test]
    fn forged_streams_read_the_same_as_rustls(
        suite in 0..6usize,
        ops in proptest::collection::vec(op(), 0..12),
        close in close(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let setup = setup(suites()[suite]);
        let (servers, client) = handshake(&setup);
        let stricter = ops.iter().any(|o| o.stricter(setup.tls12));
        let wire = forge(client, setup.tls12, &ops, close);
        compare(servers, &wire, &cuts, stricter).map_err(TestCaseError::fail)?;
    }
}

/// What a real rustls client does after its handshake.
#[derive(Debug, Clone)]
enum Real {
    /// One write (rustls cuts it into records of at most 16 KiB).
    Write(Vec<u8>),
    /// TLS 1.3: `refresh_traffic_keys`, a KeyUpdate with update_requested.
    KeyUpdate,
}

/// A real rustls client's stream: its own records for `ops`, then its
/// close (Notify: its close_notify).
fn real(mut client: UnbufferedClientConnection, ops: &[Real], close: Close) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut unused = Vec::new();
    let mut nothing: Vec<u8> = Vec::new();
    let write =
        |w: &mut rustls::unbuffered::WriteTraffic<'_, _>, data: &[u8], wire: &mut Vec<u8>| {
            let used = wire.len();
            let mut room = data.len() + 4096;
            loop {
                wire.resize(used + room, 0);
                match w.encrypt(data, &mut wire[used..]) {
                    Ok(k) => {
                        wire.truncate(used + k);
                        return;
                    }
                    Err(rustls::unbuffered::EncryptError::InsufficientSize(e)) => {
                        room = e.required_size;
                    }
                    Err(e) => panic!("encrypt: {e:?}"),
                }
            }
        };
    for op in ops {
        // Anything rustls wants to send first (a KeyUpdate it queued).
        while step!(client, nothing, wire, unused) {}
        let status = client.process_tls_records(&mut nothing[..]);
        let Ok(ConnectionState::WriteTraffic(mut w)) = status.state else {
            panic!("the client cannot write");
        };
        match op {
            Real::Write(data) => write(&mut w, data, &mut wire),
            Real::KeyUpdate => {
                let _ = w.refresh_traffic_keys();
            }
        }
    }
    while step!(client, nothing, wire, unused) {}
    match close {
        Close::Notify => {
            let status = client.process_tls_records(&mut nothing[..]);
            let Ok(ConnectionState::WriteTraffic(mut w)) = status.state else {
                panic!("the client cannot write");
            };
            let mut record = [0u8; 64];
            let k = w.queue_close_notify(&mut record).unwrap();
            wire.extend_from_slice(&record[..k]);
        }
        Close::Fin => {}
        Close::Cut(n) => {
            let status = client.process_tls_records(&mut nothing[..]);
            let Ok(ConnectionState::WriteTraffic(mut w)) = status.state else {
                panic!("the client cannot write");
            };
            let mut last = Vec::new();
            write(&mut w, b"cut off\n", &mut last);
            let keep = last.len() - 1 - n % (last.len() - 1);
            wire.extend_from_slice(&last[..keep]);
        }
    }
    wire
}

fn real_op() -> impl Strategy<Value = Real> {
    prop_oneof![
        8 => prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 1..200),
            1 => (16_000..40_000usize).prop_map(|n| vec![b'r'; n]),
        ].prop_map(Real::Write),
        1 => Just(Real::KeyUpdate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(2_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A real rustls client's records (large writes cut into 16 KiB
    /// records, KeyUpdates), any suite, cut anywhere.
    #[test]
    fn rustls_client_streams_read_the_same_as_rustls(
        suite in 0..6usize,
        ops in proptest::collection::vec(real_op(), 0..8),
        close in close(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let setup = setup(suites()[suite]);
        let (servers, client) = handshake(&setup);
        let ops: Vec<Real> = ops
            .into_iter()
            .filter(|o| !(setup.tls12 && matches!(o, Real::KeyUpdate)))
            .collect();
        let wire = real(client, &ops, close);
        compare(servers, &wire, &cuts, false).map_err(TestCaseError::fail)?;
    }
}

/// One stream with a bit of everything, for the tests below.
fn medley() -> Vec<Op> {
    vec![
        Op::Data(b"<13>first\n".to_vec(), 0),
        Op::Empty,
        Op::Data(b"<13>padded\n".to_vec(), 30),
        Op::Alert(1, 90),
        Op::KeyUpdate(1, 2),
        Op::Data(b"<13>after a split KeyUpdate\n".to_vec(), 0),
        Op::KeyUpdate(0, 0),
        Op::Data(vec![b'z'; 300], 5),
    ]
}

/// Every offset: the medley read with a pause there, and the medley cut
/// there (the EOF inside it), in every suite; the same outcome as rustls
/// each time.
#[test]
fn every_offset_reads_the_same_as_rustls() {
    for suite in suites() {
        let setup = setup(suite);
        let (_, client) = handshake(&setup);
        let wire = forge(client, setup.tls12, &medley(), Close::Notify);
        let stricter = medley().iter().any(|o| o.stricter(setup.tls12));
        for at in 1..wire.len() {
            let (servers, client) = handshake(&setup);
            let again = forge(client, setup.tls12, &medley(), Close::Notify);
            assert!(again == wire, "the forger is not reproducible");
            compare(servers, &wire, &[at], stricter)
                .unwrap_or_else(|e| panic!("{suite:?}, a pause at {at}: {e}"));
            let (servers, _) = handshake(&setup);
            compare(servers, &wire[..at], &[], stricter)
                .unwrap_or_else(|e| panic!("{suite:?}, cut at {at}: {e}"));
        }
    }
}

/// rustls's bounds on records that carry no data, as floodwall's layer
/// meets them: 32 empty records in a row, 32 KeyUpdates between data
/// records, four warning alerts (user_canceled) in a session; one more
/// of each ends both readers alike. floodwall also ends a session at 33
/// such records in a row of mixed kinds, where rustls goes on (each of its
/// counters is reset by the other kinds): stricter, docs/tls.md.
#[test]
fn rustls_bounds_on_records_without_data_are_met() {
    let data = || Op::Data(b"x".to_vec(), 0);
    let empty = || Op::Empty;
    let key_update = || Op::KeyUpdate(0, 0);
    let canceled = || Op::Alert(1, 90);
    let row = |op: fn() -> Op, n: usize| std::iter::repeat_with(op).take(n);
    let mut same: Vec<(&str, Vec<Op>, End)> = vec![
        (
            "32 empty",
            row(empty, 32).chain([data()]).collect(),
            End::Clean,
        ),
        (
            "33 empty",
            row(empty, 33).chain([data()]).collect(),
            End::Error,
        ),
        (
            "32 KeyUpdates",
            row(key_update, 32).chain([data()]).collect(),
            End::Clean,
        ),
        (
            "33 KeyUpdates",
            row(key_update, 33).chain([data()]).collect(),
            End::Error,
        ),
    ];
    let spread = |n: usize| -> Vec<Op> {
        (0..n)
            .flat_map(|_| [data(), canceled()])
            .chain([data()])
            .collect()
    };
    same.push(("4 user_canceled", spread(4), End::Clean));
    same.push(("5 user_canceled", spread(5), End::Error));
    let suite = suites()[0];
    let setup = setup(suite);
    for (what, ops, want) in same {
        let (servers, client) = handshake(&setup);
        let wire = forge(client, false, &ops, Close::Notify);
        let (_, end) =
            compare(servers, &wire, &[], false).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(end, want, "{what}");
    }
    let mixed: [(&str, Vec<Op>); 2] = [
        (
            "20 empty, 20 KeyUpdates",
            row(empty, 20)
                .chain(row(key_update, 20))
                .chain([data()])
                .collect(),
        ),
        (
            "20 empty, 4 user_canceled, 20 empty",
            row(empty, 20)
                .chain(row(canceled, 4))
                .chain(row(empty, 20))
                .chain([data()])
                .collect(),
        ),
    ];
    for (what, ops) in mixed {
        let (servers, client) = handshake(&setup);
        let wire = forge(client, false, &ops, Close::Notify);
        let (got, end) =
            compare(servers, &wire, &[], true).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((got.as_slice(), end), (&b""[..], End::Error), "{what}");
        let (servers, _) = handshake(&setup);
        assert!(
            compare(servers, &wire, &[], false).is_err(),
            "{what}: rustls refuses it too (then it is not stricter)"
        );
    }
}

/// RFC 8446 5.1: a KeyUpdate may span records. Split after each of its
/// bytes, it is followed, and data under the next key arrives.
#[test]
fn a_key_update_split_across_records_is_accepted() {
    let setup = setup(provider::cipher_suite::TLS13_AES_256_GCM_SHA384);
    for at in 1..5 {
        for request in [0, 1] {
            let (servers, client) = handshake(&setup);
            let ops = [
                Op::Data(b"before\n".to_vec(), 0),
                Op::KeyUpdate(request, at),
                Op::Data(b"after\n".to_vec(), 0),
            ];
            let wire = forge(client, false, &ops, Close::Notify);
            let Taken::Floodwall(mut session) = hand_over(
                servers.ours,
                servers.ours_in,
                0,
                servers.ours_early,
                false,
                RecordLayer::Floodwall,
            )
            .unwrap() else {
                panic!("not floodwall's layer");
            };
            let (got, end) = read_ours(&mut session, &wire, &[]);
            assert_eq!(got, b"before\nafter\n", "split after {at}");
            assert_eq!(end, End::Clean, "split after {at}");
        }
    }
}

/// A real client of another TLS stack, openssl s_client, over a socket:
/// the two servers take its handshake (floodwall's answers go back to
/// it), then what it sent after is read by both, paused at two offsets.
/// TLS 1.3 and 1.2, every suite; s_client sends close_notify when its
/// input ends.
#[test]
fn openssl_s_client_streams_read_the_same_as_rustls() {
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let runs: [(usize, &[&str]); 6] = [
        (0, &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]),
        (1, &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]),
        (
            2,
            &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        ),
        (3, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]),
        (4, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]),
        (5, &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]),
    ];
    let mut lines = Vec::new();
    for i in 0..2000 {
        let line = format!("<13>s_client line {i} {}\n", "o".repeat(i % 500));
        lines.extend_from_slice(line.as_bytes());
    }
    for (suite, args) in runs {
        let setup = setup(suites()[suite]);
        let ca = dir.path().join("server.pem");
        std::fs::write(&ca, &setup.cert_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-servername",
                "localhost",
            ])
            .arg("-connect")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-CAfile")
            .arg(&ca)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl (scripts/install-peers.sh installs it)");
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let (servers, _) = handshake_over(&setup, &mut sock);
        let mut stdin = child.stdin.take().unwrap();
        let sent = lines.clone();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut stdin, &sent).unwrap();
        });
        let mut wire = Vec::new();
        sock.read_to_end(&mut wire).unwrap();
        writer.join().unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{args:?}: s_client {status:?}");
        let cuts = [wire.len() / 3, wire.len() / 2 + 1];
        let (plain, _) =
            compare(servers, &wire, &cuts, false).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            plain == lines,
            "{args:?}: {} of {} bytes",
            plain.len(),
            lines.len()
        );
    }
}

/// Both servers taking a real client's handshake, one piece of its input
/// at a time (as it was read from the socket).
struct Taking {
    ours: Box<UnbufferedServerConnection>,
    ours_in: Vec<u8>,
    ours_early: Vec<u8>,
    theirs: ServerConnection,
    theirs_early: Vec<u8>,
}

impl Taking {
    fn new(setup: &Setup) -> Taking {
        Taking {
            ours: Box::new(UnbufferedServerConnection::new(setup.server.clone()).unwrap()),
            ours_in: Vec::new(),
            ours_early: Vec::new(),
            theirs: ServerConnection::new(setup.server.clone()).unwrap(),
            theirs_early: Vec::new(),
        }
    }

    /// One piece of the client's input; the servers' answer (the same from
    /// both, checked).
    fn feed(&mut self, piece: &[u8]) -> Vec<u8> {
        self.ours_in.extend_from_slice(piece);
        let mut rest = piece;
        while !rest.is_empty() {
            self.theirs.read_tls(&mut rest).unwrap();
            self.theirs.process_new_packets().expect("rustls server");
            // Data that came with the Finished, taken as it is opened
            // (rustls holds at most 16 KiB of it).
            let mut plain = [0u8; 4096];
            while let Ok(k @ 1..) = self.theirs.reader().read(&mut plain) {
                self.theirs_early.extend_from_slice(&plain[..k]);
            }
        }
        let mut to_client = Vec::new();
        while step!(self.ours, self.ours_in, to_client, self.ours_early) {}
        let mut theirs_out = Vec::new();
        while self.theirs.wants_write() {
            self.theirs.write_tls(&mut theirs_out).unwrap();
        }
        assert!(
            theirs_out == to_client,
            "the two servers answered differently"
        );
        to_client
    }

    fn done(&self) -> bool {
        !self.ours.is_handshaking() && !self.theirs.is_handshaking()
    }

    fn servers(self) -> Servers {
        Servers {
            ours: self.ours,
            ours_early: self.ours_early,
            ours_in: self.ours_in,
            theirs: self.theirs,
            theirs_early: self.theirs_early,
        }
    }
}

/// [`handshake`] with a real client at the other end of `sock`: the
/// servers, and the client's handshake input as it was read, for
/// [`replay`].
fn handshake_over(setup: &Setup, sock: &mut std::net::TcpStream) -> (Servers, Vec<Vec<u8>>) {
    use std::io::Write;
    let mut taking = Taking::new(setup);
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..100 {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "the client left during the handshake");
        pieces.push(buf[..n].to_vec());
        let answer = taking.feed(&buf[..n]);
        sock.write_all(&answer).unwrap();
        if taking.done() {
            return (taking.servers(), pieces);
        }
    }
    panic!("no handshake in 100 rounds");
}

/// A real client's handshake again, from its input as captured: the
/// servers answer as they did (they are reproducible), so they hold the
/// session's keys, and what the client sent after can be read anew, as
/// often as wanted, cut anywhere.
fn replay(setup: &Setup, pieces: &[Vec<u8>]) -> Servers {
    let mut taking = Taking::new(setup);
    for piece in pieces {
        let _ = taking.feed(piece);
    }
    assert!(taking.done(), "the replayed handshake did not finish");
    taking.servers()
}

/// The syslog senders taken as real clients (scripts/peers.sh runs them):
/// each forwards what it is fed over TLS to a server of the harness.
#[derive(Debug, Clone, Copy)]
enum Sender {
    /// rsyslog's omfwd with the ossl network stream driver.
    Rsyslog,
    /// syslog-ng's network() destination with tls().
    SyslogNg,
}

/// Stops a peer (scripts/peers.sh stop) however the test ends.
struct PeerGuard(std::path::PathBuf);

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(peers_sh())
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

impl PeerGuard {
    /// What the peer said (stderr and its internal log), for a failure.
    fn logs(&self) -> String {
        ["stderr.log", "internal.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.0.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn peers_sh() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.sh")
}

/// `sender` forwards `lines` (each with its LF) over TLS to a server of
/// `setup`, which takes its handshake and records everything it sends
/// after, until it is stopped (once a third reader saw every line) and
/// closes. Returns the handshake input for [`replay`] and the rest.
fn capture(sender: Sender, setup: &Setup, lines: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::net::TcpListener;
    use std::process::Command;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // The CA the sender trusts: the server's certificate. The sender's own
    // certificate is never asked for, but both want one to load: P-256
    // (OpenSSL 3.0 does not read ring's Ed25519 PKCS#8 v2 keys).
    let ca = dir.path().join("server.pem");
    std::fs::write(&ca, &setup.cert_pem).unwrap();
    let own = rcgen::KeyPair::generate().unwrap();
    let own_cert = rcgen::CertificateParams::new(vec!["sender.example".to_string()])
        .unwrap()
        .self_signed(&own)
        .unwrap();
    let cert = dir.path().join("sender.pem");
    let key = dir.path().join("sender.key");
    std::fs::write(&cert, own_cert.pem()).unwrap();
    std::fs::write(&key, own.serialize_pem()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port().to_string();
    // One start at a time: a port free-port gave is listened on before
    // the next one is picked.
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("bash")
        .arg(peers_sh())
        .arg("free-port")
        .output()
        .unwrap();
    let port = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "peers.sh free-port failed");
    let (start, kind) = match sender {
        Sender::Rsyslog => ("start-rsyslog-tls-forward", "rsyslog-tls-forward"),
        Sender::SyslogNg => ("start-syslogng-tls-forward", "syslogng-tls-forward"),
    };
    let started = Command::new("bash")
        .arg(peers_sh())
        .args([start, &port, &target])
        .arg(dir.path())
        .args([&ca, &cert, &key])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{sender:?} did not start (scripts/install-peers.sh installs it): {}",
        String::from_utf8_lossy(&started.stderr)
    );
    drop(starting);
    let guard = PeerGuard(dir.path().join(format!("{kind}-{port}")));
    let mut feed = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    std::io::Write::write_all(&mut feed, lines).unwrap();
    drop(feed);
    let mut fds = [PollFd::new(&listener, PollFlags::IN)];
    let timeout = rustix::event::Timespec {
        tv_sec: 20,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&timeout)).unwrap();
    assert!(
        !fds[0].revents().is_empty(),
        "{sender:?} did not connect within 20 s; its logs:\n{}",
        guard.logs()
    );
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (servers, pieces) = handshake_over(setup, &mut sock);
    // The live rustls server watches the plaintext go by: once every line
    // is there, the sender is stopped and the stream read to its end.
    let mut watch = servers.theirs;
    let mut seen = servers.theirs_early.len();
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut plain = vec![0u8; 64 << 10];
    let mut guard = Some(guard);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < until, "{sender:?}: no end within 60 s");
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A close with unread data in the kernel is a reset: the end.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{sender:?}: {e} after {seen} of {} bytes", lines.len()),
        };
        wire.extend_from_slice(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            watch.read_tls(&mut rest).unwrap();
            watch.process_new_packets().expect("the watching server");
            while let Ok(k) = watch.reader().read(&mut plain) {
                if k == 0 {
                    break;
                }
                seen += k;
            }
        }
        if seen >= lines.len() {
            drop(guard.take());
        }
    }
    drop(guard);
    (pieces, wire)
}

/// Runs `check` for each sender and suite, each in a thread of its own:
/// most of a run is a peer starting and stopping (rsyslog takes 1.5 s to
/// stop).
fn each_sender(suites: &[SupportedCipherSuite], check: fn(Sender, SupportedCipherSuite)) {
    let runs: Vec<_> = [Sender::Rsyslog, Sender::SyslogNg]
        .into_iter()
        .flat_map(|sender| suites.iter().map(move |&suite| (sender, suite)))
        .map(|(sender, suite)| std::thread::spawn(move || check(sender, suite)))
        .collect();
    let failed = runs
        .into_iter()
        .map(|r| r.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(failed, 0, "runs failed (their panics are above)");
}

/// rsyslog (omfwd, ossl driver) and syslog-ng (network(), tls()) as real
/// clients, in every suite the server allows alone (TLS 1.3 and 1.2): 300
/// lines, two of them 20,000 bytes (two records each), captured after the
/// handshake and read by both consumers after a replay of the handshake,
/// whole with pauses and cut at four offsets; byte-exact to what the
/// sender was fed. rsyslog ends with close_notify, syslog-ng without.
#[test]
fn rsyslog_and_syslog_ng_streams_read_the_same_as_rustls() {
    fn check(sender: Sender, suite: SupportedCipherSuite) {
        let mut lines = Vec::new();
        for i in 0..300 {
            let pad = if i % 150 == 149 { 20_000 } else { i % 400 };
            let line = format!("<13>peer line {i} {}\n", "p".repeat(pad));
            lines.extend_from_slice(line.as_bytes());
        }
        let setup = setup(suite);
        let (pieces, wire) = capture(sender, &setup, &lines);
        let what = format!("{sender:?}, {suite:?}");
        let len = wire.len();
        let (plain, end) = compare(
            replay(&setup, &pieces),
            &wire,
            &[len / 3, len / 2 + 1],
            false,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            plain == lines,
            "{what}: {} of {} bytes",
            plain.len(),
            lines.len()
        );
        let expected = match sender {
            Sender::Rsyslog => End::Clean,
            Sender::SyslogNg => End::Truncated,
        };
        assert_eq!(end, expected, "{what}: how the sender closes");
        for at in [len / 4, len / 2, len * 3 / 4, len - 1] {
            compare(replay(&setup, &pieces), &wire[..at], &[], false)
                .unwrap_or_else(|e| panic!("{what}, cut at {at}: {e}"));
        }
    }
    each_sender(&suites(), check);
}

/// Short sessions of rsyslog and syslog-ng (three lines), TLS 1.3 and
/// 1.2 (every suite in the longer run): the captured stream paused at
/// every offset, and cut at every offset.
#[test]
fn short_rsyslog_and_syslog_ng_sessions_read_the_same_at_every_offset() {
    fn check(sender: Sender, suite: SupportedCipherSuite) {
        let lines = b"<13>one\n<13>two two\n<13>three three three\n";
        let setup = setup(suite);
        let (pieces, wire) = capture(sender, &setup, lines);
        let what = format!("{sender:?}, {suite:?}");
        let (plain, _) = compare(replay(&setup, &pieces), &wire, &[], false)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(plain, lines, "{what}");
        for at in 1..wire.len() {
            compare(replay(&setup, &pieces), &wire, &[at], false)
                .unwrap_or_else(|e| panic!("{what}, a pause at {at}: {e}"));
            compare(replay(&setup, &pieces), &wire[..at], &[], false)
                .unwrap_or_else(|e| panic!("{what}, cut at {at}: {e}"));
        }
    }
    // The longer run (docs/tls.md) takes every suite.
    if std::env::var_os("FLOODWALL_DIFF_CASES").is_some() {
        each_sender(&suites(), check);
    } else {
        each_sender(&[suites()[1], suites()[3]], check);
    }
}
