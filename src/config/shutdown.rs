//! `[shutdown]`: how long the drain may take before what is left is
//! counted lost. Validated, the table is its own settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::units::{at_most_max, duration};

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

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_most_max("shutdown.timeout", self.timeout)?;
        Ok(())
    }
}
