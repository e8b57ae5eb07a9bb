//! `[log]`: the log level and how often the stats line is logged. The
//! table has nothing optional: validated, it is its own settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{at_most_max, duration};
use super::{ConfigError, invalid};

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

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.level.parse::<::log::LevelFilter>().is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a level; allowed: \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
                    self.level
                ),
            ));
        }
        at_most_max("log.stats_interval", self.stats_interval)?;
        Ok(())
    }
}
