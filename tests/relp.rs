//! RELP: the codec against a reference model (property tests), then the
//! listener against real librelp (rsyslog's omrelp) and raw sockets.

mod support;

use floodwall::relp::codec::{self, Command, FrameError, TXNR_MAX};
use proptest::prelude::*;

// ---------------------------------------------------------------------
// The reference model: frames as plain values, encoded with format!, and
// a whole-input parser written from the grammar in the simplest way
// (split at SP, parse numbers with str::parse). The codec must agree with
// it on every input, whole or fed in pieces.

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelFrame {
    txnr: u32,
    command: String,
    data: Vec<u8>,
}

fn model_encode(f: &ModelFrame) -> Vec<u8> {
    let mut out = format!("{} {} {}", f.txnr, f.command, f.data.len()).into_bytes();
    if !f.data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(&f.data);
    }
    out.push(b'\n');
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Frame(ModelFrame, usize),
    NeedMore,
    Invalid,
}

/// A 1..=9 digit decimal field; `Err(true)` = could still become one.
fn model_number(field: &[u8], complete: bool) -> Result<u32, bool> {
    let s = std::str::from_utf8(field).map_err(|_| false)?;
    let all_digits = s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits || s.len() > 9 {
        return Err(false);
    }
    if !complete {
        return Err(true);
    }
    s.parse::<u32>().map_err(|_| false)
}

fn model_decode(input: &[u8], max_data: usize) -> Verdict {
    // TXNR up to the first SP.
    let Some(sp1) = input.iter().position(|&b| b == b' ') else {
        return match model_number(input, false) {
            Err(true) => Verdict::NeedMore,
            _ => Verdict::Invalid,
        };
    };
    let Ok(txnr) = model_number(&input[..sp1], true) else {
        return Verdict::Invalid;
    };
    let rest = &input[sp1 + 1..];
    let letters = |s: &[u8]| s.iter().all(u8::is_ascii_alphabetic) && s.len() <= 32;
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        return if letters(rest) {
            Verdict::NeedMore
        } else {
            Verdict::Invalid
        };
    };
    let command = &rest[..sp2];
    if command.is_empty() || !letters(command) {
        return Verdict::Invalid;
    }
    let rest = &rest[sp2 + 1..];
    let end = rest.iter().position(|&b| b == b' ' || b == b'\n');
    let Some(end) = end else {
        return match model_number(rest, false) {
            Err(true) => Verdict::NeedMore,
            _ => Verdict::Invalid,
        };
    };
    let Ok(len) = model_number(&rest[..end], true) else {
        return Verdict::Invalid;
    };
    let len = len as usize;
    let header = sp1 + 1 + sp2 + 1 + end + 1;
    let command = String::from_utf8(command.to_vec()).unwrap();
    match (len, rest[end]) {
        (0, b'\n') => Verdict::Frame(
            ModelFrame {
                txnr,
                command,
                data: vec![],
            },
            header,
        ),
        (0, _) | (_, b'\n') => Verdict::Invalid,
        (len, _) if len > max_data => Verdict::Invalid,
        (len, _) => {
            let body = &rest[end + 1..];
            if body.len() <= len {
                Verdict::NeedMore
            } else if body[len] != b'\n' {
                Verdict::Invalid
            } else {
                let data = body[..len].to_vec();
                Verdict::Frame(
                    ModelFrame {
                        txnr,
                        command,
                        data,
                    },
                    header + len + 1,
                )
            }
        }
    }
}

fn codec_verdict(input: &[u8], max_data: usize) -> Verdict {
    match codec::decode(input, max_data) {
        Ok(Some((f, used))) => {
            let command = String::from_utf8(f.command.to_vec()).unwrap();
            Verdict::Frame(
                ModelFrame {
                    txnr: f.txnr,
                    command,
                    data: f.data.to_vec(),
                },
                used,
            )
        }
        Ok(None) => Verdict::NeedMore,
        Err(_) => Verdict::Invalid,
    }
}

fn model_frame() -> impl Strategy<Value = ModelFrame> {
    (
        prop_oneof![Just(0u32), Just(1), Just(TXNR_MAX), 0..=TXNR_MAX],
        "[a-zA-Z]{1,32}",
        prop_oneof![Just(vec![]), proptest::collection::vec(any::<u8>(), 0..200)],
    )
        .prop_map(|(txnr, command, data)| ModelFrame {
            txnr,
            command,
            data,
        })
}

