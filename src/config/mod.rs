//! The configuration: one serde struct per TOML table, field names equal to
//! the TOML keys, defaults from SPEC.md, and [`Config::validate`], which
//! turns "parses" into "makes sense" (watermark order, sink keys that match
//! the sink type, ...).
//!
//! Every error is a [`ConfigError`] whose message names the key, the bad
//! value and what is allowed, so an operator can fix the file without
//! reading code. Nothing here touches sockets or files beyond reading the
//! config file itself: a config is validated completely before the daemon
//! starts anything, so a bad one never half-starts it.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[server.tls] record_layer`: who opens the client's records after the
/// handshake (src/tls.rs): floodwall's own layer (src/tls_record.rs) or
/// rustls's reader, so an operator can turn ours off without a rebuild.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordLayer {
    #[default]
    Floodwall,
    Rustls,
}

/// `[server.tls]`: the files are only named here; src/tls.rs loads them
/// (at start, for `--check-config`, and on SIGHUP).
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

/// `[sink.tls]`: how the tcp sink verifies its downstream.
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnConnectionLimit {
    Wait,
    Reject,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnSendTimeout {
    Close,
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub on_connection_limit: OnConnectionLimit,
    /// "0s" disables the idle timeout.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub send_timeout: Duration,
    pub on_send_timeout: OnSendTimeout,
    /// Messages per second per connection; 0 = unlimited.
    pub rate_per_connection: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1024,
            on_connection_limit: OnConnectionLimit::Wait,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(1),
            on_send_timeout: OnSendTimeout::Close,
            rate_per_connection: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub capacity: usize,
    pub pause_accept_above: f64,
    pub resume_accept_below: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 65536,
            pause_accept_above: 0.9,
            resume_accept_below: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Stdout,
    File,
    Tcp,
    Nats,
    Relp,
    Null,
}

impl fmt::Display for SinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkType::Stdout => "stdout",
            SinkType::File => "file",
            SinkType::Tcp => "tcp",
            SinkType::Nats => "nats",
            SinkType::Relp => "relp",
            SinkType::Null => "null",
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFraming {
    Lines,
    OctetCounted,
}

/// One flat table for every sink type; [`Config::validate`] checks that
/// only the keys of the chosen type are set and fills their defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    pub workers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framing: Option<SinkFraming>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<Duration>,
    /// nats: server URLs with IP literals ("nats://127.0.0.1:4222").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<Duration>,
    /// relp: messages sent and not yet acknowledged, at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<SinkTlsConfig>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkType::Stdout,
            workers: 1,
            path: None,
            flush_interval: None,
            address: None,
            framing: None,
            connect_timeout: None,
            write_timeout: None,
            servers: None,
            subject: None,
            stream: None,
            max_in_flight: None,
            ack_timeout: None,
            window: None,
            tls: None,
        }
    }
}

/// `[relp]`: a table present only when the RELP listener is wanted. It
/// shares `[limits]` (connections, timeouts), `server.allow` and the per-IP
/// cap with the main listener; `tls = true` takes `[server.tls]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelpConfig {
    /// "host:port"; port 0 picks a free port. Required.
    pub listen: String,
    /// Speak TLS with `[server.tls]`'s certificate and client checks.
    pub tls: bool,
}

impl RelpConfig {
    fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid(
                "relp.listen",
                "\"\" is not an address; allowed: \"host:port\" such as \"127.0.0.1:2514\" (leave out [relp] to turn RELP off)",
            ));
        }
        resolve("relp.listen", &self.listen)?;
        if self.tls && server.tls.is_none() {
            return Err(invalid(
                "relp.tls",
                "true but there is no [server.tls]; allowed: false, or true with a [server.tls] table (cert, key)",
            ));
        }
        // A RELP session writes its answers through the record layer;
        // rustls's reader (the fallback layer) does not seal them yet.
        if self.tls
            && server
                .tls
                .as_ref()
                .is_some_and(|t| t.record_layer == RecordLayer::Rustls)
        {
            return Err(invalid(
                "relp.tls",
                "true with server.tls.record_layer = \"rustls\", which cannot answer RELP sessions yet; allowed: false, or record_layer = \"floodwall\" (the default)",
            ));
        }
        Ok(())
    }
}

