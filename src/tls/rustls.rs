//! The other record reader: rustls's own, its unbuffered server connection
//! kept past the handshake, for `[server.tls] record_layer = "rustls"` and
//! for a session whose negotiated suite floodwall's layer cannot open (the
//! take-over check in src/tls/handshake.rs). It costs a copy and an
//! allocation per record more than src/tls/record.rs (bench/RESULTS.md,
//! "The record layer"); it is the way to turn that layer off without a
//! rebuild. (The differential proof, src/tls/diff.rs, checks floodwall's
//! layer against rustls's own buffered `ServerConnection`.)
//!
//! It offers src/conn/ what [`crate::tls::record::Session`] offers, with the
//! same rules: plaintext before a failure is handed out first, the input
//! ends at the client's close_notify, an EOF without it says whether a
//! record was cut ([`Ending`]), and nothing is written after the handshake
//! but close_notify at shutdown, and the KeyUpdate rustls must send when a
//! client asks for one (a client that asks reads).

use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

use crate::tls::record::{Ending, HEADER, STAGING_MIN};

/// Largest TLS record on the wire (TLS 1.2's ciphertext limit) and header.
const RECORD_MAX: usize = HEADER + (16 << 10) + 2048;

fn broken(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {why}"))
}

pub struct RustlsSession {
    conn: Box<UnbufferedServerConnection>,
    /// Input not yet consumed by rustls: `buf[..end]`.
    buf: Vec<u8>,
    end: usize,
    /// Plaintext rustls opened and `read` has not handed out yet.
    plain: Vec<u8>,
    plain_at: usize,
    /// What rustls asks to send (a KeyUpdate it owes the client).
    out: Vec<u8>,
    eof: bool,
    /// The client sent close_notify.
    closed: bool,
    failed: Option<String>,
}

impl RustlsSession {
    /// Takes over after the handshake: the connection, the input it left
    /// (`staged[..end]`) and the plaintext it already opened.
    pub fn new(
        conn: Box<UnbufferedServerConnection>,
        staged: Vec<u8>,
        end: usize,
        early: Vec<u8>,
        closed: bool,
    ) -> RustlsSession {
        RustlsSession {
            conn,
            buf: staged,
            end,
            plain: early,
            plain_at: 0,
            out: Vec::new(),
            eof: false,
            closed,
            failed: None,
        }
    }

    /// Something for [`RustlsSession::read`] without the socket.
    pub fn has_input(&self) -> bool {
        self.plain_at < self.plain.len()
            || self.closed
            || self.eof
            || self.failed.is_some()
            || whole_record(&self.buf[..self.end])
    }

