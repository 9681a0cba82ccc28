//! `--ack-log`: one line per acknowledged record, so that a crash test can check that
//! every record the server acknowledged is still in the log after a restart.
//!
//! Each line is `topic partition offset key value_crc32`: the topic name, the partition
//! number, the record's offset (decimal), its key as text (the load generator's keys are
//! ASCII, `key-000123`), and `crc32fast::hash` of its value in decimal. For example
//! `loadgen 3 1041 key-000017 2893472810`. Topic names with whitespace are refused by
//! `Args::validate`, so fields never run together.
//!
//! When lines reach the file: all the lines of one acknowledged append are handed to the
//! kernel with one `write(2)` as soon as the acknowledgement arrives, before the client
//! starts its next cycle; no user-space buffer outlives an acknowledgement. So a `kill -9`
//! of the load generator (or of the server) loses no line of an acknowledged record; only a
//! crash of the whole machine could, and the file is not fsynced because a crash test kills
//! processes, not the machine. Every executor opens the file in append mode (`O_APPEND`),
//! so each write lands whole at the end, never interleaved inside another's lines.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use cairn_engine::core::Offset;

/// One executor's handle on the ack log.
#[derive(Debug)]
pub struct AckLog {
    file: File,
    /// The lines of one acknowledged batch, reused between batches.
    batch_lines: Vec<u8>,
}

/// Empties (or creates) the ack log at `path` before a run, so that it holds only this
/// run's acknowledgements.
pub fn create(path: &Path) -> anyhow::Result<()> {
    File::create(path).with_context(|| format!("creating --ack-log {}", path.display()))?;
    Ok(())
}

impl AckLog {
    /// Opens the ack log at `path`, made by [`create`], for appending.
    pub fn open(path: &Path) -> anyhow::Result<AckLog> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening --ack-log {}", path.display()))?;
        Ok(AckLog {
            file,
            batch_lines: Vec::new(),
        })
    }

    /// Writes the lines of one acknowledged batch: record `i` of `values` is at
    /// `base_offset + i`, every record has `key`.
    pub fn record_batch(
        &mut self,
        topic: &str,
        partition: u32,
        base_offset: Offset,
        key: &[u8],
        values: &[Vec<u8>],
    ) -> std::io::Result<()> {
        self.batch_lines.clear();
        format_lines(
            &mut self.batch_lines,
            topic,
            partition,
            base_offset,
            key,
            values,
        );
        self.file.write_all(&self.batch_lines)
    }
}

/// Appends the lines of one batch to `out`.
fn format_lines(
    out: &mut Vec<u8>,
    topic: &str,
    partition: u32,
    base_offset: Offset,
    key: &[u8],
    values: &[Vec<u8>],
) {
    let key = String::from_utf8_lossy(key);
    for (index, value) in (0u64..).zip(values) {
        let offset = base_offset.plus(index);
        let crc = crc32fast::hash(value);
        // Writing to a Vec cannot fail.
        let _ = writeln!(out, "{topic} {partition} {offset} {key} {crc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_format() {
        let mut out = Vec::new();
        let values = [b"first".to_vec(), b"second".to_vec()];
        format_lines(&mut out, "loadgen", 3, Offset(1041), b"key-000017", &values);
        let expected = format!(
            "loadgen 3 1041 key-000017 {}\nloadgen 3 1042 key-000017 {}\n",
            crc32fast::hash(b"first"),
            crc32fast::hash(b"second")
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn every_acknowledged_batch_is_in_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        create(&path).unwrap();
        let mut first = AckLog::open(&path).unwrap();
        let mut second = AckLog::open(&path).unwrap();
        first
            .record_batch("t", 0, Offset(0), b"key-000000", &[b"a".to_vec()])
            .unwrap();
        second
            .record_batch("t", 1, Offset(5), b"key-000001", &[b"b".to_vec()])
            .unwrap();
        // Read while both handles are open: nothing waits in a buffer.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("t 0 0 key-000000 "));
        // A new run starts from an empty file.
        create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
