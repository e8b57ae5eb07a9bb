//! The RELP frame codec: bytes in, frames out, and frames to bytes. Pure:
//! no sockets, no clocks; shared by the listener (server side) and the
//! RELP sink (client side).
//!
//! The wire format (librelp's doc/relp.html):
//!
//! ```text
//! FRAME   = TXNR SP COMMAND SP DATALEN [SP DATA] LF
//! TXNR    = 1*9DIGIT          ; 1..=999_999_999, then wraps to 1; 0 = serverclose
//! COMMAND = 1*32ALPHA         ; open, syslog, close, rsp, serverclose
//! DATALEN = 1*9DIGIT          ; bytes of DATA; 0 = no SP and no DATA
//! ```
//!
//! An `rsp` frame's data is `CODE [SP TEXT] [LF BODY]` (see [`Rsp`]); an
//! `open` frame's data (and the body of the `rsp` answering it) is a list
//! of offers `name=value,value` separated by LF (see [`Offer`]).
//!
//! Decoding is incremental without keeping state: [`decode`] looks at the
//! start of the unread input and answers a complete frame (and how many
//! bytes it took), "need more", or an error as soon as the bytes seen so
//! far cannot begin any valid frame. The header is at most
//! [`HEADER_MAX`] bytes, so re-reading it after a short read costs
//! nothing, and the caller's buffer never needs more than `HEADER_MAX +
//! max_data + 1` bytes to make progress. A RELP stream cannot be resynced
//! after an error: the session must be closed.

use std::fmt;

/// Highest transaction number; the one after it is 1 (0 is reserved for
/// the server's unsolicited `serverclose`).
pub const TXNR_MAX: u32 = 999_999_999;

/// Longest command name the protocol allows.
pub const COMMAND_MAX: usize = 32;

/// Most digits in TXNR or DATALEN.
const DIGITS_MAX: usize = 9;

/// Longest possible header: `TXNR SP COMMAND SP DATALEN SP`.
pub const HEADER_MAX: usize = DIGITS_MAX + 1 + COMMAND_MAX + 1 + DIGITS_MAX + 1;

/// The protocol version both sides speak (librelp's `relp_version=0`).
pub const RELP_VERSION: u32 = 0;

/// The transaction number after `txnr`: 1..=[`TXNR_MAX`], then 1 again.
pub fn next_txnr(txnr: u32) -> u32 {
    if txnr >= TXNR_MAX { 1 } else { txnr + 1 }
}

/// The commands floodwall knows. Anything else decodes as a frame (the
/// syntax is the same) and [`Command::parse`] answers `None`: the server
/// answers it with an error and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Open,
    Syslog,
    Close,
    Rsp,
    ServerClose,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Open => "open",
            Command::Syslog => "syslog",
            Command::Close => "close",
            Command::Rsp => "rsp",
            Command::ServerClose => "serverclose",
        }
    }

    pub fn parse(name: &[u8]) -> Option<Command> {
        Some(match name {
            b"open" => Command::Open,
            b"syslog" => Command::Syslog,
            b"close" => Command::Close,
            b"rsp" => Command::Rsp,
            b"serverclose" => Command::ServerClose,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded frame, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub txnr: u32,
    /// The command name as sent (1..=32 ASCII letters).
    pub command: &'a [u8],
    pub data: &'a [u8],
}

impl Frame<'_> {
    /// The known command, or `None` for any other name.
    pub fn known(&self) -> Option<Command> {
        Command::parse(self.command)
    }
}

/// Bytes that cannot begin a valid frame: the session must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad TXNR (expected 1 to 9 digits then SP)")]
    BadTxnr,
    #[error("bad COMMAND (expected 1 to 32 letters then SP)")]
    BadCommand,
    #[error("bad DATALEN (expected 1 to 9 digits then SP, or 0 then LF)")]
    BadDatalen,
    #[error("DATALEN {len} exceeds the limit of {max} bytes")]
    DataTooLong { len: usize, max: usize },
    #[error("frame not terminated by LF after DATALEN bytes of data")]
    BadTrailer,
}

