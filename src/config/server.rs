//! `[server]`: the main listener (address, backlog, framing, keepalive,
//! the largest message), who may connect (`allow`, the per-IP cap) and
//! whose PROXY headers are believed. Its `[server.tls]` sub-table is
//! checked in [`super::tls`].
//!
//! Validation resolves `listen` and parses the two network lists once,
//! into [`ServerSettings`]; the rest of the table is used as written.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::net::{parse_nets, resolve};
use super::tls::ServerTlsConfig;
use super::units::{at_most_max, duration, format_duration};
use super::{ConfigError, in_range, invalid, out_of_range};

/// Upper bounds that keep a typo from asking for absurd resources.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 << 20;
pub const MAX_BACKLOG: u32 = 65535;
/// Also the bound of `limits.max_connections`.
pub const MAX_CONNECTIONS_LIMIT: usize = 100_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    Lines,
    OctetCounted,
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub backlog: u32,
    #[serde(with = "duration")]
    pub tcp_keepalive: Duration,
    pub framing: Framing,
    pub max_message_bytes: usize,
    /// Every connection starts with a PROXY protocol v1 or v2 header.
    pub proxy_protocol: bool,
    /// CIDRs (or bare addresses) whose PROXY headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Source CIDRs that may connect; empty = everyone.
    pub allow: Vec<String>,
    /// Live connections per source IP; 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Present = the listener speaks TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:5140".to_string(),
            backlog: 1024,
            tcp_keepalive: Duration::from_secs(60),
            framing: Framing::Auto,
            max_message_bytes: 65536,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            allow: Vec::new(),
            max_connections_per_ip: 0,
            tls: None,
        }
    }
}

/// What validation computed from `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// `server.listen` resolved.
    pub listen: SocketAddr,
    /// `server.trusted_proxies` parsed.
    pub trusted_proxies: Vec<IpNet>,
    /// `server.allow` parsed; empty = everyone.
    pub allow: Vec<IpNet>,
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<ServerSettings, ConfigError> {
        let listen = resolve("server.listen", &self.listen)?;
        in_range("server.backlog", self.backlog, 1..=MAX_BACKLOG)?;
        in_range(
            "server.max_message_bytes",
            self.max_message_bytes,
            1..=MAX_MESSAGE_BYTES_LIMIT,
        )?;
        if !self.tcp_keepalive.is_zero() && self.tcp_keepalive < Duration::from_secs(1) {
            return Err(out_of_range(
                "server.tcp_keepalive",
                format!("{:?}", format_duration(&self.tcp_keepalive)),
                "\"0s\" (off) or at least \"1s\" (the kernel counts keepalive in seconds)",
            ));
        }
        at_most_max("server.tcp_keepalive", self.tcp_keepalive)?;
        let trusted_proxies = self.trusted_proxies()?;
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(invalid(
                "server.trusted_proxies",
                "[] is empty but server.proxy_protocol = true; allowed: the CIDRs of the balancers, such as [\"10.0.0.0/8\"]",
            ));
        }
        let allow = parse_nets(
            "server.allow",
            &self.allow,
            "\"10.0.0.0/8\", \"::1/128\", or an address",
        )?;
        if self.max_connections_per_ip > MAX_CONNECTIONS_LIMIT {
            return Err(out_of_range(
                "server.max_connections_per_ip",
                self.max_connections_per_ip,
                format!("0 (no cap) ..={MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(ServerSettings {
            listen,
            trusted_proxies,
            allow,
        })
    }

    /// `server.trusted_proxies` parsed; a bare address is a one-address
    /// network.
    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        parse_nets(
            "server.trusted_proxies",
            &self.trusted_proxies,
            "\"10.0.0.0/8\", \"::1/128\" or a bare address",
        )
    }
}