/// `[spool]`: a table present only when the spool is wanted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    #[serde(with = "byte_size")]
    pub max_bytes: u64,
    #[serde(with = "byte_size")]
    pub segment_bytes: u64,
    /// fsync interval (group commit); "0s" = every batch.
    #[serde(with = "duration")]
    pub sync: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/floodwall/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            sync: Duration::from_millis(200),
        }
    }
}

/// Smallest segment: a few records of the largest batch still fit in
/// bigger ones; below this the file churn is all overhead.
const MIN_SEGMENT_BYTES: u64 = 4 << 10;
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

impl SpoolConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(invalid(
                "spool.dir",
                "\"\" is not a directory; allowed: a directory path such as \"/var/lib/floodwall/spool\"",
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(invalid(
                "spool.segment_bytes",
                format!(
                    "{} is out of range; allowed: \"4KiB\" ..= \"1GiB\"",
                    self.segment_bytes
                ),
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(invalid(
                "spool.max_bytes",
                format!(
                    "{} is out of range; allowed: at least spool.segment_bytes ({})",
                    self.max_bytes, self.segment_bytes
                ),
            ));
        }
        if self.sync > MAX_DURATION {
            return Err(invalid(
                "spool.sync",
                format!(
                    "{:?} is out of range; allowed: at most {:?}",
                    format_duration(&self.sync),
                    format_duration(&MAX_DURATION)
                ),
            ));
        }
        Ok(())
    }
}

/// `[metrics]`: the Prometheus endpoint (SPEC.md "Metrics endpoint").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// "host:port" serving GET /metrics and GET /healthz; "" = off.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    /// "0s" disables the periodic stats line (the final one is always logged).
    #[serde(with = "duration")]
    pub stats_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            stats_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(10),
        }
    }
}

