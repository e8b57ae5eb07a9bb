//! One spool record: a batch of messages framed for disk, and the checks
//! that tell a whole record from a torn or damaged one.
//!
//! Layout (little-endian):
//!
//! ```text
//! magic u32 | len u32 | count u32 | crc u32 | payload (len bytes)
//! payload = [peer] | count message ends (u32 each) | the messages, each followed by LF
//! crc     = CRC32C over len, count and payload
//! ```
//!
//! `peer` (19 bytes: 4 or 6, the address as 16 bytes, an IPv4 one
//! zero-padded, the port) is the client that sent the batch, for sinks
//! that name it (nats: `Floodwall-Peer`); it is there when the count
//! field's top bit is set, and the count is the lower 31 bits. Records
//! without it read as before.
//!
//! The magic lets recovery find the next record after damage (resync)
//! without trying every byte offset; the CRC covers the header fields too,
//! so a zero-filled tail (len 0, count 0, crc 0) never passes for a record.
//! A record with `count = 0` is a *skip* record: recovery writes one over
//! a damaged region so that the offsets of the records after it (and the
//! delivered position) stay valid; readers pass over it.
//!
//! This module owns the bytes only: no files, no offsets beyond a slice.

use std::net::{IpAddr, SocketAddr};

use crate::queue::Batch;

pub const MAGIC: u32 = 0xF10D_5EA1;
pub const HEADER: usize = 16;
/// In the count field: the payload starts with the peer.
const HAS_PEER: u32 = 1 << 31;
const PEER_BYTES: usize = 19;
/// Largest payload accepted when reading: bigger claims are damage.
/// (A batch is at most one read's worth of messages; 1 GiB is far above.)
pub const MAX_PAYLOAD: usize = 1 << 30;

/// What a look at the bytes at some offset found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole record: its message count and total length (header included).
    Record { count: u32, len: usize },
    /// Not a record (bad magic, implausible length, checksum mismatch).
    /// `count` is the message count its header claims if the header
    /// looked sane (for counting what damage cost), else `None`.
    Bad { claimed: Option<u32> },
    /// Fewer bytes than the header claims: a cut record, or nothing.
    Short { claimed: Option<u32> },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn checksum(len: u32, count: u32, payload: &[u8]) -> u32 {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&count.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// The message count and the peer's bytes of a count field.
fn split(field: u32) -> (u32, usize) {
    let peer = if field & HAS_PEER != 0 { PEER_BYTES } else { 0 };
    (field & !HAS_PEER, peer)
}

fn encode_peer(peer: SocketAddr, out: &mut Vec<u8>) {
    match peer.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(&[0; 12]);
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&peer.port().to_le_bytes());
}

