//! The payload every floodwall-load message carries, and its parser.
//!
//! A message is `fwl c=<conn> s=<seq> t=<unix_nanos> ` padded with `x` to
//! the requested size: the connection id and a per-connection sequence
//! number let a receiver find loss and reordering, and the send time (the
//! wall clock, so another process on the same machine can compare) gives
//! latency. `--size` counts the bytes one message takes as a line in a sink
//! file, LF included; octet-counted frames carry the same message without
//! the LF, behind `LEN SP`.
//!
//! Formatting appends to a caller's buffer and allocates nothing once that
//! buffer has grown to a batch: it runs once per message on the hot path.

use clap::ValueEnum;

/// Every message starts with this.
pub const PREFIX: &[u8] = b"fwl c=";

/// The longest header: prefix, a u32 connection id, two u64s, separators.
pub const MAX_HEADER: usize = PREFIX.len() + 10 + 3 + 20 + 3 + 20 + 1;

/// The smallest `--size` whose messages all reach exactly that size.
pub const MIN_SIZE: usize = MAX_HEADER + 1;

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Framing {
    /// `MSG LF`.
    Lines,
    /// RFC 6587 octet counting: `LEN SP MSG`.
    OctetCounted,
}

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sending connection, 0-based.
    pub conn: u32,
    /// Per-connection sequence number, from 0.
    pub seq: u64,
    /// Unix time in nanoseconds when the batch was formatted.
    pub nanos: u64,
}

/// Appends one framed message whose line form is `size` bytes (LF
/// included). `size` must be at least [`MIN_SIZE`] for the size to be
/// exact; a smaller one yields the bare header.
pub fn write_frame(out: &mut Vec<u8>, framing: Framing, stamp: Stamp, size: usize) {
    let body = size.saturating_sub(1);
    match framing {
        Framing::Lines => {
            write_message(out, stamp, body);
            out.push(b'\n');
        }
        Framing::OctetCounted => {
            push_u64(out, body.max(header_len(stamp)) as u64);
            out.push(b' ');
            write_message(out, stamp, body);
        }
    }
}

/// Bytes one frame takes on the wire.
pub fn frame_len(framing: Framing, size: usize) -> usize {
    match framing {
        Framing::Lines => size,
        Framing::OctetCounted => digits(size as u64 - 1) + 1 + size - 1,
    }
}

/// Appends the message (no terminator), `len` bytes or the bare header if
/// that is longer.
fn write_message(out: &mut Vec<u8>, stamp: Stamp, len: usize) {
    let start = out.len();
    out.extend_from_slice(PREFIX);
    push_u64(out, u64::from(stamp.conn));
    out.extend_from_slice(b" s=");
    push_u64(out, stamp.seq);
    out.extend_from_slice(b" t=");
    push_u64(out, stamp.nanos);
    out.push(b' ');
    let used = out.len() - start;
    out.resize(start + len.max(used), b'x');
}

fn header_len(stamp: Stamp) -> usize {
    PREFIX.len()
        + digits(u64::from(stamp.conn))
        + 3
        + digits(stamp.seq)
        + 3
        + digits(stamp.nanos)
        + 1
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Decimal digits without going through `fmt` (which is slower and would
/// need a `Write` adapter).
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Finds and parses the header in a line (anything may precede it, e.g.
/// a syslog header a peer added). None if the line carries none.
pub fn parse(line: &[u8]) -> Option<Stamp> {
    let at = memchr::memmem::find(line, PREFIX)?;
    let rest = &line[at + PREFIX.len()..];
    let (conn, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(b" s=")?;
    let (seq, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(b" t=")?;
    let (nanos, rest) = take_u64(rest)?;
    if !(rest.is_empty() || rest[0] == b' ') {
        return None;
    }
    Some(Stamp {
        conn: u32::try_from(conn).ok()?,
        seq,
        nanos,
    })
}

fn take_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &s[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        conn: 7,
        seq: 42,
        nanos: 1_700_000_000_123_456_789,
    };

    #[test]
    fn line_frame_is_header_padding_and_lf_of_exact_size() {
        let mut out = Vec::new();
        write_frame(&mut out, Framing::Lines, STAMP, 100);
        assert_eq!(out.len(), 100);
        let head = b"fwl c=7 s=42 t=1700000000123456789 ";
        assert_eq!(&out[..head.len()], head);
        assert!(out[head.len()..99].iter().all(|&b| b == b'x'));
        assert_eq!(out[99], b'\n');
    }

    #[test]
    fn octet_frame_counts_the_message_without_lf() {
        let mut out = Vec::new();
        write_frame(&mut out, Framing::OctetCounted, STAMP, 100);
        assert_eq!(&out[..3], b"99 ");
        assert_eq!(out.len(), 3 + 99);
        assert_eq!(out.len(), frame_len(Framing::OctetCounted, 100));
        assert!(!out.contains(&b'\n'));
        assert_eq!(parse(&out[3..]), Some(STAMP));
    }

    #[test]
    fn largest_header_fits_min_size_exactly() {
        let big = Stamp {
            conn: u32::MAX,
            seq: u64::MAX,
            nanos: u64::MAX,
        };
        let mut out = Vec::new();
        write_frame(&mut out, Framing::Lines, big, MIN_SIZE);
        assert_eq!(out.len(), MIN_SIZE);
        assert_eq!(out[MIN_SIZE - 2], b' ', "no room left for padding");
        assert_eq!(parse(&out[..MIN_SIZE - 1]), Some(big));
    }

    #[test]
    fn frames_append_after_earlier_ones() {
        let mut out = Vec::new();
        for seq in 0..3 {
            write_frame(&mut out, Framing::Lines, Stamp { seq, ..STAMP }, 80);
        }
        assert_eq!(out.len(), 240);
        let seqs: Vec<u64> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse(l).map(|s| s.seq).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn parse_finds_the_header_behind_a_prefix() {
        let line = b"<13>1 host app - - - fwl c=3 s=9 t=55 xxxx";
        assert_eq!(
            parse(line),
            Some(Stamp {
                conn: 3,
                seq: 9,
                nanos: 55
            })
        );
        assert_eq!(
            parse(b"fwl c=3 s=9 t=55"),
            Some(Stamp {
                conn: 3,
                seq: 9,
                nanos: 55
            })
        );
    }

    #[test]
    fn parse_rejects_what_is_not_a_header() {
        for bad in [
            &b"hello world"[..],
            b"fwl c= s=1 t=2 ",
            b"fwl c=1 s=1 t=2x",
            b"fwl c=1 t=2 s=1 ",
            b"fwl c=1 s=99999999999999999999 t=2 ",
            b"fwl c=4294967296 s=1 t=2 ",
            b"fwl c=1 s=1 t=",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
