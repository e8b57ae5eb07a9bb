//! A sink that stalls or lingers: clients learn within send_timeout, every
//! drop is counted, and a small queue streams like a big one.

mod send_timeout_accounting;
mod small_queue;
mod stall;
