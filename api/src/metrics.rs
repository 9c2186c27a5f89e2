//! The api's own metrics (`/metrics`), through `prometheus-client`. Names are constants here
//! and nowhere else.
//!
//! A gateway api shows only its own: the streamer serves its ingest metrics itself, so a
//! `sum()` over several api replicas counts nothing twice. An embedded api (one process with
//! its own store) also shows the store's ingest metrics, under the streamer's names.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use telemetry_metrics::prometheus_client::collector::Collector;
use telemetry_metrics::prometheus_client::encoding::DescriptorEncoder;
use telemetry_metrics::{HttpMetrics, NONE, Registry, counter, gauge};

/// Time to the response head of every request, by route template, method and status
/// (histogram; its `_count` is the request count).
pub const REQUESTS: &str = "api_http_request_duration_seconds";
/// Failures, by `error_type` (`unauthorized`, `bad_request`, `not_found`, `unavailable`).
pub const ERRORS: &str = "api_errors_total";
/// The fingerprint of the service token it calls the streamer with (not the API key's: a
/// human-chosen key's hash on an open endpoint would let guesses be checked offline).
pub const SECRETS: &str = "api_secret_info";
/// Live-stream clients dropped for reading too slowly.
pub const SSE_DROPPED: &str = "api_sse_dropped_total";
/// Live streams open now (gauge).
pub const SSE_OPEN: &str = "api_sse_open_streams";

/// Request metrics and the secrets in use, in a registry of their own.
#[derive(Debug)]
pub struct ApiMetrics {
    http: HttpMetrics,
    counts: Arc<Counts>,
    registry: Registry,
}

#[derive(Debug, Default)]
struct Counts {
    unauthorized: AtomicU64,
    bad_request: AtomicU64,
    not_found: AtomicU64,
    unavailable: AtomicU64,
    tokens: Option<common_auth::KeyRing>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl ApiMetrics {
    /// The api's metrics; `tokens`: the ring whose signing token calls to the streamer carry
    /// (its fingerprint is shown); `embedded`: the in-process store's ingest metrics.
    pub fn new(
        tokens: Option<common_auth::KeyRing>,
        embedded: Option<Arc<streamer::metrics::StreamerMetrics>>,
    ) -> Self {
        let http = HttpMetrics::new("api");
        let counts = Arc::new(Counts {
            tokens,
            ..Counts::default()
        });
        let mut registry = Registry::default();
        http.register(&mut registry);
        registry.register_collector(Box::new(counts.clone()));
        if let Some(m) = embedded {
            streamer::metrics::register_ingest(m, &mut registry);
        }
        Self {
            http,
            counts,
            registry,
        }
    }

    /// What `/metrics` shows (with the live streams' counters, see [`sse_registry`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn observe(&self, route: String, method: &axum::http::Method, status: u16, seconds: f64) {
        self.http.observe(route, method, status, seconds);
        let c = &self.counts;
        let e = match status {
            401 => &c.unauthorized,
            400 => &c.bad_request,
            404 => &c.not_found,
            503 => &c.unavailable,
            _ => return,
        };
        e.fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for Counts {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut enc,
            ERRORS,
            "Requests answered with an error, by error_type: unauthorized (401), bad_request (400), not_found (404), unavailable (503).",
            [
                ([("error_type", "unauthorized")], g(&self.unauthorized)),
                ([("error_type", "bad_request")], g(&self.bad_request)),
                ([("error_type", "not_found")], g(&self.not_found)),
                ([("error_type", "unavailable")], g(&self.unavailable)),
            ],
        )?;
        if let Some(t) = &self.tokens {
            use secrecy::ExposeSecret as _;
            let fp = common_auth::fingerprint(t.signing().expose_secret().as_bytes());
            telemetry_metrics::secret_info(&mut enc, SECRETS, [("service-token", fp)])?;
        }
        Ok(())
    }
}

/// The live streams' counters of `hub`, as a registry for one scrape.
pub fn sse_registry(hub: Arc<crate::sse::Hub>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SseScrape(hub)));
    r
}

#[derive(Debug)]
struct SseScrape(Arc<crate::sse::Hub>);

impl Collector for SseScrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        counter(
            &mut enc,
            SSE_DROPPED,
            "Live-stream clients dropped for reading too slowly.",
            [(NONE, self.0.dropped.load(Ordering::Relaxed))],
        )?;
        gauge(
            &mut enc,
            SSE_OPEN,
            "Live streams open now.",
            [(
                NONE,
                i64::try_from(self.0.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            )],
        )
    }
}

/// Middleware timing and counting every response: the route is its matched template (or
/// `unmatched`), never the raw path.
pub async fn count(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    m.observe(
        route,
        &method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}
