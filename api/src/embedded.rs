//! The embedded mode: collector → durable store → REST API in one process, no Kafka and
//! no gRPC hop. What `cargo run -p api -- --embedded` starts.
//!
//! Sampled batches go over a bounded channel to one writer thread that applies them to the
//! store (write-ahead log first, see [`streamer::store::DiskHistory`]), so disk I/O never
//! runs on the async workers.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};

use collector::config::SourceKind;
use collector::metrics::CollectorMetrics;
use collector::sampler::{BatchSink, run_sampler};
use streamer::metrics::StreamerMetrics;
use streamer::store::Store;
use telemetry_wire::wire::TelemetryBatch;

use crate::backend::StoreBackend;
use crate::config::ApiConfig;

/// Batches waiting for the writer thread at most (one per sampling round).
pub const WRITER_QUEUE: usize = 256;

/// Hands sampled batches to the store's writer thread.
#[derive(Debug)]
pub struct StoreSink {
    tx: SyncSender<TelemetryBatch>,
    metrics: Arc<StreamerMetrics>,
}

impl BatchSink for StoreSink {
    fn accept(&self, batch: TelemetryBatch) {
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.error("store");
                tracing::error!("store writer is behind; batch dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.error("store");
                tracing::error!("store writer has stopped; batch dropped");
            }
        }
    }
}

/// Starts the writer thread over `store`; returns the sink feeding it and the thread
/// (which ends once every sink is dropped, after applying what they sent).
pub fn spawn_writer(
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
) -> std::io::Result<(StoreSink, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<TelemetryBatch>(WRITER_QUEUE);
    let m = metrics.clone();
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            for batch in rx {
                m.records.fetch_add(1, Ordering::Relaxed);
                match store.apply(&batch) {
                    Ok(a) => m.applied(a),
                    Err(error) => {
                        m.error("store");
                        tracing::error!(%error, "store failed; batch not stored");
                    }
                }
            }
        })?;
    Ok((StoreSink { tx, metrics }, handle))
}

/// Starts the source, the sampler, the store's writer thread and its maintenance (flush,
/// sweep); returns the backend the API reads and the task running them, which ends after
/// `shutdown`: the sampler stops, the writer applies what is queued, the store flushes.
///
/// # Errors
/// [`crate::RunError`] when NVML was asked for explicitly and cannot start, or the writer
/// thread cannot be spawned.
pub fn start(
    cfg: &ApiConfig,
    store: Arc<Store>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(StoreBackend, tokio::task::JoinHandle<()>), crate::RunError> {
    let source = collector::open_source(&cfg.source, SourceKind::Auto)?;
    let _ = writeln!(std::io::stdout(), "GPU source: {}", source.describe());
    let metrics = Arc::new(StreamerMetrics::default());
    let (sink, writer) = spawn_writer(store.clone(), metrics.clone())?;
    let sampler = run_sampler(
        source,
        cfg.source.interval,
        None,
        Arc::new(sink),
        Arc::new(CollectorMetrics::default()),
        shutdown,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let maintenance = tokio::spawn(streamer::store::run_maintenance(
        store.clone(),
        metrics.clone(),
        streamer::store::SWEEP_INTERVAL,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let task = tokio::spawn(async move {
        sampler.await;
        // The sampler dropped its sink: the writer drains the queue and ends.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = stop_tx.send(());
        let _ = maintenance.await;
    });
    Ok((StoreBackend { store, metrics }, task))
}
