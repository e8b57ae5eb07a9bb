//! The stdout sink: each message followed by LF, written in large
//! vectored writes to the process's standard output.

use std::io;

use super::{Sink, write_vectored_all};
use crate::queue::Batch;

#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write(&mut self, batches: &[Batch]) -> io::Result<()> {
        let bufs: Vec<&[u8]> = batches.iter().map(Batch::as_lines).collect();
        let mut out = io::stdout().lock();
        // A retry after a failure may repeat part of a write: stdout has
        // no position to resume at, and duplicates beat losses here.
        let mut done = 0;
        write_vectored_all(&mut out, &bufs, &mut done)?;
        io::Write::flush(&mut out)
    }
}
