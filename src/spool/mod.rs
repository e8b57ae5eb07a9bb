//! The disk spool (SPEC "Disk spool"): with `[spool]`, batches go from the
//! memory queue into append-only segment files and the sinks read them
//! back in order, so a downstream outage fills the disk, not memory.
//!
//! Who does what: one writer thread (`fw-spool`, [`SpoolWriter`]) takes
//! batches from the memory queue, appends them as records ([`record`]) to
//! the active segment ([`segment`]), returns their queue credits once
//! appended, syncs, makes the delivered position durable ([`position`])
//! and deletes delivered segments. Sink threads read records through the
//! shared [`Spool`] and report what they delivered. Start-up damage is
//! [`recovery`]'s. Not here: what a sink does with a batch, and the memory
//! queue's overload layers (they act unchanged once the spool is full).
//!
//! # Crash safety: the order of writes
//!
//! 1. A batch is appended (`pwrite`) before its queue credits return: from
//!    then on a kill -9 cannot lose it (it is in the kernel). It survives
//!    a power loss after the next data sync, at most `sync` later (group
//!    commit; `"0s"` syncs every append). A new segment's directory entry
//!    is synced as it is created, and a sealed segment as it is sealed.
//! 2. A record counts as delivered (in memory) only after the sink wrote
//!    it; the delivered position is the start of the oldest record handed
//!    to a sink and not yet delivered, so it never passes an undelivered
//!    record, even with several sink workers finishing out of order.
//! 3. The delivered position is made durable at most every `sync` (two
//!    slots overwritten in place, each checksummed: a torn write keeps
//!    the previous position). A crash therefore replays at most what was
//!    delivered in the last `sync` interval: duplicates, never a gap.
//! 4. A segment is deleted only after a durable position lies past it. So
//!    no crash point leaves a position pointing before a missing segment;
//!    and a deletion undone by a crash resurrects a segment that the
//!    durable position already lies past, which recovery removes again
//!    without replaying it.
//! 5. Segment numbers only grow, so a record's place `(segment, offset)`
//!    is never reused: it names the record's messages across restarts
//!    (see `Batch::origin`; nats: `Nats-Msg-Id`). Why they never repeat:
//!    a new run numbers its segments after the highest one on disk or in
//!    the durable position; the highest one on disk is always the last
//!    run's active segment, which is never deleted while active, and
//!    recovery deletes only segments below the durable position, which
//!    never lies past it; a new segment's directory entry is synced
//!    before any record in it reaches a sink (at open and in `roll`), so
//!    not even a power loss can make a number whose records were
//!    delivered vanish and be handed out again. A wiped directory starts
//!    at 1 again, but under a new identity ([`identity`]), which is part
//!    of every name built from a place.
//!
//! A power loss can leave a segment shorter than a durable position
//! inside it (delivered before its data was synced): recovery treats the
//! missing part as delivered. Damage is handled by [`recovery`].

mod identity;
mod position;
pub mod record;
pub mod recovery;
pub mod segment;

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use log::{error, info, warn};
use parking_lot::{Condvar, Mutex};

use crate::queue::{Batch, QueueReceiver, SpoolPos};
use crate::relp::ack::Ack;
use crate::stats::Stats;
use position::PositionFile;
use segment::{Read, SegmentReader, SegmentWriter};

/// The `[spool]` settings the spool needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub sync: Duration,
}

/// One live segment as the readers and the writer see it.
#[derive(Debug)]
struct Seg {
    seq: u64,
    /// Where reading starts (non-zero only for the delivered position's
    /// segment at start-up).
    start: u64,
    /// Bytes of whole records published by the writer.
    len: u64,
    /// No more appends: readers move on at its end.
    sealed: bool,
    /// Messages in it from `start` on, and how many were handed out.
    messages: u64,
    read: u64,
}

#[derive(Debug)]
struct Shared {
    /// Every segment on disk, oldest first; the last one is the active.
    segments: VecDeque<Seg>,
    /// The next record to hand to a sink.
    cursor: SpoolPos,
    reader: Option<SegmentReader>,
    /// Records handed to sinks and not yet delivered.
    in_flight: BTreeSet<SpoolPos>,
    /// The writer has appended its last batch.
    closed: bool,
    /// Bytes of all segments on disk.
    bytes: u64,
}

