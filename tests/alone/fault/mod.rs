//! The fault suite (docs/reliability.md): stalls, floods, churn,
//! slowloris, a full disk, hostile bytes, shutdown under load.

mod churn;
mod file_sink;
mod hostile;
mod shutdown_under_load;
mod slowloris;
mod stall_recover;
mod stalled_flood;
