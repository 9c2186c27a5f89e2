//! Creating topics if they are missing (the broker may not auto-create them).

use std::time::Duration;

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
    ensure_topic_with(brokers, topic, partitions, replication, &[]).await
}

/// [`ensure_topic`] with extra librdkafka properties (security settings, for example).
///
/// # Errors
/// See [`ensure_topic`].
pub async fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    extra: &[(String, String)],
) -> Result<(), QueueError> {
    let admin: AdminClient<DefaultClientContext> = crate::client_config(brokers, extra)
        .create()
        .map_err(kafka("create admin client"))?;
    // The broker stamps each record when it appends it: a timestamp no producer can choose,
    // which bounds what a retired service token may still sign (see `wire::record_time`).
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("message.timestamp.type", "LogAppendTime");
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
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

/// Ensures every topic of `topics`, retrying every `retry` until each exists (the broker may
/// not be up yet). Meant to run as a background task beside the service, so startup never
/// waits for the broker.
pub async fn ensure_topics_until_done(
    brokers: String,
    topics: Vec<String>,
    partitions: i32,
    replication: i32,
    retry: Duration,
    extra: Vec<(String, String)>,
) {
    for topic in topics {
        let mut attempt = 0u32;
        while let Err(error) =
            ensure_topic_with(&brokers, &topic, partitions, replication, &extra).await
        {
            attempt += 1;
            if attempt.is_power_of_two() {
                tracing::warn!(%error, topic, attempt, "cannot ensure topic yet; retrying");
            }
            tokio::time::sleep(retry).await;
        }
    }
}