impl Shared {
    fn seg(&mut self, seq: u64) -> Option<&mut Seg> {
        self.segments.iter_mut().find(|s| s.seq == seq)
    }

    /// The oldest place not known delivered, normalised past the end of
    /// sealed segments (so that their deletion can follow).
    fn delivered(&self) -> SpoolPos {
        if let Some(first) = self.in_flight.first() {
            return *first;
        }
        let mut pos = self.cursor;
        for (i, s) in self.segments.iter().enumerate() {
            if s.seq == pos.segment
                && s.sealed
                && pos.offset >= s.len
                && let Some(next) = self.segments.get(i + 1)
            {
                pos = SpoolPos {
                    segment: next.seq,
                    offset: next.start,
                };
            }
        }
        pos
    }
}

/// The part of the spool shared by the writer and the sink threads.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// This spool directory's identity ([`identity`]).
    id: String,
    shared: Mutex<Shared>,
    /// Readers wait here for records (and for the close).
    appended: Condvar,
    /// Messages spooled and not yet delivered: part of `queue_depth`.
    spooled: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

/// What [`Spool::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// Records, in spool order (each batch's `origin` set).
    Batches(Vec<Batch>),
    /// Nothing before the timeout.
    Empty,
    /// The writer is done and everything was handed out.
    Closed,
}

/// Whether `dir` can hold the spool (`--check-config`): it is (or can be
/// made) a directory where files can be created. The probe file is
/// removed; a directory this creates stays (start-up would make it too).
pub fn probe(dir: &Path) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("spool.dir: {} exists and is not a directory", dir.display()),
        ));
    }
    if !dir.exists() {
        // Start-up creates it; a check creates nothing. The nearest
        // existing ancestor must be a directory.
        let mut up = dir.parent();
        while let Some(p) = up {
            if p.exists() {
                return if p.is_dir() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("spool.dir: {} is not a directory", p.display()),
                    ))
                };
            }
            up = p.parent();
        }
        return Ok(());
    }
    let file = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .map_err(with_path)?;
    std::fs::remove_file(&file).map_err(with_path)
}

/// Opens the spool in `settings.dir`: creates the directory, recovers
/// what the last run left (counting `recovered` and `spool_corrupt`),
/// and starts a new segment. An error here is an unusable directory
/// (exit 3); damage is never an error.
pub fn open(settings: Settings, stats: Arc<Stats>) -> io::Result<(Arc<Spool>, SpoolWriter)> {
    let dir = settings.dir.clone();
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    // create_dir_all on a path that is a file says only "File exists".
    if dir.exists() && !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("spool.dir: {} exists and is not a directory", dir.display()),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(with_path)?;
    // Before any segment exists: no record is named under a lost identity.
    let id = identity::load_or_create(&dir).map_err(with_path)?;
    let (position, durable) = PositionFile::open(&dir).map_err(with_path)?;
    let found = recovery::recover(&dir, durable).map_err(with_path)?;
    let seq = found.last_seq + 1;
    let active = SegmentWriter::create(&dir, seq).map_err(with_path)?;
    segment::sync_dir(&dir).map_err(with_path)?;

    let mut segments: VecDeque<Seg> = found
        .segments
        .iter()
        .map(|s| Seg {
            seq: s.seq,
            start: s.start,
            len: s.len,
            sealed: true,
            messages: s.messages,
            read: 0,
        })
        .collect();
    segments.push_back(Seg {
        seq,
        start: 0,
        len: 0,
        sealed: false,
        messages: 0,
        read: 0,
    });
    let cursor = segments
        .front()
        .map(|s| SpoolPos {
            segment: s.seq,
            offset: s.start,
        })
        .expect("the active segment was just pushed");
    Stats::add(&stats.recovered, found.recovered);
    Stats::add(&stats.spool_corrupt, found.corrupt);
    stats.spool_bytes.store(found.bytes, Ordering::Relaxed);
    let spool = Arc::new(Spool {
        dir: dir.clone(),
        id,
        shared: Mutex::new(Shared {
            segments,
            cursor,
            reader: None,
            in_flight: BTreeSet::new(),
            closed: false,
            bytes: found.bytes,
        }),
        appended: Condvar::new(),
        spooled: Arc::new(AtomicUsize::new(found.recovered as usize)),
        stats,
    });
    let writer = SpoolWriter {
        spool: spool.clone(),
        settings,
        active,
        position,
        durable: durable.unwrap_or(cursor),
        buf: Vec::new(),
        pending: Vec::new(),
        dirty: false,
        unsynced: Vec::new(),
        last_sync: Instant::now(),
        last_commit: Instant::now(),
        outage: None,
    };
    Ok((spool, writer))
}

