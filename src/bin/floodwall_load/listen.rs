//! The receiving modes. `--discard-listen` is the ceiling: a thread per
//! connection that only reads and counts bytes and LFs. `--latency-listen`
//! is a downstream collector (point floodwall's tcp sink, or any
//! forwarder, at it): it splits lines, parses each payload header and
//! records the latency from the sender's timestamp to the moment the read
//! that brought the line returned, and checks each sending connection's
//! sequence numbers for gaps and reordering.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};

use super::histogram::Histogram;
use super::payload;
use super::send::{THREAD_STACK, unix_nanos};

const BACKLOG: i32 = 4096;
const READ_BUF: usize = 256 << 10;
/// Sender connection ids tracked for sequence checks at most (bounds memory).
const MAX_TRACKED_CONNS: usize = 1 << 20;

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Counters of a receiving mode; readers add per read.
#[derive(Debug)]
pub struct Received {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub conns: AtomicU64,
    pub live: AtomicU64,
    /// Nanoseconds after `epoch` of the first and latest read with data
    /// (first + 1, so 0 means "none yet").
    pub first_read: AtomicU64,
    pub last_read: AtomicU64,
    pub epoch: Instant,
}

impl Received {
    pub fn new() -> Received {
        Received {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            conns: AtomicU64::new(0),
            live: AtomicU64::new(0),
            first_read: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let t = self.epoch.elapsed().as_nanos() as u64 + 1;
        let _ = self
            .first_read
            .compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
        self.last_read.fetch_max(t, Ordering::Relaxed);
    }

    /// Seconds from the first to the last read with data.
    pub fn active_secs(&self) -> f64 {
        let (a, b) = (
            self.first_read.load(Ordering::Relaxed),
            self.last_read.load(Ordering::Relaxed),
        );
        if a == 0 { 0.0 } else { (b - a) as f64 / 1e9 }
    }
}

/// Sequence and latency results of the collector.
#[derive(Debug, Default)]
pub struct Collected {
    pub latency: Histogram,
    /// Next expected sequence number per sending connection, + 1 (0 = unseen).
    next_seq: Vec<u64>,
    /// Messages missing: forward jumps in a connection's sequence.
    pub gaps: u64,
    /// Messages whose sequence number was below the expected one
    /// (duplicates after a tcp sink reconnect, or reordering). Sequence
    /// 0 is never counted: it starts a new sender run on that id.
    pub backwards: u64,
    /// Lines without a payload header.
    pub unparsed: u64,
    /// Distinct sending connections seen.
    pub senders: u64,
}

impl Collected {
    fn observe(&mut self, stamp: payload::Stamp, now_nanos: u64) {
        self.latency.record(now_nanos.saturating_sub(stamp.nanos));
        let c = stamp.conn as usize;
        if c >= MAX_TRACKED_CONNS {
            return;
        }
        if c >= self.next_seq.len() {
            self.next_seq.resize(c + 1, 0);
        }
        let slot = &mut self.next_seq[c];
        if *slot != 0 && stamp.seq == 0 {
            // A new floodwall-load run reusing connection ids: start over.
            *slot = 2;
            return;
        }
        if *slot == 0 {
            self.senders += 1;
            self.gaps += stamp.seq; // what came before the first one seen
            *slot = stamp.seq + 2;
            return;
        }
        let expected = *slot - 1;
        if stamp.seq >= expected {
            self.gaps += stamp.seq - expected;
            *slot = stamp.seq + 2;
        } else {
            self.backwards += 1;
        }
    }

