//! Each service's own metrics, through `prometheus-client`: one [`Registry`] per process,
//! answered at `/metrics` in the Prometheus text format (0.0.4), or OpenMetrics when the
//! scraper asks for it (`Accept: application/openmetrics-text`); request latency histograms by
//! route for axum ([`HttpMetrics`], observed by the service's own middleware) and by method for tonic ([`GrpcMetrics`]).
//!
//! Label values never come from a raw request path: an axum route is its matched template
//! (`/api/v1/gpus/{uuid}`, or `unmatched`), a gRPC method one of the service's own (or
//! `unknown`), so no client can grow a family without bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type.
pub const TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether the scraper asked for OpenMetrics (Prometheus does, with a text fallback).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// `registry` encoded as text 0.0.4, or OpenMetrics; with its content type.
pub fn encode(registry: &Registry, openmetrics: bool) -> (&'static str, String) {
    encode_all(&[registry], openmetrics)
}

/// `registries` one after the other, as one exposition.
pub fn encode_all(registries: &[&Registry], openmetrics: bool) -> (&'static str, String) {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail, nor can our collectors (they only format numbers).
    if openmetrics {
        for r in registries {
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, r);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        (OPENMETRICS, out)
    } else {
        for r in registries {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
        }
        (TEXT, out)
    }
}

/// The `/metrics` answer for a request with `headers`.
pub fn respond(registry: &Registry, headers: &HeaderMap) -> Response {
    respond_all(&[registry], headers)
}

/// The `/metrics` answer of several registries for a request with `headers`.
pub fn respond_all(registries: &[&Registry], headers: &HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = encode_all(registries, wants_openmetrics(accept));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// How long a metrics server's shutdown waits for a scrape in flight before cutting it: a
/// client holding a connection open never holds up the process's exit.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/metrics` (from `registry`) and `/healthz` (`ok` while the process runs) on
/// `listener` until `shutdown` (see [`serve_router`]).
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(r): State<Arc<Registry>>, h: HeaderMap| async move {
                respond(&r, &h)
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .with_state(registry);
    serve_router(listener, app, shutdown).await
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish for
/// [`DRAIN_TIMEOUT`] at most.
///
/// # Errors
/// The server's I/O error.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        Ok(()) = stopped => {}
    }
    // Shutting down: what is in flight may finish; after that, dropping the server cuts the
    // connections still open.
    tokio::time::timeout(DRAIN_TIMEOUT, server)
        .await
        .unwrap_or(Ok(()))
}

/// HELP texts given to these helpers are written as given (end them with a full stop); the
/// registry adds one to those of registered metrics.
///
/// Writes, at scrape time, a counter named `name` (its full exposed name, ending in
/// `_total`; the library adds the suffix back) with one series per `(labels, value)`.
///
/// # Errors
/// The encoder's (formatting into a string does not fail).
pub fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let base = name.strip_suffix("_total").unwrap_or(name);
    let mut m = enc.encode_descriptor(base, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes, at scrape time, a gauge named `name` with one series per `(labels, value)`.
///
/// # Errors
/// The encoder's.
pub fn gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// No labels, for [`counter`] and [`gauge`]: `[(NONE, value)]`.
pub const NONE: [(&str, &str); 0] = [];

/// The info gauge naming the fingerprint of each secret a process uses now:
/// `name{secret="service-token",fingerprint="1a2b3c4d"} 1` (`name` ends in `_info`). The
/// rotation command waits until every component shows the new fingerprints.
///
/// # Errors
/// The encoder's.
pub fn secret_info<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    in_use: impl IntoIterator<Item = (&'a str, String)>,
) -> std::fmt::Result {
    gauge(
        enc,
        name,
        "Secrets this process uses now, by fingerprint (first 8 hex digits of their SHA-256; never the value).",
        in_use
            .into_iter()
            .map(|(secret, fp)| ([("secret", secret.to_string()), ("fingerprint", fp)], 1)),
    )
}

/// Latency buckets for request histograms, in seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Labels of one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template, or `unmatched`.
    pub route: String,
    /// `GET`, `POST`, … (`other` for anything else).
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Time to the response head of every HTTP request, by route, method and status:
/// `<prefix>_http_request_duration_seconds`.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: LatencyFamily<HttpLabels>,
    prefix: &'static str,
}

impl HttpMetrics {
    /// An empty histogram family for `<prefix>_http_request_duration_seconds`.
    pub fn new(prefix: &'static str) -> Self {
        Self {
            requests: Family::new_with_constructor(latency_histogram),
            prefix,
        }
    }

    /// Adds it to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            format!("{}_http_request_duration_seconds", self.prefix),
            "Time from a request's arrival to its response head, by route template, method and status",
            self.requests.clone(),
        );
    }

    /// Records one request under `route` (a template, never a raw path).
    pub fn observe(&self, route: String, method: &http::Method, status: u16, seconds: f64) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .observe(seconds);
    }
}

/// Labels of one gRPC call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    /// The method's name (`ListGpus`), or `unknown` for a path the service does not serve.
    pub method: &'static str,
    /// The gRPC status code the response head carries (`0` when it comes in the trailers,
    /// as a successful call's does).
    pub code: &'static str,
}

