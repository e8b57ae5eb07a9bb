//! Real syslog peers on both sides of floodwall: rsyslog, syslog-ng, and
//! both over TLS.

mod rsyslog;
mod syslogng;
mod tls;