    /// Gives the buffers back when they hold nothing.
    pub fn release(&mut self) {
        if self.end == 0 && self.plain_at == self.plain.len() {
            self.buf = Vec::new();
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }

    /// After `read` returned the end of input: how it ended.
    pub fn ending(&self) -> Ending {
        Ending::of(self.closed, self.eof, self.end > 0)
    }

    /// As [`crate::tls::record::Session::read`]: plaintext into `out` until
    /// it is full or the socket has nothing more; `Ok(0)` is the end.
    pub fn read(&mut self, mut sock: &TcpStream, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            let k = (self.plain.len() - self.plain_at).min(out.len() - n);
            out[n..n + k].copy_from_slice(&self.plain[self.plain_at..self.plain_at + k]);
            self.plain_at += k;
            n += k;
            if self.plain_at == self.plain.len() {
                self.plain.clear();
                self.plain_at = 0;
            }
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
            match self.process(sock) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.failed = Some(e.to_string());
                    continue;
                }
            }
            if self.eof {
                return Ok(n);
            }
            if self.end == self.buf.len() {
                let size = (self.buf.len() * 2).clamp(STAGING_MIN, RECORD_MAX.max(64 << 10));
                self.buf.resize(size, 0);
            }
            match sock.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of rustls's state machine over the staged input: true if
    /// it produced something (plaintext, the close, a record to send).
    fn process(&mut self, sock: &TcpStream) -> io::Result<bool> {
        let status = self.conn.process_tls_records(&mut self.buf[..self.end]);
        let discard = status.discard;
        let progressed = match status.state {
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(broken)?;
                    self.plain.extend_from_slice(record.payload);
                }
                true
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                self.closed = true;
                true
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                let used = self.out.len();
                let mut room = 256;
                loop {
                    self.out.resize(used + room, 0);
                    match data.encode(&mut self.out[used..]) {
                        Ok(k) => {
                            self.out.truncate(used + k);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => room = required_size,
                        Err(e) => return Err(broken(e)),
                    }
                }
                true
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                // A KeyUpdate the client asked for: one non-blocking write,
                // as for close_notify (the socket is non-blocking).
                let mut sock = sock;
                let _ = sock.write(&self.out);
                self.out.clear();
                data.done();
                true
            }
            Ok(_) => false,
            Err(e) => Err(broken(e))?,
        };
        self.buf.copy_within(discard..self.end, 0);
        self.end -= discard;
        Ok(progressed)
    }

    /// As [`crate::tls::record::Session::seal`]: appends `data` sealed in
    /// application-data records to `out` (a RELP session's answers).
    /// Records staged but not yet opened are opened first (their plaintext
    /// waits for the next read): rustls encrypts only once it has nothing
    /// to read.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let status = self.conn.process_tls_records(&mut self.buf[..self.end]);
            let mut again = false;
            let sealed = match status.state {
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(broken)?;
                        self.plain.extend_from_slice(record.payload);
                    }
                    again = true;
                    Ok(())
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let used = out.len();
                    let mut room = data.len() + 256;
                    loop {
                        out.resize(used + room, 0);
                        match w.encrypt(data, &mut out[used..]) {
                            Ok(k) => {
                                out.truncate(used + k);
                                break Ok(());
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > room => room = required_size,
                            Err(e) => {
                                out.truncate(used);
                                break Err(broken(e));
                            }
                        }
                    }
                }
                Ok(_) => Err(broken("the session cannot send now")),
                Err(e) => Err(broken(e)),
            };
            let discard = status.discard;
            self.buf.copy_within(discard..self.end, 0);
            self.end -= discard;
            if !again {
                return sealed;
            }
            if discard == 0 {
                return Err(broken("staged records made no progress"));
            }
        }
    }

    /// At shutdown: close_notify, one non-blocking write.
    pub fn close_notify(&mut self, mut sock: &TcpStream) {
        let mut record = [0u8; 64];
        let status = self.conn.process_tls_records(&mut self.buf[..self.end]);
        let k = match status.state {
            Ok(ConnectionState::WriteTraffic(mut w)) => w.queue_close_notify(&mut record).ok(),
            _ => None,
        };
        let discard = status.discard;
        self.buf.copy_within(discard..self.end, 0);
        self.end -= discard;
        if let Some(k) = k {
            let _ = sock.set_nonblocking(true);
            let _ = sock.write(&record[..k]);
        }
    }
}

