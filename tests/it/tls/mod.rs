//! TLS on the listener: configuration errors, refused peers, sessions
//! (reload, rotation, shutdown) and truncation on the path.

mod config;
mod refusals;
mod session;
mod truncation;
