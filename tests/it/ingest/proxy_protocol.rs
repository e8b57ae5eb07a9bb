//! PROXY protocol on the listener: behind HAProxy (`send-proxy` v1 and
//! `send-proxy-v2`) the client HAProxy relays, not HAProxy, is the peer:
//! in the logs and in the nats `Floodwall-Peer` header. Hostile headers
//! (garbage, a header that trickles, a source that is not a trusted
//! proxy) are closed and counted `closed_proxy`, and deliver nothing.

use crate::support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::config::Conf;
use crate::support::free_port;
use crate::support::haproxy::{Haproxy, connect_from};
use crate::support::nats::{NatsServer, read_stream};
use crate::support::{Daemon, num, read, wait_until};

const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];

fn file_config() -> Conf {
    Conf::new()
        .set("server.proxy_protocol", true)
        .set("server.trusted_proxies", ["127.0.0.1/32"])
        .set("sink.flush_interval", "50ms")
        .set("log.level", "debug")
}

/// Waits until the connection is closed by floodwall (read returns 0 or
/// an error); returns how long that took.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) if start.elapsed() < timeout => start.elapsed(),
        other => panic!("connection not closed within {timeout:?}: {other:?}"),
    }
}

fn out(d: &Daemon) -> String {
    String::from_utf8_lossy(&read(&d.path("out.log"))).into_owned()
}

#[test]
fn haproxy_v1_and_v2_name_the_real_client_in_the_peer_header() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path(), "proxy");
    let urls = vec![nats.url()];
    let mut daemon = Conf::new()
        .set("server.proxy_protocol", true)
        .set("server.trusted_proxies", ["127.0.0.1"])
        .sink("nats")
        .set("sink.servers", [urls[0].as_str()])
        .set("sink.subject", "logs.proxy")
        .set("sink.stream", "PROXIED")
        .set("log.level", "debug")
        .start();
    let (v1, v2) = (free_port().port(), free_port().port());
    let v1_addr: SocketAddr = ([127, 0, 0, 1], v1).into();
    let v2_addr: SocketAddr = ([127, 0, 0, 1], v2).into();
    let _haproxy = Haproxy::start(
        dir.path(),
        &format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend fw1\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend fw2\n\
             backend fw1\n  server a {fw} send-proxy\n\
             backend fw2\n  server a {fw} send-proxy-v2\n",
            fw = daemon.addr
        ),
        &[v1_addr, v2_addr],
    );
    let mut peers = Vec::new();
    for (name, addr) in [("v1", v1_addr), ("v2", v2_addr)] {
        let mut s = connect_from(IpAddr::from(CLIENT_IP), addr);
        peers.push(s.local_addr().unwrap());
        writeln!(s, "via {name}").unwrap();
        drop(s);
    }
    // The readiness probes of Haproxy::start also reached floodwall
    // (headers without messages); two messages in all.
    let s = daemon
        .wait_stats(Duration::from_secs(20), |s| num(s, "delivered") == 2)
        .unwrap_or_else(|| panic!("not delivered; log:\n{}", daemon.log_text()));
    assert_eq!(num(&s, "closed_proxy"), 0);
    for peer in &peers {
        let line = format!("peer={peer}");
        assert!(
            daemon
                .wait_log(Duration::from_secs(5), |l| l.contains("conn proxied")
                    && l.contains(&line))
                .is_some(),
            "no proxied line for {peer}; log:\n{}",
            daemon.log_text()
        );
    }
    assert!(daemon.stop(Duration::from_secs(20)).success());
    let mut stored = read_stream(&urls, "PROXIED");
    stored.sort_by(|a, b| a.payload.cmp(&b.payload));
    assert_eq!(stored.len(), 2);
    for (m, (text, peer)) in stored
        .iter()
        .zip([("via v1", peers[0]), ("via v2", peers[1])])
    {
        assert_eq!(m.payload, text.as_bytes());
        assert_eq!(
            m.peer.as_deref(),
            Some(peer.to_string().as_str()),
            "Floodwall-Peer of {text}"
        );
    }
}

#[test]
fn raw_v1_and_v2_local_headers_are_read_exactly() {
    let mut daemon = file_config().start();
    // v1 naming a client, then messages in the same write.
    let mut s = TcpStream::connect(daemon.addr).unwrap();
    s.write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4444 5140\r\nfirst\nsecond\n")
        .unwrap();
    drop(s);
    // v2 LOCAL (a health check): the proxy itself is the peer.
    let mut s = TcpStream::connect(daemon.addr).unwrap();
    let local = s.local_addr().unwrap();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    v2.extend_from_slice(b"third\n");
    s.write_all(&v2).unwrap();
    drop(s);
    let got = wait_until(Duration::from_secs(10), || {
        out(&daemon).lines().count() == 3
    });
    assert!(
        got,
        "3 lines expected, got {:?}; log:\n{}",
        out(&daemon),
        daemon.log_text()
    );
    assert!(daemon.stop(Duration::from_secs(20)).success());
    let text = out(&daemon);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["first", "second", "third"]);
    let log = daemon.log_text();
    assert!(log.contains("peer=10.1.2.3:4444"), "{log}");
    assert!(log.contains(&format!("peer={local} reason=eof")), "{log}");
    assert_eq!(num(&daemon.final_stats(), "closed_proxy"), 0);
}

