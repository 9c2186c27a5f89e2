//! Turning fetched records into stored samples: verify, decode, store. No I/O besides the
//! store, so it is benchmarked on already-fetched records (our code alone).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common_auth::KeyRing;
use msg_queue_client::consumer::ConsumedRecord;
use telemetry_wire::RecordVerifier;
use telemetry_wire::wire::{Reject, TelemetryBatch, check_times, open};

use crate::metrics::StreamerMetrics;
use crate::store::{Store, StoreError, now_ms};

/// How far ahead of the streamer's clock a sample time may be (collector clock skew).
/// A sample further ahead would push every real sample of its GPU out of the retention
/// window, so its batch is rejected.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// How long a GPU stays its node's after that node last reported it: a batch from another
/// node listing it within this is refused (a signer claiming someone else's GPU); after it,
/// the GPU may have moved, and the new node takes it over.
pub const GPU_OWNERSHIP_MS: i64 = 10 * 60 * 1000;

/// How long after its retirement a retired service token verifies records, by default: a
/// week (set it to the telemetry topic's retention).
pub const DEFAULT_RETIRED_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// The outcome of one batch of records.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Indexes (into the input) of rejected records, with why.
    pub rejected: Vec<(usize, Reject)>,
    /// Per partition, the next offset to read: everything before it is handled (stored, or
    /// rejected and to be dead-lettered).
    pub next_offsets: Vec<(i32, i64)>,
}

/// The verifier of the accepted tokens, and each one's fingerprint by key id (what
/// `streamer_signer_info` shows for the token a node signs with).
#[derive(Debug, Clone)]
struct Verifier {
    verifier: RecordVerifier,
    fingerprints: Arc<std::collections::HashMap<String, String>>,
}

/// Verifies and stores records.
#[derive(Debug, Clone)]
pub struct Ingestor {
    tokens: KeyRing,
    // How long after its retirement a retired token still verifies (replayed) records.
    retired_max_age_ms: i64,
    // The verifier for the tokens accepted last time, keyed by (ring version, how many
    // tokens were accepted): rebuilt after a rotation and when a grace period ends.
    verifier: Arc<Mutex<((u64, usize), Verifier)>>,
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
}

impl Ingestor {
    /// An ingestor writing to `store`, accepting records signed with any token of
    /// [`KeyRing::verifying`]: the current one, the previous one during a rotation's grace
    /// period, and the retired ones (`service-token-previous`) for records replayed long
    /// after a rotation.
    pub fn new(tokens: KeyRing, store: Arc<Store>, metrics: Arc<StreamerMetrics>) -> Self {
        Self {
            verifier: Arc::new(Mutex::new((
                (u64::MAX, 0),
                Verifier {
                    verifier: RecordVerifier::new([]),
                    fingerprints: Arc::default(),
                },
            ))),
            tokens,
            retired_max_age_ms: DEFAULT_RETIRED_MAX_AGE_MS,
            store,
            metrics,
        }
    }

