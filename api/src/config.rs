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
    /// The streamer's gRPC URL (not used with --embedded); several streamers (the
    /// `victoriametrics` history): URLs separated by commas, or one host that resolves to
    /// every streamer (a headless Service) — each address found is one streamer.
    #[arg(long, env = "STREAMER_URL", default_value = "http://localhost:50051")]
    pub streamer_url: String,
    /// How often the streamer URLs' hosts are resolved again (streamers come and go).
    #[arg(long, env = "STREAMER_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub streamer_refresh: Duration,
    /// Timeout of each call to the streamer.
    #[arg(long, env = "STREAMER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub streamer_timeout: Duration,
    #[command(flatten)]
    pub secrets: common_auth::SecretArgs,
    #[command(flatten)]
    pub log: telemetry_log::LogArgs,
    #[command(flatten)]
    pub http: crate::server::HttpLimits,
    /// Raw range answers (`/telemetry` without `step`) in progress at once; more wait.
    #[arg(long, env = "API_MAX_CONCURRENT_RANGES", default_value_t = crate::routes::DEFAULT_CONCURRENT_RANGES)]
    pub max_concurrent_ranges: usize,
    /// Updates (250 ms of events each) a live stream's client may have waiting; a client
    /// further behind is dropped.
    #[arg(long, env = "API_SSE_CLIENT_BUFFER", default_value_t = crate::sse::DEFAULT_CLIENT_BUFFER)]
    pub sse_client_buffer: usize,
    /// The API key (prefer the env var or --secret-dir: flags show in `ps`).
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<SecretString>,
    /// The service token for the streamer (not used with --embedded).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<SecretString>,
    /// Embedded mode: directory of the durable store (created if missing).
    #[arg(long, env = "API_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// Embedded mode: retention and flushes of the store.
    #[command(flatten)]
    pub store: streamer::config::StoreArgs,
    /// Embedded mode: the GPU source (default auto: NVML if present, else simulated).
    #[command(flatten)]
    pub source: SourceArgs,
    /// A one-off command instead of serving.
    #[command(subcommand)]
    pub command: Option<ApiCommand>,
}

/// One-off commands of the api binary.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApiCommand {
    /// Rotate the API key and the service token of a release's Secret through the Kubernetes
    /// API (the kubeconfig's cluster): new strong values, the old service token kept as
    /// retired, what changed printed by fingerprint, then a wait until every api, collector
    /// and the streamer use the new values. No restart. Needs `get` and `patch` on the
    /// Secret, `list` on pods and `get` on pods/proxy.
    RotateSecrets(common_auth::rotate::RotateArgs),
}

impl ApiConfig {
    /// The embedded store's settings: these flags, with the write-ahead log on.
    pub fn disk_config(&self) -> streamer::store::DiskConfig {
        let mut d = streamer::store::DiskConfig::new(&self.data_dir);
        self.store.apply(&mut d);
        d.write_ahead = true;
        d
    }
}
