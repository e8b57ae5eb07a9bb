//! `[queue]`: the bounded queue's capacity in messages and the
//! watermarks at which the accept loop pauses and resumes. The table has
//! nothing optional: validated, it is its own settings.

use serde::{Deserialize, Serialize};

use super::{ConfigError, in_range, out_of_range};

/// 16 Mi messages: far above any useful queue (the default is 64 Ki), and
/// small enough that depth arithmetic (depth + batch) can never overflow.
pub const MAX_QUEUE_CAPACITY: usize = 16 << 20;

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

impl QueueConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        in_range("queue.capacity", self.capacity, 1..=MAX_QUEUE_CAPACITY)?;
        let (pause, resume) = (self.pause_accept_above, self.resume_accept_below);
        if !(pause > 0.0 && pause <= 1.0) {
            return Err(out_of_range(
                "queue.pause_accept_above",
                pause,
                "a fraction in (0, 1]",
            ));
        }
        if !(resume > 0.0 && resume < pause) {
            return Err(out_of_range(
                "queue.resume_accept_below",
                resume,
                format!("a fraction with 0 < resume_accept_below < pause_accept_above ({pause})"),
            ));
        }
        Ok(())
    }
}
