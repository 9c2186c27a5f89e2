//! The REST contract: auth on every route but the open ones, JSON errors naming the bad
//! parameter, 404 for unknown GPUs, never a 500 for bad input — on both history backends:
//! every test that reads data runs twice (`builtin::…` over the durable store,
//! `victoriametrics::…` over a real VictoriaMetrics, one per test process).

use std::sync::Arc;
use std::time::Duration;

use api::backend::StoreBackend;
use api::routes::{AppState, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common_auth::KeyRing;
use serde_json::Value;
use streamer::store::{DiskConfig, Store};
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch};
use tower::ServiceExt;

const KEY: &str = "test-api-key";
const UUID: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000001";
const T0: i64 = 1_790_000_000_000; // 2026-09-21T14:13:20Z

/// Where the test app's history lives.
#[derive(Debug, Clone, Copy)]
enum History {
    Builtin,
    Victoriametrics,
}

thread_local! {
    /// This test's VictoriaMetrics: started on first use, killed when the test's thread
    /// ends (its destructor runs then; a static's never would).
    static VM: std::cell::OnceCell<integration_tests::VictoriaMetrics> =
        const { std::cell::OnceCell::new() };
}

/// The base URL of this test's VictoriaMetrics.
fn victoriametrics_url() -> String {
    VM.with(|vm| {
        vm.get_or_init(integration_tests::VictoriaMetrics::start)
            .url
            .clone()
    })
}

/// A store over history `hist`: the durable store in a temporary directory (keep the guard
/// while the store flushes: it creates files), or VictoriaMetrics through the streamer's
/// own constructor.
fn open_store(hist: History) -> (Option<tempfile::TempDir>, Arc<Store>) {
    match hist {
        History::Builtin => {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
            (Some(dir), store)
        }
        History::Victoriametrics => {
            use clap::Parser as _;
            let cfg = streamer::config::StreamerConfig::parse_from([
                "streamer",
                "--history-backend",
                "victoriametrics",
                "--victoriametrics-url",
                &victoriametrics_url(),
            ]);
            (None, Arc::new(streamer::open_store(&cfg).unwrap()))
        }
    }
}

/// Stores `batches` (off the async workers: a remote history blocks on its writes) and
/// makes them readable.
async fn store_all(hist: History, store: &Arc<Store>, batches: Vec<TelemetryBatch>) {
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        for b in &batches {
            s.apply(b).unwrap();
        }
    })
    .await
    .unwrap();
    if let History::Victoriametrics = hist {
        // Searchable at once (VictoriaMetrics buffers about a second).
        let r = reqwest::get(format!("{}/internal/force_flush", victoriametrics_url()))
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

async fn app(hist: History) -> axum::Router {
    app_with(hist, 0).await
}

/// The test app: GPU `UUID` with five samples, and `more` GPUs without samples.
async fn app_with(hist: History, more: u32) -> axum::Router {
    // The directory may go once the store is open and nothing flushes (Linux keeps the
    // open files).
    let (_dir, store) = open_store(hist);
    let mut gpus = vec![GpuInfo {
        uuid: UUID.into(),
        index: 3,
        name: "NVIDIA H100 80GB HBM3".into(),
        node: "node-a".into(),
        ..Default::default()
    }];
    gpus.extend((0..more).map(|i| GpuInfo {
        uuid: format!("GPU-bbbbbbbb-0000-0000-0000-{i:012}"),
        index: 10 + i,
        name: "NVIDIA H100 80GB HBM3".into(),
        node: "node-a".into(),
        ..Default::default()
    }));
    let batch = TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        node: "node-a".into(),
        collected_at_ms: T0,
        gpus,
        samples: (0..5)
            .map(|i| GpuSample {
                uuid: UUID.into(),
                timestamp_ms: T0 + i * 1000,
                gpu_utilization_percent: Some(10 * i as u32),
                power_usage_milliwatts: Some(100_500),
                ..Default::default()
            })
            .collect(),
    };
    store_all(hist, &store, vec![batch]).await;
    router(AppState {
        backend: Arc::new(StoreBackend {
            store,
            metrics: Arc::default(),
        }),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
        streams: Arc::default(),
    })
}

