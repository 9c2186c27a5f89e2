//! Storage: a durable [`History`] (readings on disk, with the Kafka offsets they cover)
//! behind an in-memory [`LatestIndex`] (every GPU's inventory, newest sample and count),
//! joined by [`Store`].
//!
//! - [`history::History`]: the seam; [`disk::DiskHistory`] is the engine (redb + pco
//!   chunks, see its docs and docs/architecture.md).
//! - [`latest::LatestIndex`]: rebuilt from the history on start; the api's mirror keeps
//!   one too.
//! - [`reading::Reading`] and [`chunk`]: the storage layer's own sample type and codec.
//! - [`run_maintenance`]: the task that flushes and sweeps, with a final flush on shutdown.
//!
//! Everything in [`History`] blocks on disk: async code calls it through
//! `spawn_blocking` (or a writer thread); the latest index is memory only.

pub mod chunk;
pub mod disk;
pub mod history;
pub mod latest;
pub mod reading;
pub mod rollup;
mod segment;
mod wal;

use std::sync::Arc;
use std::time::Duration;

use telemetry_wire::wire::TelemetryBatch;

use crate::metrics::StreamerMetrics;
use std::sync::atomic::Ordering;

pub use disk::{DiskConfig, DiskHistory};
pub use history::{Applied, Block, History, SeriesState, StoreError, Swept};
pub use latest::{GpuState, GpuView, LatestIndex};
pub use reading::Reading;
pub use rollup::{Agg, AggRow};

/// A history and the latest index kept in step with it.
#[derive(Debug)]
pub struct Store {
    history: Arc<dyn History>,
    latest: LatestIndex,
}

impl Store {
    /// Joins `history` with a latest index rebuilt from it.
    ///
    /// # Errors
    /// [`StoreError`] when the history cannot list its series.
    pub fn open(history: Arc<dyn History>) -> Result<Self, StoreError> {
        let latest = LatestIndex::from_series(history.series()?);
        Ok(Self { history, latest })
    }

    /// Opens a [`DiskHistory`] with `cfg` and joins it.
    ///
    /// # Errors
    /// [`StoreError`] when the data directory cannot be opened.
    pub fn open_disk(cfg: DiskConfig) -> Result<Self, StoreError> {
        Self::open(Arc::new(DiskHistory::open(cfg)?))
    }

    /// Stores a verified batch (idempotent on GPU and sample time). Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history; the batch must be retried and its offset not
    /// covered.
    pub fn apply(&self, batch: &TelemetryBatch) -> Result<Applied, StoreError> {
        let (applied, new) = self.history.apply(batch)?;
        self.latest.apply(batch, &new);
        Ok(applied)
    }

    /// [`Store::apply`] of each of `batches`, through [`History::apply_all`] (one remote
    /// request where the history can). Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history; the batches must be retried and their offsets not
    /// covered.
    pub fn apply_all(&self, batches: &[TelemetryBatch]) -> Result<Vec<Applied>, StoreError> {
        if !self.history.writes_in_bulk() {
            // One by one, the latest index taking each as it is stored: a failure part way
            // must not leave stored batches the index never saw (their retry finds them
            // already stored, "not new").
            return batches.iter().map(|b| self.apply(b)).collect();
        }
        // All or nothing: the index takes them once all are stored.
        let done = self.history.apply_all(batches)?;
        Ok(batches
            .iter()
            .zip(done)
            .map(|(batch, (applied, new))| {
                self.latest.apply(batch, &new);
                applied
            })
            .collect())
    }

    /// See [`History::cover`].
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn cover(&self, next: &[(i32, i64)]) -> Result<(), StoreError> {
        self.history.cover(next)
    }

    /// See [`History::resume_offset`].
    pub fn resume_offset(&self, partition: i32) -> Option<i64> {
        self.history.resume_offset(partition)
    }

    /// See [`History::range`]. Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Option<(Vec<Reading>, bool)>, StoreError> {
        self.history.range(uuid, start_ms, end_ms, limit)
    }

    /// See [`History::range_blocks`]. Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn range_blocks(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
        encoded: bool,
        emit: &mut dyn FnMut(Block) -> bool,
    ) -> Result<Option<bool>, StoreError> {
        self.history
            .range_blocks(uuid, start_ms, end_ms, limit, encoded, emit)
    }

    /// See [`History::aggregate`]. Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn aggregate(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: usize,
    ) -> Result<Option<(Vec<AggRow>, bool)>, StoreError> {
        self.history
            .aggregate(uuid, start_ms, end_ms, step_ms, agg, limit)
    }

    /// See [`History::flush`]. Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn flush(&self) -> Result<u64, StoreError> {
        self.history.flush()
    }

    /// Drops what is past retention as of `now_ms` and compacts; returns the samples dropped
    /// and whether compaction has work left (then sweep again soon). Blocks.
    ///
    /// # Errors
    /// [`StoreError`] from the history.
    pub fn sweep(&self, now_ms: i64) -> Result<(u64, bool), StoreError> {
        let swept = self.history.sweep(now_ms)?;
        self.latest.swept(&swept);
        Ok((swept.samples, swept.more))
    }

    /// The latest index.
    pub fn latest(&self) -> &LatestIndex {
        &self.latest
    }

    /// The history.
    pub fn history(&self) -> &Arc<dyn History> {
        &self.history
    }
}