/// Upper bounds that keep a typo from asking for absurd resources.
const MAX_MESSAGE_BYTES_LIMIT: usize = 64 << 20;
const MAX_CONNECTIONS_LIMIT: usize = 100_000;
const MAX_SINK_WORKERS: usize = 64;
const MAX_BACKLOG: u32 = 65535;
/// More publishes awaiting acks than this per sink worker gains nothing
/// (measured: 5,000 in flight was no faster than 1,000).
const MAX_IN_FLIGHT_LIMIT: usize = 65536;
/// relp sink: unacknowledged messages at most, by default and at most
/// (each holds its message until the ack; rsyslog's omrelp default is
/// 128 too).
const RELP_WINDOW_DEFAULT: usize = 128;
const RELP_WINDOW_LIMIT: usize = 65536;
/// 16 Mi messages: far above any useful queue (the default is 64 Ki), and
/// small enough that depth arithmetic (depth + batch) can never overflow.
const MAX_QUEUE_CAPACITY: usize = 16 << 20;
/// Longest accepted duration: far beyond any sensible timeout, and small
/// enough that `Instant + duration` can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
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
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
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

    /// Checks every cross-field rule and fills the defaults of the chosen
    /// sink type; returns the effective configuration.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        self.listen_addr()?;
        let s = &self.server;
        if s.backlog == 0 || s.backlog > MAX_BACKLOG {
            return Err(invalid(
                "server.backlog",
                format!("{} is out of range; allowed: 1..={MAX_BACKLOG}", s.backlog),
            ));
        }
        if s.max_message_bytes == 0 || s.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            return Err(invalid(
                "server.max_message_bytes",
                format!(
                    "{} is out of range; allowed: 1..={MAX_MESSAGE_BYTES_LIMIT}",
                    s.max_message_bytes
                ),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(invalid(
                "limits.max_connections",
                format!(
                    "{} is out of range; allowed: 1..={MAX_CONNECTIONS_LIMIT}",
                    l.max_connections
                ),
            ));
        }
        let q = &self.queue;
        if q.capacity == 0 || q.capacity > MAX_QUEUE_CAPACITY {
            return Err(invalid(
                "queue.capacity",
                format!(
                    "{} is out of range; allowed: 1..={MAX_QUEUE_CAPACITY}",
                    q.capacity
                ),
            ));
        }
        if !(q.pause_accept_above > 0.0 && q.pause_accept_above <= 1.0) {
            return Err(invalid(
                "queue.pause_accept_above",
                format!(
                    "{} is out of range; allowed: a fraction in (0, 1]",
                    q.pause_accept_above
                ),
            ));
        }
        if !(q.resume_accept_below > 0.0 && q.resume_accept_below < q.pause_accept_above) {
            return Err(invalid(
                "queue.resume_accept_below",
                format!(
                    "{} is out of range; allowed: a fraction with 0 < resume_accept_below < pause_accept_above ({})",
                    q.resume_accept_below, q.pause_accept_above
                ),
            ));
        }
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a level; allowed: \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
                    self.log.level
                ),
            ));
        }
        if !s.tcp_keepalive.is_zero() && s.tcp_keepalive < Duration::from_secs(1) {
            return Err(invalid(
                "server.tcp_keepalive",
                format!(
                    "{:?} is out of range; allowed: \"0s\" (off) or at least \"1s\" (the kernel counts keepalive in seconds)",
                    format_duration(&s.tcp_keepalive)
                ),
            ));
        }
        if self.limits.idle_timeout.is_zero() && s.tcp_keepalive.is_zero() {
            // Nothing would then ever close a half-open peer (one whose
            // host vanished): it would hold its thread and permit forever.
            return Err(invalid(
                "limits.idle_timeout",
                "\"0s\" (off) together with server.tcp_keepalive = \"0s\" (off) would let a vanished peer hold its thread forever; allowed: enable one of them",
            ));
        }
        let durations = [
            ("server.tcp_keepalive", Some(self.server.tcp_keepalive)),
            ("limits.idle_timeout", Some(self.limits.idle_timeout)),
            ("limits.send_timeout", Some(self.limits.send_timeout)),
            ("log.stats_interval", Some(self.log.stats_interval)),
            ("shutdown.timeout", Some(self.shutdown.timeout)),
            ("sink.flush_interval", self.sink.flush_interval),
            ("sink.connect_timeout", self.sink.connect_timeout),
            ("sink.write_timeout", self.sink.write_timeout),
            ("sink.ack_timeout", self.sink.ack_timeout),
        ];
        for (key, value) in durations {
            if let Some(d) = value.filter(|d| *d > MAX_DURATION) {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is out of range; allowed: at most {:?}",
                        format_duration(&d),
                        format_duration(&MAX_DURATION)
                    ),
                ));
            }
        }
        self.trusted_proxies()?;
        if self.server.proxy_protocol && self.server.trusted_proxies.is_empty() {
            return Err(invalid(
                "server.trusted_proxies",
                "[] is empty but server.proxy_protocol = true; allowed: the CIDRs of the balancers, such as [\"10.0.0.0/8\"]",
            ));
        }
        validate_access(&self.server)?;
        if let Some(tls) = &self.server.tls {
            tls.validate()?;
        }
        self.sink = self.sink.validate()?;
        if let Some(spool) = &self.spool {
            spool.validate()?;
        }
        if let Some(relp) = &self.relp {
            relp.validate(&self.server)?;
        }
        self.metrics_addr()?;
        Ok(self)
    }

    /// `server.trusted_proxies` parsed; a bare address is a one-address
    /// network.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.server
            .trusted_proxies
            .iter()
            .map(|text| parse_net(text).ok_or_else(|| {
                invalid(
                    "server.trusted_proxies",
                    format!("{text:?} is not a CIDR; allowed: \"10.0.0.0/8\", \"::1/128\" or a bare address"),
                )
            }))
            .collect()
    }

    /// The metrics endpoint's address, resolved; None when it is off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics.listen.as_str() {
            "" => Ok(None),
            listen => resolve("metrics.listen", listen).map(Some),
        }
    }

    /// The RELP listener's address, resolved; None when it is off.
    pub fn relp_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match &self.relp {
            None => Ok(None),
            Some(relp) => resolve("relp.listen", &relp.listen).map(Some),
        }
    }

    /// The listen address, resolved ("localhost:5140" is accepted).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        resolve("server.listen", &self.server.listen)
    }

    /// The effective configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl SinkConfig {
    fn validate(mut self) -> Result<SinkConfig, ConfigError> {
        if self.workers == 0 || self.workers > MAX_SINK_WORKERS {
            return Err(invalid(
                "sink.workers",
                format!(
                    "{} is out of range; allowed: 1..={MAX_SINK_WORKERS}",
                    self.workers
                ),
            ));
        }
        let kind = self.kind;
        let only = |key: &'static str, set: bool, allowed: &[SinkType]| {
            if set && !allowed.contains(&kind) {
                let names: Vec<String> = allowed.iter().map(|t| format!("\"{t}\"")).collect();
                Err(invalid(
                    key,
                    format!(
                        "only allowed when sink.type = {} (sink.type is \"{kind}\")",
                        names.join(" or ")
                    ),
                ))
            } else {
                Ok(())
            }
        };
        use SinkType::{File, Nats, Relp, Tcp};
        only("sink.path", self.path.is_some(), &[File])?;
        only(
            "sink.flush_interval",
            self.flush_interval.is_some(),
            &[File],
        )?;
        only("sink.address", self.address.is_some(), &[Tcp, Relp])?;
        only("sink.framing", self.framing.is_some(), &[Tcp])?;
        only(
            "sink.connect_timeout",
            self.connect_timeout.is_some(),
            &[Tcp, Nats, Relp],
        )?;
        only(
            "sink.write_timeout",
            self.write_timeout.is_some(),
            &[Tcp, Relp],
        )?;
        only("sink.servers", self.servers.is_some(), &[Nats])?;
        only("sink.subject", self.subject.is_some(), &[Nats])?;
        only("sink.stream", self.stream.is_some(), &[Nats])?;
        only("sink.max_in_flight", self.max_in_flight.is_some(), &[Nats])?;
        only("sink.ack_timeout", self.ack_timeout.is_some(), &[Nats])?;
        only("sink.window", self.window.is_some(), &[Relp])?;
        only("sink.tls", self.tls.is_some(), &[Tcp, Relp])?;
        if let Some(tls) = &mut self.tls {
            if tls.ca.as_os_str().is_empty() {
                return Err(invalid(
                    "sink.tls.ca",
                    "\"\" is empty; allowed: a PEM file of trust anchors (required)",
                ));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(invalid(
                    "sink.tls.key",
                    "cert and key go together; allowed: both (mutual TLS) or neither",
                ));
            }
            if tls.server_name.is_none() {
                let address = self.address.as_deref().unwrap_or_default();
                tls.server_name = Some(host_of(address).to_string());
            }
            if let Some(name) = &tls.server_name
                && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                return Err(invalid(
                    "sink.tls.server_name",
                    format!(
                        "{name:?} is not a DNS name or IP address; allowed: the name in the downstream's certificate"
                    ),
                ));
            }
        }
        match kind {
            SinkType::File => {
                match &self.path {
                    None => {
                        return Err(invalid("sink.path", "required when sink.type = \"file\""));
                    }
                    Some(p) if p.as_os_str().is_empty() => {
                        return Err(invalid("sink.path", "\"\" is empty; allowed: a file path"));
                    }
                    Some(_) => {}
                }
                let flush = self.flush_interval.get_or_insert(Duration::from_secs(1));
                if flush.is_zero() {
                    return Err(invalid(
                        "sink.flush_interval",
                        "\"0s\" is out of range; allowed: a positive duration such as \"1s\"",
                    ));
                }
            }
            SinkType::Tcp | SinkType::Relp => {
                let Some(address) = &self.address else {
                    return Err(invalid(
                        "sink.address",
                        format!("required when sink.type = \"{kind}\""),
                    ));
                };
                resolve("sink.address", address)?;
                if kind == Tcp {
                    self.framing.get_or_insert(SinkFraming::Lines);
                } else {
                    let window = *self.window.get_or_insert(RELP_WINDOW_DEFAULT);
                    if window == 0 || window > RELP_WINDOW_LIMIT {
                        return Err(invalid(
                            "sink.window",
                            format!("{window} is out of range; allowed: 1..={RELP_WINDOW_LIMIT}"),
                        ));
                    }
                }
                for (key, value, default) in [
                    ("sink.connect_timeout", &mut self.connect_timeout, 2),
                    ("sink.write_timeout", &mut self.write_timeout, 5),
                ] {
                    let v = value.get_or_insert(Duration::from_secs(default));
                    if v.is_zero() {
                        return Err(invalid(
                            key,
                            "\"0s\" is out of range; allowed: a positive duration such as \"2s\"",
                        ));
                    }
                }
            }
            SinkType::Nats => self.validate_nats()?,
            SinkType::Stdout | SinkType::Null => {}
        }
        Ok(self)
    }

    /// Fills the nats defaults and checks them. Servers must be IP
    /// literals: a host name would be resolved by async-nats on a
    /// blocking-pool thread, which the thread bound does not allow for.
    fn validate_nats(&mut self) -> Result<(), ConfigError> {
        let servers = self
            .servers
            .get_or_insert_with(|| vec!["nats://127.0.0.1:4222".to_string()]);
        if servers.is_empty() {
            return Err(invalid(
                "sink.servers",
                "[] is empty; allowed: server URLs such as [\"nats://127.0.0.1:4222\"]",
            ));
        }
        for url in servers.iter() {
            let hostport = url.strip_prefix("nats://").unwrap_or(url);
            if hostport.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "sink.servers",
                    format!(
                        "{url:?} is not an IP-literal server URL; allowed: \"nats://IP:PORT\" such as \"nats://127.0.0.1:4222\" or \"nats://[::1]:4222\""
                    ),
                ));
            }
        }
        let subject = self
            .subject
            .get_or_insert_with(|| "logs.floodwall".to_string());
        let bad_subject = subject.is_empty()
            || subject.split('.').any(str::is_empty)
            || subject
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>');
        if bad_subject {
            return Err(invalid(
                "sink.subject",
                format!(
                    "{subject:?} is not a publish subject; allowed: dot-separated tokens without spaces or wildcards, such as \"logs.floodwall\""
                ),
            ));
        }
        let stream = self.stream.get_or_insert_with(|| "LOGS".to_string());
        let bad_stream = stream.is_empty()
            || stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
        if bad_stream {
            return Err(invalid(
                "sink.stream",
                format!(
                    "{stream:?} is not a stream name; allowed: a name without spaces, '.', '*', '>', '/' or '\\', such as \"LOGS\""
                ),
            ));
        }
        let window = *self.max_in_flight.get_or_insert(1024);
        if window == 0 || window > MAX_IN_FLIGHT_LIMIT {
            return Err(invalid(
                "sink.max_in_flight",
                format!("{window} is out of range; allowed: 1..={MAX_IN_FLIGHT_LIMIT}"),
            ));
        }
        for (key, value, default) in [
            ("sink.ack_timeout", &mut self.ack_timeout, 5),
            ("sink.connect_timeout", &mut self.connect_timeout, 2),
        ] {
            let v = value.get_or_insert(Duration::from_secs(default));
            if v.is_zero() {
                return Err(invalid(
                    key,
                    "\"0s\" is out of range; allowed: a positive duration such as \"5s\"",
                ));
            }
        }
        Ok(())
    }
}

