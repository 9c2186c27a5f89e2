//! The gRPC query service over a [`Store`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::metrics::StreamerMetrics;
use crate::store::Store;

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
    Counter, GetGpuRequest, GpuStatus, ListGpusRequest, ListGpusResponse, QueryRangeRequest,
    QueryRangeResponse, StatsRequest, StatsResponse,
};

/// Most samples one `QueryRange` returns (24 h at 1 s is 86,400).
pub const MAX_RANGE_SAMPLES: usize = 100_000;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct QueryService {
    store: Arc<dyn Store>,
    metrics: Arc<StreamerMetrics>,
}

impl QueryService {
    /// A service answering from `store`, reporting `metrics`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<StreamerMetrics>) -> Self {
        Self { store, metrics }
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
            gpus: self.store.list_gpus(node.as_deref()),
        }))
    }

    async fn get_gpu(&self, req: Request<GetGpuRequest>) -> Result<Response<GpuStatus>, Status> {
        let uuid = req.into_inner().uuid;
        self.store
            .gpu(&uuid)
            .map(Response::new)
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
        let (samples, truncated) = self
            .store
            .range(&r.uuid, r.start_ms, r.end_ms, limit)
            .ok_or_else(|| Status::not_found(format!("unknown GPU {}", r.uuid)))?;
        Ok(Response::new(QueryRangeResponse { samples, truncated }))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let counters = self
            .metrics
            .snapshot()
            .into_iter()
            .map(|(name, labels, value)| Counter {
                name: name.to_string(),
                labels,
                value,
            })
            .collect();
        Ok(Response::new(StatsResponse { counters }))
    }
}
