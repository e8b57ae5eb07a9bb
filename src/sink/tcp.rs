//! The tcp sink: forwards messages to a downstream collector over one TCP
//! connection per sink worker, LF-terminated or octet-counted (RFC 6587).
//!
//! It connects lazily and reconnects on the next write after any failure;
//! the sink thread ([`super::run`]) paces the retries (100 ms doubling to
//! 5 s) and logs one warning per outage. A write that failed is sent again
//! whole on the new connection: at-least-once, so the downstream may see
//! the tail of one batch twice per outage, never a gap.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use log::{debug, info};

use super::{Sink, write_vectored_all};
use crate::config::{SinkConfig, SinkFraming};
use crate::queue::Batch;

#[derive(Debug)]
pub struct TcpSink {
    address: String,
    framing: SinkFraming,
    connect_timeout: Duration,
    write_timeout: Duration,
    conn: Option<TcpStream>,
    /// Octet-counted output is built here; reused between writes.
    scratch: Vec<u8>,
    connected_once: bool,
}

impl TcpSink {
    pub fn new(config: &SinkConfig) -> TcpSink {
        TcpSink {
            address: config.address.clone().unwrap_or_default(),
            framing: config.framing.unwrap_or(SinkFraming::Lines),
            connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(2)),
            write_timeout: config.write_timeout.unwrap_or(Duration::from_secs(5)),
            conn: None,
            scratch: Vec::new(),
            connected_once: false,
        }
    }

    fn connect(&mut self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: resolves to no address", self.address),
        );
        for addr in self.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(self.write_timeout))?;
                    stream.set_nodelay(true)?;
                    if self.connected_once {
                        debug!("tcp sink reconnected addr={addr}");
                    } else {
                        info!("tcp sink connected addr={addr}");
                        self.connected_once = true;
                    }
                    return Ok(stream);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect {addr}: {e}")),
            }
        }
        Err(last)
    }

    fn send(&mut self, stream: &mut TcpStream, batches: &[Batch]) -> io::Result<()> {
        // Always from the start: a retry after a failure re-sends whole.
        let mut done = 0;
        match self.framing {
            SinkFraming::Lines => {
                let bufs: Vec<&[u8]> = batches.iter().map(Batch::as_lines).collect();
                write_vectored_all(stream, &bufs, &mut done)
            }
            SinkFraming::OctetCounted => {
                self.scratch.clear();
                for m in batches.iter().flat_map(Batch::messages) {
                    let _ = write!(self.scratch, "{} ", m.len());
                    self.scratch.extend_from_slice(m);
                }
                stream.write_all(&self.scratch)
            }
        }
    }
}

impl Sink for TcpSink {
    fn write(&mut self, batches: &[Batch]) -> io::Result<()> {
        let mut stream = match self.conn.take() {
            Some(s) => s,
            None => self.connect()?,
        };
        self.send(&mut stream, batches)?;
        self.conn = Some(stream);
        Ok(())
    }
}
