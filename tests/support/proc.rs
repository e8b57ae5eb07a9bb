//! The daemon seen from /proc: one reading of a status field, the names of
//! its live threads, and the one sampler that records threads and RSS
//! while a test runs. Every reading of a process that is gone panics: a
//! sample that silently read 0 would let a bound pass with no data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The number after `key` (e.g. "Threads:", "VmRSS:") in
/// /proc/PID/status. Panics, naming the path and the error, when it cannot
/// be read (a process that is gone is a failure of the test, not a 0).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    status_field(&read_status(pid), pid, key)
}

fn read_status(pid: u32) -> String {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e} (has the process exited?)"))
}

fn status_field(text: &str, pid: u32, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {key} line:\n{text}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status: no number in {line:?}"))
}

/// The names (`comm`) of the live threads of process `pid`. A thread that
/// ended between the listing and the read of its name is not alive, so it
/// is left out; any other failure panics.
pub fn thread_names(pid: u32) -> Vec<String> {
    let path = format!("/proc/{pid}/task");
    let dir = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {path}: {e}"));
        let comm_path = entry.path().join("comm");
        match std::fs::read_to_string(&comm_path) {
            Ok(comm) => names.push(comm.trim_end().to_string()),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => panic!("cannot read {}: {e}", comm_path.display()),
        }
    }
    names
}

/// How many live threads of process `pid` have a name starting `prefix`
/// (`fw-conn-`, `fw-relp-`).
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    thread_names(pid)
        .iter()
        .filter(|n| n.starts_with(prefix))
        .count()
}

/// One sample of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Live OS threads.
    pub threads: u64,
    /// Resident memory (0 when sampled by name: only the task list is read).
    pub rss_kib: u64,
    /// Live threads whose name starts with the sampler's prefix (0 without one).
    pub named: u64,
    /// When it was taken.
    pub at: Instant,
}

/// Samples a process every `period` (0: as fast as it can) until
/// [`Sampler::finish`]: threads and RSS from /proc/PID/status, or with
/// [`Sampler::named`] the task list and the threads of one name. Bounded:
/// it stops by itself after a million samples or ten minutes.
pub struct Sampler {
    /// Set by `finish`; the sampling thread checks it before each sample.
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pid: u32, period: Duration) -> Sampler {
        Sampler::spawn(pid, period, None)
    }

    /// Samples the task list (the threads and how many are named
    /// `prefix*`) instead of the status file.
    pub fn named(pid: u32, period: Duration, prefix: &'static str) -> Sampler {
        Sampler::spawn(pid, period, Some(prefix))
    }

    fn spawn(pid: u32, period: Duration, prefix: Option<&'static str>) -> Sampler {
        let take = move || match prefix {
            None => {
                let text = read_status(pid);
                Sample {
                    threads: status_field(&text, pid, "Threads:"),
                    rss_kib: status_field(&text, pid, "VmRSS:"),
                    named: 0,
                    at: Instant::now(),
                }
            }
            Some(prefix) => {
                let names = thread_names(pid);
                Sample {
                    threads: names.len() as u64,
                    rss_kib: 0,
                    named: names.iter().filter(|n| n.starts_with(prefix)).count() as u64,
                    at: Instant::now(),
                }
            }
        };
        // The first sample before `start` returns: what the test does
        // next is always sampled at least once, however quick.
        let first = take();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(600);
            let mut samples = vec![first];
            for _ in 0..1_000_000 {
                if !period.is_zero() {
                    thread::sleep(period); // the sampling period, not a wait
                }
                if flag.load(Ordering::SeqCst) || Instant::now() >= end {
                    break;
                }
                samples.push(take());
            }
            samples
        });
        Sampler { stop, handle }
    }

    /// Stops sampling; returns every sample taken (at least the one taken
    /// in `start`). Call it while the process still runs.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .expect("sampler thread panicked: see its message above")
    }

    /// Stops sampling; the highest thread count seen.
    pub fn peak_threads(self) -> u64 {
        self.finish()
            .iter()
            .map(|s| s.threads)
            .max()
            .expect("at least one sample")
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (NOTES.md: tests that
/// open many sockets do this and stay below the hard limit; the daemons
/// they start inherit it). Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            panic!("getrlimit(NOFILE): {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                panic!(
                    "setrlimit(NOFILE, {}): {}",
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    lim.rlim_cur
}