fn known_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Open),
        Just(Command::Syslog),
        Just(Command::Close),
        Just(Command::Rsp),
        Just(Command::ServerClose),
    ]
}

/// Bytes that look like frames often enough to reach every branch:
/// pieces of valid frames, digits, letters, SP and LF.
fn framey_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        model_frame().prop_map(|f| model_encode(&f)),
        "[0-9]{1,11}".prop_map(String::into_bytes),
        "[a-z]{1,34}".prop_map(String::into_bytes),
        Just(b" ".to_vec()),
        Just(b"\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..4),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

/// Feed `input` to the codec in pieces cut at `cuts` (the way reads
/// arrive), draining each frame as it completes; the frames, and whether
/// it ended in an error.
fn decode_in_pieces(input: &[u8], cuts: &[usize], max_data: usize) -> (Vec<ModelFrame>, bool) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let (mut buf, mut frames, mut fed) = (Vec::new(), Vec::new(), 0);
    for cut in cuts {
        buf.extend_from_slice(&input[fed..cut]);
        fed = cut;
        loop {
            match codec::decode(&buf, max_data) {
                Ok(Some((f, used))) => {
                    let command = String::from_utf8(f.command.to_vec()).unwrap();
                    frames.push(ModelFrame {
                        txnr: f.txnr,
                        command,
                        data: f.data.to_vec(),
                    });
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any frames, encoded by the model and read in arbitrary pieces,
    /// come back exactly, in order.
    #[test]
    fn frames_round_trip_in_pieces(
        frames in proptest::collection::vec(model_frame(), 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(model_encode).collect();
        let (got, failed) = decode_in_pieces(&wire, &cuts, 1000);
        prop_assert!(!failed);
        prop_assert_eq!(got, frames);
    }

    /// The codec's encoder writes what the model writes.
    #[test]
    fn encode_matches_model(
        txnr in 0..=TXNR_MAX,
        command in known_command(),
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut out = vec![];
        codec::encode(&mut out, txnr, command, &data);
        let model = ModelFrame { txnr, command: command.as_str().to_owned(), data };
        prop_assert_eq!(out, model_encode(&model));
    }

    /// rsp frames: the codec's in-place writer equals the model's frame
    /// of `CODE SP TEXT [LF BODY]`, and parses back.
    #[test]
    fn rsp_matches_model(
        txnr in 0..=TXNR_MAX,
        code in prop_oneof![Just(200u16), Just(500u16), 100u16..1000],
        text in "[ -~]{0,20}",
        body in proptest::collection::vec(any::<u8>(), 0..50),
    ) {
        let mut out = vec![];
        codec::encode_rsp(&mut out, txnr, code, &text, &body);
        let mut data = format!("{code} {text}").into_bytes();
        if !body.is_empty() {
            data.push(b'\n');
            data.extend_from_slice(&body);
        }
        let model = ModelFrame { txnr, command: "rsp".into(), data: data.clone() };
        prop_assert_eq!(&out, &model_encode(&model));
        let rsp = codec::Rsp::parse(&data).unwrap();
        prop_assert_eq!(rsp.code, code);
        prop_assert_eq!(rsp.text, text.as_bytes());
        prop_assert_eq!(rsp.body, &body[..]);
    }

    /// On any input the codec and the model agree: the same frame and
    /// length, "need more", or invalid.
    #[test]
    fn decode_agrees_with_model(input in framey_bytes(), max_data in 0usize..300) {
        prop_assert_eq!(codec_verdict(&input, max_data), model_decode(&input, max_data));
    }

    /// Incremental = whole: every strict prefix of a frame is "need
    /// more" (never an error, never a different frame).
    #[test]
    fn prefixes_need_more(frame in model_frame()) {
        let wire = model_encode(&frame);
        for cut in 0..wire.len() {
            prop_assert_eq!(codec::decode(&wire[..cut], 1000), Ok(None));
        }
    }
}

#[test]
fn hostile_lengths_are_refused_before_the_data() {
    // A huge DATALEN is refused on its header: nothing is buffered for it.
    assert_eq!(
        codec::decode(b"1 syslog 999999999 ", 65536),
        Err(FrameError::DataTooLong {
            len: 999_999_999,
            max: 65536
        })
    );
    assert_eq!(
        codec::decode(b"1 syslog 1000000000", 65536),
        Err(FrameError::BadDatalen)
    );
}
