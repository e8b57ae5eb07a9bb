//! The TLS record layer once the handshake is done. floodwall opens the
//! client's records itself, in place in its staging buffer, with ring's
//! AEAD (the primitive rustls's ring provider uses), keyed by the traffic
//! secrets rustls hands over when its handshake completes
//! (`rustls::kernel`, the interface rustls offers for kTLS). rustls keeps
//! the key schedule: it derives the next key when a TLS 1.3 client sends
//! KeyUpdate.
//!
//! Why not rustls's reader: syslog clients send one small record per
//! message, and per record rustls copied it in, decrypted it, allocated a
//! plaintext Vec, copied that out and freed it, and ran its state machine;
//! that cost more than the AES-GCM itself (bench/RESULTS.md, "The record
//! layer"). Its unbuffered API still allocates per record (0.23).
//!
//! What this owns: record framing (RFC 8446 5, RFC 5246 6.2), nonces and
//! additional data (RFC 8446 5.3, RFC 5288, RFC 7905), the TLS 1.3 inner
//! content type and padding, alerts from the client, KeyUpdate, and the
//! records floodwall writes after a handshake: close_notify at shutdown,
//! and a RELP session's answers ([`Session::seal`]).
//! What ends the connection (as rustls ends it, but without an alert: a
//! client that never reads would only be reset by one): a record header
//! of unknown type or version, a record that does not authenticate or is
//! too long, an alert other than close_notify and user_canceled (or of
//! unknown level, or a fifth user_canceled), a change_cipher_spec, any handshake message but a
//! TLS 1.3 KeyUpdate (so no TLS 1.2 renegotiation; a KeyUpdate may span
//! records), and more than 32 records in a row that carry no data.
//! src/tls/diff.rs proves these rules against rustls's reader;
//! docs/tls.md lists the few where floodwall is stricter, and why. How the
//! input ended (close_notify or not, inside a record or not) is
//! [`Session::ending`]: src/conn/ drops a frame a cut stream left unfinished.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

use crate::read_buf::ReadBuf;

/// Record header: type (1), version (2), length (2).
pub const HEADER: usize = 5;
const TAG: usize = 16;
const MAX_PLAINTEXT: usize = 16 << 10;
/// The staging buffer starts at one largest TLS 1.3 record (16 KiB + 256 +
/// 5) and doubles, while socket reads fill it, up to 64 KiB: a connection
/// that sends little and keeps going quiet (its buffers given back each
/// time) does not zero 64 KiB per read.
pub const STAGING_MIN: usize = (16 << 10) + 512;
const STAGING_MAX: usize = 64 << 10;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
/// The highest record type rustls knows (heartbeat): it is refused when
/// opened, like any other type but the four.
const HEARTBEAT: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const WARNING: u8 = 1;
const FATAL: u8 = 2;
/// Records in a row that hand out nothing (empty application data,
/// user_canceled, KeyUpdate) before the connection ends: rustls's own
/// bounds (32 empty records, 32 KeyUpdates). Without one, a client
/// streaming them would keep `Session::read` from returning, since it
/// returns when `out` fills or the socket is empty.
const BARREN_MAX: u8 = 32;
/// Warning alerts (user_canceled: any other ends the session) a session
/// may send in its whole life: rustls's bound (BoringSSL's
/// kMaxWarningAlerts), the fifth ends it.
const WARNINGS_MAX: u8 = 4;

/// How a TLS session's input ended (or not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Still open.
    Open,
    /// The client sent close_notify: nothing was cut.
    CloseNotify,
    /// The TCP stream ended without close_notify, on a record boundary.
    NoCloseNotify,
    /// The TCP stream ended inside a record: its start was discarded
    /// (it cannot be authenticated).
    RecordCut,
}

impl Ending {
    /// From a reader's flags: close_notify seen, socket EOF seen, bytes of
    /// a record left unopened.
    pub fn of(closed: bool, eof: bool, record_left: bool) -> Ending {
        match (closed, eof) {
            (true, _) => Ending::CloseNotify,
            (false, true) if record_left => Ending::RecordCut,
            (false, true) => Ending::NoCloseNotify,
            (false, false) => Ending::Open,
        }
    }
}

fn broken(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {}", why.into()))
}

/// One direction's AEAD key and record counter.
struct Cipher {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// TLS 1.2 AES-GCM: the nonce's last 8 bytes travel in each record
    /// (RFC 5288). Otherwise the nonce is the IV XOR the record counter.
    explicit: bool,
}