impl Spool {
    /// The count of messages spooled and not yet delivered.
    pub fn spooled(&self) -> Arc<AtomicUsize> {
        self.spooled.clone()
    }

    /// This spool directory's identity: with a record's place, a name for
    /// its messages that no other spool (nor this one wiped) can produce.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The record at `origin` (from [`Spool::take`]) is done with, its
    /// messages already counted one by one by a sink that settles them
    /// out of order (nats: each on its ack, through [`Spool::spooled`]):
    /// it no longer holds the delivered position back.
    pub fn finished(&self, origin: SpoolPos) {
        self.shared.lock().in_flight.remove(&origin);
    }

    /// Hands out the next records in order, up to about `max_bytes` (at
    /// least one record), waiting at most `wait` for the first.
    pub fn take(&self, max_bytes: usize, max_records: usize, wait: Duration) -> Taken {
        let deadline = Instant::now() + wait;
        let mut shared = self.shared.lock();
        loop {
            let got = self.read_some(&mut shared, max_bytes, max_records);
            if !got.is_empty() {
                return Taken::Batches(got);
            }
            let at_end = shared
                .segments
                .back()
                .is_none_or(|s| s.seq == shared.cursor.segment && shared.cursor.offset >= s.len);
            if shared.closed && at_end {
                return Taken::Closed;
            }
            if self.appended.wait_until(&mut shared, deadline).timed_out() {
                return Taken::Empty;
            }
        }
    }

    fn read_some(&self, shared: &mut Shared, max_bytes: usize, max_records: usize) -> Vec<Batch> {
        let mut got = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes && got.len() < max_records {
            let cursor = shared.cursor;
            let Some(i) = shared.segments.iter().position(|s| s.seq == cursor.segment) else {
                // The cursor's segment is gone (cannot happen: deletion
                // follows the delivered position); restart at the oldest.
                match shared.segments.front() {
                    Some(s) => {
                        shared.cursor = SpoolPos {
                            segment: s.seq,
                            offset: s.start,
                        };
                        continue;
                    }
                    None => break,
                }
            };
            let (len, sealed) = (shared.segments[i].len, shared.segments[i].sealed);
            if cursor.offset >= len {
                match shared.segments.get(i + 1) {
                    Some(next) if sealed => {
                        shared.cursor = SpoolPos {
                            segment: next.seq,
                            offset: next.start,
                        };
                        shared.reader = None;
                        continue;
                    }
                    _ => break,
                }
            }
            match self.read_at(shared, cursor) {
                Ok(Read::Record(mut batch, rec_len)) => {
                    shared.cursor.offset += rec_len;
                    if batch.is_empty() {
                        continue; // a skip record left by recovery
                    }
                    shared.segments[i].read += batch.len() as u64;
                    batch.set_origin(Some(cursor));
                    shared.in_flight.insert(cursor);
                    bytes += batch.byte_len();
                    got.push(batch);
                }
                Ok(Read::Damaged(_)) | Err(_) => {
                    // Damage at run time (the disk changed under us):
                    // skip what is published of this segment and count it.
                    let seg = &mut shared.segments[i];
                    let lost = seg.messages.saturating_sub(seg.read);
                    seg.read = seg.messages;
                    shared.cursor.offset = len;
                    shared.reader = None;
                    error!(
                        "spool: segment {} unreadable at offset {} at run time, {lost} messages lost",
                        cursor.segment, cursor.offset
                    );
                    Stats::add(&self.stats.spool_corrupt, lost);
                    self.spooled.fetch_sub(lost as usize, Ordering::SeqCst);
                }
            }
        }
        got
    }

    fn read_at(&self, shared: &mut Shared, at: SpoolPos) -> io::Result<Read> {
        if shared.reader.as_ref().is_none_or(|r| r.seq != at.segment) {
            shared.reader = Some(SegmentReader::open(&self.dir, at.segment)?);
        }
        shared
            .reader
            .as_mut()
            .expect("opened just above")
            .read_at(at.offset)
    }

