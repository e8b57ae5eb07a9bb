//! The bounded queue between connection workers and sink threads.
//!
//! Workers hold only a [`QueueSender`], sinks only a [`QueueReceiver`]
//! (channel directionality). Messages travel in [`Batch`]es, one channel
//! send per read's worth of messages, but the bound is counted in
//! messages: `queue.capacity` is what SPEC.md promises, whatever the
//! batching.
//!
//! Why not just a bounded crossbeam channel: its capacity counts items
//! (batches), not messages. So a credit gate counts messages: a sender
//! reserves `batch.len()` credits before its batch enters the channel,
//! waiting at most `timeout` for them (the select-with-timeout of the
//! design card, done as a condvar wait because the wait is for credits,
//! not for a channel slot); a sink returns the credits only after the
//! messages are written. So the gate's depth is exactly SPEC.md's
//! `queue_depth`: messages in the channel or taken by a sink and not yet
//! written. The channel itself never blocks, since it never holds more
//! batches than there are credits out.
//!
//! When every sender is dropped the channel disconnects; sinks drain what
//! is queued and then see the disconnection (crossbeam semantics).
//!
//! A sink that lingers (gathers batches for a larger write) holds credits
//! while it waits, so a sender that finds no room must be able to cut the
//! wait short: a sender that starts waiting for credits rings the
//! [`QueueReceiver::wanted`] bell (a one-slot channel, so a long wait
//! rings it once), and a lingering sink writes at once when it hears it.
//! Without it a small queue delivered one queue's worth per
//! `flush_interval` (43k msg/s with `capacity = 1000` against 5.1M with
//! 65,536).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::relp::ack::Ack;
use parking_lot::{Condvar, Mutex};

/// Messages of one read, stored back to back, each followed by LF so that
/// line-oriented sinks write `data[start..]` as it is.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The messages are `data[start..end]`. `start` is 0 and `end` is
    /// `data.len()` unless the batch adopted a connection's read buffer
    /// (see [`Batch::adopt_lines`]), whose bytes around the run are not the
    /// batch's. Bytes past `end` are kept initialised so that the
    /// allocation can become a read buffer again without being zeroed.
    data: Vec<u8>,
    /// u32 like `ends`: a batch is at most a read buffer or a spool
    /// record (far below 4 GiB), and the batch stays under the size at
    /// which returning it in an `Err` gets costly.
    start: u32,
    end: u32,
    /// End offset in `data[start..]` of each message, LF excluded.
    ends: Vec<u32>,
    /// The client that sent these messages (behind a PROXY-protocol
    /// balancer: the client the header named), for sinks that say who
    /// sent a message (nats: `Floodwall-Peer`).
    peer: Option<SocketAddr>,
    /// Where the batch sits in the disk spool, for a batch read back from
    /// it (None otherwise): a stable name for its messages across restarts.
    origin: Option<SpoolPos>,
    /// A RELP session's acknowledgement, fired by whoever makes the batch
    /// durable (src/relp/ack.rs); None for plain TCP.
    ack: Option<Ack>,
}