/// Decode the frame at the start of `input`: `Ok(Some((frame, used)))`
/// for a complete frame taking `input[..used]`, `Ok(None)` when `input`
/// is a valid but unfinished beginning of a frame, `Err` as soon as it
/// cannot be one. DATALEN over `max_data` is an error (before any data
/// is awaited, so a hostile length never makes the caller buffer it).
pub fn decode(input: &[u8], max_data: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let mut at = 0;
    let Some((txnr, used)) = digits(input, FrameError::BadTxnr)? else {
        return Ok(None);
    };
    at += used;
    // Then the command: letters up to SP.
    let rest = &input[at..];
    let name_len = rest
        .iter()
        .take(COMMAND_MAX + 1)
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    if name_len > COMMAND_MAX {
        return Err(FrameError::BadCommand);
    }
    if name_len == rest.len() {
        return Ok(None);
    }
    if name_len == 0 || rest[name_len] != b' ' {
        return Err(FrameError::BadCommand);
    }
    let command = &rest[..name_len];
    at += name_len + 1;
    // DATALEN, then SP (data follows) or, for 0 only, LF (frame ends).
    let rest = &input[at..];
    let len_digits = rest
        .iter()
        .take(DIGITS_MAX + 1)
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    if len_digits > DIGITS_MAX {
        return Err(FrameError::BadDatalen);
    }
    if len_digits == rest.len() {
        return Ok(None);
    }
    if len_digits == 0 {
        return Err(FrameError::BadDatalen);
    }
    let len = parse_digits(&rest[..len_digits]) as usize;
    at += len_digits;
    if len == 0 {
        // librelp writes neither SP nor data for an empty frame.
        if input[at] != b'\n' {
            return Err(FrameError::BadDatalen);
        }
        let frame = Frame {
            txnr,
            command,
            data: &[],
        };
        return Ok(Some((frame, at + 1)));
    }
    if input[at] != b' ' {
        return Err(FrameError::BadDatalen);
    }
    if len > max_data {
        return Err(FrameError::DataTooLong { len, max: max_data });
    }
    at += 1;
    if input.len() < at + len + 1 {
        return Ok(None);
    }
    if input[at + len] != b'\n' {
        return Err(FrameError::BadTrailer);
    }
    let frame = Frame {
        txnr,
        command,
        data: &input[at..at + len],
    };
    Ok(Some((frame, at + len + 1)))
}

/// A 1..=9 digit number followed by SP at the start of `input`: the
/// value and the bytes used (with the SP), `None` when unfinished.
fn digits(input: &[u8], bad: FrameError) -> Result<Option<(u32, usize)>, FrameError> {
    let n = input
        .iter()
        .take(DIGITS_MAX + 1)
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(input.len());
    if n > DIGITS_MAX {
        return Err(bad);
    }
    if n == input.len() {
        return Ok(None);
    }
    if n == 0 || input[n] != b' ' {
        return Err(bad);
    }
    Ok(Some((parse_digits(&input[..n]), n + 1)))
}

/// The value of at most 9 ASCII digits (fits a u32).
fn parse_digits(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
}

/// Append one frame to `out`. `txnr` must be at most [`TXNR_MAX`] and
/// `data` shorter than a billion bytes (both hold for anything floodwall
/// sends: messages are capped far below).
pub fn encode(out: &mut Vec<u8>, txnr: u32, command: Command, data: &[u8]) {
    encode_raw(out, txnr, command.as_str().as_bytes(), data);
}

