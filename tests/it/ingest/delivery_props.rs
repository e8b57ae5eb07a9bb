//! Property tests of a connection's batching and buffer offsets, through
//! the public API only: in-process daemons (`start_with_sinks` with a
//! recording [`TestSink`]) and a real `TcpStream` client. Arbitrary
//! messages in each framing, written in arbitrary pieces: every message
//! reaches the sink exactly once, in order, byte for byte; oversize lines
//! are dropped and counted; `received` grows by exactly the messages framed
//! (oversize ones included) and nothing is dropped otherwise.
//!
//! What this reaches in src/conn/ without naming its internals: batches
//! cut at the batch limit (a sixteenth of `queue.capacity`: 2 messages with
//! capacity 32, 4096 with the default), runs of clean lines copied in one
//! piece next to frames that take the slow path (CRLF, empty lines,
//! octet-counted frames in `auto`, oversize lines), the read buffer's
//! compaction and growth (messages up to 3 KiB against an 8 KiB first
//! buffer), a final unterminated line at EOF, and reads split anywhere.

use std::cell::RefCell;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{TestSink, wait_until};
use floodwall::{Shutdown, Snapshot};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

const MAX_MESSAGE_BYTES: usize = 4096;
/// 32 gives a batch limit of 2 messages; the default gives 4096.
const CAPACITIES: [u64; 2] = [32, 65536];
const FRAMINGS: [&str; 3] = ["lines", "octet-counted", "auto"];
/// Enough to reach every branch often; each case is one connection, a few
/// milliseconds.
const CASES: u32 = 150;
const WAIT: Duration = Duration::from_secs(20);

/// One thing the client sends.
#[derive(Debug, Clone)]
enum Item {
    /// A message; `crlf` ends it with CR LF instead of LF (line framings).
    Message { body: Vec<u8>, crlf: bool },
    /// An empty line, LF or CR LF (line framings only).
    Empty { crlf: bool },
    /// A line over `max_message_bytes` (line framings only).
    Oversize { len: usize },
}

fn item() -> impl Strategy<Value = Item> {
    let body = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 1..64),
        1 => proptest::collection::vec(any::<u8>(), 64..3000),
    ];
    prop_oneof![
        12 => (body, any::<bool>()).prop_map(|(body, crlf)| Item::Message { body, crlf }),
        2 => any::<bool>().prop_map(|crlf| Item::Empty { crlf }),
        1 => (1usize..3000).prop_map(|over| Item::Oversize { len: MAX_MESSAGE_BYTES + over }),
    ]
}

/// The bytes on the wire for `items` in `framing`, the messages the sink
/// must get, and how many oversize lines must be counted.
fn encode(framing: &str, items: &[Item], unterminated: bool) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut oversize = 0;
    let octet_frame = |wire: &mut Vec<u8>, body: &[u8]| {
        wire.extend_from_slice(format!("{} ", body.len()).as_bytes());
        wire.extend_from_slice(body);
    };
    for (i, it) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        match (framing, it) {
            ("octet-counted", Item::Message { body, .. }) => {
                octet_frame(&mut wire, body);
                expected.push(body.clone());
            }
            // Empty lines and oversize lines are not octet-counted frames.
            ("octet-counted", _) => {}
            // auto reads a frame starting with 1-9 as octet-counted (and
            // so would a line whose LFs, dropped below, came first).
            ("auto", Item::Message { body, .. })
                if body
                    .iter()
                    .find(|&&b| b != b'\n')
                    .is_some_and(|b| (b'1'..=b'9').contains(b)) =>
            {
                octet_frame(&mut wire, body);
                expected.push(body.clone());
            }
            (_, Item::Message { body, crlf }) => {
                let mut body: Vec<u8> = body.iter().copied().filter(|&b| b != b'\n').collect();
                if unterminated && last {
                    // At EOF the line ends where the bytes do; a trailing
                    // CR would be stripped, so keep it off.
                    while body.last() == Some(&b'\r') {
                        body.pop();
                    }
                    if !body.is_empty() {
                        wire.extend_from_slice(&body);
                        expected.push(body);
                    }
                    continue;
                }
                if body.is_empty() {
                    continue;
                }
                wire.extend_from_slice(&body);
                // One trailing CR is stripped: a body ending in CR needs
                // the CR LF ending to keep it.
                if *crlf || body.last() == Some(&b'\r') {
                    wire.push(b'\r');
                }
                wire.push(b'\n');
                expected.push(body);
            }
            (_, Item::Empty { crlf }) => {
                wire.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
            (_, Item::Oversize { len }) => {
                wire.extend(std::iter::repeat_n(b'o', *len));
                wire.push(b'\n');
                oversize += 1;
            }
        }
    }
    (wire, expected, oversize)
}

/// One in-process daemon and the sink that records what it delivers.
struct Under {
    framing: &'static str,
    capacity: u64,
    daemon: floodwall::Daemon,
    sink: TestSink,
    /// Messages it must have delivered over all cases so far.
    delivered: u64,
}

