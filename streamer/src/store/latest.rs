//! The in-memory latest index: every GPU's inventory, newest sample and sample count, with
//! a change version so watchers get only what changed. The streamer keeps one in step with
//! its history; the api's mirror keeps one fed by the streamer's `WatchLatest` stream.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use telemetry_wire::wire::{GpuInfo, GpuSample, TelemetryBatch};

use super::history::{SeriesState, Swept};

/// One GPU, borrowed from the index (see [`LatestIndex::visit`]).
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

/// One GPU, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuState {
    /// Inventory.
    pub info: GpuInfo,
    /// The newest sample, with its `uuid` set.
    pub latest: Option<GpuSample>,
    /// Time of the newest sample, UTC ms (0 when none).
    pub last_seen_ms: i64,
    /// Samples held.
    pub sample_count: u64,
    /// Collection time of the batch `info` came from, UTC ms.
    pub info_at_ms: i64,
}

#[derive(Debug)]
struct Entry {
    info: GpuInfo,
    // Collection time of the batch `info` came from: a late, older batch never overwrites
    // newer inventory.
    info_at_ms: i64,
    latest: Option<GpuSample>,
    count: u64,
    // Index version of the last change.
    changed: u64,
}

impl Entry {
    fn state(&self) -> GpuState {
        let latest = self.latest.as_ref().map(|l| {
            let mut l = l.clone();
            l.uuid.clone_from(&self.info.uuid);
            l
        });
        GpuState {
            last_seen_ms: latest.as_ref().map_or(0, |l| l.timestamp_ms),
            latest,
            info: self.info.clone(),
            sample_count: self.count,
            info_at_ms: self.info_at_ms,
        }
    }
}

/// Listing order: node, then index, then uuid.
type OrderKey = (String, u32, String);

fn order_of(info: &GpuInfo) -> OrderKey {
    (info.node.clone(), info.index, info.uuid.clone())
}

#[derive(Debug, Default)]
struct Inner {
    version: u64,
    gpus: HashMap<String, Entry>,
    // Every key in listing order, in step with `gpus`, so a list needs no sort.
    order: BTreeSet<OrderKey>,
}

impl Inner {
    fn upsert_info(&mut self, info: &GpuInfo, at_ms: i64, v: u64) -> bool {
        match self.gpus.get_mut(&info.uuid) {
            Some(e) => {
                if at_ms < e.info_at_ms || e.info == *info {
                    return false;
                }
                e.info_at_ms = at_ms;
                if (e.info.node.as_str(), e.info.index) != (info.node.as_str(), info.index) {
                    self.order.remove(&order_of(&e.info));
                    self.order.insert(order_of(info));
                }
                e.info = info.clone();
                e.changed = v;
                true
            }
            None => {
                self.order.insert(order_of(info));
                self.gpus.insert(
                    info.uuid.clone(),
                    Entry {
                        info: info.clone(),
                        info_at_ms: at_ms,
                        latest: None,
                        count: 0,
                        changed: v,
                    },
                );
                true
            }
        }
    }

    fn remove(&mut self, uuid: &str) -> bool {
        match self.gpus.remove(uuid) {
            Some(e) => {
                self.order.remove(&order_of(&e.info));
                true
            }
            None => false,
        }
    }
}

/// Every GPU's latest state. Cheap to read from async code (no I/O, short locks).
#[derive(Debug, Default)]
pub struct LatestIndex {
    inner: RwLock<Inner>,
}

