//! Waiting for a client socket to become readable, interruptibly: a worker
//! that has nothing to read sleeps in `poll(2)` on its socket and on one
//! wake-up pipe shared by every worker. At shutdown the accept loop writes
//! a byte into the pipe (never read back), so every sleeping worker wakes
//! at once and starts its drain: no read ever blocks past the signal.
//!
//! Why not `shutdown(SHUT_RD)` on each socket (what wakes a blocked
//! `read`)? After it, Linux returns 0 from `read` whenever the receive
//! queue is momentarily empty, so a client still writing would look like
//! one that closed, and a real EOF (whose final unterminated line must be
//! delivered) could not be told apart. With poll, a 0 from `read` still
//! means the client closed.
//!
//! Workers keep their sockets non-blocking and poll only after a read
//! returned `WouldBlock`, so a streaming client costs no extra syscall.

use std::io;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The socket has data, EOF or an error to read.
    Socket,
    /// The wake-up pipe fired (shutdown).
    Woken,
    /// The timeout passed first.
    TimedOut,
}

/// The shared wake-up pipe: a connected pair of Unix sockets.
#[derive(Debug)]
pub struct Wake {
    /// Written once at shutdown.
    fire: UnixStream,
    /// Becomes readable (and stays so) once fired; polled by every worker.
    watch: UnixStream,
}

impl Wake {
    pub fn new() -> io::Result<Wake> {
        let (fire, watch) = UnixStream::pair()?;
        fire.set_nonblocking(true)?;
        Ok(Wake { fire, watch })
    }

    /// Wakes every current and future waiter that watches the pipe.
    pub fn fire(&self) {
        // One byte is enough: nobody reads it, so the pipe stays readable.
        // WouldBlock (already full) means it is readable already.
        let _ = (&self.fire).write(&[1]);
    }

    /// What the pipe's waiters poll (a RELP session builds its own poll
    /// with it beside its socket and its ack bell).
    pub fn watch(&self) -> &UnixStream {
        &self.watch
    }

    /// Waits until `socket` is readable, the pipe fires (when `watch` is
    /// true) or `timeout` passes (`None`: no timeout).
    pub fn wait(
        &self,
        socket: &impl AsFd,
        timeout: Option<Duration>,
        watch: bool,
    ) -> io::Result<Ready> {
        // Sub-millisecond remainders round up, so a deadline is not spun
        // on with zero-length polls; absurd ones are capped.
        let timeout = timeout.map(|t| {
            Timespec::try_from(t.max(Duration::from_millis(1))).unwrap_or(Timespec {
                tv_sec: i32::MAX as i64,
                tv_nsec: 0,
            })
        });
        let input = PollFlags::IN | PollFlags::RDHUP;
        let mut fds = [
            PollFd::new(socket, input),
            PollFd::new(&self.watch, PollFlags::IN),
        ];
        let n = if watch { 2 } else { 1 };
        loop {
            match poll(&mut fds[..n], timeout.as_ref()) {
                Ok(0) => return Ok(Ready::TimedOut),
                Ok(_) => {
                    if !fds[0].revents().is_empty() {
                        return Ok(Ready::Socket);
                    }
                    return Ok(Ready::Woken);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    #[test]
    fn wakes_on_data_on_fire_and_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let wake = Wake::new().unwrap();
        let t = Instant::now();
        assert_eq!(
            wake.wait(&server, Some(Duration::from_millis(30)), true)
                .unwrap(),
            Ready::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(25));
        client.write_all(b"x").unwrap();
        assert_eq!(wake.wait(&server, None, true).unwrap(), Ready::Socket);
        let idle = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        wake.fire();
        assert_eq!(wake.wait(&idle, None, true).unwrap(), Ready::Woken);
        // Not watching the pipe: only the socket or the timeout count.
        assert_eq!(
            wake.wait(&idle, Some(Duration::from_millis(5)), false)
                .unwrap(),
            Ready::TimedOut
        );
    }
}
