//! Where the api reads telemetry from: the streamer over gRPC (the deployed shape), or a
//! store in the same process (the embedded mode).

use std::sync::Arc;
use std::time::Duration;

use common_auth::KeyRing;
use common_auth::grpc::AttachServiceToken;
use futures::StreamExt as _;
use streamer::metrics::StreamerMetrics;
use streamer::query::proto::telemetry_query_client::TelemetryQueryClient;
use streamer::query::proto::{
    Counter, GetGpuRequest, GpuStatus, LatestUpdate, ListGpusRequest, QueryAggregateRequest,
    QueryRangeRequest, StatsRequest, WatchLatestRequest,
};
use streamer::query::{state, status};
use streamer::store::{Agg, AggRow, Block, GpuState, GpuView, LatestIndex, RangePart, Store};
use tonic::service::interceptor::InterceptedService;

use crate::model::GpuFilter;
use tonic::transport::Channel;

/// The backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The streamer is unreachable or failed.
    #[error("streamer unavailable: {0}")]
    Unavailable(String),
}

/// A range answer as it streams: blocks of readings, oldest first, then
/// [`RangePart::End`].
pub type RangeStream = futures::stream::BoxStream<'static, Result<RangePart, BackendError>>;

/// An aggregate query's answer: buckets oldest first, and whether there were more.
pub type AggregateResult = Option<(Vec<AggRow>, bool)>;

/// Read access to telemetry.
#[tonic::async_trait]
pub trait TelemetryBackend: Send + Sync + 'static {
    /// Every GPU (of `node`), ordered by node, then index.
    async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuStatus>, BackendError>;
    /// One GPU, `None` if unknown.
    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError>;
    /// Samples of `uuid` with `start_ms <= t < end_ms`, at most `limit`, as a stream of
    /// blocks; `None` if unknown.
    async fn range_stream(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<Option<RangeStream>, BackendError>;
    /// Aggregates of `uuid` in buckets `step_ms` wide (see
    /// [`streamer::store::History::aggregate`]); `None` if unknown.
    async fn aggregate(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: u32,
    ) -> Result<AggregateResult, BackendError>;
    /// The backend's ingest counters.
    async fn stats(&self) -> Result<Vec<Counter>, BackendError>;

    /// `GET /api/v1/gpus` as JSON bytes. The default lists, then serialises; a store in this
    /// process serialises straight from its data.
    async fn list_gpus_json(&self, filter: GpuFilter) -> Result<Vec<u8>, BackendError> {
        let gpus = self.list_gpus(filter.node.clone()).await?;
        crate::model::gpu_list_json(&gpus, &filter)
            .map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))
    }

    /// Calls `f` with every GPU's latest state when this process holds a current copy (the
    /// embedded store; the gateway's mirror while fresh) and returns `true`; `false` when it
    /// does not (then ask [`TelemetryBackend::list_gpus`]). Blocking: call it off the
    /// runtime's workers.
    fn visit_latest(&self, _f: &mut dyn FnMut(GpuView<'_>)) -> bool {
        false
    }

    /// The GPUs whose latest state changed after version `since` of the latest state this
    /// process holds, and the version now; `None` when it holds no current copy. Blocking.
    fn latest_changed(&self, _since: u64) -> Option<(Vec<GpuState>, u64)> {
        None
    }
}

type Client = TelemetryQueryClient<InterceptedService<Channel, AttachServiceToken>>;

/// The streamer's gRPC query service, with a local mirror of every GPU's latest state
/// (fed by `WatchLatest`, see [`GrpcBackend::run_mirror`]) that answers the GPU list and
/// single-GPU reads without a round trip while it is fresh.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    client: Client,
    timeout: Duration,
    mirror: Arc<LatestMirror>,
}

/// The mirror answers only while its last update is younger than this (the streamer sends
/// one at least every second); otherwise reads go to the streamer.
pub const MIRROR_MAX_AGE: Duration = Duration::from_secs(3);

/// The api's copy of every GPU's latest state: the same [`LatestIndex`] the streamer
/// keeps, fed by its `WatchLatest` stream.
#[derive(Debug, Default)]
pub struct LatestMirror {
    index: LatestIndex,
    synced_at: std::sync::RwLock<Option<std::time::Instant>>,
    hits: std::sync::atomic::AtomicU64,
}

