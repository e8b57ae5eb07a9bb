//! `[relp]`: a table present only when the RELP listener is wanted
//! (docs/relp.md). It shares `[limits]` (connections, timeouts),
//! `server.allow` and the per-IP cap with the main listener; `tls = true`
//! takes `[server.tls]`. Validated into [`RelpSettings`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::net::resolve;
use super::server::ServerConfig;
use super::{ConfigError, invalid};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelpConfig {
    /// "host:port"; port 0 picks a free port. Required.
    pub listen: String,
    /// Speak TLS with `[server.tls]`'s certificate and client checks.
    pub tls: bool,
}

/// `[relp]` validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelpSettings {
    /// `relp.listen` resolved.
    pub listen: SocketAddr,
    /// Speak TLS (there is a `[server.tls]` with floodwall's record layer).
    pub tls: bool,
}

impl RelpConfig {
    pub(super) fn validate(&self, server: &ServerConfig) -> Result<RelpSettings, ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid(
                "relp.listen",
                "\"\" is not an address; allowed: \"host:port\" such as \"127.0.0.1:2514\" (leave out [relp] to turn RELP off)",
            ));
        }
        let listen = resolve("relp.listen", &self.listen)?;
        if self.tls && server.tls.is_none() {
            return Err(invalid(
                "relp.tls",
                "true but there is no [server.tls]; allowed: false, or true with a [server.tls] table (cert, key)",
            ));
        }
        Ok(RelpSettings {
            listen,
            tls: self.tls,
        })
    }
}
