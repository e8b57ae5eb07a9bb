//! The tests that load the machine: hundreds or thousands of connections
//! or threads, or the daemon's threads sampled from /proc under churn.
//! They run in a binary of their own (cargo runs one binary after the
//! other), so that they never run beside the timing-bound tests of `it`;
//! among themselves two at a time, like the pairs of one fault file
//! before. Why: tests/it/main.rs.

#[path = "../support/mod.rs"]
mod support;

mod fault;
mod shutdown_idle;
mod socket_activation;
mod thread_bound;
mod tls_flood;
