//! The collector: reads every GPU on its node and publishes signed telemetry batches.
//!
//! - [`source::GpuSource`]: the seam; [`nvml::NvmlSource`] reads real GPUs through NVML,
//!   [`simulated::SimulatedSource`] is a deterministic fleet for laptops, demos and tests.
//! - [`sampler::run_sampler`] reads the source every interval into a [`sampler::BatchSink`].
//! - [`buffer::Buffer`] holds signed records while the broker is away (bounded, drops oldest).
//! - [`publisher::run_publisher`] delivers them through the idempotent producer.
//! - [`run`] wires these together for the `collector` binary; [`open_source`] is shared
//!   with the api's embedded mode.

pub mod buffer;
pub mod config;
pub mod gpu_health;
pub mod health;
pub mod kubelet;
pub mod metrics;
pub mod nvml;
pub mod print;
pub mod procfs;
pub mod publisher;
pub mod sampler;
pub mod simulated;
pub mod source;
pub mod xid;

use std::sync::Arc;

use common_auth::SecretSpec;
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::buffer::Buffer;
use crate::config::{CollectorConfig, SourceArgs, SourceKind};
use crate::metrics::CollectorMetrics;
use crate::sampler::KafkaSink;
use crate::simulated::{FleetSpec, SimulatedSource};
use crate::source::{GpuSource, SourceError};

/// Errors that stop the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The GPU source could not start.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A secret is missing.
    #[error(transparent)]
    Auth(#[from] common_auth::AuthError),
    /// Kafka setup failed.
    #[error(transparent)]
    Queue(#[from] msg_queue_client::QueueError),
    /// The metrics address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Opens the source the flags ask for (`default` when `--source` is not given). `auto` tries
/// NVML and falls back to the simulated fleet, saying so.
///
/// # Errors
/// [`SourceError`] when NVML was asked for explicitly and cannot start.
pub fn open_source(
    args: &SourceArgs,
    default: SourceKind,
) -> Result<Box<dyn GpuSource>, SourceError> {
    let simulated = || {
        Box::new(SimulatedSource::new(FleetSpec {
            nodes: args.sim_nodes,
            gpus_per_node: args.sim_gpus_per_node,
            seed: args.sim_seed,
        })) as Box<dyn GpuSource>
    };
    let nvml = || {
        nvml::NvmlSource::open(args.nvml_lib.as_deref(), &args.node()).map(|s| {
            let s = s.with_xid_window(args.xid_health_window);
            // The kubelet is asked on a task of its own (never on the sampling path).
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let table = Arc::new(kubelet::PodTable::default());
                    rt.spawn(kubelet::run(
                        kubelet::KubeletConfig {
                            socket: args.kubelet_socket.clone(),
                            checkpoint: args.kubelet_checkpoint.clone(),
                            refresh: args.kubelet_refresh,
                        },
                        table.clone(),
                        std::future::pending(),
                    ));
                    s.with_pods(table, args.proc_root.clone())
                }
                Err(_) => s,
            }
        })
    };
    match args.source.unwrap_or(default) {
        SourceKind::Simulated => Ok(simulated()),
        SourceKind::Nvml => Ok(Box::new(nvml()?)),
        SourceKind::Auto => match nvml() {
            Ok(s) => Ok(Box::new(s)),
            Err(error) => {
                tracing::info!(%error, "NVML unavailable; using the simulated fleet");
                Ok(simulated())
            }
        },
    }
}

/// What a collector run did, reported when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Sampling rounds completed.
    pub rounds: u64,
    /// GPU samples read.
    pub samples: u64,
    /// Records delivered to the broker.
    pub published: u64,
    /// Records dropped because the buffer was full.
    pub dropped: u64,
    /// Records still undelivered at exit (drain timeout).
    pub undelivered: u64,
    /// Producer rebuilds after fatal errors.
    pub producer_rebuilds: u64,
}