fn decode_peer(b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_le_bytes([*b.get(17)?, *b.get(18)?]);
    let ip = match b[0] {
        4 => IpAddr::from(<[u8; 4]>::try_from(b.get(1..5)?).ok()?),
        6 => IpAddr::from(<[u8; 16]>::try_from(b.get(1..17)?).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Appends `batch` as one record to `out` (cleared first). `out` is the
/// writer's reusable buffer: no allocation per batch once it has grown.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    let ends = batch.ends();
    let data = batch.as_lines();
    let peer = batch.peer();
    let len = peer.map_or(0, |_| PEER_BYTES) + ends.len() * 4 + data.len();
    let count = ends.len() as u32 | peer.map_or(0, |_| HAS_PEER);
    out.reserve(HEADER + len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    if let Some(peer) = peer {
        encode_peer(peer, out);
    }
    for e in ends {
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(data);
    let crc = checksum(len as u32, count, &out[HEADER..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// A skip record exactly `total` bytes long (>= HEADER) whose payload is
/// `garbage` (the damaged bytes it covers, kept for forensics).
pub fn encode_skip(garbage: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + garbage.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&checksum(garbage.len() as u32, 0, garbage).to_le_bytes());
    out.extend_from_slice(garbage);
    out
}

/// Looks at the record starting at `bytes[0]`.
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER {
        let claimed =
            (bytes.len() >= 12 && u32_at(bytes, 0) == MAGIC).then(|| split(u32_at(bytes, 8)).0);
        return Parsed::Short { claimed };
    }
    if u32_at(bytes, 0) != MAGIC {
        return Parsed::Bad { claimed: None };
    }
    let len = u32_at(bytes, 4) as usize;
    let field = u32_at(bytes, 8);
    let (count, peer) = split(field);
    // Each message needs its end (4 bytes) and its LF: a count that cannot
    // fit in len is damage, and then the count is not believed either.
    let sane = len <= MAX_PAYLOAD && (count as usize) * 5 + peer <= len;
    if !sane {
        return Parsed::Bad { claimed: None };
    }
    if bytes.len() < HEADER + len {
        return Parsed::Short {
            claimed: Some(count),
        };
    }
    let payload = &bytes[HEADER..HEADER + len];
    if checksum(len as u32, field, payload) != u32_at(bytes, 12) {
        return Parsed::Bad {
            claimed: Some(count),
        };
    }
    Parsed::Record {
        count,
        len: HEADER + len,
    }
}

/// Rebuilds the batch of a whole record (one that [`parse`] accepted).
/// `None` if the payload does not hold the messages it claims (only a
/// writer bug could do that: the checksum already matched).
pub fn decode(record: &[u8]) -> Option<Batch> {
    let (count, peer) = split(u32_at(record, 8));
    let count = count as usize;
    if count == 0 {
        return Some(Batch::new());
    }
    let payload = record.get(HEADER..)?;
    let from = match peer {
        0 => None,
        n => Some(decode_peer(payload.get(..n)?)?),
    };
    let payload = &payload[peer..];
    let data = payload.get(count * 4..)?;
    let ends: Vec<u32> = payload[..count * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut batch = Batch::from_parts(data.to_vec(), ends)?;
    batch.set_peer(from);
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(msgs: &[&[u8]]) -> Batch {
        let mut b = Batch::new();
        for m in msgs {
            b.push(m);
        }
        b
    }

    /// Encodes `b`, checks the record parses whole with its count, and
    /// returns the record and what it decodes to.
    fn round_trip(b: &Batch) -> (Vec<u8>, Batch) {
        let mut out = Vec::new();
        encode(b, &mut out);
        assert_eq!(
            parse(&out),
            Parsed::Record {
                count: b.len() as u32,
                len: out.len()
            }
        );
        let back = decode(&out).expect("a whole record decodes");
        (out, back)
    }

    #[test]
    fn a_record_round_trips_its_batch() {
        let b = batch(&[b"hello", b"", b"with\nnewline inside", b"x"]);
        let (_, back) = round_trip(&b);
        assert_eq!(back, b);
    }

    #[test]
    fn a_record_keeps_the_client_that_sent_it() {
        for peer in [
            "127.0.0.9:40000",
            "[2001:db8::1]:6514",
            "[::ffff:10.0.0.1]:1",
        ] {
            let mut b = batch(&[b"hello", b"world"]);
            b.set_peer(Some(peer.parse().unwrap()));
            let (out, back) = round_trip(&b);
            assert_eq!(back.peer().map(|p| p.to_string()).as_deref(), Some(peer));
            assert_eq!(back, b);
            // Cut short, the count it claims is the messages', not the flag's.
            assert_eq!(
                parse(&out[..HEADER + 1]),
                Parsed::Short { claimed: Some(2) }
            );
        }
    }

    #[test]
    fn every_cut_of_a_record_is_short_never_a_record() {
        let mut out = Vec::new();
        encode(&batch(&[b"abc", b"defgh"]), &mut out);
        for cut in 0..out.len() {
            assert!(
                matches!(parse(&out[..cut]), Parsed::Short { .. }),
                "cut at {cut}: {:?}",
                parse(&out[..cut])
            );
        }
        // Cut after the header: the count is known.
        assert_eq!(
            parse(&out[..HEADER + 1]),
            Parsed::Short { claimed: Some(2) }
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut with_peer = batch(&[b"abc", b"defgh"]);
        with_peer.set_peer(Some("127.0.0.1:9".parse().unwrap()));
        for b in [batch(&[b"abc", b"defgh"]), with_peer] {
            let mut out = Vec::new();
            encode(&b, &mut out);
            for at in 0..out.len() {
                for bit in [0x40, 0x80] {
                    let mut bad = out.clone();
                    bad[at] ^= bit;
                    assert!(
                        !matches!(parse(&bad), Parsed::Record { .. }),
                        "flip {bit:#x} at {at} passed"
                    );
                }
            }
        }
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert_eq!(parse(&[0u8; 64]), Parsed::Bad { claimed: None });
    }

    #[test]
    fn a_skip_record_is_a_valid_record_of_no_messages() {
        let skip = encode_skip(b"garbage bytes");
        assert_eq!(
            parse(&skip),
            Parsed::Record {
                count: 0,
                len: skip.len()
            }
        );
        assert_eq!(decode(&skip).map(|b| b.len()), Some(0));
    }
}
