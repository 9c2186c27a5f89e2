//! The streamer's counters. Names are constants here and nowhere else.

use std::collections::BTreeMap;
use std::sync::Mutex;

use secrecy::ExposeSecret as _;
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
/// The fingerprint of the service token the streamer holds as current (info gauge).
pub const SECRETS: &str = "streamer_secret_info";
/// Per node, the fingerprint of the token that signed its newest accepted record (nodes
/// heard from within [`SIGNER_WINDOW_MS`]; info gauge). After a rotation every node's
/// fingerprint turns to the new token's once its collector signs with it.
pub const SIGNERS: &str = "streamer_signer_info";
/// How long a node counts in [`SIGNERS`] after its last accepted record.
pub const SIGNER_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Most nodes [`SIGNERS`] tracks (the least recently heard is forgotten first).
pub const MAX_SIGNERS: usize = 10_000;
/// Per assigned partition, records on the broker not yet stored (gauge: its high watermark
/// minus the next offset to handle, measured every [`LAG_INTERVAL`] on a client of its own,
/// so it grows while the consumer is stuck).
pub const CONSUMER_LAG: &str = "streamer_consumer_lag_records";
/// How often the consumer lag is measured.
pub const LAG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Samples stored in memory and not yet flushed to disk (gauge).
pub const UNFLUSHED: &str = "streamer_samples_unflushed";
/// Time to the response head of each gRPC call, by method and code (histogram).
pub const GRPC_DURATION: &str = "streamer_grpc_request_duration_seconds";

/// The gRPC methods of the query service, as latency labels.
pub const GRPC_METHODS: &[&str] = &[
    "ListGpus",
    "GetGpu",
    "QueryRange",
    "StreamRange",
    "QueryAggregate",
    "Stats",
    "WatchLatest",
];

/// Counters of the ingest path.
#[derive(Debug)]
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
    /// The service token ring (see [`SECRETS`]).
    pub tokens: std::sync::OnceLock<common_auth::KeyRing>,
    /// node → (fingerprint, last accepted record's time in UTC ms); see [`SIGNERS`].
    signers: Mutex<BTreeMap<String, (String, i64)>>,
    /// See [`CONSUMER_LAG`]; filled by the consumer.
    pub lag: std::sync::Arc<msg_queue_client::consumer::ConsumerLag>,
    /// See [`GRPC_DURATION`]; a layer of the query server.
    pub grpc: telemetry_metrics::GrpcMetrics,
}

impl Default for StreamerMetrics {
    fn default() -> Self {
        Self {
            records: AtomicU64::default(),
            samples_stored: AtomicU64::default(),
            samples_duplicate: AtomicU64::default(),
            samples_expired: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            samples_durable: AtomicU64::default(),
            flushes: AtomicU64::default(),
            samples_swept: AtomicU64::default(),
            rejected: Mutex::default(),
            errors: Mutex::default(),
            tokens: std::sync::OnceLock::new(),
            signers: Mutex::default(),
            lag: std::sync::Arc::default(),
            grpc: telemetry_metrics::GrpcMetrics::new(
                "streamer",
                "telemetry.query.v1.TelemetryQuery",
                GRPC_METHODS,
            ),
        }
    }
}

/// Adds the ingest path's metrics of `metrics` (read at scrape time) to `registry`.
pub fn register_ingest(
    metrics: std::sync::Arc<StreamerMetrics>,
    registry: &mut telemetry_metrics::Registry,
) {
    registry.register_collector(Box::new(Scrape(metrics)));
}

#[derive(Debug)]
struct Scrape(std::sync::Arc<StreamerMetrics>);

