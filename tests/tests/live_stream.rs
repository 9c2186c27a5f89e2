//! Live streams (`GET /api/v1/gpus/stream`, `GET /api/v1/gpus/{uuid}/stream`): many fast
//! clients keep receiving while one that does not read is dropped and counted; a GPU's own
//! stream carries only that GPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::{eventually, get_text, metric_value, spawn_embedded_api};
use tokio::io::AsyncWriteExt as _;

const KEY: &str = "live-stream-key-0123456789";

/// Reads an event stream for ever, counting events and collecting the GPUs they name.
fn reader(
    http: &reqwest::Client,
    url: String,
) -> (
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
) {
    let count = Arc::new(AtomicU64::new(0));
    let uuids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let (c, u, http) = (count.clone(), uuids.clone(), http.clone());
    tokio::spawn(async move {
        let mut resp = http.get(url).header("x-api-key", KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut pending = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                if let Some(data) = event.strip_prefix("event: gpu\ndata: {\"uuid\":\"") {
                    // The GPU's uuid is the object's first field (a full parse of every
                    // event would make this debug-build reader the slow client).
                    let uuid = data.split('"').next().unwrap().to_string();
                    u.lock().unwrap().insert(uuid);
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (count, uuids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_clients_keep_their_stream_while_a_client_that_does_not_read_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // 128 simulated GPUs (8 nodes × 16) every 100 ms, about 1.2 MB/s of events per client:
    // a client that does not read fills the kernel's buffers (a few MB) within seconds.
    // A client may fall 4 updates (1 s) behind beyond that.
    let (_api, base) = spawn_embedded_api(
        dir.path(),
        &[
            "--source",
            "simulated",
            "--sim-nodes",
            "8",
            "--sim-gpus-per-node",
            "16",
            "--interval",
            "100ms",
            "--sse-client-buffer",
            "4",
        ],
        &[("API_KEY", KEY.to_string())],
    );
    let http = reqwest::Client::new();
    let counter = |name: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move { metric_value(&get_text(&http, &format!("{base}/metrics")).await?, name) }
    };

    let fast: Vec<_> = (0..10)
        .map(|_| reader(&http, format!("{base}/api/v1/gpus/stream")))
        .collect();
    let t0 = std::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "every fast client sees all 128 GPUs",
        || async {
            fast.iter()
                .all(|(_, u)| u.lock().unwrap().len() == 128)
                .then_some(())
        },
    )
    .await;

    println!("fast clients saw every GPU after {:?}", t0.elapsed());
    // A client that sends its request and never reads (a small receive window, so the
    // kernel's buffers do not hide it for long).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    slow.write_all(
        format!("GET /api/v1/gpus/stream HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let t = std::time::Instant::now();
    eventually(
        Duration::from_secs(60),
        "the slow client dropped",
        || async { (counter("api_sse_dropped_total").await == Some(1)).then_some(()) },
    )
    .await;
    println!("slow client dropped after {:?}", t.elapsed());
    // The fast ones go on at the fleet's pace: 1,024 more events each (eight polls' worth).
    let before: Vec<u64> = fast
        .iter()
        .map(|(c, _)| c.load(Ordering::Relaxed))
        .collect();
    eventually(
        Duration::from_secs(20),
        "fast clients still receiving",
        || async {
            fast.iter()
                .zip(&before)
                .all(|((c, _), b)| c.load(Ordering::Relaxed) >= b + 1024)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        counter("api_sse_dropped_total").await,
        Some(1),
        "only the slow one"
    );
    assert_eq!(counter("api_sse_open_streams").await, Some(10));
    drop(slow);

    // One GPU's stream: that GPU only. Unknown GPU: 404; no key: 401.
    let (_, all) =
        integration_tests::get_json(&http, &format!("{base}/api/v1/gpus"), Some(KEY)).await;
    let uuid = all["gpus"][3]["uuid"].as_str().unwrap().to_string();
    let (count, uuids) = reader(&http, format!("{base}/api/v1/gpus/{uuid}/stream"));
    eventually(Duration::from_secs(20), "events of that GPU", || async {
        (count.load(Ordering::Relaxed) >= 5).then_some(())
    })
    .await;
    assert_eq!(*uuids.lock().unwrap(), [uuid].into_iter().collect());
    let status = |url: String, key: Option<&'static str>| {
        let http = http.clone();
        async move {
            let mut r = http.get(url);
            if let Some(k) = key {
                r = r.header("x-api-key", k);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        status(format!("{base}/api/v1/gpus/GPU-nope/stream"), Some(KEY)).await,
        404
    );
    assert_eq!(
        status(format!("{base}/api/v1/gpus/stream"), None).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_at_shutdown_and_the_api_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut api, base) = spawn_embedded_api(
        dir.path(),
        &["--source", "simulated", "--interval", "100ms"],
        &[("API_KEY", KEY.to_string())],
    );
    let http = reqwest::Client::new();
    let (count, _) = reader(&http, format!("{base}/api/v1/gpus/stream"));
    let (one, _) = reader(&http, format!("{base}/api/v1/gpus/stream"));
    eventually(Duration::from_secs(30), "both streams live", || async {
        (count.load(Ordering::Relaxed) > 0 && one.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    // A graceful shutdown waits for responses in flight; a live stream never finishes by
    // itself, so the hub ends them (before: the api waited on them for ever).
    let asked = std::time::Instant::now();
    api.term();
    let status = api.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    println!(
        "exited {:?} after SIGTERM with two streams open",
        asked.elapsed()
    );
}
