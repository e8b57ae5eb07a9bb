//! Crash loop: kill -9 the daemon at a random moment while it spools and
//! delivers, restart it on the same spool, 20 times. Every message framed
//! (and spooled) before a kill is delivered at least once, no start
//! fails, and each crash replays at most one sync interval's worth of
//! messages that had already been delivered.
//!
//! Each round sends a burst and waits until its last message is in a
//! segment file on disk (read with the spool's own record parser) or
//! delivered: a kill -9 may lose the memory queue in front of the spool
//! (SPEC "Disk spool"), never what was appended. Then it starts a second
//! burst paced over ~400 ms and kills at a random moment within it: the
//! daemon is spooling the second burst and delivering the backlog. Of the
//! first bursts every message must be delivered; of the second ones only
//! a tail may be missing (what was still in the socket, the read buffer or
//! the memory queue), never a message between two delivered ones.
//!
//! The downstream is a named pipe (64 KiB) that the test reads 64 KiB at
//! a time every 20 ms (at most ~3 MB/s), noting when each byte arrived, so
//! the sink is busy delivering a backlog at every kill (a TCP downstream
//! would not do: the kernel's socket buffers swallow megabytes at once).
//! After a kill the test reads the pipe empty before the restart, so the
//! output is cut into runs, and a line torn by the kill ends its run.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::spool::{Rng, config, message};
use crate::support::{Daemon, num};

const ROUNDS: usize = 20;
const BURST: usize = 10_000;
const SIZE: usize = 100;
/// The pipe is read this often, at most PIPE_BYTES each time.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
const PIPE_BYTES: usize = 64 << 10;
/// The spool's `sync` in this test's config (support::spool::config): the
/// writer makes the delivered position durable every `sync` (it wakes
/// for it: src/spool/mod.rs SpoolWriter::wait).
const SYNC: Duration = Duration::from_millis(50);
/// On top of that, the writer busy with an append or a segment roll when
/// the commit falls due, and thread wake-ups on 2 busy cores. Measured
/// over 60 kills on a machine shared by four builds: the oldest duplicate
/// had arrived 42-52 ms before its kill, i.e. within `sync`. (Before the
/// writer committed ahead of its data fsync, woke for the commit, and the
/// spooled sink wrote 64 KiB at a time instead of 256 KiB: 110-137 ms,
/// twice the duplicates.)
const SCHEDULING: Duration = Duration::from_millis(50);
/// The memory queue: small, as in front of a spool, which also keeps a
/// record (one batch: queue capacity / 16 = 256 messages) small.
const QUEUE: usize = 4096;
const RECORD_MESSAGES: usize = QUEUE / 16;
/// A sink write from the spool: at most src/sink/mod.rs
/// SPOOL_GATHER_BYTES, overshot by at most one record.
const SPOOL_GATHER_BYTES: usize = 64 << 10;
const WRITE_MESSAGES: usize = SPOOL_GATHER_BYTES / (SIZE + 1) + RECORD_MESSAGES;

/// The sequence number of the newest message in the spool's segment
/// files (a record being appended right now is simply not seen yet).
fn last_spooled(dir: &Path) -> Option<usize> {
    use floodwall::spool::record::{self, Parsed};
    use floodwall::spool::segment;
    for seq in segment::list(dir).ok()?.into_iter().rev() {
        let bytes = std::fs::read(segment::path(dir, seq)).ok()?;
        let (mut at, mut last) = (0, None);
        while let Parsed::Record { len, .. } = record::parse(&bytes[at..]) {
            last = Some(at..at + len);
            at += len;
        }
        if let Some(r) = last
            && let Some(batch) = record::decode(&bytes[r])
            && let Some(m) = batch.messages().last()
        {
            return support::spool::parse(&String::from_utf8_lossy(m)).map(|(_, s)| s);
        }
    }
    None
}

/// What came out of the pipe, and when.
#[derive(Default)]
struct Arrivals {
    data: Vec<u8>,
    /// (when, data.len() after that read), one per read.
    reads: Vec<(Instant, usize)>,
    /// The last time a read found the pipe empty with no writer.
    eof: Option<Instant>,
}

impl Arrivals {
    /// When the byte before `end` arrived.
    fn at(&self, end: usize) -> Instant {
        let i = self.reads.partition_point(|&(_, len)| len < end);
        self.reads[i].0
    }
}

/// A slow downstream: a named pipe read PIPE_BYTES at a time every
/// DRAIN_EVERY by a thread of its own.
fn slow_pipe(path: &Path, stop: Arc<AtomicBool>) -> (Arc<Mutex<Arrivals>>, thread::JoinHandle<()>) {
    assert!(
        Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo")
            .success(),
        "mkfifo {}",
        path.display()
    );
    // Non-blocking: opening does not wait for a writer, reading never blocks.
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the pipe's read end");
    let out = Arc::new(Mutex::new(Arrivals::default()));
    let arrivals = out.clone();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; PIPE_BYTES];
        while !stop.load(Ordering::SeqCst) {
            match pipe.read(&mut buf) {
                Ok(0) => arrivals.lock().unwrap().eof = Some(Instant::now()),
                Ok(n) => {
                    let mut a = arrivals.lock().unwrap();
                    a.data.extend_from_slice(&buf[..n]);
                    let len = a.data.len();
                    a.reads.push((Instant::now(), len));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read the pipe: {e}"),
            }
            thread::sleep(DRAIN_EVERY); // the pace of a slow downstream
        }
    });
    (out, reader)
}

