//! Creating topics if they are missing (the broker may not auto-create them).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{QueueError, kafka};

/// Creates `topic` with `partitions` partitions and replication `replication` unless it
/// exists. An existing topic is left as it is (its partition count is not changed).
///
/// # Errors
/// [`QueueError::TopicCreate`] when the broker refuses for another reason than "exists".
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), QueueError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(kafka("create admin client"))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(kafka("create topics"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(QueueError::TopicCreate {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
