//! The network sinks against their downstreams: tcp (in-test collector),
//! NATS JetStream (one server and a cluster), RELP (rsyslog imrelp).

mod nats;
mod nats_cluster;
mod relp;
mod tcp;