    /// Sets how long after its retirement a retired token still verifies records (records
    /// replayed from the topic: its retention).
    #[must_use]
    pub fn with_retired_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.retired_max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        self
    }

    fn verifier(&self, now: i64) -> Verifier {
        // Version and values read together: a rotation between two reads could otherwise
        // pair a new key with old values and keep them.
        let (version, mut verifying) = self.tokens.verifying();
        // A retired token past the topic's retention has nothing left to verify.
        verifying.retain(|v| {
            v.not_after_ms
                .is_none_or(|at| at.saturating_add(self.retired_max_age_ms) > now)
        });
        let key = (version, verifying.len());
        let mut cached = self.verifier.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != key {
            let fingerprints = verifying
                .iter()
                .map(|v| {
                    let fp = common_auth::fingerprint(
                        secrecy::ExposeSecret::expose_secret(&v.value).as_bytes(),
                    );
                    (telemetry_wire::signing::key_id(&v.value), fp)
                })
                .collect();
            *cached = (
                key,
                Verifier {
                    verifier: RecordVerifier::with_limits(
                        verifying.iter().map(|v| (&v.value, v.not_after_ms)),
                    ),
                    fingerprints: Arc::new(fingerprints),
                },
            );
        }
        cached.1.clone()
    }

    /// Refuses a batch listing a GPU another node reported within [`GPU_OWNERSHIP_MS`]: in
    /// the store, or in `pending` (batches of this fetch accepted before it, stored together
    /// after it: uuid → node and the time of its newest sample there).
    fn check_owners(
        &self,
        batch: &TelemetryBatch,
        pending: &std::collections::HashMap<String, (String, i64)>,
        now: i64,
    ) -> Result<(), Reject> {
        let since = now.saturating_sub(GPU_OWNERSHIP_MS - 1);
        if let Some((uuid, node, seen)) = batch.gpus.iter().find_map(|g| {
            pending
                .get(&g.uuid)
                .filter(|(n, seen)| *n != batch.node && *seen >= since)
                .map(|(n, seen)| (&g.uuid, n, *seen))
        }) {
            return Err(Reject::Invalid(format!(
                "GPU {uuid} belongs to node {node:?} (reported {} s ago), not {:?}",
                now.saturating_sub(seen).max(0) / 1000,
                batch.node
            )));
        }
        let uuids = batch.gpus.iter().map(|g| g.uuid.as_str());
        match self
            .store
            .latest()
            .claimed_elsewhere(uuids, &batch.node, since)
        {
            None => Ok(()),
            Some((uuid, node, seen)) => Err(Reject::Invalid(format!(
                "GPU {uuid} belongs to node {node:?} (reported {} s ago), not {:?}",
                now.saturating_sub(seen).max(0) / 1000,
                batch.node
            ))),
        }
    }

    /// Verifies, decodes and stores `records` (in order). Rejected records are counted and
    /// returned for dead-lettering; they never reach the store.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails: nothing of `records` counts as handled, and the
    /// caller must not commit (they are stored again, idempotently, on the retry).
    pub fn process(&self, records: &[ConsumedRecord]) -> Result<Ingested, StoreError> {
        let now = now_ms();
        let verifier = self.verifier(now);
        let mut out = Ingested::default();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut signers: std::collections::HashMap<&str, &str> = Default::default();
        // Verified batches, stored together after the loop (one remote request for many
        // where the history can), and the GPUs they claim.
        let mut accepted: Vec<TelemetryBatch> = Vec::new();
        let mut owners: std::collections::HashMap<String, (String, i64)> = Default::default();
        for (i, rec) in records.iter().enumerate() {
            let opened = rec
                .oversized
                .map_or_else(
                    || open(&verifier.verifier, rec.parts()),
                    |bytes| Err(Reject::TooLarge { bytes }),
                )
                .and_then(|b| check_times(&b, now, MAX_FUTURE_SKEW_MS).map(|()| b))
                .and_then(|b| self.check_owners(&b, &owners, now).map(|()| b));
            match opened {
                Ok(batch) => {
                    let key_id = rec.parts().key_id.map(String::from_utf8_lossy);
                    if let Some(fp) = key_id.and_then(|k| verifier.fingerprints.get(k.as_ref())) {
                        // The batch's newest per node, borrowed (the record key is the node,
                        // checked by `open`); noted once after the loop, under one lock.
                        if let Some(node) =
                            rec.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
                        {
                            signers.insert(node, fp.as_str());
                        }
                    }
                    for g in &batch.gpus {
                        let seen = batch
                            .samples
                            .iter()
                            .filter(|s| s.uuid == g.uuid)
                            .map(|s| s.timestamp_ms)
                            .max()
                            .unwrap_or(i64::MIN);
                        let e = owners
                            .entry(g.uuid.clone())
                            .or_insert_with(|| (batch.node.clone(), seen));
                        if seen >= e.1 {
                            *e = (batch.node.clone(), seen);
                        }
                    }
                    accepted.push(batch);
                }
                Err(reject) => out.rejected.push((i, reject)),
            }
            let e = next.entry(rec.partition).or_insert(rec.offset + 1);
            *e = (*e).max(rec.offset + 1);
        }
        for applied in self
            .store
            .apply_all(&accepted)
            .inspect_err(|_| self.metrics.error("store"))?
        {
            self.metrics.applied(applied);
        }
        out.next_offsets = next.into_iter().collect();
        // Counted once the whole batch is handled: a batch retried after a store failure
        // (the `?` above) is not counted again.
        self.metrics
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        for (_, reject) in &out.rejected {
            self.metrics.rejected(reject.reason());
        }
        self.metrics.signed_all(signers, now);
        Ok(out)
    }
}
