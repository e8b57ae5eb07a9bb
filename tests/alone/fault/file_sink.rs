//! Scenario 6, file sink faults: the file sink's disk is full (a small
//! tmpfs filled to the last byte). Sink errors must be logged aggregated,
//! the daemon must stay up while the queue fills and the overload layers
//! act (send timeouts counted, accept paused), and writing must resume,
//! without gaps or duplicates, once the fault clears.
//!
//! The tests run as root (NOTES.md), so `mount -t tmpfs` works; if it does
//! not, the test fails saying why rather than test something else.

use crate::support;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::fault::flood;
use crate::support::{Tmpfs, assert_balanced, num, read};

/// A full disk under the sink's path: an 8 MiB tmpfs filled by `filler`;
/// `clear` frees it.
struct FullDisk {
    filler: PathBuf,
    _tmpfs: Tmpfs,
}

impl FullDisk {
    /// Mounts the tmpfs; returns it and the sink path on it.
    fn mount() -> (FullDisk, PathBuf) {
        let tmpfs = Tmpfs::mount("8m");
        let path = tmpfs.path.join("out.log");
        (
            FullDisk {
                filler: tmpfs.path.join("filler"),
                _tmpfs: tmpfs,
            },
            path,
        )
    }

    /// Fills the tmpfs to the last byte (after the sink opened its file).
    fn fill(&self) {
        let mut f = std::fs::File::create(&self.filler).expect("filler");
        let block = vec![b'f'; 64 << 10];
        // Bounded: the tmpfs is 8 MiB, 128 blocks.
        let mut full = false;
        for _ in 0..1000 {
            if f.write_all(&block).is_err() {
                full = true;
                break;
            }
        }
        let _ = f.write_all(b"f");
        assert!(full, "8 MiB tmpfs not full after 1000 x 64 KiB");
    }

    fn clear(&self) {
        std::fs::remove_file(&self.filler).expect("free the tmpfs");
    }
}

#[test]
fn a_full_disk_is_survived_counted_and_recovered_from() {
    let _machine = crate::support::machine_shared();
    let (fault, path) = FullDisk::mount();
    let mut daemon = Conf::new()
        .set("limits.max_connections", 20)
        .set("limits.send_timeout", "300ms")
        .set("queue.capacity", 2000)
        .set("sink.path", path.display().to_string())
        .start();
    fault.fill();
    let fault_start = Instant::now();

    let (sent, _) = flood(daemon.addr, 5, Duration::from_secs(3), "disk-full");
    assert!(sent > 0);
    let full = daemon
        .wait_stats(Duration::from_secs(10), |s| {
            s["accept_paused"] == "true"
                && num(s, "dropped_send_timeout") > 0
                && num(s, "sink_errors") > 0
        })
        .unwrap_or_else(|| panic!("no overload during the fault; log:\n{}", daemon.log_text()));
    assert_eq!(num(&full, "delivered"), 0, "{full:?}");
    assert!(read(&path).is_empty(), "bytes reached a full disk?");
    let fault_secs = fault_start.elapsed().as_secs_f64();
    let warn_lines = daemon
        .log_lines()
        .iter()
        .filter(|l| l.contains("sink write failed"))
        .count();
    assert!(
        warn_lines >= 1,
        "the sink error was not logged; log:\n{}",
        daemon.log_text()
    );
    assert!(
        warn_lines as f64 <= fault_secs.ceil() + 1.0,
        "{warn_lines} sink error lines in {fault_secs:.1} s: not aggregated"
    );

    let cleared = Instant::now();
    fault.clear();
    assert!(
        support::wait_until(Duration::from_secs(15), || !read(&path).is_empty()),
        "writing did not resume after the fault cleared; log:\n{}",
        daemon.log_text()
    );
    let resumed_after = cleared.elapsed();
    assert!(
        daemon
            .wait_log(Duration::from_secs(5), |l| l.contains("sink recovered"))
            .is_some()
    );
    // New connections are served again.
    support::fault::send_and_close(daemon.addr, b"marker after the disk fault\n");
    assert!(
        support::wait_until(Duration::from_secs(15), || read(&path)
            .windows(28)
            .any(|w| w == b"marker after the disk fault\n")),
        "marker not written; log:\n{}",
        daemon.log_text()
    );
    let status = daemon.stop(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    let last = daemon.final_stats();
    assert_balanced(&last);
    assert_eq!(num(&last, "queue_depth"), 0);
    let lines = read(&path).iter().filter(|&&b| b == b'\n').count() as u64;
    // Unmount before the temp dir is removed.
    drop(fault);
    assert_eq!(
        lines,
        num(&last, "delivered"),
        "file lines vs delivered: {last:?}"
    );
    eprintln!(
        "FIGURES file_sink: fault=tmpfs fault_window={fault_secs:.1}s sink_error_warn_lines={warn_lines} \
         sink_errors={} resumed_after_clear={resumed_after:?} received={} delivered={} dropped_send_timeout={} \
         closed_send_timeout={}",
        num(&last, "sink_errors"),
        num(&last, "received"),
        num(&last, "delivered"),
        num(&last, "dropped_send_timeout"),
        num(&last, "closed_send_timeout"),
    );
}
