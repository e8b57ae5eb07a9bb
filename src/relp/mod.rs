//! RELP, the Reliable Event Logging Protocol of rsyslog's librelp
//! (imrelp/omrelp): every message carries a transaction number and the
//! receiver answers each one with `rsp`, so a sender knows what arrived
//! and resends the rest after a reconnect.
//!
//! [`codec`] is the wire format alone (frames, `rsp` data, `open`
//! offers), shared by the listener here and the RELP sink. It owns no
//! socket and no policy: when to acknowledge is the session's business.
//! [`session`] serves one client on the `[relp]` listener; [`ack`] is how
//! it learns that a batch it queued is durable (docs/relp.md).
//!
//! [`tune_listener`] gives the RELP listener an Ethernet-sized MSS.
//! librelp's client (rsyslog's omrelp) corks its socket (TCP_CORK) for
//! the length of a transaction and, once its window is full, waits for
//! answers to frames its own kernel still holds under the cork: a cork
//! releases only full segments, else after a 200 ms ceiling. On loopback
//! (MSS ~64 KiB) a whole window of 128 short frames is less than one
//! segment, so every window waited 200 ms (omrelp moved ~1.2k msg/s into
//! floodwall and into rsyslog's imrelp alike). With segments of at most
//! [`MSS`] bytes the cork holds back less than one segment, never the
//! whole window, and the answers keep the window moving (docs/relp.md).

use log::warn;
use socket2::Socket;

pub mod ack;
pub mod codec;
pub mod session;

/// The largest segment a RELP client may send us: Ethernet's (1500 - 40),
/// what a client across a LAN gets anyway.
pub const MSS: u32 = 1460;

/// Readies a RELP listening socket (bound here or passed by the service
/// manager) before its first client: it announces [`MSS`] to every client
/// it accepts, so that a corked client never holds a whole window back.
/// A socket that refuses (a passed one of another kind) keeps its own
/// segment size: slower with omrelp on loopback, not wrong, so a warning.
pub fn tune_listener(socket: &Socket) {
    if let Err(e) = socket.set_tcp_mss(MSS) {
        warn!(
            "relp: cannot set the listener's MSS to {MSS}, omrelp on loopback may wait 200 ms per window error=\"{e}\""
        );
    }
}
