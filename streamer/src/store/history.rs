//! The durable history seam: [`History`], what the streamer and the embedded mode write
//! through and range queries read from.

use telemetry_wire::wire::{GpuInfo, GpuSample, TelemetryBatch};

use super::chunk::ChunkError;
use super::reading::Reading;
use super::rollup::{Agg, AggRow};

/// What one [`History::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Samples new to the store.
    pub inserted: u64,
    /// Samples it already had (same GPU and time): ignored.
    pub duplicates: u64,
    /// Samples older than the retention window: ignored.
    pub expired: u64,
}

/// Storage errors. Each keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or opened.
    #[error("cannot open the store in {dir}: {source}")]
    Open {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The embedded database failed.
    #[error("store database: {0}")]
    Db(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file of the store (the write-ahead log) failed.
    #[error("store file {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The remote history (VictoriaMetrics, remote write) did not take the batch.
    #[error("remote history: {0}")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored bytes do not decode.
    #[error("corrupt data in series {series}: {source}")]
    Corrupt {
        /// The series id.
        series: u32,
        /// Why.
        #[source]
        source: super::chunk::ChunkError,
    },
    /// An injected or otherwise unclassified failure.
    #[error("store failed: {0}")]
    Other(String),
}

impl StoreError {
    /// Wraps a database error.
    pub fn db(e: impl Into<redb::Error>) -> Self {
        Self::Db(Box::new(e.into()))
    }
}

/// One GPU as the history knows it: what the latest index is rebuilt from on start.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState {
    /// Inventory.
    pub info: GpuInfo,
    /// Collection time of the batch `info` came from.
    pub info_at_ms: i64,
    /// The newest sample (its `uuid` is empty).
    pub latest: Option<GpuSample>,
    /// Samples held.
    pub sample_count: u64,
}

/// What a sweep dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Samples dropped.
    pub samples: u64,
    /// GPUs whose count changed, with the new count.
    pub counts: Vec<(String, u64)>,
    /// GPUs with nothing left (forgotten).
    pub gone: Vec<String>,
    /// Compaction stopped at its time budget with work left: sweep again soon.
    pub more: bool,
}

/// One block of a range read ([`History::range_blocks`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Readings, oldest first.
    Readings(Vec<Reading>),
    /// A stored chunk as it is on disk ([`super::chunk`] format): `count` readings, every
    /// one of them in the range asked for.
    Encoded {
        /// The chunk's bytes.
        bytes: Vec<u8>,
        /// How many readings it holds.
        count: usize,
    },
}

impl Block {
    /// The block's readings (decoding an encoded chunk).
    ///
    /// # Errors
    /// [`ChunkError`] for bytes that are not a valid chunk.
    pub fn into_readings(self) -> Result<Vec<Reading>, ChunkError> {
        match self {
            Self::Readings(rs) => Ok(rs),
            Self::Encoded { bytes, .. } => super::chunk::decode(&bytes),
        }
    }
}

