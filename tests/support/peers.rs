//! Real syslog peers for the interop tests: `scripts/peers.sh` starts
//! rsyslog or syslog-ng on a free loopback port with its own config, pid
//! file and work dir; [`Peer`] stops it when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::read;

/// Runs `scripts/peers.sh ARGS`: its stdout, or why it failed.
pub fn peers_sh(args: &[&str]) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "peers.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Fails (never skips) when `bin` (as `peers.sh peer-bin` names it) is
/// missing, saying how to install the peers.
pub fn require(bin: &str) {
    let path = peers_sh(&["peer-bin", bin]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        Path::new(&path).is_file(),
        "{bin} not found at {path}: run `bash scripts/install-peers.sh` (needs root) to install the test peers"
    );
}

/// A running peer; stopped (TERM, then KILL) when dropped.
pub struct Peer {
    pub port: u16,
    /// WORKDIR/<kind>-<port>: the peer's config, pid and logs.
    pub dir: PathBuf,
    pub pid: u32,
}

impl Peer {
    /// `peers.sh start-<kind> PORT args... WORKDIR extra...` on a free port,
    /// with a new port if the one picked was taken meanwhile.
    pub fn start(kind: &str, workdir: &Path, args: impl Fn(u16) -> Vec<String>) -> Peer {
        let mut last = String::new();
        for _ in 0..3 {
            let port: u16 = peers_sh(&["free-port"])
                .unwrap_or_else(|e| panic!("{e}"))
                .parse()
                .expect("free-port prints a port");
            match Peer::start_on(kind, workdir, port, &args(port)) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("could not start {kind}: {last}");
    }

    pub fn start_on(
        kind: &str,
        workdir: &Path,
        port: u16,
        args: &[String],
    ) -> Result<Peer, String> {
        let mut argv: Vec<&str> = vec![kind];
        argv.extend(args.iter().map(String::as_str));
        let pid = peers_sh(&argv)?;
        let pid = pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?;
        let dir_kind = kind.trim_start_matches("start-");
        Ok(Peer {
            port,
            dir: workdir.join(format!("{dir_kind}-{port}")),
            pid,
        })
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.pid);
    }

    pub fn internal_log(&self) -> String {
        String::from_utf8_lossy(&read(&self.dir.join("internal.log"))).into_owned()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A stopped peer cannot act on TERM.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid.to_string())
            .status();
        if let Err(e) = peers_sh(&["stop", &self.dir.display().to_string()]) {
            eprintln!("{e}");
        }
    }
}

// ---- helpers ------------------------------------------------------------

pub fn line_count(path: &Path) -> usize {
    read(path).iter().filter(|&&b| b == b'\n').count()
}

/// Letter-first payloads (rsyslog reads a leading digit as an octet
/// count), with a tab and spaces that must survive.
pub fn payloads(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag} message\t{i:06} end"))
        .collect()
}

pub fn tcp_sink_config(port: u16, framing: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nframing = \"lines\"\n\
         [sink]\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nframing = \"{framing}\"\nworkers = 1\n\
         connect_timeout = \"1s\"\n{extra}\n\
         [log]\nstats_interval = \"200ms\"\n"
    )
}
