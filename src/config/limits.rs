//! `[limits]`: how many connections at once and what happens at the cap,
//! how long a connection may idle, how long a worker may wait for queue
//! room and what it does then, and the per-connection message rate.
//! The table has nothing optional: validated, it is its own settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::server::{MAX_CONNECTIONS_LIMIT, ServerConfig};
use super::units::{at_most_max, duration};
use super::{ConfigError, in_range, invalid};

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

impl LimitsConfig {
    /// `server` for its keepalive: one of the two must close a vanished
    /// peer.
    pub(super) fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        in_range(
            "limits.max_connections",
            self.max_connections,
            1..=MAX_CONNECTIONS_LIMIT,
        )?;
        if self.idle_timeout.is_zero() && server.tcp_keepalive.is_zero() {
            // Nothing would then ever close a half-open peer (one whose
            // host vanished): it would hold its thread and permit forever.
            return Err(invalid(
                "limits.idle_timeout",
                "\"0s\" (off) together with server.tcp_keepalive = \"0s\" (off) would let a vanished peer hold its thread forever; allowed: enable one of them",
            ));
        }
        at_most_max("limits.idle_timeout", self.idle_timeout)?;
        at_most_max("limits.send_timeout", self.send_timeout)?;
        Ok(())
    }
}
