//! TLS for the listener and the tcp sink (rustls with the ring provider):
//! loading the PEM files named in `[server.tls]` and `[sink.tls]`, the
//! server handshake with its single deadline, the client-certificate
//! check against `permitted_peers`, and the SIGHUP reload.
//!
//! It owns no socket and no thread: the worker thread calls
//! [`ServerTls::accept`] on its own socket after its permit (the accept
//! loop never touches TLS), then hands the resulting [`Stream`] to
//! src/conn/, which only reads from it. A refused handshake is counted
//! `closed_tls` and warned at most once a second, naming the peer and why.
//!
//! floodwall sends no TLS 1.3 session tickets and nothing else after the
//! handshake (except close_notify at shutdown): syslog senders never read,
//! and unread bytes in a client's receive buffer turn its close into a
//! reset that throws away what it had not yet sent.
//!
//! One file per idea, in the order a connection meets them:
//! - this file: [`ServerTls`], the listener's reloadable TLS, and the
//!   error every TLS file problem becomes;
//! - `pem.rs`: the PEM files to rustls's server and client configs;
//! - `peer.rs`: `permitted_peers`, a certificate's names and fingerprint,
//!   the verifier;
//! - `handshake.rs`: the server handshake and the take-over after it (and
//!   the tcp sink's client handshake);
//! - `record.rs`: floodwall's own record layer, which reads a session
//!   once the handshake is done; `rustls.rs`: rustls's reader, for the
//!   suites it cannot open or `record_layer = "rustls"`; `diff.rs`: the
//!   differential proof of the first against the second (tests only);
//! - `stream.rs`: the [`Stream`] a connection reads, plain or either
//!   session.

#[cfg(test)]
mod diff;
mod handshake;
mod peer;
mod pem;
pub mod record;
pub mod rustls;
pub mod stream;

pub(crate) use handshake::handshake;
pub use handshake::{HandshakeEnd, Taken, connect, record_layer_opens};
pub use peer::{PeerPattern, fingerprint, peer_names};
pub use pem::{check_files, client_config, server_config};
pub use stream::Stream;

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::rustls::ServerConfig;
use log::{info, warn};
use parking_lot::RwLock;

use crate::alerts::{Throttle, suppressed};
use crate::config::{RecordLayer, ServerTlsConfig};
use crate::stats::Stats;
use crate::wake::Wake;

/// A TLS file that cannot be used; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

pub(crate) fn tls_error(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

/// What a handshake uses; replaced whole on SIGHUP.
struct Current {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    record_layer: RecordLayer,
    files: String,
}

/// The listener's TLS: the current config (reloadable) and the warning
/// throttle for refusals.
pub struct ServerTls {
    current: RwLock<Arc<Current>>,
    /// One warning per second for refused handshakes.
    refused: Throttle,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.current.read().files)
            .finish()
    }
}

fn describe(tls: &ServerTlsConfig) -> String {
    let path = |p: &PathBuf| p.display().to_string();
    format!(
        "cert={} key={} client_ca={} permitted_peers={}",
        path(&tls.cert),
        path(&tls.key),
        path(&tls.client_ca),
        tls.permitted_peers.len()
    )
}

impl ServerTls {
    pub fn new(tls: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(Arc::new(Current {
                config: server_config(tls)?,
                handshake_timeout: tls.handshake_timeout,
                record_layer: tls.record_layer,
                files: describe(tls),
            })),
            refused: Throttle::default(),
        })
    }

    /// SIGHUP: loads the files again for new connections; on failure the
    /// old config stays and one error line says why (naming the file).
    pub fn reload(&self, tls: &ServerTlsConfig) -> Result<(), TlsError> {
        let config = server_config(tls)?;
        let files = describe(tls);
        // Swapped before the line is logged: a connection opened after the
        // line gets the new files.
        *self.current.write() = Arc::new(Current {
            config,
            handshake_timeout: tls.handshake_timeout,
            record_layer: tls.record_layer,
            files: files.clone(),
        });
        info!("TLS reloaded for new connections {files}");
        Ok(())
    }

    /// Runs the server handshake on `tcp` within `handshake_timeout` of
    /// now (the whole handshake, reads and writes alike; the shutdown
    /// wake-up ends it too); on refusal counts `closed_tls` and warns
    /// (throttled).
    pub fn accept<'a>(
        &self,
        tcp: &'a TcpStream,
        peer: SocketAddr,
        stats: &Stats,
        wake: &Wake,
    ) -> Result<Stream<'a>, HandshakeEnd> {
        let current = self.current.read().clone();
        let deadline = Instant::now() + current.handshake_timeout;
        match handshake(
            current.config.clone(),
            tcp,
            deadline,
            wake,
            current.record_layer,
        ) {
            // src/conn/ takes over the socket (non-blocking, polled); the
            // only write left is a close_notify at shutdown.
            Ok(taken) => Ok(taken.stream(tcp)),
            Err(HandshakeEnd::Refused(reason)) => Err(self.refused(peer, stats, reason)),
            Err(end) => Err(end),
        }
    }

    /// Counts and warns a refused handshake. Out of line: its formatting
    /// would otherwise widen `accept`'s frame, which sits under the whole
    /// handshake (see `Stream::Tls` on resident stack pages).
    #[cold]
    #[inline(never)]
    fn refused(&self, peer: SocketAddr, stats: &Stats, reason: String) -> HandshakeEnd {
        Stats::add(&stats.closed_tls, 1);
        if let Some(n) = self.refused.allow() {
            warn!(
                "TLS handshake refused, connection closed peer={peer} reason=\"{reason}\"{}",
                suppressed(n)
            );
        }
        HandshakeEnd::Refused(reason)
    }
}
