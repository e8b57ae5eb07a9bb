//! floodwall with the real Prometheus tools (Debian's prometheus 2.42,
//! installed by scripts/install-peers.sh): the shipped alert rules pass
//! `promtool test rules` (each alert made to fire and not to fire), the
//! shipped scrape config passes `promtool check config`, and a real
//! `prometheus` server scraping floodwall while clients send ends up with
//! the counters the stats line shows.

use crate::support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::metrics::{get, metrics_addr, require};
use crate::support::{num, wait_until};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    require("promtool");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(examples())
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shipped_alert_rules_fire_and_stay_quiet_under_promtool_test_rules() {
    let (ok, out) = promtool(&["check", "config", "prometheus.yml"]);
    assert!(ok, "promtool check config:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert of the issue is there and has a test that makes it
    // fire (its name in an exp_labels block is not needed: the alertname
    // line is) and one that keeps it quiet (exp_alerts: []).
    let rules = std::fs::read_to_string(examples().join("alerts.yml")).expect("alerts.yml");
    let tests = std::fs::read_to_string(examples().join("alerts_test.yml")).expect("tests");
    for alert in [
        "FloodwallDropping",
        "FloodwallAcceptPaused",
        "FloodwallSinkDown",
        "FloodwallQueueNearlyFull",
        "FloodwallDown",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no case where it stays quiet"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no case where it fires"
        );
    }
}

/// A prometheus server on loopback with its own storage dir. It cannot
/// take port 0, so a free port is found by binding port 0 and releasing
/// it; if another process takes it first, the start is retried.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        require("prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: floodwall\n    static_configs:\n\
                 \x20     - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        for attempt in 0..5 {
            let addr = crate::support::free_port();
            let log = std::fs::File::create(dir.path().join(format!("log{attempt}")))
                .expect("prometheus log");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let ready = wait_until(Duration::from_secs(30), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || support::metrics::http_raw(
                        addr,
                        &support::metrics::request("GET", "/-/ready"),
                    )
                    .is_ok_and(|a| a.status == 200)
            });
            if ready && matches!(child.try_wait(), Ok(None)) {
                return Prometheus {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(dir.path().join(format!("log{attempt}")))
                .unwrap_or_default();
            assert!(
                text.contains("address already in use"),
                "prometheus did not start:\n{text}"
            );
        }
        panic!("prometheus: no free port in 5 attempts");
    }

    /// The value of an instant query with one result, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let a =
            support::metrics::http_raw(self.addr, &support::metrics::request("GET", &path)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&a.body).ok()?;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a PromQL query for a URL's query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_counters_the_stats_line_shows() {
    let mut d = Conf::new()
        .set("server.max_message_bytes", 64)
        .set("metrics.listen", "127.0.0.1:0")
        .sink("null")
        .start();
    let m = metrics_addr(&d);
    let prom = Prometheus::start(m);
    let received = "floodwall_messages_received_total";
    let oversize = "floodwall_messages_dropped_total{reason=\"oversize\"}";
    // Scraping before the clients start.
    assert!(
        wait_until(Duration::from_secs(30), || prom.query(received)
            == Some(0.0)),
        "prometheus never scraped floodwall"
    );

    // Clients send for about 2 s (10 scrape intervals): 20 rounds of 100
    // messages and 5 oversize ones, from two connections at a time.
    let target = d.addr;
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            thread::spawn(move || {
                for round in 0..20 {
                    let mut s = std::net::TcpStream::connect(target).expect("connect");
                    let mut data = Vec::new();
                    for i in 0..50 {
                        data.extend_from_slice(format!("c{c} r{round} m{i}\n").as_bytes());
                    }
                    for _ in 0..5 {
                        data.extend(std::iter::repeat_n(b'x', 100));
                        data.push(b'\n');
                    }
                    s.write_all(&data).expect("send");
                    drop(s);
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    eprintln!("clients sent for {:?}", started.elapsed());

    // At rest: two stats lines agree; Prometheus catches up within a
    // scrape or two (200 ms each; 10 s allows for a loaded machine).
    let stats = d
        .wait_stats(Duration::from_secs(10), |s| {
            num(s, "received") == 2 * 20 * 55 && num(s, "conns_active") == 0
        })
        .unwrap_or_else(|| panic!("not all received; log:\n{}", d.log_text()));
    let want_received = num(&stats, "received") as f64;
    let want_oversize = num(&stats, "dropped_oversize") as f64;
    assert_eq!(want_oversize, 200.0);
    assert!(
        wait_until(Duration::from_secs(10), || {
            prom.query(received) == Some(want_received)
                && prom.query(oversize) == Some(want_oversize)
        }),
        "prometheus has received={:?} oversize={:?}, the stats line {want_received} {want_oversize}",
        prom.query(received),
        prom.query(oversize)
    );
    assert_eq!(
        prom.query("floodwall_messages_delivered_total"),
        Some(num(&stats, "delivered") as f64)
    );
    // It scraped while the clients were sending: the counter moved
    // between scrapes more than once.
    let changes = prom
        .query(&format!("changes({received}[1m])"))
        .unwrap_or(0.0);
    assert!(changes >= 2.0, "{changes} changes seen by prometheus");
    assert_eq!(prom.query("up{job=\"floodwall\"}"), Some(1.0));
    assert_eq!(get(m, "/healthz").status, 200);
    assert!(d.stop(Duration::from_secs(10)).success());
}
