//! The collector's counters. Names are constants here and nowhere else.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sampling rounds completed.
pub const ROUNDS: &str = "collector_rounds_total";
/// GPU samples read.
pub const SAMPLES: &str = "collector_samples_total";
/// Records delivered to the broker.
pub const PUBLISHED: &str = "collector_records_published_total";
/// Records dropped because the buffer was full.
pub const DROPPED: &str = "collector_records_dropped_total";
/// Records waiting in the buffer (gauge).
pub const BUFFERED: &str = "collector_buffered_records";
/// Records handed to the producer, not yet acknowledged (gauge).
pub const IN_FLIGHT: &str = "collector_in_flight_records";
/// Failures, labelled by `error_type` (`source`, `publish`).
pub const ERRORS: &str = "collector_errors_total";
/// The fingerprint of the service token records are signed with now.
pub const SECRETS: &str = "collector_secret_info";

/// Counters shared by the sampler and the publisher.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    /// See [`ROUNDS`].
    pub rounds: AtomicU64,
    /// See [`SAMPLES`].
    pub samples: AtomicU64,
    /// See [`PUBLISHED`].
    pub published: AtomicU64,
    /// Errors reading the source.
    pub source_errors: AtomicU64,
    /// Failed deliveries (each retried).
    pub publish_errors: AtomicU64,
    /// Records handed to the producer and not yet acknowledged.
    pub in_flight: AtomicU64,
    /// When the last round that read the source without error ended (UTC ms; 0: never).
    pub last_good_round_ms: std::sync::atomic::AtomicI64,
    /// The service token ring records are signed from (see [`SECRETS`]).
    pub signing: std::sync::OnceLock<common_auth::KeyRing>,
}

impl CollectorMetrics {
    /// Prometheus text exposition, with `dropped` read from the buffer.
    pub fn render(&self, dropped: u64) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE {ROUNDS} counter\n{ROUNDS} {}\n# TYPE {SAMPLES} counter\n{SAMPLES} {}\n\
             # TYPE {PUBLISHED} counter\n{PUBLISHED} {}\n# TYPE {DROPPED} counter\n{DROPPED} {}\n\
             # TYPE {ERRORS} counter\n{ERRORS}{{error_type=\"source\"}} {}\n{ERRORS}{{error_type=\"publish\"}} {}\n",
            g(&self.rounds),
            g(&self.samples),
            g(&self.published),
            dropped,
            g(&self.source_errors),
            g(&self.publish_errors),
        ) + &self
            .signing
            .get()
            .map(|r| common_auth::fingerprint_metric(SECRETS, &[("service-token", r.signing())]))
            .unwrap_or_default()
    }
}