/// "10.0.0.0/8", "::1/128", or a bare address as its own network.
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// The host part of "host:port" ("[::1]:6000" gives "::1").
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `server.allow` entries are CIDRs (a bare address means just itself).
pub fn parse_cidr(entry: &str) -> Option<ipnet::IpNet> {
    entry.parse::<ipnet::IpNet>().ok().or_else(|| {
        entry
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn validate_access(s: &ServerConfig) -> Result<(), ConfigError> {
    for entry in &s.allow {
        if parse_cidr(entry).is_none() {
            return Err(invalid(
                "server.allow",
                format!(
                    "{entry:?} is not a CIDR; allowed: \"10.0.0.0/8\", \"::1/128\", or an address"
                ),
            ));
        }
    }
    if s.max_connections_per_ip > MAX_CONNECTIONS_LIMIT {
        return Err(invalid(
            "server.max_connections_per_ip",
            format!(
                "{} is out of range; allowed: 0 (no cap) ..={MAX_CONNECTIONS_LIMIT}",
                s.max_connections_per_ip
            ),
        ));
    }
    Ok(())
}

impl ServerTlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
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
        for entry in &self.permitted_peers {
            if let Err(why) = crate::tls::PeerPattern::parse(entry) {
                return Err(invalid(
                    "server.tls.permitted_peers",
                    format!(
                        "{entry:?} {why}; allowed: a DNS name, \"*.example.net\" (one label) or \"sha256:<64 hex digits>\""
                    ),
                ));
            }
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > MAX_DURATION {
            return Err(invalid(
                "server.tls.handshake_timeout",
                format!(
                    "{:?} is out of range; allowed: a positive duration such as \"10s\"",
                    format_duration(&self.handshake_timeout)
                ),
            ));
        }
        Ok(())
    }
}

fn resolve(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: String| {
        invalid(
            key,
            format!("{value:?} {why}; allowed: \"host:port\" such as \"127.0.0.1:5140\""),
        )
    };
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|e| bad(format!("is not a usable address ({e})")))?;
    addrs
        .next()
        .ok_or_else(|| bad("resolves to no address".to_string()))
}

/// " (line N)" for a TOML syntax error at byte `span`.
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); allowed: a duration such as \"250ms\", \"30s\", \"0s\"")
    })
}

