//! Start-up recovery: read every segment left by the last run, decide
//! what is still to deliver, and repair damage so that the daemon always
//! starts.
//!
//! For each segment, from the durable delivered position on:
//! - whole records count as `recovered` (they will be replayed);
//! - a damaged region followed by nothing valid is a torn tail (a crash
//!   mid-append, a cut or zero-filled end): the file is truncated there;
//! - a damaged region followed by a valid record is mid-file damage: the
//!   segment is copied whole to `dir/corrupt/` for inspection, then the
//!   region's first bytes are overwritten with a *skip record* of exactly
//!   the region's length, so every record before and after it is still
//!   replayed at the same offsets (the delivered position stays valid).
//!
//! Either way the messages of the damaged region are counted
//! `spool_corrupt` (the count its header claims if it is readable, else
//! 1). Each repair is idempotent: a crash in the middle of one finds the
//! same damage at the next start and does it again. Segments wholly
//! before the position were delivered: they are removed (a removal that
//! a crash undid is harmless for the same reason).
//!
//! Nothing here stops the start but an I/O error on the directory itself
//! (which is exit 3, like an unwritable directory).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use log::{info, warn};

use super::record::{self, HEADER, MAGIC, Parsed};
use super::segment;
use crate::queue::SpoolPos;

/// A segment with something (maybe nothing) still to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    /// Where reading starts (the delivered position inside it, or 0).
    pub start: u64,
    /// File length after repair.
    pub len: u64,
    /// Messages from `start` on.
    pub messages: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub segments: Vec<Segment>,
    pub recovered: u64,
    pub corrupt: u64,
    /// Bytes of every segment kept.
    pub bytes: u64,
    /// Highest segment number seen (or the position's): new segments
    /// are numbered after it, so a record's place is never reused.
    pub last_seq: u64,
}

/// What one pass over a segment's bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub messages: u64,
    /// Damaged regions `[start, end)` followed by a valid record.
    pub regions: Vec<(usize, usize)>,
    /// Where a damaged tail starts (nothing valid after it).
    pub tail: Option<usize>,
    /// Messages lost to the damage.
    pub corrupt: u64,
}

/// Where the next valid record after `from` starts, if any.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    memchr::memmem::find_iter(bytes.get(from..)?, &magic)
        .map(|i| from + i)
        .find(|&at| matches!(record::parse(&bytes[at..]), Parsed::Record { .. }))
}

/// Scans `bytes` from `start` (a record boundary).
pub fn scan(bytes: &[u8], start: usize) -> Scan {
    let mut s = Scan::default();
    let mut at = start;
    while at < bytes.len() {
        let claimed = match record::parse(&bytes[at..]) {
            Parsed::Record { count, len } => {
                s.messages += u64::from(count);
                at += len;
                continue;
            }
            Parsed::Bad { claimed } | Parsed::Short { claimed } => claimed,
        };
        let lost = u64::from(claimed.unwrap_or(1).max(1));
        let Some(mut next) = resync(bytes, at + 1) else {
            s.tail = Some(at);
            s.corrupt += lost;
            break;
        };
        s.corrupt += lost;
        // A skip record needs HEADER bytes; a valid record found closer
        // than that (only a message that itself holds a record's bytes
        // could be) is swallowed into the damage.
        while next - at < HEADER {
            match record::parse(&bytes[next..]) {
                Parsed::Record { count, len } => {
                    s.corrupt += u64::from(count);
                    next += len;
                }
                _ => break,
            }
            if next >= bytes.len() {
                break;
            }
        }
        if next >= bytes.len() || next - at < HEADER {
            s.tail = Some(at);
            break;
        }
        s.regions.push((at, next));
        at = next;
    }
    s
}

/// Runs recovery over `dir` given the durable position.
pub fn recover(dir: &Path, position: Option<SpoolPos>) -> io::Result<Recovered> {
    let mut out = Recovered {
        last_seq: position.map_or(0, |p| p.segment),
        ..Recovered::default()
    };
    for seq in segment::list(dir)? {
        out.last_seq = out.last_seq.max(seq);
        let path = segment::path(dir, seq);
        if position.is_some_and(|p| seq < p.segment) {
            if let Err(e) = fs::remove_file(&path) {
                warn!(
                    "spool: cannot remove delivered segment {}: {e}",
                    path.display()
                );
            }
            continue;
        }
        let mut bytes = fs::read(&path)?;
        let start = match position {
            Some(p) if p.segment == seq => (p.offset as usize).min(bytes.len()),
            _ => 0,
        };
        let s = scan(&bytes, start);
        if !s.regions.is_empty() {
            set_aside(dir, seq);
            let file = OpenOptions::new().write(true).open(&path)?;
            for &(from, to) in &s.regions {
                let skip = record::encode_skip(&bytes[from + HEADER..to]);
                file.write_all_at(&skip[..HEADER], from as u64)?;
                bytes[from..from + HEADER].copy_from_slice(&skip[..HEADER]);
            }
            file.sync_data()?;
            warn!(
                "spool: segment {seq} damaged mid-file, skipped {} damaged region(s), copy kept in corrupt/",
                s.regions.len()
            );
        }
        if let Some(tail) = s.tail {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(tail as u64)?;
            file.sync_data()?;
            let cut = bytes.len() - tail;
            bytes.truncate(tail);
            warn!(
                "spool: segment {seq} had a torn tail, truncated at offset {tail} ({cut} bytes cut)"
            );
        }
        out.recovered += s.messages;
        out.corrupt += s.corrupt;
        out.bytes += bytes.len() as u64;
        out.segments.push(Segment {
            seq,
            start: start as u64,
            len: bytes.len() as u64,
            messages: s.messages,
        });
    }
    if out.recovered > 0 || out.corrupt > 0 {
        info!(
            "spool recovered messages={} corrupt={} segments={}",
            out.recovered,
            out.corrupt,
            out.segments.len()
        );
    }
    Ok(out)
}

