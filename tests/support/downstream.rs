//! The one downstream collector: a TCP listener on loopback standing in
//! for whatever the tcp sink forwards to. It keeps every byte of every
//! connection (in accept order, each connection's bytes in arrival
//! order), and can misbehave the ways the tests need: frozen (accepts,
//! never reads, until released), paused (neither accepts nor reads, until
//! resumed), killed (port and connections closed at once, like a killed
//! process), or bound at a given address (started after the daemon).
//!
//! Bounded: the accept loop and every reader end within a few
//! milliseconds of a stop (20 ms read timeouts), and a drop stops them.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// One connection's bytes, shared with its reader thread.
type ConnBytes = Arc<Mutex<Vec<u8>>>;

#[derive(Default)]
struct State {
    /// Set by `kill` or drop: every thread returns and closes its socket.
    stop: AtomicBool,
    /// Set while paused: neither accepts nor reads.
    paused: AtomicBool,
    /// Clear while frozen: accepts, reads nothing.
    reading: AtomicBool,
    /// Each connection's bytes, in accept order.
    conns: Mutex<Vec<ConnBytes>>,
}

pub struct Downstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Downstream {
    /// Reads everything, on 127.0.0.1:0.
    pub fn start() -> Downstream {
        Downstream::open("127.0.0.1:0", None, true).expect("bind downstream")
    }

    /// Reads everything, at `addr` (a port picked before the daemon was
    /// started): an error if it is taken.
    pub fn bind(addr: &str) -> std::io::Result<Downstream> {
        Downstream::open(addr, None, true)
    }

    /// A `rcvbuf`-byte receive buffer on every connection: a pause is
    /// felt at once instead of after megabytes of kernel buffering.
    pub fn with_rcvbuf(rcvbuf: usize) -> Downstream {
        Downstream::open("127.0.0.1:0", Some(rcvbuf), true).expect("bind downstream")
    }

    /// Accepts every connection but reads nothing until [`release`]d,
    /// with 4 KiB receive buffers: the daemon's sink write blocks after a
    /// few KiB, not MiBs.
    ///
    /// [`release`]: Downstream::release
    pub fn frozen() -> Downstream {
        Downstream::open("127.0.0.1:0", Some(4096), false).expect("bind downstream")
    }

    /// Accepts every connection and never reads (default buffers).
    pub fn stalled() -> Downstream {
        Downstream::open("127.0.0.1:0", None, false).expect("bind downstream")
    }

    fn open(addr: &str, rcvbuf: Option<usize>, reading: bool) -> std::io::Result<Downstream> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if let Some(size) = rcvbuf {
            // Inherited by accepted sockets: set before listen.
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.reading.store(reading, Ordering::SeqCst);
        let st = state.clone();
        let accept = thread::spawn(move || {
            let mut readers = Vec::new();
            while !st.stop.load(Ordering::SeqCst) {
                if st.paused.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let Ok((stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let bytes = ConnBytes::default();
                st.conns.lock().unwrap().push(bytes.clone());
                let st = st.clone();
                readers.push(thread::spawn(move || {
                    read_until_stopped(stream, &bytes, &st)
                }));
            }
            // Like a killed process: the port closes, and so does every
            // connection (each reader drops its socket as it returns),
            // whatever is still unread in it.
            drop(listener);
            for r in readers {
                r.join().expect("downstream reader");
            }
        });
        Ok(Downstream {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// Starts reading (after [`Downstream::frozen`] or `stalled`).
    pub fn release(&self) {
        self.state.reading.store(true, Ordering::SeqCst);
    }

    /// Stops accepting and reading until [`Downstream::resume`].
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.conns.lock().unwrap().len()
    }

    /// Bytes read, per connection, in accept order.
    pub fn per_connection(&self) -> Vec<Vec<u8>> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.lock().unwrap().clone())
            .collect()
    }

    /// Every byte read, connection after connection.
    pub fn bytes(&self) -> Vec<u8> {
        self.per_connection().concat()
    }

    /// Every complete (LF-terminated) non-empty line, connection after
    /// connection.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for bytes in self.per_connection() {
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

    /// LF bytes read so far: the lines delivered.
    pub fn line_count(&self) -> usize {
        self.per_connection()
            .iter()
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .sum()
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        self.per_connection()
            .iter()
            .any(|b| b.windows(needle.len()).any(|w| w == needle))
    }

    /// Closes the port and every connection at once; what was read.
    pub fn kill(mut self) -> Vec<Vec<u8>> {
        self.stop_now();
        self.per_connection()
    }

    fn stop_now(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().expect("downstream accept thread");
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn read_until_stopped(mut stream: TcpStream, bytes: &Mutex<Vec<u8>>, st: &State) {
    stream.set_nonblocking(false).expect("blocking socket");
    // Bounded reads, so that pause and stop are seen.
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut chunk = vec![0u8; 64 << 10];
    while !st.stop.load(Ordering::SeqCst) {
        if st.paused.load(Ordering::SeqCst) || !st.reading.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => bytes.lock().unwrap().extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