/// A record's place in the spool: segment number and byte offset. With the
/// index of a message in its batch it names the message uniquely and
/// stably (a replay after a crash reads the same record at the same
/// place), which is what a deduplicating sink (nats: `Nats-Msg-Id`) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn with_capacity(bytes: usize, messages: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(bytes),
            start: 0,
            end: 0,
            ends: Vec::with_capacity(messages),
            peer: None,
            origin: None,
            ack: None,
        }
    }

    /// A batch from its raw parts (the spool reading a record back);
    /// `None` unless every end points at an LF and the last LF ends `data`.
    pub fn from_parts(data: Vec<u8>, ends: Vec<u32>) -> Option<Batch> {
        let mut start = 0usize;
        for &e in &ends {
            let e = e as usize;
            if e < start || data.get(e) != Some(&b'\n') {
                return None;
            }
            start = e + 1;
        }
        (start == data.len()).then_some(Batch {
            start: 0,
            end: data.len() as u32,
            data,
            ends,
            peer: None,
            origin: None,
            ack: None,
        })
    }

    /// Each message's end offset in [`Batch::as_lines`] (LF excluded).
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// The batch's place in the spool, if it was read back from one.
    pub fn origin(&self) -> Option<SpoolPos> {
        self.origin
    }

    pub fn set_origin(&mut self, origin: Option<SpoolPos>) {
        self.origin = origin;
    }

    /// Attaches a RELP session's acknowledgement.
    pub fn set_ack(&mut self, ack: Ack) {
        self.ack = Some(ack);
    }

    /// Whether a RELP client waits for this batch's acknowledgement.
    pub fn has_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Takes the acknowledgement to fire once the batch is durable (or,
    /// with a spool, to hand to the sync that will make it so).
    pub fn take_ack(&mut self) -> Option<Ack> {
        self.ack.take()
    }

    /// Fires the acknowledgement, if any: the batch is durable.
    pub fn acknowledge(&mut self) {
        if let Some(ack) = self.ack.take() {
            ack.fire();
        }
    }

    /// The client that sent these messages, if known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Names the sending client (the spool reading a record back).
    pub fn set_peer(&mut self, peer: Option<SocketAddr>) {
        self.peer = peer;
    }

    pub fn push(&mut self, message: &[u8]) {
        self.data.truncate(self.end as usize);
        self.data.extend_from_slice(message);
        self.ends
            .push((self.data.len() - self.start as usize) as u32);
        self.data.push(b'\n');
        self.end = self.data.len() as u32;
    }

    /// Appends messages that sit back to back in `lines`, each followed by
    /// LF; `ends` holds each message's end (LF excluded) relative to
    /// `lines`. One copy for many messages: the framing hot path.
    pub fn extend_lines(&mut self, lines: &[u8], ends: &[u32]) {
        debug_assert!(ends.iter().all(|&e| lines.get(e as usize) == Some(&b'\n')));
        debug_assert_eq!(ends.last().map(|&e| e as usize + 1), Some(lines.len()));
        let base = self.byte_len() as u32;
        self.data.truncate(self.end as usize);
        self.data.extend_from_slice(lines);
        self.end = self.data.len() as u32;
        self.ends.extend(ends.iter().map(|&e| base + e));
    }

    /// Takes a connection's read buffer as the batch's data instead of
    /// copying from it: `buf[run]` are messages back to back, each followed
    /// by LF, `ends` their ends relative to `run` (as for
    /// [`Batch::extend_lines`]). Only for an empty batch (whose allocation
    /// the caller took first with [`Batch::take_allocation`]). The caller
    /// hands over a buffer only when the run fills at least half of it, so
    /// that what the queue holds stays within twice the bytes of its
    /// messages (as [`Batch::fit`] keeps it).
    pub fn adopt_lines(&mut self, buf: Vec<u8>, run: Range<usize>, ends: &[u32]) {
        debug_assert!(self.is_empty(), "only an empty batch adopts a buffer");
        debug_assert!(
            ends.iter()
                .all(|&e| buf.get(run.start + e as usize) == Some(&b'\n'))
        );
        debug_assert_eq!(
            ends.last().map(|&e| run.start + e as usize + 1),
            Some(run.end)
        );
        self.data = buf;
        self.start = run.start as u32;
        self.end = run.end as u32;
        self.ends.clear();
        self.ends.extend_from_slice(ends);
    }

    /// An empty batch's data allocation, for the caller to reuse as a
    /// read buffer (the batch is left with none). Its length is what was
    /// ever initialised in it (old bytes, not messages): a buffer that
    /// went round the queue needs no zeroing to be read into again.
    pub fn take_allocation(&mut self) -> Vec<u8> {
        debug_assert!(self.is_empty(), "only an empty batch gives its allocation");
        self.start = 0;
        self.end = 0;
        std::mem::take(&mut self.data)
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of messages plus one LF each.
    pub fn byte_len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Every message followed by LF: what stdout, file and tcp-lines write.
    pub fn as_lines(&self) -> &[u8] {
        &self.data[self.start as usize..self.end as usize]
    }

    pub fn messages(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let lines = self.as_lines();
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let end = end as usize;
            let m = &lines[start..end];
            start = end + 1;
            m
        })
    }

    /// Gives back unused room if the batch holds much less than it
    /// reserved (a read full of skipped empty lines reserved a read's
    /// worth for one message): what the queue holds stays proportional
    /// to the messages in it.
    fn fit(&mut self) {
        if self.data.capacity() > 2 * self.byte_len() + LOOSE_BYTES {
            self.data.truncate(self.end as usize);
            self.data.drain(..self.start as usize);
            self.start = 0;
            self.end = self.data.len() as u32;
            self.data.shrink_to(self.data.len());
        }
    }

    /// Empties the batch, keeping its allocations (and the initialised
    /// length of `data`) for reuse.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.ends.clear();
        self.peer = None;
        self.origin = None;
        self.ack = None;
    }
}

