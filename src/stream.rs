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
    },
}

impl Stream<'_> {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls { sock, .. } => sock,
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// [`Wake::wait`] on the socket, except that plaintext rustls already
    /// holds (or its peer's close_notify) counts as input at once.
    pub fn wait(
        &mut self,
        wake: &Wake,
        timeout: Option<Duration>,
        watch: bool,
    ) -> io::Result<Ready> {
        if let Stream::Tls { conn, .. } = self {
            let state = conn.process_new_packets().map_err(io::Error::other)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(Ready::Socket);
            }
        }
        wake.wait(self.tcp(), timeout, watch)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls { conn, sock } => match rustls::Stream::new(&mut **conn, sock).read(buf) {
                // After the handshake a close without close_notify is an
                // ordinary EOF (SPEC "Access control and TLS").
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }

    /// At shutdown: the one thing floodwall writes after a handshake.
    /// One non-blocking write: a client whose window is closed misses it.
    pub fn close_notify(&mut self) {
        if let Stream::Tls { conn, sock } = self {
            conn.send_close_notify();
            let _ = sock.set_nonblocking(true);
            let _ = conn.write_tls(sock);
        }
    }
}
