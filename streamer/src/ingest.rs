//! Turning fetched records into stored samples: verify, decode, store. No I/O besides the
//! store, so it is benchmarked on already-fetched records (our code alone).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common_auth::RecordVerifier;
use msg_queue_client::consumer::ConsumedRecord;
use msg_queue_client::wire::{Reject, open};

use crate::metrics::StreamerMetrics;
use crate::store::{Store, StoreError};

/// The outcome of one batch of records.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Indexes (into the input) of rejected records, with why.
    pub rejected: Vec<(usize, Reject)>,
    /// Per partition, the next offset to read: everything before it is handled (stored, or
    /// rejected and to be dead-lettered).
    pub next_offsets: Vec<(i32, i64)>,
}

/// Verifies and stores records.
#[derive(Debug, Clone)]
pub struct Ingestor {
    verifier: Arc<std::sync::RwLock<RecordVerifier>>,
    store: Arc<dyn Store>,
    metrics: Arc<StreamerMetrics>,
}

impl Ingestor {
    /// An ingestor writing to `store`, accepting records signed with the verifier's tokens.
    pub fn new(
        verifier: RecordVerifier,
        store: Arc<dyn Store>,
        metrics: Arc<StreamerMetrics>,
    ) -> Self {
        Self {
            verifier: Arc::new(std::sync::RwLock::new(verifier)),
            store,
            metrics,
        }
    }

    /// Replaces the verifier (after a service-token rotation).
    pub fn set_verifier(&self, v: RecordVerifier) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Verifies, decodes and stores `records` (in order). Rejected records are counted and
    /// returned for dead-lettering; they never reach the store.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails: nothing after the failing record counts as
    /// handled, and the caller must not commit.
    pub fn process(&self, records: &[ConsumedRecord]) -> Result<Ingested, StoreError> {
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Ingested::default();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for (i, rec) in records.iter().enumerate() {
            self.metrics.records.fetch_add(1, Ordering::Relaxed);
            match open(&verifier, rec.parts()) {
                Ok(batch) => {
                    let applied = self
                        .store
                        .apply(&batch)
                        .inspect_err(|_| self.metrics.error("store"))?;
                    self.metrics
                        .samples_stored
                        .fetch_add(applied.inserted, Ordering::Relaxed);
                    self.metrics
                        .samples_duplicate
                        .fetch_add(applied.duplicates, Ordering::Relaxed);
                }
                Err(reject) => {
                    self.metrics.rejected(reject.reason());
                    out.rejected.push((i, reject));
                }
            }
            let e = next.entry(rec.partition).or_insert(rec.offset + 1);
            *e = (*e).max(rec.offset + 1);
        }
        out.next_offsets = next.into_iter().collect();
        Ok(out)
    }
}