fn format_duration(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

/// Durations as humantime strings ("250ms", "30s").
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses a byte size: digits, optionally followed by a binary unit
/// (B, KiB, MiB, GiB, TiB; a space between is allowed).
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let allowed = "allowed: an integer (bytes) or a string with a binary unit such as \"512KiB\", \"64MiB\", \"1GiB\"";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(format!("invalid byte size {text:?}; {allowed}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid byte size {text:?}; {allowed}"))
}

/// Byte sizes: an integer or a string with a binary unit; written back
/// with the largest unit that divides them.
mod byte_size {
    use super::*;

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if *n != 0 && n.is_multiple_of(1u64 << shift) {
                return s.serialize_str(&format!("{}{unit}", n >> shift));
            }
        }
        s.serialize_u64(*n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Int(u64),
            Text(String),
        }
        match Size::deserialize(d) {
            Ok(Size::Int(n)) => Ok(n),
            Ok(Size::Text(t)) => parse_byte_size(&t).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "invalid byte size; allowed: an integer (bytes) or a string with a binary unit such as \"512KiB\", \"64MiB\", \"1GiB\"",
            )),
        }
    }
}

mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
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
    fn file_sink_needs_a_path() {
        let e = err("[sink]\ntype = \"file\"\n");
        assert!(e.starts_with("sink.path:"), "{e}");
    }

    #[test]
    fn sink_keys_must_match_the_type() {
        let e = err("[sink]\ntype = \"stdout\"\npath = \"/tmp/x\"\n");
        assert!(e.starts_with("sink.path:"), "{e}");
        let e = err("[sink]\ntype = \"file\"\npath = \"/tmp/x\"\naddress = \"127.0.0.1:1\"\n");
        assert!(e.starts_with("sink.address:"), "{e}");
    }

    #[test]
    fn file_sink_defaults_are_filled() {
        let c = Config::parse("[sink]\ntype = \"file\"\npath = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.sink.flush_interval, Some(Duration::from_secs(1)));
    }

    #[test]
    fn tcp_sink_defaults_are_filled() {
        let c = Config::parse("[sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:6000\"\n").unwrap();
        assert_eq!(c.sink.framing, Some(SinkFraming::Lines));
        assert_eq!(c.sink.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.sink.write_timeout, Some(Duration::from_secs(5)));
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
    fn nats_sink_defaults_are_filled() {
        let c = Config::parse("[sink]\ntype = \"nats\"\n").unwrap();
        assert_eq!(
            c.sink.servers,
            Some(vec!["nats://127.0.0.1:4222".to_string()])
        );
        assert_eq!(c.sink.subject.as_deref(), Some("logs.floodwall"));
        assert_eq!(c.sink.stream.as_deref(), Some("LOGS"));
        assert_eq!(c.sink.max_in_flight, Some(1024));
        assert_eq!(c.sink.ack_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.sink.connect_timeout, Some(Duration::from_secs(2)));
        let again = Config::parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn nats_keys_are_checked_and_named() {
        let e = err("[sink]\ntype = \"nats\"\nservers = [\"nats://localhost:4222\"]\n");
        assert!(
            e.starts_with("sink.servers:") && e.contains("localhost"),
            "{e}"
        );
        let e = err("[sink]\ntype = \"nats\"\nservers = []\n");
        assert!(e.starts_with("sink.servers:"), "{e}");
        let e = err("[sink]\ntype = \"nats\"\nsubject = \"logs.>\"\n");
        assert!(e.starts_with("sink.subject:"), "{e}");
        let e = err("[sink]\ntype = \"nats\"\nstream = \"a.b\"\n");
        assert!(e.starts_with("sink.stream:"), "{e}");
        let e = err("[sink]\ntype = \"nats\"\nmax_in_flight = 0\n");
        assert!(e.starts_with("sink.max_in_flight:"), "{e}");
        let e = err("[sink]\ntype = \"nats\"\nack_timeout = \"0s\"\n");
        assert!(e.starts_with("sink.ack_timeout:"), "{e}");
        let e = err("[sink]\ntype = \"nats\"\naddress = \"127.0.0.1:1\"\n");
        assert!(e.starts_with("sink.address:"), "{e}");
        let e = err("[sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\nsubject = \"x\"\n");
        assert!(
            e.starts_with("sink.subject:") && e.contains("\"nats\""),
            "{e}"
        );
        Config::parse("[sink]\ntype = \"nats\"\nconnect_timeout = \"1s\"\nservers = [\"nats://[::1]:4222\"]\n")
            .unwrap();
    }

    #[test]
    fn relp_sink_defaults_and_keys() {
        let c = Config::parse("[sink]\ntype = \"relp\"\naddress = \"127.0.0.1:2514\"\n").unwrap();
        assert_eq!(c.sink.kind, SinkType::Relp);
        assert_eq!(c.sink.window, Some(128));
        assert_eq!(c.sink.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.sink.write_timeout, Some(Duration::from_secs(5)));
        let e = err("[sink]\ntype = \"relp\"\n");
        assert!(
            e.starts_with("sink.address:") && e.contains("\"relp\""),
            "{e}"
        );
        for bad in ["0", "65537"] {
            let e = err(&format!(
                "[sink]\ntype = \"relp\"\naddress = \"127.0.0.1:1\"\nwindow = {bad}\n"
            ));
            assert!(
                e.starts_with("sink.window:") && e.contains(bad) && e.contains("1..=65536"),
                "{e}"
            );
        }
        let e = err("[sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\nwindow = 8\n");
        assert!(
            e.starts_with("sink.window:") && e.contains("\"relp\""),
            "{e}"
        );
        let e = err("[sink]\ntype = \"relp\"\naddress = \"127.0.0.1:1\"\nframing = \"lines\"\n");
        assert!(e.starts_with("sink.framing:"), "{e}");
        let c = Config::parse(
            "[sink]\ntype = \"relp\"\naddress = \"127.0.0.1:1\"\n[sink.tls]\nca = \"/x.pem\"\n",
        )
        .unwrap();
        let tls = c.sink.tls.expect("sink.tls for relp");
        assert_eq!(tls.server_name.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn spool_with_the_nats_sink_is_accepted() {
        let c = Config::parse("[sink]\ntype = \"nats\"\n[spool]\ndir = \"/tmp/x\"\n").unwrap();
        assert!(c.spool.is_some() && c.sink.kind == SinkType::Nats);
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
    fn sink_tls_server_name_defaults_to_the_address_host() {
        let c = Config::parse(
            "[sink]\ntype = \"tcp\"\naddress = \"localhost:6000\"\n[sink.tls]\nca = \"ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            c.sink.tls.unwrap().server_name.as_deref(),
            Some("localhost")
        );
        let e = err("[sink]\ntype = \"stdout\"\n[sink.tls]\nca = \"ca.pem\"\n");
        assert!(e.starts_with("sink.tls:"), "{e}");
    }

    #[test]
    fn relp_is_off_by_default_and_validated() {
        assert_eq!(Config::parse("").unwrap().relp, None);
        let c = Config::parse("[relp]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(c.relp_addr().unwrap(), Some("127.0.0.1:0".parse().unwrap()));
        let e = err("[relp]\n");
        assert!(e.starts_with("relp.listen:"), "{e}");
        let e = err("[relp]\nlisten = \"2514\"\n");
        assert!(e.starts_with("relp.listen:"), "{e}");
        let e = err("[relp]\nlisten = \"127.0.0.1:0\"\ntls = true\n");
        assert!(e.starts_with("relp.tls:"), "{e}");
        let e = err(
            "[relp]\nlisten = \"127.0.0.1:0\"\ntls = true\n[server.tls]\ncert = \"c\"\nkey = \"k\"\nrecord_layer = \"rustls\"\n",
        );
        assert!(e.starts_with("relp.tls:") && e.contains("rustls"), "{e}");
        let e = err("[relp]\nlisten = \"127.0.0.1:0\"\nwindow = 3\n");
        assert!(e.contains("window"), "{e}");
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_validated() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.metrics_addr().unwrap(), None);
        let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:9140\"\n").unwrap();
        assert_eq!(
            c.metrics_addr().unwrap(),
            Some("127.0.0.1:9140".parse().unwrap())
        );
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
