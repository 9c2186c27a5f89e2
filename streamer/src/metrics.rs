//! The streamer's counters. Names are constants here and nowhere else.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Records consumed from the telemetry topic.
pub const RECORDS: &str = "streamer_records_total";
/// Samples newly stored.
pub const SAMPLES_STORED: &str = "streamer_samples_stored_total";
/// Samples ignored because the store already had them (redeliveries).
pub const SAMPLES_DUPLICATE: &str = "streamer_samples_duplicate_total";
/// Samples ignored because they are older than the retention window.
pub const SAMPLES_EXPIRED: &str = "streamer_samples_expired_total";
/// Samples written to disk by the store's flushes (durable; equal to the stored count once
/// nothing waits in memory).
pub const SAMPLES_DURABLE: &str = "streamer_samples_durable_total";
/// Store flushes that wrote something.
pub const FLUSHES: &str = "streamer_store_flushes_total";
/// Samples dropped by retention sweeps.
pub const SAMPLES_SWEPT: &str = "streamer_samples_swept_total";
/// Records rejected, by `reason`.
pub const REJECTED: &str = "streamer_records_rejected_total";
/// Records forwarded to the dead-letter topic.
pub const DEAD_LETTERED: &str = "streamer_dead_lettered_total";
/// Failures, by `error_type` (`consume`, `store`, `dead_letter`, `commit`).
pub const ERRORS: &str = "streamer_errors_total";

/// Counters of the ingest path.
#[derive(Debug, Default)]
pub struct StreamerMetrics {
    /// See [`RECORDS`].
    pub records: AtomicU64,
    /// See [`SAMPLES_STORED`].
    pub samples_stored: AtomicU64,
    /// See [`SAMPLES_DUPLICATE`].
    pub samples_duplicate: AtomicU64,
    /// See [`SAMPLES_EXPIRED`].
    pub samples_expired: AtomicU64,
    /// See [`DEAD_LETTERED`].
    pub dead_lettered: AtomicU64,
    /// See [`SAMPLES_DURABLE`].
    pub samples_durable: AtomicU64,
    /// See [`FLUSHES`].
    pub flushes: AtomicU64,
    /// See [`SAMPLES_SWEPT`].
    pub samples_swept: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl StreamerMetrics {
    /// Counts what one [`crate::store::Store::apply`] did.
    pub fn applied(&self, a: crate::store::Applied) {
        self.samples_stored.fetch_add(a.inserted, Ordering::Relaxed);
        self.samples_duplicate
            .fetch_add(a.duplicates, Ordering::Relaxed);
        self.samples_expired.fetch_add(a.expired, Ordering::Relaxed);
    }

    /// Counts a flush that wrote `samples` (nothing for an empty one).
    pub fn flushed(&self, samples: u64) {
        if samples > 0 {
            self.samples_durable.fetch_add(samples, Ordering::Relaxed);
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a rejected record.
    pub fn rejected(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Counts a failure.
    pub fn error(&self, error_type: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(error_type)
            .or_default() += 1;
    }

    /// Every counter as `(name, labels, value)`; labels in Prometheus form without braces.
    pub fn snapshot(&self) -> Vec<(&'static str, String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = vec![
            (RECORDS, String::new(), g(&self.records)),
            (SAMPLES_STORED, String::new(), g(&self.samples_stored)),
            (SAMPLES_DUPLICATE, String::new(), g(&self.samples_duplicate)),
            (SAMPLES_EXPIRED, String::new(), g(&self.samples_expired)),
            (DEAD_LETTERED, String::new(), g(&self.dead_lettered)),
            (SAMPLES_DURABLE, String::new(), g(&self.samples_durable)),
            (FLUSHES, String::new(), g(&self.flushes)),
            (SAMPLES_SWEPT, String::new(), g(&self.samples_swept)),
        ];
        for (r, v) in self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push((REJECTED, format!("reason=\"{r}\""), *v));
        }
        for (e, v) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push((ERRORS, format!("error_type=\"{e}\""), *v));
        }
        out
    }
}
