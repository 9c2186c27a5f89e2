//! Command-line flags (each with an env fallback) of the streamer.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

/// The streamer's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "streamer",
    version,
    about = "Consumes GPU telemetry from Kafka, verifies and stores it, and answers queries over gRPC"
)]
pub struct StreamerConfig {
    /// Address of the gRPC query service.
    #[arg(long, env = "STREAMER_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Telemetry topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = msg_queue_client::DEFAULT_TOPIC)]
    pub topic: String,
    /// Dead-letter topic for rejected records.
    #[arg(long, env = "KAFKA_DEAD_LETTER_TOPIC", default_value = msg_queue_client::DEFAULT_DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,
    /// Partitions of the topics when the streamer creates them.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,
    /// Replication factor of the topics when the streamer creates them.
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION", default_value_t = 1)]
    pub replication: i32,
    /// Consumer group id.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "gpu-telemetry-streamer")]
    pub group_id: String,
    /// Consumer session timeout: how soon a dead streamer's partitions move to another.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// History kept per GPU by the in-memory store.
    #[arg(long, env = "STREAMER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    #[command(flatten)]
    pub secrets: common_auth::SecretArgs,
    /// The service token (prefer the env var or --secret-dir: flags show in `ps`).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<SecretString>,
}