fn start(framing: &'static str, capacity: u64) -> Under {
    let config = Conf::bare()
        .set("server.framing", framing)
        .set("server.max_message_bytes", MAX_MESSAGE_BYTES)
        // Never a drop on a loaded machine: only the framing and batching
        // are on trial.
        .set("limits.send_timeout", "60s")
        .set("queue.capacity", capacity)
        .set("log.stats_interval", "0s")
        .parse();
    let sink = TestSink::new();
    let daemon = floodwall::start_with_sinks(config, Shutdown::new(), sink.boxed())
        .expect("start in-process daemon");
    Under {
        framing,
        capacity,
        daemon,
        sink,
        delivered: 0,
    }
}

/// Sends `wire` on one connection in the pieces `cuts` makes, then closes,
/// and checks what the daemon made of it.
fn check(
    under: &mut Under,
    wire: &[u8],
    cuts: &[prop::sample::Index],
    expected: &[Vec<u8>],
    oversize: u64,
) -> Result<(), TestCaseError> {
    let before: Snapshot = under.daemon.stats();
    let seen = under.sink.count();
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    let mut s = TcpStream::connect(under.daemon.local_addr()).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut at = 0;
    for p in points {
        s.write_all(&wire[at..p]).expect("send");
        at = p;
        // Input pacing, not synchronisation: gives the worker a chance to
        // read each piece on its own.
        thread::sleep(Duration::from_micros(100));
    }
    drop(s);
    let n = expected.len() as u64;
    let settled = wait_until(WAIT, || {
        let st = under.daemon.stats();
        st.conns_total == before.conns_total + 1
            && st.conns_active == 0
            && st.received >= before.received + n + oversize
            && st.delivered >= before.delivered + n
    });
    let st = under.daemon.stats();
    let label = format!("{} capacity {}", under.framing, under.capacity);
    prop_assert!(
        settled,
        "{label}: never settled: before {before:?} now {st:?}"
    );
    let got = under.sink.messages().split_off(seen);
    prop_assert_eq!(got.len(), expected.len(), "{}: message count", label);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        prop_assert!(
            g == e,
            "{label}: message {i} differs: got {:?} want {:?}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(e)
        );
    }
    prop_assert_eq!(
        st.received - before.received,
        n + oversize,
        "{}: received",
        label
    );
    prop_assert_eq!(st.delivered - before.delivered, n, "{}: delivered", label);
    prop_assert_eq!(
        st.dropped_oversize - before.dropped_oversize,
        oversize,
        "{}: dropped_oversize",
        label
    );
    prop_assert_eq!(
        st.dropped_send_timeout,
        before.dropped_send_timeout,
        "{}",
        label
    );
    prop_assert_eq!(st.closed_framing, before.closed_framing, "{}", label);
    prop_assert!(st.balanced(), "{label}: books do not balance: {st:?}");
    under.delivered += n;
    Ok(())
}

#[test]
fn every_message_arrives_once_in_order_and_intact_whatever_the_writes() {
    let daemons: Vec<Under> = FRAMINGS
        .iter()
        .flat_map(|&f| CAPACITIES.iter().map(move |&c| start(f, c)))
        .collect();
    let count = daemons.len();
    // The runner wants an `Fn`; cases run one at a time.
    let daemons = RefCell::new(daemons);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..count,
        proptest::collection::vec(item(), 0..60),
        any::<bool>(),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    );
    let result = runner.run(&strategy, |(which, items, unterminated, cuts)| {
        let under = &mut daemons.borrow_mut()[which];
        let (wire, expected, oversize) = encode(under.framing, &items, unterminated);
        check(under, &wire, &cuts, &expected, oversize)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    for under in daemons.into_inner() {
        under.daemon.shutdown_handle().trigger();
        let report = under.daemon.wait();
        assert!(report.drained, "{report:?}");
        assert!(report.stats.balanced(), "{:?}", report.stats);
        assert_eq!(report.stats.delivered, under.delivered, "{report:?}");
        assert_eq!(under.sink.count() as u64, under.delivered);
    }
}

/// A long stream written in big pieces: runs of clean lines fill the read
/// buffer, so batches adopt the buffer instead of copying from it (and the
/// partial frame at its end moves to the next buffer), between runs broken
/// by CR LF, empty and oversize lines. Every message arrives intact.
#[test]
fn a_streaming_client_whose_runs_fill_the_buffer_loses_and_mangles_nothing() {
    for framing in FRAMINGS {
        let mut under = start(framing, 65536);
        // Deterministic mix, ~4 MB: mostly short clean lines, now and then
        // a line that takes the slow path.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let items: Vec<Item> = (0..40_000)
            .map(|i| match next() % 200 {
                0 => Item::Empty { crlf: false },
                1 => Item::Message {
                    body: b"crlf".to_vec(),
                    crlf: true,
                },
                2 => Item::Oversize {
                    len: MAX_MESSAGE_BYTES + 1,
                },
                r => {
                    let len = 20 + (r as usize * 7) % 180;
                    let mut body = format!("m{i:06}-").into_bytes();
                    body.resize(len, b'a' + (i % 26) as u8);
                    Item::Message { body, crlf: false }
                }
            })
            .collect();
        let (wire, expected, oversize) = encode(framing, &items, false);
        let cuts: Vec<prop::sample::Index> = Vec::new();
        if let Err(e) = check(&mut under, &wire, &cuts, &expected, oversize) {
            panic!("{framing}: {e}");
        }
        under.daemon.shutdown_handle().trigger();
        let report = under.daemon.wait();
        assert!(report.drained && report.stats.balanced(), "{report:?}");
    }
}
