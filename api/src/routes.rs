//! The REST routes and their handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use common_auth::KeyRing;
use common_auth::http::{ApiKeyAuth, require_api_key};
use futures::StreamExt as _;
use telemetry_wire::health;
use telemetry_wire::metric::{self, MetricDef};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::backend::{BackendError, TelemetryBackend};
use crate::error::{ApiError, ErrorBody};
use crate::metrics::ApiMetrics;
use crate::model::{Gpu, GpuFilter, GpuList, Processes, Telemetry, TelemetryBody};
use streamer::store::{Agg, RangePart};

/// Default window of a telemetry query without `start_time`: the last hour.
pub const DEFAULT_WINDOW_MS: i64 = 3_600_000;
/// Default `limit` of a telemetry query.
pub const DEFAULT_LIMIT: u32 = 10_000;
/// Largest accepted `limit`.
pub const MAX_LIMIT: u32 = streamer::query::MAX_RANGE_SAMPLES as u32;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Where telemetry is read from.
    pub backend: Arc<dyn TelemetryBackend>,
    /// Accepted API keys.
    pub keys: KeyRing,
    /// Request counters.
    pub metrics: Arc<ApiMetrics>,
    /// How many raw range answers may be in progress at once (each holds decoded blocks
    /// while it streams); more wait for a slot, up to the request timeout.
    pub ranges: Arc<tokio::sync::Semaphore>,
    /// The live streams' hub.
    pub streams: Arc<crate::sse::Hub>,
}

/// Raw range answers in progress at once, by default (`--max-concurrent-ranges`).
pub const DEFAULT_CONCURRENT_RANGES: usize = 16;

/// The default range limit, for [`AppState::ranges`].
pub fn range_slots(n: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(n.max(1)))
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The whole API: `/api/v1/...` and `/docs` behind the API key; health, readiness, metrics,
/// the OpenAPI document and the dashboard's static files (`/`, `/assets/...`) open. Unknown paths answer 401 without a key, 404 with one.
pub fn router(state: AppState) -> Router {
    let auth = ApiKeyAuth::new(state.keys.clone());
    let protected = Router::new()
        .route("/api/v1/gpus", get(list_gpus))
        .route("/api/v1/gpus/{uuid}", get(get_gpu))
        .route("/api/v1/gpus/{uuid}/telemetry", get(telemetry))
        .route("/api/v1/gpus/{uuid}/processes", get(processes))
        .route("/api/v1/metrics", get(dcgm_metrics))
        .route("/api/v1/pipeline", get(pipeline))
        .route("/api/v1/gpus/stream", get(stream_all))
        .route("/api/v1/gpus/{uuid}/stream", get(stream_one))
        .route("/docs", get(docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(auth, require_api_key));
    let open = crate::dashboard::routes()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json));
    protected
        .merge(open)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::count,
        ))
        .with_state(state)
}

/// Parses a query string, rejecting parameters not in `allowed` and repeated ones.
fn params(raw: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::bad(
                &k,
                format!("unknown parameter; accepted: {}", allowed.join(", ")),
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::bad(&k, "given more than once"));
        }
    }
    Ok(out)
}

/// The `{uuid}` path segment, checked; a segment that does not even decode is a 400 too.
fn uuid_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(uuid) = p.map_err(|_| ApiError::bad("uuid", "not valid percent-encoded UTF-8"))?;
    check_uuid(&uuid)?;
    Ok(uuid)
}

fn check_uuid(uuid: &str) -> Result<(), ApiError> {
    let ok = !uuid.is_empty()
        && uuid.len() <= 128
        && uuid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "uuid",
            "not a GPU UUID (letters, digits, '-', '_', '.'; at most 128)",
        ))
    }
}

fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    // An unencoded `+` in a query string arrives as a space: `…T10:00:00 02:00`.
    let t = OffsetDateTime::parse(v, &Rfc3339)
        .or_else(|e| match v.contains(' ') {
            true => OffsetDateTime::parse(&v.replace(' ', "+"), &Rfc3339),
            false => Err(e),
        })
        .map_err(|e| {
            ApiError::bad(
                name,
                format!("not an RFC 3339 time (e.g. 2026-11-27T10:00:00Z): {e}"),
            )
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::bad(name, "out of range"))
}

