//! The REST API over GPU telemetry, and the one-process embedded mode.
//!
//! - [`routes::router`] builds the axum [`axum::Router`] from an [`routes::AppState`]; tests
//!   drive it with `oneshot` or over a real socket.
//! - [`backend::TelemetryBackend`]: [`backend::GrpcBackend`] (the streamer) or
//!   [`backend::StoreBackend`] (a store in this process).
//! - [`error::ApiError`] maps every failure to a status and the JSON error body.
//! - [`openapi`]: `/openapi.json` generated from the handlers, and the `/docs` page.
//! - [`embedded`]: collector + store + API in one process, no Kafka.
//! - [`run`]: what the `api` binary does.

use std::io::Write as _;
pub mod backend;
pub mod compress;
pub mod config;
pub mod dashboard;
pub mod dcgm;
pub mod embedded;
pub mod error;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod sse;

use std::sync::Arc;

use common_auth::{KeyRing, SecretSpec};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

use crate::backend::{GrpcBackend, TelemetryBackend};
use crate::config::ApiConfig;
use crate::routes::AppState;

/// Errors that stop the api.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A secret is missing.
    #[error(transparent)]
    Auth(#[from] common_auth::AuthError),
    /// The GPU source (embedded mode) cannot start.
    #[error(transparent)]
    Source(#[from] collector::source::SourceError),
    /// The streamer URL is invalid.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// The embedded store cannot open.
    #[error(transparent)]
    Store(#[from] streamer::store::StoreError),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// The current time as UTC milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    collector::sampler::now_ms()
}

/// Serves `router` on `listener` until `shutdown` resolves (then finishes in-flight requests).
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Where the API key came from, for the startup message (never the key itself, except a
/// key generated here, which is shown once because nobody else knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// From env `API_KEY` or `--secret-dir`.
    Configured,
    /// Generated at startup (embedded mode without a configured key).
    Generated,
}

/// The secrets the api runs with, loaded and checked before anything binds or opens.
#[derive(Debug)]
pub struct Secrets {
    /// The API key ring.
    pub keys: KeyRing,
    /// Where the API key came from.
    pub origin: KeyOrigin,
    /// The service token for the streamer (gateway mode; `None` when embedded).
    pub tokens: Option<KeyRing>,
    /// Where they come from (keeps them current).
    pub source: common_auth::SecretSource,
}

/// Loads and checks (present, strong) every secret `cfg` needs: a missing or weak one stops
/// the api with one line before it opens a socket or the data directory.
///
/// # Errors
/// [`RunError`] naming the secret, where it looked and why it is refused.
pub async fn load_secrets(cfg: &ApiConfig) -> Result<Secrets, RunError> {
    let source = common_auth::SecretSource::open(&cfg.secrets).await?;
    let (keys, origin) = api_keys(cfg, &source)?;
    let tokens = if cfg.embedded {
        None
    } else {
        Some(source.load(&SecretSpec::SERVICE_TOKEN, cfg.service_token.as_ref())?)
    };
    Ok(Secrets {
        keys,
        origin,
        tokens,
        source,
    })
}

fn api_keys(
    cfg: &ApiConfig,
    source: &common_auth::SecretSource,
) -> Result<(KeyRing, KeyOrigin), RunError> {
    match source.load(&SecretSpec::API_KEY, cfg.api_key.as_ref()) {
        Ok(k) => Ok((k, KeyOrigin::Configured)),
        Err(e) if cfg.embedded && matches!(e, common_auth::AuthError::Missing { .. }) => {
            let bytes: [u8; 32] = rand::random();
            let key = SecretString::from(hex::encode(bytes));
            Ok((
                KeyRing::with_policy(key, cfg.secrets.policy()),
                KeyOrigin::Generated,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the api (gateway to the streamer, or embedded) with `secrets` ([`load_secrets`]) on
/// `listener` until `shutdown`.
///
/// # Errors
/// [`RunError`] when the source cannot start or serving fails.
pub async fn run(
    cfg: ApiConfig,
    secrets: Secrets,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Secrets {
        keys,
        origin,
        tokens,
        source,
    } = secrets;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // The embedded sampler or the streamer mirror: a background task run until shutdown.
    let background;
    // Secrets re-read from --secret-dir: the API key, and the service token for the streamer.
    let mut watched = vec![(SecretSpec::API_KEY, keys.clone())];
    let mut calls_with = None;
    let mut embedded_metrics = None;
    let backend: Arc<dyn TelemetryBackend> = if cfg.embedded {
        let dir = cfg.data_dir.clone();
        let disk = cfg.disk_config();
        let store = tokio::task::spawn_blocking(move || streamer::store::Store::open_disk(disk))
            .await
            .map_err(|e| RunError::Serve(std::io::Error::other(e)))??;
        let store = Arc::new(store);
        let _ = writeln!(
            std::io::stdout(),
            "data directory: {} ({} GPUs, {} samples kept from earlier runs)",
            std::path::absolute(&dir).unwrap_or(dir).display(),
            store.latest().len(),
            store.latest().sample_count()
        );
        let (b, task) = embedded::start(&cfg, store, stopped())?;
        embedded_metrics = Some(b.metrics.clone());
        background = Some(task);
        Arc::new(b)
    } else {
        let tokens = match tokens {
            Some(t) => t,
            None => source.load(&SecretSpec::SERVICE_TOKEN, cfg.service_token.as_ref())?,
        };
        watched.push((SecretSpec::SERVICE_TOKEN, tokens.clone()));
        calls_with = Some(tokens.clone());
        let grpc = GrpcBackend::new(&cfg.streamer_url, tokens, cfg.streamer_timeout)?
            .with_refresh(cfg.streamer_refresh);
        // The GPU list and single-GPU reads come from a mirror the streamer keeps current.
        background = Some(tokio::spawn(grpc.clone().run_mirror(stopped())));
        Arc::new(grpc)
    };
    if origin == KeyOrigin::Generated {
        watched.clear(); // nothing on disk to follow
    }
    let reload = source.spawn_watch(watched, stopped());
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "api listening on {addr}");
    let _ = writeln!(
        out,
        "  try: curl -H \"X-API-Key: $API_KEY\" http://{host}:{}/api/v1/gpus",
        addr.port()
    );
    let _ = match origin {
        KeyOrigin::Configured => writeln!(out, "  API key: from {} (not shown)", source.describe()),
        KeyOrigin::Generated => writeln!(
            out,
            "  API key (generated, none configured; set API_KEY to choose one): {}",
            keys.current().expose_secret()
        ),
    };
    drop(out);
    let streams = Arc::new(sse::Hub::new(cfg.sse_client_buffer));
    let ending = stopped();
    let hub = streams.clone();
    tokio::spawn(async move {
        ending.await;
        hub.close();
    });
    let state = AppState {
        backend,
        metrics: Arc::new(metrics::ApiMetrics::new(calls_with, embedded_metrics)),
        keys,
        ranges: routes::range_slots(cfg.max_concurrent_ranges),
        streams,
    };
    server::serve(listener, routes::router(state), cfg.http.clone(), stopped()).await?;
    if let Some(t) = background {
        let _ = t.await;
    }
    if let Some(r) = reload {
        let _ = r.await;
    }
    Ok(())
}