    /// Feeds every complete line of `data`; returns the bytes of the
    /// incomplete tail (to keep for the next read).
    pub fn feed(&mut self, data: &[u8], now_nanos: u64) -> (usize, u64) {
        let mut start = 0;
        let mut lines = 0;
        for end in memchr::memchr_iter(b'\n', data) {
            let line = &data[start..end];
            start = end + 1;
            if line.is_empty() {
                continue;
            }
            lines += 1;
            match payload::parse(line) {
                Some(stamp) => self.observe(stamp, now_nanos),
                None => self.unparsed += 1,
            }
        }
        (data.len() - start, lines)
    }
}

/// Accepts forever, one reader thread per connection.
pub fn serve(
    listener: TcpListener,
    received: Arc<Received>,
    collected: Option<Arc<Mutex<Collected>>>,
) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("floodwall-load: accept: {e}");
                thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let (received, collected) = (received.clone(), collected.clone());
        received.conns.fetch_add(1, Ordering::Relaxed);
        received.live.fetch_add(1, Ordering::Relaxed);
        let spawned = thread::Builder::new()
            .name("fwl-recv".to_string())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let result = match &collected {
                    None => discard(stream, &received),
                    Some(c) => collect(stream, &received, c),
                };
                if let Err(e) = result {
                    eprintln!("floodwall-load: read: {e}");
                }
                received.live.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            eprintln!("floodwall-load: cannot start a reader thread: {e}");
        }
    }
}

fn discard(mut stream: TcpStream, received: &Received) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let lines = memchr::memchr_iter(b'\n', &buf[..n]).count();
                received.add(lines as u64, n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn collect(
    mut stream: TcpStream,
    received: &Received,
    collected: &Mutex<Collected>,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // One line longer than the buffer: not ours; skip it.
            collected.lock().unparsed += 1;
            filled = 0;
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        };
        // Every line of this read arrived when the read returned.
        let now = unix_nanos();
        let end = filled + n;
        let (tail, lines) = collected.lock().feed(&buf[..end], now);
        received.add(lines, n as u64);
        buf.copy_within(end - tail..end, 0);
        filled = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Framing, Stamp, write_frame};

    fn frames(items: &[(u32, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(conn, seq) in items {
            let stamp = Stamp {
                conn,
                seq,
                nanos: 1_000,
            };
            write_frame(&mut out, Framing::Lines, stamp, 80);
        }
        out
    }

    #[test]
    fn feed_counts_gaps_and_backwards_per_connection() {
        let mut c = Collected::default();
        let data = frames(&[(0, 0), (1, 0), (0, 1), (0, 4), (1, 1), (0, 2), (0, 5)]);
        let (tail, lines) = c.feed(&data, 3_000);
        assert_eq!((tail, lines), (0, 7));
        assert_eq!(c.senders, 2);
        assert_eq!(c.gaps, 2, "seq 2 and 3 of conn 0 skipped");
        assert_eq!(c.backwards, 1, "seq 2 of conn 0 after 4");
        assert_eq!(c.latency.count(), 7);
        assert_eq!(c.latency.max(), 2_000);
    }

    #[test]
    fn feed_keeps_a_partial_line_for_the_next_read() {
        let mut c = Collected::default();
        let data = frames(&[(0, 0), (0, 1)]);
        let (tail, lines) = c.feed(&data[..100], 5_000);
        assert_eq!((tail, lines), (20, 1));
        let (tail, lines) = c.feed(&data[80..], 5_000);
        assert_eq!((tail, lines), (0, 1));
        assert_eq!((c.gaps, c.backwards, c.unparsed), (0, 0, 0));
    }

    #[test]
    fn feed_counts_foreign_lines_and_a_late_first_sequence() {
        let mut c = Collected::default();
        let mut data = b"hello\n\n".to_vec();
        data.extend(frames(&[(3, 10)]));
        c.feed(&data, 2_000);
        assert_eq!(c.unparsed, 1);
        assert_eq!(c.gaps, 10, "seq 0..=9 of conn 3 never arrived");
    }

    #[test]
    fn sequence_zero_starts_a_new_run_of_that_connection() {
        let mut c = Collected::default();
        c.feed(
            &frames(&[(0, 0), (0, 1), (0, 2), (0, 0), (0, 1), (0, 3)]),
            2_000,
        );
        assert_eq!((c.gaps, c.backwards), (1, 0));
        assert_eq!(c.senders, 1);
    }
}
