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

/// One GPU, borrowed from a store (see [`Store::visit_gpus`]).
#[derive(Debug, Clone, Copy)]
pub struct GpuView<'a> {
    /// Inventory.
    pub info: &'a GpuInfo,
    /// The newest sample (its `uuid` field may be empty: it is `info.uuid`).
    pub latest: Option<&'a GpuSample>,
    /// Time of the newest sample, UTC ms (0 when none).
    pub last_seen_ms: i64,
    /// Samples held.
    pub sample_count: u64,
}

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

    /// Calls `f` for every GPU (of `node`, if given), in [`Store::list_gpus`] order, with
    /// borrowed data: for serialising a large list without copying it first. `f` runs under
    /// the store's read lock, so it must be quick and must not call back into the store.
    fn visit_gpus(&self, node: Option<&str>, f: &mut dyn FnMut(GpuView<'_>)) {
        for g in self.list_gpus(node) {
            if let Some(info) = &g.info {
                f(GpuView {
                    info,
                    latest: g.latest.as_ref(),
                    last_seen_ms: g.last_seen_ms,
                    sample_count: g.sample_count,
                });
            }
        }
    }

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

    /// Every GPU with its latest sample, in listing order, and the store's change version
    /// at that moment (taken together).
    fn snapshot(&self) -> (Vec<GpuStatus>, u64);

    /// The GPUs whose latest state changed after version `since` (from [`Store::snapshot`]
    /// or an earlier call), and the current version.
    fn changed_since(&self, since: u64) -> (Vec<GpuStatus>, u64);

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
    // Store version of the last change to `info` or the latest sample.
    changed: u64,
    // Samples keyed by timestamp, stored without their uuid (the series key has it).
    samples: BTreeMap<i64, GpuSample>,
}

/// An in-memory store, rebuilt from Kafka after each restart. Keeps `retention` of history
/// per GPU (older samples are pruned as new ones arrive) so memory stays flat.
#[derive(Debug)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    retention: Duration,
}

/// Listing order: node, then index, then uuid.
type OrderKey = (String, u32, String);

fn order_of(info: &GpuInfo) -> OrderKey {
    (info.node.clone(), info.index, info.uuid.clone())
}

#[derive(Debug, Default)]
struct Inner {
    // Bumped by every apply that changed something; each series remembers the version of
    // its last change, so watchers get only what changed.
    version: u64,
    series: HashMap<String, Series>,
    // Every series' key in listing order, kept in step with `series`, so a list needs no sort.
    order: std::collections::BTreeSet<OrderKey>,
}

