//! The file sink: appends each message followed by LF to one path,
//! creating it with mode 0640, and reopens the path on SIGHUP so that
//! logrotate can move the file away.
//!
//! Buffered: the sink thread holds batches until 1 MiB is gathered or the
//! oldest has waited `flush_interval` ([`Sink::linger`]), then writes them
//! with one vectored write; at shutdown it writes at once. A failed write
//! resumes where it stopped, so no byte is written twice.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::info;

use super::{Sink, write_vectored_all};
use crate::queue::Batch;

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Bytes of the current (failed) batch list already written.
    done: usize,
    /// `flush_interval`: the longest a message waits in floodwall.
    flush_interval: Duration,
}

impl FileSink {
    pub fn open(path: &Path, flush_interval: Duration) -> io::Result<FileSink> {
        Ok(FileSink {
            path: path.to_path_buf(),
            file: open_append(path)?,
            done: 0,
            flush_interval,
        })
    }
}

impl FileSink {
    /// Whether the path can be opened for appending (`--check-config`);
    /// a file this creates is removed again.
    pub fn probe(path: &Path) -> io::Result<()> {
        let existed = path.exists();
        open_append(path)?;
        if !existed {
            std::fs::remove_file(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Sink for FileSink {
    fn write(&mut self, batches: &[Batch]) -> io::Result<()> {
        let bufs: Vec<&[u8]> = batches.iter().map(Batch::as_lines).collect();
        write_vectored_all(&mut self.file, &bufs, &mut self.done)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        // A retry after a reopen in the middle of an outage writes the
        // whole batch to the new file: the old one may end with a torn
        // line, the new one never starts with one (at-least-once).
        self.done = 0;
        info!("file sink reopened path={}", self.path.display());
        Ok(())
    }

    fn linger(&self) -> Option<Duration> {
        Some(self.flush_interval)
    }
}
