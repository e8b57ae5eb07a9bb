//! Disk full while spooling: the spool lives on an 8 MiB tmpfs that this
//! test mounts (root). With the downstream not reading, the spool fills
//! the disk: one warning, then the memory queue's overload layers act
//! exactly as without a spool (drops counted), nothing already spooled is
//! lost, and spooling resumes when delivery frees space. The accounting
//! identity holds exactly on the final line.

use crate::support;

use std::time::Duration;

use crate::support::config::Conf;
use crate::support::downstream::Downstream;
use crate::support::spool::{paced_clients, per_client};
use crate::support::{Tmpfs, assert_balanced, num};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 8000;
/// Per client: 4 x 2,500 msgs/s x 500 B = 5 MB/s for 3.2 s, 16 MB in
/// all: twice what the 8 MiB disk holds, even after the kernel's socket
/// buffers (up to 4 MiB) took their share.
const RATE: f64 = 2500.0;
const SIZE: usize = 500;

#[test]
fn a_full_disk_hands_over_to_the_overload_layers_and_loses_nothing_spooled() {
    let tmpfs = Tmpfs::mount("8m");
    let mnt = &tmpfs.path;
    let collector = Downstream::with_rcvbuf(8192);
    collector.pause();
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("limits.send_timeout", "200ms")
        .set("limits.on_send_timeout", "drop")
        .set("queue.capacity", 2000)
        .tcp_sink(collector.addr)
        .set("sink.write_timeout", "200ms")
        .set("spool.dir", mnt.join("spool").display().to_string())
        .set("spool.max_bytes", "1GiB")
        .set("spool.segment_bytes", "1MiB")
        .set("spool.sync", "50ms")
        .start();
    let clients = paced_clients(d.addr, CLIENTS, PER_CLIENT, RATE, SIZE);
    let warned = d.wait_log(Duration::from_secs(30), |l| {
        l.contains("spool write failed")
    });
    assert!(
        warned.is_some(),
        "no disk-full warning; log:\n{}",
        d.log_text()
    );
    assert!(
        d.wait_stats(Duration::from_secs(30), |s| num(s, "dropped_send_timeout")
            > 0)
            .is_some(),
        "the overload layers did not take over; log:\n{}",
        d.log_text()
    );
    for c in clients {
        assert!(
            c.join().unwrap(),
            "on_send_timeout = \"drop\" keeps clients"
        );
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    // Everything framed (and either spooled, queued or dropped) before the
    // downstream comes back: one outage, one warning.
    d.wait_stats(Duration::from_secs(30), |s| {
        num(s, "received") + num(s, "dropped_oversize") >= total
    })
    .unwrap_or_else(|| panic!("not all framed; log:\n{}", d.log_text()));
    collector.resume();
    let done = d
        .wait_stats(Duration::from_secs(60), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("spool did not empty; log:\n{}", d.log_text()));
    assert!(
        d.log_text().contains("spool writing again"),
        "spooling did not resume"
    );
    let warnings = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("spool write failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per outage");
    assert!(d.stop(Duration::from_secs(15)).success());
    let last = d.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "queue_depth"), 0);
    let delivered = num(&last, "delivered");
    assert_eq!(delivered, num(&done, "delivered"));
    assert_eq!(delivered + num(&last, "dropped_send_timeout"), total);
    // Every delivered message reached the collector once, in order per
    // client (gaps where messages were dropped).
    assert!(support::wait_until(Duration::from_secs(10), || {
        collector.lines().len() as u64 >= delivered
    }));
    let lines = collector.lines();
    assert_eq!(lines.len() as u64, delivered);
    for (client, seqs) in per_client(&lines) {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "client {client} out of order"
        );
    }
}