    /// `batches` (from [`Spool::take`]) were written by a sink: they
    /// count as delivered and leave `queue_depth` in one move.
    pub fn delivered(&self, batches: &[Batch]) {
        let n: usize = batches.iter().map(Batch::len).sum();
        {
            let mut shared = self.shared.lock();
            for b in batches {
                if let Some(origin) = b.origin() {
                    shared.in_flight.remove(&origin);
                }
            }
        }
        self.stats.moving(|| {
            Stats::add(&self.stats.delivered, n as u64);
            self.spooled.fetch_sub(n, Ordering::SeqCst);
        });
    }
}

/// Batches gathered into one append, at most (bytes).
const APPEND_BYTES: usize = 1 << 20;
const APPEND_BATCHES: usize = 256;
/// How often the writer looks at the clock, the shutdown and free space.
const TICK: Duration = Duration::from_millis(20);

/// The writer's half, owned by the `fw-spool` thread.
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Arc<Spool>,
    settings: Settings,
    active: SegmentWriter,
    position: PositionFile,
    /// The last position made durable.
    durable: SpoolPos,
    /// Reused encode buffer: no allocation per append once grown.
    buf: Vec<u8>,
    /// Batches taken from the queue and not yet appended (full spool or
    /// disk): their credits are still out, so the queue stays full.
    pending: Vec<Batch>,
    /// Appended since the last data sync.
    dirty: bool,
    /// RELP acknowledgements of appended batches, fired once a data sync
    /// covers them (src/relp/ack.rs).
    unsynced: Vec<Ack>,
    last_sync: Instant,
    last_commit: Instant,
    /// Since when appends fail (disk full): one warning per outage.
    outage: Option<Instant>,
}

