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
    /// A `--kafka-property` is malformed (the message names it, never its value).
    #[error("--kafka-property: {0}")]
    Property(String),
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
            QueueError::TopicCreate { .. } | QueueError::Property(_) => return false,
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

/// A client configuration for `brokers` with the `extra` properties (security) applied.
pub(crate) fn client_config(brokers: &str, extra: &[(String, String)]) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

pub(crate) fn kafka(action: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> QueueError {
    move |source| QueueError::Kafka { action, source }
}

/// Parses every `key=value` librdkafka property given (`--kafka-property`).
///
/// # Errors
/// [`QueueError::Property`] naming the first malformed one (never its value).
pub fn parse_properties(raw: &[String]) -> Result<Vec<(String, String)>, QueueError> {
    raw.iter()
        .map(|p| parse_property(p).map_err(QueueError::Property))
        .collect()
}

/// Parses one `key=value` librdkafka property (`--kafka-property`).
///
/// # Errors
/// A line saying what is wrong (never the value, which may be a password).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        "expected key=value (a librdkafka property, e.g. security.protocol=SASL_PLAINTEXT)"
            .to_string()
    })?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Err(format!("{k:?} is not a librdkafka property name"));
    }
    if k == "bootstrap.servers" {
        return Err("set bootstrap.servers with --brokers".into());
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod property_tests {
    use super::parse_property;

    #[test]
    fn properties_are_key_value_and_errors_never_show_the_value() {
        assert_eq!(
            parse_property("sasl.password=s3cr=t").unwrap(),
            ("sasl.password".to_string(), "s3cr=t".to_string())
        );
        let err = parse_property("sasl password=hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = super::parse_properties(&["a.b=1".into(), "sasl password=hunter2".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--kafka-property: \"sasl password\" is not a librdkafka property name"
        );
        assert!(parse_property("no-equals-sign").is_err());
        assert!(parse_property("bootstrap.servers=x:9092").is_err());
    }
}