impl telemetry_metrics::prometheus_client::collector::Collector for Scrape {
    fn encode(
        &self,
        mut enc: telemetry_metrics::prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use telemetry_metrics::{NONE, counter, gauge};
        let m = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut enc;
        for (name, help, value) in [
            (
                RECORDS,
                "Records consumed from the telemetry topic, each counted once when its batch is handled.",
                &m.records,
            ),
            (SAMPLES_STORED, "Samples newly stored.", &m.samples_stored),
            (
                SAMPLES_DUPLICATE,
                "Samples ignored because the store already had them (redeliveries).",
                &m.samples_duplicate,
            ),
            (
                SAMPLES_EXPIRED,
                "Samples ignored because they are older than the retention window.",
                &m.samples_expired,
            ),
            (
                SAMPLES_DURABLE,
                "Samples written to disk by the store's flushes.",
                &m.samples_durable,
            ),
            (FLUSHES, "Store flushes that wrote something.", &m.flushes),
            (
                SAMPLES_SWEPT,
                "Samples dropped by retention sweeps.",
                &m.samples_swept,
            ),
            (
                DEAD_LETTERED,
                "Records forwarded to the dead-letter topic.",
                &m.dead_lettered,
            ),
        ] {
            counter(e, name, help, [(NONE, g(value))])?;
        }
        let unflushed = g(&m.samples_stored).saturating_sub(g(&m.samples_durable));
        gauge(
            e,
            UNFLUSHED,
            "Samples stored in memory and not yet flushed to disk.",
            [(NONE, i64::try_from(unflushed).unwrap_or(i64::MAX))],
        )?;
        let rejected: Vec<_> = m
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, v)| ([("reason", *r)], *v))
            .collect();
        counter(
            e,
            REJECTED,
            "Records rejected (and dead-lettered), by reason.",
            rejected,
        )?;
        let errors: Vec<_> = m
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, v)| ([("error_type", *t)], *v))
            .collect();
        counter(
            e,
            ERRORS,
            "Failures, by error_type: consume, store, dead_letter, commit.",
            errors,
        )?;
        gauge(
            e,
            CONSUMER_LAG,
            "Records on the broker not yet stored, per assigned partition (high watermark minus the next offset to handle).",
            m.lag
                .snapshot()
                .into_iter()
                .map(|(p, l)| ([("partition", p.to_string())], l)),
        )?;
        if let Some(ring) = m.tokens.get() {
            let fp = common_auth::fingerprint(ring.current().expose_secret().as_bytes());
            telemetry_metrics::secret_info(e, SECRETS, [("service-token", fp)])?;
        }
        let since = crate::store::now_ms().saturating_sub(SIGNER_WINDOW_MS);
        let signers: Vec<_> = m
            .signers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (_, at))| *at >= since)
            .map(|(node, (fp, _))| ([("node", node.clone()), ("fingerprint", fp.clone())], 1))
            .collect();
        gauge(
            e,
            SIGNERS,
            "Per node heard from in the last 10 minutes, the fingerprint of the service token that signed its newest accepted record.",
            signers,
        )
    }
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

    /// Notes, for each (node, fingerprint) of one handled batch, that the node's newest
    /// accepted record (at `now_ms`) was signed with the token of that fingerprint. One lock
    /// per batch, not per record; an allocation only for a node not seen before.
    pub fn signed_all<'a>(&self, batch: impl IntoIterator<Item = (&'a str, &'a str)>, now_ms: i64) {
        let mut signers = self.signers.lock().unwrap_or_else(|p| p.into_inner());
        for (node, fp) in batch {
            if let Some(e) = signers.get_mut(node) {
                if e.0 != fp {
                    e.0 = fp.to_string();
                }
                e.1 = now_ms;
                continue;
            }
            if signers.len() >= MAX_SIGNERS
                && let Some(oldest) = signers
                    .iter()
                    .min_by_key(|(_, v)| v.1)
                    .map(|(k, _)| k.clone())
            {
                signers.remove(&oldest);
            }
            signers.insert(node.to_string(), (fp.to_string(), now_ms));
        }
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
            (
                UNFLUSHED,
                String::new(),
                g(&self.samples_stored).saturating_sub(g(&self.samples_durable)),
            ),
        ];
        for (p, l) in self.lag.snapshot() {
            out.push((
                CONSUMER_LAG,
                format!("partition=\"{p}\""),
                u64::try_from(l).unwrap_or(0),
            ));
        }
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
        if let Some(ring) = self.tokens.get() {
            let fp = common_auth::fingerprint(ring.current().expose_secret().as_bytes());
            out.push((
                SECRETS,
                format!("secret=\"service-token\",fingerprint=\"{fp}\""),
                1,
            ));
        }
        let since = crate::store::now_ms().saturating_sub(SIGNER_WINDOW_MS);
        for (node, (fp, at)) in self
            .signers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if *at >= since {
                out.push((
                    SIGNERS,
                    format!("node=\"{}\",fingerprint=\"{fp}\"", label_value(node)),
                    1,
                ));
            }
        }
        out
    }
}

/// `v` escaped for a Prometheus label value.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
