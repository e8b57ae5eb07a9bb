//! Acknowledgement handles: how a RELP session learns that a batch it
//! queued is durable, without the plain TCP path paying for it.
//!
//! A session gives every batch it queues one [`Ack`] (an `Arc`: a batch
//! carries `Option<Ack>`, `None` for plain TCP, so a plain message pays
//! one pointer-sized field and one branch). Whoever makes the batch
//! durable fires it: the sink runner once the sink wrote it (file:
//! written; tcp: written to the socket; stdout, null), the nats sink once
//! the stream acknowledged its last message, or, with `[spool]`, the
//! spool writer after the `sync` that covers its record. Firing sets a
//! flag and rings the session's [`Bell`], a socket pair the session
//! polls beside its client's socket; the session then answers, in txnr
//! order, every leading batch whose flag is set.
//!
//! A batch that is never made durable (dropped at the shutdown deadline,
//! refused by the downstream) never fires: its messages are never
//! acknowledged, so the client keeps and resends them.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One batch's acknowledgement: fired once its messages are durable.
#[derive(Clone)]
pub struct Ack(Arc<AckInner>);

struct AckInner {
    done: AtomicBool,
    bell: Arc<Bell>,
}

impl Ack {
    pub fn new(bell: &Arc<Bell>) -> Ack {
        Ack(Arc::new(AckInner {
            done: AtomicBool::new(false),
            bell: bell.clone(),
        }))
    }

    /// The batch is durable: tell its session.
    pub fn fire(&self) {
        self.0.done.store(true, Ordering::SeqCst);
        self.0.bell.ring();
    }

    pub fn is_done(&self) -> bool {
        self.0.done.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ack(done={})", self.is_done())
    }
}

/// The same handle (batches compare equal when they carry the same one).
impl PartialEq for Ack {
    fn eq(&self, other: &Ack) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Ack {}

/// A session's door bell: rung by whichever thread fires one of its
/// acks, polled by the session. One byte per wait at most: `rung` stays
/// set until the session [`Bell::answer`]s, so a burst of acks costs one
/// write.
#[derive(Debug)]
pub struct Bell {
    rung: AtomicBool,
    ring: UnixStream,
    watch: UnixStream,
}

impl Bell {
    pub fn new() -> io::Result<Arc<Bell>> {
        let (ring, watch) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        watch.set_nonblocking(true)?;
        Ok(Arc::new(Bell {
            rung: AtomicBool::new(false),
            ring,
            watch,
        }))
    }

    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            // WouldBlock: the pipe is full, so readable already.
            let _ = (&self.ring).write(&[1]);
        }
    }

    /// What the session polls: readable once rung.
    pub fn watch(&self) -> &UnixStream {
        &self.watch
    }

    /// The session is about to look at its acks: later rings wake it
    /// again. Cleared before the look, so an ack fired during it rings.
    pub fn answer(&self) {
        self.rung.store(false, Ordering::SeqCst);
        let mut sink = [0u8; 64];
        while matches!((&self.watch).read(&mut sink), Ok(n) if n > 0) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_rings_once_until_answered() {
        let bell = Bell::new().unwrap();
        let (a, b) = (Ack::new(&bell), Ack::new(&bell));
        assert!(!a.is_done());
        a.fire();
        b.fire();
        assert!(a.is_done() && b.is_done());
        let mut buf = [0u8; 8];
        assert_eq!((&bell.watch).read(&mut buf).unwrap(), 1);
        bell.answer();
        Ack::new(&bell).fire();
        assert_eq!((&bell.watch).read(&mut buf).unwrap(), 1);
    }
}
