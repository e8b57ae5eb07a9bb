//! `Nats-Msg-Id`s: the stream drops a message whose id it has seen within
//! its duplicate window, so an id must be the same on every send of one
//! message (retries, a replay from the spool after a crash) and never
//! shared by two messages (two workers, two runs, two spools).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::queue::SpoolPos;

/// A run id for message ids: unique per daemon run (process id and start
/// time), so two runs never share an id within the stream's duplicate
/// window.
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Where `Nats-Msg-Id`s come from.
///
/// - From the queue (no spool): "<run>-<worker>-<seq>", unique per
///   message and per run; `<run>` is hex digits ([`run_id`]).
/// - From the spool: "s<spool id>-<segment>-<offset>-<index>", the
///   message's place in the spool (its record's place and its index in
///   the record). A replay after a crash reads the same record at the
///   same place, so it gets the same id and the stream's duplicate window
///   drops the copy. Places are never reused (segment numbers only grow,
///   see src/spool/mod.rs point 5) and the spool id tells spools apart
///   (a fleet, a wiped spool).
///
/// The two kinds never collide, whatever runs shared the stream: a run
/// id starts with a hex digit, a spool id with `s`, which is none.
#[derive(Debug)]
pub(super) struct MessageIds {
    prefix: String,
    next: u64,
    /// "s<spool id>-", when reading from a spool.
    spool: Option<String>,
}

/// What a message's id is made of; [`MessageIds::text`] makes the id
/// only when it is published, so a message holds no string of its own
/// while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsgId {
    /// From the queue: a per-run sequence number.
    Run(u64),
    /// From the spool: its record's place and its index in the record.
    Spooled { at: SpoolPos, index: u32 },
}

impl MessageIds {
    pub(super) fn new(run_id: &str, worker: usize) -> MessageIds {
        MessageIds {
            prefix: format!("{run_id}-{worker}-"),
            next: 0,
            spool: None,
        }
    }

    /// Spooled messages get ids from their place in spool `spool_id`.
    pub(super) fn use_spool(&mut self, spool_id: &str) {
        self.spool = Some(format!("s{spool_id}-"));
    }

    /// The next message from the queue.
    pub(super) fn next_run(&mut self) -> MsgId {
        self.next += 1;
        MsgId::Run(self.next)
    }

    /// What the log shows as this worker's ids.
    pub(super) fn prefix(&self) -> &str {
        self.spool.as_deref().unwrap_or(&self.prefix)
    }

    pub(super) fn text(&self, id: MsgId) -> String {
        match id {
            MsgId::Run(seq) => format!("{}{seq}", self.prefix),
            MsgId::Spooled { at, index } => format!(
                "{}{}-{}-{index}",
                self.spool
                    .as_deref()
                    .expect("a spooled message comes from a pipeline with a spool"),
                at.segment,
                at.offset
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::queue::Batch;
    use crate::sink::nats::tests::spooling;
    use crate::spool::{Spool, Taken};
    use crate::stats::Stats;

    #[test]
    fn message_ids_are_unique_per_worker_and_run() {
        let mut a = MessageIds::new("r1", 0);
        let mut b = MessageIds::new("r1", 1);
        let ids: std::collections::HashSet<String> = (0..100)
            .flat_map(|_| {
                let (x, y) = (a.next_run(), b.next_run());
                [a.text(x), b.text(y)]
            })
            .collect();
        assert_eq!(ids.len(), 200);
        assert_ne!(run_id(), "");
    }

    /// Spooled ids begin with `s`, never a hex digit: a run id cannot
    /// begin with it, so the two kinds never collide in one stream.
    #[test]
    fn spool_ids_and_run_ids_never_collide() {
        let run = run_id();
        assert!(run.bytes().all(|b| b.is_ascii_hexdigit()), "{run}");
        let mut ids = MessageIds::new(&run, 0);
        let next = ids.next_run();
        let from_run = ids.text(next);
        ids.use_spool("0123456789abcdef");
        let at = SpoolPos {
            segment: 7,
            offset: 4096,
        };
        let spooled = ids.text(MsgId::Spooled { at, index: 3 });
        assert_eq!(spooled, "s0123456789abcdef-7-4096-3");
        assert!(from_run.starts_with(&run), "{from_run}");
        assert_ne!(spooled.as_bytes()[0], from_run.as_bytes()[0]);
    }

    /// The ids of the messages `spool` hands out next (all its records).
    fn spooled_ids(spool: &Spool) -> Vec<String> {
        let mut ids = MessageIds::new(&run_id(), 0);
        ids.use_spool(spool.id());
        let Taken::Batches(batches) = spool.take(usize::MAX, 64, Duration::from_secs(5)) else {
            panic!("nothing spooled");
        };
        batches
            .iter()
            .flat_map(|b| {
                let at = b.origin().expect("a spooled batch has its place");
                (0..b.len() as u32).map(move |index| MsgId::Spooled { at, index })
            })
            .map(|id| ids.text(id))
            .collect()
    }

    /// A record read again (a replay after a crash: spooled, handed out,
    /// never delivered, the spool opened anew) gives its messages the
    /// same ids, which is what lets the stream drop the replayed copy.
    #[test]
    fn a_spooled_message_keeps_its_id_when_its_record_is_read_again() {
        use crate::spool;

        let dir = tempfile::tempdir().unwrap();
        let (tx, spooling) = spooling(dir.path());
        let spool = &spooling.spool;
        for (tag, n) in [("a", 2), ("b", 3)] {
            let mut b = Batch::new();
            for i in 0..n {
                b.push(format!("{tag}{i}").as_bytes());
            }
            tx.send_timeout(b, Duration::from_secs(5)).unwrap();
        }
        drop(tx);
        // The writer appends both before it closes the spool; 5 s is for
        // a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        while spool.spooled().load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "not spooled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = spooled_ids(spool);
        let settings = spooling.close();

        let stats = Arc::new(Stats::default());
        let (again, _writer) = spool::open(settings, stats.clone()).unwrap();
        assert_eq!(stats.recovered.load(Ordering::Relaxed), 5);
        let second = spooled_ids(&again);
        assert_eq!(first.len(), 5);
        assert_eq!(
            first.iter().collect::<std::collections::HashSet<_>>().len(),
            5
        );
        assert_eq!(first, second);
        assert!(first[0].starts_with(&format!("s{}-", again.id())));
    }
}
