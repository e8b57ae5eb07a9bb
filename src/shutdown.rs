//! The shutdown handle: one flag, set once, that every thread can poll or
//! wait on with a timeout, and the instant it was set, from which every
//! thread derives the same drain deadline. main wires SIGTERM/SIGINT to
//! [`Shutdown::trigger`]; tests call it directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    /// When `trigger` first ran; guarded by `lock`.
    at: Mutex<Option<Instant>>,
    lock: Mutex<()>,
    changed: Condvar,
}

/// Cloneable; all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the graceful shutdown; idempotent. Returns true the first time.
    pub fn trigger(&self) -> bool {
        let _guard = self.inner.lock.lock();
        self.inner.at.lock().get_or_insert_with(Instant::now);
        let first = !self.inner.triggered.swap(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        first
    }

    /// The drain deadline: `timeout` after the trigger; `None` before it.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let at = (*self.inner.at.lock())?;
        Some(at.checked_add(timeout).unwrap_or(at))
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Blocks until triggered.
    pub fn wait(&self) {
        let mut guard = self.inner.lock.lock();
        while !self.is_triggered() {
            self.inner.changed.wait(&mut guard);
        }
    }

    /// Waits at most `timeout`; true if triggered. Doubles as an
    /// interruptible sleep.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut guard = self.inner.lock.lock();
        if !self.is_triggered() {
            self.inner.changed.wait_for(&mut guard, timeout);
        }
        self.is_triggered()
    }
}

/// A request counter for "reopen the file sink" (SIGHUP); sinks compare
/// the generation they last saw.
#[derive(Debug, Clone, Default)]
pub struct Reopen {
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Reopen {
    pub fn request(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_wakes_a_waiter() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_timeout(Duration::from_secs(30)));
        assert!(s.trigger());
        assert!(!s.trigger());
        assert!(t.join().unwrap());
    }
}