impl RunSummary {
    /// What the sampler and publisher counted; the buffer and producer figures are zero.
    fn counted(metrics: &CollectorMetrics) -> Self {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            rounds: load(&metrics.rounds),
            samples: load(&metrics.samples),
            published: load(&metrics.published),
            dropped: 0,
            undelivered: 0,
            producer_rebuilds: 0,
        }
    }
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rounds={} samples={} published={} dropped={} undelivered={} producer_rebuilds={}",
            self.rounds,
            self.samples,
            self.published,
            self.dropped,
            self.undelivered,
            self.producer_rebuilds
        )
    }
}

/// `--output json`: sample and print, nothing else.
async fn print_only(
    cfg: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, CollectorError> {
    let source = open_source(&cfg.source, SourceKind::Nvml)?;
    let metrics = Arc::new(CollectorMetrics::default());
    sampler::run_sampler(
        source,
        cfg.source.interval,
        (cfg.rounds > 0).then_some(cfg.rounds),
        Arc::new(print::JsonSink),
        metrics.clone(),
        shutdown,
    )
    .await;
    Ok(RunSummary::counted(&metrics))
}

/// Runs the collector until `cfg.rounds` rounds are done or `shutdown` resolves, then
/// delivers what is buffered (up to `cfg.drain_timeout`).
///
/// # Errors
/// [`CollectorError`] when the source, the secret or Kafka cannot be set up.
pub async fn run(
    cfg: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, CollectorError> {
    if cfg.output == config::Output::Json {
        return print_only(cfg, shutdown).await;
    }
    let secrets = common_auth::SecretSource::open(&cfg.secrets).await?;
    let tokens = secrets.load(&SecretSpec::SERVICE_TOKEN, cfg.service_token.as_ref())?;
    let kafka_properties = msg_queue_client::parse_properties(&cfg.kafka_properties)?;
    let source = open_source(&cfg.source, SourceKind::Nvml)?;
    tracing::info!(source = %source.describe(), secrets = %secrets.describe(), brokers = %cfg.brokers, topic = %cfg.topic, "collector starting");

    // In the background: sampling starts at once, even while the broker is away.
    let topics = tokio::spawn(msg_queue_client::topic::ensure_topics_until_done(
        cfg.brokers.clone(),
        vec![cfg.topic.clone()],
        cfg.partitions,
        cfg.replication,
        std::time::Duration::from_secs(5),
        kafka_properties.clone(),
    ));
    let mut pcfg = ProducerConfig::new(&cfg.brokers, &cfg.topic);
    pcfg.compression = cfg.compression.clone();
    pcfg.extra = kafka_properties;
    let producer = TelemetryProducer::new(pcfg)?;

    let metrics = Arc::new(CollectorMetrics::default());
    let _ = metrics.signing.set(tokens.clone());
    let buffer = Arc::new(Buffer::new(cfg.buffer_records));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    if let Some(addr) = cfg.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| CollectorError::Listen { addr, source })?;
        let mut rx = stop_tx.subscribe();
        tokio::spawn(health::serve(
            listener,
            metrics.clone(),
            buffer.clone(),
            cfg.source.interval,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
    }
    let sink = Arc::new(KafkaSink::new(tokens.clone(), buffer.clone()));
    let mut reload_stop = stop_tx.subscribe();
    let reload = secrets.spawn_watch(vec![(SecretSpec::SERVICE_TOKEN, tokens)], async move {
        let _ = reload_stop.wait_for(|s| *s).await;
    });

    // Sampling stops on `shutdown` or after `rounds`; then the publisher drains.
    let sampler = sampler::run_sampler(
        source,
        cfg.source.interval,
        (cfg.rounds > 0).then_some(cfg.rounds),
        sink,
        metrics.clone(),
        shutdown,
    );
    let publisher = tokio::spawn(publisher::run_publisher(
        producer.clone(),
        buffer.clone(),
        metrics.clone(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        cfg.drain_timeout,
        cfg.max_in_flight,
    ));
    sampler.await;
    let _ = stop_tx.send(true);
    let left = publisher.await.unwrap_or(usize::MAX);
    topics.abort();
    if let Some(r) = reload {
        let _ = r.await;
    }
    let _ = producer.flush(std::time::Duration::from_secs(1));
    Ok(RunSummary {
        dropped: buffer.dropped(),
        undelivered: left as u64,
        producer_rebuilds: producer.rebuilds(),
        ..RunSummary::counted(&metrics)
    })
}
