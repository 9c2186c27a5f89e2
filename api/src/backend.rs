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

/// The streamers' gRPC query service, with a local mirror of every GPU's latest state
/// (fed by each streamer's `WatchLatest`, see [`GrpcBackend::run_mirror`]) that answers the
/// GPU list and single-GPU reads without a round trip while it is fresh.
///
/// One streamer, or several sharing a consumer group (the `victoriametrics` history): each
/// configured URL's host is resolved every [`GrpcBackend::with_refresh`] and every address
/// is one streamer, so a headless Service names them all. Their partial views merge in the
/// mirror (newest state of each GPU wins); ranges and aggregates, which every streamer
/// answers from the shared history, go to them in turn.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    urls: Vec<String>,
    token: KeyRing,
    /// A lazy client of the first URL, used until addresses are resolved.
    client: Client,
    /// The streamers found at the last resolution.
    replicas: Arc<std::sync::RwLock<Vec<Replica>>>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
    refresh: Duration,
    timeout: Duration,
    mirror: Arc<LatestMirror>,
}

/// One streamer found by resolution.
#[derive(Debug, Clone)]
struct Replica {
    /// `http://ip:port`.
    url: String,
    client: Client,
    /// Its latest-state stream is open: it answers.
    up: Arc<std::sync::atomic::AtomicBool>,
}

/// A latest-state stream counted open (in the mirror, and its streamer marked up) while
/// this lives.
struct OpenStream<'a> {
    mirror: &'a LatestMirror,
    up: &'a std::sync::atomic::AtomicBool,
}

impl<'a> OpenStream<'a> {
    fn new(mirror: &'a LatestMirror, up: &'a std::sync::atomic::AtomicBool) -> Self {
        mirror.streams_up(1);
        up.store(true, std::sync::atomic::Ordering::Relaxed);
        Self { mirror, up }
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.up.store(false, std::sync::atomic::Ordering::Relaxed);
        self.mirror.streams_up(-1);
    }
}

/// How often the streamers' addresses are resolved again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

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
    /// Latest-state streams open now.
    streams: std::sync::atomic::AtomicI64,
}

impl LatestMirror {
    /// Applies one update: a full snapshot replaces everything; a delta upserts; a
    /// streamer's partial view (one of several) merges, newest state winning.
    pub fn apply(&self, update: LatestUpdate) {
        let gpus = update.gpus.into_iter().filter_map(state).collect();
        if update.partial {
            self.index.merge(gpus);
        } else {
            self.index.replace(update.full, gpus);
        }
        *self.synced_at.write().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
    }

    /// Notes `delta` streams opened (1) or closed (-1); with none left open the mirror is
    /// stale at once: reads go to the streamers until one is back.
    fn streams_up(&self, delta: i64) {
        let open = self
            .streams
            .fetch_add(delta, std::sync::atomic::Ordering::SeqCst)
            + delta;
        if open <= 0 {
            self.mark_stale();
        }
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

fn channel(url: &str) -> Result<Channel, BackendError> {
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
    Ok(channel)
}

/// A lazily connecting client of the streamer at `url`, sending `token`.
fn client_of(url: &str, token: &KeyRing) -> Result<Client, BackendError> {
    Ok(TelemetryQueryClient::with_interceptor(
        channel(url)?,
        AttachServiceToken {
            tokens: token.clone(),
        },
    )
    .max_decoding_message_size(streamer::MAX_MESSAGE_BYTES))
}

impl GrpcBackend {
    /// A lazily connecting client of the streamer at `url` (e.g. `http://streamer:50051`),
    /// or of several: URLs separated by commas.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when a URL is not a valid URI.
    pub fn new(url: &str, token: KeyRing, timeout: Duration) -> Result<Self, BackendError> {
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        let first = urls
            .first()
            .ok_or_else(|| BackendError::Unavailable("no streamer URL".into()))?;
        let client = client_of(first, &token)?;
        for u in &urls[1..] {
            client_of(u, &token)?;
        }
        Ok(Self {
            urls,
            token,
            client,
            replicas: Arc::default(),
            turn: Arc::default(),
            refresh: DEFAULT_REFRESH,
            timeout,
            mirror: Arc::default(),
        })
    }

    /// Resolves the streamers' addresses every `refresh` (default [`DEFAULT_REFRESH`]).
    #[must_use]
    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// The streamers now known (`http://ip:port`), in the order they were resolved.
    pub fn replicas(&self) -> Vec<String> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.url.clone())
            .collect()
    }

    /// A client of one streamer, each call the next one whose latest-state stream is open
    /// (any streamer answers ranges from a shared history; with one streamer, it).
    fn next_client(&self) -> Client {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        let up: Vec<&Replica> = replicas
            .iter()
            .filter(|r| r.up.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match (up.is_empty(), replicas.is_empty()) {
            (false, _) => up[i % up.len()].client.clone(),
            (true, false) => replicas[i % replicas.len()].client.clone(),
            (true, true) => self.client.clone(),
        }
    }

    /// Every streamer's client (the first URL's while none is resolved).
    fn all_clients(&self) -> Vec<Client> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        if replicas.is_empty() {
            return vec![self.client.clone()];
        }
        replicas.iter().map(|r| r.client.clone()).collect()
    }

