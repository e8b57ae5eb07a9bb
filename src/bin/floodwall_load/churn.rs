//! `--churn`: short connections, the traffic shape of logger, cron jobs,
//! scripts and health checks. Each sender thread loops: connect (with
//! `--tls-ca`, a full handshake every time: the client keeps no session
//! to resume), write `--per-conn` messages in one write, close, until
//! `--duration` or `--count` messages. Sources rotate over 127.0.0.1..250
//! so that tens of thousands of client-side TIME_WAIT sockets do not use
//! up one address's ephemeral ports (shared/NOTES.md: about 28,000).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};
use socket2::{Domain, Socket, Type};

use super::payload::{self, Framing, Stamp};
use super::send::{THREAD_STACK, Tls, unix_nanos};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Source addresses to rotate over (127.0.0.1 ..= 127.0.0.SOURCES).
const SOURCES: u32 = 250;

/// What the churn senders do.
pub struct Churn {
    pub addr: SocketAddr,
    pub threads: usize,
    pub per_conn: u64,
    pub size: usize,
    pub framing: Framing,
    pub duration: Option<Duration>,
    /// Total messages over all threads.
    pub count: Option<u64>,
    pub tls: Option<Tls>,
    /// Rotate source addresses (see the module comment).
    pub bind_sources: bool,
}

#[derive(Debug, Default)]
pub struct ChurnCounters {
    pub connections: AtomicU64,
    pub sent: AtomicU64,
    pub connect_errors: AtomicU64,
    pub write_errors: AtomicU64,
    /// Sender threads still running.
    pub live: AtomicU64,
}

/// Starts the churn threads; they wait at `start`, then loop.
pub fn spawn(
    plan: Arc<Churn>,
    counters: Arc<ChurnCounters>,
    stop: Arc<AtomicBool>,
    start: Arc<Barrier>,
) -> Vec<thread::JoinHandle<()>> {
    (0..plan.threads)
        .filter_map(|t| {
            let (p, c, s, b) = (plan.clone(), counters.clone(), stop.clone(), start.clone());
            counters.live.fetch_add(1, Ordering::SeqCst);
            let spawned = thread::Builder::new()
                .name(format!("fwl-churn-{t}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    b.wait();
                    churner(t, &p, &c, &s);
                    c.live.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(h) => Some(h),
                Err(e) => {
                    counters.live.fetch_sub(1, Ordering::SeqCst);
                    eprintln!("floodwall-load: cannot start churn thread {t}: {e}");
                    let start = start.clone();
                    thread::spawn(move || start.wait());
                    None
                }
            }
        })
        .collect()
}

fn churner(t: usize, plan: &Churn, counters: &ChurnCounters, stop: &AtomicBool) {
    let t0 = Instant::now();
    let deadline = plan.duration.map(|d| t0 + d);
    // This thread's share of the messages, in whole connections.
    let quota = plan.count.map(|c| {
        let n = plan.threads as u64;
        c / n + u64::from((t as u64) < c % n)
    });
    let mut buf = Vec::new();
    let mut seq = 0u64;
    let mut source = t as u32;
    loop {
        if stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
            || quota.is_some_and(|q| seq >= q)
        {
            return;
        }
        let n = quota.map_or(plan.per_conn, |q| plan.per_conn.min(q - seq));
        buf.clear();
        let nanos = unix_nanos();
        for _ in 0..n {
            let stamp = Stamp {
                conn: t as u32,
                seq,
                nanos,
            };
            payload::write_frame(&mut buf, plan.framing, stamp, plan.size);
            seq += 1;
        }
        source = source.wrapping_add(plan.threads as u32);
        let from = Ipv4Addr::new(127, 0, 0, (1 + source % SOURCES) as u8);
        match one(plan, from, &buf) {
            Ok(()) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                counters.sent.fetch_add(n, Ordering::Relaxed);
            }
            Err((connected, e)) => {
                let counter = if connected {
                    &counters.write_errors
                } else {
                    &counters.connect_errors
                };
                if counter.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("floodwall-load: churn {t}: {e}");
                }
            }
        }
    }
}

/// One short connection: connect from `from`, write `data`, close.
/// The error says whether the connection was up.
fn one(plan: &Churn, from: Ipv4Addr, data: &[u8]) -> Result<(), (bool, io::Error)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| (false, e))?;
    if plan.bind_sources && plan.addr.ip().is_loopback() {
        socket
            .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
            .map_err(|e| (false, e))?;
    }
    socket
        .connect_timeout(&plan.addr.into(), CONNECT_TIMEOUT)
        .map_err(|e| (false, e))?;
    let mut s = TcpStream::from(socket);
    s.set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| (true, e))?;
    let Some(tls) = &plan.tls else {
        return s.write_all(data).map_err(|e| (true, e));
    };
    s.set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| (true, e))?;
    let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(|e| (true, io::Error::other(e)))?;
    let mut stream = StreamOwned::new(conn, s);
    // The first write drives the handshake; close_notify then tells the
    // server the stream ended on purpose (no truncated frame).
    stream.write_all(data).map_err(|e| (true, e))?;
    stream.conn.send_close_notify();
    stream.flush().map_err(|e| (true, e))
}
