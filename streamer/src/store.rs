//! Storage behind a trait: the streamer writes through [`Store`], queries read through it.
//!
//! Contract of every store:
//! - [`Store::apply`] is idempotent on (GPU, sample time): applying a batch twice changes
//!   nothing the second time, so a redelivered record is never counted twice.
//! - [`Store::resume_offset`] says where to resume a partition: the offset the store has
//!   durably covered, or `None` when it keeps nothing across restarts (then the consumer
//!   replays the topic from the start of retention and rebuilds it).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use msg_queue_client::wire::{GpuInfo, GpuSample, TelemetryBatch};

use crate::query::proto::GpuStatus;

/// What [`Store::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Samples new to the store.
    pub inserted: u64,
    /// Samples it already had (same GPU and time): ignored.
    pub duplicates: u64,
    /// Samples older than the retention window: ignored.
    pub expired: u64,
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing storage failed.
    #[error("store I/O failed: {0}")]
    Io(String),
}

/// A telemetry store.
pub trait Store: Send + Sync + 'static {
    /// Stores a verified batch. Idempotent on (GPU uuid, sample timestamp).
    ///
    /// # Errors
    /// [`StoreError`] when the backing storage fails; nothing of the batch is then
    /// guaranteed stored, and the caller must not commit past it.
    fn apply(&self, batch: &TelemetryBatch) -> Result<Applied, StoreError>;

    /// The next offset to read for `partition`, if this store keeps data across restarts.
    fn resume_offset(&self, partition: i32) -> Option<i64>;

    /// Records that everything before `next` offsets is stored (durably, for a durable store).
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be recorded.
    fn record_offsets(&self, next: &[(i32, i64)]) -> Result<(), StoreError>;

    /// Every GPU (of `node`, if given) with its latest sample, ordered by node, then index.
    fn list_gpus(&self, node: Option<&str>) -> Vec<GpuStatus>;

    /// One GPU.
    fn gpu(&self, uuid: &str) -> Option<GpuStatus>;

    /// Samples of `uuid` with `start_ms <= t < end_ms`, oldest first, at most `limit`; the
    /// flag says whether more matched. `None` when the GPU is unknown. The samples' `uuid`
    /// field is left empty (it is the one asked for).
    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Option<(Vec<GpuSample>, bool)>;

    /// Samples held.
    fn sample_count(&self) -> u64;

    /// Drops what is older than the retention window as of `now_ms` (UTC ms), including
    /// GPUs with nothing left, so memory stays flat as nodes come and go. Returns how many
    /// samples were dropped.
    fn sweep(&self, now_ms: i64) -> u64;
}

