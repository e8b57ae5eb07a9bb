//! Addresses in the config file: "host:port" resolved (at validation,
//! once: a reconnect later never waits on DNS, whose lookups have no
//! timeout), the host part of one, and networks ("10.0.0.0/8", "::1/128",
//! or a bare address as its own one-address network) for
//! `server.allow` and `server.trusted_proxies`: one parser for both.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

use super::{ConfigError, invalid};

/// "10.0.0.0/8", "::1/128", or a bare address as its own network.
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Every entry of `list` parsed with [`parse_net`]; the first that is
/// not a network is the error, naming `key`, the entry and `allowed`.
pub fn parse_nets(
    key: &'static str,
    list: &[String],
    allowed: &str,
) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|text| {
            parse_net(text)
                .ok_or_else(|| invalid(key, format!("{text:?} is not a CIDR; allowed: {allowed}")))
        })
        .collect()
}

/// The host part of "host:port" ("[::1]:6000" gives "::1").
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// "host:port" resolved: every address it names, at least one.
pub fn resolve_all(key: &'static str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let bad = |why: String| {
        invalid(
            key,
            format!("{value:?} {why}; allowed: \"host:port\" such as \"127.0.0.1:5140\""),
        )
    };
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| bad(format!("is not a usable address ({e})")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("resolves to no address".to_string()));
    }
    Ok(addrs)
}

/// "host:port" resolved to its first address ("localhost:5140" is
/// accepted).
pub fn resolve(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    Ok(resolve_all(key, value)?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_is_its_own_network() {
        assert_eq!(parse_net("10.1.2.3"), "10.1.2.3/32".parse().ok());
        assert_eq!(parse_net("::1/128"), "::1/128".parse().ok());
        assert_eq!(parse_net("10.0.0.0/33"), None);
        let e = parse_nets("server.allow", &["x".to_string()], "a CIDR").unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.allow: \"x\" is not a CIDR; allowed: a CIDR"
        );
    }

    #[test]
    fn host_of_strips_the_port_and_brackets() {
        assert_eq!(host_of("[::1]:6000"), "::1");
        assert_eq!(host_of("localhost:6000"), "localhost");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
