//! The sending side: one thread per connection (small stack, one reused
//! write buffer each), full speed or paced to a share of an aggregate
//! rate; and `--idle`, which only holds connections open.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::payload::{self, Framing, Stamp};

/// Stack of a sender thread: it formats into a heap buffer and calls
/// write; 64 KiB leaves ample room and lets 10,000 threads fit.
pub const THREAD_STACK: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A blocked write wakes this often to look at the deadline and stop flag.
const WRITE_WAKE: Duration = Duration::from_millis(200);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// At the end of a TLS run, how long the records rustls still holds may
/// take to leave (they were counted sent when rustls took them).
const TLS_DRAIN: Duration = Duration::from_secs(10);
/// Longest sleep of a paced sender, so it notices stop and deadline.
const MAX_PACE_SLEEP: Duration = Duration::from_millis(50);
/// Shortest: a paced sender sends what is due in ticks of at least 1 ms,
/// not one wake-up per message (which would cost the shared CPU more
/// than the server under test). Timestamps are taken per batch, so the
/// tick does not bias measured latency.
const MIN_PACE_SLEEP: Duration = Duration::from_millis(1);

/// What every sender thread does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub framing: Framing,
    pub duration: Option<Duration>,
    /// Total messages over all connections.
    pub count: Option<u64>,
    /// Aggregate messages/s; 0 = as fast as possible.
    pub rate: u64,
    /// Bytes formatted per write at full speed.
    pub buffer: usize,
    pub reconnect: bool,
    /// Speak TLS.
    pub tls: Option<Tls>,
}

/// A TLS client config and the server name to verify.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// A sender's connection, plain or TLS. Held idle connections are these
/// too, so a TLS session's memory is held as long as its socket.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Plan {
    /// This connection's share of `count`.
    fn quota(&self, conn: usize) -> Option<u64> {
        let n = self.conns as u64;
        self.count.map(|c| c / n + u64::from((conn as u64) < c % n))
    }
}

/// Counters the progress line and summary read; senders add per batch.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub bytes: AtomicU64,
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Sender threads still running.
    pub live: AtomicU64,
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Starts `plan.conns` sender threads; they connect, wait for each other
/// at `start` (so the clock starts with every connection up), then send.
pub fn spawn_senders(
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    start: Arc<Barrier>,
) -> Vec<thread::JoinHandle<()>> {
    let mut handles = Vec::with_capacity(plan.conns);
    for conn in 0..plan.conns {
        let (p, c, s, b) = (plan.clone(), counters.clone(), stop.clone(), start.clone());
        counters.live.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name(format!("fwl-send-{conn}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                sender(conn, &p, &c, &s, &b);
                c.live.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier counts this thread: stand in for it.
                counters.live.fetch_sub(1, Ordering::SeqCst);
                counters.connect_errors.fetch_add(1, Ordering::SeqCst);
                eprintln!("floodwall-load: cannot start sender thread {conn}: {e}");
                let start = start.clone();
                thread::spawn(move || start.wait());
            }
        }
    }
    handles
}

fn connect(addr: SocketAddr, tls: Option<&Tls>) -> io::Result<Conn> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    let Some(tls) = tls else {
        s.set_write_timeout(Some(WRITE_WAKE))?;
        return Ok(Conn::Plain(s));
    };
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    let mut conn =
        ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s)?;
    }
    s.set_write_timeout(Some(WRITE_WAKE))?;
    Ok(Conn::Tls(Box::new(StreamOwned::new(conn, s))))
}

fn sender(conn: usize, plan: &Plan, counters: &Counters, stop: &AtomicBool, start: &Barrier) {
    let stream = match connect(plan.addr, plan.tls.as_ref()) {
        Ok(s) => {
            counters.connected.fetch_add(1, Ordering::SeqCst);
            Some(s)
        }
        Err(e) => {
            if counters.connect_errors.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!("floodwall-load: connect {}: {e}", plan.addr);
            }
            None
        }
    };
    start.wait();
    let Some(mut stream) = stream else { return };
    let t0 = Instant::now();
    let deadline = plan.duration.map(|d| t0 + d);
    let quota = plan.quota(conn);
    let per_conn_rate = plan.rate as f64 / plan.conns as f64;
    let frame = payload::frame_len(plan.framing, plan.size);
    let batch_max = (plan.buffer / frame).max(1) as u64;
    // The one write buffer of this connection, reused for every batch.
    let mut buf: Vec<u8> = Vec::with_capacity(batch_max as usize * (frame + 1));
    let mut seq: u64 = 0;
    let done = |now: Instant| stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d);
    loop {
        let now = Instant::now();
        if done(now) || quota.is_some_and(|q| seq >= q) {
            break;
        }
        let mut n = batch_max;
        if let Some(q) = quota {
            n = n.min(q - seq);
        }
        if plan.rate > 0 {
            // Messages due by now (the first at t=0).
            let due = ((now - t0).as_secs_f64() * per_conn_rate) as u64 + 1;
            if due <= seq {
                let next = t0 + Duration::from_secs_f64(seq as f64 / per_conn_rate);
                let wait = next.saturating_duration_since(now);
                thread::sleep(wait.clamp(MIN_PACE_SLEEP, MAX_PACE_SLEEP));
                continue;
            }
            n = n.min(due - seq);
        }
        buf.clear();
        let nanos = unix_nanos();
        let conn_id = conn as u32;
        for _ in 0..n {
            let stamp = Stamp {
                conn: conn_id,
                seq,
                nanos,
            };
            payload::write_frame(&mut buf, plan.framing, stamp, plan.size);
            seq += 1;
        }
        let (written, error) = write_fully(&mut stream, &buf, &done);
        // Frames all have the same length: count the whole ones the
        // kernel accepted, and a cut-short last one too when frames are
        // lines (a receiver delivers an unterminated last line at EOF as
        // a message; an octet-counted one it refuses, so it is not sent).
        let mut frames = (written / frame) as u64;
        if written % frame != 0 && plan.framing == Framing::Lines {
            frames += 1;
        }
        counters.sent.fetch_add(frames, Ordering::Relaxed);
        counters.bytes.fetch_add(written as u64, Ordering::Relaxed);
        match error {
            None => {
                if written < buf.len() {
                    break;
                }
            }
            Some(e) => {
                if counters.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("floodwall-load: conn {conn}: write: {e}");
                }
                if !plan.reconnect {
                    break;
                }
                match reconnect(plan.addr, plan.tls.as_ref(), &done) {
                    Some(s) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        stream = s;
                    }
                    None => break,
                }
            }
        }
    }
    drain_tls(&mut stream, counters);
}