#[test]
fn hostile_headers_are_closed_and_counted() {
    let mut daemon = file_config().start();
    // Garbage instead of a header: closed at once, nothing delivered.
    let mut garbage = TcpStream::connect(daemon.addr).unwrap();
    garbage.write_all(b"hello world\nmore\n").unwrap();
    // 5 s is the header deadline; closing must take far less.
    assert!(closed_within(&mut garbage, Duration::from_secs(4)) < Duration::from_secs(4));

    // A source that is not a trusted proxy: closed at accept.
    let mut untrusted = connect_from(IpAddr::from(CLIENT_IP), daemon.addr);
    let _ = untrusted.write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nsneaky\n");
    closed_within(&mut untrusted, Duration::from_secs(4));

    // A header that trickles one byte per 200 ms never completes in the
    // 5 s deadline: closed after it (not before 4.5 s; by 15 s on a
    // loaded machine).
    let mut trickle = TcpStream::connect(daemon.addr).unwrap();
    let start = Instant::now();
    let writer = {
        let mut w = trickle.try_clone().unwrap();
        thread::spawn(move || {
            for b in b"PROXY TCP4 10.9.9.9 10.0.0.2 1111 2\r\nlate\n"
                .iter()
                .cycle()
                .take(100)
            {
                if w.write_all(&[*b]).is_err() {
                    break;
                }
                // Pacing the trickle is the point of this client.
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    closed_within(&mut trickle, Duration::from_secs(15));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(4500),
        "closed too early: {took:?}"
    );
    let _ = writer.join();

    let s = daemon
        .wait_stats(Duration::from_secs(10), |s| num(s, "closed_proxy") == 3)
        .unwrap_or_else(|| panic!("closed_proxy != 3; log:\n{}", daemon.log_text()));
    assert_eq!(num(&s, "received"), 0);
    assert!(daemon.stop(Duration::from_secs(20)).success());
    assert_eq!(out(&daemon), "");
    let log = daemon.log_text();
    assert!(log.contains("not a trusted proxy"), "{log}");
    assert!(log.contains("bad header"), "{log}");
}

#[test]
fn allow_and_the_per_ip_cap_apply_to_the_client_a_header_names() {
    // The proxy (127.0.0.1) is trusted and not in `allow`: only the
    // clients its headers name are checked.
    let mut d = Conf::new()
        .set("server.framing", "lines")
        .set("server.proxy_protocol", true)
        .set("server.trusted_proxies", ["127.0.0.1/32"])
        .set("server.allow", ["10.1.0.0/16"])
        .set("server.max_connections_per_ip", 1)
        .set("sink.flush_interval", "20ms")
        .set("log.stats_interval", "50ms")
        .start();
    let wait = Duration::from_secs(20);
    // Allowed, and it holds its IP's only slot while connected.
    let mut first = TcpStream::connect(d.addr).expect("connect");
    first
        .write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4444 5140\r\nallowed\n")
        .expect("send");
    assert!(support::wait_file_contains(
        &d.path("out.log"),
        b"allowed\n",
        wait
    ));
    // Not in allow: closed after its header, nothing delivered.
    let mut denied = TcpStream::connect(d.addr).expect("connect");
    let _ = denied.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 5140\r\ndenied\n");
    closed_within(&mut denied, wait);
    // Same client IP as `first`: over the cap of 1.
    let mut second = TcpStream::connect(d.addr).expect("connect");
    let _ = second.write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4445 5140\r\nover the cap\n");
    closed_within(&mut second, wait);
    // Once `first` is gone its slot is free again.
    drop(first);
    assert!(
        d.wait_stats(wait, |s| num(s, "workers") == 0).is_some(),
        "the first worker did not end"
    );
    let mut again = TcpStream::connect(d.addr).expect("connect");
    again
        .write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4446 5140\r\nagain\n")
        .expect("send");
    drop(again);
    assert!(support::wait_file_contains(
        &d.path("out.log"),
        b"again\n",
        wait
    ));
    let status = d.stop(wait);
    assert!(status.success(), "log:\n{}", d.log_text());
    let s = d.final_stats();
    support::assert_balanced(&s);
    assert_eq!(num(&s, "conns_denied"), 1, "{s:?}");
    assert_eq!(num(&s, "conns_over_ip_limit"), 1, "{s:?}");
    assert_eq!(num(&s, "closed_proxy"), 0, "{s:?}");
    assert_eq!(out(&d), "allowed\nagain\n");
}
