//! A look at the process limits at start-up: does `limits.max_connections`
//! fit in them? Each connection is one thread and one socket, so a daemon
//! whose `LimitNOFILE` (RLIMIT_NOFILE) or `TasksMax` (the cgroup's
//! `pids.max`) is below what the configuration needs fails late, under
//! load, with EMFILE or EAGAIN from clone(2). This names the limit, its
//! value and what is needed, once, as a warning: the daemon still starts
//! (the accept loop backs off on EMFILE, and the limit may be right for
//! the load actually expected).

use std::path::{Path, PathBuf};

use log::warn;

use crate::config::Config;

/// Descriptors beyond one per connection: stdio, listeners, the sink's
/// files or sockets, spool segments, the wake-up pair, metrics scrapes.
const FD_MARGIN: u64 = 64;
/// Threads beyond one per connection: invariant 1's "+ 8", and the sinks.
const TASK_MARGIN: u64 = 8;

/// What the configuration needs: (descriptors, tasks).
pub fn needed(config: &Config) -> (u64, u64) {
    let conns = config.limits.max_connections as u64;
    (
        conns + FD_MARGIN,
        conns + config.sink.workers as u64 + TASK_MARGIN,
    )
}

/// Warns for each limit below what the configuration needs.
pub fn check(config: &Config) {
    let (fds, tasks) = needed(config);
    if let Some(have) = open_files_limit()
        && have < fds
    {
        warn!(
            "LimitNOFILE (RLIMIT_NOFILE) is {have}, below the {fds} descriptors limits.max_connections = {} needs: raise LimitNOFILE= (ulimit -n) or lower limits.max_connections",
            config.limits.max_connections
        );
    }
    if let Some(have) = tasks_max()
        && have < tasks
    {
        warn!(
            "TasksMax (cgroup pids.max) is {have}, below the {tasks} threads limits.max_connections = {} needs: raise TasksMax= or lower limits.max_connections",
            config.limits.max_connections
        );
    }
}

/// The soft RLIMIT_NOFILE, from /proc/self/limits (read as a file, not
/// with prlimit64(2), which the unit's `SystemCallFilter=~@resources`
/// denies); None when unlimited or unreadable.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The smallest `pids.max` on the way from this process's cgroup (v2) to
/// the root; None when there is none or it cannot be read.
fn tasks_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mut least: Option<u64> = None;
    loop {
        if let Some(v) = read_max(&dir.join("pids.max")) {
            least = Some(least.map_or(v, |l| l.min(v)));
        }
        if dir == Path::new("/sys/fs/cgroup") || !dir.pop() {
            return least;
        }
    }
}

/// A `pids.max` value; "max" (no limit) and errors are None.
fn read_max(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
