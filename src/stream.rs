//! The byte stream a connection reads from: the plain TCP socket, or a TLS
//! session over it whose handshake src/tls.rs has already completed.
//!
//! conn.rs sees only this: read, wait for the first byte without buffering
//! it, socket timeouts and non-blocking mode. Timeouts and shutdown(Read)
//! act on the TCP socket underneath either way.

use std::io::{self, Read};
use std::net::TcpStream;

use rustls::{ServerConnection, StreamOwned};

pub enum Stream<'a> {
    Plain(&'a TcpStream),
    Tls(Box<StreamOwned<ServerConnection, &'a TcpStream>>),
}

impl Stream<'_> {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.sock,
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// Waits until something is readable without taking it: Ok(0) at EOF.
    /// Lets an idle connection hold no read buffer.
    pub fn wait_readable(&mut self) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.peek(&mut [0u8; 1]),
            Stream::Tls(s) => {
                let state = s.conn.process_new_packets().map_err(io::Error::other)?;
                if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                    return Ok(1);
                }
                s.sock.peek(&mut [0u8; 1])
            }
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // After the handshake a close without close_notify is an
                // ordinary EOF (SPEC "Access control and TLS").
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }

    /// At shutdown: the one thing floodwall writes after a handshake.
    /// Bounded by the socket's write timeout (set short after the
    /// handshake).
    pub fn close_notify(&mut self) {
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.conn.write_tls(&mut s.sock);
        }
    }
}
