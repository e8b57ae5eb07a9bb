//! The nats sink against a 3-node JetStream cluster with a 3-replica
//! stream: kill -9 the stream's leader mid-run. floodwall keeps taking
//! messages during the election, acks resume after it, and the stream
//! holds every message floodwall counted delivered exactly once; what
//! the queue could not hold meanwhile is counted dropped, to the message.

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::nats::{Cluster, create_stream, read_stream};
use crate::support::{assert_balanced, num};

/// Each client sends `per_tick` numbered lines every 100 ms for `ticks`
/// ticks (a steady rate, like a fleet of syslog senders).
fn paced_clients(
    addr: SocketAddr,
    clients: usize,
    per_tick: usize,
    ticks: usize,
) -> Vec<thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let start = Instant::now();
                let mut buf = Vec::new();
                for t in 0..ticks {
                    buf.clear();
                    for i in t * per_tick..(t + 1) * per_tick {
                        writeln!(buf, "c{c:02} s{i:07} {:x<80}", "").unwrap();
                    }
                    s.write_all(&buf).expect("send");
                    // Pacing the load, not synchronising: the next tick's
                    // start time.
                    let next = start + Duration::from_millis(100 * (t as u64 + 1));
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect()
}

#[test]
fn killing_the_stream_leader_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let urls = cluster.urls();
    create_stream(&urls, "LOGS", "logs.test", 3);
    let mut daemon = Conf::new()
        .set("limits.send_timeout", "200ms")
        .set("limits.on_send_timeout", "drop")
        .set("queue.capacity", 20000)
        .nats_sink(&urls)
        .set("sink.ack_timeout", "2s")
        .start();
    // 10 clients x 50 lines per 100 ms = 5,000 messages/s for 12 s.
    let (clients, per_tick, ticks) = (10, 50, 120);
    let total = (clients * per_tick * ticks) as u64;
    let senders = paced_clients(daemon.addr, clients, per_tick, ticks);

    let before = daemon
        .wait_stats(Duration::from_secs(30), |s| num(s, "delivered") >= 5_000)
        .unwrap_or_else(|| panic!("no acks before the kill; log:\n{}", daemon.log_text()));
    let leader = cluster
        .stream_leader("LOGS")
        .expect("the stream has a leader");
    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.name == leader)
        .expect("leader is a node");
    node.kill();

    // floodwall keeps taking messages while the stream elects a leader.
    let received = num(&before, "received");
    let taking = daemon.wait_stats(Duration::from_secs(10), |s| {
        num(s, "received") >= received + 5_000
    });
    assert!(
        taking.is_some(),
        "floodwall stopped taking messages; log:\n{}",
        daemon.log_text()
    );
    // And acks resume after the election (5-8 s measured; 60 s for a
    // loaded machine).
    let delivered = num(&before, "delivered");
    let resumed = daemon.wait_stats(Duration::from_secs(60), |s| {
        num(s, "delivered") >= delivered + 20_000
    });
    assert!(
        resumed.is_some(),
        "acks did not resume; log:\n{}",
        daemon.log_text()
    );
    let new_leader = cluster.stream_leader("LOGS").expect("a new leader");
    assert_ne!(new_leader, leader);

    for s in senders {
        s.join().expect("sender");
    }
    let done = daemon
        .wait_stats(Duration::from_secs(60), |s| {
            num(s, "received") == total && num(s, "queue_depth") == 0
        })
        .unwrap_or_else(|| panic!("did not settle; log:\n{}", daemon.log_text()));
    assert_balanced(&done);
    assert!(daemon.stop(Duration::from_secs(30)).success());
    let last = daemon.final_stats();
    assert_balanced(&last);
    let delivered = num(&last, "delivered");
    let dropped = num(&last, "dropped_send_timeout");
    assert_eq!(
        delivered + dropped,
        total,
        "every message delivered or counted dropped"
    );

    let stored = read_stream(&cluster.urls(), "LOGS");
    let mut seen = HashSet::new();
    for m in &stored {
        let text = String::from_utf8_lossy(&m.payload);
        let k: Vec<&str> = text.split(' ').take(2).collect();
        assert!(seen.insert(k.join(" ")), "stored twice: {text}");
    }
    assert_eq!(
        stored.len() as u64,
        delivered,
        "the stream holds exactly what was acked"
    );
    eprintln!(
        "leader kill: sent={total} delivered={delivered} dropped={dropped} sink_errors={}",
        num(&last, "sink_errors")
    );
}
