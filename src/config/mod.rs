//! The configuration: one serde struct per TOML table, field names equal to
//! the TOML keys, defaults from SPEC.md, one file per table; and
//! [`Config::validate`], which turns "parses" into "makes sense" and
//! returns [`Settings`]: the effective configuration plus what validation
//! computed (addresses resolved, networks and the sink's keys typed), so
//! that start-up validates once and uses the result.
//!
//! Each table validates itself (`server.rs`, `tls.rs` for `[server.tls]`
//! and `[sink.tls]`, `limits.rs`, `queue.rs`, `sink.rs`, `relp.rs`,
//! `spool.rs`, `metrics.rs`, `log.rs`, `shutdown.rs`); `units.rs` holds
//! durations and byte sizes, `net.rs` addresses and networks, and this
//! file the list of tables, loading and the error type.
//!
//! Every error is a [`ConfigError`] whose message names the key, the bad
//! value and what is allowed, so an operator can fix the file without
//! reading code. Nothing here touches sockets or files beyond reading the
//! config file itself (and resolving addresses): a config is validated
//! completely before the daemon starts anything, so a bad one never
//! half-starts it.

mod limits;
mod log;
mod metrics;
mod net;
mod queue;
mod relp;
mod server;
mod shutdown;
mod sink;
mod spool;
pub mod tls;
mod units;

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::limits::{LimitsConfig, OnConnectionLimit, OnSendTimeout};
pub use self::log::LogConfig;
pub use self::metrics::MetricsConfig;
pub use self::net::{host_of, parse_net};
pub use self::queue::QueueConfig;
pub use self::relp::{RelpConfig, RelpSettings};
pub use self::server::{Framing, ServerConfig, ServerSettings};
pub use self::shutdown::ShutdownConfig;
pub use self::sink::{
    Destination, DownstreamSettings, NatsSettings, SinkConfig, SinkFraming, SinkSettings, SinkType,
};
pub use self::spool::SpoolConfig;
pub use self::tls::{
    PeerPattern, RecordLayer, ServerTlsConfig, SinkTlsConfig, SinkTlsSettings, TlsVersion,
};

/// Why a configuration was refused. The message always starts with the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// "`key`: `value` is out of range; allowed: `allowed`": every range
/// error reads the same.
fn out_of_range(key: &'static str, value: impl Display, allowed: impl Display) -> ConfigError {
    invalid(key, format!("{value} is out of range; allowed: {allowed}"))
}

/// `value` if it lies in `range`, else the error naming the key, the
/// value and the range ("sink.window: 0 is out of range; allowed:
/// 1..=65536").
fn in_range<T: PartialOrd + Display>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range(
            key,
            &value,
            format!("{}..={}", range.start(), range.end()),
        ))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub queue: QueueConfig,
    pub sink: SinkConfig,
    /// Present = a disk spool between the queue and the sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolConfig>,
    /// Present = a RELP listener beside `[server]`'s (docs/relp.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relp: Option<RelpConfig>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

/// A configuration that passed [`Config::validate`]: the effective
/// configuration, and per table what validation computed from it. Tables
/// with nothing to compute (`[limits]`, `[queue]`, `[spool]`, `[log]`,
/// `[shutdown]`) have nothing optional left either: they are read from
/// `config` as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file with every default of the chosen sink type written out
    /// (what `--check-config` prints).
    pub config: Config,
    pub server: ServerSettings,
    pub sink: SinkSettings,
    /// With `[relp]`.
    pub relp: Option<RelpSettings>,
    /// The metrics endpoint's address, resolved; None when it is off.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Settings::load(path).map(|s| s.config)
    }

    /// Parses and validates TOML text; returns the effective configuration.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Settings::parse(text).map(|s| s.config)
    }

    /// Checks every table, in the order of the file's tables, and every
    /// rule across them; returns the settings start-up runs on.
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        let server = self.server.validate()?;
        self.limits.validate(&self.server)?;
        self.queue.validate()?;
        let sink = self.sink.validate()?;
        if let Some(spool) = &self.spool {
            spool.validate()?;
        }
        let relp = match &self.relp {
            Some(relp) => Some(relp.validate(&self.server)?),
            None => None,
        };
        let metrics = self.metrics.validate()?;
        self.log.validate()?;
        self.shutdown.validate()?;
        self.sink = sink.to_config();
        Ok(Settings {
            config: self,
            server,
            sink,
            relp,
            metrics,
        })
    }

    /// `server.trusted_proxies` parsed; a bare address is a one-address
    /// network.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.server.trusted_proxies()
    }

    /// The effective configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl Settings {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text).map_err(|e| match e {
            // A syntax error (or an unknown table) names the file, not
            // just "config".
            ConfigError::Parse { path: p, message } if p == "config" => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            e => e,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: "config".to_string(),
            message: format!("{}{}", one_line(e.message()), at_line(text, e.span())),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = plain_types(&one_line(e.inner().message()));
            ConfigError::Parse {
                path: if path == "." {
                    "config".to_string()
                } else {
                    path
                },
                message,
            }
        })?;
        config.validate()
    }
}

