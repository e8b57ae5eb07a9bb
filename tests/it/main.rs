//! floodwall's integration tests, one binary in ripgrep's manner: a module
//! per topic, each test starting the real `floodwall` binary (or the
//! library in-process) on port 0 in a temp dir of its own, with the
//! helpers of tests/support/ (the daemon, the one downstream collector,
//! the /proc sampler, the port helper, the config builder).
//!
//! One binary instead of one per file: the crate and its dependencies are
//! linked once, and libtest spreads every test over the cores instead of
//! waiting for the slowest test of each file in turn.
//!
//! Three binaries in all, for the tests that cannot share a process or the
//! machine:
//! - `it` (this one): every test that can run beside any other.
//! - `alone` (tests/alone/): tests that load the machine with hundreds or
//!   thousands of connections or threads (the fault suite, the handshake
//!   flood, 5,000 idle connections, connection churn sampled from /proc,
//!   six restarts under socket activation). Beside the tests here they
//!   would eat the scheduling margin that this binary's timing bounds
//!   allow (support::SCHED_MARGIN); cargo runs the binaries one after
//!   another, so they never meet. Among themselves they run two at a
//!   time, except three that need the machine to themselves (the reasons
//!   in tests/alone/main.rs). All fifteen one at a time (tried) took
//!   102 s instead of 40 s.
//! - `queue_memory` (tests/queue_memory.rs): measures the test process's
//!   own VmData, so nothing else may allocate in its process.
//!
//! Run one topic with a filter: `cargo test --release --test it -- tls::`.

#[path = "../support/mod.rs"]
mod support;

mod backpressure;
mod config;
mod ingest;
mod interop;
mod metrics;
mod relp;
mod service;
mod shutdown;
mod sink;
mod spool;
mod tls;
