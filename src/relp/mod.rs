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

pub mod ack;
pub mod codec;
pub mod session;