/// List every GPU with its latest metrics.
#[utoipa::path(get, path = "/api/v1/gpus", tag = "gpus",
    params(("node" = Option<String>, Query, description = "Only GPUs of this node", min_length = 1),
        ("health" = Option<String>, Query, description = "Only GPUs with this health: ok, degraded, failed, or unknown (no health reported)", pattern = r"^(ok|degraded|failed|unknown)$"),
        ("namespace" = Option<String>, Query, description = "Only GPUs held by a pod in this namespace (from the kubelet)", min_length = 1),
        ("pod" = Option<String>, Query, description = "Only GPUs held by a pod of this name", min_length = 1)),
    responses(
        (status = 200, description = "GPUs ordered by node, then index (zstd or gzip when accepted; an `ETag`)", body = GpuList<'_>),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn list_gpus(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(q, &["node", "health", "namespace", "pod"])?;
    for name in ["node", "namespace", "pod"] {
        if p.get(name).is_some_and(String::is_empty) {
            return Err(ApiError::bad(name, "must not be empty"));
        }
    }
    let node = p.get("node").cloned();
    let health = p
        .get("health")
        .map(|h| {
            health::parse_status(h)
                .ok_or_else(|| ApiError::bad("health", "must be ok, degraded, failed or unknown"))
        })
        .transpose()?;
    let body = st
        .backend
        .list_gpus_json(GpuFilter {
            node,
            health,
            namespace: p.get("namespace").cloned(),
            pod: p.get("pod").cloned(),
        })
        .await?;
    Ok(conditional_json(&headers, body).await)
}

/// The pipeline's ingest state, as the streamer (or the embedded store) counts it.
#[utoipa::path(get, path = "/api/v1/pipeline", tag = "pipeline",
    responses(
        (status = 200, description = "Ingest counters of the streamer (or the embedded store)", body = crate::model::Pipeline),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "The streamer is not reachable", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn pipeline(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    params(q, &[])?;
    let counters = st.backend.stats().await?;
    Ok(Json(crate::model::Pipeline::from_counters(&counters)).into_response())
}

/// Whether the request's `If-None-Match` names `etag` (weak comparison, `*` matches all).
pub(crate) fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag.trim_start_matches("W/")
        })
}

/// A JSON answer with a weak `ETag` of its content (the same on every replica for the same
/// data), `304 Not Modified` when the request's `If-None-Match` names it, and zstd or gzip (off the
/// async workers) when the client accepts it.
async fn conditional_json(headers: &HeaderMap, body: Vec<u8>) -> Response {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&body);
    let etag = format!("W/\"{}\"", hex::encode(&digest[..12]));
    let matches = etag_matches(headers, &etag);
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("W/\"\""));
    if matches {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag_value);
        resp.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        return resp;
    }
    let coding = crate::compress::Coding::negotiate(headers).filter(|_| body.len() > 1024);
    let body = if let Some(c) = coding {
        let compressed =
            tokio::task::spawn_blocking(move || crate::compress::compress(c, &body)).await;
        match compressed {
            Ok(Ok(z)) => z,
            _ => {
                return ApiError::from(BackendError::Unavailable("compression failed".into()))
                    .into_response();
            }
        }
    } else {
        body
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ETAG, etag_value);
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, c.header_value());
    }
    resp
}

