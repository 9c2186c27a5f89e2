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

/// When the last round that read the source without error ended (gauge, Unix seconds).
pub const LAST_GOOD_ROUND: &str = "collector_last_good_round_timestamp_seconds";

/// The collector's `/metrics`: its counters and gauges read at scrape time (with `buffer`'s
/// depth and drops), encoded by `prometheus-client`.
pub fn registry(
    metrics: std::sync::Arc<CollectorMetrics>,
    buffer: std::sync::Arc<crate::buffer::Buffer<telemetry_wire::wire::SignedRecord>>,
) -> telemetry_metrics::Registry {
    let mut r = telemetry_metrics::Registry::default();
    r.register_collector(Box::new(Scrape { metrics, buffer }));
    r
}

#[derive(Debug)]
struct Scrape {
    metrics: std::sync::Arc<CollectorMetrics>,
    buffer: std::sync::Arc<crate::buffer::Buffer<telemetry_wire::wire::SignedRecord>>,
}

impl telemetry_metrics::prometheus_client::collector::Collector for Scrape {
    fn encode(
        &self,
        mut enc: telemetry_metrics::prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use telemetry_metrics::{NONE, counter, gauge};
        let m = &self.metrics;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut enc;
        for (name, help, value) in [
            (ROUNDS, "Sampling rounds completed.", g(&m.rounds)),
            (SAMPLES, "GPU samples read.", g(&m.samples)),
            (
                PUBLISHED,
                "Records the broker acknowledged.",
                g(&m.published),
            ),
            (
                DROPPED,
                "Records dropped, oldest first, because the buffer was full while the broker was away.",
                self.buffer.dropped(),
            ),
        ] {
            counter(e, name, help, [(NONE, value)])?;
        }
        counter(
            e,
            ERRORS,
            "Failures, by error_type: source (reading the GPUs), publish (a delivery, retried).",
            [
                ([("error_type", "source")], g(&m.source_errors)),
                ([("error_type", "publish")], g(&m.publish_errors)),
            ],
        )?;
        let depth = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            e,
            BUFFERED,
            "Records waiting in the buffer for the broker.",
            [(NONE, depth(self.buffer.len()))],
        )?;
        gauge(
            e,
            IN_FLIGHT,
            "Records handed to the producer, not yet acknowledged.",
            [(NONE, i64::try_from(g(&m.in_flight)).unwrap_or(i64::MAX))],
        )?;
        let last = m.last_good_round_ms.load(Ordering::Relaxed);
        if last > 0 {
            gauge(
                e,
                LAST_GOOD_ROUND,
                "When the last round that read the source without error ended (Unix seconds).",
                [(NONE, last / 1000)],
            )?;
        }
        if let Some(r) = m.signing.get() {
            use secrecy::ExposeSecret as _;
            let fp = common_auth::fingerprint(r.signing().expose_secret().as_bytes());
            telemetry_metrics::secret_info(e, SECRETS, [("service-token", fp)])?;
        }
        Ok(())
    }
}
