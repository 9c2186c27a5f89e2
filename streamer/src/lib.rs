//! The streamer: consumes telemetry from Kafka, verifies and stores it, answers queries.
//!
//! - [`store::Store`]: a durable [`store::History`] ([`store::DiskHistory`]: compressed
//!   chunks on disk, offsets in the same transaction) and the in-memory
//!   [`store::LatestIndex`]; idempotent on (GPU, sample time) and owner of the consumer's
//!   resume offsets.
//! - [`ingest::Ingestor`]: verify → decode → store for a batch of fetched records.
//! - [`consume::run_consumer`]: the loop that fetches, ingests, dead-letters rejects, then
//!   commits.
//! - [`query::QueryService`]: the gRPC query service (service-token protected).
//! - [`run`]: wires these for the `streamer` binary.

pub mod config;
pub mod consume;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod remote_write;
pub mod store;

use std::sync::Arc;

use common_auth::grpc::RequireServiceToken;
use common_auth::{KeyRing, SecretSource, SecretSpec};
use msg_queue_client::consumer::{ConsumerConfig, OffsetSource, Resume, TelemetryConsumer};
use msg_queue_client::dead_letter::DeadLetterProducer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::StreamerConfig;
use crate::ingest::Ingestor;
use crate::metrics::StreamerMetrics;
use crate::query::QueryService;
use crate::query::proto::telemetry_query_server::TelemetryQueryServer;
use crate::store::Store;

/// Largest gRPC message either side sends (a 10,000-GPU list is ≈ 3 MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// HTTP/2 flow-control windows of the query service. Large list and range answers (MBs)
/// would otherwise stall on the 64 KiB default, one round trip per window.
pub const H2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Errors that stop the streamer.
#[derive(Debug, thiserror::Error)]
pub enum StreamerError {
    /// A secret is missing.
    #[error(transparent)]
    Auth(#[from] common_auth::AuthError),
    /// Kafka setup failed.
    #[error(transparent)]
    Queue(#[from] msg_queue_client::QueueError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The history backend is misconfigured (one line: which flag, what is wrong).
    #[error("{0}")]
    Config(String),
}

/// Opens the store `cfg` asks for: the durable store in its data directory, or with
/// `--history-backend victoriametrics` a history kept in VictoriaMetrics (no data directory:
/// the streamer keeps no history of its own). Call it within the runtime (remote writes and
/// reads run on it).
///
/// # Errors
/// [`StreamerError::Store`] when the data directory cannot be opened,
/// [`StreamerError::Config`] for a missing or unusable VictoriaMetrics URL.
pub fn open_store(cfg: &StreamerConfig) -> Result<Store, StreamerError> {
    use secrecy::ExposeSecret as _;
    if cfg.history_backend == config::HistoryBackend::Builtin {
        return Ok(Store::open_disk(cfg.disk_config())?);
    }
    let url = cfg.victoriametrics_url.as_deref().ok_or_else(|| {
        StreamerError::Config(
            "--history-backend victoriametrics needs --victoriametrics-url (env VICTORIAMETRICS_URL)"
                .into(),
        )
    })?;
    let read_url = cfg.victoriametrics_read_url.as_deref().unwrap_or(url);
    for (flag, u) in [
        ("--victoriametrics-url", url),
        ("--victoriametrics-read-url", read_url),
    ] {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(StreamerError::Config(format!(
                "{flag} must be an http:// or https:// URL"
            )));
        }
    }
    let mut headers =
        remote_write::parse_headers(&cfg.victoriametrics_headers).map_err(StreamerError::Config)?;
    if let Some(t) = &cfg.victoriametrics_bearer_token {
        let mut v =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose_secret()))
                .map_err(|_| {
                    StreamerError::Config(
                        "the VictoriaMetrics bearer token is not a valid header value".into(),
                    )
                })?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let http = remote_write::http_client(
        cfg.victoriametrics_ca_file.as_deref(),
        std::time::Duration::from_secs(30),
    )
    .map_err(StreamerError::Config)?;
    let writer = remote_write::RemoteWriter::with_http(
        http.clone(),
        &format!("{}/api/v1/write", url.trim_end_matches('/')),
        headers.clone(),
    );
    let reader = remote_write::VictoriaReader::with_http(http, read_url, headers);
    let history =
        remote_write::VictoriaHistory::new(writer, reader, tokio::runtime::Handle::current());
    Ok(Store::open(Arc::new(history))?)
}