async fn call(hist: History, uri: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().uri(uri);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = app(hist)
        .await
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn only_health_readiness_metrics_openapi_and_the_dashboards_files_answer_without_a_key(
    hist: History,
) {
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (s, _) = call(hist, open, None).await;
        assert_eq!(s, StatusCode::OK, "{open}");
    }
    // The dashboard's page and assets (static, no data): exactly these paths.
    let assets: Vec<&str> = api::dashboard::ASSETS.iter().map(|a| a.path).collect();
    assert_eq!(
        assets,
        [
            "/",
            "/assets/app.js",
            "/assets/app.css",
            "/assets/uplot.min.js",
            "/assets/uplot.min.css"
        ]
    );
    for open in assets {
        let resp = app(hist)
            .await
            .oneshot(Request::builder().uri(open).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{open}");
    }
    let telemetry = format!("/api/v1/gpus/{UUID}/telemetry");
    let gpu = format!("/api/v1/gpus/{UUID}");
    for closed in [
        "/api/v1/gpus",
        gpu.as_str(),
        telemetry.as_str(),
        "/docs",
        "/api/v1/other",
        "/assets/other.js",
        "/assets",
        "/index.html",
        "/admin",
    ] {
        let (s, body) = call(hist, closed, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{closed}");
        assert_eq!(body["error"]["code"], "unauthorized", "{closed}");
        let (s, _) = call(hist, closed, Some("wrong-key")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{closed}");
    }
}

async fn gpu_list_and_detail_follow_the_contract(hist: History) {
    let (s, body) = call(hist, "/api/v1/gpus", Some(KEY)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["count"], 1);
    let g = &body["gpus"][0];
    assert_eq!(g["uuid"], UUID);
    assert_eq!(g["node"], "node-a");
    assert_eq!(g["index"], 3);
    assert_eq!(g["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(g["last_seen"], "2026-09-21T14:13:24.000Z");
    assert_eq!(
        g["latest"],
        serde_json::json!({"gpu_utilization_percent": 40, "power_usage_watts": 100.5})
    );
    let (_, body) = call(hist, "/api/v1/gpus?node=node-b", Some(KEY)).await;
    assert_eq!(body["count"], 0);
    let (s, detail) = call(hist, &format!("/api/v1/gpus/{UUID}"), Some(KEY)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["sample_count"], 5);
}

async fn telemetry_window_metrics_and_limit_are_applied(hist: History) {
    let uri = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T14:13:21Z&end_time=2026-09-21T14:13:24Z&metrics=gpu_utilization_percent"
    );
    let (s, body) = call(hist, &uri, Some(KEY)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["samples"],
        serde_json::json!([
            {"timestamp": "2026-09-21T14:13:21.000Z", "gpu_utilization_percent": 10},
            {"timestamp": "2026-09-21T14:13:22.000Z", "gpu_utilization_percent": 20},
            {"timestamp": "2026-09-21T14:13:23.000Z", "gpu_utilization_percent": 30},
        ])
    );
    assert_eq!(body["truncated"], false);
    let uri = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T00:00:00Z&end_time=2026-09-22T00:00:00Z&limit=2"
    );
    let (_, body) = call(hist, &uri, Some(KEY)).await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["samples"][0]["power_usage_watts"], 100.5);
}

async fn step_and_agg_give_one_sample_per_bucket_in_metric_units(hist: History) {
    let t = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T14:00:00Z&end_time=2026-09-21T15:00:00Z"
    );
    // One hour bucket (from the raw samples: nothing has aged into a rollup tier yet).
    use serde_json::json;
    for (agg, util, power) in [
        ("avg", json!(20), json!(100.5)),
        ("min", json!(0), json!(100.5)),
        ("max", json!(40), json!(100.5)),
        ("last", json!(40), json!(100.5)),
        ("count", json!(5), json!(5)),
    ] {
        let (s, body) = call(hist, &format!("{t}&step=1h&agg={agg}"), Some(KEY)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(
            body["samples"],
            serde_json::json!([{"timestamp": "2026-09-21T14:00:00.000Z",
                "gpu_utilization_percent": util, "power_usage_watts": power}]),
            "{agg}"
        );
        assert_eq!(body["step"], "1h");
        assert_eq!(body["agg"], agg);
        assert_eq!(body["count"], 1);
    }
    // 2 s buckets (from the raw samples), the default aggregate, one metric; the window
    // widens to whole buckets.
    let uri = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T14:13:21Z&end_time=2026-09-21T14:13:25Z&step=2s&metrics=gpu_utilization_percent"
    );
    let (s, body) = call(hist, &uri, Some(KEY)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["start_time"], "2026-09-21T14:13:20.000Z");
    assert_eq!(body["agg"], "avg");
    assert_eq!(
        body["samples"],
        serde_json::json!([
            {"timestamp": "2026-09-21T14:13:20.000Z", "gpu_utilization_percent": 5},
            {"timestamp": "2026-09-21T14:13:22.000Z", "gpu_utilization_percent": 25},
            {"timestamp": "2026-09-21T14:13:24.000Z", "gpu_utilization_percent": 40},
        ])
    );
    let (_, body) = call(hist, &format!("{uri}&limit=2"), Some(KEY)).await;
    assert_eq!(
        (body["count"].as_u64(), body["truncated"].as_bool()),
        (Some(2), Some(true))
    );
}

async fn bad_input_gets_a_json_400_or_404_naming_the_problem_never_a_500(hist: History) {
    let t = format!("/api/v1/gpus/{UUID}/telemetry");
    let cases: Vec<(String, StatusCode, Option<&str>, &str)> = vec![
        (
            format!("{t}?start_time=yesterday"),
            StatusCode::BAD_REQUEST,
            Some("start_time"),
            "RFC 3339",
        ),
        (
            format!("{t}?end_time=2026-13-01T00:00:00Z"),
            StatusCode::BAD_REQUEST,
            Some("end_time"),
            "RFC 3339",
        ),
        (
            format!("{t}?start_time=2026-09-21T12:00:00Z&end_time=2026-09-21T11:00:00Z"),
            StatusCode::BAD_REQUEST,
            Some("end_time"),
            "after start_time",
        ),
        (
            format!("{t}?metrics=gpu_utilization_percent,volts"),
            StatusCode::BAD_REQUEST,
            Some("metrics"),
            "\"volts\"",
        ),
        (
            format!("{t}?step=0s"),
            StatusCode::BAD_REQUEST,
            Some("step"),
            "from 1s",
        ),
        (
            format!("{t}?step=fortnightly"),
            StatusCode::BAD_REQUEST,
            Some("step"),
            "duration",
        ),
        (
            format!("{t}?step=1500us"),
            StatusCode::BAD_REQUEST,
            Some("step"),
            "duration",
        ),
        (
            format!("{t}?agg=max"),
            StatusCode::BAD_REQUEST,
            Some("agg"),
            "needs step",
        ),
        (
            format!("{t}?step=1m&agg=median"),
            StatusCode::BAD_REQUEST,
            Some("agg"),
            "one of avg",
        ),
        (
            format!("{t}?limit=0"),
            StatusCode::BAD_REQUEST,
            Some("limit"),
            "1 to 100000",
        ),
        (
            format!("{t}?limit=lots"),
            StatusCode::BAD_REQUEST,
            Some("limit"),
            "integer",
        ),
        (
            format!("{t}?colour=red"),
            StatusCode::BAD_REQUEST,
            Some("colour"),
            "unknown parameter",
        ),
        (
            format!("{t}?limit=1&limit=2"),
            StatusCode::BAD_REQUEST,
            Some("limit"),
            "more than once",
        ),
        (
            "/api/v1/gpus?node=".into(),
            StatusCode::BAD_REQUEST,
            Some("node"),
            "empty",
        ),
        (
            "/api/v1/gpus/GPU-nope".into(),
            StatusCode::NOT_FOUND,
            None,
            "unknown GPU GPU-nope",
        ),
        (
            "/api/v1/gpus/GPU-nope/telemetry".into(),
            StatusCode::NOT_FOUND,
            None,
            "unknown GPU",
        ),
        (
            "/api/v1/gpus/%3Cscript%3E".into(),
            StatusCode::BAD_REQUEST,
            Some("uuid"),
            "not a GPU UUID",
        ),
        (
            "/api/v1/gpus/%FF%FE".into(),
            StatusCode::BAD_REQUEST,
            Some("uuid"),
            "UTF-8",
        ),
    ];
    for (uri, status, parameter, message) in cases {
        let (s, body) = call(hist, &uri, Some(KEY)).await;
        assert_eq!(s, status, "{uri}: {body}");
        let err = &body["error"];
        assert_eq!(
            err["code"],
            if status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                "invalid_parameter"
            }
        );
        if let Some(p) = parameter {
            assert_eq!(err["parameter"], p, "{uri}");
        }
        assert!(
            err["message"].as_str().unwrap().contains(message),
            "{uri}: {}",
            err["message"]
        );
    }
}