/// Time to the response head of every gRPC call, by method and status code:
/// `<prefix>_grpc_request_duration_seconds`. A tower layer for tonic's server.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    calls: LatencyFamily<GrpcLabels>,
    prefix: &'static str,
    service: &'static str,
    methods: &'static [&'static str],
}

impl GrpcMetrics {
    /// An empty histogram family `<prefix>_grpc_request_duration_seconds` for the gRPC
    /// `service` (`telemetry.v1.TelemetryQuery`) whose methods are `methods`.
    pub fn new(
        prefix: &'static str,
        service: &'static str,
        methods: &'static [&'static str],
    ) -> Self {
        Self {
            calls: Family::new_with_constructor(latency_histogram),
            prefix,
            service,
            methods,
        }
    }

    /// Adds it to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            format!("{}_grpc_request_duration_seconds", self.prefix),
            "Time from a gRPC call's arrival to its response head, by method and status code",
            self.calls.clone(),
        );
    }

    fn method(&self, path: &str) -> &'static str {
        path.strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.service))
            .and_then(|p| p.strip_prefix('/'))
            .and_then(|m| self.methods.iter().find(|k| **k == m).copied())
            .unwrap_or("unknown")
    }
}

/// The gRPC status codes by number, as label values.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

impl<S> tower::Layer<S> for GrpcMetrics {
    type Service = GrpcTimed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcTimed {
            inner,
            metrics: Arc::new(self.clone()),
        }
    }
}

/// The service [`GrpcMetrics`] wraps around tonic's.
#[derive(Debug, Clone)]
pub struct GrpcTimed<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcTimed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = self.metrics.method(req.uri().path());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = match &out {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .and_then(|i| GRPC_CODES.get(i).copied())
                    .unwrap_or("0"),
                // The transport failed before any status: counted as UNAVAILABLE (14).
                Err(_) => "14",
            };
            metrics
                .calls
                .get_or_create(&GrpcLabels { method, code })
                .observe(start.elapsed().as_secs_f64());
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn text_and_openmetrics_carry_help_type_and_escaped_labels() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("demo_records", "Records seen", c.clone());
        c.inc_by(3);
        let h = HttpMetrics::new("demo");
        h.register(&mut r);
        h.observe("/a/{b}".into(), &http::Method::GET, 200, 0.003);
        h.observe("/a/{b}".into(), &http::Method::GET, 200, 0.2);
        h.observe("x\"y\\z\n".into(), &http::Method::GET, 404, 0.001);
        let (ct, text) = encode(&r, false);
        assert!(text.contains("route=\"x\\\"y\\\\z\\n\""), "{text}");
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(text.contains("# HELP demo_records_total Records seen.\n# TYPE demo_records_total counter\ndemo_records_total 3\n"), "{text}");
        assert!(text.contains("demo_http_request_duration_seconds_bucket{route=\"/a/{b}\",method=\"GET\",status=\"200\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("demo_http_request_duration_seconds_count{route=\"/a/{b}\",method=\"GET\",status=\"200\"} 2\n"), "{text}");
        let (ct, om) = encode(&r, true);
        assert_eq!(ct, OPENMETRICS);
        assert!(
            om.contains("# TYPE demo_records counter\ndemo_records_total 3\n"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }

    #[derive(Debug)]
    struct Scraped(u64);

    impl prometheus_client::collector::Collector for Scraped {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
            counter(
                &mut enc,
                "demo_rejected_total",
                "Rejected, by reason.",
                [([("reason", "bad")], self.0)],
            )?;
            gauge(&mut enc, "demo_depth", "Depth.", [(NONE, 7)])?;
            secret_info(
                &mut enc,
                "demo_secret_info",
                [("service-token", "00ff00ff".to_string())],
            )
        }
    }

    #[test]
    fn scrape_time_values_are_typed_and_named_as_given() {
        let mut r = Registry::default();
        r.register_collector(Box::new(Scraped(5)));
        let (_, text) = encode(&r, false);
        assert_eq!(
            text,
            "# HELP demo_rejected_total Rejected, by reason.\n# TYPE demo_rejected_total counter\ndemo_rejected_total{reason=\"bad\"} 5\n\
             # HELP demo_depth Depth.\n# TYPE demo_depth gauge\ndemo_depth 7\n\
             # HELP demo_secret_info Secrets this process uses now, by fingerprint (first 8 hex digits of their SHA-256; never the value).\n\
             # TYPE demo_secret_info gauge\ndemo_secret_info{secret=\"service-token\",fingerprint=\"00ff00ff\"} 1\n"
        );
    }

    #[test]
    fn grpc_methods_outside_the_service_are_one_label() {
        let g = GrpcMetrics::new("demo", "pkg.Svc", &["List", "Get"]);
        assert_eq!(g.method("/pkg.Svc/List"), "List");
        assert_eq!(g.method("/pkg.Svc/Nope"), "unknown");
        assert_eq!(g.method("/other.Svc/List"), "unknown");
        assert_eq!(g.method("/pkg.SvcList"), "unknown");
    }
}
