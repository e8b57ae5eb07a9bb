//! The one config builder: the daemon's TOML as a base that most tests
//! share plus the overrides that make each test what it is, instead of a
//! TOML block copied into every file.
//!
//! The base listens on 127.0.0.1:0 (framing: the daemon's default, auto),
//! writes to the file sink `{dir}/out.log` and logs stats every 100 ms
//! (tests wait on them);
//! `{dir}` is the daemon's temp dir ([`super::Daemon::start`] fills it in).
//! Keys are dotted paths (`limits.send_timeout`, `server.tls.cert`),
//! values Rust values (strings, numbers, booleans, lists of strings).

use std::fmt;

/// A value for [`Conf::set`].
pub trait TomlValue {
    fn into_toml(self) -> toml::Value;
}

impl TomlValue for &str {
    fn into_toml(self) -> toml::Value {
        toml::Value::String(self.to_string())
    }
}

impl TomlValue for String {
    fn into_toml(self) -> toml::Value {
        toml::Value::String(self)
    }
}

impl TomlValue for f64 {
    fn into_toml(self) -> toml::Value {
        toml::Value::Float(self)
    }
}

impl TomlValue for bool {
    fn into_toml(self) -> toml::Value {
        toml::Value::Boolean(self)
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl TomlValue for $t {
            fn into_toml(self) -> toml::Value {
                toml::Value::Integer(i64::try_from(self).expect("a TOML integer fits i64"))
            }
        }
    )*};
}
integer!(i32, i64, u32, u64, usize);

impl<const N: usize> TomlValue for [&str; N] {
    fn into_toml(self) -> toml::Value {
        toml::Value::Array(self.iter().map(|s| s.into_toml()).collect())
    }
}

impl TomlValue for Vec<String> {
    fn into_toml(self) -> toml::Value {
        toml::Value::Array(self.into_iter().map(|s| s.into_toml()).collect())
    }
}

/// A daemon config: the base with overrides; `Display` writes the TOML.
#[derive(Clone)]
pub struct Conf {
    root: toml::Table,
}

impl Conf {
    /// The base: see the module header.
    pub fn new() -> Conf {
        Conf {
            root: toml::Table::new(),
        }
        .set("server.listen", "127.0.0.1:0")
        .set("sink.type", "file")
        .set("sink.path", "{dir}/out.log")
        .set("log.stats_interval", "100ms")
    }

    /// Only `server.listen`: for the in-process daemon
    /// (`floodwall::start_with_sinks`), whose sinks the test hands in.
    pub fn bare() -> Conf {
        Conf {
            root: toml::Table::new(),
        }
        .set("server.listen", "127.0.0.1:0")
    }

    /// The queue never pauses the accept loop (a full queue is what these
    /// tests stall on, not the pause).
    pub fn no_accept_pause(self) -> Conf {
        self.set("queue.pause_accept_above", 1.0)
            .set("queue.resume_accept_below", 0.5)
    }

    /// Sets `key` (a dotted path; tables are made as needed).
    pub fn set(mut self, key: &str, value: impl TomlValue) -> Conf {
        let (table, name) = self.table_of(key);
        table.insert(name.to_string(), value.into_toml());
        self
    }

    /// Removes `key`; a table left empty goes too.
    pub fn unset(mut self, key: &str) -> Conf {
        let (table, name) = self.table_of(key);
        table.remove(name);
        self.root
            .retain(|_, v| !matches!(v, toml::Value::Table(t) if t.is_empty()));
        self
    }

    /// Replaces the whole `[sink]` table by one of `type = kind`.
    pub fn sink(mut self, kind: &str) -> Conf {
        self.root.remove("sink");
        self.set("sink.type", kind)
    }

    /// The tcp sink to `addr` (the `[sink]` table replaced), with a 60 s
    /// write timeout: a stalled downstream is waited for, not given up on.
    pub fn tcp_sink(self, addr: std::net::SocketAddr) -> Conf {
        self.sink("tcp")
            .set("sink.address", addr.to_string())
            .set("sink.write_timeout", "60s")
    }

    /// The nats sink to `servers`, subject `logs.test`, stream `LOGS`;
    /// stats every 200 ms and a 30 s drain (JetStream acks take their time).
    pub fn nats_sink(self, servers: &[String]) -> Conf {
        self.sink("nats")
            .set("sink.servers", servers.to_vec())
            .set("sink.subject", "logs.test")
            .set("sink.stream", "LOGS")
            .set("log.stats_interval", "200ms")
            .set("shutdown.timeout", "30s")
    }

    /// The table that holds the last part of `key`, and that part.
    fn table_of<'k>(&mut self, key: &'k str) -> (&mut toml::Table, &'k str) {
        let (path, name) = key.rsplit_once('.').unwrap_or(("", key));
        let mut table = &mut self.root;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                other => panic!("config key {key}: {part} is {other}, not a table"),
            };
        }
        (table, name)
    }

    /// The parsed config, for the in-process daemon.
    pub fn parse(&self) -> floodwall::Config {
        let text = self.to_string();
        floodwall::Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }

    /// Starts the daemon with this config (see [`super::Daemon::start`]).
    pub fn start(&self) -> super::Daemon {
        super::Daemon::start(&self.to_string())
    }

    /// Starts the daemon with this config in `dir` (see
    /// [`super::Daemon::start_in`]).
    pub fn start_in(&self, dir: tempfile::TempDir) -> super::Daemon {
        super::Daemon::start_in(dir, &self.to_string())
    }
}

impl Default for Conf {
    fn default() -> Conf {
        Conf::new()
    }
}

impl fmt::Display for Conf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string(&self.root).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}