async fn other_methods_get_a_json_405_and_an_unencoded_plus_in_a_time_is_understood(hist: History) {
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/gpus")
        .header("x-api-key", KEY)
        .body(Body::empty())
        .unwrap();
    let resp = app(hist).await.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    // `+02:00` sent without encoding arrives as ` 02:00`.
    let uri = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T16:13:21+02:00&end_time=2026-09-21T16:13:23%2B02:00"
    );
    let (s, body) = call(hist, &uri, Some(KEY)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 2);
}

async fn openapi_document_lists_the_routes_and_docs_page_renders_them(hist: History) {
    let (_, doc) = call(hist, "/openapi.json", None).await;
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        vec![
            "/api/v1/gpus",
            "/api/v1/gpus/stream",
            "/api/v1/gpus/{uuid}",
            "/api/v1/gpus/{uuid}/processes",
            "/api/v1/gpus/{uuid}/stream",
            "/api/v1/gpus/{uuid}/telemetry",
            "/api/v1/metrics",
            "/api/v1/pipeline"
        ]
    );
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    let resp = app(hist)
        .await
        .oneshot(
            Request::builder()
                .uri("/docs")
                .header("authorization", format!("Bearer {KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let html = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("GET /api/v1/gpus/{uuid}/telemetry"));
    assert!(html.contains("GET /api/v1/gpus/{uuid}/processes"));
    assert!(html.contains("<code>power_usage_watts</code>"));
    // Every metric of the catalog, with its kind and dcgm-exporter field.
    for m in telemetry_wire::metric::METRICS {
        assert!(
            html.contains(&format!("<code>{}</code>", m.name)),
            "{}",
            m.name
        );
        assert!(
            html.contains(&format!("<code>{}</code>", m.dcgm)),
            "{}",
            m.dcgm
        );
    }
    assert!(html.contains(
        "<td>counter</td><td>nvmlDeviceGetTotalEnergyConsumption</td><td><code>DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION</code></td>"
    ));
}

#[tokio::test]
async fn with_the_streamer_down_reads_are_a_json_503_and_readyz_fails_but_healthz_holds() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let backend = api::backend::GrpcBackend::new(
        &format!("http://127.0.0.1:{port}"),
        KeyRing::new("token-0123456789abcdef".to_string().into()),
        Duration::from_secs(2),
    )
    .unwrap();
    let app = router(AppState {
        backend: Arc::new(backend),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
        streams: Arc::default(),
    });
    let get = |uri: &str| {
        Request::builder()
            .uri(uri)
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap()
    };
    for (uri, status) in [
        ("/api/v1/gpus", StatusCode::SERVICE_UNAVAILABLE),
        ("/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/healthz", StatusCode::OK),
        ("/metrics", StatusCode::OK),
    ] {
        let resp = app.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(resp.status(), status, "{uri}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "unavailable", "{uri}");
            // The cause is logged, not sent: no address or transport detail in the body.
            assert!(!v.to_string().contains("127.0.0.1"), "{v}");
        }
    }
}

async fn a_long_range_streams_in_pieces_and_is_compressed_when_asked(hist: History) {
    use futures::StreamExt as _;
    use std::io::Read as _;
    let (_dir, store) = open_store(hist);
    // 3,000 samples in five flushed chunks and an unflushed rest (the builtin store).
    for part in 0..6 {
        let batch = TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: "node-a".into(),
            collected_at_ms: T0,
            gpus: vec![GpuInfo {
                uuid: UUID.into(),
                node: "node-a".into(),
                ..Default::default()
            }],
            samples: (0..500)
                .map(|i| GpuSample {
                    uuid: UUID.into(),
                    timestamp_ms: T0 + (part * 500 + i) * 1000,
                    gpu_utilization_percent: Some((i % 101) as u32),
                    ..Default::default()
                })
                .collect(),
        };
        store_all(hist, &store, vec![batch]).await;
        if part < 5 {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.flush().unwrap())
                .await
                .unwrap();
        }
    }
    let app = router(AppState {
        backend: Arc::new(StoreBackend {
            store,
            metrics: Arc::default(),
        }),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
        streams: Arc::default(),
    });
    let uri = format!(
        "/api/v1/gpus/{UUID}/telemetry?start_time=2026-09-21T00:00:00Z&end_time=2026-09-22T00:00:00Z&limit=100000"
    );
    let get = |accept: Option<&str>| {
        let mut req = Request::builder().uri(&uri).header("x-api-key", KEY);
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let resp = get(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-encoding").is_none());
    let pieces: Vec<_> = resp.into_body().into_data_stream().collect().await;
    assert!(pieces.len() >= 6, "one piece per block: {}", pieces.len());
    let plain: Vec<u8> = pieces.into_iter().flat_map(|p| p.unwrap()).collect();
    let v: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(v["count"], 3000);
    let stamps: Vec<&str> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["timestamp"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]));

    let resp = get(Some("br;q=1.0, gzip;q=0.8")).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(resp.headers()["vary"], "accept-encoding");
    let zipped = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    assert!(
        zipped.len() * 5 < plain.len(),
        "{} vs {}",
        zipped.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain);
    let resp = get(Some("gzip, zstd")).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    let pieces: Vec<_> = resp.into_body().into_data_stream().collect().await;
    assert!(pieces.len() >= 6, "zstd in pieces too: {}", pieces.len());
    let z: Vec<u8> = pieces.into_iter().flat_map(|p| p.unwrap()).collect();
    assert!(z.len() * 5 < plain.len(), "{} vs {}", z.len(), plain.len());
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), plain);
}

