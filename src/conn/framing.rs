//! The message decoder: bytes in, message boundaries out. Pure: no sockets,
//! no clocks, no allocation; the connection owns the buffer and hands the
//! decoder the unread part of it.
//!
//! Framings (SPEC.md "Framing"):
//! - `lines`: a message ends at LF, one trailing CR is stripped, empty lines
//!   are skipped, an over-long line is reported once as [`Frame::Oversize`]
//!   and skipped up to its LF.
//! - `octet-counted` (RFC 6587 3.4.1): `MSG-LEN SP MSG`; a non-numeric or
//!   oversize length is a [`FrameError`]: there is no safe way to resync.
//! - `auto`: per frame, a first byte 1-9 means octet-counted, anything else
//!   a line.
//!
//! The decoder never needs more than `max_message_bytes` plus a few header
//! bytes of unread input to make progress, which is what bounds a
//! connection's buffer.

use std::ops::Range;

use crate::config::Framing;

/// Longest accepted MSG-LEN, in digits: enough for any length up to the
/// largest `max_message_bytes` (64 MiB).
const MAX_LEN_DIGITS: usize = 10;

/// What the next bytes of the input hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message: its bytes are `input[range]`.
    Message(Range<usize>),
    /// A message over `max_message_bytes`, dropped (counted by the caller).
    Oversize,
    /// No complete frame yet: read more input.
    NeedMore,
}

/// An unrecoverable framing error: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("octet count is not a number (starts with {0:?})")]
    BadLength(String),
    #[error("octet count {length} exceeds max_message_bytes {max}")]
    LengthTooLarge { length: u64, max: usize },
    #[error("octet-counted frame cut short at end of input ({got} of {length} bytes)")]
    Truncated { length: usize, got: usize },
}

#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    max: usize,
    /// Inside an oversize line: discard everything up to the next LF.
    skipping_line: bool,
}

impl Decoder {
    pub fn new(framing: Framing, max_message_bytes: usize) -> Decoder {
        Decoder {
            framing,
            max: max_message_bytes,
            skipping_line: false,
        }
    }

    /// The most unread bytes the caller may need to hold for the decoder to
    /// make progress: one maximal octet-counted frame with its header, or
    /// one maximal line with CR and LF.
    pub fn max_pending(&self) -> usize {
        self.max + MAX_LEN_DIGITS + 2
    }

