//! Segment files: the spool's data, append-only, one file per
//! `segment_bytes` or so, named by a sequence number that only grows
//! (`00000000000000000042.seg`), so name order is write order.
//!
//! The writer appends whole records; a failed append (disk full) is cut
//! back to the last whole record, so a segment on disk only ever ends
//! with a torn record after a crash. Readers read records by offset with
//! positioned reads, never past what the writer has published.
//!
//! This module knows files and records; when to sync, roll or delete is
//! the spool's business (mod.rs).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::record::{self, Parsed};
use crate::queue::Batch;

pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(file_name(seq))
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// fsync of a directory: makes file creations, renames and removals in
/// it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being appended to.
#[derive(Debug)]
pub struct SegmentWriter {
    pub seq: u64,
    file: File,
    /// Bytes of whole records written.
    pub len: u64,
}

/// Mode of every file the spool creates (segments, position, identity).
pub const SPOOL_FILE_MODE: u32 = 0o640;

impl SegmentWriter {
    /// Creates segment `seq` (which must not exist). The directory entry
    /// is made durable by the caller's next directory sync.
    pub fn create(dir: &Path, seq: u64) -> io::Result<SegmentWriter> {
        // 0640, as the file sink's output: messages are not for everyone.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SPOOL_FILE_MODE)
            .open(path(dir, seq))?;
        Ok(SegmentWriter { seq, file, len: 0 })
    }

    /// Appends one encoded record. On failure (ENOSPC, EIO) the file is
    /// cut back to its last whole record, so the next attempt (or the
    /// next start) sees no half record from us.
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        match self.file.write_all_at(record, self.len) {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// fdatasync: every record appended so far survives a power loss.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Reads records of one segment by offset.
#[derive(Debug)]
pub struct SegmentReader {
    pub seq: u64,
    file: File,
    header: [u8; record::HEADER],
    buf: Vec<u8>,
}

/// What reading at an offset gave.
#[derive(Debug)]
pub enum Read {
    /// A record: its batch (no messages for a skip record) and length.
    Record(Batch, u64),
    /// The bytes there do not form a record.
    Damaged(Option<u32>),
}

impl SegmentReader {
    pub fn open(dir: &Path, seq: u64) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            seq,
            file: File::open(path(dir, seq))?,
            header: [0; record::HEADER],
            buf: Vec::new(),
        })
    }

    /// Reads the record at `offset`, which the writer has published
    /// whole (so a short read is damage, not a race).
    pub fn read_at(&mut self, offset: u64) -> io::Result<Read> {
        self.file.read_exact_at(&mut self.header, offset)?;
        let len = match record::parse(&self.header) {
            Parsed::Short { claimed: Some(_) } | Parsed::Bad { claimed: Some(_) } => {
                u32::from_le_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]) as usize
            }
            Parsed::Record { .. } => 0,
            Parsed::Short { claimed: None } | Parsed::Bad { claimed: None } => {
                return Ok(Read::Damaged(None));
            }
        };
        self.buf.clear();
        self.buf.extend_from_slice(&self.header);
        self.buf.resize(record::HEADER + len, 0);
        self.file.read_exact_at(
            &mut self.buf[record::HEADER..],
            offset + record::HEADER as u64,
        )?;
        match record::parse(&self.buf) {
            Parsed::Record { len, .. } => match record::decode(&self.buf) {
                Some(batch) => Ok(Read::Record(batch, len as u64)),
                None => Ok(Read::Damaged(None)),
            },
            Parsed::Bad { claimed } | Parsed::Short { claimed } => Ok(Read::Damaged(claimed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(msgs: &[&str]) -> Batch {
        let mut b = Batch::new();
        for m in msgs {
            b.push(m.as_bytes());
        }
        b
    }

    #[test]
    fn segments_are_created_0640_like_the_file_sink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        SegmentWriter::create(dir.path(), 1).unwrap();
        let mode = fs::metadata(path(dir.path(), 1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{mode:o}");
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), 7).unwrap();
        let mut buf = Vec::new();
        let batches = [batch(&["a", "bb"]), batch(&["ccc"]), batch(&["d"])];
        for b in &batches {
            record::encode(b, &mut buf);
            w.append(&buf).unwrap();
        }
        w.sync().unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![7]);
        let mut r = SegmentReader::open(dir.path(), 7).unwrap();
        let mut at = 0;
        for b in &batches {
            match r.read_at(at).unwrap() {
                Read::Record(got, len) => {
                    assert_eq!(&got, b);
                    at += len;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, w.len);
    }

    #[test]
    fn a_segment_is_never_created_twice() {
        let dir = tempfile::tempdir().unwrap();
        SegmentWriter::create(dir.path(), 1).unwrap();
        assert!(SegmentWriter::create(dir.path(), 1).is_err());
    }

    #[test]
    fn list_ignores_other_files_and_sorts_by_number() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [10, 2, 33] {
            SegmentWriter::create(dir.path(), seq).unwrap();
        }
        fs::write(dir.path().join("position"), b"x").unwrap();
        fs::write(dir.path().join("junk.seg.tmp"), b"x").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![2, 10, 33]);
    }
}
