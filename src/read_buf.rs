//! A read buffer that follows its reader's pace: the bytes read and not yet
//! consumed (`unread`), allocated only when input comes, doubling while
//! reads fill it, and given back when the reader goes quiet. A connection
//! reads into one (src/conn/), and so does floodwall's TLS record layer
//! for the records it has not opened yet (src/tls/record.rs): the same
//! rules for when memory is taken and when it is returned, written once.
//!
//! It owns the memory and the positions, not the reading: the reader
//! hands [`ReadBuf::read_from`] a closure that fills the free space (a
//! socket read, a TLS session's read). It sits below both of its users
//! (conn/ reads from tls/'s stream), hence a module of its own rather than
//! one inside either: no cycle between them.
//!
//! Hot path: every connection's read goes through it; nothing here
//! allocates except the growth itself.

use std::io;
use std::ops::Range;

/// The buffer and the unread part of it, `buf[start..end]`.
#[derive(Debug)]
pub struct ReadBuf {
    /// Empty until the first read, then `first` bytes doubling up to
    /// `limit` (zero-filled: reads go into initialised memory).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The first allocation, and what a buffer holding unread bytes is
    /// cut back to when released.
    first: usize,
    /// The largest size doubling reaches (a single unit the reader needs
    /// whole may take it beyond: see [`ReadBuf::make_room`]).
    limit: usize,
    /// The last read filled all free space: grow before the next one, and
    /// more may be waiting.
    grow: bool,
    /// The last read used under a quarter of the free space: the peer
    /// sends little, so an emptied buffer is released.
    quiet: bool,
    /// The source was reported readable (poll): read even with no buffer
    /// yet.
    readable: bool,
}

impl ReadBuf {
    /// An empty buffer (nothing allocated) that starts at `first` bytes
    /// and doubles up to `limit`.
    pub fn new(first: usize, limit: usize) -> ReadBuf {
        ReadBuf::with_unread(Vec::new(), 0, first, limit)
    }

    /// A buffer that already holds `buf[..end]` unread (what a TLS
    /// handshake left in its own input buffer).
    pub fn with_unread(buf: Vec<u8>, end: usize, first: usize, limit: usize) -> ReadBuf {
        ReadBuf {
            buf,
            start: 0,
            end,
            first: first.min(limit),
            limit,
            grow: false,
            quiet: false,
            readable: false,
        }
    }

    /// The bytes read and not consumed yet.
    #[inline]
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Where the unread bytes start in the buffer (positions given to
    /// [`ReadBuf::bytes`] count from the buffer's start).
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    /// Whether every byte read has been consumed.
    #[inline]
    pub fn is_drained(&self) -> bool {
        self.start == self.end
    }

    /// Marks the next `n` unread bytes consumed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
    }

    /// Marks every unread byte consumed.
    pub fn consume_all(&mut self) {
        self.start = self.end;
    }

