//! The start-up check of the process limits: with RLIMIT_NOFILE (the
//! unit's LimitNOFILE=) below what `limits.max_connections` needs, the
//! daemon names the limit, its value and the need in a warning, and
//! still starts.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn a_low_open_files_limit_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodwall.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_connections = 1024\n[sink]\ntype = \"null\"\n",
    )
    .unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 300 && exec \"$0\" --config \"$1\"")
        .arg(support::bin())
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut warning = None;
    // The check runs before the listening line: read up to it.
    for line in stderr.lines().take(50) {
        let Ok(line) = line else { break };
        if line.contains("LimitNOFILE") {
            warning = Some(line.clone());
        }
        if line.contains("listening addr=") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.expect("no LimitNOFILE warning at start");
    assert!(
        warning.contains("WARN")
            && warning.contains("is 300")
            && warning.contains("1088")
            && warning.contains("limits.max_connections = 1024"),
        "{warning}"
    );
}
