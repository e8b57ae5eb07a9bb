//! The disk spool: outages it absorbs, damage and a full disk it survives,
//! kill -9 loops, shutdown with a backlog, and the spool behind NATS.

mod crash_loop;
mod damage;
mod disk_full;
mod nats;
mod outage;
mod shutdown;
