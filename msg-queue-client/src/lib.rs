//! The Kafka plumbing for telemetry records (the record format itself, free of I/O, is the
//! `telemetry-wire` crate).
//!
//! - [`topic`]: creating the telemetry and dead-letter topics if missing.
//! - [`producer`]: [`producer::TelemetryProducer`], idempotent, acks=all, compressed; rebuilds
//!   itself after a fatal error instead of stalling.
//! - [`consumer`]: [`consumer::TelemetryConsumer`], a consumer-group member that starts each
//!   assigned partition where the caller's store says (see [`consumer::OffsetSource`]) and
//!   commits only what the caller says is stored.
//! - [`dead_letter`]: [`dead_letter::DeadLetterProducer`], which forwards a rejected record
//!   unchanged with the reason in headers.

pub mod consumer;
pub mod dead_letter;
pub mod producer;
pub mod topic;

/// Default topic for telemetry batches.
pub const DEFAULT_TOPIC: &str = "gpu-telemetry";
/// Default dead-letter topic.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "gpu-telemetry-dlq";

/// Errors of the Kafka plumbing.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A Kafka client call failed.
    #[error("kafka {action} failed: {source}")]
    Kafka {
        /// What was being done, e.g. `create producer`.
        action: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {reason}")]
    TopicCreate {
        /// Topic name.
        topic: String,
        /// Broker's reason.
        reason: String,
    },
    /// A record was not delivered.
    #[error("delivery to {topic} failed: {source}")]
    Delivery {
        /// Topic name.
        topic: String,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
}

impl QueueError {
    /// Whether retrying cannot help: the broker refuses this *record* for good (too large,
    /// invalid). Everything else is worth retrying: timeouts, leader changes, the broker being
    /// away, and authorization errors too, which an operator can fix (skipping records
    /// because of a wrong ACL would lose them).
    pub fn is_permanent(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        let source = match self {
            QueueError::Kafka { source, .. } | QueueError::Delivery { source, .. } => source,
            QueueError::TopicCreate { .. } => return false,
        };
        matches!(
            source.rdkafka_error_code(),
            Some(
                C::MessageSizeTooLarge
                    | C::InvalidMessageSize
                    | C::InvalidMessage
                    | C::MessageBatchTooLarge
                    | C::InvalidRecord
            )
        )
    }
}

pub(crate) fn kafka(action: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> QueueError {
    move |source| QueueError::Kafka { action, source }
}
