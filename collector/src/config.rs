//! Command-line flags (each with an env fallback) of the collector.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// Where GPU readings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// NVML (the NVIDIA driver's library); fails if it cannot be loaded.
    Nvml,
    /// A deterministic simulated fleet.
    Simulated,
    /// NVML if it loads, else the simulated fleet.
    Auto,
}

/// Where sampled batches go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Signed records to Kafka (the normal mode).
    Kafka,
    /// One JSON line per batch on stdout; no broker, no token (for checking a node).
    Json,
}

/// Flags that choose and shape the GPU source (shared with the api's embedded mode).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// GPU source: nvml, simulated, or auto (nvml if it loads, else simulated).
    /// Default: nvml for the collector, auto for the api's embedded mode.
    #[arg(long, env = "COLLECTOR_SOURCE", value_enum)]
    pub source: Option<SourceKind>,
    /// Path of the NVML library (default: libnvidia-ml.so.1 from the loader path).
    #[arg(long, env = "NVML_LIB_PATH")]
    pub nvml_lib: Option<PathBuf>,
    /// Node name stamped on every batch (the chart passes spec.nodeName). Default: host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Simulated source: number of nodes.
    #[arg(long, env = "SIM_NODES", default_value_t = 1)]
    pub sim_nodes: u32,
    /// Simulated source: GPUs per node.
    #[arg(long, env = "SIM_GPUS_PER_NODE", default_value_t = 8)]
    pub sim_gpus_per_node: u32,
    /// Simulated source: seed (same seed, same fleet and readings).
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    pub sim_seed: u64,
    /// Sampling interval, e.g. 1s, 500ms.
    #[arg(long, env = "COLLECTOR_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// NVML source: how long a health-bearing XID (e.g. 79, 48, 94) keeps a GPU `failed` or
    /// `degraded` after it arrives. The per-code XID counters are not affected.
    #[arg(long, env = "XID_HEALTH_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub xid_health_window: Duration,
    /// NVML source: the kubelet's PodResources socket, asked every `--kubelet-refresh` for
    /// the pods holding each GPU (absent: pods are not attributed).
    #[arg(long, env = "KUBELET_SOCKET", default_value = crate::kubelet::DEFAULT_SOCKET)]
    pub kubelet_socket: PathBuf,
    /// NVML source: the kubelet's device-manager checkpoint, which ties a pod's UID (in a
    /// process's cgroup) to its name on a GPU several pods share.
    #[arg(long, env = "KUBELET_CHECKPOINT", default_value = crate::kubelet::DEFAULT_CHECKPOINT)]
    pub kubelet_checkpoint: PathBuf,
    /// NVML source: how often the pod mapping is refreshed from the kubelet.
    #[arg(long, env = "KUBELET_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kubelet_refresh: Duration,
    /// NVML source: the host's /proc (NVML reports host PIDs; the chart mounts it at
    /// /host/proc), read for each GPU process's cgroup.
    #[arg(long, env = "HOST_PROC", default_value = "/proc")]
    pub proc_root: PathBuf,
}

impl SourceArgs {
    /// The node name: `--node-name`, else this host's name.
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
    }
}

/// The collector's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "collector",
    version,
    about = "Reads every GPU on this node and publishes signed telemetry batches to Kafka"
)]
pub struct CollectorConfig {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where batches go: kafka, or json (print them; no broker or token needed).
    #[arg(long, env = "COLLECTOR_OUTPUT", value_enum, default_value = "kafka")]
    pub output: Output,
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
    /// Partitions of the telemetry topic when the collector creates it.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,
    /// Replication factor of the telemetry topic when the collector creates it.
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION", default_value_t = 1)]
    pub replication: i32,
    /// Compression: none, gzip, snappy or lz4.
    #[arg(long, env = "KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,
    /// Records (one per node and round) kept while the broker is away; the oldest go first.
    #[arg(long, env = "COLLECTOR_BUFFER_RECORDS", default_value_t = 3600)]
    pub buffer_records: usize,
    /// Records handed to the producer at once, awaiting acknowledgement.
    #[arg(long, env = "COLLECTOR_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Stop after this many sampling rounds (0: run until SIGTERM).
    #[arg(long, env = "COLLECTOR_ROUNDS", default_value_t = 0)]
    pub rounds: u64,
    /// On shutdown, how long to keep trying to deliver what is buffered.
    #[arg(long, env = "COLLECTOR_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Serve `/metrics` and `/healthz` on this address (e.g. 0.0.0.0:9400); off when unset.
    #[arg(long, env = "COLLECTOR_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub secrets: common_auth::SecretArgs,
    #[command(flatten)]
    pub log: telemetry_log::LogArgs,
    /// The service token (prefer the env var or --secret-dir: flags show in `ps`).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<SecretString>,
}