/// Two batches are equal when they hold the same messages for the same
/// client and place, wherever in their allocation the messages sit.
impl PartialEq for Batch {
    fn eq(&self, other: &Batch) -> bool {
        self.as_lines() == other.as_lines()
            && self.ends == other.ends
            && self.peer == other.peer
            && self.origin == other.origin
    }
}

impl Eq for Batch {}

/// Slack a queued batch may keep beyond twice its bytes (see `Batch::fit`).
const LOOSE_BYTES: usize = 256;

/// Why a batch did not enter the queue; the batch is handed back so that
/// its messages can be counted, never silently lost.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// No room for `send_timeout`.
    Timeout(Batch),
    /// Every sink is gone.
    Disconnected(Batch),
    /// The shutdown deadline passed: nothing enters the queue any more.
    Shutdown(Batch),
}

/// The message-credit gate shared by both ends.
#[derive(Debug)]
struct Gate {
    capacity: usize,
    /// Waiting senders are woken when the depth drops to this.
    wake_below: usize,
    /// Messages in the channel or held by a sink and not yet written.
    depth: AtomicUsize,
    /// Senders waiting for credits; a sink wakes them only if non-zero.
    waiters: AtomicUsize,
    /// Set at the shutdown deadline: waiting senders give up at once.
    aborted: std::sync::atomic::AtomicBool,
    lock: Mutex<()>,
    space: Condvar,
    /// Rung (one slot) when a sender starts waiting for room, so that a
    /// sink holding credits while it lingers writes them back at once.
    want: Sender<()>,
}

