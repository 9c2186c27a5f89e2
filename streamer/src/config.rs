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
    /// Where the history lives: `builtin` (this streamer's durable store in --data-dir; one
    /// streamer) or `victoriametrics` (every batch written to VictoriaMetrics with Prometheus
    /// remote write and acknowledged before its offsets are committed; `/telemetry` read
    /// back from its export API; no local history, so any number of streamers can share
    /// the consumer group).
    #[arg(long, env = "HISTORY_BACKEND", value_enum, default_value_t = HistoryBackend::Builtin)]
    pub history_backend: HistoryBackend,
    /// With `--history-backend victoriametrics`: its base URL, `http://` or `https://`
    /// (`http://vm:8428`; samples go to `<url>/api/v1/write`; a cluster's vminsert:
    /// `http://vminsert:8480/insert/0/prometheus`).
    #[arg(long, env = "VICTORIAMETRICS_URL")]
    pub victoriametrics_url: Option<String>,
    /// Where `/telemetry` reads go (`<url>/api/v1/export`), when not the same as
    /// --victoriametrics-url (a cluster's vmselect: `http://vmselect:8481/select/0/prometheus`).
    #[arg(long, env = "VICTORIAMETRICS_READ_URL")]
    pub victoriametrics_read_url: Option<String>,
    /// Extra HTTP headers for every VictoriaMetrics request, `Name: value`, repeatable (env:
    /// one per line), e.g. `Authorization: Basic …` for a proxy. Values are never logged.
    // Parsed at startup (remote_write::parse_headers), not by clap: clap's error would echo
    // the value.
    #[arg(
        long = "victoriametrics-header",
        env = "VICTORIAMETRICS_HEADERS",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub victoriametrics_headers: Vec<String>,
    /// PEM file of certificate authorities to trust for an `https://` VictoriaMetrics, besides
    /// the system's.
    #[arg(long, env = "VICTORIAMETRICS_CA_FILE")]
    pub victoriametrics_ca_file: Option<std::path::PathBuf>,
    /// A bearer token VictoriaMetrics (or its proxy) requires (prefer the env var from a
    /// Secret: flags show in `ps`).
    #[arg(long, env = "VICTORIAMETRICS_BEARER_TOKEN", hide_env_values = true)]
    pub victoriametrics_bearer_token: Option<SecretString>,
    /// Serve `/metrics` (Prometheus text or OpenMetrics) and `/healthz` on this address (e.g.
    /// 0.0.0.0:9401); off when unset.
    #[arg(long, env = "STREAMER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Extra librdkafka properties for every Kafka client, `key=value`, repeatable (env:
    /// one per line, so a value may hold commas), e.g. `security.protocol=SASL_PLAINTEXT`, `sasl.mechanisms=PLAIN`,
    /// `sasl.username=…`, `sasl.password=…` (prefer the env var from a Secret for a password).
    // Parsed at startup (msg_queue_client::parse_properties), not by clap: clap's error
    // would echo the whole value, which may be a password.
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub kafka_properties: Vec<String>,
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
    /// The largest record (decompressed key, value and headers) taken whole; a larger one is
    /// dead-lettered by reference (source topic, partition, offset; reason
    /// `record_too_large`) without being copied.
    #[arg(long, env = "MAX_RECORD_BYTES", default_value_t = msg_queue_client::consumer::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Directory of the durable store (created if missing; one streamer per directory; not
    /// used with `--history-backend victoriametrics`).
    #[arg(long, env = "STREAMER_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How often samples past retention are swept.
    #[arg(long, env = "STREAMER_SWEEP_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,
    /// Flush sooner when this many samples wait in memory (bounds memory).
    #[arg(
        long,
        env = "STREAMER_MAX_BUFFERED_SAMPLES",
        default_value_t = 2_000_000
    )]
    pub max_buffered_samples: usize,
    #[command(flatten)]
    pub secrets: common_auth::SecretArgs,
    #[command(flatten)]
    pub log: telemetry_log::LogArgs,
    #[command(flatten)]
    pub grpc: GrpcLimits,
    /// How long after its retirement a retired service token (`service-token-previous`)
    /// still verifies records: set it to the telemetry topic's retention (older records
    /// are gone from Kafka, so nothing is left for it to verify).
    #[arg(long, env = "RETIRED_TOKEN_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retired_token_max_age: Duration,
    /// The service token (prefer the env var or --secret-dir: flags show in `ps`).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<SecretString>,
}

impl StreamerConfig {
    /// The store settings these flags give.
    pub fn disk_config(&self) -> crate::store::DiskConfig {
        let mut d = crate::store::DiskConfig::new(&self.data_dir);
        self.store.apply(&mut d);
        d.max_open_samples = self.max_buffered_samples;
        d
    }
}

/// Limits on what gRPC clients can hold.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcLimits {
    /// Streams (calls) one connection may have open, and in progress, at once.
    #[arg(long, env = "STREAMER_GRPC_MAX_STREAMS", default_value_t = 256)]
    pub max_streams_per_connection: u32,
    /// `WatchLatest` streams open at once (an api replica holds one); more are refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMER_MAX_WATCHERS", default_value_t = crate::query::DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// Longest a call may take to its response head.
    #[arg(long, env = "STREAMER_CALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 256,
            max_watchers: crate::query::DEFAULT_MAX_WATCHERS,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Retention and flush flags of a durable store: the streamer's, and the api's in embedded
/// mode.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Raw samples kept (by age).
    #[arg(long, env = "STREAMER_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How long 1-minute rollups (min, max, avg, last, count) are kept.
    #[arg(long = "retention-1m", env = "STREAMER_RETENTION_1M", default_value = "90d", value_parser = humantime::parse_duration)]
    pub retention_1m: Duration,
    /// How long 1-hour rollups are kept.
    #[arg(long = "retention-1h", env = "STREAMER_RETENTION_1H", default_value = "730d", value_parser = humantime::parse_duration)]
    pub retention_1h: Duration,
    /// Also drop the oldest raw samples while their chunks exceed this many bytes (0: no
    /// limit; e.g. 80% of the volume).
    #[arg(long, env = "STREAMER_RETENTION_BYTES", default_value_t = 0)]
    pub retention_bytes: u64,
    /// How often buffered samples are compressed to disk. After a kill the streamer
    /// re-reads at most this much from Kafka (keep it well under the topic's retention);
    /// the embedded api has them in its write-ahead log.
    #[arg(long, env = "STREAMER_FLUSH_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
}

impl StoreArgs {
    /// Sets these flags' fields of `d`.
    pub fn apply(&self, d: &mut crate::store::DiskConfig) {
        d.retention = self.retention;
        d.retention_bytes = self.retention_bytes;
        d.retention_1m = self.retention_1m;
        d.retention_1h = self.retention_1h;
        d.flush_interval = self.flush_interval;
    }
}

/// Where the streamer's history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HistoryBackend {
    /// This streamer's durable store.
    #[default]
    Builtin,
    /// VictoriaMetrics (remote write in, export API out); no local history.
    Victoriametrics,
}