impl SpoolWriter {
    /// The `fw-spool` thread body: runs until the queue disconnects and
    /// everything taken from it is appended (or `abandon` is set), then
    /// keeps committing the delivered position until `stop` is set.
    pub fn run(mut self, queue: QueueReceiver, abandon: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
        let mut disconnected = false;
        loop {
            if self.pending.is_empty() && !disconnected {
                match queue.channel().recv_timeout(self.wait()) {
                    Ok(b) => self.pending.push(b),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
                let mut bytes: usize = self.pending.iter().map(Batch::byte_len).sum();
                while bytes < APPEND_BYTES && self.pending.len() < APPEND_BATCHES {
                    match queue.try_recv() {
                        Ok(b) => {
                            bytes += b.byte_len();
                            self.pending.push(b);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
            } else if !self.pending.is_empty() {
                // Waiting for room: the spool frees it as sinks deliver.
                std::thread::sleep(self.wait());
            }
            if !self.pending.is_empty() && self.append(&queue) {
                for b in self.pending.drain(..) {
                    queue.recycle(b);
                }
            }
            self.maintain(false);
            let appended_all = self.pending.is_empty() && disconnected;
            if appended_all || abandon.load(Ordering::SeqCst) {
                if !self.spool.shared.lock().closed {
                    self.spool.shared.lock().closed = true;
                    self.spool.appended.notify_all();
                }
                if stop.load(Ordering::SeqCst) || abandon.load(Ordering::SeqCst) {
                    break;
                }
                if disconnected && self.pending.is_empty() {
                    std::thread::sleep(self.wait());
                }
            }
        }
        self.maintain(true);
    }

    /// Appends every pending batch as one write and returns their queue
    /// credits; false when there is no room (max_bytes) or the write
    /// failed (the disk is full).
    fn append(&mut self, queue: &QueueReceiver) -> bool {
        self.buf.clear();
        let mut record = Vec::new();
        for b in &self.pending {
            record::encode(b, &mut record);
            self.buf.extend_from_slice(&record);
        }
        let size = self.buf.len() as u64;
        let on_disk = self.spool.shared.lock().bytes;
        if on_disk > 0 && on_disk + size > self.settings.max_bytes {
            if self.outage.is_none() {
                self.outage = Some(Instant::now());
                warn!(
                    "spool full, the memory queue takes the load until sinks free room spool_bytes={on_disk} max_bytes={}",
                    self.settings.max_bytes
                );
            }
            return false;
        }
        if self.active.len > 0
            && self.active.len + size > self.settings.segment_bytes
            && let Err(e) = self.roll()
        {
            self.failed(&e);
            return false;
        }
        if let Err(e) = self.active.append(&self.buf) {
            self.failed(&e);
            return false;
        }
        if let Some(since) = self.outage.take() {
            info!("spool writing again outage={:?}", since.elapsed());
        }
        self.dirty = true;
        self.unsynced
            .extend(self.pending.iter_mut().filter_map(Batch::take_ack));
        if self.settings.sync.is_zero() {
            // Durable before the credits return.
            self.sync_data();
        }
        // Counted spooled before readers can see (and deliver) them, so
        // the count never dips below zero; one move with the credits.
        let n: usize = self.pending.iter().map(Batch::len).sum();
        let spooled = &self.spool.spooled;
        self.spool.stats.moving(|| {
            spooled.fetch_add(n, Ordering::SeqCst);
            queue.written(n);
        });
        {
            let mut shared = self.spool.shared.lock();
            shared.bytes += size;
            self.spool
                .stats
                .spool_bytes
                .store(shared.bytes, Ordering::Relaxed);
            let seq = self.active.seq;
            let seg = shared.seg(seq).expect("the active segment is listed");
            seg.len = self.active.len;
            seg.messages += n as u64;
        }
        self.spool.appended.notify_all();
        true
    }

    fn failed(&mut self, e: &io::Error) {
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            warn!(
                "spool write failed, the memory queue takes the load until there is room error=\"{e}\" dir={}",
                self.settings.dir.display()
            );
        }
    }

    /// Seals the active segment (synced first: a sealed segment is whole
    /// on disk) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        // Synced before the next one exists: a failed sync leaves no
        // half-made roll behind to trip over on the retry.
        self.active.sync()?;
        let next = SegmentWriter::create(&self.settings.dir, self.active.seq + 1)?;
        // The new name is durable before any record in it reaches a sink
        // (point 5: a delivered record's place is never handed out again).
        // Once per segment: cheap. On failure the roll is undone whole.
        if let Err(e) = segment::sync_dir(&self.settings.dir) {
            let _ = std::fs::remove_file(segment::path(&self.settings.dir, next.seq));
            return Err(e);
        }
        let old = std::mem::replace(&mut self.active, next);
        let mut shared = self.spool.shared.lock();
        if let Some(s) = shared.seg(old.seq) {
            s.sealed = true;
        }
        shared.segments.push_back(Seg {
            seq: self.active.seq,
            start: 0,
            len: 0,
            sealed: false,
            messages: 0,
            read: 0,
        });
        drop(shared);
        self.spool.appended.notify_all();
        Ok(())
    }

    fn sync_data(&mut self) {
        if self.dirty {
            match self.active.sync() {
                Ok(()) => self.dirty = false,
                Err(e) => error!("spool: data sync failed error=\"{e}\""),
            }
        }
        // Everything appended is on disk now (a sealed segment was synced
        // as it was sealed): its RELP clients may be told.
        if !self.dirty {
            for ack in self.unsynced.drain(..) {
                ack.fire();
            }
        }
        self.last_sync = Instant::now();
    }

    /// Group commit: the delivered position (then deletion of what lies
    /// before it) and the data sync, each every `sync` (or now, when
    /// `last`).
    ///
    /// The position goes first: the data sync can take a while on a busy
    /// disk, and every delivery it delays the position by is replayed
    /// after a crash. (A position ahead of synced data is safe, see the
    /// module comment's last paragraph.)
    fn maintain(&mut self, last: bool) {
        let sync = self.settings.sync;
        if last || sync.is_zero() || self.last_commit.elapsed() >= sync {
            self.commit(last);
        }
        if last || self.last_sync.elapsed() >= sync {
            self.sync_data();
        }
    }

    /// How long the writer may wait for a batch or for room: a tick, but
    /// no later than the next commit is due, so that the position is made
    /// durable every `sync`, not every `sync` plus a tick.
    fn wait(&self) -> Duration {
        let sync = self.settings.sync;
        if sync.is_zero() {
            return TICK;
        }
        sync.saturating_sub(self.last_commit.elapsed()).min(TICK)
    }

    /// Makes the delivered position durable and deletes what lies before
    /// it (steps 3 and 4).
    fn commit(&mut self, last: bool) {
        self.last_commit = Instant::now();
        let delivered = self.spool.shared.lock().delivered();
        // An idle, fully delivered active segment is rolled so that the
        // spool can empty (the active one is never deleted).
        if !last
            && delivered.segment == self.active.seq
            && delivered.offset >= self.active.len
            && self.active.len >= (self.settings.segment_bytes / 8).max(1)
            && self.pending.is_empty()
            && self.roll().is_ok()
        {
            return; // commit past it on the next round
        }
        if delivered != self.durable {
            match self.position.write(delivered) {
                Ok(()) => self.durable = delivered,
                Err(e) => {
                    error!("spool: cannot record the delivered position error=\"{e}\"");
                    return;
                }
            }
        }
        self.delete_before(self.durable.segment);
    }

    /// Deletes segments wholly before the durable position (step 4).
    fn delete_before(&self, seq: u64) {
        let mut shared = self.spool.shared.lock();
        while let Some(front) = shared.segments.front() {
            if front.seq >= seq || front.seq == self.active.seq {
                break;
            }
            let (old, len) = (front.seq, front.len);
            if let Err(e) = std::fs::remove_file(segment::path(&self.settings.dir, old)) {
                error!("spool: cannot delete delivered segment {old} error=\"{e}\"");
                break;
            }
            shared.segments.pop_front();
            shared.bytes -= len;
            self.spool
                .stats
                .spool_bytes
                .store(shared.bytes, Ordering::Relaxed);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::queue;

    fn settings(dir: &Path) -> Settings {
        Settings {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            segment_bytes: 4 << 10,
            sync: Duration::from_millis(10),
        }
    }

    fn batch(tag: &str, n: usize) -> Batch {
        let mut b = Batch::new();
        for i in 0..n {
            b.push(format!("{tag}-{i}").as_bytes());
        }
        b
    }

    /// Runs a writer over `batches`, lets `deliver` take and deliver,
    /// then stops the writer (last commit) and returns the stats of a
    /// fresh open of the same directory.
    fn run(dir: &Path, batches: Vec<Batch>, deliver: impl FnOnce(&Spool)) -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        let (spool, writer) = open(settings(dir), stats.clone()).unwrap();
        let (tx, rx) = queue(1000);
        let (abandon, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let s = stop.clone();
        let t = std::thread::spawn(move || writer.run(rx, abandon, s));
        for b in batches {
            tx.send_timeout(b, Duration::from_secs(5)).unwrap();
        }
        drop(tx);
        deliver(&spool);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        let again = Arc::new(Stats::default());
        drop(open(settings(dir), again.clone()).unwrap());
        again
    }

    fn take_one(spool: &Spool) -> Batch {
        match spool.take(usize::MAX, 1, Duration::from_secs(5)) {
            Taken::Batches(mut b) => b.pop().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_come_back_in_order_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), vec![batch("a", 2), batch("b", 3)], |spool| {
            let a = take_one(spool);
            let b = take_one(spool);
            let (pa, pb) = (a.origin().unwrap(), b.origin().unwrap());
            let (mut a2, mut b2) = (a.clone(), b.clone());
            a2.set_origin(None);
            b2.set_origin(None);
            assert_eq!((a2, b2), (batch("a", 2), batch("b", 3)));
            assert!(pa < pb, "{pa:?} then {pb:?}");
            spool.delivered(&[a, b]);
            assert!(matches!(
                spool.take(usize::MAX, 1, Duration::from_secs(5)),
                Taken::Closed
            ));
        });
    }

    #[test]
    fn the_position_never_passes_an_undelivered_record() {
        let dir = tempfile::tempdir().unwrap();
        let again = run(
            dir.path(),
            vec![batch("a", 2), batch("b", 3), batch("c", 4)],
            |spool| {
                let a = take_one(spool);
                let b = take_one(spool);
                let c = take_one(spool);
                // Delivered out of order (two sink workers): a is still out.
                spool.delivered(&[b, c]);
                drop(a);
            },
        );
        // a is replayed, and so are b and c (after it): at-least-once.
        assert_eq!(again.recovered.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn delivered_segments_are_deleted_and_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB segments: these batches need several.
        let batches: Vec<Batch> = (0..20).map(|i| batch(&"x".repeat(100 + i), 5)).collect();
        let again = run(dir.path(), batches, |spool| {
            for _ in 0..20 {
                let b = take_one(spool);
                spool.delivered(&[b]);
            }
        });
        assert_eq!(again.recovered.load(Ordering::Relaxed), 0);
        // The delivered sealed segments are gone; what is left is empty
        // or fully delivered (the active one is never deleted).
        assert!(segment::list(dir.path()).unwrap().len() <= 3);
    }
}
