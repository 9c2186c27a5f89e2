//! The gRPC query service over a [`Store`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::metrics::StreamerMetrics;
use crate::store::reading::{COLUMNS, column_index};
use crate::store::{Agg, AggRow, Block, GpuState, RangePart, Reading, Store};

/// Generated types and client/server of `telemetry.query.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    missing_debug_implementations
)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/telemetry.query.v1.rs"));
}

use proto::telemetry_query_server::TelemetryQuery;
use proto::{
    AggregateRow, ColumnBlock, Counter, GetGpuRequest, GpuStatus, LatestUpdate, ListGpusRequest,
    ListGpusResponse, QueryAggregateRequest, QueryAggregateResponse, QueryRangeRequest,
    QueryRangeResponse, ReadingBlock, StatsRequest, StatsResponse, WatchLatestRequest,
};

/// How often `WatchLatest` sends what changed.
pub const WATCH_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// `WatchLatest` sends an update at least this often, empty if nothing changed.
pub const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// `WatchLatest` sends a full snapshot this often (GPUs swept away disappear then).
pub const WATCH_FULL_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Feeds one `WatchLatest` stream until the client goes away.
async fn watch(
    store: Arc<Store>,
    tx: tokio::sync::mpsc::Sender<Result<LatestUpdate, Status>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    auth: Option<(common_auth::KeyRing, Vec<u8>)>,
) {
    // A history without offsets of its own is shared by the consumer group: this streamer
    // sees its partitions' GPUs only.
    let partial = !store.history().keeps_offsets();
    let (gpus, mut version) = store.latest().snapshot();
    let gpus = statuses(gpus);
    if tx
        .send(Ok(LatestUpdate {
            full: true,
            gpus,
            partial,
        }))
        .await
        .is_err()
    {
        return;
    }
    let mut tick = tokio::time::interval(WATCH_PUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_sent, mut last_full) = (tokio::time::Instant::now(), tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
            _ = stopping.wait_for(|s| *s) => return,
        }
        if let Some((ring, token)) = &auth
            && !ring.accepts(token)
        {
            let _ = tx
                .send(Err(Status::unauthenticated("service token rotated out")))
                .await;
            return;
        }
        let now = tokio::time::Instant::now();
        let update = if now.duration_since(last_full) >= WATCH_FULL_EVERY {
            last_full = now;
            let (gpus, v) = store.latest().snapshot();
            version = v;
            LatestUpdate {
                full: true,
                gpus: statuses(gpus),
                partial,
            }
        } else {
            let (gpus, v) = store.latest().changed_since(version);
            version = v;
            if gpus.is_empty() && now.duration_since(last_sent) < WATCH_HEARTBEAT {
                continue;
            }
            LatestUpdate {
                full: false,
                gpus: statuses(gpus),
                partial,
            }
        };
        // A client that stops reading must not hold up shutdown.
        tokio::select! {
            r = tx.send(Ok(update)) => if r.is_err() { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
        last_sent = now;
    }
}

/// The gRPC form of a GPU's latest state.
pub fn status(g: GpuState) -> GpuStatus {
    GpuStatus {
        info: Some(g.info),
        last_seen_ms: g.last_seen_ms,
        latest: g.latest,
        sample_count: g.sample_count,
        info_at_ms: g.info_at_ms,
    }
}

fn statuses(gs: Vec<GpuState>) -> Vec<GpuStatus> {
    gs.into_iter().map(status).collect()
}

/// A GPU's latest state from its gRPC form (`None` without inventory).
pub fn state(g: GpuStatus) -> Option<GpuState> {
    Some(GpuState {
        info: g.info?,
        latest: g.latest,
        last_seen_ms: g.last_seen_ms,
        sample_count: g.sample_count,
        info_at_ms: g.info_at_ms,
    })
}

/// The wire samples of `readings` (uuid empty: a range is of one GPU).
pub fn samples(readings: &[Reading]) -> Vec<telemetry_wire::wire::GpuSample> {
    readings.iter().map(Reading::to_wire).collect()
}

/// The gRPC form of aggregated rows.
pub fn aggregate_rows(rows: &[AggRow]) -> Vec<AggregateRow> {
    rows.iter()
        .map(|r| {
            let mut out = AggregateRow {
                timestamp_ms: r.ts_ms,
                ..Default::default()
            };
            for (c, v) in COLUMNS.iter().zip(r.values) {
                if let Some(v) = v {
                    out.columns.push(u32::from(c.id));
                    out.values.push(v);
                }
            }
            out
        })
        .collect()
}

/// Aggregated rows from their gRPC form (columns this build does not know are skipped).
pub fn rows_of(rows: Vec<AggregateRow>) -> Vec<AggRow> {
    rows.into_iter()
        .map(|r| {
            let mut values = [None; crate::store::reading::N_COLUMNS];
            for (id, v) in r.columns.iter().zip(r.values) {
                if let Some(i) = u8::try_from(*id).ok().and_then(column_index) {
                    values[i] = Some(v);
                }
            }
            AggRow {
                ts_ms: r.timestamp_ms,
                values,
            }
        })
        .collect()
}

/// The columnar gRPC form of `readings`.
pub fn block_of(readings: &[Reading]) -> ReadingBlock {
    let n = readings.len();
    let mut columns = Vec::new();
    for (i, c) in COLUMNS.iter().enumerate() {
        let values: Vec<u64> = readings.iter().filter_map(|r| r.get(i)).collect();
        if values.is_empty() {
            continue;
        }
        let present = if values.len() == n {
            Vec::new()
        } else {
            let mut bits = vec![0u8; n.div_ceil(8)];
            for (j, r) in readings.iter().enumerate() {
                if r.get(i).is_some() {
                    bits[j / 8] |= 1 << (j % 8);
                }
            }
            bits
        };
        columns.push(ColumnBlock {
            id: u32::from(c.id),
            present,
            values,
        });
    }
    ReadingBlock {
        timestamps_ms: readings.iter().map(|r| r.ts_ms).collect(),
        columns,
        ..Default::default()
    }
}

/// The readings of a [`ReadingBlock`] (its stored chunk decoded, or its columns); a column
/// whose values do not match its presence is an error (a broken peer), a column this build
/// does not know is skipped.
///
/// # Errors
/// A message naming the malformed column, or why the chunk does not decode.
pub fn readings_of(b: &ReadingBlock) -> Result<Vec<Reading>, String> {
    if !b.chunk.is_empty() {
        return crate::store::chunk::decode(&b.chunk).map_err(|e| e.to_string());
    }
    let mut out: Vec<Reading> = b.timestamps_ms.iter().map(|t| Reading::empty(*t)).collect();
    let n = out.len();
    for c in &b.columns {
        let Some(i) = u8::try_from(c.id).ok().and_then(column_index) else {
            continue;
        };
        let mut values = c.values.iter();
        for (j, r) in out.iter_mut().enumerate() {
            let here = c.present.is_empty()
                || c.present
                    .get(j / 8)
                    .is_some_and(|b| b & (1 << (j % 8)) != 0);
            if here {
                let v = values
                    .next()
                    .ok_or_else(|| format!("column {} has too few values", c.id))?;
                r.set(i, *v);
            }
        }
        if values.next().is_some() || (!c.present.is_empty() && c.present.len() != n.div_ceil(8)) {
            return Err(format!("column {} does not match its readings", c.id));
        }
    }
    Ok(out)
}

/// Most buckets one `QueryAggregate` returns.
pub const MAX_AGGREGATE_ROWS: usize = 100_000;

/// The ingest counters as the `Stats` call returns them.
pub fn counters(metrics: &StreamerMetrics) -> Vec<Counter> {
    metrics
        .snapshot()
        .into_iter()
        .map(|(name, labels, value)| Counter {
            name: name.to_string(),
            labels,
            value,
        })
        .collect()
}

/// Most samples one `QueryRange` returns (24 h at 1 s is 86,400).
pub const MAX_RANGE_SAMPLES: usize = 100_000;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct QueryService {
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
    stopping: tokio::sync::watch::Receiver<bool>,
    tokens: Option<common_auth::KeyRing>,
    // Slots for open WatchLatest streams (each holds a task and a snapshot's worth of data).
    watchers: Arc<tokio::sync::Semaphore>,
}

/// Open `WatchLatest` streams allowed at once, by default (an api replica holds one).
pub const DEFAULT_MAX_WATCHERS: usize = 64;

impl QueryService {
    /// A service answering from `store`, reporting `metrics`. `stopping` turning true ends
    /// every `WatchLatest` stream, so a graceful shutdown does not wait on them forever.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<StreamerMetrics>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            metrics,
            stopping,
            tokens: None,
            watchers: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_WATCHERS)),
        }
    }

    /// Allows at most `n` open `WatchLatest` streams; more are refused (RESOURCE_EXHAUSTED).
    #[must_use]
    pub fn with_max_watchers(mut self, n: usize) -> Self {
        self.watchers = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Re-checks the token of every open `WatchLatest` stream against `tokens`, ending the
    /// stream (UNAUTHENTICATED) once its token is no longer accepted.
    pub fn with_tokens(mut self, tokens: common_auth::KeyRing) -> Self {
        self.tokens = Some(tokens);
        self
    }
}