/// The fleet's latest telemetry in the Prometheus text format under dcgm-exporter's names
/// and labels (`DCGM_FI_DEV_GPU_UTIL{gpu, UUID, device, modelName, Hostname, …}`), for
/// Prometheus to scrape with the API key as a bearer token. OpenMetrics when the `Accept`
/// header asks for it.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics",
    responses(
        (status = 200, description = "dcgm-exporter-compatible exposition", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "Streamer unavailable", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn dcgm_metrics(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    params(q, &[])?;
    let openmetrics = telemetry_metrics::wants_openmetrics(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let content_type = crate::dcgm::content_type(openmetrics);
    let backend = st.backend.clone();
    let probe = backend.clone();
    let held = tokio::task::spawn_blocking(move || probe.visit_latest(&mut |_| {}))
        .await
        .unwrap_or(false);
    if !held {
        // No current copy here (the gateway's mirror is catching up): one answer from the
        // streamer's list.
        let gpus = st.backend.list_gpus(None).await?;
        let body = crate::dcgm::render(
            |f| {
                for g in &gpus {
                    if let Some(info) = &g.info {
                        f(streamer::store::GpuView {
                            info,
                            latest: g.latest.as_ref(),
                            last_seen_ms: g.last_seen_ms,
                            sample_count: g.sample_count,
                        });
                    }
                }
            },
            openmetrics,
        );
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    // One field at a time straight from the latest index, a chunk each, at most two ahead
    // of the client: a 10,000-GPU fleet is never held whole. zstd or gzip as it goes (a flush
    // per chunk) when the scraper accepts it.
    let coding = crate::compress::Coding::negotiate(&headers);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut zip = match coding.map(|c| crate::compress::ChunkEncoder::new(c, 256 << 10)) {
            None => None,
            Some(Ok(z)) => Some(z),
            Some(Err(e)) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut cache = crate::dcgm::LabelCache::default();
        let mut send = |chunk: Vec<u8>| -> bool {
            let out = match &mut zip {
                None => chunk,
                Some(z) => match z.chunk(&chunk) {
                    Ok(out) => out,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return false;
                    }
                },
            };
            tx.blocking_send(Ok(out.into())).is_ok()
        };
        for field in crate::dcgm::FIELDS {
            let mut chunk = Vec::with_capacity(64 << 10);
            crate::dcgm::header(field, openmetrics, &mut chunk);
            if !backend.visit_latest(&mut |v| crate::dcgm::line(field, v, &mut cache, &mut chunk)) {
                let _ = tx.blocking_send(Err(std::io::Error::other(
                    "the latest state went stale mid-answer",
                )));
                return;
            }
            if !send(chunk) {
                return; // the client left
            }
        }
        let tail = if openmetrics {
            b"# EOF\n".to_vec()
        } else {
            Vec::new()
        };
        let last = match zip {
            None => Ok(tail),
            Some(z) => z.finish(&tail),
        };
        let _ = tx.blocking_send(last.map(Into::into));
    });
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, c.header_value());
    }
    Ok(resp)
}

/// Live updates of every GPU: server-sent events (`event: gpu`, `data:` the GPU as
/// `GET /api/v1/gpus/{uuid}` shows it) each time one's latest state changes. A client that
/// reads too slowly is dropped.
#[utoipa::path(get, path = "/api/v1/gpus/stream", tag = "gpus",
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn stream_all(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    params(q, &[])?;
    Ok(event_stream(st.streams.subscribe(st.backend.clone(), None)))
}

/// Live updates of one GPU, as [`stream_all`]'s events.
#[utoipa::path(get, path = "/api/v1/gpus/{uuid}/stream", tag = "gpus",
    params(("uuid" = String, Path, description = "GPU UUID", pattern = r"^[A-Za-z0-9._-]{1,128}$")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown GPU", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn stream_one(
    State(st): State<AppState>,
    uuid: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let g = stored_gpu(&st, uuid, q).await?;
    let uuid = g.info.map(|i| i.uuid).unwrap_or_default();
    Ok(event_stream(
        st.streams.subscribe(st.backend.clone(), Some(uuid)),
    ))
}

