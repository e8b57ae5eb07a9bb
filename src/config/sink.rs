//! `[sink]`: where messages go. The TOML side is one flat table for
//! every sink type ([`SinkConfig`], what the file says and what
//! `--check-config` prints); validation checks that only the keys of the
//! chosen type are set and turns the table into [`SinkSettings`]: a
//! [`Destination`] variant per type carrying exactly its keys, every
//! default filled in here and nowhere else, so a sink takes its settings
//! as they are (nothing optional to default again, nothing to `expect`).
//!
//! Not here: `[sink.tls]`'s own checks ([`super::tls`]), and loading its
//! files (src/tls/pem.rs).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::net::resolve_all;
use super::tls::{SinkTlsConfig, SinkTlsSettings};
use super::units::{opt_duration, positive};
use super::{ConfigError, in_range, invalid};

const MAX_SINK_WORKERS: usize = 64;
/// More publishes awaiting acks than this per sink worker gains nothing
/// (measured: 5,000 in flight was no faster than 1,000).
const MAX_IN_FLIGHT_LIMIT: usize = 65536;
const MAX_IN_FLIGHT_DEFAULT: usize = 1024;
/// relp sink: unacknowledged messages at most, by default and at most
/// (each holds its message until the ack; rsyslog's omrelp default is
/// 128 too).
const RELP_WINDOW_DEFAULT: usize = 128;
const RELP_WINDOW_LIMIT: usize = 65536;
const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
const NATS_SERVER_DEFAULT: &str = "nats://127.0.0.1:4222";
const NATS_SUBJECT_DEFAULT: &str = "logs.floodwall";
const NATS_STREAM_DEFAULT: &str = "LOGS";

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

/// One flat table for every sink type; [`SinkConfig::validate`] checks
/// that only the keys of the chosen type are set.
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

/// `[sink]` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Sink threads, each with its own sink.
    pub workers: usize,
    pub destination: Destination,
}

/// The chosen sink type with exactly its keys, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Stdout,
    Null,
    File {
        path: PathBuf,
        /// How long batches may linger to be written together.
        flush_interval: Duration,
    },
    Tcp {
        downstream: DownstreamSettings,
        framing: SinkFraming,
    },
    Relp {
        downstream: DownstreamSettings,
        /// Unacknowledged messages at most.
        window: usize,
    },
    Nats(NatsSettings),
}

/// Where a tcp or relp sink connects to, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamSettings {
    /// `sink.address` as written (for log lines).
    pub address: String,
    /// `sink.address` resolved, once: a reconnect never waits on DNS.
    pub addrs: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub tls: Option<SinkTlsSettings>,
}

/// The nats sink's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// IP-literal URLs: a host name would be resolved by async-nats on a
    /// blocking-pool thread, which the thread bound does not allow for.
    pub servers: Vec<String>,
    pub subject: String,
    pub stream: String,
    /// Publishes awaiting their acks at once, at most, per worker.
    pub max_in_flight: usize,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
}

impl SinkConfig {
    pub(super) fn validate(&self) -> Result<SinkSettings, ConfigError> {
        let workers = in_range("sink.workers", self.workers, 1..=MAX_SINK_WORKERS)?;
        self.only_keys_of_the_type()?;
        let destination = match self.kind {
            SinkType::Stdout => Destination::Stdout,
            SinkType::Null => Destination::Null,
            SinkType::File => {
                let path = match &self.path {
                    None => return Err(invalid("sink.path", "required when sink.type = \"file\"")),
                    Some(p) if p.as_os_str().is_empty() => {
                        return Err(invalid("sink.path", "\"\" is empty; allowed: a file path"));
                    }
                    Some(p) => p.clone(),
                };
                let flush = self.flush_interval.unwrap_or(FLUSH_INTERVAL_DEFAULT);
                Destination::File {
                    path,
                    flush_interval: positive("sink.flush_interval", flush, "1s")?,
                }
            }
            SinkType::Tcp => Destination::Tcp {
                downstream: self.downstream()?,
                framing: self.framing.unwrap_or(SinkFraming::Lines),
            },
            SinkType::Relp => {
                let downstream = self.downstream()?;
                let window = self.window.unwrap_or(RELP_WINDOW_DEFAULT);
                Destination::Relp {
                    window: in_range("sink.window", window, 1..=RELP_WINDOW_LIMIT)?,
                    downstream,
                }
            }
            SinkType::Nats => Destination::Nats(self.nats()?),
        };
        Ok(SinkSettings {
            workers,
            destination,
        })
    }

