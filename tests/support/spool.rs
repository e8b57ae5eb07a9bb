//! Shared by the spool tests: a downstream TCP collector that can stop
//! reading (an outage the spool must absorb), paced clients that number
//! their messages, and the checks on what reached the collector.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A message as the tests send it: `c<client> <seq> <padding>`.
pub fn message(client: usize, seq: usize, size: usize) -> String {
    let head = format!("c{client} {seq:08} ");
    let pad = size.saturating_sub(head.len());
    format!("{head}{}", "x".repeat(pad))
}

/// Parses `c<client> <seq> ...` back.
pub fn parse(line: &str) -> Option<(usize, usize)> {
    let mut it = line.split(' ');
    let client = it.next()?.strip_prefix('c')?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((client, seq))
}

/// Sequence numbers seen per client, in arrival order.
pub fn per_client(lines: &[String]) -> HashMap<usize, Vec<usize>> {
    let mut m: HashMap<usize, Vec<usize>> = HashMap::new();
    for l in lines {
        let (c, s) = parse(l).unwrap_or_else(|| panic!("not a test message: {l:?}"));
        m.entry(c).or_default().push(s);
    }
    m
}

/// `clients` connections to `addr`, each sending `per_client` messages of
/// `size` bytes at `rate` messages/s (per client), then closing. Returns
/// whether each connection stayed open (every write succeeded).
pub fn paced_clients(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    rate: f64,
    size: usize,
) -> Vec<JoinHandle<bool>> {
    (0..clients)
        .map(|c| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let start = Instant::now();
                for i in 0..per_client {
                    // Pacing to a schedule (not synchronisation): message
                    // i leaves at i/rate seconds.
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let line = format!("{}\n", message(c, i, size));
                    if s.write_all(line.as_bytes()).is_err() {
                        return false;
                    }
                }
                true
            })
        })
        .collect()
}

/// A tiny xorshift generator: random kill moments and damage offsets
/// without another dependency; the seed is printed for reruns.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time() -> Rng {
        let seed = std::env::var("SPOOL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("SPOOL_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A daemon config with a spool in `spool_dir` and the given `[sink]`
/// body; stats every 100 ms so tests can wait on them.
pub fn config(sink: &str, spool_dir: &std::path::Path, extra: &str) -> String {
    config_with_sync(sink, spool_dir, "50ms", extra)
}

/// [`config`] with the spool's `sync` given.
pub fn config_with_sync(
    sink: &str,
    spool_dir: &std::path::Path,
    sync: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
framing = "lines"
[sink]
{sink}
[spool]
dir = "{}"
segment_bytes = "64KiB"
sync = "{sync}"
[log]
stats_interval = "100ms"
{extra}
"#,
        spool_dir.display()
    )
}

/// The `[sink]` body of a tcp sink to `addr`.
pub fn tcp_sink(addr: SocketAddr) -> String {
    format!("type = \"tcp\"\naddress = \"{addr}\"\nwrite_timeout = \"500ms\"")
}

/// Spools `conns` x `per_conn` messages (client `c`, seq across all) with
/// the downstream away, one connection at a time (so each is its own
/// record), then shuts down cleanly: the spool is kept.
pub fn fill_spool(spool_dir: &std::path::Path, conns: usize, per_conn: usize) -> u64 {
    // A 1 s drain deadline: the sinks try the dead downstream until then.
    let mut d = super::Daemon::start(&config(
        &tcp_sink(super::free_port()),
        spool_dir,
        "[shutdown]\ntimeout = \"1s\"",
    ));
    let mut seq = 0;
    for _ in 0..conns {
        let mut batch = String::new();
        for _ in 0..per_conn {
            batch.push_str(&message(0, seq, 40));
            batch.push('\n');
            seq += 1;
        }
        d.send(batch.as_bytes());
        let want = seq as u64;
        // One connection's messages framed before the next is opened.
        assert!(
            super::wait_until(Duration::from_secs(10), || {
                d.log_lines()
                    .iter()
                    .filter_map(|l| super::parse_stats(l))
                    .any(|s| super::num(&s, "received") == want)
            }),
            "messages not framed; log:\n{}",
            d.log_text()
        );
    }
    let status = d.stop(Duration::from_secs(15));
    assert!(
        status.success(),
        "fill run exit {status:?}; log:\n{}",
        d.log_text()
    );
    let last = d.final_stats();
    assert_eq!(
        super::num(&last, "queue_depth"),
        seq as u64,
        "spooled at exit"
    );
    seq as u64
}

/// Raises `max[client]` to the highest sequence number of each client's
/// messages in the spool's segment files (a record being appended right
/// now is simply not seen yet; a segment deleted since the last look was
/// seen then, as deletion waits for a durable position).
pub fn spooled_max(dir: &Path, max: &mut HashMap<usize, usize>) {
    use floodwall::spool::record::{self, Parsed};
    use floodwall::spool::segment;
    for seq in segment::list(dir).expect("list the spool's segments") {
        let Ok(bytes) = std::fs::read(segment::path(dir, seq)) else {
            continue; // deleted meanwhile
        };
        let mut at = 0;
        while let Parsed::Record { len, .. } = record::parse(&bytes[at..]) {
            if let Some(batch) = record::decode(&bytes[at..at + len]) {
                for m in batch.messages() {
                    if let Some((c, s)) = parse(&String::from_utf8_lossy(m)) {
                        let top = max.entry(c).or_default();
                        *top = (*top).max(s);
                    }
                }
            }
            at += len;
        }
    }
}
