//! The HTTP server: hyper's HTTP/1 connections with the limits `axum::serve` does not set, so
//! no client, with or without a key, can hold memory or connections without bound:
//!
//! - a **header read timeout**: a request head must arrive in full within it, and a
//!   keep-alive connection idle between requests that long is closed (hyper starts the same
//!   timer when it waits for the next request);
//! - a **head size cap**: a request line plus headers larger than it is answered 431 and the
//!   connection closed (what one connection can buffer);
//! - a **connection cap**: past it, new connections wait in the listen backlog until one
//!   closes;
//! - a **request timeout**: a response head not ready in time is a JSON 503.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Limits on every connection and request (flags of the api).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// A request head must arrive within this; a keep-alive connection idle this long
    /// between requests is closed too.
    #[arg(long, env = "API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes (at least 8192); larger is
    /// answered 431.
    #[arg(long, env = "API_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "API_MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,
    /// Longest a request may take to its response head (then a JSON 503).
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16_384,
            max_connections: 4_096,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a shutdown waits for the responses in flight (Kubernetes' grace period is 30 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` with `limits` until `shutdown` resolves, then lets the
/// connections finish their requests (for [`DRAIN_TIMEOUT`] at most).
///
/// # Errors
/// None today (accept errors are logged and retried); the type keeps room for one.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| request_timeout(timeout, req, next),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let mut accept_errors_said = false;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, never spin.
                    if !accept_errors_said {
                        tracing::warn!(%error, "accept failed; retrying");
                        accept_errors_said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        accept_errors_said = false;
        // The client's address reaches the handlers (audit lines, per-address limits),
        // put on each request: the router itself is shared, not rebuilt per connection.
        let router = router.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let mut closed = closed.clone();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8_192));
        conns.spawn(async move {
            let _slot = slot;
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let closing = async move {
                let _ = closed.wait_for(|c| *c).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = closing => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = closing.send(true);
    // Responses in flight get DRAIN_TIMEOUT to finish; whatever is left then is cut.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "responses still in flight after the drain timeout; closing them"
        );
        conns.abort_all();
    }
    Ok(())
}

async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => crate::error::ApiError::Timeout.into_response(),
    }
}
