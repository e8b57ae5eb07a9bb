//! The byte stream a connection reads from: the plain TCP socket, or a TLS
//! session over it whose handshake src/tls/handshake.rs has already completed.
//!
//! src/conn/ sees only this: a non-blocking read, a wait for input (the
//! shared shutdown wake-up included) and non-blocking mode. With TLS, input
//! may already sit in the session (src/tls/record.rs) while the socket has
//! nothing: the wait returns at once then, so nothing is left behind a poll.

use std::io::{self, Read};
use std::net::TcpStream;

use std::time::Duration;

use crate::tls::record::{Ending, Session};
use crate::tls::rustls::RustlsSession;
use crate::wake::{Ready, Wake};

pub enum Stream<'a> {
    Plain(&'a TcpStream),
    /// Boxed from its creation in src/tls/handshake.rs (the session holds keys and
    /// buffers): a by-value session is copied through the handshake's
    /// stack frames, and every stack page a worker touches stays resident
    /// for as long as its connection lives.
    Tls {
        session: Box<Session>,
        sock: &'a TcpStream,
    },
    /// A TLS session read by rustls (src/tls/rustls.rs): `record_layer =
    /// "rustls"`, or a suite floodwall's layer cannot open.
    RustlsTls {
        session: Box<RustlsSession>,
        sock: &'a TcpStream,
    },
}

impl Stream<'_> {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls { sock, .. } | Stream::RustlsTls { sock, .. } => sock,
        }
    }

    /// A quiet connection keeps no TLS staging buffer (see src/conn/'s own
    /// read buffer).
    pub fn release(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Tls { session, .. } => session.release(),
            Stream::RustlsTls { session, .. } => session.release(),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// Input already sits in the TLS session (plaintext, a whole record,
    /// its end): a read gives something without polling the socket.
    pub fn has_input(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls { session, .. } => session.has_input(),
            Stream::RustlsTls { session, .. } => session.has_input(),
        }
    }

    /// [`Wake::wait`] on the socket, except that input the session already
    /// holds (plaintext, a whole record, the client's close_notify) counts
    /// at once.
    pub fn wait(
        &mut self,
        wake: &Wake,
        timeout: Option<Duration>,
        watch: bool,
    ) -> io::Result<Ready> {
        if self.has_input() {
            return Ok(Ready::Socket);
        }
        wake.wait(self.tcp(), timeout, watch)
    }

    /// Plain: one read. TLS: opens records until `buf` is full or the
    /// socket has nothing more (src/tls/record.rs).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls { session, sock } => session.read(sock, buf),
            Stream::RustlsTls { session, sock } => session.read(sock, buf),
        }
    }

    /// After a read returned the end of input: how a TLS session ended
    /// (None for plain TCP, where an EOF is always clean).
    pub fn tls_ending(&self) -> Option<Ending> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls { session, .. } => Some(session.ending()),
            Stream::RustlsTls { session, .. } => Some(session.ending()),
        }
    }

    /// Appends `data` to `out` as it goes on the wire: as is, or sealed
    /// in TLS records (a RELP session's answers).
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Stream::Plain(_) => {
                out.extend_from_slice(data);
                Ok(())
            }
            Stream::Tls { session, .. } => session.seal(data, out),
            Stream::RustlsTls { session, .. } => session.seal(data, out),
        }
    }

    /// At shutdown: the last thing floodwall writes after a handshake.
    /// One non-blocking write: a client whose window is closed misses it.
    pub fn close_notify(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Tls { session, sock } => session.close_notify(sock),
            Stream::RustlsTls { session, sock } => session.close_notify(sock),
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

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConfig, StreamOwned};

    const MESSAGES: usize = 5000;

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        // The suite loggen and rsyslog's ossl driver choose.
        crate::tls::record::tests::configs(
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        )
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
        let wake = Wake::new().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let taken =
            crate::tls::handshake(server_config, &sock, deadline, &wake, Default::default());
        sock.set_nonblocking(true).unwrap();
        let mut stream = taken.unwrap().stream(&sock);
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

    /// A TLS 1.3 client may send its first data in the flight of its
    /// Finished (rsyslog's omrelp sends its RELP `open` so): the handshake
    /// reads it, so it is held in the session, not in the socket. Both
    /// readers must say so, or a session that polls the socket before
    /// reading (RELP's) waits for an answer the client waits for too.
    #[test]
    fn data_sent_with_the_finished_is_held_input_for_both_readers() {
        use crate::config::RecordLayer;
        for layer in [RecordLayer::Floodwall, RecordLayer::Rustls] {
            let (server_config, client_config) = configs();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = thread::spawn(move || {
                let name = ServerName::try_from("localhost").unwrap();
                let mut conn = ClientConnection::new(client_config, name).unwrap();
                let mut sock = TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                // Queued before the handshake: it leaves with the Finished.
                conn.writer().write_all(b"1 open\n").unwrap();
                let mut answer = Vec::new();
                for _ in 0..100 {
                    // Each flight in one write, as one segment.
                    let mut flight = Vec::new();
                    while conn.wants_write() {
                        conn.write_tls(&mut flight).unwrap();
                    }
                    sock.write_all(&flight).unwrap();
                    if conn.read_tls(&mut sock).unwrap() == 0 {
                        break;
                    }
                    conn.process_new_packets().unwrap();
                    let _ = conn.reader().read_to_end(&mut answer);
                    if answer.ends_with(b"\n") {
                        break;
                    }
                }
                answer
            });
            let (sock, _) = listener.accept().unwrap();
            let wake = Wake::new().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let taken = crate::tls::handshake(server_config, &sock, deadline, &wake, layer);
            sock.set_nonblocking(true).unwrap();
            let mut stream = taken.unwrap().stream(&sock);
            assert!(stream.has_input(), "{layer:?}: the open is not held");
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"1 open\n", "{layer:?}");
            let mut out = Vec::new();
            stream.seal(b"1 rsp 6 200 OK\n", &mut out).unwrap();
            sock.set_nonblocking(false).unwrap();
            (&sock).write_all(&out).unwrap();
            assert_eq!(client.join().unwrap(), b"1 rsp 6 200 OK\n", "{layer:?}");
        }
    }
}
