//! Helpers shared by the fault scenarios (tests/fault_*.rs): a downstream
//! TCP collector that can be frozen (accepts, never reads) and released, a
//! sampler of the daemon's live OS threads, flooding clients, and the
//! RLIMIT_NOFILE raise that tests with hundreds of sockets need.
//!
//! Everything here is bounded: every loop ends at a deadline or a stop
//! flag, every socket has a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Daemon, StatsLine, assert_balanced, num, proc_status, wait_until};

/// Raises the soft RLIMIT_NOFILE to the hard limit (NOTES.md: tests that
/// open many sockets do this and stay below the hard limit). Returns the
/// soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// A downstream collector for the tcp sink: accepts every connection but
/// reads nothing while frozen, so the daemon's sink write blocks once the
/// socket buffers are full. Released, it reads everything and keeps it.
pub struct Downstream {
    pub addr: SocketAddr,
    state: Arc<DownState>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct DownState {
    released: AtomicBool,
    stop: AtomicBool,
    /// Everything read, all connections in read order.
    data: Mutex<Vec<u8>>,
    /// When the first byte after the release was read.
    first_read: Mutex<Option<Instant>>,
    connections: AtomicU64,
}

impl Downstream {
    /// Starts frozen.
    pub fn frozen() -> Downstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind downstream");
        // Small buffers: the stall reaches the daemon after a few KiB, not MiBs.
        let sock = socket2::SockRef::from(&listener);
        let _ = sock.set_recv_buffer_size(4096);
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("downstream addr");
        let state = Arc::new(DownState::default());
        let st = state.clone();
        let acceptor = thread::spawn(move || {
            let mut readers = Vec::new();
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        let st = st.clone();
                        readers.push(thread::spawn(move || read_when_released(conn, &st)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for r in readers {
                let _ = r.join();
            }
        });
        Downstream {
            addr,
            state,
            threads: vec![acceptor],
        }
    }

    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn data(&self) -> Vec<u8> {
        self.state.data.lock().unwrap().clone()
    }

    /// LF-terminated lines read so far.
    pub fn lines(&self) -> usize {
        self.state
            .data
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        let data = self.state.data.lock().unwrap();
        data.windows(needle.len()).any(|w| w == needle)
    }

    pub fn first_read(&self) -> Option<Instant> {
        *self.state.first_read.lock().unwrap()
    }
}

fn read_when_released(mut conn: TcpStream, st: &DownState) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 << 10];
    while !st.stop.load(Ordering::SeqCst) {
        if !st.released.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                st.first_read
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
                st.data.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One sample of the daemon: live OS threads and resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub threads: u64,
    pub rss_kib: u64,
    /// When it was taken.
    pub at: Instant,
}

/// Samples a process's live OS threads (and RSS) every ~20 ms until stopped.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

impl ThreadSampler {
    pub fn start(pid: u32) -> ThreadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded: at most ten minutes of samples even if never stopped.
            for _ in 0..30_000 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                // Panics (failing `finish`) if the daemon is gone: every
                // sample is a real reading.
                let threads = proc_status(pid, "Threads:");
                let rss_kib = proc_status(pid, "VmRSS:");
                samples.push(Sample {
                    threads,
                    rss_kib,
                    at: Instant::now(),
                });
                thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        ThreadSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns every sample taken (at least one). Call it
    /// while the daemon still runs.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .handle
            .take()
            .map(|h| {
                h.join()
                    .expect("sampler thread panicked: see its message above")
            })
            .unwrap_or_default();
        assert!(!samples.is_empty(), "the sampler took no sample");
        samples
    }
}

/// `n` clients that connect and write `line` over and over as fast as the
/// daemon lets them until `run_for` has passed, reconnecting whenever the
/// daemon closes them. Returns (lines handed to the kernel, connects).
pub fn flood(addr: SocketAddr, n: usize, run_for: Duration, tag: &str) -> (u64, u64) {
    let deadline = Instant::now() + run_for;
    let sent = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (sent, connects) = (sent.clone(), connects.clone());
            let line = format!("{tag} client {i:04} {}\n", "x".repeat(60));
            let chunk = line.repeat(64).into_bytes();
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    while Instant::now() < deadline {
                        let Ok(mut s) =
                            TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                        else {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        };
                        connects.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                        // Small send buffers: what sits in kernel buffers
                        // when the flood stops stays small (loopback
                        // autotuning would otherwise park MiBs per socket).
                        let _ = socket2::SockRef::from(&s).set_send_buffer_size(16 << 10);
                        while Instant::now() < deadline {
                            match s.write(&chunk) {
                                Ok(n) => {
                                    sent.fetch_add((n / line.len()) as u64, Ordering::Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }
                })
                .expect("spawn flood client")
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    (
        sent.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
    )
}

/// Connects, writes `data` and closes.
pub fn send_and_close(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(data).expect("send");
}

/// After a clean exit: exit 0, balanced books, an empty queue, no sink
/// errors, and the downstream holding exactly the `delivered` lines.
/// Returns the final stats line.
pub fn assert_drained_into(
    daemon: &Daemon,
    status: std::process::ExitStatus,
    downstream: &Downstream,
) -> StatsLine {
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    let last = daemon.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "queue_depth"), 0, "{last:?}");
    assert_eq!(num(&last, "sink_errors"), 0, "{last:?}");
    assert!(
        wait_until(Duration::from_secs(10), || downstream.lines() as u64
            == num(&last, "delivered")),
        "downstream has {} lines, the daemon delivered {}",
        downstream.lines(),
        num(&last, "delivered")
    );
    last
}