    /// Decodes the next frame from `input` (the unread bytes). Returns the
    /// frame and how many bytes of `input` it consumed; message ranges are
    /// relative to `input`. `NeedMore` may consume bytes too (skipped data).
    pub fn decode(&mut self, input: &[u8]) -> Result<(Frame, usize), FrameError> {
        let mut pos = 0;
        loop {
            if self.skipping_line {
                match memchr::memchr(b'\n', &input[pos..]) {
                    Some(i) => {
                        self.skipping_line = false;
                        pos += i + 1;
                    }
                    None => return Ok((Frame::NeedMore, input.len())),
                }
            }
            let rest = &input[pos..];
            let Some(&first) = rest.first() else {
                return Ok((Frame::NeedMore, pos));
            };
            let octet = match self.framing {
                Framing::Lines => false,
                Framing::OctetCounted => true,
                Framing::Auto => (b'1'..=b'9').contains(&first),
            };
            if octet {
                return match self.octet_frame(rest)? {
                    Some((range, used)) => Ok((
                        Frame::Message(range.start + pos..range.end + pos),
                        pos + used,
                    )),
                    None => Ok((Frame::NeedMore, pos)),
                };
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let mut end = i;
                    if end > 0 && rest[end - 1] == b'\r' {
                        end -= 1;
                    }
                    let used = pos + i + 1;
                    if end == 0 {
                        pos = used; // empty line: skip
                        continue;
                    }
                    if end > self.max {
                        return Ok((Frame::Oversize, used));
                    }
                    return Ok((Frame::Message(pos..pos + end), used));
                }
                // Longer than max even if its last byte is the CR of a CRLF.
                None if rest.len() > self.max + 1 => {
                    self.skipping_line = true;
                    return Ok((Frame::Oversize, input.len()));
                }
                None => return Ok((Frame::NeedMore, pos)),
            }
        }
    }

    /// The fast path for the common case: the longest prefix of `input`
    /// made of at most `limit` clean lines, `msg LF` with `msg` non-empty,
    /// not ending in CR, at most `max_message_bytes`, and (auto) not
    /// starting with 1-9: exactly what [`Decoder::decode`] would return one
    /// by one, found with one memchr pass instead of one call per line.
    /// Pushes each line's LF offset plus `base` onto `ends` and returns the
    /// bytes consumed; 0 when the first line is not clean or not complete
    /// (then `decode` takes it).
    pub fn clean_lines(
        &self,
        input: &[u8],
        limit: usize,
        base: usize,
        ends: &mut Vec<u32>,
    ) -> usize {
        if self.skipping_line || self.framing == Framing::OctetCounted {
            return 0;
        }
        let mut start = 0;
        for (taken, lf) in memchr::memchr_iter(b'\n', input).enumerate() {
            if taken == limit {
                break;
            }
            let line = &input[start..lf];
            let clean = match (line.first(), line.last()) {
                (Some(&first), Some(&last)) => {
                    line.len() <= self.max
                        && last != b'\r'
                        && !(self.framing == Framing::Auto && (b'1'..=b'9').contains(&first))
                }
                _ => false,
            };
            if !clean {
                break;
            }
            ends.push((base + lf) as u32);
            start = lf + 1;
        }
        start
    }

    /// Whether `input` (the unread bytes) or an oversize line being
    /// skipped leaves a frame unfinished.
    pub fn mid_frame(&self, input: &[u8]) -> bool {
        self.skipping_line || !input.is_empty()
    }

    /// At clean end of input: the final unterminated line, if any, as a
    /// `Message` or `Oversize` (the rest of an oversize line was counted
    /// already). An octet frame cut short is an error: bad input, counted.
    pub fn finish(&mut self, input: &[u8]) -> Result<Option<Frame>, FrameError> {
        if self.skipping_line || input.is_empty() {
            return Ok(None);
        }
        let octet = match self.framing {
            Framing::Lines => false,
            Framing::OctetCounted => true,
            Framing::Auto => (b'1'..=b'9').contains(&input[0]),
        };
        if octet {
            // decode() left it, so the header is valid but incomplete.
            let (length, got) = match input.iter().position(|&b| b == b' ') {
                Some(sp) => (
                    std::str::from_utf8(&input[..sp])
                        .ok()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0),
                    input.len() - sp - 1,
                ),
                None => (0, 0),
            };
            return Err(FrameError::Truncated { length, got });
        }
        let mut end = input.len();
        if input[end - 1] == b'\r' {
            end -= 1;
        }
        Ok(match end {
            0 => None,
            end if end > self.max => Some(Frame::Oversize),
            end => Some(Frame::Message(0..end)),
        })
    }

    /// `MSG-LEN SP MSG` at the start of `input`: Some((msg range, bytes
    /// used)) when complete, None when more input is needed.
    fn octet_frame(&self, input: &[u8]) -> Result<Option<(Range<usize>, usize)>, FrameError> {
        let mut length: u64 = 0;
        for (i, &b) in input.iter().enumerate() {
            match b {
                b' ' if i > 0 => {
                    let start = i + 1;
                    let end = start + length as usize;
                    return Ok((end <= input.len()).then_some((start..end, end)));
                }
                b'0'..=b'9' if !(i == 0 && b == b'0') && i < MAX_LEN_DIGITS => {
                    length = length * 10 + u64::from(b - b'0');
                    if length > self.max as u64 {
                        return Err(FrameError::LengthTooLarge {
                            length,
                            max: self.max,
                        });
                    }
                }
                _ => {
                    let shown = &input[..(i + 1).min(input.len()).min(16)];
                    return Err(FrameError::BadLength(
                        String::from_utf8_lossy(shown).into_owned(),
                    ));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Everything a decoder makes of `chunks` fed one after another, the way
    /// a connection feeds it: Ok(messages and "OVERSIZE" markers) or the error.
    fn run(framing: Framing, max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut dec = Decoder::new(framing, max);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&buf) {
                    Ok((Frame::Message(r), used)) => {
                        out.push(buf[r].to_vec());
                        buf.drain(..used);
                    }
                    Ok((Frame::Oversize, used)) => {
                        out.push(b"OVERSIZE".to_vec());
                        buf.drain(..used);
                    }
                    Ok((Frame::NeedMore, used)) => {
                        buf.drain(..used);
                        break;
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
            assert!(
                buf.len() <= dec.max_pending(),
                "decoder left {} bytes pending, more than {}",
                buf.len(),
                dec.max_pending()
            );
        }
        match dec.finish(&buf) {
            Ok(Some(Frame::Message(r))) => out.push(buf[r].to_vec()),
            Ok(Some(_)) => out.push(b"OVERSIZE".to_vec()),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
        (out, None)
    }

    fn msgs(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn lines_strip_one_cr_and_skip_empty_lines() {
        let (out, err) = run(Framing::Lines, 100, &[b"a\r\nb\n\n\r\nc\r\r\n"]);
        assert_eq!(out, msgs(&["a", "b", "c\r"]));
        assert!(err.is_none());
    }

    #[test]
    fn final_unterminated_line_is_delivered_at_eof() {
        let (out, _) = run(Framing::Lines, 100, &[b"a\nlast"]);
        assert_eq!(out, msgs(&["a", "last"]));
    }

    #[test]
    fn oversize_line_is_dropped_and_reading_resumes() {
        let (out, err) = run(Framing::Lines, 4, &[b"1234\n12345\nab\n"]);
        assert_eq!(out, msgs(&["1234", "OVERSIZE", "ab"]));
        assert!(err.is_none());
    }

    #[test]
    fn oversize_final_line_at_eof_is_counted() {
        let (out, _) = run(Framing::Lines, 4, &[b"ok\n12345"]);
        assert_eq!(out, msgs(&["ok", "OVERSIZE"]));
    }

    #[test]
    fn oversize_line_split_across_reads_is_counted_once() {
        let (out, _) = run(Framing::Lines, 4, &[b"1234567", b"89", b"0123\nok\n"]);
        assert_eq!(out, msgs(&["OVERSIZE", "ok"]));
    }

    #[test]
    fn max_length_line_with_crlf_split_before_lf_is_kept() {
        let (out, _) = run(Framing::Lines, 4, &[b"1234\r", b"\n"]);
        assert_eq!(out, msgs(&["1234"]));
    }

    #[test]
    fn octet_counted_frames() {
        let (out, err) = run(
            Framing::OctetCounted,
            100,
            &[b"5 hello3 a\nb12 with\nnewline"],
        );
        assert_eq!(out, msgs(&["hello", "a\nb", "with\nnewline"]));
        assert!(err.is_none());
    }

    #[test]
    fn octet_counted_split_in_header_and_body() {
        let (out, _) = run(
            Framing::OctetCounted,
            100,
            &[b"1", b"2", b" hello", b" world!"],
        );
        assert_eq!(out, msgs(&["hello world!"]));
    }

    #[test]
    fn octet_count_errors() {
        let (_, err) = run(Framing::OctetCounted, 100, &[b"abc hello"]);
        assert!(matches!(err, Some(FrameError::BadLength(_))));
        let (_, err) = run(Framing::OctetCounted, 100, &[b"05 hello"]);
        assert!(matches!(err, Some(FrameError::BadLength(_))));
        let (_, err) = run(Framing::OctetCounted, 100, &[b"-5 hello"]);
        assert!(matches!(err, Some(FrameError::BadLength(_))));
        let (_, err) = run(Framing::OctetCounted, 100, &[b"101 x"]);
        assert!(matches!(
            err,
            Some(FrameError::LengthTooLarge { length: 101, .. })
        ));
        let (_, err) = run(Framing::OctetCounted, 100, &[b"99999999999999999999 x"]);
        assert!(err.is_some());
        let (_, err) = run(Framing::OctetCounted, 100, &[b" 5 hello"]);
        assert!(matches!(err, Some(FrameError::BadLength(_))));
    }

    #[test]
    fn octet_frame_cut_short_at_eof_is_an_error_not_a_message() {
        let (out, err) = run(Framing::OctetCounted, 100, &[b"10 short"]);
        assert!(out.is_empty());
        assert_eq!(err, Some(FrameError::Truncated { length: 10, got: 5 }));
        let (_, err) = run(Framing::Auto, 100, &[b"ok\n12"]);
        assert!(matches!(err, Some(FrameError::Truncated { .. })));
    }

    #[test]
    fn auto_decides_per_frame() {
        let (out, err) = run(
            Framing::Auto,
            100,
            &[b"<13>line one\n5 hello<14>line two\n3 abc\n{\"json\":1}"],
        );
        assert_eq!(
            out,
            msgs(&[
                "<13>line one",
                "hello",
                "<14>line two",
                "abc",
                "{\"json\":1}"
            ])
        );
        assert!(err.is_none());
    }

    #[test]
    fn auto_digit_start_that_is_not_a_count_is_a_framing_error() {
        let (out, err) = run(Framing::Auto, 100, &[b"ok\n2024-01-01 x\n"]);
        assert_eq!(out, msgs(&["ok"]));
        assert!(err.is_some());
        let (_, err) = run(Framing::Auto, 100, &[b"12:00 x\n"]);
        assert!(matches!(err, Some(FrameError::BadLength(_))));
    }

    #[test]
    fn auto_zero_start_is_a_line() {
        let (out, _) = run(Framing::Auto, 100, &[b"0 is a line\n"]);
        assert_eq!(out, msgs(&["0 is a line"]));
    }

    fn framing() -> impl Strategy<Value = Framing> {
        prop_oneof![
            Just(Framing::Lines),
            Just(Framing::OctetCounted),
            Just(Framing::Auto)
        ]
    }

    /// Bytes that look like our inputs often enough to reach every branch.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            (1u8..30).prop_map(|n| format!("{n} ").into_bytes()),
            Just(b"hello world".to_vec()),
        ];
        proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
    }

    /// `run`, but taking the fast path first wherever it applies, as the
    /// connection does.
    fn run_fast(framing: Framing, max: usize, data: &[u8]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut dec = Decoder::new(framing, max);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut ends = Vec::new();
        loop {
            ends.clear();
            let used = dec.clean_lines(&data[pos..], 3, 0, &mut ends);
            if used > 0 {
                let mut start = pos;
                for &e in &ends {
                    out.push(data[start..pos + e as usize].to_vec());
                    start = pos + e as usize + 1;
                }
                assert_eq!(start, pos + used);
                pos += used;
                continue;
            }
            match dec.decode(&data[pos..]) {
                Ok((Frame::Message(r), used)) => {
                    out.push(data[pos + r.start..pos + r.end].to_vec());
                    pos += used;
                }
                Ok((Frame::Oversize, used)) => {
                    out.push(b"OVERSIZE".to_vec());
                    pos += used;
                }
                Ok((Frame::NeedMore, used)) => {
                    pos += used;
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
        match dec.finish(&data[pos..]) {
            Ok(Some(Frame::Message(r))) => out.push(data[pos + r.start..pos + r.end].to_vec()),
            Ok(Some(_)) => out.push(b"OVERSIZE".to_vec()),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
        (out, None)
    }

    #[test]
    fn clean_lines_stops_at_the_first_line_decode_must_judge() {
        let dec = Decoder::new(Framing::Auto, 5);
        let mut ends = Vec::new();
        let used = dec.clean_lines(b"ab\ncd\n\nef\n", 10, 100, &mut ends);
        assert_eq!((used, ends), (6, vec![102, 105]));
        for stop in [&b"x\r\n"[..], b"123456\n", b"1 a\n", b"\n", b"partial"] {
            let mut ends = Vec::new();
            assert_eq!(dec.clean_lines(stop, 10, 0, &mut ends), 0, "{stop:?}");
        }
        let mut ends = Vec::new();
        assert_eq!(dec.clean_lines(b"a\nb\nc\n", 2, 0, &mut ends), 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The fast path never changes what is decoded.
        #[test]
        fn clean_lines_fast_path_changes_nothing(
            framing in framing(),
            max in 1usize..40,
            data in input(),
        ) {
            prop_assert_eq!(run(framing, max, &[&data]), run_fast(framing, max, &data));
        }


        /// Any split of the input into reads gives what one big read gives,
        /// never panics and never holds more than max_pending unread bytes.
        #[test]
        fn splitting_reads_changes_nothing(
            framing in framing(),
            max in 1usize..40,
            data in input(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = run(framing, max, &[&data]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&data[last..p]);
                last = p;
            }
            chunks.push(&data[last..]);
            let split = run(framing, max, &chunks);
            prop_assert_eq!(&whole, &split);
            for m in &whole.0 {
                prop_assert!(m.len() <= max || m.as_slice() == b"OVERSIZE");
            }
        }
    }

    /// The reference framer: SPEC.md "Framing" read literally, on the whole
    /// input at once, sharing no code with [`Decoder`]. Messages in order
    /// (an oversize one as "OVERSIZE"), then whether a framing error ended
    /// the input. Where SPEC is silent: an octet-counted frame cut short at
    /// EOF is an error (a length promised more than came), not a message.
    fn reference(framing: Framing, max: usize, data: &[u8]) -> (Vec<Vec<u8>>, bool) {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(&first) = rest.first() {
            let octet = match framing {
                Framing::Lines => false,
                Framing::OctetCounted => true,
                // RFC 5425 lengths have no leading zero: 1-9 starts a count.
                Framing::Auto => (b'1'..=b'9').contains(&first),
            };
            if octet {
                // MSG-LEN SP MSG: digits with no leading zero, at most max.
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let len = rest[..digits].iter().fold(0usize, |n, d| {
                    n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
                });
                let body = digits + 1;
                if digits == 0
                    || first == b'0'
                    || len > max
                    || rest.get(digits) != Some(&b' ')
                    || rest.len() < body + len
                {
                    return (out, true);
                }
                out.push(rest[body..body + len].to_vec());
                rest = &rest[body + len..];
            } else {
                // A line ends at LF, or at EOF (the final unterminated line).
                let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                    Some(lf) => (&rest[..lf], &rest[lf + 1..]),
                    None => (rest, &rest[rest.len()..]),
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > max {
                    out.push(b"OVERSIZE".to_vec());
                } else if !line.is_empty() {
                    out.push(line.to_vec());
                }
                rest = next;
            }
        }
        (out, false)
    }

    /// The decoder's result in the reference's terms.
    fn judged(result: (Vec<Vec<u8>>, Option<FrameError>)) -> (Vec<Vec<u8>>, bool) {
        (result.0, result.1.is_some())
    }

    /// Well-formed traffic for `framing` with faults mixed in: lines with LF
    /// or CRLF, empty lines, octet frames whose bodies hold LF and CR,
    /// oversize lines, and (rarely) raw bytes, so both the happy path and
    /// every error path are reached often.
    fn wire() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 1..24);
        let piece = prop_oneof![
            4 => body.clone().prop_map(|mut m| {
                m.retain(|&b| b != b'\n');
                m.push(b'\n');
                m
            }),
            2 => body.clone().prop_map(|mut m| {
                m.retain(|&b| b != b'\n');
                m.extend_from_slice(b"\r\n");
                m
            }),
            3 => body.prop_map(|m| [format!("{} ", m.len()).into_bytes(), m].concat()),
            1 => prop_oneof![Just(b"\n".to_vec()), Just(b"\r\n".to_vec())],
            1 => (40usize..90).prop_map(|n| [vec![b'o'; n], b"\n".to_vec()].concat()),
            1 => proptest::collection::vec(any::<u8>(), 0..6),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    /// Splits `data` at the given cut points (any order, any repeats).
    fn split<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&data[last..p]);
            last = p;
        }
        chunks.push(&data[last..]);
        chunks
    }

    #[test]
    fn reference_framer_reads_spec_examples() {
        let r = |f, max, d: &[u8]| reference(f, max, d);
        assert_eq!(
            r(Framing::Lines, 100, b"a\r\nb\n\n\r\nc\r\r\nlast\r"),
            (msgs(&["a", "b", "c\r", "last"]), false)
        );
        assert_eq!(
            r(Framing::Lines, 4, b"1234\n12345\nab"),
            (msgs(&["1234", "OVERSIZE", "ab"]), false)
        );
        assert_eq!(
            r(Framing::OctetCounted, 100, b"3 a\nb1 x"),
            (msgs(&["a\nb", "x"]), false)
        );
        assert_eq!(
            r(Framing::OctetCounted, 100, b"1 x05 hello"),
            (msgs(&["x"]), true)
        );
        assert_eq!(r(Framing::OctetCounted, 100, b"10 short"), (vec![], true));
        assert_eq!(
            r(Framing::Auto, 100, b"0 line\n2 ab<1>x\n7x"),
            (msgs(&["0 line", "ab", "<1>x"]), true)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The decoder, fed any split of the input into reads (the way a
        /// connection feeds it, with the fast path where it applies), frames
        /// exactly what the reference framer reads in SPEC.md.
        #[test]
        fn decoder_matches_the_reference_framer_on_any_read_split(
            framing in framing(),
            max in 1usize..64,
            data in prop_oneof![wire(), input(), proptest::collection::vec(any::<u8>(), 0..300)],
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let expected = reference(framing, max, &data);
            prop_assert_eq!(&judged(run(framing, max, &split(&data, &cuts))), &expected);
            prop_assert_eq!(&judged(run_fast(framing, max, &data)), &expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Plain arbitrary bytes (no bias towards our framings) fed one byte
        /// per read, the finest split a socket can produce: same result as
        /// one big read, no panic, and the unread bytes never exceed
        /// max_pending (max_message_bytes plus an octet-count header).
        #[test]
        fn byte_at_a_time_reads_change_nothing(
            framing in framing(),
            max in 1usize..64,
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                input(),
            ],
        ) {
            let whole = run(framing, max, &[&data]);
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            let split = run(framing, max, &bytes);
            prop_assert_eq!(&whole, &split);
        }
    }
}
