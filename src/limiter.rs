//! The connection limiter: a counting semaphore of `limits.max_connections`
//! permits. Each worker thread is covered by one [`Permit`] from before it
//! starts until after it has been joined (the accept loop holds it beside
//! the thread's handle); the permit goes back on drop, so no path (return,
//! early exit, panic unwind) can leak one.

use std::sync::Arc;

use parking_lot::Mutex;

/// A counting semaphore; clones share the same permits. It never blocks:
/// the accept loop waits for a worker to end (and joins it) instead of
/// waiting for a permit.
#[derive(Debug, Clone)]
pub struct Limiter {
    available: Arc<Mutex<usize>>,
}

/// One admitted connection. Dropping it returns the permit.
#[derive(Debug)]
pub struct Permit {
    available: Arc<Mutex<usize>>,
}

impl Limiter {
    pub fn new(permits: usize) -> Limiter {
        Limiter {
            available: Arc::new(Mutex::new(permits)),
        }
    }

    pub fn try_acquire(&self) -> Option<Permit> {
        let mut available = self.available.lock();
        if *available == 0 {
            return None;
        }
        *available -= 1;
        Some(Permit {
            available: self.available.clone(),
        })
    }

    pub fn available(&self) -> usize {
        *self.available.lock()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.available.lock() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
