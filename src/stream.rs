//! The byte stream a connection reads from: the plain TCP socket, or a TLS
//! session over it whose handshake src/tls.rs has already completed.
//!
//! conn.rs sees only this: a non-blocking read, a wait for input (the
//! shared shutdown wake-up included) and non-blocking mode. With TLS, input
//! may already sit decrypted in rustls while the socket has nothing: the
//! wait returns at once then, so no plaintext is left behind a poll.

use std::io::{self, Read};
use std::net::TcpStream;

use std::time::Duration;

use rustls::ServerConnection;

use crate::tls_input::{Fed, TlsInput};
use crate::wake::{Ready, Wake};

pub enum Stream<'a> {
    Plain(&'a TcpStream),
    /// Boxed from its creation in src/tls.rs (the session is over 1 KiB):
    /// a by-value session is copied through the handshake's stack frames,
    /// and every stack page a worker touches stays resident for as long
    /// as its connection lives.
    Tls {
        conn: Box<ServerConnection>,
        sock: &'a TcpStream,
        /// Boxed for the same reason.
        input: Box<TlsInput>,
    },
}

impl Stream<'_> {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls { sock, .. } => sock,
        }
    }

    /// A quiet connection keeps no TLS staging buffer (see conn.rs's own
    /// read buffer).
    pub fn release(&mut self) {
        if let Stream::Tls { input, .. } = self {
            input.release();
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// [`Wake::wait`] on the socket, except that plaintext rustls already
    /// holds (or its peer's close_notify), or a whole record read and not
    /// yet decrypted, counts as input at once.
    pub fn wait(
        &mut self,
        wake: &Wake,
        timeout: Option<Duration>,
        watch: bool,
    ) -> io::Result<Ready> {
        if let Stream::Tls { conn, input, .. } = self {
            let state = conn.process_new_packets().map_err(io::Error::other)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || input.has_record()
            {
                return Ok(Ready::Socket);
            }
        }
        wake.wait(self.tcp(), timeout, watch)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls { conn, sock, input } => read_tls(conn, sock, input, buf),
        }
    }

    /// At shutdown: the one thing floodwall writes after a handshake.
    /// One non-blocking write: a client whose window is closed misses it.
    pub fn close_notify(&mut self) {
        if let Stream::Tls { conn, sock, .. } = self {
            conn.send_close_notify();
            let _ = sock.set_nonblocking(true);
            let _ = conn.write_tls(sock);
        }
    }
}

/// Decrypts into `buf` until it is full or the socket has nothing more,
/// like one plain read of that size (src/tls_input.rs says how input
/// reaches rustls). `Ok(0)` is the end of input, with or without
/// close_notify (after the handshake a close without it is an ordinary
/// EOF, SPEC "Access control and TLS").
fn read_tls(
    conn: &mut ServerConnection,
    sock: &TcpStream,
    input: &mut TlsInput,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut n = 0;
    // Each turn drains rustls's plaintext (at most 16 KiB: it refuses more
    // TLS until drained) before giving it at most 4 KiB of records.
    loop {
        match conn.reader().read(&mut buf[n..]) {
            Ok(0) if n < buf.len() => return Ok(n), // close_notify came
            Ok(k) => {
                n += k;
                if n == buf.len() {
                    return Ok(n);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
            Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
        }
        match input.feed(conn, sock) {
            Ok(Fed::Records) => {
                if let Err(e) = conn.process_new_packets() {
                    // rustls keeps the error: the next call reports it.
                    return if n > 0 {
                        Ok(n)
                    } else {
                        Err(io::Error::other(e))
                    };
                }
            }
            Ok(Fed::WouldBlock) if n > 0 => return Ok(n),
            Ok(Fed::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
            // What was decrypted is handed out first; a reset then shows
            // as an EOF at the next read (the kernel reports it once).
            Err(_) if n > 0 => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

    const MESSAGES: usize = 5000;

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        // As floodwall's (src/tls.rs): a never-reading client's close
        // would otherwise be a reset over the unread tickets.
        server.send_tls13_tickets = 0;
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A client that sends every message as its own TLS record (as loggen
    /// and rsyslog do), then close_notify, and the sizes of the server's
    /// reads: every byte arrives once, in order, and reads are not cut at
    /// rustls's 4 KiB (the old `rustls::Stream::read` path never returned
    /// more than one 4 KiB read's plaintext).
    #[test]
    fn reads_fill_the_buffer_across_records_and_lose_nothing() {
        let (server_config, client_config) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(client_config, name).unwrap();
            let mut tls = StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
            let mut sent = Vec::new();
            for i in 0..MESSAGES {
                let line = format!("<13>message number {i:06} of the record-per-message test\n");
                tls.write_all(line.as_bytes()).unwrap(); // one record each
                tls.flush().unwrap();
                sent.extend_from_slice(line.as_bytes());
            }
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            sent
        });
        let (sock, _) = listener.accept().unwrap();
        let mut conn = ServerConnection::new(server_config).unwrap();
        let mut records = crate::tls_input::Records::default();
        while conn.is_handshaking() {
            if conn.wants_write() {
                conn.write_tls(&mut &sock).unwrap();
            } else {
                let mut tracked = crate::tls_input::Tracked {
                    inner: &sock,
                    records: &mut records,
                };
                conn.read_tls(&mut tracked).unwrap();
                conn.process_new_packets().unwrap();
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut &sock).unwrap();
        }
        sock.set_nonblocking(true).unwrap();
        let wake = Wake::new().unwrap();
        let mut stream = Stream::Tls {
            conn: Box::new(conn),
            sock: &sock,
            input: Box::new(TlsInput::new(records)),
        };
        let mut got = Vec::new();
        let mut largest = 0;
        let mut buf = vec![0u8; 64 << 10];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(std::time::Instant::now() < deadline, "no EOF within 30 s");
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    largest = largest.max(n);
                    got.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stream
                        .wait(&wake, Some(Duration::from_secs(5)), false)
                        .unwrap();
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        let sent = client.join().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes differ");
        // The client writes a record at a time, so how much has arrived
        // by each read varies; but 5,000 records (~350 KiB) never all come
        // 4 KiB at a time once reads fill across records.
        assert!(largest > 8 << 10, "largest read {largest} bytes");
    }
}
