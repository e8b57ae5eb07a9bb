//! The tests that load the machine: hundreds or thousands of connections
//! or threads, or the daemon's threads sampled from /proc under churn.
//! They run in a binary of their own (cargo runs one binary after the
//! other), so that they never run beside the timing-bound tests of `it`.
//! Among themselves each takes the machine lock first
//! (support::machine_shared: two at a time, like the pairs of one fault
//! file before), except three whose bound is about a second and measured
//! the neighbour's load when shared (support::machine_alone: nothing
//! beside them): shutdown_idle (5,000 threads joined within 1 s: took
//! 1.04 and 1.46 s beside another flood), tls_flood (1,200 deadlines
//! within 3 s) and socket_activation (six restarts under load). Why these
//! are not in `it`: tests/it/main.rs.

#[path = "../support/mod.rs"]
mod support;

mod fault;
mod shutdown_idle;
mod socket_activation;
mod thread_bound;
mod tls_flood;