    /// Bytes of the buffer by position (consumed ones included, until the
    /// next read moves the unread ones to the front).
    #[inline]
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// As [`ReadBuf::bytes`], to change in place (a TLS record opened
    /// where it lies).
    #[inline]
    pub fn bytes_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        &mut self.buf[range]
    }

    /// The buffer's size (0 when nothing is allocated).
    #[inline]
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// What the allocation holds, which a release may cut.
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the unread bytes fill the whole buffer (no room to read).
    pub fn is_full(&self) -> bool {
        self.end == self.buf.len()
    }

    /// The source was reported readable: the next [`ReadBuf::should_read`]
    /// says so.
    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    /// Whether to read before waiting: the source was reported readable,
    /// or the last read filled the buffer (more may be waiting). After a
    /// short read the source was empty a moment ago, so waiting first
    /// saves a read into EAGAIN. Clears the readable mark.
    #[inline]
    pub fn should_read(&mut self) -> bool {
        let read = self.readable || (!self.buf.is_empty() && self.grow);
        self.readable = false;
        read
    }

    /// Room for the next read: allocates the first buffer, moves the
    /// unread bytes to the front, doubles (up to `limit`) after a read
    /// that filled the buffer, and makes it at least `need` bytes (a unit
    /// the reader can only take whole: a TLS record). Unread bytes that
    /// fill the buffer with `need` unknown double it too, so that a read
    /// always has room while under `limit`.
    pub fn make_room(&mut self, need: usize) {
        if self.buf.is_empty() {
            self.buf = vec![0; self.first];
            self.start = 0;
            self.end = 0;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.grow && self.buf.len() < self.limit {
            self.double();
        }
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
        if self.is_full() && self.buf.len() < self.limit {
            self.double();
        }
        self.grow = false;
    }

    fn double(&mut self) {
        let size = (self.buf.len() * 2).min(self.limit);
        self.buf.resize(size, 0);
    }

    /// One read into the free space (after [`ReadBuf::make_room`]): `read`
    /// fills what it is given and returns how much, which becomes unread.
    #[inline]
    pub fn read_from(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let free = self.buf.len() - self.end;
        let n = read(&mut self.buf[self.end..])?;
        self.end += n;
        self.grow = n == free;
        self.quiet = n < free / 4;
        Ok(n)
    }

    /// Gives the buffer back if everything read was consumed and the
    /// reader is not streaming (its last read was short and small), so
    /// that memory follows busy readers, not connected ones. True if it
    /// did.
    pub fn release_if_quiet(&mut self) -> bool {
        if self.is_drained() && !self.buf.is_empty() && !self.grow && self.quiet {
            self.release();
            return true;
        }
        false
    }

    /// Gives the buffer back when it holds nothing unread; one holding the
    /// start of a unit (a record) keeps it in the smallest buffer instead
    /// (a burst may have grown it to `limit`): else a reader could hold
    /// that much while idle.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.grow = false;
        if self.is_drained() {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() > self.first {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(self.end.max(self.first));
            self.buf.shrink_to_fit();
        }
    }

    /// Hands the buffer over whole (a batch adopts it) for `fresh`, which
    /// takes the bytes from position `keep` (at most the unread start) to
    /// the end at its front, sized like the old one (it is zeroed only
    /// where it never held bytes). Positions from `keep` on move down by
    /// `keep`.
    pub fn exchange(&mut self, mut fresh: Vec<u8>, keep: usize) -> Vec<u8> {
        debug_assert!(keep <= self.start);
        fresh.resize(self.buf.len(), 0);
        fresh[..self.end - keep].copy_from_slice(&self.buf[keep..self.end]);
        self.start -= keep;
        self.end -= keep;
        std::mem::replace(&mut self.buf, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(buf: &mut ReadBuf, bytes: &[u8]) -> usize {
        buf.make_room(0);
        buf.read_from(|free| {
            let n = bytes.len().min(free.len());
            free[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        })
        .unwrap()
    }

    #[test]
    fn nothing_is_allocated_until_a_read_and_a_quiet_reader_gives_it_back() {
        let mut buf = ReadBuf::new(8, 64);
        assert_eq!(buf.size(), 0);
        assert_eq!(fill(&mut buf, b"a"), 1);
        assert_eq!(buf.size(), 8);
        assert_eq!(buf.unread(), b"a");
        assert!(!buf.release_if_quiet(), "not drained");
        buf.consume(1);
        assert!(buf.release_if_quiet());
        assert_eq!(buf.size(), 0);
    }

    #[test]
    fn reads_that_fill_it_double_it_up_to_the_limit_and_unread_bytes_move_along() {
        let mut buf = ReadBuf::new(8, 32);
        assert_eq!(fill(&mut buf, &[1; 100]), 8);
        assert!(buf.should_read(), "a full read may have left more");
        buf.consume(6);
        assert_eq!(fill(&mut buf, &[2; 100]), 14);
        assert_eq!(buf.size(), 16);
        assert_eq!(&buf.unread()[..2], &[1, 1]);
        assert_eq!(fill(&mut buf, &[3; 100]), 16);
        assert_eq!(fill(&mut buf, &[4; 100]), 0, "full at the limit");
        assert_eq!(buf.size(), 32);
        assert!(!buf.release_if_quiet(), "not drained");
    }

    #[test]
    fn a_unit_needed_whole_grows_it_and_a_release_keeps_its_start_small() {
        let mut buf = ReadBuf::new(8, 64);
        fill(&mut buf, &[7; 5]);
        buf.make_room(20);
        assert_eq!(buf.size(), 20);
        buf.release();
        assert_eq!(buf.unread(), &[7; 5]);
        assert!(buf.size() <= 8 && buf.allocated() <= 8);
    }

    #[test]
    fn an_exchange_carries_the_unread_bytes_into_the_fresh_buffer() {
        let mut buf = ReadBuf::new(8, 64);
        fill(&mut buf, b"line\npar");
        buf.consume(5);
        let old = buf.exchange(Vec::new(), 5);
        assert_eq!(&old[..5], b"line\n");
        assert_eq!(buf.unread(), b"par");
        assert_eq!(buf.start(), 0);
        assert_eq!(buf.size(), 8);
        // Kept from before the unread start: those bytes come along.
        buf.consume(1);
        buf.exchange(Vec::new(), 0);
        assert_eq!(buf.bytes(0..3), b"par");
        assert_eq!(buf.unread(), b"ar");
    }
}