    /// A key of another sink type is an error naming the types it
    /// belongs to.
    fn only_keys_of_the_type(&self) -> Result<(), ConfigError> {
        use SinkType::{File, Nats, Relp, Tcp};
        let kind = self.kind;
        let keys: [(&'static str, bool, &[SinkType]); 13] = [
            ("sink.path", self.path.is_some(), &[File]),
            (
                "sink.flush_interval",
                self.flush_interval.is_some(),
                &[File],
            ),
            ("sink.address", self.address.is_some(), &[Tcp, Relp]),
            ("sink.framing", self.framing.is_some(), &[Tcp]),
            (
                "sink.connect_timeout",
                self.connect_timeout.is_some(),
                &[Tcp, Nats, Relp],
            ),
            (
                "sink.write_timeout",
                self.write_timeout.is_some(),
                &[Tcp, Relp],
            ),
            ("sink.servers", self.servers.is_some(), &[Nats]),
            ("sink.subject", self.subject.is_some(), &[Nats]),
            ("sink.stream", self.stream.is_some(), &[Nats]),
            ("sink.max_in_flight", self.max_in_flight.is_some(), &[Nats]),
            ("sink.ack_timeout", self.ack_timeout.is_some(), &[Nats]),
            ("sink.window", self.window.is_some(), &[Relp]),
            ("sink.tls", self.tls.is_some(), &[Tcp, Relp]),
        ];
        for (key, set, allowed) in keys {
            if set && !allowed.contains(&kind) {
                let names: Vec<String> = allowed.iter().map(|t| format!("\"{t}\"")).collect();
                return Err(invalid(
                    key,
                    format!(
                        "only allowed when sink.type = {} (sink.type is \"{kind}\")",
                        names.join(" or ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// tcp and relp: the address (resolved), the timeouts, `[sink.tls]`.
    fn downstream(&self) -> Result<DownstreamSettings, ConfigError> {
        let Some(address) = &self.address else {
            return Err(invalid(
                "sink.address",
                format!("required when sink.type = \"{}\"", self.kind),
            ));
        };
        let addrs = resolve_all("sink.address", address)?;
        let connect = self.connect_timeout.unwrap_or(CONNECT_TIMEOUT_DEFAULT);
        let write = self.write_timeout.unwrap_or(WRITE_TIMEOUT_DEFAULT);
        Ok(DownstreamSettings {
            address: address.clone(),
            addrs,
            connect_timeout: positive("sink.connect_timeout", connect, "2s")?,
            write_timeout: positive("sink.write_timeout", write, "2s")?,
            tls: match &self.tls {
                Some(tls) => Some(tls.validate(address)?),
                None => None,
            },
        })
    }

    /// The nats keys, checked. Servers must be IP literals: a host name
    /// would be resolved by async-nats on a blocking-pool thread, which
    /// the thread bound does not allow for.
    fn nats(&self) -> Result<NatsSettings, ConfigError> {
        let servers = self
            .servers
            .clone()
            .unwrap_or_else(|| vec![NATS_SERVER_DEFAULT.to_string()]);
        if servers.is_empty() {
            return Err(invalid(
                "sink.servers",
                "[] is empty; allowed: server URLs such as [\"nats://127.0.0.1:4222\"]",
            ));
        }
        for url in &servers {
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
        let subject = self.subject.as_deref().unwrap_or(NATS_SUBJECT_DEFAULT);
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
        let stream = self.stream.as_deref().unwrap_or(NATS_STREAM_DEFAULT);
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
        let max_in_flight = self.max_in_flight.unwrap_or(MAX_IN_FLIGHT_DEFAULT);
        let ack = self.ack_timeout.unwrap_or(ACK_TIMEOUT_DEFAULT);
        let connect = self.connect_timeout.unwrap_or(CONNECT_TIMEOUT_DEFAULT);
        Ok(NatsSettings {
            max_in_flight: in_range("sink.max_in_flight", max_in_flight, 1..=MAX_IN_FLIGHT_LIMIT)?,
            ack_timeout: positive("sink.ack_timeout", ack, "5s")?,
            connect_timeout: positive("sink.connect_timeout", connect, "5s")?,
            servers,
            subject: subject.to_string(),
            stream: stream.to_string(),
        })
    }
}

impl SinkSettings {
    /// The effective `[sink]` table: what the file said, with every
    /// default of the type written out (for `--check-config`).
    pub fn to_config(&self) -> SinkConfig {
        let mut c = SinkConfig {
            workers: self.workers,
            ..SinkConfig::default()
        };
        let downstream = |c: &mut SinkConfig, d: &DownstreamSettings| {
            c.address = Some(d.address.clone());
            c.connect_timeout = Some(d.connect_timeout);
            c.write_timeout = Some(d.write_timeout);
            c.tls = d.tls.as_ref().map(|t| t.files.clone());
        };
        match &self.destination {
            Destination::Stdout => c.kind = SinkType::Stdout,
            Destination::Null => c.kind = SinkType::Null,
            Destination::File {
                path,
                flush_interval,
            } => {
                c.kind = SinkType::File;
                c.path = Some(path.clone());
                c.flush_interval = Some(*flush_interval);
            }
            Destination::Tcp {
                downstream: d,
                framing,
            } => {
                c.kind = SinkType::Tcp;
                downstream(&mut c, d);
                c.framing = Some(*framing);
            }
            Destination::Relp {
                downstream: d,
                window,
            } => {
                c.kind = SinkType::Relp;
                downstream(&mut c, d);
                c.window = Some(*window);
            }
            Destination::Nats(n) => {
                c.kind = SinkType::Nats;
                c.servers = Some(n.servers.clone());
                c.subject = Some(n.subject.clone());
                c.stream = Some(n.stream.clone());
                c.max_in_flight = Some(n.max_in_flight);
                c.ack_timeout = Some(n.ack_timeout);
                c.connect_timeout = Some(n.connect_timeout);
            }
        }
        c
    }

    /// The file sink's `flush_interval`; None for the other types.
    pub fn flush_interval(&self) -> Option<Duration> {
        match self.destination {
            Destination::File { flush_interval, .. } => Some(flush_interval),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::err;

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
}
