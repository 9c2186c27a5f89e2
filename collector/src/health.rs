//! The collector's small HTTP endpoint: `/metrics` (Prometheus text) and `/healthz` for the
//! kubelet. Optional (`--metrics-addr`); the Helm chart turns it on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use telemetry_wire::wire::SignedRecord;
use tokio::net::TcpListener;

use crate::buffer::Buffer;
use crate::metrics::CollectorMetrics;

#[derive(Clone)]
struct HealthState {
    metrics: Arc<CollectorMetrics>,
    registry: Arc<telemetry_metrics::Registry>,
    stale_after: Duration,
}

/// Healthy while a round read the source without error within `stale_after` (or no round
/// was due yet).
async fn healthz(State(s): State<HealthState>) -> Response {
    let last = s.metrics.last_good_round_ms.load(Ordering::Relaxed);
    let age_ms = crate::sampler::now_ms().saturating_sub(last);
    let rounds = s.metrics.rounds.load(Ordering::Relaxed);
    let stale = i64::try_from(s.stale_after.as_millis()).unwrap_or(i64::MAX);
    if rounds == 0 || age_ms <= stale {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no successful sampling round recently\n",
        )
            .into_response()
    }
}

async fn render_metrics(State(s): State<HealthState>, headers: HeaderMap) -> Response {
    telemetry_metrics::respond(&s.registry, &headers)
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<CollectorMetrics>,
    buffer: Arc<Buffer<SignedRecord>>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = HealthState {
        registry: Arc::new(crate::metrics::registry(metrics.clone(), buffer)),
        metrics,
        stale_after: (interval * 5).max(Duration::from_secs(15)),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    telemetry_metrics::serve_router(listener, app, shutdown).await
}
