//! A real HAProxy (Debian's 2.6) in the foreground with its own config,
//! for the PROXY protocol and fleet tests; and clients that connect from
//! a chosen loopback address (all of 127.0.0.0/8 is on lo), so that the
//! client a balancer relays is told apart from the balancer itself.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// Fails (never skips) when haproxy is not installed.
pub fn require_haproxy() {
    assert!(
        Path::new(HAPROXY).is_file(),
        "{HAPROXY} not found: run `bash scripts/install-peers.sh` (needs root) to install the test peers"
    );
}

/// A TCP connection to `to` from source address `from` (any port).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind client source");
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    socket.into()
}

/// haproxy -db with `config`; killed when dropped.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Validates `config` (haproxy -c), starts it, and waits until every
    /// port in `listens` accepts.
    pub fn start(dir: &Path, config: &str, listens: &[SocketAddr]) -> Haproxy {
        require_haproxy();
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy config");
        let check = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c refused the config:\n{}\n{config}",
            String::from_utf8_lossy(&check.stdout)
        );
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy { child };
        for &addr in listens {
            // Starts in milliseconds; 20 s for a loaded machine.
            let up = wait_until(Duration::from_secs(20), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            assert!(up, "haproxy is not listening on {addr}");
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
