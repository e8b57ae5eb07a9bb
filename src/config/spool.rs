//! `[spool]`: a table present only when the disk spool is wanted (its
//! directory, its size bounds and its fsync interval). Validated, the
//! table is its own settings; src/spool/ takes them as `spool::Settings`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{at_most_max, byte_size, duration};
use super::{ConfigError, invalid, out_of_range};

/// Smallest segment: a few records of the largest batch still fit in
/// bigger ones; below this the file churn is all overhead.
const MIN_SEGMENT_BYTES: u64 = 4 << 10;
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

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

impl SpoolConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(invalid(
                "spool.dir",
                "\"\" is not a directory; allowed: a directory path such as \"/var/lib/floodwall/spool\"",
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(out_of_range(
                "spool.segment_bytes",
                self.segment_bytes,
                "\"4KiB\" ..= \"1GiB\"",
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(out_of_range(
                "spool.max_bytes",
                self.max_bytes,
                format!("at least spool.segment_bytes ({})", self.segment_bytes),
            ));
        }
        at_most_max("spool.sync", self.sync)?;
        Ok(())
    }
}