impl Gate {
    fn try_reserve(&self, n: usize) -> bool {
        let mut depth = self.depth.load(Ordering::SeqCst);
        loop {
            if depth + n > self.capacity {
                return false;
            }
            match self.depth.compare_exchange_weak(
                depth,
                depth + n,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => depth = now,
            }
        }
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    fn abort(&self) {
        let _guard = self.lock.lock();
        self.aborted.store(true, Ordering::SeqCst);
        self.space.notify_all();
    }

    fn reserve_until(&self, n: usize, deadline: Instant) -> bool {
        // Fast path only while nobody waits: a sender that arrives while
        // others sleep must not take the room they are waiting for. With
        // a hundred busy connections, barging newcomers otherwise starve
        // an unlucky waiter until its send_timeout, though the sink keeps
        // up.
        if self.waiters.load(Ordering::SeqCst) == 0 && self.try_reserve(n) {
            return true;
        }
        let mut guard = self.lock.lock();
        // Registered before re-checking, so a release that happens after
        // the check sees us and notifies under the lock we hold: no lost
        // wake-up.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Full already means the bell rang for an earlier waiter and no
        // sink has heard it yet: one ring is enough.
        let _ = self.want.try_send(());
        let ok = loop {
            // Take room only when we are alone or the queue is below the
            // wake-up mark (then every waiter has been woken and competes).
            let alone = self.waiters.load(Ordering::SeqCst) == 1;
            let roomy = self.depth.load(Ordering::SeqCst) <= self.wake_below;
            if (alone || roomy) && self.try_reserve(n) {
                break true;
            }
            if self.is_aborted() {
                break false;
            }
            if self.space.wait_until(&mut guard, deadline).timed_out() {
                break self.try_reserve(n);
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        ok
    }

    fn release(&self, n: usize) {
        let depth = self.depth.fetch_sub(n, Ordering::SeqCst) - n;
        // Waking every waiter on every small release makes a herd of
        // context switches that starves the sink itself; wake them once
        // a quarter of the queue is free (or it is empty), so each wake-up
        // admits many batches. A waiter whose timeout ends re-checks anyway.
        if depth <= self.wake_below && self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.space.notify_all();
        }
    }
}

/// Creates the queue: `capacity` messages at most.
pub fn queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    let (want, wanted) = crossbeam_channel::bounded(1);
    let gate = Arc::new(Gate {
        capacity,
        wake_below: capacity - capacity / 4,
        depth: AtomicUsize::new(0),
        waiters: AtomicUsize::new(0),
        aborted: std::sync::atomic::AtomicBool::new(false),
        lock: Mutex::new(()),
        space: Condvar::new(),
        want,
    });
    // Unbounded is safe: the gate admits at most `capacity` messages, so
    // at most `capacity` batches are ever in the channel.
    let (tx, rx) = crossbeam_channel::unbounded();
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(SPARE_BATCHES);
    (
        QueueSender {
            tx,
            gate: gate.clone(),
            spares: spare_rx,
        },
        QueueReceiver {
            rx,
            gate,
            spares: spare_tx,
            wanted,
        },
    )
}

/// Written batches kept for reuse. Allocating a fresh batch per read and
/// freeing it on the sink thread made malloc hand back and re-fault its
/// pages on every read (page faults were 15% of CPU at 10M msgs/s); a
/// small pool keeps their pages warm. Bounded: at most this many batches
/// (each at most a read's worth of bytes) wait here.
const SPARE_BATCHES: usize = 64;
/// A spare batch larger than this is freed instead of kept.
const SPARE_MAX_BYTES: usize = 256 << 10;

/// The producing end, one clone per worker.
#[derive(Debug, Clone)]
pub struct QueueSender {
    tx: Sender<Batch>,
    gate: Arc<Gate>,
    /// Empty batches returned by the sinks.
    spares: Receiver<Batch>,
}

impl QueueSender {
    /// An empty batch for messages from `peer`, with room for about
    /// `bytes`: a recycled one when the sinks have returned any.
    pub fn batch(&self, bytes: usize, peer: SocketAddr) -> Batch {
        let mut b = match self.spares.try_recv() {
            Ok(mut b) => {
                // Room for `bytes` once `data` is cut back to the batch's
                // (empty) end; its old initialised length may exceed that.
                b.data.reserve(bytes.saturating_sub(b.data.len()));
                b
            }
            Err(_) => Batch::with_capacity(bytes, 0),
        };
        b.peer = Some(peer);
        b
    }

