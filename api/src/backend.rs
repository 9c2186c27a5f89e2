//! Where the api reads telemetry from: the streamer over gRPC (the deployed shape), or a
//! store in the same process (the embedded mode).

use std::sync::Arc;
use std::time::Duration;

use common_auth::KeyRing;
use common_auth::grpc::AttachServiceToken;
use msg_queue_client::wire::GpuSample;
use streamer::metrics::StreamerMetrics;
use streamer::query::proto::telemetry_query_client::TelemetryQueryClient;
use streamer::query::proto::{
    Counter, GetGpuRequest, GpuStatus, ListGpusRequest, QueryRangeRequest, StatsRequest,
};
use streamer::store::Store;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The streamer is unreachable or failed.
    #[error("streamer unavailable: {0}")]
    Unavailable(String),
}

/// A range query's answer: samples oldest first, and whether more matched than the limit.
pub type RangeResult = Option<(Vec<GpuSample>, bool)>;

/// Read access to telemetry.
#[tonic::async_trait]
pub trait TelemetryBackend: Send + Sync + 'static {
    /// Every GPU (of `node`), ordered by node, then index.
    async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuStatus>, BackendError>;
    /// One GPU, `None` if unknown.
    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError>;
    /// Samples of `uuid` with `start_ms <= t < end_ms`, at most `limit`; `None` if unknown.
    async fn range(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<RangeResult, BackendError>;
    /// The backend's ingest counters.
    async fn stats(&self) -> Result<Vec<Counter>, BackendError>;

    /// `GET /api/v1/gpus` as JSON bytes. The default lists, then serialises; a store in this
    /// process serialises straight from its data.
    async fn list_gpus_json(&self, node: Option<String>) -> Result<Vec<u8>, BackendError> {
        let gpus = self.list_gpus(node).await?;
        let list: Vec<crate::model::Gpu<'_>> = gpus
            .iter()
            .filter_map(crate::model::Gpu::from_status)
            .collect();
        let body = crate::model::GpuList {
            count: list.len(),
            gpus: list,
        };
        serde_json::to_vec(&body).map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))
    }
}

type Client = TelemetryQueryClient<InterceptedService<Channel, AttachServiceToken>>;

/// The streamer's gRPC query service.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    client: Client,
    timeout: Duration,
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
            .initial_stream_window_size(streamer::H2_STREAM_WINDOW)
            .initial_connection_window_size(streamer::H2_CONNECTION_WINDOW)
            .http2_adaptive_window(true)
            .tcp_nodelay(true)
            .connect_lazy();
        let client =
            TelemetryQueryClient::with_interceptor(channel, AttachServiceToken { tokens: token })
                .max_decoding_message_size(streamer::MAX_MESSAGE_BYTES);
        Ok(Self { client, timeout })
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

    async fn range(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<RangeResult, BackendError> {
        let req = QueryRangeRequest {
            uuid,
            start_ms,
            end_ms,
            limit,
        };
        match self.client.clone().query_range(self.req(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some((r.samples, r.truncated)))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn stats(&self) -> Result<Vec<Counter>, BackendError> {
        let r = self.client.clone().stats(self.req(StatsRequest {})).await;
        r.map(|r| r.into_inner().counters).map_err(unavailable)
    }
}

/// A store in this process (embedded mode).
#[derive(Debug, Clone)]
pub struct StoreBackend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its ingest counters.
    pub metrics: Arc<StreamerMetrics>,
}

#[tonic::async_trait]
impl TelemetryBackend for StoreBackend {
    async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuStatus>, BackendError> {
        Ok(self.store.list_gpus(node.as_deref()))
    }

    async fn gpu(&self, uuid: String) -> Result<Option<GpuStatus>, BackendError> {
        Ok(self.store.gpu(&uuid))
    }

    async fn range(
        &self,
        uuid: String,
        start_ms: i64,
        end_ms: i64,
        limit: u32,
    ) -> Result<RangeResult, BackendError> {
        let limit = (limit as usize).clamp(1, streamer::query::MAX_RANGE_SAMPLES);
        Ok(self.store.range(&uuid, start_ms, end_ms, limit))
    }

    async fn list_gpus_json(&self, node: Option<String>) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::with_capacity(1 << 16);
        crate::model::write_gpu_list(self.store.as_ref(), node.as_deref(), &mut out)
            .map_err(|e| BackendError::Unavailable(format!("serialise: {e}")))?;
        Ok(out)
    }

    async fn stats(&self) -> Result<Vec<Counter>, BackendError> {
        Ok(self
            .metrics
            .snapshot()
            .into_iter()
            .map(|(name, labels, value)| Counter {
                name: name.to_string(),
                labels,
                value,
            })
            .collect())
    }
}