fn event_stream(events: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Response {
    let body =
        tokio_stream::wrappers::ReceiverStream::new(events).map(Ok::<_, std::convert::Infallible>);
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) would otherwise hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One GPU with its latest metrics.
#[utoipa::path(get, path = "/api/v1/gpus/{uuid}", tag = "gpus",
    params(("uuid" = String, Path, description = "GPU UUID", pattern = r"^[A-Za-z0-9._-]{1,128}$")),
    responses(
        (status = 200, description = "The GPU", body = Gpu<'_>),
        (status = 400, description = "Invalid UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown GPU", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_gpu(
    State(st): State<AppState>,
    uuid: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let g = stored_gpu(&st, uuid, q).await?;
    let gpu = Gpu::from_status(&g).ok_or_else(|| ApiError::UnknownGpu(String::new()))?;
    Ok(Json(gpu).into_response())
}

/// The GPU a `/api/v1/gpus/{uuid}…` route without query parameters names.
async fn stored_gpu(
    st: &AppState,
    uuid: Result<Path<String>, PathRejection>,
    q: Option<String>,
) -> Result<streamer::query::proto::GpuStatus, ApiError> {
    params(q, &[])?;
    let uuid = uuid_param(uuid)?;
    st.backend
        .gpu(uuid.clone())
        .await?
        .ok_or(ApiError::UnknownGpu(uuid))
}

/// The processes on one GPU in its latest round, with their pods.
#[utoipa::path(get, path = "/api/v1/gpus/{uuid}/processes", tag = "gpus",
    params(("uuid" = String, Path, description = "GPU UUID", pattern = r"^[A-Za-z0-9._-]{1,128}$")),
    responses(
        (status = 200, description = "Processes by PID", body = Processes<'_>),
        (status = 400, description = "Invalid UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown GPU", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn processes(
    State(st): State<AppState>,
    uuid: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let g = stored_gpu(&st, uuid, q).await?;
    let body = Processes::of(&g).ok_or_else(|| ApiError::UnknownGpu(String::new()))?;
    Ok(Json(body).into_response())
}

/// The metrics a `metrics=` list names, each once, in the order given.
fn metric_list(list: &str) -> Result<Vec<&'static MetricDef>, ApiError> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    // Checked before any lookup: a huge list costs one split, not a lookup per name.
    if names.len() > metric::METRICS.len() {
        return Err(ApiError::bad(
            "metrics",
            format!(
                "{} names; at most {} (each metric once)",
                names.len(),
                metric::METRICS.len()
            ),
        ));
    }
    let mut out: Vec<&'static MetricDef> = Vec::with_capacity(names.len());
    for name in names {
        let m = metric::find(name).ok_or_else(|| {
            let known: Vec<&str> = metric::METRICS.iter().map(|m| m.name).collect();
            ApiError::bad(
                "metrics",
                format!("unknown metric {name:?}; known: {}", known.join(", ")),
            )
        })?;
        if !out.iter().any(|o| o.name == m.name) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Samples of one GPU in a time window, oldest first.
#[utoipa::path(get, path = "/api/v1/gpus/{uuid}/telemetry", tag = "gpus",
    params(
        ("uuid" = String, Path, description = "GPU UUID", pattern = r"^[A-Za-z0-9._-]{1,128}$"),
        ("start_time" = Option<String>, Query, description = "RFC 3339, inclusive; default end_time - 1h"),
        ("end_time" = Option<String>, Query, description = "RFC 3339, exclusive; default now"),
        ("metrics" = Option<String>, Query, description = "Comma-separated metric names; default all"),
        ("limit" = Option<u32>, Query, description = "At most this many samples (1..=100000, default 10000)", minimum = 1, maximum = 100000),
        ("step" = Option<String>, Query, description = "Bucket width (1s..366d, e.g. 1m, 15m, 1h): one sample per bucket, aligned to multiples of the step since the epoch; the window widens to whole buckets. Steps of whole minutes (hours) also read the 1-minute (1-hour) rollups, which outlive raw samples"),
        ("agg" = Option<String>, Query, description = "With step: avg (default), min, max, last or count", pattern = r"^(avg|min|max|last|count)$")),
    responses(
        (status = 200, description = "Samples in time order", body = Telemetry<'_>),
        (status = 400, description = "Invalid parameter (named in the error)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown GPU", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn telemetry(
    State(st): State<AppState>,
    uuid: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = params(
        q,
        &["start_time", "end_time", "metrics", "limit", "step", "agg"],
    )?;
    let uuid = uuid_param(uuid)?;
    let end_ms = match p.get("end_time") {
        Some(v) => parse_time("end_time", v)?,
        None => crate::now_ms(),
    };
    let start_ms = match p.get("start_time") {
        Some(v) => parse_time("start_time", v)?,
        None => end_ms.saturating_sub(DEFAULT_WINDOW_MS),
    };
    if end_ms <= start_ms {
        return Err(ApiError::bad("end_time", "must be after start_time"));
    }
    let limit = match p.get("limit") {
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
            }
        },
        None => DEFAULT_LIMIT,
    };
    let only = match p.get("metrics") {
        Some(list) => Some(metric_list(list)?),
        None => None,
    };
    let step = match p.get("step") {
        Some(v) => Some((v.as_str(), parse_step(v)?)),
        None => None,
    };
    let agg = match (p.get("agg"), step) {
        (Some(_), None) => return Err(ApiError::bad("agg", "needs step (e.g. step=1m)")),
        (Some(a), Some(_)) => Agg::parse(a)
            .ok_or_else(|| ApiError::bad("agg", "must be one of avg, min, max, last, count"))?,
        (None, _) => Agg::Avg,
    };
    if let Some((text, step_ms)) = step {
        let start = streamer::store::rollup::bucket_of(start_ms, step_ms);
        let end = streamer::store::rollup::bucket_of(end_ms - 1, step_ms) + step_ms;
        let (rows, truncated) = st
            .backend
            .aggregate(uuid.clone(), start, end, step_ms, agg, limit)
            .await?
            .ok_or_else(|| ApiError::UnknownGpu(uuid.clone()))?;
        let mut body = Vec::new();
        crate::model::write_aggregate(
            &uuid,
            start,
            end,
            text,
            agg,
            &rows,
            only.as_deref(),
            truncated,
            &mut body,
        );
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    // A slot for this answer, held until its last byte is written (moved into the body).
    let slot = st
        .ranges
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| BackendError::Unavailable("shutting down".into()))?;
    let Some(mut parts) = st
        .backend
        .range_stream(uuid.clone(), start_ms, end_ms, limit)
        .await?
    else {
        return Err(ApiError::UnknownGpu(uuid));
    };
    // The first part decides the status: a failure before any byte is still a JSON 503.
    let first = match parts.next().await {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(BackendError::Unavailable("range stream ended early".into()).into());
        }
    };
    let coding = crate::compress::Coding::negotiate(&headers);
    let writer_only = only.clone();
    let body = TelemetryBody::new(&uuid, start_ms, end_ms, only, coding)
        .map_err(|e| BackendError::Unavailable(format!("compression: {e}")))?;
    // Blocks are decoded and written as JSON on blocking threads, two at a time (the next
    // while this one is sent), and leave in order as soon as each is ready (a chunked body):
    // the first bytes of a long range are on the wire before its last block is read.
    let written = futures::stream::once(async move { Ok(first) })
        .chain(parts)
        .map(move |part| {
            let only = writer_only.clone();
            async move {
                let block = match part {
                    Ok(RangePart::End { truncated }) => return Ok(Piece::End(truncated)),
                    Err(error) => return Err(error.to_string()),
                    Ok(RangePart::Block(b)) => b,
                };
                tokio::task::spawn_blocking(move || {
                    block
                        .into_readings()
                        .map(|rs| crate::model::write_readings(&rs, only.as_deref()))
                        .map_err(|e| format!("stored chunk does not decode: {e}"))
                })
                .await
                .map_err(|e| e.to_string())?
                .map(Piece::Samples)
            }
        })
        .buffered(2);
    let pieces = futures::stream::unfold(
        (written.boxed(), body, false, slot),
        |(mut written, mut body, done, slot)| async move {
            if done {
                return None;
            }
            let next = written
                .next()
                .await
                .unwrap_or_else(|| Err("range stream ended early".into()));
            let (piece, done) = match next {
                Ok(Piece::Samples(w)) => (Ok(body.push_written(w)), false),
                Ok(Piece::End(truncated)) => (Ok(body.finish(truncated)), true),
                Err(error) => {
                    // Headers are sent: all that is left is to cut the body short.
                    tracing::warn!(%error, "range stream failed mid-answer");
                    (Err(std::io::Error::other(error)), true)
                }
            };
            Some((piece, (written, body, done, slot)))
        },
    );
    let mut resp = Response::new(Body::from_stream(pieces));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, c.header_value());
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(resp)
}

/// A piece of a telemetry body, written off the async workers.
enum Piece {
    Samples(crate::model::WrittenSamples),
    End(bool),
}

/// Longest `step`.
const MAX_STEP_MS: i64 = 366 * 86_400_000;

/// A `step` value: a duration from 1 s to 366 days, in whole milliseconds.
fn parse_step(v: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad(
            "step",
            "must be a duration from 1s to 366d, e.g. 1m, 15m, 1h",
        )
    };
    let d = humantime::parse_duration(v).map_err(|_| bad())?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| bad())?;
    if d.subsec_nanos() % 1_000_000 != 0 || !(1000..=MAX_STEP_MS).contains(&ms) {
        return Err(bad());
    }
    Ok(ms)
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "not_found", "message": "no such route"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "only GET is supported"}});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Ready when the backend answers.
async fn readyz(State(st): State<AppState>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(2), st.backend.stats()).await {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready");
            not_ready()
        }
        Err(_) => not_ready(),
    }
}

fn not_ready() -> Response {
    let body = serde_json::json!({"error": {"code": "unavailable", "message": "telemetry backend not reachable"}});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The api's own metrics (text 0.0.4, or OpenMetrics when asked); in embedded mode also the
/// in-process store's ingest metrics. A gateway never repeats the streamer's: it serves them
/// itself.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let sse = crate::metrics::sse_registry(st.streams.clone());
    telemetry_metrics::respond_all(&[st.metrics.registry(), &sse], &headers)
}

async fn openapi_json() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn docs() -> Html<String> {
    Html(crate::openapi::docs_page())
}
