//! TLS input as rustls gets it: one whole record at a time, read from the
//! socket in large chunks.
//!
//! rustls reads at most 4 KiB per `read_tls`, and `process_new_packets`
//! shifts what follows each record it processed to the front of its
//! buffer (and a record cut by a read stays there, regrowing the buffer).
//! With one small record per message (loggen, rsyslog) that was a syscall
//! per 4 KiB and about n²/2 records' worth of copying per read of n
//! records. Here a socket read fills a staging buffer of up to 64 KiB, and
//! rustls is given one complete record per call, so its buffer empties on
//! every turn and nothing is shifted. To know where records end,
//! [`Records`] follows the record framing of every byte rustls was given,
//! from the first byte of the handshake on (src/tls.rs reads the
//! handshake through [`Tracked`]).
//!
//! Not here: decryption and alerts (rustls), what a connection does with
//! the plaintext (src/stream.rs, src/conn.rs).

use std::io::{self, Read};
use std::net::TcpStream;

use rustls::ServerConnection;

/// Bytes one `read_tls` takes at most (rustls's own read size).
const FEED: usize = 4096;
/// The staging buffer starts at one largest record (16 KiB + 256 + 5)
/// and doubles, while socket reads fill it, up to 64 KiB: a connection
/// that sends little and keeps going quiet (its buffers given back each
/// time) does not zero 64 KiB per read.
const STAGING_MIN: usize = (16 << 10) + 512;
const STAGING_MAX: usize = 64 << 10;
/// TLS record header: type (1), version (2), length (2).
const HEADER: usize = 5;

/// Where the TLS byte stream stands in its record framing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Records {
    header: [u8; HEADER],
    /// Header bytes seen of the current record (0: at a record boundary).
    got: usize,
    /// Body bytes still to come once the header is complete.
    left: usize,
}

impl Records {
    /// Follows `bytes` through the framing.
    pub fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.got < HEADER {
                let take = (HEADER - self.got).min(bytes.len());
                self.header[self.got..self.got + take].copy_from_slice(&bytes[..take]);
                self.got += take;
                bytes = &bytes[take..];
                if self.got == HEADER {
                    self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                }
            } else {
                let take = self.left.min(bytes.len());
                self.left -= take;
                bytes = &bytes[take..];
            }
            if self.got == HEADER && self.left == 0 {
                self.got = 0;
            }
        }
    }

    /// Where the current record ends in `bytes`, if its header is there.
    fn end(&self, bytes: &[u8]) -> Option<usize> {
        if self.got == HEADER {
            return Some(self.left);
        }
        let need = HEADER - self.got;
        let mut header = self.header;
        header[self.got..].copy_from_slice(bytes.get(..need)?);
        Some(need + usize::from(u16::from_be_bytes([header[3], header[4]])))
    }

    /// How much of `bytes` to give rustls now: the next record when it is
    /// complete (at most `max` of it: a larger one goes in pieces). 0: it
    /// is not complete yet.
    ///
    /// One record a time, because rustls shifts what follows each record
    /// it processes to the front of its buffer: a read of n small records
    /// copied about n²/2 records' worth (14% of a worker's CPU with one
    /// record per message).
    fn next(&self, bytes: &[u8], max: usize) -> usize {
        match self.end(bytes) {
            Some(len) if len <= bytes.len() => len.min(max),
            _ => 0,
        }
    }
}

/// A reader that follows what passes through it (the handshake's reads).
pub struct Tracked<'a, R> {
    pub inner: R,
    pub records: &'a mut Records,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.records.advance(&buf[..n]);
        Ok(n)
    }
}

/// What was read from the socket and not yet given to rustls.
#[derive(Debug, Default)]
pub struct TlsInput {
    records: Records,
    /// Empty until input comes; given back when drained (see `release`).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// The last socket read filled the staging buffer.
    filled: bool,
}

/// What one [`TlsInput::feed`] did.
pub enum Fed {
    /// rustls got records (or the EOF); plaintext may be ready.
    Records,
    /// Nothing complete is staged and the socket has nothing more.
    WouldBlock,
}