// Property tests of the query-parameter parsing: whatever the query string, every route
// answers a client error or success, never a server error, and a 400 always names the
// parameter.
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Query strings made of the pieces a parser trips on: names (known and not), separators,
/// percent escapes (valid, invalid, of multi-byte UTF-8), times, numbers, durations.
fn query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("start_time".to_string()),
        Just("end_time".to_string()),
        Just("metrics".to_string()),
        Just("limit".to_string()),
        Just("step".to_string()),
        Just("agg".to_string()),
        Just("node".to_string()),
        Just("health".to_string()),
        Just("namespace".to_string()),
        Just("pod".to_string()),
        Just("=".to_string()),
        Just("&".to_string()),
        Just(",".to_string()),
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%E2%82".to_string()),
        Just("%00".to_string()),
        Just("+".to_string()),
        Just("2026-09-21T14:13:20Z".to_string()),
        Just("2026-13-99T99:99:99+99:99".to_string()),
        Just("power_usage_watts".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1m".to_string()),
        Just("0s".to_string()),
        Just("99999999999d".to_string()),
        "[a-z0-9_.:-]{0,12}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

/// One property case: `q` on route number `route` of an app over `hist`.
fn any_query(hist: History, q: String, route: usize) -> Result<(), TestCaseError> {
    let path = match route {
        0 => "/api/v1/gpus".to_string(),
        1 => format!("/api/v1/gpus/{UUID}"),
        2 => format!("/api/v1/gpus/{UUID}/telemetry"),
        _ => format!("/api/v1/gpus/{UUID}/processes"),
    };
    let uri = format!("{path}?{q}");
    // Only URIs the HTTP layer accepts reach the router.
    prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let resp = app(hist)
            .await
            .oneshot(
                Request::builder()
                    .uri(&uri)
                    .header("x-api-key", KEY)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, body)
    });
    prop_assert!(!status.is_server_error(), "{uri}: {status}");
    if status == 400 {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert!(v["error"]["parameter"].is_string(), "{uri}: {v}");
    }
    Ok(())
}

