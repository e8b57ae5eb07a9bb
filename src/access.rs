//! Who may connect: the `server.allow` CIDR list and the live-connection
//! cap per source IP (`server.max_connections_per_ip`), both checked by the
//! accept loop before any thread or permit is given to a connection.
//!
//! It owns the per-IP live counts; an [`IpSlot`] holds one and gives it
//! back when dropped (with the worker's other resources), so no code path
//! can leak a count. It does not close sockets: the accept loop (or, for
//! the client a PROXY header names, the worker) does, with the
//! [`Refusal`] it gets here, which [`Access::refused`] counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::alerts::Throttle;
use crate::stats::Stats;

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not in `server.allow`.
    Denied,
    /// Its IP already has `max_connections_per_ip` live connections.
    OverIpLimit,
}

#[derive(Debug, Default)]
pub struct Access {
    allow: Vec<IpNet>,
    /// 0 = no cap.
    per_ip: usize,
    /// Live connections per source IP; shared with every [`IpSlot`].
    live: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// One warning per second per kind.
    pub denied_alert: Throttle,
    pub over_ip_limit_alert: Throttle,
}

impl Access {
    /// `allow`: `server.allow` as validation parsed it (empty: everyone);
    /// `per_ip`: `server.max_connections_per_ip` (0: no cap).
    pub fn new(allow: Vec<IpNet>, per_ip: usize) -> Access {
        Access {
            allow,
            per_ip,
            ..Access::default()
        }
    }

    /// Admits a connection from `ip` or says why not. With a cap, the
    /// slot holds its IP's count until dropped.
    pub fn admit(&self, ip: IpAddr) -> Result<Option<IpSlot>, Refusal> {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        if self.per_ip == 0 {
            return Ok(None);
        }
        let mut live = self.live.lock();
        let count = live.entry(ip).or_insert(0);
        if *count >= self.per_ip {
            return Err(Refusal::OverIpLimit);
        }
        *count += 1;
        Ok(Some(IpSlot {
            live: self.live.clone(),
            ip,
        }))
    }

    /// Counts a refused connection in its counter and says why, when its
    /// warning is due (throttled per kind): the suppressed count since the
    /// last one and the reason the warning gives.
    pub fn refused(&self, refusal: Refusal, stats: &Stats) -> Option<(u64, &'static str)> {
        let (counter, alert, why) = match refusal {
            Refusal::Denied => (
                &stats.conns_denied,
                &self.denied_alert,
                "source not in server.allow",
            ),
            Refusal::OverIpLimit => (
                &stats.conns_over_ip_limit,
                &self.over_ip_limit_alert,
                "over server.max_connections_per_ip",
            ),
        };
        Stats::add(counter, 1);
        alert.allow().map(|n| (n, why))
    }

    /// Live connections counted for `ip` (tests).
    pub fn live(&self, ip: IpAddr) -> usize {
        self.live
            .lock()
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

/// One live connection counted against its IP; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    live: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut live = self.live.lock();
        if let Some(count) = live.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn access(allow: &[&str], per_ip: usize) -> Access {
        let allow = allow.iter().map(|s| parse_net(s).unwrap()).collect();
        Access::new(allow, per_ip)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_lists_cidrs_of_both_families() {
        let a = access(&["127.0.0.2/31", "::1/128"], 0);
        assert!(a.admit(ip("127.0.0.2")).is_ok());
        assert!(a.admit(ip("127.0.0.3")).is_ok());
        assert_eq!(a.admit(ip("127.0.0.4")).unwrap_err(), Refusal::Denied);
        assert!(a.admit(ip("::1")).is_ok());
        assert!(a.admit(ip("::ffff:127.0.0.2")).is_ok());
        assert_eq!(a.admit(ip("::2")).unwrap_err(), Refusal::Denied);
        assert!(access(&[], 0).admit(ip("10.1.2.3")).is_ok());
    }

    #[test]
    fn per_ip_cap_counts_live_slots_and_releases_on_drop() {
        let a = access(&[], 2);
        let one = a.admit(ip("127.0.0.2")).unwrap();
        let two = a.admit(ip("127.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("127.0.0.2")).unwrap_err(), Refusal::OverIpLimit);
        assert!(a.admit(ip("127.0.0.3")).is_ok());
        drop(one);
        assert_eq!(a.live(ip("127.0.0.2")), 1);
        let _three = a.admit(ip("127.0.0.2")).unwrap();
        drop(two);
        assert_eq!(a.live(ip("127.0.0.2")), 1);
    }
}
