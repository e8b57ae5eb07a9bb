//! The PROXY protocol (HAProxy's `send-proxy` v1 and `send-proxy-v2`):
//! behind a TCP balancer every connection comes from the balancer, and the
//! header it sends first names the real client. This module owns the
//! header: a pure parser ([`parse`], no sockets, unit-tested on bytes) and
//! [`read_header`], which reads exactly the header's bytes from a socket
//! (never a byte of the message stream after it) within one deadline.
//!
//! It does not decide who may send a header (the accept loop checks
//! `trusted_proxies`), nor what the named client may do (allow list and
//! per-IP cap, applied by the worker to the address returned here).
//!
//! Reading exactly the header, without buffering past it: the parser says
//! how many more bytes are certainly header ([`Need`]). A v2 header says
//! its length in its first 16 bytes; a v1 header is one line of at most
//! 107 bytes, so the reader peeks for its LF and consumes up to it. Every
//! read first waits (poll) for new bytes or the shutdown wake-up, and all
//! waits share one deadline, so a header that trickles in is bounded like
//! a handshake and a shutdown does not wait for it.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Instant;

use crate::wake::{Ready, Wake};

/// v2 headers start with these 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;
/// Bytes every header has at least ("PROXY UNKNOWN\r\n" is 15): safe to
/// read before knowing the version.
const PREFIX: usize = 8;
/// Larger v2 headers (TLVs) are refused: HAProxy's plain send-proxy-v2 is
/// 28 (IPv4) or 52 (IPv6) bytes.
const V2_MAX: usize = 16 + 1024;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is relayed for `source`.
    Proxied { source: SocketAddr },
    /// v2 LOCAL or v1 UNKNOWN (a balancer's own health check): the proxy
    /// itself is the peer.
    Local,
}

/// What the parser needs before it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Exactly this many more bytes belong to the header.
    Bytes(usize),
    /// The rest of a v1 line: bytes up to and including the next LF.
    Line,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("no complete PROXY header within the deadline")]
    Timeout,
    #[error("connection closed before the PROXY header ended")]
    Eof,
    #[error("read error in the PROXY header: {0}")]
    Io(io::ErrorKind),
    #[error("shutting down")]
    Shutdown,
}

/// Parses the start of a connection. `Ok(Ok((header, len)))`: a complete
/// header of `len` bytes; `Ok(Err(need))`: not complete yet.
pub fn parse(buf: &[u8]) -> Result<Result<(Header, usize), Need>, ProxyError> {
    if buf.len() < PREFIX {
        return Ok(Err(Need::Bytes(PREFIX - buf.len())));
    }
    if buf.starts_with(&V2_SIGNATURE[..PREFIX]) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(ProxyError::Malformed("no PROXY signature"))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Result<(Header, usize), Need>, ProxyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Malformed("v1 line longer than 107 bytes"));
        }
        return Ok(Err(Need::Line));
    };
    let len = lf + 1;
    if len > V1_MAX || lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProxyError::Malformed(
            "v1 line not ended by CRLF within 107 bytes",
        ));
    }
    let line = std::str::from_utf8(&buf[..lf - 1])
        .map_err(|_| ProxyError::Malformed("v1 line is not text"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = fields.collect();
            let [src, _dst, sport, _dport] = fields[..] else {
                return Err(ProxyError::Malformed("v1 needs 4 address fields"));
            };
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(ProxyError::Malformed("v1 address does not match family"));
            }
            let port = parse_port(sport)?;
            Header::Proxied {
                source: SocketAddr::new(ip, port),
            }
        }
        _ => return Err(ProxyError::Malformed("v1 family not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Ok((header, len)))
}

/// A decimal port without sign or leading zeros (as the spec writes them).
fn parse_port(text: &str) -> Result<u16, ProxyError> {
    let ok = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse().ok())
        .flatten()
        .ok_or(ProxyError::Malformed("v1 port"))
}

fn parse_v2(buf: &[u8]) -> Result<Result<(Header, usize), Need>, ProxyError> {
    if buf.len() < 16 {
        return Ok(Err(Need::Bytes(16 - buf.len())));
    }
    if buf[..12] != V2_SIGNATURE {
        return Err(ProxyError::Malformed("v2 signature"));
    }
    let version_command = buf[12];
    let family = buf[13];
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    if len > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Err(Need::Bytes(len - buf.len())));
    }
    let body = &buf[16..len];
    let header = match version_command & 0x0f {
        0x0 => Header::Local,
        0x1 => match family {
            // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
            0x11 => {
                let b = body
                    .get(..12)
                    .ok_or(ProxyError::Malformed("v2 IPv4 addresses truncated"))?;
                let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let port = u16::from_be_bytes([b[8], b[9]]);
                Header::Proxied {
                    source: SocketAddr::new(ip.into(), port),
                }
            }
            // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
            0x21 => {
                let b = body
                    .get(..36)
                    .ok_or(ProxyError::Malformed("v2 IPv6 addresses truncated"))?;
                let mut src = [0u8; 16];
                src.copy_from_slice(&b[..16]);
                let port = u16::from_be_bytes([b[32], b[33]]);
                Header::Proxied {
                    source: SocketAddr::new(Ipv6Addr::from(src).into(), port),
                }
            }
            // UNSPEC or a unix socket: no client address to believe; the
            // spec says to use the connection's own.
            0x00 | 0x31 => Header::Local,
            _ => return Err(ProxyError::Malformed("v2 family not TCP")),
        },
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Ok((header, len)))
}

