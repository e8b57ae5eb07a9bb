//! Issue 9: `server.allow` and `server.max_connections_per_ip`, decided
//! in the accept loop. Clients bind 127.0.0.2 .. 127.0.0.5 as their
//! source (Linux routes all of 127/8 to lo). Refused ones see EOF at once,
//! never get a worker thread (threads sampled from /proc meanwhile),
//! others are unaffected, and the counts are exact.

use crate::support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{Daemon, await_close, num, wait_file_contains};
use socket2::{Domain, Socket, Type};

const WAIT: Duration = Duration::from_secs(20);
/// A refused connection is closed right after accept; the bound only
/// covers a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_secs(5);

/// A TCP connection to `to` from source address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let ip: IpAddr = from.parse().expect("source ip");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(ip, 0).into()).expect("bind source");
    s.connect(&to.into()).expect("connect");
    s.into()
}

/// The daemon of these tests; `access` sets the `[server]` key under test.
fn start(access: impl FnOnce(Conf) -> Conf) -> Daemon {
    access(Conf::new())
        .set("server.framing", "lines")
        .set("limits.idle_timeout", "30s")
        .set("sink.flush_interval", "20ms")
        .start()
}

#[test]
fn allow_list_closes_others_at_accept_without_a_thread() {
    let mut d = start(|c| c.set("server.allow", ["127.0.0.2/32", "127.0.0.4/31"]));
    let out = d.path("out.log");
    let mut allowed = connect_from("127.0.0.2", d.addr);
    allowed.write_all(b"from .2\n").expect("send");
    assert!(wait_file_contains(&out, b"from .2\n", WAIT));
    let baseline = d.threads();

    let sampler = support::proc::Sampler::start(d.pid(), Duration::from_millis(1));
    for i in 0..40 {
        let mut denied = connect_from("127.0.0.3", d.addr);
        // Sent, never delivered.
        let _ = denied.write_all(format!("denied {i}\n").as_bytes());
        await_close(&mut denied, AT_ONCE);
    }
    let max = sampler.peak_threads();
    assert!(
        max <= baseline,
        "a thread was started for a denied connection: max {max} > baseline {baseline}"
    );

    for from in ["127.0.0.4", "127.0.0.5"] {
        let mut s = connect_from(from, d.addr);
        s.write_all(format!("from {from}\n").as_bytes())
            .expect("send");
    }
    allowed.write_all(b"still .2\n").expect("send");
    assert!(wait_file_contains(&out, b"from 127.0.0.5\n", WAIT));
    assert!(wait_file_contains(&out, b"still .2\n", WAIT));
    let line = d
        .wait_log(WAIT, |l| l.contains("connection refused at accept"))
        .expect("one aggregated warning");
    assert!(line.contains("peer=127.0.0.3:"), "{line}");
    assert!(line.contains("server.allow"), "{line}");
    drop(allowed);

    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "conns_denied"), 40, "{st:?}");
    assert_eq!(num(&st, "conns_total"), 43, "{st:?}");
    assert_eq!(num(&st, "received"), 4, "{st:?}");
    assert_eq!(num(&st, "conns_over_ip_limit"), 0, "{st:?}");
    let text = String::from_utf8_lossy(&support::read(&out)).into_owned();
    assert!(!text.contains("denied"), "{text}");
    // At most one warning line per second for the 40 refusals.
    let warnings = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("connection refused at accept"))
        .count();
    assert!(warnings <= 3, "{warnings} warning lines for 40 refusals");
}

#[test]
fn per_ip_cap_refuses_the_extra_connection_and_frees_on_close() {
    let mut d = start(|c| c.set("server.max_connections_per_ip", 2));
    let out = d.path("out.log");
    let mut a1 = connect_from("127.0.0.2", d.addr);
    let mut a2 = connect_from("127.0.0.2", d.addr);
    let mut b1 = connect_from("127.0.0.3", d.addr);
    let mut b2 = connect_from("127.0.0.3", d.addr);
    for (s, m) in [
        (&mut a1, "a1"),
        (&mut a2, "a2"),
        (&mut b1, "b1"),
        (&mut b2, "b2"),
    ] {
        s.write_all(format!("{m}\n").as_bytes()).expect("send");
    }
    for m in ["a1\n", "a2\n", "b1\n", "b2\n"] {
        assert!(wait_file_contains(&out, m.as_bytes(), WAIT), "{m}");
    }
    let baseline = d.threads();
    let sampler = support::proc::Sampler::start(d.pid(), Duration::from_millis(1));
    for _ in 0..10 {
        let mut extra = connect_from("127.0.0.2", d.addr);
        let _ = extra.write_all(b"over the cap\n");
        await_close(&mut extra, AT_ONCE);
    }
    let max = sampler.peak_threads();
    assert!(max <= baseline, "thread started: {max} > {baseline}");

    // Closing one of .2's connections frees its slot once the worker ends.
    drop(a1);
    d.wait_stats(WAIT, |s| num(s, "conns_active") == 3)
        .expect("a1's worker ends");
    let mut a3 = connect_from("127.0.0.2", d.addr);
    a3.write_all(b"a3\n").expect("send");
    assert!(wait_file_contains(&out, b"a3\n", WAIT));
    a2.write_all(b"a2 again\n").expect("send");
    assert!(wait_file_contains(&out, b"a2 again\n", WAIT));
    drop((a2, a3, b1, b2));

    assert!(d.stop(WAIT).success());
    let st = d.final_stats();
    assert_eq!(num(&st, "conns_over_ip_limit"), 10, "{st:?}");
    assert_eq!(num(&st, "conns_denied"), 0, "{st:?}");
    assert_eq!(num(&st, "conns_total"), 15, "{st:?}");
    assert_eq!(num(&st, "received"), 6, "{st:?}");
    assert!(
        !String::from_utf8_lossy(&support::read(&out)).contains("over the cap"),
        "a refused connection's message was delivered"
    );
}
