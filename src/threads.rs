//! Spawning floodwall's threads, and the one policy for a panic in any of
//! them: a panic is a bug, and a daemon whose threads die unseen (the
//! accept loop silently gone, SIGTERM ignored, a sink that stopped
//! draining) breaks every promise quietly. So a panic in any `fw-*`
//! thread is logged at error with the thread's name and the message, and
//! starts the graceful shutdown: the drain delivers what it can within
//! `shutdown.timeout`, counts the rest as lost, and the process exits 1
//! for its supervisor to restart it.
//!
//! [`spawn`] names the thread and arms a guard that reports an unwinding
//! thread to the daemon's [`Panics`]; [`install_hook`] routes the panic
//! message of `fw-*` threads into the log (other threads, such as a test
//! harness's, keep the default hook).

use std::io;
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};

use log::error;
use parking_lot::Mutex;

use crate::shutdown::Shutdown;

/// The threads that panicked, shared by every thread of one daemon.
#[derive(Debug, Clone)]
pub struct Panics {
    names: Arc<Mutex<Vec<String>>>,
    shutdown: Shutdown,
}

impl Panics {
    pub fn new(shutdown: Shutdown) -> Panics {
        Panics {
            names: Arc::new(Mutex::new(Vec::new())),
            shutdown,
        }
    }

    /// Names of the threads that panicked so far.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().clone()
    }

    fn record(&self, name: &str) {
        self.names.lock().push(name.to_string());
        self.shutdown.trigger();
    }
}

/// Reports its thread to [`Panics`] if dropped while unwinding.
struct Guard {
    panics: Panics,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if thread::panicking() {
            let name = thread::current().name().unwrap_or("fw-?").to_string();
            self.panics.record(&name);
        }
    }
}

/// Spawns a named thread whose panic starts the shutdown.
pub fn spawn<T, F>(
    name: String,
    stack_size: Option<usize>,
    panics: &Panics,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    install_hook();
    let guard = Guard {
        panics: panics.clone(),
    };
    let mut builder = thread::Builder::new().name(name);
    if let Some(size) = stack_size {
        builder = builder.stack_size(size);
    }
    builder.spawn(move || {
        let _guard = guard;
        f()
    })
}

/// Logs the panics of `fw-*` threads at error (the default hook would
/// print them to stderr outside the log); other threads keep the hook
/// they had. Installed once per process.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let current = thread::current();
            match current.name() {
                Some(name) if name.starts_with("fw-") => {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_string());
                    let at = info
                        .location()
                        .map(|l| format!(" at {}:{}", l.file(), l.line()))
                        .unwrap_or_default();
                    error!(
                        "thread {name} panicked: {message}{at}; shutting down (exit 1) after the drain"
                    );
                }
                _ => previous(info),
            }
        }));
    });
}
