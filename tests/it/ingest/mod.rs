//! Taking messages in: framing, the logger peer, admission (allowlist,
//! per-IP and total caps, the accept pause), idle and rate limits, PROXY
//! headers, and the delivery properties over random input.

mod access;
mod connection_limit;
mod delivery_props;
mod framing;
mod idle;
mod logger;
mod pause_accept;
mod proxy_protocol;
mod rate_limit;