/// `input` starts with a whole record (or a header rustls will refuse).
fn whole_record(input: &[u8]) -> bool {
    input.get(..HEADER).is_some_and(|h| {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        input.len() >= HEADER + len || HEADER + len > RECORD_MAX
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use rustls::crypto::ring::cipher_suite as s;
    use rustls::crypto::{CipherSuiteCommon, CryptoProvider};
    use rustls::pki_types::ServerName;
    use rustls::{
        CipherSuite, ClientConfig, ClientConnection, ServerConfig, StreamOwned,
        SupportedCipherSuite, Tls13CipherSuite,
    };

    use crate::config::RecordLayer;
    use crate::tls::record::tests::{configs, configs_with};
    use crate::tls::{Taken, handshake};
    use crate::wake::Wake;

    /// Runs `client` against a server handshake with `layer`, and reads
    /// the session through [`Stream`] to its end: (which reader took it,
    /// what it read, how it ended, what the client returned).
    fn serve<T: Send + 'static>(
        server: Arc<ServerConfig>,
        layer: RecordLayer,
        client: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (bool, Vec<u8>, Option<crate::tls::record::Ending>, T) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || client(TcpStream::connect(addr).unwrap()));
        let (sock, _) = listener.accept().unwrap();
        let wake = Wake::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = handshake(server, &sock, deadline, &wake, layer).unwrap();
        let rustls = matches!(taken, Taken::Rustls(_));
        sock.set_nonblocking(true).unwrap();
        let mut stream = taken.stream(&sock);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 3000];
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < until, "no end of input within 30 s");
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stream
                        .wait(&wake, Some(Duration::from_secs(5)), false)
                        .unwrap();
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        let ending = stream.tls_ending();
        stream.close_notify();
        (rustls, got, ending, client.join().unwrap())
    }

    /// A client sending `messages` lines, a KeyUpdate every 200, then
    /// close_notify; it returns what it sent and whether it then read the
    /// server's close_notify (after its KeyUpdates).
    fn chatty(
        config: Arc<ClientConfig>,
        messages: usize,
    ) -> impl FnOnce(TcpStream) -> (Vec<u8>, bool) {
        move |sock| {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(config, name).unwrap();
            let mut tls = StreamOwned::new(conn, sock);
            let mut sent = Vec::new();
            for i in 0..messages {
                if i % 200 == 199
                    && tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
                {
                    tls.conn.refresh_traffic_keys().unwrap();
                }
                let line = format!("<13>rustls reader {i:05} {}\n", "y".repeat(i % 300));
                tls.write_all(line.as_bytes()).unwrap();
                tls.flush().unwrap();
                sent.extend_from_slice(line.as_bytes());
            }
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            tls.sock
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut rest = Vec::new();
            let clean = tls.read_to_end(&mut rest).is_ok() && rest.is_empty();
            (sent, clean)
        }
    }

    /// `record_layer = "rustls"`: every suite, byte-exact across
    /// KeyUpdates; the client's close_notify ends the input, and the
    /// server's close_notify reaches the client.
    #[test]
    fn the_rustls_reader_reads_every_suite_byte_exact() {
        for suite in [
            s::TLS13_AES_128_GCM_SHA256,
            s::TLS13_AES_256_GCM_SHA384,
            s::TLS13_CHACHA20_POLY1305_SHA256,
            s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let (server, client) = configs(suite);
            let (rustls, got, ending, (sent, clean)) =
                serve(server, RecordLayer::Rustls, chatty(client, 1000));
            assert!(rustls, "{suite:?}: not read by rustls");
            assert!(
                got == sent,
                "{suite:?}: {} of {} bytes",
                got.len(),
                sent.len()
            );
            assert_eq!(ending, Some(crate::tls::record::Ending::CloseNotify));
            assert!(clean, "{suite:?}: the client did not read close_notify");
        }
    }

    /// AES-128-GCM under another suite's name: a suite floodwall's layer
    /// does not know. The take-over check leaves it to rustls, with
    /// `record_layer = "floodwall"`, and the session reads byte-exact.
    #[test]
    fn a_suite_the_layer_cannot_open_falls_back_to_rustls() {
        let SupportedCipherSuite::Tls13(base) = s::TLS13_AES_128_GCM_SHA256 else {
            unreachable!("a TLS 1.3 suite")
        };
        let unknown: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::TLS13_AES_128_CCM_SHA256,
                ..base.common
            },
            ..*base
        }));
        assert!(!crate::tls::record_layer_opens(unknown.common.suite));
        let provider = || CryptoProvider {
            cipher_suites: vec![SupportedCipherSuite::Tls13(unknown)],
            ..rustls::crypto::ring::default_provider()
        };
        let (server, client) = configs_with(provider(), provider());
        let (rustls, got, _, (sent, clean)) =
            serve(server, RecordLayer::Floodwall, chatty(client, 500));
        assert!(rustls, "the layer took a suite it does not know");
        assert!(got == sent, "{} of {} bytes", got.len(), sent.len());
        assert!(clean);
        // The same configs with a known suite stay with floodwall's layer.
        let (server, client) = configs(s::TLS13_AES_128_GCM_SHA256);
        let (rustls, got, _, (sent, _)) = serve(server, RecordLayer::Floodwall, chatty(client, 10));
        assert!(!rustls && got == sent);
    }

    /// A client that closes without close_notify inside a record: the
    /// reader says so, as floodwall's does.
    #[test]
    fn an_eof_inside_a_record_is_a_cut_record() {
        let (server, client) = configs(s::TLS13_AES_128_GCM_SHA256);
        let (_, got, ending, ()) = serve(server, RecordLayer::Rustls, move |mut sock| {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = ClientConnection::new(client, name).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            conn.writer().write_all(b"whole\n").unwrap();
            conn.write_tls(&mut sock).unwrap();
            conn.writer().write_all(b"cut\n").unwrap();
            let mut wire = Vec::new();
            conn.write_tls(&mut wire).unwrap();
            sock.write_all(&wire[..wire.len() - 3]).unwrap();
        });
        assert_eq!(got, b"whole\n");
        assert_eq!(ending, Some(crate::tls::record::Ending::RecordCut));
    }

    /// Reads `stream` until it gave exactly `want`.
    fn read_until(stream: &mut crate::tls::stream::Stream<'_>, wake: &Wake, want: &[u8]) {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let until = Instant::now() + Duration::from_secs(10);
        while got != want {
            assert!(Instant::now() < until, "got {got:?}");
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stream
                        .wait(wake, Some(Duration::from_secs(5)), false)
                        .unwrap();
                }
                other => panic!("read: {other:?}"),
            }
        }
    }

    /// A RELP session on rustls's reader: an answer sealed before the
    /// client's KeyUpdate (update_requested) and not yet written, then
    /// the KeyUpdate read, then the next answer. rustls owes its own
    /// KeyUpdate and seals the next answer under its next key; it puts
    /// the KeyUpdate in the output of that next seal, ahead of the answer,
    /// so on the wire it comes between the two answers (not at the read,
    /// ahead of both: the client would open the first under the wrong key).
    #[test]
    fn an_owed_key_update_goes_between_the_answers() {
        let (server, client_config) = configs(s::TLS13_AES_128_GCM_SHA256);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = thread::spawn(move || -> Result<Vec<u8>, String> {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = ClientConnection::new(client_config, name).unwrap();
            let mut sock = TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            conn.writer().write_all(b"1 open\n").unwrap();
            conn.complete_io(&mut sock).unwrap();
            go_rx.recv().unwrap();
            conn.refresh_traffic_keys().unwrap();
            conn.writer().write_all(b"2 syslog\n").unwrap();
            conn.complete_io(&mut sock).unwrap();
            let mut got = Vec::new();
            while got.len() < b"1 ok\n2 ok\n".len() {
                if conn.read_tls(&mut sock).map_err(|e| e.to_string())? == 0 {
                    break;
                }
                conn.process_new_packets().map_err(|e| e.to_string())?;
                let _ = conn.reader().read_to_end(&mut got);
            }
            Ok(got)
        });
        let (sock, _) = listener.accept().unwrap();
        let wake = Wake::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = handshake(server, &sock, deadline, &wake, RecordLayer::Rustls).unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut stream = taken.stream(&sock);
        read_until(&mut stream, &wake, b"1 open\n");
        // The answer waits in the session's output (the client's window
        // is full, say) while the KeyUpdate comes in.
        let mut pending = Vec::new();
        stream.seal(b"1 ok\n", &mut pending).unwrap();
        go_tx.send(()).unwrap();
        read_until(&mut stream, &wake, b"2 syslog\n");
        stream.seal(b"2 ok\n", &mut pending).unwrap();
        sock.set_nonblocking(false).unwrap();
        (&sock).write_all(&pending).unwrap();
        assert_eq!(client.join().unwrap().as_deref(), Ok(&b"1 ok\n2 ok\n"[..]));
    }
}