/// One part of a streamed range answer.
#[derive(Debug, Clone, PartialEq)]
pub enum RangePart {
    /// A block, its readings after those of the parts before (stored bytes only when asked
    /// for with `encoded`).
    Block(Block),
    /// The end: whether more matched than the limit.
    End {
        /// More matched than the limit.
        truncated: bool,
    },
}

/// Reads a range of `uuid` on a blocking thread into a channel of [`RangePart`]s (a few
/// blocks ahead of the reader: backpressure), ending with [`RangePart::End`]; `None` when the
/// GPU is unknown — to the latest index, or for a history shared by several streamers, to
/// the history itself (it holds GPUs other streamers took in). A reader that goes away
/// stops the read.
///
/// # Errors
/// [`StoreError`] when a shared history cannot say whether it knows the GPU.
pub async fn stream_range(
    store: Arc<Store>,
    uuid: String,
    start_ms: i64,
    end_ms: i64,
    limit: usize,
    encoded: bool,
) -> Result<Option<tokio::sync::mpsc::Receiver<Result<RangePart, StoreError>>>, StoreError> {
    if !store.latest().contains(&uuid) {
        if store.history().keeps_offsets() {
            return Ok(None);
        }
        let (s, u) = (store.clone(), uuid.clone());
        let known = tokio::task::spawn_blocking(move || s.history().knows(&u))
            .await
            .map_err(|e| StoreError::Other(format!("read task failed: {e}")))??;
        if !known {
            return Ok(None);
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let read = store.range_blocks(&uuid, start_ms, end_ms, limit, encoded, &mut |b| {
            tx.blocking_send(Ok(RangePart::Block(b))).is_ok()
        });
        let last = match read {
            Ok(t) => Ok(RangePart::End {
                truncated: t.unwrap_or(false),
            }),
            Err(e) => Err(e),
        };
        let _ = tx.blocking_send(last);
    });
    Ok(Some(rx))
}

/// How often [`run_maintenance`] sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The pause between sweeps while compaction has work left (each sweep holds the store for
/// at most its compaction budget, `COMPACT_BUDGET` in `disk.rs`).
pub const COMPACTION_PAUSE: Duration = Duration::from_secs(1);
/// How often [`run_maintenance`] asks whether a flush is due.
pub const FLUSH_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The streamer's clock, UTC ms (sample-time checks and retention sweeps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Flushes when due and sweeps every `sweep_interval`, on blocking threads, until
/// `shutdown`; then flushes once more (a clean stop leaves nothing to replay). Counts into
/// `metrics`.
pub async fn run_maintenance(
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
    sweep_interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(FLUSH_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    let mut next_sweep = sweep_interval;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        if store.history.flush_due() {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.flush()).await {
                Ok(Ok(n)) => metrics.flushed(n),
                Ok(Err(error)) => {
                    metrics.error("store");
                    tracing::error!(%error, "flush failed; retrying");
                }
                Err(error) => tracing::error!(%error, "flush task failed"),
            }
        }
        if last_sweep.elapsed() >= next_sweep {
            last_sweep = tokio::time::Instant::now();
            next_sweep = sweep_interval;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.sweep(now_ms())).await {
                Ok(Ok((dropped, more))) => {
                    if dropped > 0 {
                        metrics.samples_swept.fetch_add(dropped, Ordering::Relaxed);
                        tracing::debug!(dropped, "swept samples past retention");
                    }
                    // Compaction left work at its time budget: go on shortly, letting
                    // ingest and queries in between.
                    if more {
                        next_sweep = COMPACTION_PAUSE;
                    }
                }
                Ok(Err(error)) => {
                    metrics.error("store");
                    tracing::error!(%error, "sweep failed");
                }
                Err(error) => tracing::error!(%error, "sweep task failed"),
            }
        }
    }
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.flush()).await {
        Ok(Ok(n)) => {
            metrics.flushed(n);
            tracing::info!(samples = n, "store flushed");
        }
        Ok(Err(error)) => tracing::error!(%error, "final flush failed"),
        Err(error) => tracing::error!(%error, "final flush task failed"),
    }
}

/// A batch of one GPU with a reading at each of `ts` (for the store's unit tests).
#[cfg(test)]
pub(crate) fn test_batch(node: &str, uuid: &str, index: u32, ts: &[i64]) -> TelemetryBatch {
    use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION};
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        node: node.into(),
        collected_at_ms: ts[0],
        gpus: vec![GpuInfo {
            uuid: uuid.into(),
            node: node.into(),
            index,
            ..Default::default()
        }],
        samples: ts
            .iter()
            .map(|&t| GpuSample {
                uuid: uuid.into(),
                timestamp_ms: t,
                gpu_utilization_percent: Some((t / 1000 % 100) as u32),
                power_usage_milliwatts: Some(100_000 + (t / 1000 % 7) as u32),
                ..Default::default()
            })
            .collect(),
    }
}
