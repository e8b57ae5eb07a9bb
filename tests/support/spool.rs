//! Shared by the spool tests: a downstream TCP collector that can stop
//! reading (an outage the spool must absorb), paced clients that number
//! their messages, and the checks on what reached the collector.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// What one downstream connection delivered, shared with the reader.
type ConnBytes = Arc<Mutex<Vec<u8>>>;

/// A downstream collector on 127.0.0.1:0 that keeps every byte it read,
/// across connections, in arrival order per connection.
pub struct Collector {
    pub addr: SocketAddr,
    /// While set, the collector neither accepts nor reads.
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Each connection's bytes, in accept order.
    conns: Arc<Mutex<Vec<ConnBytes>>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// `rcvbuf`: a small receive buffer makes "stop reading" felt at once
    /// instead of after megabytes of kernel buffering. `read_rate`: bytes
    /// per second at most (0 = as fast as it can).
    pub fn start(rcvbuf: usize, read_rate: usize) -> Collector {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("reuseaddr");
        // Inherited by accepted sockets: set before listen.
        socket.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&bind.into()).expect("bind");
        socket.listen(16).expect("listen");
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<ConnBytes>>> = Arc::default();
        let (p, s, c) = (paused.clone(), stop.clone(), conns.clone());
        // One accept loop, one blocking reader thread per connection.
        let thread = thread::spawn(move || {
            let mut readers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).expect("blocking");
                // Bounded reads, so that pause and stop are seen.
                stream
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("read timeout");
                let bytes: ConnBytes = Arc::default();
                c.lock().unwrap().push(bytes.clone());
                let (p, s) = (p.clone(), s.clone());
                readers.push(thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut window = Instant::now();
                    let mut total = 0usize;
                    while !s.load(Ordering::SeqCst) {
                        if p.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        // Pacing in 50 ms windows: no credit piles up.
                        if window.elapsed() >= Duration::from_millis(50) {
                            window = Instant::now();
                            total = 0;
                        }
                        if read_rate > 0 && total >= read_rate / 20 {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        match stream.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                                total += n;
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock
                                        | std::io::ErrorKind::TimedOut
                                        | std::io::ErrorKind::Interrupted
                                ) => {}
                            Err(_) => return,
                        }
                    }
                }));
            }
            for r in readers {
                let _ = r.join();
            }
        });
        Collector {
            addr,
            paused,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Every complete line read so far, per connection, concatenated.
    pub fn lines(&self) -> Vec<String> {
        let conns = self.conns.lock().unwrap();
        let mut out = Vec::new();
        for c in conns.iter() {
            let bytes = c.lock().unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let complete = text.rfind('\n').map_or("", |i| &text[..i]);
            out.extend(
                complete
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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

/// A port on 127.0.0.1 where nothing listens (bound then released; the
/// kernel does not hand an ephemeral port straight back).
pub fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
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
        &tcp_sink(dead_port()),
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
