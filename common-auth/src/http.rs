//! The axum middleware that requires the API key on every route it wraps.
//!
//! Accepted: `X-API-Key: <key>` or `Authorization: Bearer <key>`. A request without a valid
//! key gets `401` with the house JSON error body and a `WWW-Authenticate` header. The header
//! values are never logged.
//!
//! Each failure is one audit line (target `audit`: route, client address, the presented
//! key's fingerprint — the first 8 hex digits of its SHA-256 — never the key), and failures
//! are slowed down per client address with a token bucket: past [`FAILURE_BURST`] failures a
//! client gets `429` with `Retry-After` until its bucket refills ([`FAILURES_PER_SECOND`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::KeyRing;

/// Failed authentications a client address may make in a burst.
pub const FAILURE_BURST: f64 = 10.0;
/// Failed authentications per second a client address regains.
pub const FAILURES_PER_SECOND: f64 = 1.0;
/// Client addresses tracked at most (full buckets are forgotten first).
const MAX_TRACKED: usize = 10_000;

/// State of [`require_api_key`]: the ring of accepted API keys and the failure buckets.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    /// Accepted keys.
    pub keys: KeyRing,
    failures: Arc<Mutex<HashMap<IpAddr, (f64, Instant)>>>,
}

impl ApiKeyAuth {
    /// Requires a key of `keys`.
    pub fn new(keys: KeyRing) -> Self {
        Self {
            keys,
            failures: Arc::default(),
        }
    }

    /// Whether `ip` may fail again now (a token left in its bucket, refilled since its last
    /// failure).
    fn may_fail(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&bucket_key(ip))
            .is_none_or(|&(t, at)| refilled(t, at, now) >= 1.0)
    }

    /// Takes a token from `ip`'s bucket for a failure (check and take under one lock).
    fn fail(&self, ip: IpAddr, now: Instant) {
        let key = bucket_key(ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let left = map
            .get(&key)
            .map_or(FAILURE_BURST, |&(t, at)| refilled(t, at, now))
            - 1.0;
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            // Forget the clients whose buckets have refilled; if every one is still
            // draining (many addresses failing at once), forget an arbitrary one: the map
            // stays bounded, at worst an attacker's bucket is forgotten early.
            map.retain(|_, &mut (t, at)| refilled(t, at, now) < FAILURE_BURST);
            if map.len() >= MAX_TRACKED
                && let Some(k) = map.keys().next().copied()
            {
                map.remove(&k);
            }
        }
        map.insert(key, (left.max(0.0), now));
    }
}

/// Tokens in a bucket that held `t` at `at`, as of `now`.
fn refilled(t: f64, at: Instant, now: Instant) -> f64 {
    (t + now.saturating_duration_since(at).as_secs_f64() * FAILURES_PER_SECOND).min(FAILURE_BURST)
}

/// The bucket an address counts in: itself for IPv4, its /64 for IPv6 (one host has a /64).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

pub use crate::fingerprint;

/// The credential a request presents, if any: `X-API-Key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

/// axum middleware: passes the request on when it carries an accepted API key, else 401.
///
/// Use with `axum::middleware::from_fn_with_state(ApiKeyAuth { .. }, require_api_key)`.
pub async fn require_api_key(State(auth): State<ApiKeyAuth>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = Instant::now();
    let presented = presented_key(req.headers());
    // A valid key always passes: clients behind one address (a NAT, an ingress) are not
    // locked out by another one's failures.
    if let Some(k) = presented
        && auth.keys.accepts(k)
    {
        return next.run(req).await;
    }
    if let Some(ip) = client
        && !auth.may_fail(ip, now)
    {
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"error": {
                "code": "too_many_failures",
                "message": "too many failed authentications from this address; retry later"
            }})),
        )
            .into_response();
        let wait = (1.0 / FAILURES_PER_SECOND).ceil().max(1.0);
        if let Ok(v) = HeaderValue::from_str(&format!("{wait}")) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let (message, reason) = if presented.is_some() {
        ("invalid API key", "invalid_key")
    } else {
        (
            "missing API key: send X-API-Key or Authorization: Bearer",
            "missing_key",
        )
    };
    tracing::warn!(
        target: "audit",
        route = %req.uri().path(),
        client = %client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        key_fingerprint = %presented.map_or_else(|| "none".to_string(), fingerprint),
        reason,
        "authentication failed"
    );
    if let Some(ip) = client {
        auth.fail(ip, now);
    }
    unauthorized(message)
}

/// The 401 response in the house error format.
pub fn unauthorized(message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message}});
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"gpu-telemetry\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        let auth = ApiKeyAuth::new(KeyRing::new("k-1".to_string().into()));
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(auth, require_api_key))
    }

    async fn status(req: axum::http::Request<Body>) -> StatusCode {
        app().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn x_api_key_and_bearer_are_accepted_and_anything_else_is_401() {
        let r = |h: Option<(&str, &str)>| {
            let mut b = axum::http::Request::builder().uri("/x");
            if let Some((k, v)) = h {
                b = b.header(k, v);
            }
            b.body(Body::empty()).unwrap()
        };
        assert_eq!(status(r(Some(("x-api-key", "k-1")))).await, StatusCode::OK);
        assert_eq!(
            status(r(Some(("authorization", "Bearer k-1")))).await,
            StatusCode::OK
        );
        assert_eq!(
            status(r(Some(("authorization", "bearer k-1")))).await,
            StatusCode::OK
        );
        assert_eq!(status(r(None)).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(r(Some(("x-api-key", "k-2")))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(r(Some(("authorization", "Basic k-1")))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(r(Some(("authorization", "Bearer")))).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn failures_from_one_address_are_slowed_down_others_are_not() {
        let app = app();
        let from = |ip: [u8; 4], key: &str| {
            let mut req = axum::http::Request::builder()
                .uri("/x")
                .header("x-api-key", key)
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
            req
        };
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(
                app.clone()
                    .oneshot(from([10, 0, 0, 1], "wrong"))
                    .await
                    .unwrap()
                    .status(),
            );
        }
        assert_eq!(got[..10], [StatusCode::UNAUTHORIZED; 10]);
        assert_eq!(got[10..], [StatusCode::TOO_MANY_REQUESTS; 2]);
        let resp = app
            .clone()
            .oneshot(from([10, 0, 0, 1], "wrong"))
            .await
            .unwrap();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        // The right key from the same address still passes (a NAT or an ingress shares it).
        let ok = app
            .clone()
            .oneshot(from([10, 0, 0, 1], "k-1"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        // Another address is not affected.
        let ok = app
            .clone()
            .oneshot(from([10, 0, 0, 2], "k-1"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[test]
    fn a_fingerprint_is_eight_hex_digits_of_sha256() {
        // SHA-256("abc") = ba7816bf…
        assert_eq!(fingerprint(b"abc"), "ba7816bf");
    }

    #[tokio::test]
    async fn unauthorized_body_is_the_json_error_format() {
        let resp = app()
            .oneshot(
                axum::http::Request::builder()
                    .uri("/x")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
}
