//! Socket activation under `systemd-socket-activate`: it holds the
//! listening socket and starts a small shell loop that runs floodwall six
//! times in a row on it (LISTEN_FDS, FileDescriptorName=server), each
//! stopped by SIGTERM: five restarts. Clients keep opening connections,
//! sending and closing the whole time. Not one connection is refused (they
//! wait in the socket's backlog while the next process starts), and with
//! `[spool]` every line sent reaches the file sink. A second passed socket,
//! named `metrics`, serves /metrics in every round.

use crate::support;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::support::{bin, wait_until};

const RESTARTS: usize = 5;
const CLIENTS: usize = 4;
const LINES_PER_CONNECTION: usize = 50;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The pid in the pid file, once it differs from `old`.
fn next_pid(pid_file: &std::path::Path, old: Option<u32>) -> Option<u32> {
    let mut pid = None;
    wait_until(Duration::from_secs(20), || {
        pid = read(pid_file)
            .trim()
            .parse()
            .ok()
            .filter(|p| Some(*p) != old);
        pid.is_some()
    });
    pid
}

#[test]
fn restarts_on_an_activated_socket_refuse_and_lose_nothing() {
    let _machine = crate::support::machine_alone();
    let found = Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-socket-activate is not installed: run scripts/install-peers.sh (package systemd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodwall.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:1"   # not used: the socket is passed in
[sink]
type = "file"
path = "{d}/out.log"
flush_interval = "50ms"
[spool]
dir = "{d}/spool"
[metrics]
listen = "127.0.0.1:1"   # on: the passed socket named "metrics" serves it
[log]
stats_interval = "0s"
[shutdown]
timeout = "5s"
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let pid_file = dir.path().join("floodwall.pid");
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    // systemd-socket-activate needs a real port: one the kernel just gave.
    let addr = support::free_port().to_string();
    let metrics = support::free_port();
    let metrics_listen = metrics.to_string();
    // Each round: a shell whose pid floodwall keeps (exec) sets LISTEN_PID.
    let script = format!(
        "for i in {}; do sh -c 'export LISTEN_PID=$$; exec \"$FW_BIN\" --config \"$FW_CONF\" --pid-file \"$FW_PID\"'; done",
        (0..=RESTARTS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut activator = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &addr,
            "-l",
            &metrics_listen,
            "--fdname=server:metrics",
            "-E",
            "PATH",
            "-E",
            "FW_BIN",
            "-E",
            "FW_CONF",
            "-E",
            "FW_PID",
        ])
        .args(["sh", "-c", &script])
        .env("FW_BIN", bin())
        .env("FW_CONF", &config)
        .env("FW_PID", &pid_file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn systemd-socket-activate");
    // It listens before it execs anything: wait for the port.
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(&addr)
            .is_ok()),
        "systemd-socket-activate did not listen on {addr}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut sent: Vec<String> = Vec::new();
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, refused, addr) = (stop.clone(), refused.clone(), addr.clone());
            thread::spawn(move || {
                let mut sent = Vec::new();
                // Bounded: at most 100k connections per client.
                for n in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut s = match TcpStream::connect(&addr) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("client {c}: connect: {e}");
                            refused.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    };
                    let mut batch = String::new();
                    for k in 0..LINES_PER_CONNECTION {
                        batch.push_str(&format!("client{c}-conn{n}-line{k}\n"));
                    }
                    // Written whole and closed: every line is floodwall's
                    // to deliver (a restart drains or spools it).
                    s.write_all(batch.as_bytes()).expect("send");
                    drop(s);
                    sent.extend(batch.lines().map(str::to_string));
                }
                sent
            })
        })
        .collect();

    let out = dir.path().join("out.log");
    let mut pid = None;
    for round in 0..=RESTARTS {
        pid = next_pid(&pid_file, pid);
        let p = pid.unwrap_or_else(|| {
            panic!(
                "floodwall round {round} did not start; log:\n{}",
                read(&dir.path().join("daemon.log"))
            )
        });
        let answer = support::metrics::get(metrics, "/metrics");
        assert!(
            answer.status == 200 && answer.body.contains("floodwall_messages_received_total"),
            "round {round}: /metrics on the passed socket: {answer:?}"
        );
        // Let this process deliver something before it is stopped.
        let len = read(&out).len();
        assert!(
            wait_until(Duration::from_secs(20), || read(&out).len() > len),
            "round {round} delivered nothing"
        );
        if round == RESTARTS {
            // The clients finish against this last process: once it exits
            // the loop ends and the socket closes.
            stop.store(true, Ordering::SeqCst);
            while let Some(c) = clients.pop() {
                sent.extend(c.join().unwrap());
            }
        }
        let ok = Command::new("kill")
            .args(["-TERM", &p.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {p}");
    }
    let status = activator.wait().unwrap();
    let log = read(&dir.path().join("daemon.log"));
    assert!(
        status.success(),
        "the last floodwall failed: {status}; log:\n{log}"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 0, "refused connections");
    assert_eq!(
        log.matches("shutdown drained=true lost=0").count(),
        RESTARTS + 1,
        "every round drains; log:\n{log}"
    );
    assert_eq!(
        log.matches("socket activation: server.listen is the passed socket")
            .count(),
        RESTARTS + 1,
        "every round uses the passed socket; log:\n{log}"
    );
    let got: HashSet<String> = read(&out).lines().map(str::to_string).collect();
    let missing: Vec<&String> = sent.iter().filter(|l| !got.contains(*l)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} lines lost, e.g. {:?}",
        missing.len(),
        sent.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(sent.len() > 1000, "too little sent: {}", sent.len());
}