/// One run of the daemon as the test saw it.
struct Run {
    started: Instant,
    /// When it was killed (None: the last run, stopped cleanly).
    killed: Option<Instant>,
    /// Its output in the pipe: data[from..to].
    from: usize,
    to: usize,
}

#[test]
fn kill_9_in_a_loop_loses_nothing_spooled() {
    let mut rng = Rng::from_env_or_time();
    let spool = tempfile::tempdir().unwrap();
    let fifo = spool.path().join("out.fifo");
    let stop = Arc::new(AtomicBool::new(false));
    let (out, reader) = slow_pipe(&fifo, stop.clone());
    let sink = format!("type = \"file\"\npath = \"{}\"", fifo.display());
    let spool_dir = spool.path().join("spool");
    let cfg = config(&sink, &spool_dir, &format!("[queue]\ncapacity = {QUEUE}"));
    // Reads the pipe empty after a kill (no writer left): the run's end.
    let drained_after = |t: Instant| {
        // 10 s: the pipe holds 64 KiB, read in 20 ms on a quiet machine.
        assert!(
            support::wait_until(Duration::from_secs(10), || {
                out.lock().unwrap().eof.is_some_and(|e| e > t)
            }),
            "the pipe was not read empty after a kill"
        );
        out.lock().unwrap().data.len()
    };
    let started = Instant::now();
    let mut sent = 0usize;
    let mut runs: Vec<Run> = Vec::new();
    let mut tails = Vec::new();
    let mut recovered = Vec::new();
    for round in 0..ROUNDS {
        let from = out.lock().unwrap().data.len();
        let run_started = Instant::now();
        // Daemon::start panics unless the daemon reports listening.
        let d = Daemon::start(&cfg);
        // Recovery is logged before listening, when there was something.
        let found = d.log_lines().iter().find_map(|l| {
            l.split("spool recovered messages=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        });
        // Every kill hits a spooled backlog (the pipe is slower than the
        // bursts), which the restart must replay from disk.
        assert!(
            round == 0 || found.is_some_and(|n: u64| n > 0),
            "round {round}: nothing recovered from the spool; log:\n{}",
            d.log_text()
        );
        recovered.push(found.unwrap_or(0));
        let mut burst = String::new();
        for i in sent..sent + BURST {
            burst.push_str(&message(0, i, SIZE));
            burst.push('\n');
        }
        d.send(burst.as_bytes());
        let last = sent + BURST - 1;
        // 30 s: framing and appending 1 MB, on a machine that may be busy.
        // On disk, not delivered: the pipe is slow and the active segment
        // (which holds the burst's end) stays until all of it is delivered.
        let appended = support::wait_until(Duration::from_secs(30), || {
            last_spooled(&spool_dir).is_some_and(|s| s >= last)
        });
        assert!(
            appended,
            "round {round}: burst not spooled; log:\n{}",
            d.log_text()
        );
        sent += BURST;
        // The second burst, paced, killed part-way (its client sees the
        // connection die; that is expected).
        let addr = d.addr;
        let first = sent;
        let tail = thread::spawn(move || {
            use std::io::Write;
            let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
                return;
            };
            for chunk in (first..first + BURST)
                .collect::<Vec<_>>()
                .chunks(BURST / 40)
            {
                let mut text = String::new();
                for &i in chunk {
                    text.push_str(&message(0, i, SIZE));
                    text.push('\n');
                }
                if conn.write_all(text.as_bytes()).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(10)); // pacing: ~400 ms in all
            }
        });
        tails.push(first..first + BURST);
        sent += BURST;
        // The random kill moment (not synchronisation: any moment must do).
        thread::sleep(Duration::from_millis(rng.below(400)));
        let killed = Instant::now();
        drop(d); // SIGKILL, then reaped
        tail.join().unwrap();
        let to = drained_after(Instant::now());
        runs.push(Run {
            started: run_started,
            killed: Some(killed),
            from,
            to,
        });
    }
    let from = out.lock().unwrap().data.len();
    let run_started = Instant::now();
    let mut d = Daemon::start(&cfg);
    d.wait_stats(Duration::from_secs(60), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("final run did not drain; log:\n{}", d.log_text()));
    assert!(d.stop(Duration::from_secs(15)).success());
    let to = drained_after(Instant::now());
    runs.push(Run {
        started: run_started,
        killed: None,
        from,
        to,
    });
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let out = out.lock().unwrap();

    // Each run's lines with their arrival; a run may end with one line
    // torn by its kill (the replay writes it whole again).
    let mut torn = 0;
    let lines: Vec<Vec<(usize, Instant)>> = runs
        .iter()
        .map(|r| {
            let mut got = Vec::new();
            let mut at = r.from;
            for (i, &b) in out.data[r.from..r.to].iter().enumerate() {
                if b == b'\n' {
                    let end = r.from + i + 1;
                    let line = String::from_utf8_lossy(&out.data[at..end - 1]);
                    let seq = support::spool::parse(&line)
                        .filter(|_| line.len() == SIZE)
                        .unwrap_or_else(|| panic!("a damaged line inside a run: {line:?}"))
                        .1;
                    got.push((seq, out.at(end)));
                    at = end;
                }
            }
            if at < r.to {
                assert!(r.killed.is_some(), "a torn line after a clean stop");
                torn += 1;
            }
            got
        })
        .collect();

    // At least once: every message of a first burst; of a killed burst a
    // head, never a gap.
    let mut seen = vec![0usize; sent];
    lines.iter().flatten().for_each(|&(s, _)| seen[s] += 1);
    let missing: Vec<usize> = (0..sent)
        .filter(|i| seen[*i] == 0 && !tails.iter().any(|t| t.contains(i)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} first-burst messages missing after {ROUNDS} crashes, from {:?}",
        missing.len(),
        missing.first()
    );
    let mut tail_lost = 0;
    for t in &tails {
        let delivered = t.clone().filter(|&i| seen[i] > 0).count();
        assert!(
            t.clone().take(delivered).all(|i| seen[i] > 0),
            "a gap inside the killed burst {t:?}: only a tail may be lost"
        );
        tail_lost += t.len() - delivered;
    }

    // At most one sync interval's worth of duplicates per crash. After
    // crash k the daemon replays from the last durable position, written
    // at most SYNC + SCHEDULING before the kill (= WINDOW),
    // covering everything the sink had delivered when it was written. So
    // a message that comes again after the restart must have reached the
    // pipe (arrival follows delivery) within WINDOW before the kill, with
    // two exceptions:
    // - the sink write in flight when that position was taken: the
    //   position advances by whole writes (a write cut by the kill is not
    //   known delivered, so it replays whole), so up to one write's worth
    //   (WRITE_MESSAGES) may have arrived before the window;
    // - a message replayable after crash k-1 that run k did not get to
    //   deliver again (run k was killed first) is still replayable.
    // A run shorter than WINDOW may not have committed at all: its window
    // reaches back to the previous crash's.
    const WINDOW: Duration =
        Duration::from_millis((SYNC.as_millis() + SCHEDULING.as_millis()) as u64);
    let mut last_seen: HashMap<usize, Instant> = HashMap::new();
    let mut replayable: HashSet<usize> = HashSet::new();
    let mut window_start = runs[0].started;
    let mut report = Vec::new();
    let mut worst = Duration::ZERO;
    for k in 0..ROUNDS {
        for &(s, at) in &lines[k] {
            last_seen.insert(s, at);
            replayable.remove(&s);
        }
        let killed = runs[k].killed.expect("every run but the last was killed");
        if killed - WINDOW >= runs[k].started {
            window_start = killed - WINDOW;
        }
        replayable.extend(
            last_seen
                .iter()
                .filter(|&(_, &at)| at >= window_start)
                .map(|(&s, _)| s),
        );
        let again: Vec<usize> = lines[k + 1]
            .iter()
            .map(|&(s, _)| s)
            .filter(|s| last_seen.contains_key(s))
            .collect();
        let distinct: HashSet<usize> = again.iter().copied().collect();
        let outside: Vec<usize> = distinct
            .iter()
            .copied()
            .filter(|s| !replayable.contains(s))
            .collect();
        // How far before the kill the oldest duplicate had arrived.
        let reach = distinct
            .iter()
            .map(|s| killed.saturating_duration_since(last_seen[s]))
            .max()
            .unwrap_or_default();
        worst = worst.max(reach);
        report.push(format!("{}/{}ms", again.len(), reach.as_millis()));
        assert!(
            outside.len() <= WRITE_MESSAGES,
            "crash {k}: {} of {} duplicates had arrived before the {WINDOW:?} window (allowed: one write, {WRITE_MESSAGES}); oldest {reach:?} before the kill",
            outside.len(),
            again.len()
        );
    }
    let duplicates = seen.iter().map(|&c| c.saturating_sub(1)).sum::<usize>();
    eprintln!(
        "crash loop: {ROUNDS} kills in {:?}, {sent} sent, {tail_lost} of the killed bursts not sent or in flight at the kills, {duplicates} duplicates, per crash (count/oldest before kill) {report:?}, worst {worst:?}, one sync interval at the pipe's pace ~{} messages, torn lines {torn}, recovered per start {recovered:?}",
        started.elapsed(),
        SYNC.as_millis() as usize * PIPE_BYTES / DRAIN_EVERY.as_millis() as usize / (SIZE + 1),
    );
    assert!(torn <= ROUNDS, "{torn} torn lines");
}