    /// Enqueues `batch`, waiting at most `timeout` for room for all of its
    /// messages. A batch larger than the capacity can never fit: callers
    /// keep batches at most [`QueueSender::capacity`] messages.
    pub fn send_timeout(&self, mut batch: Batch, timeout: Duration) -> Result<(), SendError> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        // A timeout too large to add to now (validated configs have none)
        // means no deadline worth the name: wait for a year.
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86400));
        if self.gate.is_aborted() {
            return Err(SendError::Shutdown(batch));
        }
        if !self.gate.reserve_until(n, deadline) {
            if self.gate.is_aborted() {
                return Err(SendError::Shutdown(batch));
            }
            return Err(SendError::Timeout(batch));
        }
        batch.fit();
        self.tx.send(batch).map_err(|e| {
            self.gate.release(n);
            SendError::Disconnected(e.into_inner())
        })
    }

    pub fn capacity(&self) -> usize {
        self.gate.capacity
    }

    pub fn depth(&self) -> QueueDepth {
        QueueDepth(self.gate.clone(), None)
    }

    /// The shutdown deadline passed: every waiting and later send fails
    /// with [`SendError::Shutdown`] at once, so no worker stays blocked
    /// on a queue nobody will drain (and its batch is counted, not lost).
    pub fn abort(&self) {
        self.gate.abort();
    }
}

/// The consuming end, one clone per sink thread.
#[derive(Debug, Clone)]
pub struct QueueReceiver {
    rx: Receiver<Batch>,
    gate: Arc<Gate>,
    spares: Sender<Batch>,
    /// The bell senders ring when they start waiting for room.
    wanted: Receiver<()>,
}

impl QueueReceiver {
    /// The channel, for `select!` with a tick.
    pub fn channel(&self) -> &Receiver<Batch> {
        &self.rx
    }

    pub fn try_recv(&self) -> Result<Batch, TryRecvError> {
        self.rx.try_recv()
    }

    /// Rung when a sender starts waiting for room: a sink that holds
    /// messages (lingering) should write them now, for `select!`.
    pub fn wanted(&self) -> &Receiver<()> {
        &self.wanted
    }

    /// Whether a sender is waiting for room right now.
    pub fn is_wanted(&self) -> bool {
        self.gate.waiters.load(Ordering::SeqCst) > 0
    }

    pub fn capacity(&self) -> usize {
        self.gate.capacity
    }

    /// `n` messages taken from the queue were written: their credits
    /// return and waiting senders wake.
    pub fn written(&self, n: usize) {
        self.gate.release(n);
    }

    /// Hands a written batch back for reuse (or frees it if the pool is
    /// full or the batch is very large).
    pub fn recycle(&self, mut batch: Batch) {
        if batch.data.capacity() <= SPARE_MAX_BYTES {
            batch.clear();
            let _ = self.spares.try_send(batch);
        }
    }

    pub fn depth(&self) -> QueueDepth {
        QueueDepth(self.gate.clone(), None)
    }
}

/// A read-only view of the queue depth, for stats and the accept loop.
/// With a spool, the view given to stats also counts the messages
/// spooled and not yet delivered (SPEC "Disk spool": they are part of
/// `queue_depth`); the accept loop's view counts the memory queue only,
/// so that an outage the spool absorbs does not pause accepting.
#[derive(Debug, Clone)]
pub struct QueueDepth(Arc<Gate>, Option<Arc<AtomicUsize>>);