/// Where a syntax error is: line and column (both from 1) and the text
/// of that line, so that the reader sees what the parser saw.
fn at_line(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line = text[..start].matches('\n').count() + 1;
            let column = text[line_start..start].chars().count() + 1;
            let shown = text[line_start..].lines().next().unwrap_or("").trim_end();
            format!(" (line {line}, column {column}: `{shown}`)")
        }
        None => String::new(),
    }
}

/// serde names Rust types ("expected usize"); say what to write instead.
fn plain_types(message: &str) -> String {
    [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected f64", "expected a number"),
        (
            "expected a string",
            "expected a quoted string (durations look like \"250ms\" or \"30s\")",
        ),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// serde's messages can span lines (toml adds a source excerpt); an error
/// line in the log should stay one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The error `text` is refused with, as the operator sees it.
    pub(super) fn err(text: &str) -> String {
        Config::parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn spool_table_parses_byte_sizes_and_round_trips() {
        let c = Config::parse(
            "[spool]\ndir = \"/tmp/s\"\nmax_bytes = \"1GiB\"\nsegment_bytes = 65536\nsync = \"0s\"",
        )
        .unwrap();
        let s = c.spool.as_ref().unwrap();
        assert_eq!((s.max_bytes, s.segment_bytes), (1 << 30, 64 << 10));
        assert_eq!(s.sync, Duration::ZERO);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        let d = Config::parse("[spool]\n").unwrap().spool.unwrap();
        assert_eq!((d.max_bytes, d.segment_bytes), (1 << 30, 64 << 20));
        assert!(Config::parse("").unwrap().spool.is_none());
    }

    #[test]
    fn bad_spool_sizes_name_the_key() {
        let e = err("[spool]\nmax_bytes = \"12 parsecs\"");
        assert!(
            e.contains("spool.max_bytes") && e.contains("12 parsecs") && e.contains("KiB"),
            "{e}"
        );
        let e = err("[spool]\nsegment_bytes = 100");
        assert!(
            e.contains("spool.segment_bytes") && e.contains("100"),
            "{e}"
        );
        let e = err("[spool]\nmax_bytes = \"1MiB\"\nsegment_bytes = \"2MiB\"");
        assert!(
            e.contains("spool.max_bytes") && e.contains("1048576"),
            "{e}"
        );
        let e = err("[spool]\nsize = 1");
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5140");
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.limits.send_timeout, Duration::from_secs(1));
        assert_eq!(c.queue.capacity, 65536);
        assert_eq!(c.sink.kind, SinkType::Stdout);
        assert_eq!(c.shutdown.timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_names_the_key() {
        let e = err("[limits]\nmax_conections = 5\n");
        assert!(e.contains("limits"), "{e}");
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn unknown_table_is_refused() {
        let e = err("[limitz]\n");
        assert!(e.contains("limitz"), "{e}");
    }

    #[test]
    fn zero_max_connections_is_refused() {
        let e = err("[limits]\nmax_connections = 0\n");
        assert!(e.starts_with("limits.max_connections:"), "{e}");
    }

    #[test]
    fn watermarks_must_be_ordered() {
        let e = err("[queue]\npause_accept_above = 0.5\nresume_accept_below = 0.5\n");
        assert!(e.starts_with("queue.resume_accept_below:"), "{e}");
        let e = err("[queue]\npause_accept_above = 1.5\n");
        assert!(e.starts_with("queue.pause_accept_above:"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let e = err("[limits]\nsend_timeout = \"soon\"\n");
        assert!(e.starts_with("limits.send_timeout:"), "{e}");
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn durations_parse_humantime() {
        let c =
            Config::parse("[limits]\nsend_timeout = \"250ms\"\nidle_timeout = \"0s\"\n").unwrap();
        assert_eq!(c.limits.send_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.idle_timeout, Duration::ZERO);
    }

    #[test]
    fn bad_enum_value_names_key() {
        let e = err("[server]\nframing = \"xml\"\n");
        assert!(e.starts_with("server.framing:"), "{e}");
        assert!(e.contains("xml"), "{e}");
    }

    #[test]
    fn bad_listen_address_names_key() {
        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert!(e.starts_with("server.listen:"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err("[limits]\nmax_connections = \"many\"\n");
        assert!(e.starts_with("limits.max_connections:"), "{e}");
    }

    #[test]
    fn absurd_durations_are_refused_not_overflowed() {
        let e = err("[limits]\nsend_timeout = \"292000000000y\"\n");
        assert!(e.starts_with("limits.send_timeout:"), "{e}");
        let e = err("[shutdown]\ntimeout = \"400days\"\n");
        assert!(e.starts_with("shutdown.timeout:"), "{e}");
    }

    #[test]
    fn no_idle_timeout_and_no_keepalive_is_refused() {
        let e = err("[server]\ntcp_keepalive = \"0s\"\n[limits]\nidle_timeout = \"0s\"\n");
        assert!(e.starts_with("limits.idle_timeout:"), "{e}");
        assert!(e.contains("server.tcp_keepalive"), "{e}");
        Config::parse("[limits]\nidle_timeout = \"0s\"\n").unwrap();
    }

    #[test]
    fn queue_capacity_is_bounded() {
        let e = err("[queue]\ncapacity = 18446744073709551615\n");
        assert!(e.starts_with("queue.capacity"), "{e}");
        let e = err("[queue]\ncapacity = 16777217\n");
        assert!(e.starts_with("queue.capacity:"), "{e}");
        assert!(e.contains("16777216"), "{e}");
        Config::parse("[queue]\ncapacity = 16777216\n").unwrap();
    }

    #[test]
    fn sub_second_keepalive_is_refused() {
        let e = err("[server]\ntcp_keepalive = \"500ms\"\n");
        assert!(e.starts_with("server.tcp_keepalive:"), "{e}");
        Config::parse("[server]\ntcp_keepalive = \"0s\"\n").unwrap();
    }

    #[test]
    fn type_errors_say_what_to_write() {
        let e = err("[limits]\nmax_connections = \"many\"\n");
        assert!(e.contains("whole number"), "{e}");
        let e = err("[limits]\nsend_timeout = 5\n");
        assert!(e.contains("\"30s\""), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = err("[limits]\nmax_connections =\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let e = err("[server]\nproxy_protocol = true\n");
        assert!(e.starts_with("server.trusted_proxies:"), "{e}");
        let e = err("[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
        assert!(
            e.starts_with("server.trusted_proxies:") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let c = Config::parse(
            "[server]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\", \"::1/128\"]\n",
        )
        .unwrap();
        assert_eq!(c.trusted_proxies().unwrap().len(), 2);
    }

    #[test]
    fn access_and_tls_keys_are_validated() {
        let e = err("[server]\nallow = [\"10.0.0.0/33\"]\n");
        assert!(e.starts_with("server.allow:"), "{e}");
        let c = Config::parse("[server]\nallow = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert_eq!(c.server.allow.len(), 2);
        let tls = "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let e = err(&format!("{tls}permitted_peers = [\"a.example\"]\n"));
        assert!(e.starts_with("server.tls.permitted_peers:"), "{e}");
        assert!(e.contains("client_ca"), "{e}");
        let e = err(&format!("{tls}min_version = \"1.1\"\n"));
        assert!(e.starts_with("server.tls.min_version:"), "{e}");
        let e = err(&format!("{tls}handshake_timeout = \"0s\"\n"));
        assert!(e.starts_with("server.tls.handshake_timeout:"), "{e}");
        let c = Config::parse(tls).unwrap();
        let t = c.server.tls.unwrap();
        assert_eq!(t.handshake_timeout, Duration::from_secs(10));
        assert_eq!(t.min_version, TlsVersion::V1_2);
        assert_eq!(t.record_layer, RecordLayer::Floodwall);
        let e = err(&format!("{tls}record_layer = \"openssl\"\n"));
        assert!(e.starts_with("server.tls.record_layer:"), "{e}");
        assert!(e.contains("floodwall") && e.contains("rustls"), "{e}");
        let c = Config::parse(&format!("{tls}record_layer = \"rustls\"\n")).unwrap();
        assert_eq!(c.server.tls.unwrap().record_layer, RecordLayer::Rustls);
    }

    #[test]
    fn relp_is_off_by_default_and_validated() {
        assert_eq!(Config::parse("").unwrap().relp, None);
        let s = Settings::parse("[relp]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(
            s.relp.map(|r| r.listen),
            Some("127.0.0.1:0".parse().unwrap())
        );
        let e = err("[relp]\n");
        assert!(e.starts_with("relp.listen:"), "{e}");
        let e = err("[relp]\nlisten = \"2514\"\n");
        assert!(e.starts_with("relp.listen:"), "{e}");
        let e = err("[relp]\nlisten = \"127.0.0.1:0\"\ntls = true\n");
        assert!(e.starts_with("relp.tls:"), "{e}");
        // RELP over TLS runs on either record layer.
        let c = Config::parse(
            "[relp]\nlisten = \"127.0.0.1:0\"\ntls = true\n[server.tls]\ncert = \"c\"\nkey = \"k\"\nrecord_layer = \"rustls\"\n",
        )
        .unwrap();
        assert!(c.relp.is_some_and(|r| r.tls));
        let e = err("[relp]\nlisten = \"127.0.0.1:0\"\nwindow = 3\n");
        assert!(e.contains("window"), "{e}");
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_validated() {
        assert_eq!(Settings::parse("").unwrap().metrics, None);
        let s = Settings::parse("[metrics]\nlisten = \"127.0.0.1:9140\"\n").unwrap();
        assert_eq!(s.metrics, Some("127.0.0.1:9140".parse().unwrap()));
        let e = err("[metrics]\nlisten = \"9140\"\n");
        assert!(e.starts_with("metrics.listen:"), "{e}");
        assert!(e.contains("9140") && e.contains("host:port"), "{e}");
        let e = err("[metrics]\nport = 9140\n");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::parse("[sink]\ntype = \"file\"\npath = \"/tmp/x\"\n").unwrap();
        let again = Config::parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }
}
