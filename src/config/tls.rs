//! `[server.tls]` and `[sink.tls]`: the TLS files are only named here
//! (src/tls/pem.rs loads them, at start, for `--check-config` and on SIGHUP),
//! and `permitted_peers` entries are parsed here into [`PeerPattern`]s,
//! with the config's other parsers: src/tls/peer.rs matches certificates
//! against them and imports nothing else from the config's rules, so the
//! two modules no longer import each other.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};

use super::net::host_of;
use super::units::{MAX_DURATION, duration, format_duration};
use super::{ConfigError, invalid, out_of_range};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[server.tls] record_layer`: who opens the client's records after the
/// handshake (src/tls/handshake.rs): floodwall's own layer (src/tls/record.rs) or
/// rustls's reader, so an operator can turn ours off without a rebuild.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordLayer {
    #[default]
    Floodwall,
    Rustls,
}

/// `[server.tls]`: the listener's certificate, and who may connect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Empty = no client certificates asked for.
    #[serde(default)]
    pub client_ca: PathBuf,
    #[serde(default)]
    pub permitted_peers: Vec<String>,
    #[serde(with = "duration", default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
    #[serde(default)]
    pub record_layer: RecordLayer,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_min_version() -> TlsVersion {
    TlsVersion::V1_2
}

impl ServerTlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("server.tls.cert", &self.cert),
            ("server.tls.key", &self.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "\"\" is empty; allowed: a PEM file path"));
            }
        }
        if !self.permitted_peers.is_empty() && self.client_ca.as_os_str().is_empty() {
            return Err(invalid(
                "server.tls.permitted_peers",
                "set without server.tls.client_ca; allowed: only with client_ca (mutual TLS), since peers are named by their client certificate",
            ));
        }
        self.permitted_peers()?;
        if self.handshake_timeout.is_zero() || self.handshake_timeout > MAX_DURATION {
            return Err(out_of_range(
                "server.tls.handshake_timeout",
                format!("{:?}", format_duration(&self.handshake_timeout)),
                "a positive duration such as \"10s\"",
            ));
        }
        Ok(())
    }

    /// `permitted_peers` parsed; the first bad entry is the error.
    pub fn permitted_peers(&self) -> Result<Vec<PeerPattern>, ConfigError> {
        self.permitted_peers
            .iter()
            .map(|entry| {
                PeerPattern::parse(entry).map_err(|why| {
                    invalid(
                        "server.tls.permitted_peers",
                        format!(
                            "{entry:?} {why}; allowed: a DNS name, \"*.example.net\" (one label) or \"sha256:<64 hex digits>\""
                        ),
                    )
                })
            })
            .collect()
    }
}

/// One `permitted_peers` entry (src/tls/peer.rs matches certificates with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPattern {
    /// A DNS name, lower case.
    Name(String),
    /// `*.example.net`: the suffix after `*.`, lower case.
    Wildcard(String),
    /// `sha256:` of the leaf's DER.
    Fingerprint([u8; 32]),
}

impl PeerPattern {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<PeerPattern, String> {
        let entry = entry.trim();
        if entry.len() >= 7 && entry[..7].eq_ignore_ascii_case("sha256:") {
            let hex: String = entry[7..].chars().filter(|c| *c != ':').collect();
            let mut out = [0u8; 32];
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err("is not a sha256 fingerprint (64 hex digits, colons optional)".into());
            }
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|e| format!("bad hex: {e}"))?;
            }
            return Ok(PeerPattern::Fingerprint(out));
        }
        if entry.is_empty() {
            return Err("is empty".into());
        }
        if let Some(suffix) = entry.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || suffix.starts_with('.') {
                return Err("is not a one-label wildcard".into());
            }
            return Ok(PeerPattern::Wildcard(suffix.to_ascii_lowercase()));
        }
        if entry.contains('*') {
            return Err("has a wildcard that is not the whole first label".into());
        }
        Ok(PeerPattern::Name(entry.to_ascii_lowercase()))
    }
}

/// `[sink.tls]`: how the tcp and relp sinks verify their downstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkTlsConfig {
    pub ca: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `[sink.tls]` validated: the files as written (with `server_name`
/// filled in, for the effective config) and the name to verify, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTlsSettings {
    pub files: SinkTlsConfig,
    /// `server_name`, or the host of `sink.address` when it is not set.
    pub server_name: ServerName<'static>,
}

impl SinkTlsConfig {
    /// `address` is `sink.address`, whose host is the default name.
    pub(super) fn validate(&self, address: &str) -> Result<SinkTlsSettings, ConfigError> {
        if self.ca.as_os_str().is_empty() {
            return Err(invalid(
                "sink.tls.ca",
                "\"\" is empty; allowed: a PEM file of trust anchors (required)",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(
                "sink.tls.key",
                "cert and key go together; allowed: both (mutual TLS) or neither",
            ));
        }
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(address).to_string());
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            invalid(
                "sink.tls.server_name",
                format!(
                    "{name:?} is not a DNS name or IP address; allowed: the name in the downstream's certificate"
                ),
            )
        })?;
        Ok(SinkTlsSettings {
            files: SinkTlsConfig {
                server_name: Some(name),
                ..self.clone()
            },
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "sha256:abcd", "a.*.example.net", "*.", "**.x"] {
            assert!(PeerPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            PeerPattern::parse("*.Example.NET"),
            Ok(PeerPattern::Wildcard("example.net".to_string()))
        );
    }
}