impl QueueDepth {
    /// Messages queued or held by a sink and not yet written (plus, for
    /// a view made by [`QueueDepth::with_spooled`], those spooled).
    pub fn get(&self) -> usize {
        self.in_memory() + self.1.as_ref().map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Messages in the memory queue only.
    pub fn in_memory(&self) -> usize {
        self.0.depth.load(Ordering::SeqCst)
    }

    /// A view that adds `spooled` to the depth.
    pub fn with_spooled(&self, spooled: Arc<AtomicUsize>) -> QueueDepth {
        QueueDepth(self.0.clone(), Some(spooled))
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(msgs: &[&str]) -> Batch {
        let mut b = Batch::new();
        for m in msgs {
            b.push(m.as_bytes());
        }
        b
    }

    #[test]
    fn batch_keeps_messages_and_lines() {
        let b = batch(&["a", "", "bc"]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.as_lines(), b"a\n\nbc\n");
        let v: Vec<&[u8]> = b.messages().collect();
        assert_eq!(v, vec![&b"a"[..], b"", b"bc"]);
    }

    #[test]
    fn extend_lines_equals_pushing_each_message() {
        let mut a = batch(&["x"]);
        a.extend_lines(b"ab\n\ncd\n", &[2, 3, 6]);
        assert_eq!(a, batch(&["x", "ab", "", "cd"]));
    }

    #[test]
    fn an_adopted_buffer_shows_only_its_run_and_is_reused_unzeroed() {
        let mut b = Batch::new();
        let own = b.take_allocation();
        assert!(own.is_empty());
        b.adopt_lines(b"xxab\ncd\nyy".to_vec(), 2..8, &[2, 5]);
        assert_eq!(b, batch(&["ab", "cd"]));
        assert_eq!(b.byte_len(), 6);
        b.push(b"e");
        assert_eq!(b, batch(&["ab", "cd", "e"]));
        b.clear();
        assert!(b.is_empty() && b.as_lines().is_empty());
        b.push(b"z");
        assert_eq!(b, batch(&["z"]));
        let mut c = Batch::new();
        c.adopt_lines(b"ab\ncd\nyy".to_vec(), 0..6, &[2, 5]);
        c.clear();
        // Round the queue and back: the old bytes stay initialised.
        assert_eq!(c.take_allocation().len(), 8);
    }

    #[test]
    fn capacity_counts_messages_not_batches() {
        let (tx, rx) = queue(3);
        tx.send_timeout(batch(&["a", "b"]), Duration::ZERO).unwrap();
        let e = tx.send_timeout(batch(&["c", "d"]), Duration::from_millis(20));
        assert!(matches!(e, Err(SendError::Timeout(b)) if b.len() == 2));
        tx.send_timeout(batch(&["c"]), Duration::ZERO).unwrap();
        assert_eq!(tx.depth().get(), 3);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.len(), 2);
        // Taken but not written: still counted.
        assert_eq!(rx.depth().get(), 3);
        rx.written(2);
        assert_eq!(rx.depth().get(), 1);
    }

    #[test]
    fn waiting_sender_wakes_when_a_sink_writes() {
        let (tx, rx) = queue(1);
        tx.send_timeout(batch(&["a"]), Duration::ZERO).unwrap();
        let t = std::thread::spawn(move || tx.send_timeout(batch(&["b"]), Duration::from_secs(30)));
        let first = rx.channel().recv().unwrap();
        rx.written(first.len());
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(rx.channel().recv().unwrap(), batch(&["b"]));
    }

    #[test]
    fn send_after_every_receiver_dropped_hands_the_batch_back() {
        let (tx, rx) = queue(10);
        drop(rx);
        let e = tx.send_timeout(batch(&["a"]), Duration::ZERO);
        assert!(matches!(e, Err(SendError::Disconnected(_))));
        assert_eq!(tx.depth().get(), 0);
    }

    #[test]
    fn abort_wakes_a_waiting_sender_and_hands_its_batch_back() {
        let (tx, _rx) = queue(1);
        tx.send_timeout(batch(&["a"]), Duration::ZERO).unwrap();
        let waiting = tx.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let r = waiting.send_timeout(batch(&["b"]), Duration::from_secs(60));
            (r, start.elapsed())
        });
        while tx.gate.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        tx.abort();
        let (r, waited) = t.join().unwrap();
        assert!(matches!(r, Err(SendError::Shutdown(b)) if b.len() == 1));
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        let later = tx.send_timeout(batch(&["c"]), Duration::from_secs(60));
        assert!(matches!(later, Err(SendError::Shutdown(_))));
    }

    #[test]
    fn receivers_drain_after_senders_drop() {
        let (tx, rx) = queue(10);
        tx.send_timeout(batch(&["a"]), Duration::ZERO).unwrap();
        drop(tx);
        assert_eq!(rx.channel().recv().unwrap().len(), 1);
        assert!(rx.channel().recv().is_err());
    }
}
