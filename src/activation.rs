//! Socket activation: listeners handed over by systemd (a `.socket`
//! unit) or `systemd-socket-activate`, instead of sockets floodwall binds.
//!
//! The protocol (sd_listen_fds(3)): the manager passes listening sockets
//! as file descriptors 3, 4, ... and sets `LISTEN_PID` (our pid),
//! `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (the `FileDescriptorName=`
//! of each, colon-separated). The sd-notify crate reads and checks the
//! variables; this module turns each descriptor into an owned [`Socket`]
//! and hands it out by name, once: [`take`]`("server")` for
//! `[server] listen`, `take("metrics")` for `[metrics] listen`,
//! `take("relp")` for `[relp] listen` (wired where that listener is
//! built). A lone descriptor without a name (`systemd-socket-activate`
//! without `--fdname`) is the server's.
//!
//! Why it matters: the socket belongs to the manager and outlives the
//! daemon, so during a restart or an upgrade new clients wait in its
//! backlog instead of being refused, and the next process accepts them.
//! A daemon on an activated listener therefore leaves the backlog alone at
//! shutdown (src/server.rs) rather than shrinking it and draining it
//! itself. Binding port 514 or 6514 is the manager's job then too: the
//! service needs no capability.
//!
//! The one place floodwall uses `unsafe`: owning a descriptor by its
//! number is unsafe by nature (nothing proves the number is ours). The
//! argument is in [`adopt`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use socket2::Socket;

/// The name a lone unnamed descriptor is given.
pub const SERVER: &str = "server";
pub const METRICS: &str = "metrics";
pub const RELP: &str = "relp";

/// What systemd-socket-activate and sd-notify report for a descriptor
/// without a `FileDescriptorName=`.
const UNNAMED: &str = "unknown";

/// The passed sockets not yet taken, by name.
fn passed() -> &'static Mutex<HashMap<String, Socket>> {
    static PASSED: OnceLock<Mutex<HashMap<String, Socket>>> = OnceLock::new();
    PASSED.get_or_init(|| Mutex::new(collect()))
}

/// Reads the environment once (at the first [`take`]) and owns every
/// descriptor it names. Errors in the variables mean no activation (they
/// are logged): binding as configured is the safe fallback.
fn collect() -> HashMap<String, Socket> {
    let fds: Vec<(RawFd, String)> = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds.collect(),
        Err(e) => {
            log::warn!("socket activation ignored: {e}");
            return HashMap::new();
        }
    };
    let lone = fds.len() == 1;
    let mut sockets = HashMap::new();
    for (fd, name) in fds {
        let name = if lone && name == UNNAMED {
            SERVER.to_string()
        } else {
            name
        };
        match adopt(fd) {
            Ok(socket) => {
                if sockets.insert(name.clone(), socket).is_some() {
                    log::warn!(
                        "socket activation: two descriptors named {name:?}, the later one is used"
                    );
                }
            }
            Err(e) => log::warn!("socket activation: fd {fd} ({name}) ignored: {e}"),
        }
    }
    sockets
}

/// Owns descriptor `fd` as a socket, after checking it is a listening
/// stream socket.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> io::Result<Socket> {
    // SAFETY: sd_notify::listen_fds returned `fd` only because LISTEN_PID
    // names this process and `fd` lies in 3..3+LISTEN_FDS: the manager
    // opened it for us and nothing in this process opened or owns it
    // (std and our dependencies open their files after main starts, at
    // descriptors the kernel picks, never these inherited ones, which are
    // not closed either). `collect` runs once (OnceLock) and adopts each
    // number once, so there is exactly one owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(owned);
    if socket.r#type()? != socket2::Type::STREAM {
        return Err(io::Error::other("not a stream socket"));
    }
    if !socket.is_listener()? {
        return Err(io::Error::other("not listening"));
    }
    Ok(socket)
}

/// The passed listener named `name`, if any; each is handed out once.
pub fn take(name: &str) -> Option<Socket> {
    passed()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name)
}

/// Names of passed sockets nobody took (logged after start-up: a
/// `FileDescriptorName=` that matches no configured listener).
pub fn leftover() -> Vec<String> {
    let mut names: Vec<String> = passed()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}