/// Reads the header from `stream` within `deadline`, consuming exactly its
/// bytes; gives up when `wake` fires (shutdown).
pub fn read_header(
    stream: &TcpStream,
    deadline: Instant,
    wake: &Wake,
) -> Result<Header, ProxyError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let need = match parse(&buf)? {
            Ok((header, _)) => return Ok(header),
            Err(need) => need,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProxyError::Timeout);
        }
        match wake.wait(stream, Some(left), true) {
            Ok(Ready::Socket) => {}
            Ok(Ready::TimedOut) => return Err(ProxyError::Timeout),
            Ok(Ready::Woken) => return Err(ProxyError::Shutdown),
            Err(e) => return Err(ProxyError::Io(e.kind())),
        }
        let result = match need {
            Need::Bytes(n) => read_some(stream, &mut buf, n),
            Need::Line => read_line_part(stream, &mut buf),
        };
        match result {
            Ok(0) => return Err(ProxyError::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ProxyError::Timeout);
            }
            Err(e) => return Err(ProxyError::Io(e.kind())),
        }
    }
}

/// Reads at most `n` bytes (all header) onto `buf`.
fn read_some(mut stream: &TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + n, 0);
    let got = stream.read(&mut buf[start..]);
    buf.truncate(start + *got.as_ref().unwrap_or(&0));
    got
}

/// Reads the bytes of a v1 line that have arrived, up to and including
/// its LF if it is among them: peek, then consume only header bytes.
fn read_line_part(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut peeked = [0u8; V1_MAX];
    let room = V1_MAX - buf.len().min(V1_MAX);
    let n = stream.peek(&mut peeked[..room.max(1)])?;
    let take = match peeked[..n].iter().position(|&b| b == b'\n') {
        Some(lf) => lf + 1,
        None => n,
    };
    read_some(stream, buf, take)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Header, usize) {
        parse(buf).expect("valid").expect("complete")
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nhello\n";
        assert_eq!(
            done(line),
            (
                Header::Proxied {
                    source: "192.0.2.7:56324".parse().unwrap()
                },
                45
            )
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 5140\r\n";
        let (h, _) = done(line);
        assert_eq!(
            h,
            Header::Proxied {
                source: "[2001:db8::1]:4000".parse().unwrap()
            }
        );
    }

    #[test]
    fn v1_unknown_is_the_proxy_itself() {
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        assert_eq!(
            done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0,
            Header::Local
        );
    }

    #[test]
    fn v1_incomplete_asks_for_the_line() {
        assert_eq!(parse(b"PRO").unwrap(), Err(Need::Bytes(5)));
        assert_eq!(parse(b"PROXY TCP4 1.2").unwrap(), Err(Need::Line));
    }

    #[test]
    fn bad_v1_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".to_vec(), vec![b'x'; 200]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6() {
        let h = v2(1, 0x11, &[10, 0, 0, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x14, 0x14]);
        assert_eq!(
            done(&h),
            (
                Header::Proxied {
                    source: "10.0.0.9:8080".parse().unwrap()
                },
                28
            )
        );
        let mut body = vec![0u8; 36];
        body[15] = 1; // ::1
        body[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let (h, len) = done(&v2(1, 0x21, &body));
        assert_eq!(
            h,
            Header::Proxied {
                source: "[::1]:4000".parse().unwrap()
            }
        );
        assert_eq!(len, 52);
    }

    #[test]
    fn v2_local_and_unspec_are_the_proxy_itself() {
        assert_eq!(done(&v2(0, 0x00, &[])), (Header::Local, 16));
        assert_eq!(done(&v2(1, 0x00, &[])).0, Header::Local);
    }

    #[test]
    fn v2_says_how_much_more_it_needs() {
        let h = v2(1, 0x11, &[10, 0, 0, 9, 10, 0, 0, 1, 0, 1, 0, 2]);
        assert_eq!(parse(&h[..10]).unwrap(), Err(Need::Bytes(6)));
        assert_eq!(parse(&h[..20]).unwrap(), Err(Need::Bytes(8)));
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x11; // version 1 in a v2 header
        assert!(parse(&h).is_err());
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err()); // command 2
        assert!(parse(&v2(1, 0x11, &[0; 4])).is_err()); // truncated
        assert!(parse(&v2(1, 0x12, &[0; 12])).is_err()); // UDP
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse(&huge).is_err());
    }
}