fn encode_raw(out: &mut Vec<u8>, txnr: u32, command: &[u8], data: &[u8]) {
    debug_assert!(txnr <= TXNR_MAX, "txnr {txnr} out of range");
    debug_assert!(data.len() <= TXNR_MAX as usize, "data too long");
    push_number(out, txnr as usize);
    out.push(b' ');
    out.extend_from_slice(command);
    out.push(b' ');
    push_number(out, data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// Append an `rsp` frame answering `txnr`: `CODE SP TEXT [LF BODY]`.
/// Writes in place (no temporary buffer): this runs once per message.
pub fn encode_rsp(out: &mut Vec<u8>, txnr: u32, code: u16, text: &str, body: &[u8]) {
    let len = 3 + 1 + text.len() + if body.is_empty() { 0 } else { 1 + body.len() };
    push_number(out, txnr as usize);
    out.extend_from_slice(b" rsp ");
    push_number(out, len);
    out.push(b' ');
    push_number(out, usize::from(code.min(999)));
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    if !body.is_empty() {
        out.push(b'\n');
        out.extend_from_slice(body);
    }
    out.push(b'\n');
}

/// Append `n` in decimal without allocating.
fn push_number(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The data of an `rsp` frame: `CODE [SP TEXT] [LF BODY]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsp<'a> {
    /// 200 = OK, 500 = error (librelp uses no others).
    pub code: u16,
    pub text: &'a [u8],
    /// What follows the first LF (the server's offers, for `open`).
    pub body: &'a [u8],
}

impl<'a> Rsp<'a> {
    /// Parse an `rsp` frame's data; `None` unless it starts with three
    /// digits followed by the end, SP or LF.
    pub fn parse(data: &'a [u8]) -> Option<Rsp<'a>> {
        if data.len() < 3 || !data[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code = parse_digits(&data[..3]) as u16;
        let rest = &data[3..];
        let (line, body) = match memchr::memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], &rest[lf + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let text = match line.split_first() {
            None => line,
            Some((b' ', text)) => text,
            Some(_) => return None,
        };
        Some(Rsp { code, text, body })
    }

    pub fn is_ok(&self) -> bool {
        self.code == 200
    }
}

/// One offer of an `open` exchange: `name=value,value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub name: String,
    pub values: Vec<String>,
}

impl Offer {
    pub fn new(name: &str, values: &[&str]) -> Offer {
        Offer {
            name: name.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// Parse offers (`open` data, or the body of the `rsp` answering it):
/// lines of `name[=value[,value...]]`. Lenient as librelp is: empty
/// lines and empty values are skipped; bytes are read as UTF-8 lossily
/// (offers are ASCII in practice).
pub fn parse_offers(data: &[u8]) -> Vec<Offer> {
    data.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, values) = match memchr::memchr(b'=', line) {
                Some(eq) => (&line[..eq], &line[eq + 1..]),
                None => (line, &line[line.len()..]),
            };
            Offer {
                name: String::from_utf8_lossy(name).into_owned(),
                values: values
                    .split(|&b| b == b',')
                    .filter(|v| !v.is_empty())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect(),
            }
        })
        .collect()
}

/// Offers as `open` data: one `name=values` per line, no final LF.
pub fn encode_offers(offers: &[Offer]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, offer) in offers.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(offer.name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(offer.values.join(",").as_bytes());
    }
    out
}

/// The first value of offer `name`, if offered.
pub fn offer_value<'a>(offers: &'a [Offer], name: &str) -> Option<&'a str> {
    offers
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| o.values.first())
        .map(String::as_str)
}

/// Whether the offers list `command` under `commands`.
pub fn offers_command(offers: &[Offer], command: Command) -> bool {
    offers
        .iter()
        .filter(|o| o.name == "commands")
        .any(|o| o.values.iter().any(|v| v == command.as_str()))
}