/// GET /api/v1/gpus from an app with `more` extra GPUs, with `headers`.
async fn get_from(
    hist: History,
    more: u32,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, axum::body::Bytes) {
    let mut req = Request::builder()
        .uri("/api/v1/gpus")
        .header("x-api-key", KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app_with(hist, more)
        .await
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, h, body)
}

async fn the_gpu_list_has_an_etag_answers_304_to_it_and_compresses_when_asked(hist: History) {
    let (s, h, plain) = get_from(hist, 0, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with("W/\"") && etag.len() == 3 + 24 + 1,
        "{etag}"
    );
    assert_eq!(h.get("content-encoding"), None, "small, and not asked");
    // The same data on another replica (a fresh app here): the same ETag.
    let (_, h2, _) = get_from(hist, 0, &[]).await;
    assert_eq!(h2["etag"], etag.as_str());
    let (s, h, body) = get_from(hist, 0, &[("if-none-match", &etag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h["etag"], etag.as_str());
    let (s, _, _) = get_from(hist, 0, &[("if-none-match", "W/\"0123\", \"other\"")]).await;
    assert_eq!(s, StatusCode::OK, "a different tag");
    // Not compressed when small (251 bytes here), even if asked.
    let (_, h, body) = get_from(hist, 0, &[("accept-encoding", "gzip")]).await;
    assert_eq!(h.get("content-encoding"), None);
    assert_eq!(body, plain);
    // gzip when accepted and the body is worth it (over 1 KB): the same JSON once inflated.
    let (_, _, big) = get_from(hist, 40, &[]).await;
    let (s, h, zipped) = get_from(hist, 40, &[("accept-encoding", "br, gzip;q=0.8")]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(big.len() > 1024, "{}", big.len());
    assert_eq!(h["content-encoding"], "gzip");
    assert!(
        zipped.len() < big.len() / 4,
        "{} of {}",
        zipped.len(),
        big.len()
    );
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut out).unwrap();
    assert_eq!(out, big);
    let (_, h, _) = get_from(hist, 40, &[("accept-encoding", "gzip;q=0")]).await;
    assert_eq!(h.get("content-encoding"), None, "q=0 refuses gzip");
    assert_eq!(h["vary"], "accept-encoding");
    // zstd first when accepted (as browsers offer it): smaller still, the same JSON.
    let (s, h, z) = get_from(hist, 40, &[("accept-encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-encoding"], "zstd");
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), big);
    assert!(
        z.len() <= zipped.len(),
        "{} vs gzip {}",
        z.len(),
        zipped.len()
    );
    let (_, h, _) = get_from(hist, 40, &[("accept-encoding", "zstd;q=0, gzip")]).await;
    assert_eq!(h["content-encoding"], "gzip");
}

async fn the_dcgm_exposition_is_the_same_text_plain_gzipped_or_zstd(hist: History) {
    use std::io::Read as _;
    let get = |accept: Option<&'static str>| async move {
        let mut req = Request::builder()
            .uri("/api/v1/metrics")
            .header("authorization", format!("Bearer {KEY}"));
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        let resp = app_with(hist, 40)
            .await
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let coding = resp
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (coding, body)
    };
    let (coding, plain) = get(None).await;
    assert_eq!(coding, None);
    let text = String::from_utf8(plain.to_vec()).unwrap();
    assert!(text.contains("DCGM_FI_DEV_GPU_UTIL{"), "{text}");
    let (coding, gz) = get(Some("gzip")).await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, plain);
    let (coding, z) = get(Some("gzip, zstd")).await;
    assert_eq!(coding.as_deref(), Some("zstd"));
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), plain);
}

