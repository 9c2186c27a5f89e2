//! The api's mirror of the latest state, fed by the streamer's WatchLatest stream over a
//! real gRPC socket: kept current, read through when stale, cut when its token is rotated out.

use std::sync::Arc;
use std::time::Duration;

use api::routes::{AppState, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common_auth::KeyRing;
use integration_tests::eventually;
use serde_json::Value;
use streamer::store::{DiskConfig, Store};
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch};
use tower::ServiceExt;

const KEY: &str = "test-api-key";
const UUID: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000001";
const T0: i64 = 1_790_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_list_comes_from_a_mirror_the_streamer_keeps_current() {
    use streamer::metrics::StreamerMetrics;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    let batch = |ts: i64, util: u32| TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        node: "node-a".into(),
        collected_at_ms: ts,
        gpus: vec![GpuInfo {
            uuid: UUID.into(),
            index: 0,
            name: "H100".into(),
            node: "node-a".into(),
            ..Default::default()
        }],
        samples: vec![GpuSample {
            uuid: UUID.into(),
            timestamp_ms: ts,
            gpu_utilization_percent: Some(util),
            ..Default::default()
        }],
    };
    store.apply(&batch(T0, 10)).unwrap();
    let token = KeyRing::new("mirror-token-0123456789".to_string().into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(streamer::serve_queries(
        listener,
        store.clone(),
        Arc::new(StreamerMetrics::default()),
        token.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let backend =
        api::backend::GrpcBackend::new(&format!("http://{addr}"), token, Duration::from_secs(2))
            .unwrap();
    tokio::spawn(backend.clone().run_mirror(std::future::pending()));
    let app = router(AppState {
        backend: Arc::new(backend.clone()),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
        streams: Arc::default(),
    });
    let latest_util = || {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri("/api/v1/gpus")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (
                status,
                v["gpus"][0]["latest"]["gpu_utilization_percent"].as_u64(),
            )
        }
    };
    eventually(Duration::from_secs(10), "mirror synced", || async {
        backend
            .mirror()
            .is_fresh(api::backend::MIRROR_MAX_AGE)
            .then_some(())
    })
    .await;
    assert_eq!(latest_util().await, (StatusCode::OK, Some(10)));
    assert!(backend.mirror().hits() >= 1, "answered from the mirror");

    // A new sample reaches the mirror within a push interval or two.
    store.apply(&batch(T0 + 1000, 77)).unwrap();
    eventually(
        Duration::from_secs(5),
        "the change reached the mirror",
        || async { (latest_util().await == (StatusCode::OK, Some(77))).then_some(()) },
    )
    .await;

    // With the streamer gone the mirror goes stale and reads fail cleanly (503), not with
    // old data presented as current.
    let _ = stop_tx.send(());
    let _ = server.await;
    eventually(
        Duration::from_secs(15),
        "stale mirror no longer answering",
        || async { (latest_util().await.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_latest_state_stream_ends_when_its_token_is_rotated_out() {
    use common_auth::RotationPolicy;
    use streamer::metrics::StreamerMetrics;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    let server_tokens = KeyRing::with_policy(
        "old-token-0123456789abcdef".to_string().into(),
        RotationPolicy {
            grace: Duration::from_millis(300),
            signing_delay: Duration::from_millis(100),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(streamer::serve_queries(
        listener,
        store,
        Arc::new(StreamerMetrics::default()),
        server_tokens.clone(),
        std::future::pending(),
    ));
    // The client keeps the old token (as a pod that never saw the rotation would).
    let backend = api::backend::GrpcBackend::new(
        &format!("http://{addr}"),
        KeyRing::new("old-token-0123456789abcdef".to_string().into()),
        Duration::from_secs(2),
    )
    .unwrap();
    tokio::spawn(backend.clone().run_mirror(std::future::pending()));
    eventually(Duration::from_secs(10), "mirror synced", || async {
        backend
            .mirror()
            .is_fresh(Duration::from_millis(1500))
            .then_some(())
    })
    .await;
    server_tokens.rotate("new-token-0123456789abcdef".to_string().into());
    // Past the grace period the stream is cut and cannot be reopened with the old token:
    // the mirror stops being refreshed.
    eventually(
        Duration::from_secs(10),
        "stream ended for its rotated-out token",
        || async { (!backend.mirror().is_fresh(Duration::from_millis(1500))).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_latest_streams_past_the_cap_are_refused_and_a_closed_one_frees_its_slot() {
    use common_auth::grpc::AttachServiceToken;
    use streamer::metrics::StreamerMetrics;
    use streamer::query::proto::WatchLatestRequest;
    use streamer::query::proto::telemetry_query_client::TelemetryQueryClient;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    let token = KeyRing::new("watch-cap-token-0123456789".to_string().into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = streamer::config::GrpcLimits {
        max_watchers: 2,
        ..Default::default()
    };
    let served_token = token.clone();
    tokio::spawn(async move {
        streamer::serve_queries_with(
            listener,
            store,
            Arc::new(StreamerMetrics::default()),
            served_token,
            &limits,
            std::future::pending(),
        )
        .await
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        TelemetryQueryClient::with_interceptor(channel, AttachServiceToken { tokens: token });
    let first = client.watch_latest(WatchLatestRequest {}).await.unwrap();
    let _second = client.watch_latest(WatchLatestRequest {}).await.unwrap();
    let third = client
        .watch_latest(WatchLatestRequest {})
        .await
        .unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third}");
    // Closing one gives its slot back (once the server sees the stream end).
    drop(first);
    eventually(Duration::from_secs(10), "a slot freed", || {
        let mut client = client.clone();
        async move { client.watch_latest(WatchLatestRequest {}).await.ok() }
    })
    .await;
}
