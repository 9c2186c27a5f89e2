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
    /// Run collector + in-memory store + API in this process, without Kafka or a streamer.
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
    /// Embedded mode: history kept per GPU in memory.
    #[arg(long, env = "STREAMER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Embedded mode: the GPU source (default auto: NVML if present, else simulated).
    #[command(flatten)]
    pub source: SourceArgs,
}
