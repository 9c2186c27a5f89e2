//! The dead-letter producer: every rejected record goes here unchanged, with its original
//! headers, plus the reject reason and where it came from.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::consumer::ConsumedRecord;
use crate::{QueueError, kafka};
use telemetry_wire::wire::header;

/// Produces rejected records to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

impl std::fmt::Debug for DeadLetterProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetterProducer {
    /// A producer to `topic` for records rejected from `source_topic`.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] for invalid configuration.
    pub fn new(
        brokers: &str,
        topic: &str,
        source_topic: &str,
        extra: &[(String, String)],
    ) -> Result<Self, QueueError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000");
        for (k, v) in extra {
            c.set(k, v);
        }
        Ok(Self {
            producer: c.create().map_err(kafka("create dead-letter producer"))?,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
        })
    }

    /// Forwards `rec` with `reason` (snake_case) and `detail`, and waits for the delivery.
    ///
    /// # Errors
    /// [`QueueError::Delivery`] when the broker did not take it; the caller must not commit
    /// past this record then.
    pub async fn send(
        &self,
        rec: &ConsumedRecord,
        reason: &str,
        detail: &str,
    ) -> Result<(), QueueError> {
        let partition = rec.partition.to_string();
        let offset = rec.offset.to_string();
        // An oversized record has no key, value or headers here: it goes by reference, with
        // its size.
        let size = rec.oversized.map(|n| n.to_string());
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len() + 6);
        if let Some(n) = &size {
            headers = headers.insert(Header {
                key: header::RECORD_BYTES,
                value: Some(n.as_bytes()),
            });
        }
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        for (k, v) in [
            (header::REJECT_REASON, reason),
            (header::REJECT_DETAIL, detail),
            (header::SOURCE_TOPIC, self.source_topic.as_str()),
            (header::SOURCE_PARTITION, partition.as_str()),
            (header::SOURCE_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = rec.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = rec.value.as_deref() {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(source, _)| QueueError::Delivery {
                topic: self.topic.clone(),
                source,
            })
    }
}
