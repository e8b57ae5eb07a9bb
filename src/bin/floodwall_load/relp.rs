//! `--relp`: a RELP client per connection, the way omrelp sends: open the
//! session, keep up to `--window` syslog frames unanswered, and count a
//! message done when its `rsp 200` arrives. What it measures is the
//! receiver's acknowledged throughput and each message's ack latency
//! (send to rsp), not what a socket buffer swallowed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use floodwall::relp::codec::{self, Command};
use parking_lot::Mutex;

use crate::histogram::Histogram;

pub struct Plan {
    pub addr: SocketAddr,
    pub threads: usize,
    pub window: usize,
    pub size: usize,
    pub duration: Option<Duration>,
    /// Messages per connection; None: until the duration ends.
    pub per_thread: Option<u64>,
}

#[derive(Default)]
pub struct Counters {
    pub acked: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub live: AtomicU64,
    /// Ack latency in microseconds, merged from every connection.
    pub latency: Mutex<Histogram>,
}

pub fn spawn(
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
) -> Vec<JoinHandle<()>> {
    (0..plan.threads)
        .map(|id| {
            let (plan, counters, stop, barrier) = (
                plan.clone(),
                counters.clone(),
                stop.clone(),
                barrier.clone(),
            );
            counters.live.fetch_add(1, Ordering::SeqCst);
            thread::Builder::new()
                .name(format!("fwl-relp-{id}"))
                .spawn(move || {
                    barrier.wait();
                    let mut latency = Histogram::default();
                    if let Err(e) = session(id, &plan, &counters, &stop, &mut latency) {
                        eprintln!("[fwl] relp connection {id}: {e}");
                        counters.errors.fetch_add(1, Ordering::SeqCst);
                    }
                    merge(&counters.latency, &latency);
                    counters.live.fetch_sub(1, Ordering::SeqCst);
                })
                .expect("spawn a sender thread")
        })
        .collect()
}

fn merge(into: &Mutex<Histogram>, from: &Histogram) {
    into.lock().merge(from);
}

fn session(
    id: usize,
    plan: &Plan,
    counters: &Counters,
    stop: &AtomicBool,
    latency: &mut Histogram,
) -> io::Result<()> {
    let mut sock = TcpStream::connect(plan.addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = Vec::new();
    codec::encode(
        &mut out,
        1,
        Command::Open,
        b"relp_version=0\nrelp_software=floodwall-load\ncommands=syslog",
    );
    sock.write_all(&out)?;
    let mut inbuf = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut next_frame =
        |sock: &mut TcpStream, inbuf: &mut Vec<u8>| -> io::Result<(u32, Vec<u8>)> {
            loop {
                let decoded = codec::decode(inbuf, 1 << 20)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if let Some((f, used)) = decoded {
                    let got = (f.txnr, f.data[..f.data.len().min(3)].to_vec());
                    inbuf.drain(..used);
                    return Ok(got);
                }
                let n = sock.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                inbuf.extend_from_slice(&chunk[..n]);
            }
        };
    let (_, code) = next_frame(&mut sock, &mut inbuf)?;
    if code != b"200" {
        return Err(io::Error::other("open refused"));
    }
    let body = "m".repeat(plan.size.saturating_sub(40));
    let started = Instant::now();
    let mut txnr = 2u32;
    let mut seq = 0u64;
    // Sent and unanswered: (txnr, send time), oldest first.
    let mut unanswered: VecDeque<(u32, Instant)> = VecDeque::with_capacity(plan.window);
    loop {
        let more = !stop.load(Ordering::Relaxed)
            && plan.duration.is_none_or(|d| started.elapsed() < d)
            && plan.per_thread.is_none_or(|n| seq < n);
        if more {
            out.clear();
            let now = Instant::now();
            while unanswered.len() < plan.window && plan.per_thread.is_none_or(|n| seq < n) {
                let msg = format!("<13>fwl {id} {seq:012} {body}");
                codec::encode(&mut out, txnr, Command::Syslog, msg.as_bytes());
                unanswered.push_back((txnr, now));
                txnr = codec::next_txnr(txnr);
                seq += 1;
            }
            sock.write_all(&out)?;
        } else if unanswered.is_empty() {
            break;
        }
        // At least one answer, then whatever else has arrived.
        let (t, code) = next_frame(&mut sock, &mut inbuf)?;
        let Some(&(first, sent)) = unanswered.front() else {
            continue; // an answer we did not ask for (serverclose): next read fails
        };
        if t != first {
            return Err(io::Error::other(format!(
                "rsp {t} out of order, expected {first}"
            )));
        }
        unanswered.pop_front();
        if code == b"200" {
            counters.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        latency.record(sent.elapsed().as_micros() as u64);
    }
    out.clear();
    codec::encode(&mut out, txnr, Command::Close, b"");
    sock.write_all(&out)?;
    let _ = next_frame(&mut sock, &mut inbuf);
    Ok(())
}
