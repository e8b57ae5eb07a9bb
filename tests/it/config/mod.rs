//! The configuration's edges: errors that name key, value and what is
//! allowed (exit 2), throttled warnings, the start-up check of the limits.

mod errors;
mod rlimits;
mod warnings;