/// Adapts a [`Store`] to the consumer's [`OffsetSource`]: partitions resume where the store
/// says ([`Store::resume_offset`]), or at the group's commits for a history that keeps no
/// offsets (VictoriaMetrics).
#[derive(Debug)]
pub struct StoreOffsets(pub Arc<Store>);

impl OffsetSource for StoreOffsets {
    fn resume(&self, _topic: &str, partition: i32) -> Resume {
        if !self.0.history().keeps_offsets() {
            return Resume::Committed;
        }
        self.0
            .resume_offset(partition)
            .map_or(Resume::Beginning, Resume::At)
    }
}

/// The service token and the retired ones, checked (present, strong) before anything else
/// starts: a missing or weak token stops the streamer before it opens a socket.
///
/// # Errors
/// [`StreamerError`] naming the secret and where it looked.
pub async fn load_token(cfg: &StreamerConfig) -> Result<Token, StreamerError> {
    let source = SecretSource::open(&cfg.secrets).await?;
    let ring = source.load(&SecretSpec::SERVICE_TOKEN, cfg.service_token.as_ref())?;
    source.load_retired(&SecretSpec::SERVICE_TOKEN_PREVIOUS, &ring)?;
    Ok(Token { ring, source })
}

/// The service token ring and the source that keeps it current ([`load_token`]).
#[derive(Debug)]
pub struct Token {
    /// Current, previous and retired tokens.
    pub ring: KeyRing,
    /// Where they come from.
    pub source: SecretSource,
}

/// Runs the streamer with the service `token` ([`load_token`]) over `store` (opened by the caller, see
/// [`StreamerConfig::disk_config`]): gRPC on `listener`, consuming until `shutdown`
/// resolves. On shutdown the gRPC server stops accepting, the consumer finishes its batch,
/// the store flushes and the consumer commits once more.
///
/// # Errors
/// [`StreamerError`] when the secret, Kafka clients or the gRPC server cannot start.
pub async fn run(
    cfg: StreamerConfig,
    token: Token,
    store: Arc<Store>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StreamerError> {
    let Token { ring, source } = token;
    let metrics = Arc::new(StreamerMetrics::default());
    let _ = metrics.tokens.set(ring.clone());
    let mut registry = telemetry_metrics::Registry::default();
    metrics::register_ingest(metrics.clone(), &mut registry);
    metrics.grpc.register(&mut registry);
    let kafka_properties = msg_queue_client::parse_properties(&cfg.kafka_properties)?;

    // In the background: the query service comes up even while the broker is away.
    let topics = tokio::spawn(msg_queue_client::topic::ensure_topics_until_done(
        cfg.brokers.clone(),
        vec![cfg.topic.clone(), cfg.dead_letter_topic.clone()],
        cfg.partitions,
        cfg.replication,
        std::time::Duration::from_secs(5),
        kafka_properties.clone(),
    ));
    let mut ccfg = ConsumerConfig::new(&cfg.brokers, &cfg.group_id, &cfg.topic);
    ccfg.session_timeout = cfg.session_timeout;
    ccfg.max_record_bytes = cfg.max_record_bytes;
    ccfg.extra = kafka_properties.clone();
    ccfg.lag = Some(metrics.lag.clone());
    let consumer = TelemetryConsumer::new(&ccfg, Arc::new(StoreOffsets(store.clone())))?;
    let lag_probe = msg_queue_client::consumer::LagProbe::new(
        &cfg.brokers,
        &cfg.topic,
        &kafka_properties,
        metrics.lag.clone(),
    )?;
    let dead_letter = DeadLetterProducer::new(
        &cfg.brokers,
        &cfg.dead_letter_topic,
        &cfg.topic,
        &kafka_properties,
    )?;
    let ingestor = Ingestor::new(ring.clone(), store.clone(), metrics.clone())
        .with_retired_max_age(cfg.retired_token_max_age);

    let stop_tx = Arc::new(watch::channel(false).0);
    let stop_rx = stop_tx.subscribe();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let consumer_task = tokio::spawn(consume::run_consumer(
        consumer,
        ingestor,
        store.clone(),
        dead_letter,
        metrics.clone(),
        stopped(),
    ));
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = on_signal.send(true);
    });
    let maintenance = tokio::spawn(store::run_maintenance(
        store.clone(),
        metrics.clone(),
        cfg.sweep_interval,
        stopped(),
    ));

    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "gRPC query service listening"
    );
    let lag_task = tokio::spawn(measure_lag(lag_probe, stopped()));
    let metrics_server = metrics_listener
        .map(|l| tokio::spawn(telemetry_metrics::serve(l, Arc::new(registry), stopped())));
    let reload = source.spawn_watch(
        vec![
            (SecretSpec::SERVICE_TOKEN, ring.clone()),
            (SecretSpec::SERVICE_TOKEN_PREVIOUS, ring.clone()),
        ],
        stopped(),
    );
    let served = serve_queries_with(listener, store, metrics, ring, &cfg.grpc, stopped()).await;
    if let Err(error) = &served {
        // Without its query service the streamer is useless: stop everything, report it.
        tracing::error!(%error, "gRPC server failed; stopping");
        let _ = stop_tx.send(true);
    }
    let _ = consumer_task.await;
    // After the consumer: the final flush covers its last batch.
    let _ = maintenance.await;
    if let Some(r) = reload {
        let _ = r.await;
    }
    lag_task.abort();
    if let Some(m) = metrics_server {
        // Bounded: telemetry_metrics::serve drains for DRAIN_TIMEOUT at most.
        let _ = m.await;
    }
    topics.abort();
    served?;
    Ok(())
}

