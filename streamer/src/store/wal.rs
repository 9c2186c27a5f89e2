//! The write-ahead log of the embedded mode, where no Kafka log can replay what was not yet
//! flushed: every batch is appended (and fsynced) before it is applied, and the log is
//! emptied once a flush has made its batches durable.
//!
//! Frame: `u32 len (LE) | u64 FNV-1a of the bytes (LE) | len bytes of protobuf
//! TelemetryBatch`. A torn or garbled tail (power loss mid-write) ends the replay there and
//! is cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use prost::Message as _;
use telemetry_wire::wire::TelemetryBatch;

use super::history::StoreError;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An open write-ahead log.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
}

impl Wal {
    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Opens (or creates) the log at `path` and returns the batches it holds, in order.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<TelemetryBatch>), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(Self::err(path))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(Self::err(path))?;
        let mut batches = Vec::new();
        let mut at = 0usize;
        while let Some(frame) = buf.get(at..at + 12) {
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            let sum = u64::from_le_bytes(frame[4..12].try_into().unwrap_or_default());
            let Some(body) = buf.get(at + 12..at + 12 + len) else {
                break;
            };
            if fnv1a(body) != sum {
                break;
            }
            let Ok(batch) = TelemetryBatch::decode(body) else {
                break;
            };
            batches.push(batch);
            at += 12 + len;
        }
        if at < buf.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = buf.len() - at,
                "write-ahead log ends in a torn frame (power loss?); cut off"
            );
            file.set_len(at as u64).map_err(Self::err(path))?;
        }
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
            },
            batches,
        ))
    }

    /// Appends `batch` and fsyncs.
    pub(crate) fn append(&mut self, batch: &TelemetryBatch) -> Result<(), StoreError> {
        let body = batch.encode_to_vec();
        let len = u32::try_from(body.len())
            .map_err(|_| StoreError::Other("batch too large for the write-ahead log".into()))?;
        let mut frame = Vec::with_capacity(12 + body.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&fnv1a(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        self.file.write_all(&frame).map_err(Self::err(&self.path))?;
        self.file.sync_data().map_err(Self::err(&self.path))
    }

    /// Empties the log (its batches are durable elsewhere now).
    pub(crate) fn reset(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(Self::err(&self.path))?;
        self.file.sync_all().map_err(Self::err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: i64) -> TelemetryBatch {
        TelemetryBatch {
            node: format!("node-{n}"),
            collected_at_ms: n,
            ..Default::default()
        }
    }

    #[test]
    fn batches_come_back_in_order_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        {
            let (mut w, old) = Wal::open(&path).unwrap();
            assert!(old.is_empty());
            for n in 0..3 {
                w.append(&batch(n)).unwrap();
            }
        }
        // A torn frame: a header promising more than is there.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut w, got) = Wal::open(&path).unwrap();
        assert_eq!(got, (0..3).map(batch).collect::<Vec<_>>());
        w.append(&batch(3)).unwrap();
        drop(w);
        let (mut w, got) = Wal::open(&path).unwrap();
        assert_eq!(got.len(), 4);
        w.reset().unwrap();
        drop(w);
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }
}