impl MemoryStore {
    /// An empty store keeping `retention` of history per GPU.
    pub fn new(retention: Duration) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            retention,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The series of `node` (or all), in listing order.
    fn ordered<'a>(
        inner: &'a Inner,
        node: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Series> + 'a {
        let keys: Box<dyn Iterator<Item = &OrderKey>> = match node {
            // Keys sort by node first: the node's GPUs are one contiguous range.
            Some(n) => Box::new(
                inner
                    .order
                    .range((n.to_string(), 0, String::new())..)
                    .take_while(move |k| k.0 == n),
            ),
            None => Box::new(inner.order.iter()),
        };
        keys.filter_map(|k| inner.series.get(&k.2))
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

fn with_uuid(s: &GpuSample, uuid: &str) -> GpuSample {
    let mut s = s.clone();
    s.uuid = uuid.to_string();
    s
}

impl Store for MemoryStore {
    fn apply(&self, batch: &TelemetryBatch) -> Result<Applied, StoreError> {
        let mut out = Applied::default();
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let mut guard = self.write();
        let Inner {
            version,
            series: map,
            order,
        } = &mut *guard;
        let v = *version + 1;
        let mut changed = false;
        for info in &batch.gpus {
            match map.get_mut(&info.uuid) {
                Some(s) => {
                    if batch.collected_at_ms >= s.info_at_ms {
                        s.info_at_ms = batch.collected_at_ms;
                        if s.info != *info {
                            if (s.info.node.as_str(), s.info.index)
                                != (info.node.as_str(), info.index)
                            {
                                order.remove(&order_of(&s.info));
                                order.insert(order_of(info));
                            }
                            s.info = info.clone();
                            s.changed = v;
                            changed = true;
                        }
                    }
                }
                None => {
                    changed = true;
                    order.insert(order_of(info));
                    map.insert(
                        info.uuid.clone(),
                        Series {
                            info: info.clone(),
                            info_at_ms: batch.collected_at_ms,
                            changed: v,
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
            // Any insert changes what watchers see (at least the sample count).
            series.changed = v;
            changed = true;
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
        if changed {
            *version = v;
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
        let inner = self.read();
        Self::ordered(&inner, node).map(Self::status).collect()
    }

    fn visit_gpus(&self, node: Option<&str>, f: &mut dyn FnMut(GpuView<'_>)) {
        let inner = self.read();
        for s in Self::ordered(&inner, node) {
            let latest = s.samples.last_key_value();
            f(GpuView {
                info: &s.info,
                latest: latest.map(|(_, v)| v),
                last_seen_ms: latest.map_or(0, |(k, _)| *k),
                sample_count: s.samples.len() as u64,
            });
        }
    }

    fn gpu(&self, uuid: &str) -> Option<GpuStatus> {
        self.read().series.get(uuid).map(Self::status)
    }

    fn snapshot(&self) -> (Vec<GpuStatus>, u64) {
        let inner = self.read();
        (
            Self::ordered(&inner, None).map(Self::status).collect(),
            inner.version,
        )
    }

    fn changed_since(&self, since: u64) -> (Vec<GpuStatus>, u64) {
        let inner = self.read();
        let changed = inner
            .series
            .values()
            .filter(|s| s.changed > since)
            .map(Self::status)
            .collect();
        (changed, inner.version)
    }

    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Option<(Vec<GpuSample>, bool)> {
        let inner = self.read();
        let s = inner.series.get(uuid)?;
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
        self.read()
            .series
            .values()
            .map(|s| s.samples.len() as u64)
            .sum()
    }

    fn sweep(&self, now_ms: i64) -> u64 {
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut guard = self.write();
        let Inner {
            version,
            series,
            order,
        } = &mut *guard;
        let v = *version + 1;
        let mut dropped = 0u64;
        series.retain(|_, s| {
            let keep = s.samples.split_off(&cutoff);
            if !s.samples.is_empty() {
                s.changed = v;
            }
            dropped += s.samples.len() as u64;
            s.samples = keep;
            let live = !s.samples.is_empty();
            if !live {
                order.remove(&order_of(&s.info));
            }
            live
        });
        if dropped > 0 {
            *version = v;
        }
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
    fn listing_order_follows_inventory_changes_and_sweeps() {
        let s = MemoryStore::new(Duration::from_secs(10));
        for (node, uuid, index) in [("b", "GPU-3", 0), ("a", "GPU-2", 1), ("a", "GPU-1", 0)] {
            let mut b = batch(node, uuid, &[1_000]);
            b.gpus[0].index = index;
            s.apply(&b).unwrap();
        }
        let order = |s: &MemoryStore, node| {
            let mut v = Vec::new();
            s.visit_gpus(node, &mut |g| v.push(g.info.uuid.clone()));
            v
        };
        assert_eq!(order(&s, None), ["GPU-1", "GPU-2", "GPU-3"]);
        assert_eq!(order(&s, Some("a")), ["GPU-1", "GPU-2"]);
        assert_eq!(order(&s, Some("")), Vec::<String>::new());
        // GPU-1 moves to node c (a newer batch): it moves in the listing too.
        let mut moved = batch("c", "GPU-1", &[2_000]);
        moved.collected_at_ms = 2_000;
        s.apply(&moved).unwrap();
        assert_eq!(order(&s, None), ["GPU-2", "GPU-3", "GPU-1"]);
        assert_eq!(
            s.list_gpus(None)
                .iter()
                .map(|g| g.info.clone().unwrap().uuid)
                .collect::<Vec<_>>(),
            ["GPU-2", "GPU-3", "GPU-1"]
        );
        s.sweep(11_500);
        assert_eq!(order(&s, None), ["GPU-1"]);
    }

    #[test]
    fn changed_since_returns_only_what_changed_after_a_version() {
        let s = MemoryStore::new(Duration::from_secs(3600));
        s.apply(&batch("n", "GPU-1", &[1_000])).unwrap();
        s.apply(&batch("n", "GPU-2", &[1_000])).unwrap();
        let (all, v) = s.snapshot();
        assert_eq!(all.len(), 2);
        assert_eq!(s.changed_since(v).0.len(), 0);
        s.apply(&batch("n", "GPU-2", &[2_000])).unwrap();
        // A redelivery changes nothing anyone sees.
        s.apply(&batch("n", "GPU-1", &[1_000])).unwrap();
        let (changed, v2) = s.changed_since(v);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].latest.as_ref().unwrap().timestamp_ms, 2_000);
        assert!(v2 > v);
        assert_eq!(s.changed_since(v2).0.len(), 0);
        // A late, older sample changes the count (not the latest): watchers get it too.
        s.apply(&batch("n", "GPU-1", &[500])).unwrap();
        let (changed, v3) = s.changed_since(v2);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].sample_count, 2);
        // So does a sweep.
        s.sweep(3_600_000 + 1_001);
        assert_eq!(s.changed_since(v3).0.len(), 1);
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
