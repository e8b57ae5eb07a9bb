//! Graceful shutdown delivers what peers sent before the signal: messages
//! already in a connection's socket buffer are framed and flushed, not
//! discarded with the connection.
//!
//! A rate limit keeps most of a client's burst unread in the kernel
//! (the worker is pacing itself) when SIGTERM arrives.

use std::io::Write;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{assert_balanced, num, read, wait_until};

#[test]
fn sigterm_flushes_what_clients_already_sent() {
    let mut daemon = Conf::new().set("limits.rate_per_connection", 20).start();
    let out = daemon.path("out.log");
    let data: Vec<u8> = (0..400)
        .flat_map(|i| format!("sent before the signal {i:04}\n").into_bytes())
        .collect();
    let mut c = daemon.connect();
    c.write_all(&data).unwrap();
    // The first burst is through; the rest waits in the socket buffers.
    assert!(wait_until(Duration::from_secs(20), || !read(&out).is_empty()));
    assert!(read(&out).len() < data.len());
    let status = daemon.stop(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    assert_eq!(
        read(&out),
        data,
        "every message sent before SIGTERM is delivered"
    );
    let s = daemon.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "received"), 400);
    assert_eq!(num(&s, "delivered"), 400);
    assert!(daemon.log_text().contains("shutdown drained=true lost=0"));
    drop(c);
}
