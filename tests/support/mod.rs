//! Shared test support, the one tree all three test binaries use (it,
//! alone, queue_memory): start the real `floodwall` binary on port 0 in a
//! temp dir of its own, talk to it over loopback, read its log, and wait
//! for events against a deadline (never a bare sleep as synchronisation).
//! Also in-process helpers around `floodwall::start_with_sinks`: sinks
//! that record what they get, or stall until released.
//!
//! One module per kind of helper, one helper per job:
//! - `config`: the config builder (a base plus overrides).
//! - `downstream`: the collector a tcp sink forwards to.
//! - `proc`: /proc readings and the thread/RSS sampler.
//! - [`free_port`] (here): the port helper.
//! - `fault`, `spool`: flooding and paced clients, numbered messages.
//! - `haproxy`, `metrics`, `nats`, `peers`, `pki`: the real peers and
//!   the TLS material.

#![allow(dead_code)]

pub mod config;
pub mod downstream;
pub mod fault;
pub mod haproxy;
pub mod metrics;
pub mod nats;
pub mod peers;
pub mod pki;
pub mod proc;
pub mod spool;

pub use proc::proc_status;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How late a thread may run after its deadline, or finish a few
/// milliseconds of work, on a loaded 2-core CI machine: the slack added to
/// a bound derived from the code's own timeouts. Measured on the build
/// machine at load average 7.5 (six agents building on 2 cores): a 5 ms
/// sleep overran by 7 ms at the median and 35 ms at worst (718 samples).
/// 500 ms is over ten times that worst case, for bursts when rustc or the
/// linker hold both cores, yet below the timeouts it pads in these tests
/// (send_timeout 300-500 ms, idle_timeout 1 s), so a timeout that took
/// several times as long as configured still fails.
pub const SCHED_MARGIN: Duration = Duration::from_millis(500);

/// The machine, as the heavy tests of the `alone` binary share it: each
/// takes [`machine_shared`] (two may run side by side) or, where a bound
/// of about a second would otherwise measure the neighbour's load,
/// [`machine_alone`] (none beside it). A test that failed while holding
/// it does not stop the others: the lock guards no data.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn machine_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn machine_alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `pred` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback address where nothing listens right now: bound to port 0,
/// read, released (the kernel does not hand an ephemeral port straight
/// back). For a peer that cannot report a port it picked itself (HAProxy,
/// prometheus, nats routes, systemd-socket-activate), a downstream that is
/// away, or one started after the daemon. The one place a test names a
/// port number; the daemon itself always listens on port 0.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
}

/// A stats line's logfmt pairs.
pub type StatsLine = HashMap<String, String>;