#[tonic::async_trait]
impl TelemetryQuery for QueryService {
    async fn list_gpus(
        &self,
        req: Request<ListGpusRequest>,
    ) -> Result<Response<ListGpusResponse>, Status> {
        let node = req.into_inner().node;
        Ok(Response::new(ListGpusResponse {
            gpus: statuses(self.store.latest().list(node.as_deref())),
        }))
    }

    async fn get_gpu(&self, req: Request<GetGpuRequest>) -> Result<Response<GpuStatus>, Status> {
        let uuid = req.into_inner().uuid;
        self.store
            .latest()
            .get(&uuid)
            .map(|g| Response::new(status(g)))
            .ok_or_else(|| Status::not_found(format!("unknown GPU {uuid}")))
    }

    async fn query_range(
        &self,
        req: Request<QueryRangeRequest>,
    ) -> Result<Response<QueryRangeResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.limit {
            0 => MAX_RANGE_SAMPLES,
            n => (n as usize).min(MAX_RANGE_SAMPLES),
        };
        let store = self.store.clone();
        let uuid = r.uuid.clone();
        let found =
            tokio::task::spawn_blocking(move || store.range(&uuid, r.start_ms, r.end_ms, limit))
                .await
                .map_err(|e| Status::internal(format!("range task failed: {e}")))?
                .map_err(|error| {
                    self.metrics.error("store");
                    tracing::error!(%error, "range query failed");
                    Status::internal("store read failed")
                })?;
        let (readings, truncated) =
            found.ok_or_else(|| Status::not_found(format!("unknown GPU {}", r.uuid)))?;
        Ok(Response::new(QueryRangeResponse {
            samples: samples(&readings),
            truncated,
        }))
    }

    async fn query_aggregate(
        &self,
        req: Request<QueryAggregateRequest>,
    ) -> Result<Response<QueryAggregateResponse>, Status> {
        let r = req.into_inner();
        let agg = Agg::parse(&r.agg)
            .ok_or_else(|| Status::invalid_argument(format!("unknown aggregate {:?}", r.agg)))?;
        if r.step_ms <= 0 {
            return Err(Status::invalid_argument("step_ms must be positive"));
        }
        let limit = match r.limit {
            0 => MAX_AGGREGATE_ROWS,
            n => (n as usize).min(MAX_AGGREGATE_ROWS),
        };
        let store = self.store.clone();
        let uuid = r.uuid.clone();
        let found = tokio::task::spawn_blocking(move || {
            store.aggregate(&uuid, r.start_ms, r.end_ms, r.step_ms, agg, limit)
        })
        .await
        .map_err(|e| Status::internal(format!("aggregate task failed: {e}")))?
        .map_err(|error| {
            self.metrics.error("store");
            tracing::error!(%error, "aggregate query failed");
            Status::internal("store read failed")
        })?;
        let (rows, truncated) =
            found.ok_or_else(|| Status::not_found(format!("unknown GPU {}", r.uuid)))?;
        Ok(Response::new(QueryAggregateResponse {
            rows: aggregate_rows(&rows),
            truncated,
        }))
    }

    type StreamRangeStream = tokio_stream::wrappers::ReceiverStream<Result<ReadingBlock, Status>>;

    async fn stream_range(
        &self,
        req: Request<QueryRangeRequest>,
    ) -> Result<Response<Self::StreamRangeStream>, Status> {
        let r = req.into_inner();
        let limit = match r.limit {
            0 => MAX_RANGE_SAMPLES,
            n => (n as usize).min(MAX_RANGE_SAMPLES),
        };
        let mut parts = crate::store::stream_range(
            self.store.clone(),
            r.uuid.clone(),
            r.start_ms,
            r.end_ms,
            limit,
            r.accept_chunks,
        )
        .await
        .map_err(|error| {
            self.metrics.error("store");
            tracing::error!(%error, "range query failed");
            Status::internal("store read failed")
        })?
        .ok_or_else(|| Status::not_found(format!("unknown GPU {}", r.uuid)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let metrics = self.metrics.clone();
        // Owned by the stream: ends with the read, or when the client goes away.
        tokio::spawn(async move {
            while let Some(part) = parts.recv().await {
                let msg = match part {
                    Ok(RangePart::Block(Block::Readings(rs))) => Ok(block_of(&rs)),
                    Ok(RangePart::Block(Block::Encoded { bytes, .. })) => Ok(ReadingBlock {
                        chunk: bytes,
                        ..Default::default()
                    }),
                    Ok(RangePart::End { truncated }) => Ok(ReadingBlock {
                        last: true,
                        truncated,
                        ..Default::default()
                    }),
                    Err(error) => {
                        metrics.error("store");
                        tracing::error!(%error, "range read failed");
                        Err(Status::internal("store read failed"))
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    type WatchLatestStream = tokio_stream::wrappers::ReceiverStream<Result<LatestUpdate, Status>>;

    async fn watch_latest(
        &self,
        req: Request<WatchLatestRequest>,
    ) -> Result<Response<Self::WatchLatestStream>, Status> {
        // The interceptor checked the token when the stream opened; a long-lived stream is
        // re-checked as it goes, so a rotated-out token stops receiving data.
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let auth = self.tokens.clone().map(|ring| (ring, presented));
        let slot = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("too many WatchLatest streams open; retry later")
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Owned by the stream: it ends when the client disconnects (the sender closes), and
        // gives its slot back then.
        let (store, stopping) = (self.store.clone(), self.stopping.clone());
        tokio::spawn(async move {
            watch(store, tx, stopping, auth).await;
            drop(slot);
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(StatsResponse {
            counters: counters(&self.metrics),
        }))
    }
}