/// Measures the consumer lag every [`metrics::LAG_INTERVAL`] until `stop`.
async fn measure_lag(
    probe: msg_queue_client::consumer::LagProbe,
    stop: impl std::future::Future<Output = ()>,
) {
    let probe = Arc::new(probe);
    let mut tick = tokio::time::interval(metrics::LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let p = probe.clone();
        let _ = tokio::task::spawn_blocking(move || p.measure()).await;
    }
}

/// Serves the gRPC query service over `store` on `listener` until `shutdown`, requiring a
/// token of `tokens` on every call.
///
/// # Errors
/// The transport's error when serving fails.
pub async fn serve_queries(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
    tokens: KeyRing,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_queries_with(
        listener,
        store,
        metrics,
        tokens,
        &config::GrpcLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_queries`] with `limits` on streams, calls and `WatchLatest` watchers.
///
/// # Errors
/// The transport's error when serving fails.
pub async fn serve_queries_with(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<StreamerMetrics>,
    tokens: KeyRing,
    limits: &config::GrpcLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Long-lived WatchLatest streams end when shutdown begins; otherwise the graceful
    // shutdown would wait for them forever.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let timed = metrics.grpc.clone();
    let service = tonic::service::interceptor::InterceptedService::new(
        TelemetryQueryServer::new(
            QueryService::new(store, metrics, stopping)
                .with_tokens(tokens.clone())
                .with_max_watchers(limits.max_watchers),
        )
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
        RequireServiceToken { tokens },
    );
    tonic::transport::Server::builder()
        // Bounds on what one client can hold: streams per connection, calls in progress
        // per connection, and time to a response head.
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .concurrency_limit_per_connection(limits.max_streams_per_connection as usize)
        .timeout(limits.call_timeout)
        .initial_stream_window_size(Some(H2_STREAM_WINDOW))
        .initial_connection_window_size(Some(H2_CONNECTION_WINDOW))
        .http2_adaptive_window(Some(true))
        // Without it, Nagle + delayed ACKs add ~40 ms to multi-MB answers.
        .tcp_nodelay(true)
        .layer(timed)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
