//! Issue 8: every kind of warning is at most one line per second, and
//! every outage shows. A sink outage that starts within a second of the
//! previous outage's warning used to get no line at all (the throttle
//! swallowed it); now its line waits for the throttle and comes out.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{Daemon, num};

const WAIT: Duration = Duration::from_secs(20);

/// Accepts one sink connection on `addr` and reads one line from it.
fn collect_line(listener: &TcpListener) -> (std::net::TcpStream, String) {
    let (s, _) = listener.accept().expect("sink connects");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("read a line");
    (s, line)
}

fn warnings(d: &Daemon) -> usize {
    d.log_lines()
        .iter()
        .filter(|l| l.contains("sink write failed"))
        .count()
}

#[test]
fn a_second_sink_outage_within_a_second_gets_its_own_warning() {
    let first = TcpListener::bind("127.0.0.1:0").expect("bind collector");
    let addr: SocketAddr = first.local_addr().expect("addr");
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .sink("tcp")
        .set("sink.address", addr.to_string())
        .set("log.stats_interval", "0s")
        .start();
    d.send(b"one\n");
    let (conn, line) = collect_line(&first);
    assert_eq!(line, "one\n");

    // Outage 1: the collector goes away.
    drop(conn);
    drop(first);
    d.send(b"two\n");
    assert!(
        d.wait_log(WAIT, |l| l.contains("sink write failed"))
            .is_some(),
        "no warning for the first outage; log:\n{}",
        d.log_text()
    );
    // Back at once, then away again: outage 2 starts well within a
    // second of outage 1's warning (the retry back-off is 100-400 ms).
    let second = TcpListener::bind(addr).expect("rebind collector");
    let (conn, line) = collect_line(&second);
    assert_eq!(line, "two\n");
    drop(conn);
    drop(second);
    d.send(b"three\n");
    assert!(
        support::wait_until(WAIT, || warnings(&d) == 2),
        "the second outage got no warning; log:\n{}",
        d.log_text()
    );
    let third = TcpListener::bind(addr).expect("rebind collector");
    let (conn, line) = collect_line(&third);
    assert_eq!(line, "three\n");
    let s = d.stop_balanced(WAIT);
    drop(conn);
    // At most one line per second: two outages, two lines, no more.
    assert_eq!(warnings(&d), 2, "log:\n{}", d.log_text());
    assert_eq!(num(&s, "delivered"), 3);
}