/// Parses the `stats k=v ...` part of a log line (None if not a stats line).
pub fn parse_stats(line: &str) -> Option<StatsLine> {
    let at = line.find("] stats ")?;
    Some(
        line[at + 8..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub fn num(s: &StatsLine, key: &str) -> u64 {
    s.get(key)
        .unwrap_or_else(|| panic!("stats line has no {key}: {s:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("stats {key} not a number: {e}"))
}

/// SPEC.md invariant 3 on one stats line.
pub fn assert_balanced(s: &StatsLine) {
    let lhs = num(s, "received") + num(s, "recovered");
    let rhs = num(s, "delivered")
        + num(s, "dropped_send_timeout")
        + num(s, "dropped_oversize")
        + num(s, "dropped_shutdown")
        + num(s, "queue_depth");
    assert_eq!(
        lhs, rhs,
        "accounting identity broken: received + recovered != delivered + dropped_send_timeout + dropped_oversize + dropped_shutdown + queue_depth in {s:?}"
    );
}

/// Log lines collected from the daemon's stderr, with a condvar to wait on.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// The real binary, started with a config in a temp dir.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: Arc<Log>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_floodwall")
}

impl Daemon {
    /// Writes `config` (with `{dir}` replaced by the temp dir) and starts
    /// the daemon, waiting for its `listening addr=` line. The config
    /// should listen on 127.0.0.1:0.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        Daemon::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Daemon {
        Daemon::start_in_env(dir, config, &[])
    }

    /// Like [`Daemon::start_in`], with extra environment variables
    /// (NOTIFY_SOCKET, WATCHDOG_USEC, ...).
    pub fn start_in_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Daemon {
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("floodwall.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn floodwall");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FLOODWALL_TEST_LOG").is_some() {
                    eprintln!("daemon: {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        let mut d = Daemon {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            log,
        };
        let line = d
            .wait_log(Duration::from_secs(20), |l| l.contains("listening addr="))
            .unwrap_or_else(|| panic!("daemon did not report listening; log:\n{}", d.log_text()));
        let addr = line
            .split("listening addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        d.addr = addr.parse().expect("listening address");
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).expect("connect to daemon")
    }

    /// Connects, sends `data`, closes, and returns after the close.
    pub fn send(&self, data: &[u8]) {
        let mut s = self.connect();
        s.write_all(data).expect("send");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits for a log line matching `pred` (searching all lines so far).
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Every stats line so far, parsed.
    pub fn stats_lines(&self) -> Vec<StatsLine> {
        self.log_lines()
            .iter()
            .filter_map(|l| parse_stats(l))
            .collect()
    }

    /// Waits for a stats line (logged after this call's start) that
    /// satisfies `pred`; needs a short `stats_interval`.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&StatsLine) -> bool,
    ) -> Option<StatsLine> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.log_lines().len();
        loop {
            let lines = self.log_lines();
            if let Some(s) = lines[seen..]
                .iter()
                .filter_map(|l| parse_stats(l))
                .find(|s| pred(s))
            {
                return Some(s);
            }
            seen = lines.len();
            if !self.wait_new_line(seen, deadline) {
                return None;
            }
        }
    }

    /// Waits until the log has more than `len` lines; false at `deadline`.
    fn wait_new_line(&self, len: usize, deadline: Instant) -> bool {
        let mut lines = self.log.lines.lock().unwrap();
        while lines.len() <= len {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
        true
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM, then wait for exit (panics after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Let the stderr reader see the last lines.
                let _ = self.wait_log(Duration::from_secs(2), |l| l.contains("shutdown drained="));
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The final stats line: SPEC.md logs it at shutdown, right before
    /// `shutdown drained=`. Panics if the daemon has not logged that line
    /// (it has not shut down cleanly), so a periodic line is never taken
    /// for the final one.
    pub fn final_stats(&self) -> StatsLine {
        let lines = self.log_lines();
        let end = lines
            .iter()
            .rposition(|l| l.contains("shutdown drained="))
            .unwrap_or_else(|| {
                panic!(
                    "no `shutdown drained=` line, so no final stats line; log:\n{}",
                    lines.join("\n")
                )
            });
        lines[..end]
            .iter()
            .rev()
            .find_map(|l| parse_stats(l))
            .unwrap_or_else(|| {
                panic!(
                    "no stats line before `shutdown drained=`; log:\n{}",
                    lines.join("\n")
                )
            })
    }

    /// SIGTERM, a clean exit (0) within `timeout`, and the accounting
    /// identity on the final stats line, which it returns: how every
    /// traffic test ends.
    pub fn stop_balanced(&mut self, timeout: Duration) -> StatsLine {
        let status = self.stop(timeout);
        assert_eq!(
            status.code(),
            Some(0),
            "exit {status:?}; log:\n{}",
            self.log_text()
        );
        let last = self.final_stats();
        assert_balanced(&last);
        last
    }

    /// Live OS threads of the daemon (/proc/PID/status).
    pub fn threads(&self) -> u64 {
        proc_status(self.pid(), "Threads:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status(self.pid(), "VmRSS:")
    }

    /// Open file descriptors of the daemon (/proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("cannot read {path}: {e} (has the daemon exited?)"))
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- bounds derived from the code ---------------------------------------

/// The most bytes of one batch with the default `max_message_bytes`
/// (65,536): a connection's read buffer is at most
/// `READ_BUFFER.max(max_message_bytes + 17)` bytes (src/conn.rs), and one
/// batch never carries more than one buffer's bytes.
pub const CONN_MAX_BATCH_BYTES: usize = if floodwall::conn::READ_BUFFER > 65536 + 17 {
    floodwall::conn::READ_BUFFER
} else {
    65536 + 17
};

/// The most messages of `message_bytes` bytes each (LF included) that the
/// tcp sink can deliver twice per downstream outage, from the code:
/// src/sink/tcp.rs re-sends the whole gathered write whose connection
/// broke (at-least-once), and only that one, since every later attempt
/// starts on a new connection. src/sink/mod.rs `run` gathers batches while
/// it holds under `GATHER_BYTES`, so the last one added crosses it by at
/// most one batch, and a batch is at most one read buffer
/// ([`CONN_MAX_BATCH_BYTES`], default `max_message_bytes`). The cap of
/// `GATHER_BATCHES` (256) batches only lowers this, so it is left out.
/// The constants are the library's own (not mirrored copies), so the
/// bound moves with the code.
pub fn max_resent_per_outage(message_bytes: usize) -> usize {
    (floodwall::sink::GATHER_BYTES + CONN_MAX_BATCH_BYTES).div_ceil(message_bytes)
}

/// A tmpfs of `size` ("8m") mounted in a temp dir of its own (needs
/// root; a failed mount fails the test); unmounted on drop, also when
/// the test fails (lazily if a daemon still holds a file on it), before
/// its temp dir is removed.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs {} failed ({}): {}; this test needs root to mount a small tmpfs",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a daemon holding its file, after a failure):
            // detach it so the temp dir can go.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Reads a file, or empty if it does not exist yet; any other error
/// fails the test (an unreadable file is not an empty one).
pub fn read(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Prints expected vs actual as blocks on mismatch.
pub fn assert_bytes(expected: &[u8], actual: &[u8]) {
    if expected != actual {
        panic!(
            "bytes differ\n--- expected ({} bytes)\n{}\n--- actual ({} bytes)\n{}\n---",
            expected.len(),
            String::from_utf8_lossy(expected),
            actual.len(),
            String::from_utf8_lossy(actual)
        );
    }
}

/// Runs `floodwall` with `args` to completion: (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run floodwall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- in-process helpers -------------------------------------------------

use floodwall::Sink;
use floodwall::queue::Batch;

/// A sink that records every message and can be stalled: while stalled,
/// `write` blocks until released.
#[derive(Clone, Default)]
pub struct TestSink {
    inner: Arc<(Mutex<TestSinkState>, Condvar)>,
}

#[derive(Default)]
struct TestSinkState {
    stalled: bool,
    /// Writes currently blocked in the stall.
    blocked: usize,
    messages: Vec<Vec<u8>>,
}

impl TestSink {
    pub fn new() -> TestSink {
        TestSink::default()
    }

    pub fn stalled() -> TestSink {
        let s = TestSink::default();
        s.stall();
        s
    }

    pub fn stall(&self) {
        self.inner.0.lock().unwrap().stalled = true;
    }

    pub fn release(&self) {
        self.inner.0.lock().unwrap().stalled = false;
        self.inner.1.notify_all();
    }

    pub fn blocked(&self) -> usize {
        self.inner.0.lock().unwrap().blocked
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.inner.0.lock().unwrap().messages.clone()
    }

    pub fn count(&self) -> usize {
        self.inner.0.lock().unwrap().messages.len()
    }

    pub fn boxed(&self) -> Vec<Box<dyn Sink>> {
        vec![Box::new(self.clone())]
    }
}

impl Sink for TestSink {
    fn write(&mut self, batches: &[Batch]) -> std::io::Result<()> {
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        st.blocked += 1;
        while st.stalled {
            st = cv.wait(st).unwrap();
        }
        st.blocked -= 1;
        for b in batches {
            st.messages.extend(b.messages().map(|m| m.to_vec()));
        }
        Ok(())
    }
}

// ---- files, FIFOs, bounded runs -----------------------------------------

/// Waits until the file at `path` holds at least `len` bytes; returns its
/// content then (or what it holds at the deadline).
pub fn wait_file_len(path: &Path, len: usize, timeout: Duration) -> Vec<u8> {
    let mut data = Vec::new();
    wait_until(timeout, || {
        data = read(path);
        data.len() >= len
    });
    data
}

/// Waits until the file at `path` contains `needle`.
pub fn wait_file_contains(path: &Path, needle: &[u8], timeout: Duration) -> bool {
    wait_until(timeout, || {
        read(path).windows(needle.len()).any(|w| w == needle)
    })
}

/// O_NONBLOCK on Linux (x86, x86_64, arm, aarch64, riscv): std has no name
/// for it and the tests do not depend on libc.
const O_NONBLOCK: i32 = 0o4000;

/// A named pipe for a file sink that stalls until the test reads it: the
/// pipe holds about 64 KiB, then the sink's write blocks. The read end is
/// opened non-blocking (so opening does not wait for a writer, and
/// draining never blocks) before the daemon opens the write end.
pub struct Fifo {
    pub path: PathBuf,
    reader: std::fs::File,
    /// Everything drained so far.
    pub data: Vec<u8>,
}

impl Fifo {
    pub fn create(path: &Path) -> Fifo {
        use std::os::unix::fs::OpenOptionsExt;
        let ok = Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo")
            .success();
        assert!(ok, "mkfifo {} failed", path.display());
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(path)
            .expect("open fifo read end");
        Fifo {
            path: path.to_path_buf(),
            reader,
            data: Vec::new(),
        }
    }

    /// Reads whatever the pipe holds now; returns how many bytes.
    pub fn drain(&mut self) -> usize {
        use std::io::Read;
        let mut buf = [0u8; 64 << 10];
        let mut total = 0;
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => {
                    self.data.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read fifo: {e}"),
            }
        }
    }

    /// Drains until `len` bytes have come out in total; returns whether they did.
    pub fn drain_until_len(&mut self, len: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.drain();
            self.data.len() >= len
        })
    }
}

/// Runs `floodwall` with `args`, killing it if it does not exit within
/// `timeout` (a config that should fail but starts the daemon must not
/// hang the test): Some((exit code, stdout, stderr)), None if killed.
pub fn run_bin_timeout(args: &[&str], timeout: Duration) -> Option<(i32, String, String)> {
    use std::io::Read;
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn floodwall");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    Some((
        status.code().unwrap_or(-1),
        out_reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    ))
}

/// Reads from `stream` until EOF or a reset; returns when the peer closed
/// (panics if it did not within `timeout`). Data the peer sent is ignored.
pub fn await_close(stream: &mut TcpStream, timeout: Duration) {
    use std::io::Read;
    stream
        .set_read_timeout(Some(timeout))
        .expect("set read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("peer did not close within {timeout:?}")
            }
            // Reset by the peer: closed too.
            Err(_) => return,
        }
    }
}