/// A durable, idempotent telemetry history.
///
/// Contract:
/// - [`History::apply`] is idempotent on (GPU uuid, sample time).
/// - A partition offset passed to [`History::cover`] becomes durable (returned by
///   [`History::resume_offset`] after a restart) only together with every sample applied
///   before the call: a crash never leaves an offset covering data that is not on disk.
/// - Every method blocks (disk I/O): call it from a blocking thread, not an async worker.
pub trait History: Send + Sync + 'static {
    /// Stores a verified batch. Returns what it did and, per sample of the batch, whether
    /// it was new.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails: the caller must retry the batch (it is
    /// idempotent) and must not cover its offset.
    fn apply(&self, batch: &TelemetryBatch) -> Result<(Applied, Vec<bool>), StoreError>;

    /// Whether [`History::apply_all`] does better than one [`History::apply`] per batch
    /// (one remote request for many); then it is all or nothing.
    fn writes_in_bulk(&self) -> bool {
        false
    }

    /// [`History::apply`] of each of `batches`, in order; a history that can do them in one
    /// go (one remote request) does. On an error the caller retries them all (they are
    /// idempotent).
    ///
    /// # Errors
    /// [`StoreError`] as for [`History::apply`].
    fn apply_all(
        &self,
        batches: &[TelemetryBatch],
    ) -> Result<Vec<(Applied, Vec<bool>)>, StoreError> {
        batches.iter().map(|b| self.apply(b)).collect()
    }

    /// Records that everything before `next` (partition → next offset) is applied. Durable
    /// with the next [`History::flush`]. A lower offset than before replaces it (the topic
    /// was recreated).
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be recorded.
    fn cover(&self, next: &[(i32, i64)]) -> Result<(), StoreError>;

    /// The next offset to read in `partition`, as durably covered; `None` if never.
    fn resume_offset(&self, partition: i32) -> Option<i64>;

    /// Whether this history keeps the offsets it covered (then the consumer resumes where
    /// [`History::resume_offset`] says). One that does not (a remote history shared by
    /// several streamers) resumes at the consumer group's committed offsets.
    fn keeps_offsets(&self) -> bool {
        true
    }

    /// Whether the history holds `uuid` (a range read of it would not be `None`).
    ///
    /// # Errors
    /// [`StoreError`] when reading fails.
    fn knows(&self, uuid: &str) -> Result<bool, StoreError> {
        Ok(self.range(uuid, 0, 0, 0)?.is_some())
    }

    /// Readings of `uuid` with `start_ms <= t < end_ms`, oldest first, at most `limit`;
    /// the flag says whether more matched. `None` when the GPU is unknown.
    ///
    /// # Errors
    /// [`StoreError`] when reading fails.
    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Option<(Vec<Reading>, bool)>, StoreError>;

    /// [`History::range`] in blocks, for streaming a long range: `emit` gets the readings
    /// oldest first, a block at a time (about one stored chunk each), and returns `false` to
    /// stop early. With `encoded`, a stored chunk that lies wholly in the range may come as
    /// its stored bytes ([`Block::Encoded`]): a server passes it on without decoding it.
    /// Returns whether more than `limit` matched; `None` when the GPU is unknown.
    ///
    /// # Errors
    /// [`StoreError`] when reading fails (some blocks may have been emitted).
    fn range_blocks(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
        encoded: bool,
        emit: &mut dyn FnMut(Block) -> bool,
    ) -> Result<Option<bool>, StoreError>;

    /// Aggregates of `uuid`'s readings in buckets `step_ms` wide (aligned to multiples of
    /// the step since the epoch; the range is widened to whole buckets), oldest first, at
    /// most `limit` buckets; the flag says whether there were more. Raw readings in the
    /// window, plus the rollup tiers whose bucket width divides the step (they hold what
    /// aged out of raw retention). `None` when the GPU is unknown.
    ///
    /// # Errors
    /// [`StoreError`] when reading fails.
    fn aggregate(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: usize,
    ) -> Result<Option<(Vec<AggRow>, bool)>, StoreError>;

    /// Makes everything applied and covered so far durable; returns how many readings it
    /// wrote. Cheap when nothing is pending.
    ///
    /// # Errors
    /// [`StoreError`]; nothing is lost, the next flush tries again.
    fn flush(&self) -> Result<u64, StoreError>;

    /// Whether enough is pending that a flush is due.
    fn flush_due(&self) -> bool;

    /// Drops what is past retention as of `now_ms`.
    ///
    /// # Errors
    /// [`StoreError`] when the sweep cannot be written.
    fn sweep(&self, now_ms: i64) -> Result<Swept, StoreError>;

    /// Every GPU held, for rebuilding the latest index.
    ///
    /// # Errors
    /// [`StoreError`] when reading fails.
    fn series(&self) -> Result<Vec<SeriesState>, StoreError>;
}

impl std::fmt::Debug for dyn History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("History")
    }
}