/// Copies a damaged segment to `dir/corrupt/` (best effort: a full disk
/// must not stop the start, so failure is a warning).
fn set_aside(dir: &Path, seq: u64) {
    let corrupt = dir.join("corrupt");
    let to = corrupt.join(segment::file_name(seq));
    let copied = fs::create_dir_all(&corrupt)
        .and_then(|()| fs::copy(segment::path(dir, seq), &to))
        .and_then(|_| fs::File::open(&to)?.sync_all())
        .and_then(|()| segment::sync_dir(&corrupt));
    if let Err(e) = copied {
        warn!(
            "spool: cannot copy damaged segment {seq} to {}: {e}",
            to.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Batch;
    use crate::spool::segment::SegmentWriter;

    /// A segment of `n` records of 3 messages each; returns the record
    /// boundaries.
    fn write_segment(dir: &Path, seq: u64, n: usize) -> Vec<u64> {
        let mut w = SegmentWriter::create(dir, seq).unwrap();
        let mut buf = Vec::new();
        let mut bounds = vec![0];
        for i in 0..n {
            let mut b = Batch::new();
            for j in 0..3 {
                b.push(format!("record {i} message {j}").as_bytes());
            }
            record::encode(&b, &mut buf);
            w.append(&buf).unwrap();
            bounds.push(w.len);
        }
        bounds
    }

    fn seg_bytes(dir: &Path, seq: u64) -> Vec<u8> {
        fs::read(segment::path(dir, seq)).unwrap()
    }

    #[test]
    fn an_undamaged_spool_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 4);
        write_segment(dir.path(), 2, 2);
        let r = recover(dir.path(), None).unwrap();
        assert_eq!((r.recovered, r.corrupt, r.last_seq), (18, 0, 2));
        assert_eq!(r.segments.len(), 2);
    }

    #[test]
    fn the_position_skips_what_was_delivered_and_removes_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 4);
        let bounds = write_segment(dir.path(), 2, 4);
        let pos = SpoolPos {
            segment: 2,
            offset: bounds[1],
        };
        let r = recover(dir.path(), Some(pos)).unwrap();
        assert_eq!((r.recovered, r.corrupt), (9, 0));
        assert_eq!(segment::list(dir.path()).unwrap(), vec![2]);
        assert_eq!(r.segments[0].start, bounds[1]);
    }

    #[test]
    fn a_cut_at_every_offset_of_the_last_record_truncates_it() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = write_segment(dir.path(), 1, 3);
        let whole = seg_bytes(dir.path(), 1);
        let last = bounds[2] as usize;
        for cut in last + 1..whole.len() {
            fs::write(segment::path(dir.path(), 1), &whole[..cut]).unwrap();
            let r = recover(dir.path(), None).unwrap();
            assert_eq!(r.recovered, 6, "cut at {cut}");
            // Once the header is readable, its count (3) is known.
            let lost = if cut - last >= 12 { 3 } else { 1 };
            assert_eq!(r.corrupt, lost, "cut at {cut}");
            assert_eq!(seg_bytes(dir.path(), 1).len(), last, "cut at {cut}");
            // The repair holds: a second start finds nothing wrong.
            let again = recover(dir.path(), None).unwrap();
            assert_eq!((again.recovered, again.corrupt), (6, 0));
        }
    }

    #[test]
    fn a_zero_filled_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = write_segment(dir.path(), 1, 4);
        let mut bytes = seg_bytes(dir.path(), 1);
        let from = bounds[3] as usize + 5;
        bytes[from..].fill(0);
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(segment::path(dir.path(), 1), &bytes).unwrap();
        let r = recover(dir.path(), None).unwrap();
        // The zeros reach into the header's length: its count is not
        // believed, so the loss is counted as one message.
        assert_eq!((r.recovered, r.corrupt), (9, 1));
        assert_eq!(seg_bytes(dir.path(), 1).len() as u64, bounds[3]);
    }

    #[test]
    fn a_flipped_byte_mid_segment_skips_one_record_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = write_segment(dir.path(), 1, 5);
        let mut bytes = seg_bytes(dir.path(), 1);
        bytes[bounds[2] as usize + 20] ^= 0x01;
        fs::write(segment::path(dir.path(), 1), &bytes).unwrap();
        let r = recover(dir.path(), None).unwrap();
        assert_eq!((r.recovered, r.corrupt), (12, 3));
        assert!(
            dir.path()
                .join("corrupt")
                .join(segment::file_name(1))
                .exists()
        );
        // Same offsets, a valid skip record where the damage was.
        let fixed = seg_bytes(dir.path(), 1);
        assert_eq!(fixed.len(), bytes.len());
        let s = scan(&fixed, 0);
        assert_eq!((s.messages, s.corrupt, s.tail), (12, 0, None));
    }

    #[test]
    fn a_flipped_byte_in_every_position_of_a_header_still_starts() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = write_segment(dir.path(), 1, 3);
        let whole = seg_bytes(dir.path(), 1);
        for at in bounds[1] as usize..bounds[1] as usize + HEADER {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x80;
            fs::write(segment::path(dir.path(), 1), &bytes).unwrap();
            let r = recover(dir.path(), None).unwrap();
            assert_eq!(r.recovered, 6, "flip at {at}");
            assert!(r.corrupt >= 1, "flip at {at}");
        }
    }

    #[test]
    fn a_missing_position_replays_everything() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 3, 2);
        let r = recover(dir.path(), None).unwrap();
        assert_eq!(r.recovered, 6);
    }
}