/// TLS: rustls takes plaintext faster than the socket does, and what it
/// took was counted sent; let its records leave before the connection is
/// dropped (a receiver that stays stalled past `TLS_DRAIN` counts as a
/// write error, so a cut-short run shows).
fn drain_tls(stream: &mut Conn, counters: &Counters) {
    let Conn::Tls(tls) = stream else { return };
    let until = Instant::now() + TLS_DRAIN;
    while let Err(e) = tls.flush() {
        let transient = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        );
        if !transient || Instant::now() >= until {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Writes `buf` until done or until `done` turns true (checked after
/// every partial write and every write timeout, so a stop is not held up
/// by a slow receiver). Returns the bytes the kernel accepted, also when
/// a write failed after some of them (then with the error).
fn write_fully(
    stream: &mut Conn,
    buf: &[u8],
    done: &dyn Fn(Instant) -> bool,
) -> (usize, Option<io::Error>) {
    let mut off = 0;
    while off < buf.len() {
        match stream.write(&buf[off..]) {
            Ok(0) => return (off, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (off, Some(e)),
        }
        if off < buf.len() && done(Instant::now()) {
            break;
        }
    }
    // TLS: rustls took the bytes; push its records out too.
    if let Conn::Tls(_) = stream {
        while let Err(e) = stream.flush() {
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) {
                return (off, Some(e));
            }
            if done(Instant::now()) {
                break;
            }
        }
    }
    (off, None)
}

fn reconnect(addr: SocketAddr, tls: Option<&Tls>, done: &dyn Fn(Instant) -> bool) -> Option<Conn> {
    while !done(Instant::now()) {
        thread::sleep(RECONNECT_BACKOFF);
        if let Ok(s) = connect(addr, tls) {
            return Some(s);
        }
    }
    None
}

/// Opens `n` connections from a few connector threads and returns them;
/// holding them needs no thread at all. With `hello`, each sends one
/// message of `size` bytes first (so a server has read from it once).
pub fn open_idle(
    addr: SocketAddr,
    n: usize,
    hello: Option<usize>,
    tls: Option<&Tls>,
) -> (Vec<Conn>, u64) {
    let connectors = n.clamp(1, 16);
    // Only to print the first error once.
    let failed = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..connectors)
        .map(|k| {
            let failed = failed.clone();
            let tls = tls.cloned();
            thread::Builder::new()
                .name(format!("fwl-idle-{k}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    let mut held = Vec::new();
                    let mut buf = Vec::new();
                    for conn in (k..n).step_by(connectors) {
                        match connect(addr, tls.as_ref()) {
                            Ok(mut s) => {
                                if let Some(size) = hello {
                                    buf.clear();
                                    let stamp = Stamp {
                                        conn: conn as u32,
                                        seq: 0,
                                        nanos: unix_nanos(),
                                    };
                                    payload::write_frame(&mut buf, Framing::Lines, stamp, size);
                                    if s.write_all(&buf).and_then(|()| s.flush()).is_err() {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                }
                                held.push(s);
                            }
                            Err(e) => {
                                if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("floodwall-load: idle connect {addr}: {e}");
                                }
                            }
                        }
                    }
                    held
                })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for h in handles {
        match h {
            Ok(h) => held.extend(h.join().unwrap_or_default()),
            Err(e) => eprintln!("floodwall-load: cannot start a connector thread: {e}"),
        }
    }
    // Failed connects, failed hellos and connector threads that never ran.
    let failed = (n - held.len()) as u64;
    (held, failed)
}