impl TlsInput {
    /// Continues from where the handshake left the framing.
    pub fn new(records: Records) -> TlsInput {
        TlsInput {
            records,
            ..TlsInput::default()
        }
    }

    /// A whole record is staged: rustls can make progress without the
    /// socket.
    pub fn has_record(&self) -> bool {
        self.records.next(&self.buf[self.start..self.end], FEED) > 0
    }

    /// Gives the staging buffer back when it holds nothing (a connection
    /// gone quiet keeps no buffer; see src/conn.rs).
    pub fn release(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            *self = TlsInput::new(self.records);
        }
    }

    /// Gives rustls the next whole record, reading the socket first when
    /// none is staged; at the socket's EOF, what is left and the EOF.
    pub fn feed(&mut self, conn: &mut ServerConnection, mut sock: &TcpStream) -> io::Result<Fed> {
        loop {
            let staged = &self.buf[self.start..self.end];
            let mut take = self.records.next(staged, FEED);
            // A record that cannot complete (longer than the staging
            // buffer holds, or cut by the EOF) goes to rustls as it is:
            // it refuses it, or reports the EOF.
            if take == 0
                && !staged.is_empty()
                && (self.eof || self.start == 0 && self.end == self.buf.len())
            {
                take = staged.len().min(FEED);
            }
            if take > 0 {
                let n = conn.read_tls(&mut &staged[..take])?;
                self.records.advance(&staged[..n]);
                self.start += n;
                return Ok(Fed::Records);
            }
            if self.eof {
                conn.read_tls(&mut io::empty())?;
                return Ok(Fed::Records);
            }
            self.make_room();
            match sock.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.filled = self.end + n == self.buf.len();
                    self.end += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fed::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; STAGING_MIN];
        } else if self.filled && self.buf.len() < STAGING_MAX {
            self.buf.resize((self.buf.len() * 2).min(STAGING_MAX), 0);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.extend(std::iter::repeat_n(0xab, len));
        r
    }

    #[test]
    fn one_whole_record_at_a_time() {
        let mut bytes = Vec::new();
        for _ in 0..40 {
            bytes.extend(record(150)); // 155 bytes each
        }
        let r = Records::default();
        assert_eq!(r.next(&bytes, FEED), 155);
        assert_eq!(r.next(&bytes[..154], FEED), 0, "a cut record waits");
        assert_eq!(r.next(&bytes[..3], FEED), 0, "a cut header waits");
        assert_eq!(r.next(&[], FEED), 0);
    }

    #[test]
    fn a_large_record_goes_in_pieces_once_complete() {
        let big = record(10_000);
        let mut r = Records::default();
        assert_eq!(r.next(&big[..9000], FEED), 0);
        assert_eq!(r.next(&big, FEED), FEED);
        r.advance(&big[..FEED]);
        assert_eq!(r.next(&big[FEED..], FEED), FEED);
        r.advance(&big[FEED..2 * FEED]);
        assert_eq!(r.next(&big[2 * FEED..], FEED), big.len() - 2 * FEED);
        r.advance(&big[2 * FEED..]);
        assert_eq!(r.got, 0, "back at a boundary");
    }

    #[test]
    fn the_framing_survives_any_cut() {
        // Cut a stream of records of mixed sizes at every point: following
        // the first part leaves a state from which the rest splits into
        // exactly the remaining records.
        let sizes = [0usize, 1, 150, 4091, 5000, 17, 16_384];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for &s in &sizes {
            bytes.extend(record(s));
            ends.push(bytes.len());
        }
        for cut in 0..bytes.len() {
            let mut r = Records::default();
            r.advance(&bytes[..cut]);
            let mut pos = cut;
            for &end in ends.iter().filter(|&&e| e > cut) {
                assert_eq!(r.next(&bytes[pos..], usize::MAX), end - pos, "cut at {cut}");
                r.advance(&bytes[pos..end]);
                pos = end;
            }
            assert_eq!(r.got, 0, "cut at {cut}");
        }
    }
}
