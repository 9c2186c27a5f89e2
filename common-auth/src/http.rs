//! The axum middleware that requires the API key on every route it wraps.
//!
//! Accepted: `X-API-Key: <key>` or `Authorization: Bearer <key>`. A request without a valid
//! key gets `401` with the house JSON error body and a `WWW-Authenticate` header. The header
//! values are never logged.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::KeyRing;

/// State of [`require_api_key`]: the ring of accepted API keys.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    /// Accepted keys.
    pub keys: KeyRing,
}

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
    match presented_key(req.headers()) {
        Some(k) if auth.keys.accepts(k) => next.run(req).await,
        presented => {
            let message = if presented.is_some() {
                "invalid API key"
            } else {
                "missing API key: send X-API-Key or Authorization: Bearer"
            };
            unauthorized(message)
        }
    }
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
        let auth = ApiKeyAuth {
            keys: KeyRing::new("k-1".to_string().into()),
        };
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
