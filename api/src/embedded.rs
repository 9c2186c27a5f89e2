//! The embedded mode: collector → in-memory store → REST API in one process, no Kafka and
//! no gRPC hop. What `cargo run -p api -- --embedded` starts.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use collector::config::SourceKind;
use collector::metrics::CollectorMetrics;
use collector::sampler::{BatchSink, run_sampler};
use msg_queue_client::wire::TelemetryBatch;
use streamer::metrics::StreamerMetrics;
use streamer::store::{MemoryStore, Store};

use crate::backend::StoreBackend;
use crate::config::ApiConfig;

/// Writes sampled batches straight into the store.
#[derive(Debug)]
pub struct StoreSink {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Ingest counters (the same ones the streamer keeps).
    pub metrics: Arc<StreamerMetrics>,
}

impl BatchSink for StoreSink {
    fn accept(&self, batch: TelemetryBatch) {
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        match self.store.apply(&batch) {
            Ok(a) => self.metrics.applied(a),
            Err(error) => {
                self.metrics.error("store");
                tracing::error!(%error, "store failed");
            }
        }
    }
}

/// Starts the source, the sampler and the store's sweeper; returns the backend the API
/// reads and the task running both (which ends when `shutdown` and `sweeper_shutdown`
/// resolve: two futures of the same stop signal).
///
/// # Errors
/// [`crate::RunError`] when NVML was asked for explicitly and cannot start.
pub fn start(
    cfg: &ApiConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    sweeper_shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(StoreBackend, tokio::task::JoinHandle<()>), crate::RunError> {
    let source = collector::open_source(&cfg.source, SourceKind::Auto)?;
    let _ = writeln!(std::io::stdout(), "GPU source: {}", source.describe());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(cfg.retention));
    let metrics = Arc::new(StreamerMetrics::default());
    let sink = Arc::new(StoreSink {
        store: store.clone(),
        metrics: metrics.clone(),
    });
    let sampler = run_sampler(
        source,
        cfg.source.interval,
        None,
        sink,
        Arc::new(CollectorMetrics::default()),
        shutdown,
    );
    let sweeper = streamer::store::run_sweeper(
        store.clone(),
        streamer::store::SWEEP_INTERVAL,
        sweeper_shutdown,
    );
    let task = tokio::spawn(async move {
        tokio::join!(sampler, sweeper);
    });
    Ok((StoreBackend { store, metrics }, task))
}
