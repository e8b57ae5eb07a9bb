//! Helpers shared by the fault scenarios (tests/alone/fault/): a downstream
//! TCP collector that can be frozen (accepts, never reads) and released,
//! flooding clients, and the check of a drained run.
//!
//! Everything here is bounded: every loop ends at a deadline or a stop
//! flag, every socket has a timeout.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::downstream::Downstream;
use super::{Daemon, StatsLine, assert_balanced, num, wait_until};

/// `n` clients that connect and write `line` over and over as fast as the
/// daemon lets them until `run_for` has passed, reconnecting whenever the
/// daemon closes them. Returns (lines handed to the kernel, connects).
pub fn flood(addr: SocketAddr, n: usize, run_for: Duration, tag: &str) -> (u64, u64) {
    let deadline = Instant::now() + run_for;
    let sent = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (sent, connects) = (sent.clone(), connects.clone());
            let line = format!("{tag} client {i:04} {}\n", "x".repeat(60));
            let chunk = line.repeat(64).into_bytes();
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    while Instant::now() < deadline {
                        let Ok(mut s) =
                            TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                        else {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        };
                        connects.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                        // Small send buffers: what sits in kernel buffers
                        // when the flood stops stays small (loopback
                        // autotuning would otherwise park MiBs per socket).
                        let _ = socket2::SockRef::from(&s).set_send_buffer_size(16 << 10);
                        while Instant::now() < deadline {
                            match s.write(&chunk) {
                                Ok(n) => {
                                    sent.fetch_add((n / line.len()) as u64, Ordering::Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }
                })
                .expect("spawn flood client")
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    (
        sent.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
    )
}

/// Connects, writes `data` and closes.
pub fn send_and_close(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(data).expect("send");
}

/// After a clean exit: exit 0, balanced books, an empty queue, no sink
/// errors, and the downstream holding exactly the `delivered` lines.
/// Returns the final stats line.
pub fn assert_drained_into(
    daemon: &Daemon,
    status: std::process::ExitStatus,
    downstream: &Downstream,
) -> StatsLine {
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    let last = daemon.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "queue_depth"), 0, "{last:?}");
    assert_eq!(num(&last, "sink_errors"), 0, "{last:?}");
    assert!(
        wait_until(Duration::from_secs(10), || downstream.line_count() as u64
            == num(&last, "delivered")),
        "downstream has {} lines, the daemon delivered {}",
        downstream.line_count(),
        num(&last, "delivered")
    );
    last
}