#[tokio::test]
async fn the_pipeline_route_reports_the_ingest_counters_exactly_and_needs_the_key() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    let metrics = Arc::new(streamer::metrics::StreamerMetrics::default());
    metrics.records.fetch_add(12, Ordering::Relaxed);
    metrics.samples_stored.fetch_add(40, Ordering::Relaxed);
    metrics.samples_durable.fetch_add(30, Ordering::Relaxed);
    metrics.dead_lettered.fetch_add(3, Ordering::Relaxed);
    metrics.rejected("unsigned");
    metrics.rejected("unsigned");
    metrics.rejected("bad_signature");
    metrics.error("store");
    let app = router(AppState {
        backend: Arc::new(StoreBackend { store, metrics }),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(1),
        streams: Arc::default(),
    });
    let call = |uri: &'static str, key: Option<&'static str>| {
        let mut req = Request::builder().uri(uri);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let resp = call("/api/v1/pipeline", Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "records": 12, "samples_stored": 40, "samples_durable": 30,
            "samples_unflushed": 10, "samples_duplicate": 0,
            "rejected": {"bad_signature": 1, "unsigned": 2}, "dead_lettered": 3,
            "errors": {"store": 1}, "consumer_lag": {}
        })
    );
    assert_eq!(
        call("/api/v1/pipeline", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = call("/api/v1/pipeline?x=1", Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// Module `$module` runs each test `$name` above, and the query property, over history
/// `$hist`.
macro_rules! contract {
    ($module:ident, $hist:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            use super::*;

            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($hist).await
                }
            )*

            proptest! {
                #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

                #[test]
                fn any_query_is_answered_without_a_server_error(q in query(), route in 0usize..4) {
                    any_query($hist, q, route)?;
                }
            }
        }
    };
}

/// Every test above that reads data, on both histories.
macro_rules! on_both_histories {
    ($($name:ident),* $(,)?) => {
        contract!(builtin, History::Builtin, [$($name),*]);
        contract!(victoriametrics, History::Victoriametrics, [$($name),*]);
    };
}

on_both_histories!(
    only_health_readiness_metrics_openapi_and_the_dashboards_files_answer_without_a_key,
    gpu_list_and_detail_follow_the_contract,
    telemetry_window_metrics_and_limit_are_applied,
    step_and_agg_give_one_sample_per_bucket_in_metric_units,
    bad_input_gets_a_json_400_or_404_naming_the_problem_never_a_500,
    other_methods_get_a_json_405_and_an_unencoded_plus_in_a_time_is_understood,
    openapi_document_lists_the_routes_and_docs_page_renders_them,
    a_long_range_streams_in_pieces_and_is_compressed_when_asked,
    the_gpu_list_has_an_etag_answers_304_to_it_and_compresses_when_asked,
    the_dcgm_exposition_is_the_same_text_plain_gzipped_or_zstd,
);
