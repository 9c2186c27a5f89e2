//! Command-line flags (each with an env fallback) of the api.

use std::net::SocketAddr;
use std::time::Duration;

use collector::config::SourceArgs;
use secrecy::SecretString;

/// The api's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api",
    version,
    about = "REST API over GPU telemetry. With --embedded: the whole stack in one process (collector, store, API), no Kafka"
)]
pub struct ApiConfig {
    /// Address to listen on.
    #[arg(long, env = "API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Run collector + durable store + API in this process, without Kafka or a streamer.
    #[arg(long, env = "API_EMBEDDED")]
    pub embedded: bool,
    /// The streamer's gRPC URL (not used with --embedded).
    #[arg(long, env = "STREAMER_URL", default_value = "http://localhost:50051")]
    pub streamer_url: String,
    /// Timeout of each call to the streamer.
    #[arg(long, env = "STREAMER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub streamer_timeout: Duration,
    #[command(flatten)]
    pub secrets: common_auth::SecretArgs,
    /// The API key (prefer the env var or --secret-dir: flags show in `ps`).
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<SecretString>,
    /// The service token for the streamer (not used with --embedded).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<SecretString>,
    /// Embedded mode: directory of the durable store (created if missing).
    #[arg(long, env = "API_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// Embedded mode: raw samples kept (by age).
    #[arg(long, env = "STREAMER_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Embedded mode: how long 1-minute rollups (min, max, avg, last, count) are kept.
    #[arg(long = "retention-1m", env = "STREAMER_RETENTION_1M", default_value = "90d", value_parser = humantime::parse_duration)]
    pub retention_1m: Duration,
    /// Embedded mode: how long 1-hour rollups are kept.
    #[arg(long = "retention-1h", env = "STREAMER_RETENTION_1H", default_value = "730d", value_parser = humantime::parse_duration)]
    pub retention_1h: Duration,
    /// Embedded mode: also drop the oldest raw samples while their chunks exceed this many
    /// bytes (0: no limit).
    #[arg(long, env = "STREAMER_RETENTION_BYTES", default_value_t = 0)]
    pub retention_bytes: u64,
    /// Embedded mode: how often buffered samples are compressed to disk (every sample is
    /// in the fsynced write-ahead log before that).
    #[arg(long, env = "STREAMER_FLUSH_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Embedded mode: the GPU source (default auto: NVML if present, else simulated).
    #[command(flatten)]
    pub source: SourceArgs,
}

impl ApiConfig {
    /// The embedded store's settings: these flags, with the write-ahead log on.
    pub fn disk_config(&self) -> streamer::store::DiskConfig {
        let mut d = streamer::store::DiskConfig::new(&self.data_dir);
        d.retention = self.retention;
        d.retention_bytes = self.retention_bytes;
        d.retention_1m = self.retention_1m;
        d.retention_1h = self.retention_1h;
        d.flush_interval = self.flush_interval;
        d.write_ahead = true;
        d
    }
}
