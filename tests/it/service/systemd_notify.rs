//! sd_notify(3) as systemd sees it: a unix datagram socket stands in for
//! the manager (NOTIFY_SOCKET, WATCHDOG_USEC), and the real binary runs
//! with a file sink on a FIFO. READY=1 comes once the port accepts;
//! RELOADING=1 (with MONOTONIC_USEC) and READY=1 surround a SIGHUP;
//! WATCHDOG=1 pings come while the sink can write, stop while it is
//! wedged on the FIFO nobody reads (queue full), and come back once the
//! FIFO is read; SIGTERM sends STOPPING=1 with the drain's STATUS=.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::{Daemon, Fifo, wait_until};

/// Every datagram the "manager" got, in order, with when it came.
#[derive(Default)]
struct Manager {
    got: Mutex<Vec<(Instant, String)>>,
    grew: Condvar,
}

impl Manager {
    fn listen(socket: UnixDatagram) -> Arc<Manager> {
        let m = Arc::new(Manager::default());
        let sink = m.clone();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test (and its socket file) is gone.
            for _ in 0..3000 {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    sink.got.lock().unwrap().push((Instant::now(), text));
                    sink.grew.notify_all();
                }
            }
        });
        m
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Index of the first datagram at or after `from` that has `line`.
    fn wait_for(&self, from: usize, line: &str, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut got = self.got.lock().unwrap();
        loop {
            if let Some(i) = (from..got.len()).find(|&i| got[i].1.lines().any(|l| l == line)) {
                return Some(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            got = self.grew.wait_timeout(got, deadline - now).unwrap().0;
        }
    }

    fn pings_since(&self, t: Instant) -> usize {
        self.all()
            .iter()
            .filter(|(at, m)| *at >= t && m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }
}

#[test]
fn ready_reload_watchdog_and_stopping_reach_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let manager = Manager::listen(UnixDatagram::bind(&notify_path).unwrap());
    let mut fifo = Fifo::create(&dir.path().join("out.fifo"));
    let config = Conf::new()
        .set("limits.send_timeout", "300ms")
        .set("queue.capacity", 1000)
        .set("sink.path", "{dir}/out.fifo")
        .set("sink.flush_interval", "50ms")
        .set("log.stats_interval", "0s")
        .set("shutdown.timeout", "2s")
        .to_string();
    let notify = notify_path.display().to_string();
    // A 1 s watchdog: pings every 500 ms, a write stuck for 500 ms stops them.
    let mut d = Daemon::start_in_env(
        dir,
        &config,
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")],
    );

    // READY=1: the port accepts by then.
    let ready = manager
        .wait_for(0, "READY=1", Duration::from_secs(10))
        .expect("READY=1");
    TcpStream::connect(d.addr).expect("the port accepts once READY=1 was sent");

    // Pings while the sink is idle.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || manager.pings_since(t) >= 3),
        "no WATCHDOG=1 pings while healthy: {:?}",
        manager.all()
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    d.signal("HUP");
    let reloading = manager
        .wait_for(ready + 1, "RELOADING=1", Duration::from_secs(10))
        .expect("RELOADING=1 after SIGHUP");
    let msg = &manager.all()[reloading].1;
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 without MONOTONIC_USEC: {msg:?}"
    );
    manager
        .wait_for(reloading + 1, "READY=1", Duration::from_secs(10))
        .expect("READY=1 after the reload");

    // Wedge the sink: far more than the pipe (64 KiB) and the queue hold,
    // and nobody reads the FIFO.
    let addr = d.addr;
    let flood = thread::spawn(move || {
        let line = [b'x'; 99];
        for _ in 0..20 {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return;
            };
            for _ in 0..5000 {
                if s.write_all(&line).and_then(|_| s.write_all(b"\n")).is_err() {
                    break;
                }
            }
        }
    });
    d.wait_log(Duration::from_secs(15), |l| {
        l.contains("watchdog: fw-sink-0 made no progress")
    })
    .unwrap_or_else(|| panic!("no watchdog warning; log:\n{}", d.log_text()));
    let wedged = Instant::now();
    // Pings come every 500 ms when healthy: none in 2 s means stopped.
    // (A window of absence has no event to await.)
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        manager.pings_since(wedged),
        0,
        "WATCHDOG=1 went on while the sink was wedged"
    );

    // Read the FIFO: the sink writes again and the pings come back.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            fifo.drain();
            manager.pings_since(t) >= 2
        }),
        "pings did not resume after the FIFO was read"
    );
    flood.join().unwrap();

    // SIGTERM: STOPPING=1 with the drain's status.
    let before = manager.all().len();
    d.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(20), || {
            fifo.drain();
            manager
                .wait_for(before, "STOPPING=1", Duration::ZERO)
                .is_some()
        }),
        "no STOPPING=1 after SIGTERM: {:?}",
        manager.all()
    );
    let stopping = manager
        .wait_for(before, "STOPPING=1", Duration::ZERO)
        .unwrap();
    let msg = &manager.all()[stopping].1;
    assert!(
        msg.lines().any(|l| l.starts_with("STATUS=draining")),
        "STOPPING=1 without the drain's STATUS=: {msg:?}"
    );
    assert!(wait_until(Duration::from_secs(20), || {
        fifo.drain();
        d.wait_log(Duration::ZERO, |l| l.contains("shutdown drained="))
            .is_some()
    }));
    d.wait_exit(Duration::from_secs(10));
}