impl LatestIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// An index holding `series` (a history's content on start).
    pub fn from_series(series: Vec<SeriesState>) -> Self {
        let idx = Self::default();
        {
            let mut inner = idx.write();
            for s in series {
                inner.upsert_info(&s.info, s.info_at_ms, 0);
                if let Some(e) = inner.gpus.get_mut(&s.info.uuid) {
                    e.latest = s.latest;
                    e.count = s.sample_count;
                }
            }
        }
        idx
    }

    /// Takes in a stored batch: `new[i]` says whether `batch.samples[i]` was new to the
    /// history (only new samples count; the newest becomes the latest).
    pub fn apply(&self, batch: &TelemetryBatch, new: &[bool]) {
        let mut inner = self.write();
        let v = inner.version + 1;
        let mut changed = false;
        for info in &batch.gpus {
            changed |= inner.upsert_info(info, batch.collected_at_ms, v);
        }
        for (s, _) in batch.samples.iter().zip(new).filter(|(_, n)| **n) {
            let Some(e) = inner.gpus.get_mut(&s.uuid) else {
                continue;
            };
            e.count += 1;
            e.changed = v;
            changed = true;
            if e.latest
                .as_ref()
                .is_none_or(|l| l.timestamp_ms < s.timestamp_ms)
            {
                let mut l = s.clone();
                l.uuid = String::new();
                e.latest = Some(l);
            }
        }
        if changed {
            inner.version = v;
        }
    }

    /// Takes in what a history sweep dropped.
    pub fn swept(&self, swept: &Swept) {
        let mut inner = self.write();
        let v = inner.version + 1;
        let mut changed = false;
        for (uuid, count) in &swept.counts {
            if let Some(e) = inner.gpus.get_mut(uuid) {
                e.count = *count;
                e.changed = v;
                changed = true;
            }
        }
        for uuid in &swept.gone {
            changed |= inner.remove(uuid);
        }
        if changed {
            inner.version = v;
        }
    }

    /// Replaces everything (`full`) or upserts `gpus`: how a mirror follows a watch stream.
    pub fn replace(&self, full: bool, gpus: Vec<GpuState>) {
        let mut inner = self.write();
        let v = inner.version + 1;
        if full {
            inner.gpus.clear();
            inner.order.clear();
        }
        for g in gpus {
            inner.remove(&g.info.uuid);
            inner.upsert_info(&g.info, g.info_at_ms, v);
            if let Some(e) = inner.gpus.get_mut(&g.info.uuid) {
                e.latest = g.latest;
                e.count = g.sample_count;
            }
        }
        inner.version = v;
    }

    /// Merges `gpus` from one of several partial views (streamers sharing a consumer group),
    /// each part by its own time: the inventory (with health, XIDs, pods) when it comes from
    /// a newer batch than the one held, the newest sample and count when the sample is
    /// newer (at the same one, with more samples). Nothing is removed.
    pub fn merge(&self, gpus: Vec<GpuState>) {
        let mut inner = self.write();
        let v = inner.version + 1;
        let mut changed = false;
        for g in gpus {
            // Newer inventory (or a GPU new here): upsert_info keeps the older otherwise.
            changed |= inner.upsert_info(&g.info, g.info_at_ms, v);
            let Some(e) = inner.gpus.get_mut(&g.info.uuid) else {
                continue;
            };
            let seen = e.latest.as_ref().map_or(0, |l| l.timestamp_ms);
            if (g.last_seen_ms, g.sample_count) > (seen, e.count) {
                e.latest = g.latest.map(|mut l| {
                    l.uuid = String::new();
                    l
                });
                e.count = g.sample_count;
                e.changed = v;
                changed = true;
            }
        }
        if changed {
            inner.version = v;
        }
    }

    /// Calls `f` for every GPU (of `node`, if given), ordered by node, then index, with
    /// borrowed data. `f` runs under the index's read lock: keep it quick.
    pub fn visit(&self, node: Option<&str>, f: &mut dyn FnMut(GpuView<'_>)) {
        let inner = self.read();
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
        for k in keys {
            let Some(e) = inner.gpus.get(&k.2) else {
                continue;
            };
            f(GpuView {
                info: &e.info,
                latest: e.latest.as_ref(),
                last_seen_ms: e.latest.as_ref().map_or(0, |l| l.timestamp_ms),
                sample_count: e.count,
            });
        }
    }

    /// Every GPU (of `node`), in listing order.
    pub fn list(&self, node: Option<&str>) -> Vec<GpuState> {
        let inner = self.read();
        let mut out = Vec::new();
        let keys: Vec<&OrderKey> = inner
            .order
            .iter()
            .filter(|k| node.is_none_or(|n| k.0 == n))
            .collect();
        for k in keys {
            if let Some(e) = inner.gpus.get(&k.2) {
                out.push(e.state());
            }
        }
        out
    }

    /// One GPU.
    pub fn get(&self, uuid: &str) -> Option<GpuState> {
        self.read().gpus.get(uuid).map(Entry::state)
    }

    /// The first of `uuids` another node than `node` reported at or after `since_ms`: the
    /// GPU, that node and the time of its newest sample (UTC ms). One lock for the lot; a
    /// copy only on a conflict.
    pub fn claimed_elsewhere<'u>(
        &self,
        uuids: impl IntoIterator<Item = &'u str>,
        node: &str,
        since_ms: i64,
    ) -> Option<(&'u str, String, i64)> {
        let inner = self.read();
        uuids.into_iter().find_map(|uuid| {
            let e = inner.gpus.get(uuid)?;
            let seen = e.latest.as_ref().map_or(0, |l| l.timestamp_ms);
            (e.info.node != node && seen >= since_ms).then(|| (uuid, e.info.node.clone(), seen))
        })
    }

    /// Whether the GPU is known.
    pub fn contains(&self, uuid: &str) -> bool {
        self.read().gpus.contains_key(uuid)
    }

    /// Every GPU in listing order and the change version at that moment (taken together).
    pub fn snapshot(&self) -> (Vec<GpuState>, u64) {
        let inner = self.read();
        let all = inner
            .order
            .iter()
            .filter_map(|k| inner.gpus.get(&k.2).map(Entry::state))
            .collect();
        (all, inner.version)
    }

    /// The GPUs changed after version `since`, and the current version.
    pub fn changed_since(&self, since: u64) -> (Vec<GpuState>, u64) {
        let inner = self.read();
        let changed = inner
            .gpus
            .values()
            .filter(|e| e.changed > since)
            .map(Entry::state)
            .collect();
        (changed, inner.version)
    }

    /// Samples held, over all GPUs.
    pub fn sample_count(&self) -> u64 {
        self.read().gpus.values().map(|e| e.count).sum()
    }

    /// GPUs held.
    pub fn len(&self) -> usize {
        self.read().gpus.len()
    }

    /// Whether no GPU is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_batch as batch;

    fn order(idx: &LatestIndex, node: Option<&str>) -> Vec<String> {
        let mut v = Vec::new();
        idx.visit(node, &mut |g| v.push(g.info.uuid.clone()));
        v
    }

    #[test]
    fn listing_order_follows_inventory_changes_and_sweeps() {
        let idx = LatestIndex::default();
        for (node, uuid, index) in [("b", "GPU-3", 0), ("a", "GPU-2", 1), ("a", "GPU-1", 0)] {
            let b = batch(node, uuid, index, &[1_000]);
            idx.apply(&b, &[true]);
        }
        assert_eq!(order(&idx, None), ["GPU-1", "GPU-2", "GPU-3"]);
        assert_eq!(order(&idx, Some("a")), ["GPU-1", "GPU-2"]);
        assert_eq!(order(&idx, Some("")), Vec::<String>::new());
        idx.apply(&batch("c", "GPU-1", 0, &[2_000]), &[true]);
        assert_eq!(order(&idx, None), ["GPU-2", "GPU-3", "GPU-1"]);
        assert_eq!(
            idx.list(None)
                .iter()
                .map(|g| g.info.uuid.as_str())
                .collect::<Vec<_>>(),
            ["GPU-2", "GPU-3", "GPU-1"]
        );
        idx.swept(&Swept {
            samples: 2,
            counts: vec![],
            gone: vec!["GPU-2".into(), "GPU-3".into()],
            more: false,
        });
        assert_eq!(order(&idx, None), ["GPU-1"]);
    }

    #[test]
    fn merging_partial_views_keeps_each_gpus_newest_state_and_removes_nothing() {
        // Two streamers: A had GPU-1 until a rebalance moved it to B; only A saw GPU-2.
        let (a, b) = (LatestIndex::default(), LatestIndex::default());
        a.apply(&batch("n", "GPU-1", 0, &[1_000, 2_000]), &[true, true]);
        a.apply(&batch("n", "GPU-2", 1, &[1_500]), &[true]);
        b.apply(&batch("n", "GPU-1", 0, &[2_000, 3_000]), &[true, true]);
        let merged = LatestIndex::default();
        merged.merge(b.snapshot().0);
        let v = merged.snapshot().1;
        // A's older GPU-1 loses; its GPU-2 is added.
        merged.merge(a.snapshot().0);
        let got: Vec<(String, i64, u64)> = merged
            .list(None)
            .into_iter()
            .map(|g| (g.info.uuid, g.last_seen_ms, g.sample_count))
            .collect();
        assert_eq!(
            got,
            [("GPU-1".into(), 3_000, 2), ("GPU-2".into(), 1_500, 1)]
        );
        assert_eq!(merged.changed_since(v).0.len(), 1, "only GPU-2 changed");
        // The same again changes nothing; an empty view removes nothing.
        let v = merged.snapshot().1;
        merged.merge(a.snapshot().0);
        merged.merge(Vec::new());
        assert_eq!(merged.snapshot().1, v);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.get("GPU-1").unwrap().latest.unwrap().uuid, "GPU-1");
        // Newer inventory without a new sample (a GPU lost: health only) is taken; an
        // older one is not.
        let mut lost = b.get("GPU-1").unwrap();
        lost.info.driver_version = Some("lost".into());
        lost.info_at_ms = 4_000;
        merged.merge(vec![lost.clone()]);
        let g = merged.get("GPU-1").unwrap();
        assert_eq!(
            (g.info.driver_version.as_deref(), g.last_seen_ms),
            (Some("lost"), 3_000)
        );
        lost.info.driver_version = Some("stale".into());
        lost.info_at_ms = 3_500;
        merged.merge(vec![lost]);
        assert_eq!(
            merged.get("GPU-1").unwrap().info.driver_version.as_deref(),
            Some("lost")
        );
    }

    #[test]
    fn only_new_samples_count_and_the_newest_is_latest() {
        let idx = LatestIndex::default();
        idx.apply(&batch("n", "GPU-1", 0, &[2_000, 1_000]), &[true, true]);
        idx.apply(&batch("n", "GPU-1", 0, &[2_000, 500]), &[false, true]);
        let g = idx.get("GPU-1").unwrap();
        assert_eq!(g.sample_count, 3);
        assert_eq!(g.last_seen_ms, 2_000);
        assert_eq!(g.latest.unwrap().uuid, "GPU-1");
    }

    #[test]
    fn a_late_older_batch_does_not_overwrite_newer_inventory() {
        let idx = LatestIndex::default();
        let mut new = batch("n", "GPU-1", 0, &[20_000]);
        new.gpus[0].driver_version = Some("560".into());
        idx.apply(&new, &[true]);
        let mut old = batch("n", "GPU-1", 0, &[19_000]);
        old.gpus[0].driver_version = Some("550".into());
        idx.apply(&old, &[true]);
        assert_eq!(
            idx.get("GPU-1").unwrap().info.driver_version.as_deref(),
            Some("560")
        );
    }

    #[test]
    fn changed_since_returns_only_what_changed_after_a_version() {
        let idx = LatestIndex::default();
        idx.apply(&batch("n", "GPU-1", 0, &[1_000]), &[true]);
        idx.apply(&batch("n", "GPU-2", 1, &[1_000]), &[true]);
        let (all, v) = idx.snapshot();
        assert_eq!(all.len(), 2);
        assert!(idx.changed_since(v).0.is_empty());
        idx.apply(&batch("n", "GPU-2", 1, &[2_000]), &[true]);
        // A redelivery changes nothing anyone sees.
        idx.apply(&batch("n", "GPU-1", 0, &[1_000]), &[false]);
        let (changed, v2) = idx.changed_since(v);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].latest.as_ref().unwrap().timestamp_ms, 2_000);
        assert!(v2 > v);
        idx.swept(&Swept {
            samples: 1,
            counts: vec![("GPU-1".into(), 0)],
            gone: vec![],
            more: false,
        });
        assert_eq!(idx.changed_since(v2).0.len(), 1);
    }

    #[test]
    fn a_mirror_replaces_or_upserts() {
        let idx = LatestIndex::default();
        idx.apply(&batch("n", "GPU-1", 0, &[1_000]), &[true]);
        let mut g = idx.get("GPU-1").unwrap();
        g.sample_count = 9;
        g.info.uuid = "GPU-9".into();
        idx.replace(false, vec![g.clone()]);
        assert_eq!(order(&idx, None), ["GPU-1", "GPU-9"]);
        idx.replace(true, vec![g]);
        assert_eq!(order(&idx, None), ["GPU-9"]);
        assert_eq!(idx.get("GPU-9").unwrap().sample_count, 9);
    }
}
