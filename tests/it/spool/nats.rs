//! `[spool]` with the nats sink, against a real nats-server: kill -9
//! floodwall while it delivers from its spool, restart it on the same
//! spool, several times; in the end the stream holds every message that
//! was spooled before each kill exactly once: 5 kills during 200,000
//! messages, into a single server's stream and into an R3 stream on a
//! 3-node cluster (the fleet set-up). And a shutdown while the
//! server is away keeps the spool for the next start, which publishes it
//! with each message's `Floodwall-Peer`.
//!
//! Why duplicates would appear without stable ids: the spool makes its
//! delivered position durable only every `sync` (here 250 ms, thousands
//! of messages at this pace), so a restart replays messages JetStream
//! already stored. Their `Nats-Msg-Id` comes from their place in the spool, the
//! same on the replay, so the stream drops the copies; per-run ids would
//! store them twice. The test also checks that such overlapping replays
//! happened (else it would prove nothing).
//!
//! Each round: start (the restart replays what the last run had not made
//! durably delivered: `recovered`), let 4 clients send a burst of
//! numbered messages in small writes (so records are small and many are
//! in flight at once, acked out of order), wait until each client's last
//! message is in a segment file (a kill -9 may lose the memory queue in
//! front of the spool, SPEC "Disk spool", never what was appended), wait
//! until acks come in, then kill at a random moment while the sink
//! publishes.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::nats::{Cluster, NatsServer, create_stream, read_stream, stream_count};
use crate::support::spool::{Rng, message, spooled_max};
use crate::support::{Daemon, num};

const ROUNDS: usize = 5;
const CLIENTS: usize = 4;
/// Messages per client per round.
const PER_ROUND: usize = 10_000;
/// Messages per client write: small reads, small records.
const PER_WRITE: usize = 20;
const SIZE: usize = 100;
const STREAM: &str = "SPOOLED";
const SUBJECT: &str = "logs.spooled";

fn config(urls: &[String], spool_dir: &Path, shutdown: &str) -> String {
    let servers: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    support::spool::config_with_sync(
        &format!(
            "type = \"nats\"\nservers = [{}]\nsubject = \"{SUBJECT}\"\nstream = \"{STREAM}\"",
            servers.join(", ")
        ),
        spool_dir,
        // A kill finds up to 250 ms of acked messages not yet durably
        // delivered (thousands at this pace), which the restart replays.
        "250ms",
        &format!("[shutdown]\ntimeout = \"{shutdown}\""),
    )
}

/// `CLIENTS` connections each send their messages `from..to` in writes
/// of `PER_WRITE` messages, at once; returns each one's local address.
fn send(addr: SocketAddr, from: usize, to: usize) -> Vec<SocketAddr> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let local = s.local_addr().expect("local address");
                s.set_nodelay(true).expect("nodelay");
                let seqs: Vec<usize> = (from..to).collect();
                for chunk in seqs.chunks(PER_WRITE) {
                    let mut text = String::with_capacity(chunk.len() * (SIZE + 1));
                    for &i in chunk {
                        text.push_str(&message(c, i, SIZE));
                        text.push('\n');
                    }
                    s.write_all(text.as_bytes()).expect("send");
                }
                local
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

/// The `recovered` count of this run (constant over its stats lines).
fn recovered(d: &Daemon) -> u64 {
    // Stats every 100 ms; 10 s is for a loaded machine.
    let s = d
        .wait_stats(Duration::from_secs(10), |_| true)
        .unwrap_or_else(|| panic!("no stats line; log:\n{}", d.log_text()));
    num(&s, "recovered")
}

#[test]
fn kill_9_mid_delivery_leaves_each_spooled_message_in_the_stream_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path(), "spooled");
    let urls = vec![nats.url()];
    // Default duplicate window: 2 min, far longer than this test.
    create_stream(&urls, STREAM, SUBJECT, 1);
    kill_9_rounds(&urls, dir.path());
}

/// The same into a stream replicated on a 3-node cluster (the fleet's
/// set-up, docs/fleet.md): an ack means stored on a quorum.
#[test]
fn kill_9_mid_delivery_into_an_r3_stream_leaves_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let urls = cluster.urls();
    create_stream(&urls, STREAM, SUBJECT, 3);
    kill_9_rounds(&urls, dir.path());
}

