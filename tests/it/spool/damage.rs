//! Damage found at start, through the real binary: a cut last record (at
//! a sample of offsets; every offset is covered by the unit tests in
//! src/spool/recovery.rs), a flipped byte mid-segment, a zero-filled tail,
//! a deleted or garbled position file. Each start succeeds, counts what it
//! dropped in `spool_corrupt`, and delivers the rest, in order.
//! Also: a spool directory that cannot be created is exit 3.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::spool::{config, fill_spool, per_client};
use crate::support::{Daemon, assert_balanced, num, run_bin_timeout};
use floodwall::spool::record::{self, Parsed};

const CONNS: usize = 6;
const PER_CONN: usize = 50;

/// The pristine spool, filled once per test.
fn filled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        fill_spool(dir.path(), CONNS, PER_CONN),
        (CONNS * PER_CONN) as u64
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The one segment holding records, and each record's (start, count).
fn records(spool: &Path) -> (PathBuf, Vec<(usize, u32)>) {
    let mut segs: Vec<PathBuf> = fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .filter(|p| fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(segs.len(), 1, "expected one non-empty segment: {segs:?}");
    let seg = segs.pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match record::parse(&bytes[at..]) {
            Parsed::Record { count, len } => {
                out.push((at, count));
                at += len;
            }
            other => panic!("pristine spool damaged at {at}: {other:?}"),
        }
    }
    (seg, out)
}

/// Starts on `spool` with a file sink, waits for the spool to empty,
/// stops; returns the final stats and the delivered sequence numbers.
fn drain(spool: &Path) -> (support::StatsLine, Vec<usize>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let sink = format!("type = \"file\"\npath = \"{}\"", out.display());
    let mut d = Daemon::start_in(dir, &config(&sink, spool, ""));
    d.wait_stats(Duration::from_secs(20), |s| num(s, "queue_depth") == 0)
        .unwrap_or_else(|| panic!("spool not drained; log:\n{}", d.log_text()));
    assert!(d.stop(Duration::from_secs(15)).success());
    let last = d.final_stats();
    assert_balanced(&last);
    let text = fs::read_to_string(&out).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let seqs = per_client(&lines).remove(&0).unwrap_or_default();
    (last, seqs, d.log_text())
}

/// Damages a copy of `pristine` with `damage` and checks the start:
/// `lost` messages counted corrupt, every other one delivered in order.
fn check(pristine: &Path, what: &str, lost: &[usize], damage: impl FnOnce(&Path)) {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    copy_dir(pristine, &spool);
    damage(&spool);
    let (last, seqs, log) = drain(&spool);
    let total = CONNS * PER_CONN;
    let expected: Vec<usize> = (0..total).filter(|s| !lost.contains(s)).collect();
    assert_eq!(seqs, expected, "{what}: delivered; log:\n{log}");
    assert_eq!(num(&last, "recovered"), expected.len() as u64, "{what}");
    assert_eq!(num(&last, "delivered"), expected.len() as u64, "{what}");
    let corrupt = num(&last, "spool_corrupt");
    if lost.is_empty() {
        assert_eq!(corrupt, 0, "{what}");
    } else {
        // The damaged record's header may itself be unreadable: then its
        // loss counts as 1 (at least one message), never as nothing.
        assert!(
            corrupt == lost.len() as u64 || corrupt == 1,
            "{what}: spool_corrupt={corrupt}"
        );
    }
}

#[test]
fn every_kind_of_damage_is_survived_and_counted() {
    let pristine = filled();
    let (seg, recs) = records(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    let size = fs::metadata(&seg).unwrap().len() as usize;
    let (last_start, last_count) = *recs.last().unwrap();
    let last_msgs: Vec<usize> =
        (CONNS * PER_CONN - last_count as usize..CONNS * PER_CONN).collect();
    let last_len = size - last_start;

    for cut in [1, 8, 12, 16, 17, last_len / 2, last_len - 1] {
        check(
            pristine.path(),
            &format!("cut {cut} bytes into the last record"),
            &last_msgs,
            |s| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(s.join(&name))
                    .unwrap();
                f.set_len((last_start + cut) as u64).unwrap();
            },
        );
    }

    let (mid_start, mid_count) = recs[recs.len() / 2];
    let before: usize = recs[..recs.len() / 2].iter().map(|r| r.1 as usize).sum();
    let mid_msgs: Vec<usize> = (before..before + mid_count as usize).collect();
    check(
        pristine.path(),
        "a flipped byte mid-segment",
        &mid_msgs,
        |s| {
            let mut b = fs::read(s.join(&name)).unwrap();
            b[mid_start + 40] ^= 0x20;
            fs::write(s.join(&name), b).unwrap();
        },
    );

    check(pristine.path(), "a zero-filled tail", &last_msgs, |s| {
        let mut b = fs::read(s.join(&name)).unwrap();
        b[last_start + 20..].fill(0);
        b.extend_from_slice(&[0u8; 4096]);
        fs::write(s.join(&name), b).unwrap();
    });

    check(pristine.path(), "a deleted position file", &[], |s| {
        fs::remove_file(s.join("position")).unwrap();
    });
    check(pristine.path(), "a garbled position file", &[], |s| {
        fs::write(s.join("position"), [0x5a; 1024]).unwrap();
    });
}

#[test]
fn a_mid_file_damage_leaves_a_copy_in_corrupt() {
    let pristine = filled();
    let (seg, recs) = records(pristine.path());
    let mut b = fs::read(&seg).unwrap();
    b[recs[1].0 + 30] ^= 0x01;
    fs::write(&seg, &b).unwrap();
    let (last, _, _) = drain(pristine.path());
    assert_eq!(num(&last, "spool_corrupt"), u64::from(recs[1].1));
    let kept = pristine
        .path()
        .join("corrupt")
        .join(seg.file_name().unwrap());
    assert_eq!(fs::read(kept).unwrap(), b, "the damaged segment as found");
}

#[test]
fn a_spool_dir_that_cannot_be_created_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let cfg = dir.path().join("floodwall.toml");
    let sink = "type = \"null\"";
    fs::write(&cfg, config(sink, &file.join("spool"), "")).unwrap();
    let (code, _, err) = run_bin_timeout(
        &["--config", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    )
    .expect("exits at once");
    assert_eq!(code, 3, "stderr: {err}");
    assert!(
        err.contains("spool") && err.contains("a-file"),
        "stderr: {err}"
    );
}