    /// Every address the configured URLs' hosts resolve to, as `http://ip:port`; `None`
    /// when one cannot be resolved now (keep what was known).
    async fn resolve(&self) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for url in &self.urls {
            let uri: tonic::codegen::http::Uri = url.parse().ok()?;
            let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => {
                    for a in addrs {
                        let u = format!("http://{a}");
                        if !out.contains(&u) {
                            out.push(u);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, host, "cannot resolve the streamer's address; keeping the ones known");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The mirror this backend answers from while it is fresh.
    pub fn mirror(&self) -> &LatestMirror {
        &self.mirror
    }

    /// Keeps the mirror current from every streamer's `WatchLatest` stream until `shutdown`:
    /// resolves the streamers' addresses every refresh, watches each new one (reconnecting
    /// with backoff when its stream breaks) and stops watching one that is gone. Spawn it
    /// beside the server.
    pub async fn run_mirror(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut watching: std::collections::HashMap<
            String,
            (Replica, tokio::task::JoinHandle<()>),
        > = std::collections::HashMap::new();
        loop {
            if let Some(found) = self.resolve().await {
                let mut replicas = Vec::with_capacity(found.len());
                for url in &found {
                    if !watching.contains_key(url) {
                        let Ok(client) = client_of(url, &self.token) else {
                            continue;
                        };
                        tracing::info!(streamer = %url, "watching a streamer's latest state");
                        let replica = Replica {
                            url: url.clone(),
                            client,
                            up: Arc::default(),
                        };
                        let mut stop = stop_rx.clone();
                        let task = tokio::spawn(self.clone().watch(replica.clone(), async move {
                            let _ = stop.wait_for(|s| *s).await;
                        }));
                        watching.insert(url.clone(), (replica, task));
                    }
                    replicas.push(watching[url].0.clone());
                }
                watching.retain(|url, (_, task)| {
                    let keep = found.contains(url);
                    if !keep {
                        tracing::info!(streamer = %url, "streamer gone; its GPUs keep their last state");
                        task.abort();
                    }
                    keep
                });
                *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas;
            }
            tokio::select! {
                () = tokio::time::sleep(self.refresh) => {}
                () = &mut shutdown => break,
            }
        }
        let _ = stop_tx.send(true);
        for (_, (_, task)) in watching {
            let _ = task.await;
        }
    }

    /// Follows one streamer's `WatchLatest` stream into the mirror until `shutdown`.
    async fn watch(self, replica: Replica, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(250);
        loop {
            // No per-call timeout: the stream is meant to stay open.
            let mut c = replica.client.clone();
            let call = c.watch_latest(WatchLatestRequest {});
            let stream = tokio::select! {
                r = call => r,
                () = &mut shutdown => return,
            };
            match stream {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    // Counted open until this scope ends, however it ends (an abort too).
                    let _open = OpenStream::new(&self.mirror, &replica.up);
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
        let clients = self.all_clients();
        let calls = clients.into_iter().map(|mut c| {
            let req = self.req(ListGpusRequest { node: node.clone() });
            async move { c.list_gpus(req).await }
        });
        let answers = futures::future::join_all(calls).await;
        if let [one] = answers.as_slice() {
            return one
                .as_ref()
                .map(|r| r.get_ref().gpus.clone())
                .map_err(|s| unavailable(s.clone()));
        }
        // Several streamers, each with its share: merged as the mirror merges. Every one
        // must answer, or the list would silently miss GPUs.
        let merged = LatestIndex::default();
        for a in answers {
            let gpus = a.map_err(unavailable)?.into_inner().gpus;
            merged.merge(gpus.into_iter().filter_map(state).collect());
        }
        Ok(merged
            .list(node.as_deref())
            .into_iter()
            .map(status)
            .collect())
    }

    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError> {
        if self.mirror.is_fresh(MIRROR_MAX_AGE) {
            self.mirror.hit();
            return Ok(self.mirror.index.get(&uuid).map(status));
        }
        // The newest answer of any streamer that knows the GPU.
        let mut newest: Option<GpuStatus> = None;
        let mut failed = None;
        for mut c in self.all_clients() {
            match c
                .get_gpu(self.req(GetGpuRequest { uuid: uuid.clone() }))
                .await
            {
                Ok(r) => {
                    let g = r.into_inner();
                    if newest.as_ref().is_none_or(|n| {
                        (g.last_seen_ms, g.sample_count) > (n.last_seen_ms, n.sample_count)
                    }) {
                        newest = Some(g);
                    }
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => failed = Some(s),
            }
        }
        // An unknown GPU is only said when every streamer answered.
        match (newest, failed) {
            (Some(g), _) => Ok(Some(g)),
            (None, Some(s)) => Err(unavailable(s)),
            (None, None) => Ok(None),
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
        match self.next_client().stream_range(self.req(req)).await {
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
        match self.next_client().query_aggregate(self.req(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some((streamer::query::rows_of(r.rows), r.truncated)))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn stats(&self) -> Result<Vec<Counter>, BackendError> {
        // Summed over the streamers that answer (each counts what it ingested).
        let mut sum: Vec<Counter> = Vec::new();
        let mut failed = None;
        let clients = self.all_clients();
        let n = clients.len();
        for mut c in clients {
            let counters = match c.stats(self.req(StatsRequest {})).await {
                Ok(r) => r.into_inner().counters,
                Err(s) => {
                    failed = Some(s);
                    continue;
                }
            };
            for k in counters {
                match sum
                    .iter_mut()
                    .find(|s| (s.name.as_str(), s.labels.as_str()) == (&k.name, &k.labels))
                {
                    Some(s) => s.value += k.value,
                    None => sum.push(k),
                }
            }
        }
        match failed {
            Some(s) if sum.is_empty() || n == 1 => Err(unavailable(s)),
            _ => Ok(sum),
        }
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
                .await
                .map_err(|e| BackendError::Unavailable(format!("store read: {e}")))?
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