/// `ROUNDS` kills of floodwall (spool + nats sink into `urls`' stream)
/// while it delivers, then a last start that delivers the rest: the
/// stream holds every message exactly once.
fn kill_9_rounds(urls: &[String], dir: &Path) {
    let mut rng = Rng::from_env_or_time();
    let urls = urls.to_vec();
    let spool_dir = dir.join("spool");
    let cfg = config(&urls, &spool_dir, "20s");
    let started = Instant::now();

    // Messages each client sent so far (its next sequence number).
    let mut per_client = 0usize;
    let mut recovered_per_start = Vec::new();
    // Replayed messages that the stream already held (stored before the
    // kill, replayed after it): each one a duplicate without stable ids.
    let mut overlap = 0u64;
    let mut killed_mid_delivery = 0;
    // (spooled, stored in the stream) at the last kill.
    let mut at_kill: Option<(u64, u64)> = None;
    for round in 0..ROUNDS {
        let d = Daemon::start(&cfg);
        let r = recovered(&d);
        if let Some((spooled, stored)) = at_kill {
            assert!(
                stored <= spooled,
                "{stored} stored of {spooled} sent: duplicates"
            );
            let missing = spooled - stored;
            assert!(
                r >= missing,
                "round {round}: {missing} spooled messages not in the stream, only {r} replayed"
            );
            overlap += r - missing;
        }
        recovered_per_start.push(r);
        send(d.addr, per_client, per_client + PER_ROUND);
        per_client += PER_ROUND;
        let last = per_client - 1;
        // 30 s: framing and appending 4 MB on a busy machine. Or all of it
        // delivered already (its segments may then be deleted).
        let all = r + (CLIENTS * PER_ROUND) as u64;
        let mut max = HashMap::new();
        let spooled = support::wait_until(Duration::from_secs(30), || {
            spooled_max(&spool_dir, &mut max);
            (0..CLIENTS).all(|c| max.get(&c).is_some_and(|&s| s >= last))
                || d.stats_lines()
                    .last()
                    .is_some_and(|s| num(s, "delivered") >= all)
        });
        assert!(
            spooled,
            "round {round}: burst not spooled; log:\n{}",
            d.log_text()
        );
        // The kill moment: a random point of this run's delivery, when
        // the stream has grown by a random share (up to 3/4) of what it
        // still lacks, so that the kill lands mid-delivery whatever the
        // machine's speed (any moment must do: no synchronisation). 30 s:
        // connecting and publishing on a busy machine.
        let sent = (CLIENTS * per_client) as u64;
        let before = at_kill.map_or(0, |(_, stored)| stored);
        let target = before + rng.below((sent - before) * 3 / 4);
        let reached = support::wait_until(Duration::from_secs(30), || {
            stream_count(&urls, STREAM) >= target
        });
        assert!(
            reached,
            "round {round}: the stream did not reach {target}; log:\n{}",
            d.log_text()
        );
        drop(d); // SIGKILL, then reaped
        let stored = stream_count(&urls, STREAM);
        eprintln!("round {round}: recovered {r}, sent {sent}, stored at kill {stored}");
        if stored < sent {
            killed_mid_delivery += 1;
        }
        at_kill = Some((sent, stored));
    }

    // The last start delivers what is left, then shuts down cleanly.
    let mut d = Daemon::start(&cfg);
    let r = recovered(&d);
    let (spooled, stored) = at_kill.expect("at least one round");
    assert!(
        stored <= spooled,
        "{stored} stored of {spooled} sent: duplicates"
    );
    assert!(r >= spooled - stored, "last start replayed only {r}");
    overlap += r - (spooled - stored);
    recovered_per_start.push(r);
    // 60 s: ~160k publishes with acks on a loaded machine.
    d.wait_stats(Duration::from_secs(60), |s| {
        num(s, "queue_depth") == 0 && num(s, "delivered") == r
    })
    .unwrap_or_else(|| panic!("last run did not deliver; log:\n{}", d.log_text()));
    // Exit 0, the identity exact, nothing left spooled.
    let last = d.stop_balanced(Duration::from_secs(30));
    assert_eq!(num(&last, "queue_depth"), 0);

    let stored = read_stream(&urls, STREAM);
    let sent = CLIENTS * per_client;
    let mut seen = vec![0usize; sent];
    for m in &stored {
        let (client, seq) = support::spool::parse(&String::from_utf8_lossy(&m.payload))
            .unwrap_or_else(|| panic!("not a test message: {:?}", m.payload));
        assert!(client < CLIENTS && seq < per_client, "{client} {seq}");
        seen[client * per_client + seq] += 1;
    }
    let missing: Vec<(usize, usize)> = (0..sent)
        .filter(|&i| seen[i] == 0)
        .map(|i| (i / per_client, i % per_client))
        .collect();
    let duplicates: usize = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    let ids: HashSet<&str> = stored.iter().filter_map(|m| m.id.as_deref()).collect();
    eprintln!(
        "spool+nats: {ROUNDS} kills ({killed_mid_delivery} mid-delivery) in {:?}, {sent} sent, {} stored, recovered per start {recovered_per_start:?}, {overlap} replayed messages already in the stream, {duplicates} duplicates",
        started.elapsed(),
        stored.len()
    );
    assert!(
        missing.is_empty(),
        "{} spooled messages missing from the stream, first (client, seq) {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(duplicates, 0, "messages stored more than once");
    assert_eq!(stored.len(), sent);
    assert_eq!(stream_count(&urls, STREAM), sent as u64);
    // Every message carries an id from its place in the spool.
    assert_eq!(ids.len(), sent, "a distinct Nats-Msg-Id per message");
    assert!(ids.iter().all(|id| id.starts_with('s')), "spool ids only");
    // What makes the above mean something: restarts replayed, and part of
    // what they replayed was in the stream already.
    assert!(
        recovered_per_start.iter().any(|&r| r > 0),
        "no restart replayed anything: {recovered_per_start:?}"
    );
    assert!(overlap > 0, "no replay overlapped what the stream held");
    assert!(
        killed_mid_delivery > 0,
        "no kill landed while the sink was delivering"
    );
}

/// Waits until every client's messages up to `last` are in the spool's
/// segment files; false after `timeout`.
fn wait_spooled(dir: &Path, last: usize, timeout: Duration) -> bool {
    let mut max = HashMap::new();
    support::wait_until(timeout, || {
        spooled_max(dir, &mut max);
        (0..CLIENTS).all(|c| max.get(&c).is_some_and(|&s| s >= last))
    })
}

#[test]
fn a_shutdown_with_the_server_away_keeps_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // floodwall spools against a server that is not there.
    let port = NatsServer::vacated_port(dir.path(), "away");
    let url = format!("nats://127.0.0.1:{port}");
    let spool_dir = dir.path().join("spool");
    let mut d = Daemon::start(&config(std::slice::from_ref(&url), &spool_dir, "2s"));
    const N: usize = 500;
    let locals = send(d.addr, 0, N);
    // 20 s: framing and appending 200 KB on a busy machine.
    assert!(
        wait_spooled(&spool_dir, N - 1, Duration::from_secs(20)),
        "not spooled; log:\n{}",
        d.log_text()
    );
    let asked = Instant::now();
    let last = d.stop_balanced(Duration::from_secs(20));
    let took = asked.elapsed();
    // The 2 s deadline, plus 3 s for the process to exit on a loaded
    // machine.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let total = (CLIENTS * N) as u64;
    assert_eq!(num(&last, "queue_depth"), total, "what stays spooled");
    assert_eq!(num(&last, "delivered"), 0);
    assert!(d.log_text().contains("shutdown drained=true lost=0"));

    let nats = NatsServer::start_with(dir.path(), "away", Some(port), None);
    let mut d = Daemon::start(&config(std::slice::from_ref(&url), &spool_dir, "20s"));
    // 30 s: connecting (back-off) and publishing on a busy machine.
    let s = d
        .wait_stats(Duration::from_secs(30), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("spool not published; log:\n{}", d.log_text()));
    assert_eq!(num(&s, "recovered"), total);
    assert_eq!(num(&s, "delivered"), total);
    d.stop_balanced(Duration::from_secs(20));
    let urls = vec![nats.url()];
    let stored = read_stream(&urls, STREAM);
    let mut keys = HashSet::new();
    for m in &stored {
        let (c, seq) = support::spool::parse(&String::from_utf8_lossy(&m.payload))
            .unwrap_or_else(|| panic!("not a test message: {:?}", m.payload));
        keys.insert((c, seq));
        // The spool kept who sent it, across the restart.
        let want = locals[c].to_string();
        assert_eq!(m.peer.as_deref(), Some(want.as_str()), "Floodwall-Peer");
    }
    assert_eq!(stored.len() as u64, total, "each message once");
    assert_eq!(keys.len() as u64, total);
}
