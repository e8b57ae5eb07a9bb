//! The delivered position: the place of the first record not yet known
//! delivered, kept durable in the file `position`.
//!
//! The file has two slots (at offsets 0 and 512), each `magic | generation
//! | segment | offset | crc32c`. A write overwrites the *older* slot in
//! place and fdatasyncs; reading takes the valid slot with the higher
//! generation. A write torn by a power cut spoils only the slot being
//! written, and the other one still holds the previous position, so the
//! position only ever moves forward or stays.
//!
//! Why not write-temp-and-rename: rename needs a new data block for the
//! temp file, and a spool that filled its disk must still be able to
//! record progress, or it could never delete a segment and free the disk
//! (a deadlock). Overwriting the two slots in place needs no new space
//! after the file's creation, and no directory sync.
//!
//! This module owns that file only; what the position means is mod.rs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::queue::SpoolPos;

pub const FILE: &str = "position";
const MAGIC: u32 = 0xF10D_9051;
const SLOT: u64 = 512;
const SLOT_LEN: usize = 32;

#[derive(Debug)]
pub struct PositionFile {
    file: File,
    generation: u64,
}

fn encode(generation: u64, pos: SpoolPos) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&generation.to_le_bytes());
    b[12..20].copy_from_slice(&pos.segment.to_le_bytes());
    b[20..28].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8; SLOT_LEN]) -> Option<(u64, SpoolPos)> {
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes"));
    (magic == MAGIC && crc == crc32c::crc32c(&b[..28])).then(|| {
        (
            word(4),
            SpoolPos {
                segment: word(12),
                offset: word(20),
            },
        )
    })
}

impl PositionFile {
    /// Opens (or creates) the position file in `dir`; returns the last
    /// durable position, `None` when the file is new or both slots are
    /// unreadable (then everything on disk is replayed: at-least-once).
    pub fn open(dir: &Path) -> io::Result<(PositionFile, Option<SpoolPos>)> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(super::segment::SPOOL_FILE_MODE)
            .open(&path)?;
        let mut best: Option<(u64, SpoolPos)> = None;
        for slot in 0..2 {
            let mut b = [0u8; SLOT_LEN];
            if file.read_exact_at(&mut b, slot * SLOT).is_ok()
                && let Some((g, pos)) = decode(&b)
                && best.is_none_or(|(bg, _)| g > bg)
            {
                best = Some((g, pos));
            }
        }
        let mut pf = PositionFile {
            file,
            generation: best.map_or(0, |(g, _)| g),
        };
        // Give the file its full size now, so that later writes only
        // overwrite (see the module comment).
        if pf.file.metadata()?.len() < SLOT + SLOT_LEN as u64 {
            let pos = best.map_or(
                SpoolPos {
                    segment: 0,
                    offset: 0,
                },
                |(_, p)| p,
            );
            pf.write(pos)?;
            pf.write(pos)?;
            super::segment::sync_dir(dir)?;
        }
        Ok((pf, best.map(|(_, p)| p)))
    }

    /// Makes `pos` the durable position (overwrite the older slot, sync).
    pub fn write(&mut self, pos: SpoolPos) -> io::Result<()> {
        let generation = self.generation + 1;
        let slot = generation % 2;
        self.file
            .write_all_at(&encode(generation, pos), slot * SLOT)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64) -> SpoolPos {
        SpoolPos { segment, offset }
    }

    #[test]
    fn the_last_written_position_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, start) = PositionFile::open(dir.path()).unwrap();
        assert_eq!(start, None);
        for i in 1..=5 {
            f.write(pos(i, i * 100)).unwrap();
        }
        drop(f);
        let (_, got) = PositionFile::open(dir.path()).unwrap();
        assert_eq!(got, Some(pos(5, 500)));
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_previous_position() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = PositionFile::open(dir.path()).unwrap();
        f.write(pos(1, 10)).unwrap();
        f.write(pos(2, 20)).unwrap();
        let slot = f.generation % 2;
        drop(f);
        // Spoil the newest slot, as a torn write would.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all_at(&[0xff; 7], slot * SLOT + 10).unwrap();
        let (_, got) = PositionFile::open(dir.path()).unwrap();
        assert_eq!(got, Some(pos(1, 10)));
    }

    #[test]
    fn a_deleted_or_zeroed_file_means_no_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), [0u8; 1024]).unwrap();
        let (_, got) = PositionFile::open(dir.path()).unwrap();
        assert_eq!(got, None);
    }
}
