//! `[metrics]`: the Prometheus endpoint (SPEC.md "Metrics endpoint"),
//! off unless `listen` is set; validated into its resolved address.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::net::resolve;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// "host:port" serving GET /metrics and GET /healthz; "" = off.
    pub listen: String,
}

impl MetricsConfig {
    /// The endpoint's address, resolved; None when it is off.
    pub(super) fn validate(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.listen.as_str() {
            "" => Ok(None),
            listen => resolve("metrics.listen", listen).map(Some),
        }
    }
}
