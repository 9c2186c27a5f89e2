//! Property tests of the query-parameter parsing: whatever the query string, every route
//! answers a client error or success, never a server error, and a 400 always names the
//! parameter.

use std::sync::Arc;

use api::backend::StoreBackend;
use api::routes::{AppState, router};
use axum::body::Body;
use axum::http::Request;
use common_auth::KeyRing;
use proptest::prelude::*;
use streamer::store::{DiskConfig, Store};
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch};
use tower::ServiceExt;

const KEY: &str = "query-props-key-0123456789";
const UUID: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000001";

fn app() -> axum::Router {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    let t0 = 1_790_000_000_000;
    store
        .apply(&TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: "node-a".into(),
            collected_at_ms: t0,
            gpus: vec![GpuInfo {
                uuid: UUID.into(),
                node: "node-a".into(),
                ..Default::default()
            }],
            samples: vec![GpuSample {
                uuid: UUID.into(),
                timestamp_ms: t0,
                power_usage_milliwatts: Some(300_000),
                ..Default::default()
            }],
        })
        .unwrap();
    router(AppState {
        backend: Arc::new(StoreBackend {
            store,
            metrics: Arc::default(),
        }),
        keys: KeyRing::new(KEY.to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
    })
}

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_query_is_answered_without_a_server_error(q in query(), route in 0usize..4) {
        let path = match route {
            0 => "/api/v1/gpus".to_string(),
            1 => format!("/api/v1/gpus/{UUID}"),
            2 => format!("/api/v1/gpus/{UUID}/telemetry"),
            _ => format!("/api/v1/gpus/{UUID}/processes"),
        };
        let uri = format!("{path}?{q}");
        // Only URIs the HTTP layer accepts reach the router.
        prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, body) = rt.block_on(async {
            let resp = app()
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
            let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
            (status, body)
        });
        prop_assert!(!status.is_server_error(), "{uri}: {status}");
        if status == 400 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert!(v["error"]["parameter"].is_string(), "{uri}: {v}");
        }
    }
}
