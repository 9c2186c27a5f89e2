//! The typed telemetry producer.
//!
//! Idempotent (`enable.idempotence`, hence `acks=all` and ordered retries), compressed, keyed
//! by node. librdkafka retries transient failures itself; what reaches the caller is a record
//! that could not be delivered within `message_timeout`, which the caller re-queues.
//!
//! A *fatal* error (for example the broker no longer knowing the idempotent producer id after
//! a restart: `UnknownProducerId` / `OutOfOrderSequenceNumber`) leaves a librdkafka producer
//! unusable for good. [`TelemetryProducer`] notices it on the next failed delivery and builds
//! a fresh producer, as Apache Kafka's documentation advises, instead of stalling. Some
//! brokers never say so: the producer just stops delivering (every record times out) while
//! the broker is up. So a producer whose deliveries have been failing for
//! [`ProducerConfig::stall_timeout`] with no success in between is rebuilt too; a fresh one asks the broker for a new
//! producer id. Rebuilding while the broker is really away is harmless: the new producer waits
//! like the old one, and records that failed go back to the caller's buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::{QueueError, kafka};
use telemetry_wire::wire::{SCHEMA_VERSION, SignedRecord, header};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic to produce to.
    pub topic: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd (zstd needs the feature).
    pub compression: String,
    /// How long librdkafka keeps trying one record before reporting it failed.
    pub message_timeout: Duration,
    /// `linger.ms`: how long to wait to fill a batch.
    pub linger: Duration,
    /// Rebuild the producer when deliveries have been timing out for this long with no
    /// success in between (a broker that forgot the idempotent producer without saying so).
    pub stall_timeout: Duration,
    /// Extra librdkafka properties (security settings, for example).
    pub extra: Vec<(String, String)>,
}

impl ProducerConfig {
    /// Defaults for `brokers` and `topic`: lz4, 30 s delivery timeout, 20 ms linger, rebuild
    /// after 90 s without a delivery.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            compression: "lz4".into(),
            message_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(20),
            stall_timeout: Duration::from_secs(90),
            extra: Vec::new(),
        }
    }

    fn build(&self) -> Result<FutureProducer, QueueError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "100000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c.create().map_err(kafka("create producer"))
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Idempotent producer of [`SignedRecord`]s that replaces itself after a fatal error.
#[derive(Clone)]
pub struct TelemetryProducer {
    cfg: Arc<ProducerConfig>,
    current: Arc<RwLock<(u64, FutureProducer)>>,
    rebuilds: Arc<AtomicU64>,
    // Since when deliveries have been failing without a success in between (None: the
    // last one succeeded).
    failing_since: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for TelemetryProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryProducer")
            .field("topic", &self.cfg.topic)
            .field("rebuilds", &self.rebuilds())
            .finish()
    }
}

impl TelemetryProducer {
    /// Builds the producer. Does not contact the broker yet.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] for invalid configuration.
    pub fn new(cfg: ProducerConfig) -> Result<Self, QueueError> {
        let p = cfg.build()?;
        Ok(Self {
            cfg: Arc::new(cfg),
            current: Arc::new(RwLock::new((0, p))),
            rebuilds: Arc::new(AtomicU64::new(0)),
            failing_since: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// How many times the producer was rebuilt after a fatal error.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> (u64, FutureProducer) {
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Sends one record and waits for its delivery report.
    ///
    /// # Errors
    /// [`QueueError::Delivery`] when the record was not delivered (timeout, fatal error, full
    /// local queue); the caller still owns the data and may retry. After a fatal error the
    /// next call uses a fresh producer.
    pub async fn send(&self, rec: &SignedRecord) -> Result<Delivered, QueueError> {
        let (generation, producer) = self.snapshot();
        let version = SCHEMA_VERSION.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: header::KEY_ID,
                value: Some(rec.key_id.as_bytes()),
            })
            .insert(Header {
                key: header::SIGNATURE,
                value: Some(&rec.signature[..]),
            })
            .insert(Header {
                key: header::SCHEMA_VERSION,
                value: Some(version.as_bytes()),
            });
        let record = FutureRecord::to(&self.cfg.topic)
            .key(&rec.key[..])
            .payload(&rec.value[..])
            .headers(headers);
        match producer.send(record, Duration::from_secs(5)).await {
            Ok(d) => {
                *self.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((source, _msg)) => {
                self.rebuild_if_broken(generation, &producer, &source);
                Err(QueueError::Delivery {
                    topic: self.cfg.topic.clone(),
                    source,
                })
            }
        }
    }

    fn rebuild_if_broken(
        &self,
        generation: u64,
        producer: &FutureProducer,
        error: &rdkafka::error::KafkaError,
    ) {
        let why = if let Some((code, reason)) = producer.client().fatal_error() {
            format!("fatal error {code}: {reason}")
        } else {
            let stalled_for = self
                .failing_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(std::time::Instant::now)
                .elapsed();
            let timed_out = error.rdkafka_error_code()
                == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
            if !(timed_out && stalled_for >= self.cfg.stall_timeout) {
                return;
            }
            format!("no delivery for {stalled_for:?}")
        };
        let mut g = self.current.write().unwrap_or_else(|p| p.into_inner());
        if g.0 != generation {
            return; // another task already rebuilt it
        }
        match self.cfg.build() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *g, (generation + 1, fresh)).1;
                // Give the new producer a full stall window before judging it.
                *self.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(why, "producer rebuilt");
                // Dropping a librdkafka client joins its threads: not on an async worker.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || drop(old));
                }
            }
            Err(error) => tracing::error!(%error, why, "cannot rebuild producer"),
        }
    }

    /// Waits up to `timeout` for queued records to be delivered.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] when records are still queued at the deadline.
    pub fn flush(&self, timeout: Duration) -> Result<(), QueueError> {
        self.snapshot().1.flush(timeout).map_err(kafka("flush"))
    }
}
