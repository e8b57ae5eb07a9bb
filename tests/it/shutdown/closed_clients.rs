//! Issue 8: a client that wrote everything and closed before SIGTERM
//! loses nothing, whatever its volume, with every sink. Each client's
//! lines carry its id and a sequence number, so the check is exact: every
//! line once, intact, each client's in order.

use crate::support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::{Daemon, num, read};

/// Generous for a loaded 2-core machine; the default drain deadline
/// (10 s) bounds the daemon's own part.
const WAIT: Duration = Duration::from_secs(60);

/// One line: fixed width (about 100 bytes), so sizes are exact.
fn line(client: usize, seq: usize) -> String {
    format!("client {client:03} seq {seq:07} {}\n", "x".repeat(75))
}

/// `clients` threads each write `lines` lines as fast as they can and
/// close; returns once every one has returned from close.
fn write_and_close(addr: SocketAddr, clients: usize, lines: usize) {
    let writers: Vec<_> = (0..clients)
        .map(|c| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let mut chunk = String::new();
                for i in 0..lines {
                    chunk.push_str(&line(c, i));
                    if chunk.len() >= 64 << 10 {
                        s.write_all(chunk.as_bytes()).expect("write");
                        chunk.clear();
                    }
                }
                s.write_all(chunk.as_bytes()).expect("write");
                // Dropping closes (FIN); the data may still be in flight.
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
}

/// Every client's lines exactly once, in order, intact.
fn assert_every_line_once_in_order(data: &[u8], clients: usize, lines: usize) {
    let text = std::str::from_utf8(data).expect("utf-8 output");
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut total = 0usize;
    for l in text.lines() {
        let c: usize = l[7..10]
            .parse()
            .unwrap_or_else(|_| panic!("bad line {l:?}"));
        let seq: usize = l[15..22]
            .parse()
            .unwrap_or_else(|_| panic!("bad line {l:?}"));
        let want = next.entry(c).or_insert(0);
        assert_eq!(seq, *want, "client {c}: line {seq} where {want} was due");
        assert_eq!(format!("{l}\n"), line(c, seq), "line damaged");
        *want += 1;
        total += 1;
    }
    for c in 0..clients {
        assert_eq!(
            next.get(&c).copied().unwrap_or(0),
            lines,
            "client {c}: lines missing"
        );
    }
    assert_eq!(total, clients * lines);
}

fn file_config() -> Conf {
    Conf::new().set("log.stats_interval", "0s")
}

/// Writes, closes, SIGTERMs at once; returns the stop time.
fn run_and_stop(d: &mut Daemon, clients: usize, lines: usize) -> Duration {
    write_and_close(d.addr, clients, lines);
    let t = Instant::now();
    let s = d.stop_balanced(WAIT);
    let took = t.elapsed();
    assert!(
        d.log_text().contains("shutdown drained=true lost=0"),
        "log:\n{}",
        d.log_text()
    );
    assert_eq!(num(&s, "received"), (clients * lines) as u64, "{s:?}");
    assert_eq!(num(&s, "delivered"), (clients * lines) as u64, "{s:?}");
    assert_eq!(num(&s, "dropped_shutdown"), 0, "{s:?}");
    took
}

#[test]
fn clients_that_wrote_and_closed_before_sigterm_lose_nothing_file_sink() {
    for (clients, lines) in [(10, 20_000), (50, 2_000)] {
        let mut d = file_config().start();
        let took = run_and_stop(&mut d, clients, lines);
        assert_every_line_once_in_order(&read(&d.path("out.log")), clients, lines);
        eprintln!(
            "FIGURES shutdown closed clients file: clients={clients} bytes_each={} stop_took={took:?}",
            lines * line(0, 0).len()
        );
    }
}

#[test]
fn clients_that_wrote_and_closed_before_sigterm_lose_nothing_tcp_sink() {
    let collector = TcpListener::bind("127.0.0.1:0").expect("bind collector");
    let target = collector.local_addr().expect("collector addr");
    let reader = thread::spawn(move || {
        let (mut s, _) = collector.accept().expect("sink connects");
        let mut data = Vec::new();
        s.read_to_end(&mut data).expect("read collector");
        data
    });
    let mut d = Conf::new()
        .sink("tcp")
        .set("sink.address", target.to_string())
        .set("log.stats_interval", "0s")
        .start();
    let (clients, lines) = (10, 20_000);
    run_and_stop(&mut d, clients, lines);
    // The daemon has exited, so the sink's connection is closed: EOF.
    let data = reader.join().expect("collector thread");
    assert_every_line_once_in_order(&data, clients, lines);
}

#[test]
fn a_final_unterminated_line_is_delivered_when_the_client_closes_during_the_drain() {
    // The rate limit keeps most of the input unread in the kernel when
    // SIGTERM arrives, so the EOF (and the final line) is met by the
    // shutdown drain, not by the normal read loop.
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.rate_per_connection", 50)
        .set("sink.flush_interval", "20ms")
        .set("log.stats_interval", "0s")
        .start();
    let out = d.path("out.log");
    let mut expected = Vec::new();
    for i in 0..300 {
        expected.extend_from_slice(format!("paced line {i:03}\n").as_bytes());
    }
    let mut c = d.connect();
    c.write_all(&expected).expect("send");
    c.write_all(b"the last line has no LF").expect("send");
    drop(c);
    expected.extend_from_slice(b"the last line has no LF\n");
    assert!(support::wait_until(WAIT, || !read(&out).is_empty()));
    assert!(
        read(&out).len() < expected.len() / 2,
        "the rate limit should still hold most lines back"
    );
    let s = d.stop_balanced(WAIT);
    support::assert_bytes(&expected, &read(&out));
    assert_eq!(num(&s, "delivered"), 301);
    assert_eq!(num(&s, "closed_eof"), 1, "{s:?}");
}

#[test]
fn a_client_that_wrote_and_closed_while_waiting_in_the_backlog_loses_nothing() {
    // One permit, held by an idle client: the second client's connection
    // waits in the kernel's accept queue, where it writes and closes.
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.max_connections", 1)
        .set("log.stats_interval", "50ms")
        .start();
    let holder = d.connect();
    assert!(
        d.wait_stats(WAIT, |s| num(s, "workers") == 1).is_some(),
        "the first client never got its worker"
    );
    let mut waiting = d.connect();
    let expected: String = (0..500)
        .map(|i| format!("from the backlog {i:03}\n"))
        .collect();
    waiting
        .write_all(expected.as_bytes())
        .expect("write into the backlog");
    drop(waiting);
    let s = d.stop_balanced(WAIT);
    support::assert_bytes(expected.as_bytes(), &read(&d.path("out.log")));
    assert_eq!(num(&s, "conns_total"), 2, "{s:?}");
    drop(holder);
}