impl LatestMirror {
    /// Applies one update: a full snapshot replaces everything; a delta upserts.
    pub fn apply(&self, update: LatestUpdate) {
        let gpus = update.gpus.into_iter().filter_map(state).collect();
        self.index.replace(update.full, gpus);
        *self.synced_at.write().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
    }

    /// Forgets when the last update came: reads go to the streamer until the next one.
    pub fn mark_stale(&self) {
        *self.synced_at.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the last update is younger than `max_age`.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        self.synced_at
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < max_age)
    }

    /// Reads answered from the mirror so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl GrpcBackend {
    /// A lazily connecting client of the streamer at `url` (e.g. `http://streamer:50051`).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when `url` is not a valid URI.
    pub fn new(url: &str, token: KeyRing, timeout: Duration) -> Result<Self, BackendError> {
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| BackendError::Unavailable(format!("invalid streamer URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(streamer::H2_STREAM_WINDOW)
            .initial_connection_window_size(streamer::H2_CONNECTION_WINDOW)
            .http2_adaptive_window(true)
            .tcp_nodelay(true)
            .connect_lazy();
        let client =
            TelemetryQueryClient::with_interceptor(channel, AttachServiceToken { tokens: token })
                .max_decoding_message_size(streamer::MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            timeout,
            mirror: Arc::default(),
        })
    }

    /// The mirror this backend answers from while it is fresh.
    pub fn mirror(&self) -> &LatestMirror {
        &self.mirror
    }

    /// Keeps the mirror current from the streamer's `WatchLatest` stream until `shutdown`,
    /// reconnecting with backoff when the stream breaks. Spawn it beside the server.
    pub async fn run_mirror(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(250);
        loop {
            // No per-call timeout: the stream is meant to stay open.
            let mut client = self.client.clone();
            let call = client.watch_latest(WatchLatestRequest {});
            let stream = tokio::select! {
                r = call => r,
                () = &mut shutdown => return,
            };
            match stream {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        // The streamer sends at least once a second: silence means a dead
                        // connection, even if TCP has not noticed.
                        let msg = tokio::select! {
                            m = tokio::time::timeout(MIRROR_MAX_AGE, stream.message()) => m,
                            () = &mut shutdown => return,
                        };
                        let Ok(msg) = msg else {
                            tracing::warn!("latest-state stream silent; reconnecting");
                            break;
                        };
                        match msg {
                            Ok(Some(update)) => {
                                self.mirror.apply(update);
                                backoff = Duration::from_millis(250);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(code = ?status.code(), message = status.message(), "latest-state stream broke; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "latest-state stream unavailable");
                }
            }
            // No stream, no mirror: read through to the streamer until it is back.
            self.mirror.mark_stale();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut shutdown => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    fn req<T>(&self, t: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(t);
        r.set_timeout(self.timeout);
        r
    }
}

fn unavailable(s: tonic::Status) -> BackendError {
    BackendError::Unavailable(format!("{:?}: {}", s.code(), s.message()))
}

#[tonic::async_trait]
impl TelemetryBackend for GrpcBackend {
    async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuStatus>, BackendError> {
        let r = self
            .client
            .clone()
            .list_gpus(self.req(ListGpusRequest { node }))
            .await;
        r.map(|r| r.into_inner().gpus).map_err(unavailable)
    }

    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError> {
        if self.mirror.is_fresh(MIRROR_MAX_AGE) {
            self.mirror.hit();
            return Ok(self.mirror.index.get(&uuid).map(status));
        }
        match self
            .client
            .clone()
            .get_gpu(self.req(GetGpuRequest { uuid }))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn range_stream(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<Option<RangeStream>, BackendError> {
        let req = QueryRangeRequest {
            uuid,
            start_ms,
            end_ms,
            limit,
            accept_chunks: true,
        };
        match self.client.clone().stream_range(self.req(req)).await {
            Ok(r) => {
                let blocks = r.into_inner().map(|m| match m {
                    Ok(b) if b.last => Ok(RangePart::End {
                        truncated: b.truncated,
                    }),
                    // A stored chunk stays encoded: the route decodes it off the async
                    // workers, in parallel with the next.
                    Ok(b) if !b.chunk.is_empty() => streamer::store::chunk::reading_count(&b.chunk)
                        .map(|count| {
                            RangePart::Block(Block::Encoded {
                                bytes: b.chunk,
                                count,
                            })
                        })
                        .map_err(|e| BackendError::Unavailable(format!("bad block: {e}"))),
                    Ok(b) => streamer::query::readings_of(&b)
                        .map(|rs| RangePart::Block(Block::Readings(rs)))
                        .map_err(|e| BackendError::Unavailable(format!("bad block: {e}"))),
                    Err(s) => Err(unavailable(s)),
                });
                Ok(Some(blocks.boxed()))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn aggregate(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: u32,
    ) -> Result<AggregateResult, BackendError> {
        let req = QueryAggregateRequest {
            uuid,
            start_ms,
            end_ms,
            step_ms,
            agg: agg.name().to_string(),
            limit,
        };
        match self.client.clone().query_aggregate(self.req(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some((streamer::query::rows_of(r.rows), r.truncated)))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn stats(&self) -> Result<Vec<Counter>, BackendError> {
        let r = self.client.clone().stats(self.req(StatsRequest {})).await;
        r.map(|r| r.into_inner().counters).map_err(unavailable)
    }

    fn visit_latest(&self, f: &mut dyn FnMut(GpuView<'_>)) -> bool {
        if !self.mirror.is_fresh(MIRROR_MAX_AGE) {
            return false;
        }
        self.mirror.index.visit(None, f);
        true
    }

    fn latest_changed(&self, since: u64) -> Option<(Vec<GpuState>, u64)> {
        self.mirror
            .is_fresh(MIRROR_MAX_AGE)
            .then(|| self.mirror.index.changed_since(since))
    }

    async fn list_gpus_json(&self, filter: GpuFilter) -> Result<Vec<u8>, BackendError> {
        if self.mirror.is_fresh(MIRROR_MAX_AGE) {
            self.mirror.hit();
            let mut out = Vec::with_capacity(1 << 16);
            let node = filter.node.as_deref();
            crate::model::write_gpu_list(|f| self.mirror.index.visit(node, f), &filter, &mut out)
                .map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))?;
            return Ok(out);
        }
        let gpus = self.list_gpus(filter.node.clone()).await?;
        crate::model::gpu_list_json(&gpus, &filter)
            .map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))
    }
}

/// A store in this process (embedded mode).
#[derive(Debug, Clone)]
pub struct StoreBackend {
    /// The store.
    pub store: Arc<Store>,
    /// Its ingest counters.
    pub metrics: Arc<StreamerMetrics>,
}

#[tonic::async_trait]
impl TelemetryBackend for StoreBackend {
    async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuStatus>, BackendError> {
        let gpus = self.store.latest().list(node.as_deref());
        Ok(gpus.into_iter().map(status).collect())
    }

    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError> {
        Ok(self.store.latest().get(&uuid).map(status))
    }

    async fn range_stream(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<Option<RangeStream>, BackendError> {
        let limit = (limit as usize).clamp(1, streamer::query::MAX_RANGE_SAMPLES);
        let Some(rx) =
            streamer::store::stream_range(self.store.clone(), uuid, start_ms, end_ms, limit, false)
        else {
            return Ok(None);
        };
        let metrics = self.metrics.clone();
        let parts =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) })
                .map(move |p| {
                    p.map_err(|e| {
                        metrics.error("store");
                        BackendError::Unavailable(format!("store read: {e}"))
                    })
                });
        Ok(Some(parts.boxed()))
    }

    async fn aggregate(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: u32,
    ) -> Result<AggregateResult, BackendError> {
        let limit = (limit as usize).clamp(1, streamer::query::MAX_AGGREGATE_ROWS);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.aggregate(&uuid, start_ms, end_ms, step_ms, agg, limit)
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("aggregate task: {e}")))?
        .map_err(|e| {
            self.metrics.error("store");
            BackendError::Unavailable(format!("store read: {e}"))
        })
    }

    fn visit_latest(&self, f: &mut dyn FnMut(GpuView<'_>)) -> bool {
        self.store.latest().visit(None, f);
        true
    }

    fn latest_changed(&self, since: u64) -> Option<(Vec<GpuState>, u64)> {
        Some(self.store.latest().changed_since(since))
    }

    async fn list_gpus_json(&self, filter: GpuFilter) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::with_capacity(1 << 16);
        let node = filter.node.as_deref();
        crate::model::write_gpu_list(|f| self.store.latest().visit(node, f), &filter, &mut out)
            .map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))?;
        Ok(out)
    }

    async fn stats(&self) -> Result<Vec<Counter>, BackendError> {
        Ok(streamer::query::counters(&self.metrics))
    }
}
