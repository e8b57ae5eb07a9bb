//! Reaching a downstream over TCP, in plaintext or TLS: what the tcp and
//! relp sinks share. [`Downstream`] holds the address (resolved once, by
//! validation: a reconnect never waits on DNS, whose lookups have no timeout),
//! the timeouts and `[sink.tls]` loaded; [`Downstream::connect`] makes
//! one connection ([`Conn`]) with the write timeout set, the TLS
//! handshake done and the server's certificate verified against `ca`
//! and `server_name`. A verification failure is a connect error like any
//! other: the sink retries with back-off, never falls back to plaintext.
//!
//! Not here: what is written on the connection, when to reconnect, and
//! how a sink looks whether the downstream closed it (the tcp sink
//! discards what it reads, the relp sink must keep it: they are acks).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

use crate::config::DownstreamSettings;
use crate::tls;

/// The downstream connection: plain, or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

impl Conn {
    /// The TCP socket under the connection (timeouts, non-blocking mode).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write_vectored(bufs),
            Conn::Tls(s) => s.write_vectored(bufs),
        }
    }

    /// TLS: pushes out the records rustls still holds.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// `[sink.tls]` loaded: what to trust and which name to verify.
struct SinkTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for SinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkTls({:?})", self.server_name)
    }
}

/// Where a network sink connects to, and how.
#[derive(Debug)]
pub struct Downstream {
    /// "tcp sink", "relp sink": how the log lines name the sink.
    name: &'static str,
    address: String,
    /// `address` resolved once at start.
    addrs: Vec<SocketAddr>,
    tls: Option<SinkTls>,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    /// The first connection is logged at info, reconnects at debug.
    connected_once: bool,
}

impl Downstream {
    /// Loads `[sink.tls]`; fails only if its files do not load (start-up
    /// has loaded them once already). The address was resolved by
    /// validation.
    pub fn new(settings: &DownstreamSettings, name: &'static str) -> io::Result<Downstream> {
        let tls = match &settings.tls {
            None => None,
            Some(t) => Some(SinkTls {
                config: tls::client_config(&t.files).map_err(io::Error::other)?,
                server_name: t.server_name.clone(),
            }),
        };
        Ok(Downstream {
            name,
            address: settings.address.clone(),
            addrs: settings.addrs.clone(),
            tls,
            connect_timeout: settings.connect_timeout,
            write_timeout: settings.write_timeout,
            connected_once: false,
        })
    }

    /// One connection to the first address that takes it: TCP within
    /// `connect_timeout`, then (with `[sink.tls]`) the verified handshake
    /// within `connect_timeout` again; writes time out after
    /// `write_timeout`.
    pub fn connect(&mut self) -> io::Result<Conn> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: resolves to no address", self.address),
        );
        for &addr in &self.addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    let conn = match &self.tls {
                        None => Conn::Plain(stream),
                        Some(t) => Conn::Tls(Box::new(
                            tls::connect(&t.config, &t.server_name, stream, self.connect_timeout)
                                .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
                        )),
                    };
                    conn.socket().set_write_timeout(Some(self.write_timeout))?;
                    if self.connected_once {
                        debug!("{} reconnected addr={addr}", self.name);
                    } else {
                        info!("{} connected addr={addr}", self.name);
                        self.connected_once = true;
                    }
                    return Ok(conn);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect {addr}: {e}")),
            }
        }
        Err(last)
    }
}