/// floodwall's own offers: version 0, the `syslog` command.
pub fn floodwall_offers() -> Vec<Offer> {
    vec![
        Offer::new("relp_version", &["0"]),
        Offer::new("relp_software", &["floodwall", env!("CARGO_PKG_VERSION")]),
        Offer::new("commands", &["syslog"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
        decode(input, 1024)
    }

    #[test]
    fn librelp_frames_decode() {
        let open = b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n";
        let (frame, used) = one(open).unwrap().unwrap();
        assert_eq!(used, open.len());
        assert_eq!(frame.txnr, 1);
        assert_eq!(frame.known(), Some(Command::Open));
        let offers = parse_offers(frame.data);
        assert_eq!(offer_value(&offers, "relp_version"), Some("0"));
        assert!(offers_command(&offers, Command::Syslog));

        let (close, used) = one(b"7 close 0\nrest").unwrap().unwrap();
        assert_eq!(
            (close.txnr, close.known(), close.data, used),
            (7, Some(Command::Close), &b""[..], 10)
        );
        let (sc, _) = one(b"0 serverclose 0\n").unwrap().unwrap();
        assert_eq!((sc.txnr, sc.known()), (0, Some(Command::ServerClose)));
    }

    #[test]
    fn unfinished_prefixes_need_more() {
        let frame = b"123 syslog 5 hello\n";
        for cut in 0..frame.len() {
            assert_eq!(one(&frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn errors_are_early() {
        assert_eq!(one(b"x"), Err(FrameError::BadTxnr));
        assert_eq!(one(b"1234567890"), Err(FrameError::BadTxnr));
        assert_eq!(one(b" 1 open"), Err(FrameError::BadTxnr));
        assert_eq!(one(b"1 op3n"), Err(FrameError::BadCommand));
        assert_eq!(one(b"1  "), Err(FrameError::BadCommand));
        assert_eq!(
            one(&[b"1 ".as_slice(), &[b'a'; 33]].concat()),
            Err(FrameError::BadCommand)
        );
        assert_eq!(one(b"1 syslog x"), Err(FrameError::BadDatalen));
        assert_eq!(one(b"1 syslog 0 "), Err(FrameError::BadDatalen));
        assert_eq!(one(b"1 syslog 5\n"), Err(FrameError::BadDatalen));
        assert_eq!(one(b"1 syslog 1234567890"), Err(FrameError::BadDatalen));
        assert_eq!(
            one(b"1 syslog 2000 "),
            Err(FrameError::DataTooLong {
                len: 2000,
                max: 1024
            })
        );
        assert_eq!(one(b"1 syslog 3 abcd\n"), Err(FrameError::BadTrailer));
    }

    #[test]
    fn encode_matches_librelp() {
        let mut out = Vec::new();
        encode(&mut out, 999_999_999, Command::Syslog, b"hi");
        encode(&mut out, 2, Command::Close, b"");
        encode_rsp(&mut out, 5, 200, "OK", b"");
        encode_rsp(&mut out, 1, 200, "OK", b"relp_version=0");
        assert_eq!(
            out,
            b"999999999 syslog 2 hi\n2 close 0\n5 rsp 6 200 OK\n1 rsp 21 200 OK\nrelp_version=0\n"
        );
    }

    #[test]
    fn txnr_wraps_to_one() {
        assert_eq!(next_txnr(1), 2);
        assert_eq!(next_txnr(TXNR_MAX - 1), TXNR_MAX);
        assert_eq!(next_txnr(TXNR_MAX), 1);
    }

    #[test]
    fn rsp_parses() {
        let rsp = Rsp::parse(b"200 OK\nrelp_version=0\ncommands=syslog").unwrap();
        assert_eq!((rsp.code, rsp.text), (200, &b"OK"[..]));
        assert_eq!(
            parse_offers(rsp.body),
            vec![
                Offer::new("relp_version", &["0"]),
                Offer::new("commands", &["syslog"])
            ]
        );
        assert_eq!(Rsp::parse(b"500").unwrap().code, 500);
        assert_eq!(Rsp::parse(b"20"), None);
        assert_eq!(Rsp::parse(b"200x"), None);
    }

    #[test]
    fn offers_round_trip() {
        let offers = floodwall_offers();
        assert_eq!(parse_offers(&encode_offers(&offers)), offers);
    }
}