impl Cipher {
    fn new(secrets: &ConnectionTrafficSecrets, seq: u64, tls12: bool) -> io::Result<Cipher> {
        let (algorithm, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(broken("negotiated cipher has no record layer here")),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| broken("bad traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| broken("bad traffic IV"))?;
        Ok(Cipher {
            key: LessSafeKey::new(key),
            iv,
            seq,
            explicit: tls12 && gcm,
        })
    }

    fn xor_nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        nonce
    }

    fn count(&mut self) -> io::Result<()> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| broken("record counter exhausted"))?;
        Ok(())
    }

    /// TLS 1.2 additional data: counter, type, version, plaintext length.
    fn aad12(&self, typ: u8, version: [u8; 2], len: usize) -> io::Result<[u8; 13]> {
        let len = u16::try_from(len).map_err(|_| broken("record overflow"))?;
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = typ;
        aad[9..11].copy_from_slice(&version);
        aad[11..].copy_from_slice(&len.to_be_bytes());
        Ok(aad)
    }

    /// Opens one whole record (header included) in place: its content
    /// type and where its plaintext lies in `record`.
    fn open(&mut self, tls12: bool, record: &mut [u8]) -> io::Result<(u8, Range<usize>)> {
        let (header, body) = record.split_at_mut(HEADER);
        let typ = header[0];
        if !tls12 {
            // TLS 1.3: everything is application_data outside; the real
            // type is the last non-zero byte inside, zeros after it padding.
            if typ != APPLICATION_DATA {
                return Err(broken(format!("unexpected record type {typ}")));
            }
            // The limit is on the inner plaintext, padding included (RFC
            // 8446 5.2): 2^14 of content and its type. It bounds the
            // content too.
            if body.len() > MAX_PLAINTEXT + 1 + TAG {
                return Err(broken("record overflow"));
            }
            let nonce = Nonce::assume_unique_for_key(self.xor_nonce());
            // The additional data is the header with its legacy version
            // as every sender writes it (0x0303): a receiver ignores the
            // field (RFC 8446 5.1), as rustls does.
            let aad = [APPLICATION_DATA, 3, 3, header[3], header[4]];
            let plain = self
                .key
                .open_in_place(nonce, Aad::from(aad), body)
                .map_err(|_| broken("record failed to authenticate"))?;
            self.count()?;
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(broken("record without a content type"));
            };
            return Ok((plain[end], HEADER..HEADER + end));
        }
        let (nonce, skip) = if self.explicit {
            if body.len() < 8 {
                return Err(broken("record too short"));
            }
            let mut nonce = [0u8; aead::NONCE_LEN];
            nonce[..4].copy_from_slice(&self.iv[..4]);
            nonce[4..].copy_from_slice(&body[..8]);
            (nonce, 8)
        } else {
            (self.xor_nonce(), 0)
        };
        let len = body
            .len()
            .checked_sub(skip + TAG)
            .ok_or_else(|| broken("record too short"))?;
        if len > MAX_PLAINTEXT {
            return Err(broken("record overflow"));
        }
        let aad = self.aad12(typ, [header[1], header[2]], len)?;
        self.key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body[skip..],
            )
            .map_err(|_| broken("record failed to authenticate"))?;
        self.count()?;
        Ok((typ, HEADER + skip..HEADER + skip + len))
    }

    /// The close_notify alert as one sealed record.
    fn close_notify(&mut self, tls12: bool) -> io::Result<Vec<u8>> {
        let mut record = Vec::new();
        self.seal(tls12, ALERT, &[WARNING, CLOSE_NOTIFY], &mut record)?;
        Ok(record)
    }

    /// Seals `content` of TLS content type `typ` (at most one record's
    /// worth) as one record appended to `out`.
    fn seal(&mut self, tls12: bool, typ: u8, content: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let nonce = self.xor_nonce();
        let mut payload = content.to_vec();
        let (outer, explicit) = if tls12 {
            // rustls's TLS 1.2 GCM sender also uses IV XOR counter and
            // sends the nonce's last 8 bytes.
            let explicit = if self.explicit { &nonce[4..] } else { &[][..] };
            (typ, explicit)
        } else {
            // TLS 1.3: the real type travels inside, last.
            payload.push(typ);
            (APPLICATION_DATA, &[][..])
        };
        let len = u16::try_from(explicit.len() + payload.len() + TAG)
            .map_err(|_| broken("record overflow"))?;
        let mut header = [outer, 3, 3, 0, 0];
        header[3..].copy_from_slice(&len.to_be_bytes());
        let sealing = Nonce::assume_unique_for_key(nonce);
        let tag = if tls12 {
            let aad = self.aad12(typ, [3, 3], payload.len())?;
            self.key
                .seal_in_place_separate_tag(sealing, Aad::from(aad), &mut payload)
        } else {
            self.key
                .seal_in_place_separate_tag(sealing, Aad::from(header), &mut payload)
        }
        .map_err(|_| broken("cannot seal"))?;
        self.count()?;
        out.extend_from_slice(&header);
        out.extend_from_slice(explicit);
        out.extend_from_slice(&payload);
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// The receiving key: the secrets (and record counter) rustls handed
/// over, expanded when a record needs them. An idle session holds only
/// the secrets, not an expanded AES key and its GHASH table.
enum Rx {
    Secrets(u64, ConnectionTrafficSecrets),
    Key(Box<Cipher>),
}

impl Rx {
    fn key(&mut self, tls12: bool) -> io::Result<&mut Cipher> {
        if let Rx::Secrets(seq, secrets) = self {
            *self = Rx::Key(Box::new(Cipher::new(secrets, *seq, tls12)?));
        }
        match self {
            Rx::Key(key) => Ok(key),
            Rx::Secrets(..) => unreachable!("the secrets were expanded just above"),
        }
    }
}

/// A TLS session after its handshake: what was read from the socket and
/// not yet handed out, and the keys to open it.
pub struct Session {
    rx: Rx,
    /// The sending side's secrets, for the close_notify at shutdown
    /// and what a RELP session answers; expanded on the first write.
    tx: Option<(u64, ConnectionTrafficSecrets)>,
    tx_key: Option<Box<Cipher>>,
    /// rustls's key schedule, for a TLS 1.3 KeyUpdate.
    kernel: KernelConnection<ServerConnectionData>,
    tls12: bool,
    /// Records read and not opened yet (then their plaintext, opened in
    /// place): empty until input comes, given back when drained.
    staging: ReadBuf,
    eof: bool,
    /// Opened and not yet handed out: a range of `staging`.
    plain: Range<usize>,
    /// Plaintext rustls opened during the handshake (records that came
    /// with the client's Finished), handed out first.
    early: Vec<u8>,
    early_at: usize,
    /// The client sent close_notify: nothing after it is read.
    closed: bool,
    /// Why a record failed; reported once what came before is handed out.
    failed: Option<String>,
    /// Records in a row that handed out nothing (see `BARREN_MAX`).
    barren: u8,
    /// Warning alerts so far (see `WARNINGS_MAX`).
    warnings: u8,
    /// A KeyUpdate split across records: its bytes so far (a KeyUpdate is
    /// 5 bytes: type, 3 of length, the request).
    fragment: [u8; 5],
    fragment_len: u8,
    /// The client's KeyUpdate asked for ours (update_requested): it goes
    /// before our next application data (RFC 8446 4.6.3), a RELP answer.
    owe_key_update: bool,
}

impl Session {
    /// Takes over after rustls's handshake: its secrets and key schedule,
    /// the input it left unread (`staged[..end]`, whole records or the
    /// start of one), and any plaintext it already opened.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
        staged: Vec<u8>,
        end: usize,
        early: Vec<u8>,
        closed: bool,
    ) -> Session {
        let tls12 = kernel.protocol_version() == ProtocolVersion::TLSv1_2;
        Session {
            rx: Rx::Secrets(secrets.rx.0, secrets.rx.1),
            tx: Some(secrets.tx),
            tx_key: None,
            kernel,
            tls12,
            staging: ReadBuf::with_unread(staged, end, STAGING_MIN, STAGING_MAX),
            eof: false,
            plain: 0..0,
            early,
            early_at: 0,
            closed,
            failed: None,
            barren: 0,
            warnings: 0,
            fragment: [0; 5],
            fragment_len: 0,
            owe_key_update: false,
        }
    }

    /// There is something for [`Session::read`] without the socket:
    /// plaintext, a whole staged record, the end, or an error.
    pub fn has_input(&self) -> bool {
        self.early_at < self.early.len()
            || !self.plain.is_empty()
            || self.closed
            || self.eof
            || self.failed.is_some()
            || !matches!(self.staged_record(), Ok(None))
    }

    /// Gives the staging buffer back when it holds nothing (a connection
    /// gone quiet keeps no buffer; see src/conn/). One that went quiet
    /// inside a record keeps that record's start in the smallest buffer
    /// (a burst grew it to 64 KiB, the handshake's input may be larger):
    /// else a client could hold that much per connection while idle.
    pub fn release(&mut self) {
        if !self.plain.is_empty() {
            return;
        }
        self.staging.release();
        self.plain = 0..0;
    }

    /// After [`Session::read`] returned the end of input: how it ended.
    /// Without close_notify the stream may have been cut (SPEC "Access
    /// control and TLS"), and src/conn/ drops the frame it left unfinished.
    pub fn ending(&self) -> Ending {
        Ending::of(self.closed, self.eof, !self.staging.is_drained())
    }

    /// Opens records into `out` until it is full or the socket has nothing
    /// more, like one plain read of that size. `Ok(0)` is the end of
    /// input, with or without close_notify: [`Session::ending`] says which.
    pub fn read(&mut self, mut sock: impl Read, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            n += self.hand_out(&mut out[n..]);
            if n == out.len() || self.closed {
                return Ok(n);
            }
            if let Some(why) = &self.failed {
                return if n > 0 {
                    Ok(n)
                } else {
                    Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()))
                };
            }
            match self.open_next() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.failed = Some(e.to_string());
                    continue;
                }
            }
            if self.eof {
                // A record cut by the EOF cannot be authenticated: it is
                // not delivered (nor was it through rustls).
                return Ok(n);
            }
            self.make_room();
            if self.staging.is_full() {
                // Cannot happen (a whole record is opened before reading
                // more, and the buffer holds the largest); an empty read
                // would look like the EOF.
                self.failed = Some("TLS: staging buffer full".into());
                continue;
            }
            match self.staging.read_from(|free| sock.read(free)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // What was opened is handed out first; a reset then shows
                // as an EOF at the next read (the kernel reports it once).
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// At shutdown: the last record floodwall writes after a handshake.
    /// One non-blocking write: a client whose window is closed misses it.
    pub fn close_notify(&mut self, mut sock: &TcpStream) {
        let tls12 = self.tls12;
        let record = self.tx_cipher().and_then(|c| c.close_notify(tls12));
        self.tx = None;
        self.tx_key = None;
        if let Ok(record) = record {
            let _ = sock.set_nonblocking(true);
            let _ = sock.write(&record);
        }
    }

    /// Seals `data` as application data records appended to `out` (the
    /// caller writes them): what a RELP session answers its client.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let tls12 = self.tls12;
        if self.owe_key_update && !data.is_empty() {
            // Ours, update_not_requested, under the old key; then the next.
            let ours = [KEY_UPDATE, 0, 0, 1, 0];
            self.tx_cipher()?.seal(tls12, HANDSHAKE, &ours, out)?;
            let next = self
                .kernel
                .update_tx_secret()
                .map_err(|e| broken(format!("KeyUpdate: {e}")))?;
            self.tx = Some(next);
            self.tx_key = None;
            self.owe_key_update = false;
        }
        let cipher = self.tx_cipher()?;
        for chunk in data.chunks(MAX_PLAINTEXT) {
            cipher.seal(tls12, APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    fn tx_cipher(&mut self) -> io::Result<&mut Cipher> {
        if self.tx_key.is_none() {
            let Some((seq, secrets)) = &self.tx else {
                return Err(broken("the sending side is closed"));
            };
            self.tx_key = Some(Box::new(Cipher::new(secrets, *seq, self.tls12)?));
        }
        match &mut self.tx_key {
            Some(key) => Ok(key),
            None => unreachable!("the key was set just above"),
        }
    }

    fn hand_out(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        if self.early_at < self.early.len() {
            n = (self.early.len() - self.early_at).min(out.len());
            out[..n].copy_from_slice(&self.early[self.early_at..self.early_at + n]);
            self.early_at += n;
            if self.early_at == self.early.len() {
                self.early = Vec::new();
                self.early_at = 0;
            }
        }
        let k = self.plain.len().min(out.len() - n);
        out[n..n + k].copy_from_slice(self.staging.bytes(self.plain.start..self.plain.start + k));
        self.plain.start += k;
        n + k
    }

    /// The length (header included) of the record at the front of the
    /// staged input when all of it is there.
    fn staged_record(&self) -> io::Result<Option<usize>> {
        let staged = self.staging.unread();
        // What rustls checks in a header, each field as soon as it is
        // there: a known type, a 3.x version, no empty record but
        // application data, at most 2^14 + 2048 (TLS 1.3's tighter limit
        // is checked when the record is whole, as rustls does). A header
        // failing these ends the session even if the EOF cuts its record.
        if let Some(&typ) = staged.first()
            && !(CHANGE_CIPHER_SPEC..=HEARTBEAT).contains(&typ)
        {
            return Err(broken(format!("unknown record type {typ}")));
        }
        if staged.len() >= 3 && staged[1] != 3 {
            return Err(broken("unknown record version"));
        }
        let Some(header) = staged.get(..HEADER) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 && header[0] != APPLICATION_DATA {
            return Err(broken("empty record"));
        }
        if len >= MAX_PLAINTEXT + 2048 {
            return Err(broken("record overflow"));
        }
        Ok((staged.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the next staged record if it is whole; false if it is not.
    fn open_next(&mut self) -> io::Result<bool> {
        let Some(len) = self.staged_record()? else {
            return Ok(false);
        };
        let at = self.staging.start();
        self.staging.consume(len);
        let rx = self.rx.key(self.tls12)?;
        let (typ, range) = rx.open(self.tls12, self.staging.bytes_mut(at..at + len))?;
        let range = at + range.start..at + range.end;
        if self.fragment_len > 0 && typ != HANDSHAKE {
            // RFC 8446 5.1: nothing between the records of one message.
            return Err(broken("a record inside a split KeyUpdate"));
        }
        match typ {
            APPLICATION_DATA => self.plain = range,
            ALERT => self.alert(range)?,
            HANDSHAKE if !self.tls12 => self.key_update(range)?,
            HANDSHAKE => return Err(broken("renegotiation refused")),
            CHANGE_CIPHER_SPEC => return Err(broken("change_cipher_spec after the handshake")),
            other => return Err(broken(format!("unexpected record type {other}"))),
        }
        self.count_barren(!self.plain.is_empty() || self.closed)?;
        Ok(true)
    }

    /// Counts a record that hands out nothing; one that does (or ends the
    /// input) resets it.
    fn count_barren(&mut self, fruitful: bool) -> io::Result<()> {
        if fruitful {
            self.barren = 0;
            return Ok(());
        }
        if self.barren == BARREN_MAX {
            return Err(broken("too many records in a row without data"));
        }
        self.barren += 1;
        Ok(())
    }

    fn alert(&mut self, range: Range<usize>) -> io::Result<()> {
        match *self.staging.bytes(range) {
            [level, _] if level != WARNING && level != FATAL => {
                Err(broken(format!("alert of unknown level {level}")))
            }
            [_, CLOSE_NOTIFY] => {
                self.closed = true;
                Ok(())
            }
            [WARNING, USER_CANCELED] if self.warnings == WARNINGS_MAX => {
                Err(broken("too many warning alerts"))
            }
            [WARNING, USER_CANCELED] => {
                self.warnings += 1;
                Ok(())
            }
            [_, description] => Err(broken(format!("alert {description} from the client"))),
            _ => Err(broken("malformed alert")),
        }
    }

    /// A TLS 1.3 KeyUpdate: it may come split across records (RFC 8446
    /// 5.1 lets any handshake message span records), but it must end its
    /// last record (a key change may not share a record with what follows
    /// it). An update_requested asks for ours before our next application
    /// data: only a RELP session sends any, and [`Session::seal`] puts ours
    /// first. Any other handshake message is refused at its first byte.
    fn key_update(&mut self, range: Range<usize>) -> io::Result<()> {
        if range.is_empty() {
            return Err(broken("empty handshake record"));
        }
        for &byte in self.staging.bytes(range) {
            let at = usize::from(self.fragment_len);
            if at == self.fragment.len() {
                return Err(broken("KeyUpdate must end its record"));
            }
            self.fragment[at] = byte;
            self.fragment_len += 1;
            match (at, self.fragment[at]) {
                (0, KEY_UPDATE) => {}
                (0, other) => {
                    return Err(broken(format!(
                        "handshake message {other} after the handshake"
                    )));
                }
                (1 | 2, 0) | (3, 1) | (4, 0 | 1) => {}
                _ => return Err(broken("malformed KeyUpdate")),
            }
        }
        if usize::from(self.fragment_len) < self.fragment.len() {
            return Ok(());
        }
        self.fragment_len = 0;
        self.owe_key_update |= self.fragment[4] == 1;
        let (seq, secrets) = self
            .kernel
            .update_rx_secret()
            .map_err(|e| broken(format!("KeyUpdate: {e}")))?;
        // Expanded at the next record, like the first key.
        self.rx = Rx::Secrets(seq, secrets);
        Ok(())
    }

    /// Room to read: the staging buffer grows while reads fill it, and
    /// always holds the front record whole (a TLS 1.2 record may be up to
    /// 18 KiB). Everything opened was handed out before a read.
    fn make_room(&mut self) {
        let need = self.staging.unread().get(..HEADER).map_or(0, |h| {
            HEADER + usize::from(u16::from_be_bytes([h[3], h[4]]))
        });
        self.staging.make_room(need);
        self.plain = 0..0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use rustls::crypto::{CryptoProvider, ring as provider};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConfig, SupportedCipherSuite,
        SupportedProtocolVersion,
    };

    use super::*;
    use crate::wake::Wake;

    /// A server config as floodwall's (no tickets, secrets extractable) and
    /// a client that offers `suite` alone.
    pub(crate) fn configs(suite: SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        // The client offers one suite, so the session uses exactly it.
        let only = CryptoProvider {
            cipher_suites: vec![suite],
            ..provider::default_provider()
        };
        configs_with(provider::default_provider(), only)
    }

    /// As [`configs`], with each side's crypto provider given.
    pub(crate) fn configs_with(
        server: CryptoProvider,
        client: CryptoProvider,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let both: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let mut server = ServerConfig::builder_with_provider(Arc::new(server))
            .with_protocol_versions(both)
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
        let client = ClientConfig::builder_with_provider(Arc::new(client))
            .with_protocol_versions(both)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
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

    /// A client session driven by hand over a blocking socket.
    struct Client {
        conn: ClientConnection,
        sock: TcpStream,
    }

    impl Client {
        /// Connects; `first` is written before the handshake completes, so
        /// that it leaves in the same flight as the client's Finished.
        fn connect(config: Arc<ClientConfig>, addr: std::net::SocketAddr, first: &[u8]) -> Client {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = ClientConnection::new(config, name).unwrap();
            conn.writer().write_all(first).unwrap();
            let mut sock = TcpStream::connect(addr).unwrap();
            while conn.is_handshaking() {
                while conn.wants_write() {
                    conn.write_tls(&mut sock).unwrap();
                }
                if conn.is_handshaking() {
                    conn.read_tls(&mut sock).unwrap();
                    conn.process_new_packets().unwrap();
                }
            }
            let mut client = Client { conn, sock };
            client.flush();
            client
        }

        fn flush(&mut self) {
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.sock).unwrap();
            }
        }

        /// One record per call.
        fn send(&mut self, bytes: &[u8]) {
            self.conn.writer().write_all(bytes).unwrap();
            self.flush();
        }

        /// Reads until the server's close: true if it came as close_notify.
        fn clean_close(&mut self) -> bool {
            loop {
                match self.conn.read_tls(&mut self.sock) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(_) => return false,
                }
                let state = self.conn.process_new_packets().unwrap();
                if state.peer_has_closed() {
                    return true;
                }
            }
        }
    }

    /// The server side: a completed handshake over an accepted socket.
    fn accept(listener: &TcpListener, config: Arc<ServerConfig>) -> (TcpStream, Box<Session>) {
        let (sock, _) = listener.accept().unwrap();
        let wake = Wake::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = crate::tls::handshake(config, &sock, deadline, &wake, Default::default());
        let Ok(crate::tls::Taken::Floodwall(session)) = taken else {
            panic!("not taken over by floodwall's layer");
        };
        sock.set_nonblocking(true).unwrap();
        (sock, session)
    }

    /// Reads to the end of input (or the first error) with small and
    /// large buffers in turn.
    fn read_all(session: &mut Session, sock: &TcpStream) -> (Vec<u8>, io::Result<()>) {
        let wake = Wake::new().unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let deadline = Instant::now() + Duration::from_secs(30);
        for turn in 0usize.. {
            assert!(Instant::now() < deadline, "no end of input within 30 s");
            let size = if turn % 3 == 0 { 100 } else { buf.len() };
            match session.read(sock, &mut buf[..size]) {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !session.has_input() {
                        wake.wait(sock, Some(Duration::from_secs(5)), false)
                            .unwrap();
                    }
                }
                Err(e) => return (got, Err(e)),
            }
        }
        unreachable!()
    }

    fn message(i: usize) -> Vec<u8> {
        // Sizes from 1 byte to a full 16 KiB record.
        let len = match i % 7 {
            0 => 1,
            1 => 127,
            2 => 16 << 10,
            n => n * 700,
        };
        (0..len).map(|k| (i * 31 + k) as u8).collect()
    }

    /// Every suite and version: what comes with the Finished, records of
    /// 1 byte to 16 KiB, then close_notify, arrive byte-exact; floodwall's
    /// own close_notify reaches the client as one (its seal is right).
    #[test]
    fn every_suite_delivers_byte_exact_and_both_closes_are_clean() {
        for suite in suites() {
            let (server_config, client_config) = configs(suite);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = thread::spawn(move || {
                let mut sent = b"sent with the Finished\n".to_vec();
                let mut c = Client::connect(client_config, addr, &sent);
                for i in 0..300 {
                    let m = message(i);
                    c.send(&m);
                    sent.extend_from_slice(&m);
                }
                c.conn.send_close_notify();
                c.flush();
                (sent, c.clean_close())
            });
            let (sock, mut session) = accept(&listener, server_config);
            let (got, end) = read_all(&mut session, &sock);
            end.unwrap();
            assert!(session.closed, "{suite:?}: close_notify not seen");
            session.close_notify(&sock);
            drop(sock);
            let (sent, clean) = client.join().unwrap();
            assert_eq!(got.len(), sent.len(), "{suite:?}");
            assert!(got == sent, "{suite:?}: bytes differ");
            assert!(clean, "{suite:?}: the client did not see close_notify");
        }
    }

    /// A TLS 1.3 client that updates its keys: rustls's key schedule gives
    /// the next key and the records keep arriving.
    #[test]
    fn key_updates_are_followed() {
        let suite = provider::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let (server_config, client_config) = configs(suite);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            let mut c = Client::connect(client_config, addr, b"");
            let mut sent = Vec::new();
            for i in 0..3000 {
                if i % 500 == 499 {
                    c.conn.refresh_traffic_keys().unwrap();
                }
                let m = format!("<13>message {i} across key updates\n");
                c.send(m.as_bytes());
                sent.extend_from_slice(m.as_bytes());
            }
            c.conn.send_close_notify();
            c.flush();
            sent
        });
        let (sock, mut session) = accept(&listener, server_config);
        let (got, end) = read_all(&mut session, &sock);
        end.unwrap();
        let sent = client.join().unwrap();
        assert!(got == sent, "{} of {} bytes", got.len(), sent.len());
    }

    /// Shutdown after a client's KeyUpdates (rustls asks for ours, which
    /// floodwall never sends, so the client still reads with its first
    /// key): floodwall's close_notify reaches the client as one.
    #[test]
    fn the_shutdown_close_notify_after_a_client_key_update_reaches_the_client() {
        let suite = provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
        let (server_config, client_config) = configs(suite);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let client = thread::spawn(move || {
            let mut c = Client::connect(client_config, addr, b"");
            let mut sent = Vec::new();
            for i in 0..3 {
                c.conn.refresh_traffic_keys().unwrap();
                let m = format!("<13>after key update {i}\n");
                c.send(m.as_bytes());
                sent.extend_from_slice(m.as_bytes());
            }
            sent_tx.send(sent).unwrap();
            // No close of our own: the server closes, as at its shutdown.
            c.clean_close()
        });
        let (sock, mut session) = accept(&listener, server_config);
        let sent = sent_rx.recv().unwrap();
        let wake = Wake::new().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() {
            assert!(Instant::now() < deadline, "the data never came");
            match session.read(&sock, &mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wake.wait(&sock, Some(Duration::from_secs(5)), false)
                        .unwrap();
                }
                other => panic!("read: {other:?}"),
            }
        }
        assert_eq!(got, sent);
        session.close_notify(&sock);
        assert!(
            client.join().unwrap(),
            "the client did not read close_notify"
        );
    }

    /// A client's KeyUpdate with update_requested is owed ours before our
    /// next application data (RFC 8446 4.6.3): a RELP session's next
    /// answer comes after a KeyUpdate, under the next key, and the client
    /// reads it; the answer after that is one record again.
    #[test]
    fn an_answer_after_a_requested_key_update_follows_ours() {
        let suite = provider::cipher_suite::TLS13_AES_256_GCM_SHA384;
        let (server_config, client_config) = configs(suite);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (answers_tx, answers_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let client = thread::spawn(move || {
            let mut c = Client::connect(client_config, addr, b"");
            c.send(b"before\n");
            c.conn.refresh_traffic_keys().unwrap();
            c.send(b"after\n");
            let mut got = Vec::new();
            for wire in answers_rx {
                c.conn.read_tls(&mut &wire[..]).unwrap();
                c.conn
                    .process_new_packets()
                    .expect("the client reads our answer");
                let _ = c.conn.reader().read_to_end(&mut got);
            }
            got
        });
        let (sock, mut session) = accept(&listener, server_config);
        let wake = Wake::new().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got != b"before\nafter\n" {
            assert!(Instant::now() < deadline, "the data never came: {got:?}");
            match session.read(&sock, &mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wake.wait(&sock, Some(Duration::from_secs(5)), false)
                        .unwrap();
                }
                other => panic!("read: {other:?}"),
            }
        }
        let records = |wire: &[u8]| {
            let mut n = 0;
            let mut at = 0;
            while at < wire.len() {
                at += HEADER + usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
                n += 1;
            }
            n
        };
        let mut first = Vec::new();
        session.seal(b"1 rsp 6 200 OK\n", &mut first).unwrap();
        assert_eq!(records(&first), 2, "ours, then the answer");
        let mut second = Vec::new();
        session.seal(b"2 rsp 6 200 OK\n", &mut second).unwrap();
        assert_eq!(records(&second), 1, "one KeyUpdate owed, one sent");
        answers_tx.send(first).unwrap();
        answers_tx.send(second).unwrap();
        drop(answers_tx);
        assert_eq!(client.join().unwrap(), b"1 rsp 6 200 OK\n2 rsp 6 200 OK\n");
    }

    /// A record changed in flight: what came before it is delivered, then
    /// the connection fails, and nothing of the forged record comes out.
    #[test]
    fn a_forged_record_ends_the_connection_after_what_came_before() {
        for suite in [
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ] {
            let (server_config, client_config) = configs(suite);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = thread::spawn(move || {
                let mut c = Client::connect(client_config, addr, b"");
                c.send(b"good one\n");
                c.send(b"good two\n");
                c.conn.writer().write_all(b"forged\n").unwrap();
                let mut record = Vec::new();
                while c.conn.wants_write() {
                    c.conn.write_tls(&mut record).unwrap();
                }
                let last = record.len() - 1;
                record[last] ^= 1; // the tag's last byte
                c.sock.write_all(&record).unwrap();
                c.send(b"after\n");
                // Held open until the server is done.
                let mut b = [0u8; 1];
                let _ = c.sock.read(&mut b);
            });
            let (sock, mut session) = accept(&listener, server_config);
            let (got, end) = read_all(&mut session, &sock);
            let e = end.expect_err("a forged record was accepted");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{suite:?}");
            assert!(e.to_string().contains("authenticate"), "{e}");
            assert_eq!(got, b"good one\ngood two\n", "{suite:?}");
            drop(sock);
            client.join().unwrap();
        }
    }

    /// Garbage after a real ClientHello, cut anywhere: every handshake
    /// ends refused, none panics.
    #[test]
    fn garbage_in_the_handshake_is_refused() {
        let (server_config, client_config) =
            configs(provider::cipher_suite::TLS13_AES_128_GCM_SHA256);
        let name = ServerName::try_from("localhost").unwrap();
        let mut hello = Vec::new();
        let mut c = ClientConnection::new(client_config, name).unwrap();
        c.write_tls(&mut hello).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for cut in (0..hello.len()).step_by(13).chain([hello.len()]) {
            let mut bytes = hello[..cut].to_vec();
            for _ in 0..(cut % 3) * 700 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let sender = thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            });
            let (sock, _) = listener.accept().unwrap();
            let wake = Wake::new().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let end = crate::tls::handshake(
                server_config.clone(),
                &sock,
                deadline,
                &wake,
                Default::default(),
            );
            assert!(
                matches!(end, Err(crate::tls::HandshakeEnd::Refused(_))),
                "cut {cut}: not refused"
            );
            drop(sock);
            sender.join().unwrap();
        }
    }

    /// A client past its handshake that seals records by hand with its own
    /// keys (rustls's secret extraction): any inner content, type and
    /// padding, as a hostile client could.
    struct Forger {
        sock: TcpStream,
        tx: Cipher,
        tls12: bool,
    }

    impl Forger {
        fn connect(client_config: Arc<ClientConfig>, addr: std::net::SocketAddr) -> Forger {
            let mut config = (*client_config).clone();
            config.enable_secret_extraction = true;
            let c = Client::connect(Arc::new(config), addr, b"");
            let tls12 = c.conn.protocol_version() == Some(ProtocolVersion::TLSv1_2);
            let (seq, secrets) = c.conn.dangerous_extract_secrets().unwrap().tx;
            let tx = Cipher::new(&secrets, seq, tls12).unwrap();
            Forger {
                sock: c.sock,
                tx,
                tls12,
            }
        }

        /// One sealed record of type `typ` holding `content` (TLS 1.3:
        /// inside, followed by `pad` zeros; TLS 1.2: `pad` is ignored).
        fn record(&mut self, typ: u8, content: &[u8], pad: usize) -> Vec<u8> {
            let nonce = self.tx.xor_nonce();
            let mut payload = content.to_vec();
            let explicit = if self.tls12 && self.tx.explicit {
                nonce[4..].to_vec()
            } else {
                Vec::new()
            };
            let outer = if self.tls12 { typ } else { APPLICATION_DATA };
            if !self.tls12 {
                payload.push(typ);
                payload.resize(payload.len() + pad, 0);
            }
            let len = (explicit.len() + payload.len() + TAG) as u16;
            let mut header = [outer, 3, 3, 0, 0];
            header[3..].copy_from_slice(&len.to_be_bytes());
            let aad = if self.tls12 {
                self.tx.aad12(typ, [3, 3], payload.len()).unwrap().to_vec()
            } else {
                header.to_vec()
            };
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut payload,
                )
                .unwrap();
            self.tx.count().unwrap();
            [&header[..], &explicit, &payload, tag.as_ref()].concat()
        }

        fn send(&mut self, typ: u8, content: &[u8], pad: usize) {
            let record = self.record(typ, content, pad);
            // The server may have closed already: what matters is what it read.
            let _ = self.sock.write_all(&record);
        }

        /// Held open until the server is done.
        fn hold(mut self) {
            let mut b = [0u8; 1];
            let _ = self.sock.read(&mut b);
        }
    }

    fn tls13() -> SupportedCipherSuite {
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256
    }

    fn tls12() -> SupportedCipherSuite {
        provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    }

    /// Runs `script` as a forging client against a server session and
    /// returns what the server read and how its input ended.
    fn forged(
        suite: SupportedCipherSuite,
        script: impl FnOnce(&mut Forger) + Send + 'static,
    ) -> (Vec<u8>, io::Result<()>) {
        let (server_config, client_config) = configs(suite);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            let mut f = Forger::connect(client_config, addr);
            script(&mut f);
            f.hold();
        });
        let (sock, mut session) = accept(&listener, server_config);
        let (got, end) = read_all(&mut session, &sock);
        drop(sock);
        client.join().unwrap();
        (got, end)
    }

    fn refused_with(end: io::Result<()>, why: &str) {
        let e = end.expect_err("accepted");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }

    /// The forger itself is right: its records and its close_notify are
    /// read as a rustls client's are, in both versions.
    #[test]
    fn forged_records_are_read_like_real_ones() {
        for suite in suites() {
            let (got, end) = forged(suite, |f| {
                f.send(APPLICATION_DATA, b"one\n", 0);
                f.send(APPLICATION_DATA, b"two\n", 7);
                f.send(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
                f.send(APPLICATION_DATA, b"after the close\n", 0);
            });
            end.unwrap();
            assert_eq!(got, b"one\ntwo\n", "{suite:?}");
        }
    }

    /// Zero-length application data is legal (RFC 8446 5.1, RFC 5246
    /// 6.2.1): it hands out nothing and what follows arrives; so does a
    /// user_canceled warning.
    #[test]
    fn empty_records_and_user_canceled_are_passed_over() {
        for suite in [tls13(), tls12()] {
            let (got, end) = forged(suite, |f| {
                f.send(APPLICATION_DATA, b"a", 0);
                f.send(APPLICATION_DATA, b"", 0);
                f.send(ALERT, &[WARNING, USER_CANCELED], 0);
                f.send(APPLICATION_DATA, b"", 100);
                f.send(APPLICATION_DATA, b"b", 0);
                f.send(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
            });
            end.unwrap();
            assert_eq!(got, b"ab", "{suite:?}");
        }
    }

    /// Any other alert, warning or fatal, ends the connection after what
    /// came before it; so does a malformed alert.
    #[test]
    fn other_alerts_end_the_connection() {
        for suite in [tls13(), tls12()] {
            for alert in [
                vec![WARNING, 42],
                vec![2, 40],
                vec![2, USER_CANCELED],
                vec![1],
            ] {
                let bad = alert.clone();
                let (got, end) = forged(suite, move |f| {
                    f.send(APPLICATION_DATA, b"before\n", 0);
                    f.send(ALERT, &bad, 0);
                    f.send(APPLICATION_DATA, b"after\n", 0);
                });
                refused_with(end, "alert");
                assert_eq!(got, b"before\n", "{suite:?} {alert:?}");
            }
        }
    }

    /// A KeyUpdate must end its record (RFC 8446 5.1): data after it in
    /// the same record is refused, and none of that record comes out.
    #[test]
    fn a_key_update_followed_by_data_in_its_record_is_refused() {
        let (got, end) = forged(tls13(), |f| {
            f.send(APPLICATION_DATA, b"before\n", 0);
            f.send(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0, 23, b'x'], 0);
        });
        refused_with(end, "KeyUpdate");
        assert_eq!(got, b"before\n");
    }

    /// Handshake messages after the handshake: TLS 1.2 renegotiation (a
    /// ClientHello) and TLS 1.3 messages other than KeyUpdate end it, as
    /// do change_cipher_spec and unknown types, protected or not.
    #[test]
    fn handshake_and_other_types_after_the_handshake_are_refused() {
        let hello = [1u8, 0, 0, 4, 3, 3, 0, 0];
        let cases: Vec<(SupportedCipherSuite, u8, Vec<u8>, &str)> = vec![
            (tls12(), HANDSHAKE, hello.to_vec(), "renegotiation"),
            (tls13(), HANDSHAKE, hello.to_vec(), "handshake message 1"),
            (tls13(), HANDSHAKE, vec![4, 0, 0, 0], "handshake message 4"),
            (tls12(), CHANGE_CIPHER_SPEC, vec![1], "change_cipher_spec"),
            (tls13(), CHANGE_CIPHER_SPEC, vec![1], "change_cipher_spec"),
            (tls12(), 24, vec![1, 0, 0], "record type 24"),
            (tls13(), 24, vec![1, 0, 0], "record type 24"),
        ];
        for (suite, typ, content, why) in cases {
            let (got, end) = forged(suite, move |f| {
                f.send(APPLICATION_DATA, b"before\n", 0);
                f.send(typ, &content, 0);
            });
            refused_with(end, why);
            assert_eq!(got, b"before\n", "{suite:?} {typ}");
        }
    }

    /// TLS 1.3: a record that is all zeros inside has no content type,
    /// and an unprotected record after the handshake is refused.
    #[test]
    fn tls13_records_without_a_type_or_unprotected_are_refused() {
        let (got, end) = forged(tls13(), |f| {
            f.send(APPLICATION_DATA, b"before\n", 0);
            // Sealed as type 0: the inner plaintext is all zeros.
            f.send(0, b"", 20);
        });
        refused_with(end, "content type");
        assert_eq!(got, b"before\n");
        let (got, end) = forged(tls13(), |f| {
            f.send(APPLICATION_DATA, b"before\n", 0);
            let _ = f
                .sock
                .write_all(&[ALERT, 3, 3, 0, 2, WARNING, CLOSE_NOTIFY]);
        });
        refused_with(end, "record type 21");
        assert_eq!(got, b"before\n");
    }

    /// A header announcing one byte over the limit (TLS 1.3: 2^14 + 256;
    /// TLS 1.2: 2^14 + 2048) is refused from the header alone, before the
    /// body comes. The largest that may authenticate (2^14 of plaintext,
    /// TLS 1.3's type byte or TLS 1.2 GCM's explicit nonce, the tag) is
    /// read whole and opened (and fails to authenticate); one longer than
    /// that, within the header's limit, is refused before opening.
    #[test]
    fn a_record_over_the_length_limit_is_refused_from_its_header() {
        let cases = [
            (tls13(), (16 << 10) + 256 + 1, "record overflow"),
            (tls13(), (16 << 10) + 256, "record overflow"),
            (tls13(), (16 << 10) + 1 + TAG, "authenticate"),
            (tls12(), (16 << 10) + 2048 + 1, "record overflow"),
            (tls12(), (16 << 10) + 2048, "record overflow"),
            (tls12(), (16 << 10) + 8 + TAG, "authenticate"),
        ];
        for (suite, len, why) in cases {
            let (got, end) = forged(suite, move |f| {
                f.send(APPLICATION_DATA, b"before\n", 0);
                let mut r = vec![APPLICATION_DATA, 3, 3];
                r.extend_from_slice(&(len as u16).to_be_bytes());
                if len <= MAX_PLAINTEXT + 2048 {
                    r.resize(HEADER + len, 0x55);
                }
                let _ = f.sock.write_all(&r);
            });
            refused_with(end, why);
            assert_eq!(got, b"before\n", "{suite:?} {len}");
        }
    }

    /// The EOF in the middle of a record: what came before is handed out,
    /// the cut record is not, and the end is an ordinary one.
    #[test]
    fn an_eof_inside_a_record_ends_input_without_it() {
        for suite in [tls13(), tls12()] {
            let (got, end) = forged(suite, |f| {
                f.send(APPLICATION_DATA, b"whole\n", 0);
                let r = f.record(APPLICATION_DATA, b"cut in two\n", 0);
                f.sock.write_all(&r[..r.len() - 3]).unwrap();
                f.sock.shutdown(std::net::Shutdown::Write).unwrap();
            });
            end.unwrap();
            assert_eq!(got, b"whole\n", "{suite:?}");
        }
    }

    /// A session may send four warning alerts (user_canceled) in its
    /// life, as rustls allows; the fifth ends it, data between them or not.
    #[test]
    fn a_fifth_user_canceled_ends_the_session() {
        for suite in [tls13(), tls12()] {
            for (alerts, fine) in [(4, true), (5, false)] {
                let (got, end) = forged(suite, move |f| {
                    for _ in 0..alerts {
                        f.send(APPLICATION_DATA, b"x", 0);
                        f.send(ALERT, &[WARNING, USER_CANCELED], 0);
                    }
                    f.send(APPLICATION_DATA, b"y", 0);
                    f.send(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
                });
                if fine {
                    end.unwrap();
                    assert_eq!(got, b"xxxxy", "{suite:?}");
                } else {
                    refused_with(end, "warning alerts");
                    assert_eq!(got, b"xxxxx", "{suite:?}");
                }
            }
        }
    }

    /// Records that hand out nothing (empty application data, user_canceled,
    /// KeyUpdate) are allowed only a few in a row, as rustls allows them:
    /// otherwise a client streaming them keeps `read` from returning (it
    /// returns when `out` is full or the socket is empty), past src/conn/'s
    /// shutdown deadline. 32 in a row are fine.
    #[test]
    fn records_without_plaintext_are_limited_in_a_row() {
        type Barren = fn(&mut Forger);
        // (user_canceled: at most four in a session, below.)
        let kinds: [Barren; 1] = [|f| f.send(APPLICATION_DATA, b"", 0)];
        for suite in [tls13(), tls12()] {
            for barren in kinds {
                for (row, fine) in [(32, true), (20_000, false)] {
                    let (got, end) = forged(suite, move |f| {
                        // Data first: rustls, finishing the handshake,
                        // reads on to the first data with its own bounds.
                        f.send(APPLICATION_DATA, b"x", 0);
                        for _ in 0..3 {
                            for _ in 0..row {
                                barren(f);
                            }
                            f.send(APPLICATION_DATA, b"x", 0);
                        }
                        // The close after a full row is still clean.
                        for _ in 0..row.min(32) {
                            barren(f);
                        }
                        f.send(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
                    });
                    if fine {
                        end.unwrap();
                        assert_eq!(got, b"xxxx", "{suite:?} {row}");
                    } else {
                        refused_with(end, "without data");
                        assert_eq!(got, b"x", "{suite:?}");
                    }
                }
            }
        }
        // KeyUpdates, from rustls's own client.
        for (row, fine) in [(32, true), (40, false)] {
            let (server_config, client_config) = configs(tls13());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = thread::spawn(move || {
                let mut c = Client::connect(client_config, addr, b"x");
                for _ in 0..3 {
                    for _ in 0..row {
                        c.conn.refresh_traffic_keys().unwrap();
                        c.flush();
                    }
                    c.send(b"x");
                }
                c.conn.send_close_notify();
                let _ = c.conn.write_tls(&mut c.sock);
                let mut b = [0u8; 1];
                let _ = c.sock.read(&mut b);
            });
            let (sock, mut session) = accept(&listener, server_config);
            let (got, end) = read_all(&mut session, &sock);
            drop(sock);
            client.join().unwrap();
            if fine {
                end.unwrap();
                assert_eq!(got, b"xxxx");
            } else {
                refused_with(end, "without data");
                assert_eq!(got, b"x");
            }
        }
    }

    /// TLS 1.3: the inner plaintext (content, type, padding) may be 2^14 + 1
    /// bytes at most (RFC 8446 5.2, 5.4: record_overflow), even when the
    /// ciphertext is within its own limit: padding up to that is read,
    /// padding beyond it is refused.
    #[test]
    fn tls13_padding_beyond_the_plaintext_limit_is_refused() {
        let (got, end) = forged(tls13(), |f| {
            f.send(APPLICATION_DATA, b"x", MAX_PLAINTEXT - 1);
            f.send(APPLICATION_DATA, b"y", MAX_PLAINTEXT);
        });
        refused_with(end, "record overflow");
        assert_eq!(got, b"x");
    }

    /// A client that bursts (the staging buffer grows to 64 KiB) and then
    /// goes quiet inside a record: the buffer it keeps while quiet is back
    /// to the minimum, with the record's start in it, and the record still
    /// completes.
    #[test]
    fn a_quiet_session_inside_a_record_keeps_a_small_buffer() {
        for suite in [tls13(), tls12()] {
            let (server_config, client_config) = configs(suite);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (go, gone) = std::sync::mpsc::channel::<()>();
            let client = thread::spawn(move || {
                let mut f = Forger::connect(client_config, addr);
                let mut burst = Vec::new();
                for _ in 0..20 {
                    burst.extend(f.record(APPLICATION_DATA, &[b'b'; 16 << 10], 0));
                }
                let last = f.record(APPLICATION_DATA, b"last\n", 0);
                burst.extend_from_slice(&last[..3]);
                f.sock.write_all(&burst).unwrap();
                gone.recv().unwrap();
                f.sock.write_all(&last[3..]).unwrap();
                f.send(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
                f.hold();
            });
            let (sock, mut session) = accept(&listener, server_config);
            let wake = Wake::new().unwrap();
            // Until a whole largest staging buffer of the burst is there
            // (no readiness event says "this much"; polled), so that the
            // first reads fill the buffer and grow it.
            let mut peek = vec![0u8; STAGING_MAX];
            let deadline = Instant::now() + Duration::from_secs(10);
            while sock.peek(&mut peek).unwrap_or(0) < STAGING_MAX {
                assert!(Instant::now() < deadline, "the burst did not arrive");
                thread::sleep(Duration::from_millis(1));
            }
            let mut out = vec![0u8; 64 << 10];
            let mut got = 0;
            let mut grown = 0;
            while got < 20 * (16 << 10) {
                match session.read(&sock, &mut out) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wake.wait(&sock, Some(Duration::from_secs(5)), false)
                            .unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
                grown = grown.max(session.staging.size());
            }
            // Else there is nothing for `release` to cut back.
            assert_eq!(
                grown, STAGING_MAX,
                "{suite:?}: the burst did not grow the buffer"
            );
            assert!(matches!(
                session.read(&sock, &mut out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ));
            session.release();
            assert!(
                session.staging.size() <= STAGING_MIN && session.staging.allocated() <= STAGING_MIN,
                "{suite:?}: {} bytes kept",
                session.staging.allocated()
            );
            go.send(()).unwrap();
            let (rest, end) = read_all(&mut session, &sock);
            end.unwrap();
            assert_eq!(rest, b"last\n", "{suite:?}");
            drop(sock);
            client.join().unwrap();
        }
    }
}