/// How often [`run_sweeper`] sweeps.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Calls [`Store::sweep`] every `interval` until `shutdown`.
pub async fn run_sweeper(
    store: std::sync::Arc<dyn Store>,
    interval: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let dropped = store.sweep(now);
        if dropped > 0 {
            tracing::debug!(dropped, "swept samples past retention");
        }
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

#[derive(Debug)]
struct Series {
    info: GpuInfo,
    // Collection time of the batch `info` came from: an older, late batch never
    // overwrites newer inventory.
    info_at_ms: i64,
    // Samples keyed by timestamp, stored without their uuid (the series key has it).
    samples: BTreeMap<i64, GpuSample>,
}

/// An in-memory store, rebuilt from Kafka after each restart. Keeps `retention` of history
/// per GPU (older samples are pruned as new ones arrive) so memory stays flat.
#[derive(Debug)]
pub struct MemoryStore {
    series: RwLock<HashMap<String, Series>>,
    retention: Duration,
}

impl MemoryStore {
    /// An empty store keeping `retention` of history per GPU.
    pub fn new(retention: Duration) -> Self {
        Self {
            series: RwLock::new(HashMap::new()),
            retention,
        }
    }

    fn status(s: &Series) -> GpuStatus {
        let latest = s
            .samples
            .last_key_value()
            .map(|(_, v)| with_uuid(v, &s.info.uuid));
        GpuStatus {
            info: Some(s.info.clone()),
            last_seen_ms: latest.as_ref().map_or(0, |l| l.timestamp_ms),
            latest,
            sample_count: s.samples.len() as u64,
        }
    }
}

/// Listing order: node, then index, then uuid.
fn order_key(s: &GpuStatus) -> Option<(&str, u32, &str)> {
    s.info
        .as_ref()
        .map(|i| (i.node.as_str(), i.index, i.uuid.as_str()))
}

fn with_uuid(s: &GpuSample, uuid: &str) -> GpuSample {
    let mut s = s.clone();
    s.uuid = uuid.to_string();
    s
}

impl Store for MemoryStore {
    fn apply(&self, batch: &TelemetryBatch) -> Result<Applied, StoreError> {
        let mut out = Applied::default();
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        for info in &batch.gpus {
            match map.get_mut(&info.uuid) {
                Some(s) => {
                    if batch.collected_at_ms >= s.info_at_ms {
                        s.info_at_ms = batch.collected_at_ms;
                        if s.info != *info {
                            s.info = info.clone();
                        }
                    }
                }
                None => {
                    map.insert(
                        info.uuid.clone(),
                        Series {
                            info: info.clone(),
                            info_at_ms: batch.collected_at_ms,
                            samples: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        for sample in &batch.samples {
            // `open` checked that every sample's GPU is listed in the batch.
            let Some(series) = map.get_mut(&sample.uuid) else {
                continue;
            };
            let newest = series
                .samples
                .last_key_value()
                .map_or(i64::MIN, |(k, _)| *k);
            if sample.timestamp_ms < newest.saturating_sub(retention_ms) {
                out.expired += 1; // older than retention: as good as already pruned
                continue;
            }
            if series.samples.contains_key(&sample.timestamp_ms) {
                out.duplicates += 1;
                continue;
            }
            let mut stored = sample.clone();
            stored.uuid = String::new();
            series.samples.insert(sample.timestamp_ms, stored);
            out.inserted += 1;
            if sample.timestamp_ms > newest {
                let cutoff = sample.timestamp_ms.saturating_sub(retention_ms);
                while let Some((&k, _)) = series.samples.first_key_value() {
                    if k >= cutoff {
                        break;
                    }
                    series.samples.pop_first();
                }
            }
        }
        Ok(out)
    }

    fn resume_offset(&self, _partition: i32) -> Option<i64> {
        None // nothing survives a restart: replay from the start of retention
    }

    fn record_offsets(&self, _next: &[(i32, i64)]) -> Result<(), StoreError> {
        Ok(())
    }

    fn list_gpus(&self, node: Option<&str>) -> Vec<GpuStatus> {
        let map = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<GpuStatus> = map
            .values()
            .filter(|s| node.is_none_or(|n| s.info.node == n))
            .map(Self::status)
            .collect();
        out.sort_unstable_by(|a, b| order_key(a).cmp(&order_key(b)));
        out
    }

    fn gpu(&self, uuid: &str) -> Option<GpuStatus> {
        let map = self.series.read().unwrap_or_else(|p| p.into_inner());
        map.get(uuid).map(Self::status)
    }

    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Option<(Vec<GpuSample>, bool)> {
        let map = self.series.read().unwrap_or_else(|p| p.into_inner());
        let s = map.get(uuid)?;
        if start_ms >= end_ms {
            return Some((Vec::new(), false));
        }
        let mut it = s.samples.range(start_ms..end_ms);
        // Samples of a range query carry no uuid: the caller asked for one GPU.
        let out: Vec<GpuSample> = it.by_ref().take(limit).map(|(_, v)| v.clone()).collect();
        let truncated = it.next().is_some();
        Some((out, truncated))
    }

    fn sample_count(&self) -> u64 {
        let map = self.series.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(|s| s.samples.len() as u64).sum()
    }

    fn sweep(&self, now_ms: i64) -> u64 {
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0u64;
        map.retain(|_, s| {
            let keep = s.samples.split_off(&cutoff);
            dropped += s.samples.len() as u64;
            s.samples = keep;
            !s.samples.is_empty()
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msg_queue_client::wire::SCHEMA_VERSION;

    fn batch(node: &str, uuid: &str, ts: &[i64]) -> TelemetryBatch {
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: node.into(),
            collected_at_ms: ts[0],
            gpus: vec![GpuInfo {
                uuid: uuid.into(),
                node: node.into(),
                ..Default::default()
            }],
            samples: ts
                .iter()
                .map(|&t| GpuSample {
                    uuid: uuid.into(),
                    timestamp_ms: t,
                    gpu_utilization_percent: Some((t % 100) as u32),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn applying_the_same_batch_twice_counts_it_once() {
        let s = MemoryStore::new(Duration::from_secs(3600));
        let b = batch("n", "GPU-1", &[1000, 2000]);
        assert_eq!(
            s.apply(&b).unwrap(),
            Applied {
                inserted: 2,
                duplicates: 0,
                expired: 0
            }
        );
        assert_eq!(
            s.apply(&b).unwrap(),
            Applied {
                inserted: 0,
                duplicates: 2,
                expired: 0
            }
        );
        assert_eq!(s.sample_count(), 2);
        let g = s.gpu("GPU-1").unwrap();
        assert_eq!(g.last_seen_ms, 2000);
        assert_eq!(g.latest.unwrap().uuid, "GPU-1");
    }

    #[test]
    fn range_is_half_open_ordered_and_reports_truncation() {
        let s = MemoryStore::new(Duration::from_secs(3600));
        s.apply(&batch("n", "GPU-1", &[3000, 1000, 2000, 4000]))
            .unwrap();
        let (v, more) = s.range("GPU-1", 1000, 4000, 10).unwrap();
        assert_eq!(
            v.iter().map(|x| x.timestamp_ms).collect::<Vec<_>>(),
            vec![1000, 2000, 3000]
        );
        assert!(!more);
        let (v, more) = s.range("GPU-1", 0, 10_000, 2).unwrap();
        assert_eq!(v.len(), 2);
        assert!(more);
        assert!(s.range("GPU-x", 0, 1, 1).is_none());
    }

    #[test]
    fn retention_prunes_old_samples_so_memory_stays_flat() {
        let s = MemoryStore::new(Duration::from_secs(10));
        for t in 0..100 {
            s.apply(&batch("n", "GPU-1", &[t * 1000])).unwrap();
        }
        assert_eq!(s.sample_count(), 11);
        assert_eq!(
            s.range("GPU-1", 0, i64::MAX, 100).unwrap().0[0].timestamp_ms,
            89_000
        );
    }

    #[test]
    fn sweep_drops_old_samples_and_gpus_that_went_away() {
        let s = MemoryStore::new(Duration::from_secs(10));
        s.apply(&batch("n", "GPU-gone", &[1_000, 2_000])).unwrap();
        s.apply(&batch("n", "GPU-live", &[5_000, 14_000])).unwrap();
        assert_eq!(s.sweep(15_001), 3);
        assert!(s.gpu("GPU-gone").is_none());
        assert_eq!(s.gpu("GPU-live").unwrap().sample_count, 1);
        assert_eq!(s.sweep(15_001), 0);
    }

    #[test]
    fn a_late_older_batch_does_not_overwrite_newer_inventory_and_old_samples_are_expired() {
        let s = MemoryStore::new(Duration::from_secs(10));
        let mut new = batch("n", "GPU-1", &[20_000]);
        new.gpus[0].driver_version = Some("560".into());
        s.apply(&new).unwrap();
        let mut old = batch("n", "GPU-1", &[19_000, 1_000]);
        old.gpus[0].driver_version = Some("550".into());
        assert_eq!(
            s.apply(&old).unwrap(),
            Applied {
                inserted: 1,
                duplicates: 0,
                expired: 1
            }
        );
        assert_eq!(
            s.gpu("GPU-1")
                .unwrap()
                .info
                .unwrap()
                .driver_version
                .as_deref(),
            Some("560")
        );
    }

    #[test]
    fn list_filters_by_node_and_orders_by_node_then_index() {
        let s = MemoryStore::new(Duration::from_secs(10));
        s.apply(&batch("b", "GPU-2", &[1])).unwrap();
        s.apply(&batch("a", "GPU-1", &[1])).unwrap();
        let all: Vec<_> = s
            .list_gpus(None)
            .into_iter()
            .map(|g| g.info.unwrap().uuid)
            .collect();
        assert_eq!(all, vec!["GPU-1", "GPU-2"]);
        assert_eq!(s.list_gpus(Some("b")).len(), 1);
        assert_eq!(s.list_gpus(Some("c")).len(), 0);
    }
}
