//! The connection limiter: a counting semaphore of `limits.max_connections`
//! permits. Each worker thread is covered by one [`Permit`] from before it
//! starts until after it has been joined (the accept loop holds it beside
//! the thread's handle); the permit goes back on drop, so no path (return,
//! early exit, panic unwind) can leak one.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Debug)]
struct Inner {
    available: Mutex<usize>,
    freed: Condvar,
}

/// A counting semaphore; clones share the same permits.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// One admitted connection. Dropping it returns the permit.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
}

impl Limiter {
    pub fn new(permits: usize) -> Limiter {
        Limiter {
            inner: Arc::new(Inner {
                available: Mutex::new(permits),
                freed: Condvar::new(),
            }),
        }
    }

    pub fn try_acquire(&self) -> Option<Permit> {
        let mut available = self.inner.available.lock();
        self.take(&mut available)
    }

    /// Waits at most `timeout` for a permit (bounded so the caller can
    /// look at shutdown between waits).
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<Permit> {
        let mut available = self.inner.available.lock();
        if *available == 0 {
            self.inner.freed.wait_for(&mut available, timeout);
        }
        self.take(&mut available)
    }

    pub fn available(&self) -> usize {
        *self.inner.available.lock()
    }

    fn take(&self, available: &mut usize) -> Option<Permit> {
        if *available == 0 {
            return None;
        }
        *available -= 1;
        Some(Permit {
            inner: self.inner.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.inner.available.lock() += 1;
        self.inner.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn permits_are_counted() {
        let l = Limiter::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn acquire_times_out_when_none_is_free() {
        let l = Limiter::new(1);
        let _a = l.try_acquire().unwrap();
        let t = Instant::now();
        assert!(l.acquire_timeout(Duration::from_millis(50)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn a_waiter_gets_the_permit_another_thread_drops() {
        let l = Limiter::new(1);
        let a = l.try_acquire().unwrap();
        let l2 = l.clone();
        let t = std::thread::spawn(move || l2.acquire_timeout(Duration::from_secs(30)).is_some());
        drop(a);
        assert!(t.join().unwrap());
    }

    #[test]
    fn permit_returns_on_panic_unwind() {
        let l = Limiter::new(1);
        let p = l.try_acquire().unwrap();
        let r = std::thread::spawn(move || {
            let _p = p;
            panic!("worker failed");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(l.available(), 1);
    }
}
