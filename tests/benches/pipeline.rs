//! Pipeline benchmarks (a bench binary, not timed tests). Run:
//!
//! ```text
//! cargo bench -p integration-tests --bench pipeline
//! ```
//!
//! Reports medians over repetitions (this machine is shared and noisy):
//! 1. GPU samples/s end to end through the real broker: sign → produce → broker → consume →
//!    verify → store, until the store holds every sample.
//! 2. The streamer's ingest rate on already-fetched records (verify, decode, store): our
//!    code alone, so the broker's speed does not hide ours.
//! 3. `GET /api/v1/gpus` latency with 10,000 GPUs, embedded and through the streamer's gRPC.
//! 4. `GET /api/v1/gpus/{uuid}/telemetry` for 24 h of one GPU at 1 s (86,400 samples).
//! 5. `GET /api/v1/metrics` (dcgm-exporter names) for 10,000 GPUs: bytes and latency.
//!
//! `cargo bench -p integration-tests --bench pipeline -- exposition` runs 3 and 5 only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::backend::{GrpcBackend, StoreBackend, TelemetryBackend};
use api::routes::{AppState, router};
use collector::simulated::{FleetSpec, SimulatedSource};
use common_auth::KeyRing;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use integration_tests::{Broker, median, pct, unique};
use msg_queue_client::consumer::{ConsumedRecord, ConsumerConfig, TelemetryConsumer};
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use secrecy::SecretString;
use streamer::ingest::Ingestor;
use streamer::metrics::StreamerMetrics;
use streamer::store::{DiskConfig, Store};
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{SignedRecord, header, seal};

const NODES: u32 = 1250; // × 8 GPUs = 10,000 GPUs
const ROUNDS: i64 = 30; // × 10,000 = 300,000 samples
const T0: i64 = 1_790_000_000_000;

fn token() -> SecretString {
    SecretString::from("bench-token".to_string())
}

fn fleet() -> SimulatedSource {
    SimulatedSource::new(FleetSpec {
        nodes: NODES,
        gpus_per_node: 8,
        seed: 1,
    })
}

fn records() -> Vec<SignedRecord> {
    let src = fleet();
    let signer = RecordSigner::new(&token());
    (0..ROUNDS)
        .flat_map(|r| (0..NODES).map(move |n| (r, n)))
        .map(|(r, n)| seal(&signer, &src.batch(n, T0 + r * 1000)))
        .collect()
}

/// A store in a fresh temporary directory (removed when the store is dropped... or at
/// exit: Linux keeps the open database file).
/// A store in a new temporary directory, removed when the returned guard drops (keep it as
/// long as the store: segment files are created as data arrives).
fn temp_store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_disk(DiskConfig::new(dir.path())).unwrap());
    (dir, store)
}

fn ingestor(store: Arc<Store>) -> Ingestor {
    Ingestor::new(
        KeyRing::new(token()),
        store,
        Arc::new(StreamerMetrics::default()),
    )
}

async fn end_to_end(broker: &Broker, recs: &[SignedRecord]) -> f64 {
    let topic = unique("bench");
    msg_queue_client::topic::ensure_topic(&broker.addr, &topic, 12, 1)
        .await
        .unwrap();
    let (_dir, store) = temp_store();
    let ing = ingestor(store.clone());
    let consumer = TelemetryConsumer::new(
        &ConsumerConfig::new(&broker.addr, unique("g"), &topic),
        Arc::new(streamer::StoreOffsets(store.clone())),
    )
    .unwrap();
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &topic)).unwrap();
    let total = recs.len() as u64 * 8;
    let start = Instant::now();
    let recs = recs.to_vec();
    let produce = tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        for r in &recs {
            while inflight.len() >= 2000 {
                let done: Result<_, msg_queue_client::QueueError> = inflight.next().await.unwrap();
                done.unwrap();
            }
            let p = producer.clone();
            let r = r.clone();
            inflight.push(async move { p.send(&r).await });
        }
        while let Some(r) = inflight.next().await {
            r.unwrap();
        }
        start.elapsed()
    });
    while store.latest().sample_count() < total {
        let batch = tokio::time::timeout(
            Duration::from_secs(60),
            consumer.recv_batch(2000, Duration::from_millis(5)),
        )
        .await
        .expect("records keep coming")
        .unwrap();
        let out = ing.process(&batch).unwrap();
        assert!(out.rejected.is_empty());
        consumer.commit(&out.next_offsets, false).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let produced = produce.await.unwrap();
    println!(
        "  run: all delivered to the broker after {produced:.2?}, all stored after {secs:.2}s"
    );
    total as f64 / secs
}

fn fetched(recs: &[SignedRecord]) -> Vec<ConsumedRecord> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| ConsumedRecord {
            partition: (i % 12) as i32,
            offset: i as i64,
            key: Some(r.key.clone()),
            value: Some(r.value.clone()),
            headers: vec![
                (header::KEY_ID.into(), Some(r.key_id.as_bytes().to_vec())),
                (header::SIGNATURE.into(), Some(r.signature.to_vec())),
            ],
            time: telemetry_wire::wire::RecordTime::None,
            oversized: None,
        })
        .collect()
}

async fn latency(client: &reqwest::Client, url: &str, n: usize) -> (f64, f64, usize) {
    latency_encoded(client, url, n, "identity").await
}

/// [`latency`] asking for `encoding` (`gzip`: the body measured is the compressed one).
async fn latency_encoded(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    encoding: &str,
) -> (f64, f64, usize) {
    let mut ms = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = client
            .get(url)
            .header("x-api-key", "k")
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    (pct(&mut ms, 0.5), pct(&mut ms, 0.99), bytes)
}

/// `url` for 10,000 GPUs plain, then with gzip and zstd, each against plain as a ratio from
/// the same run.
async fn encodings(client: &reqwest::Client, url: &str, n: usize, what: &str) {
    let path = url.split_once("/api/").map_or(url, |(_, p)| p);
    let (plain_p50, p99, plain_bytes) = latency(client, url, n).await;
    println!(
        "GET /api/{path}{what}, 10,000 GPUs, embedded store: p50 {plain_p50:.1} ms, p99 {p99:.1} ms ({plain_bytes} bytes, {:.0} bytes/GPU, {n} requests)",
        plain_bytes as f64 / 10_000.0
    );
    for coding in ["gzip", "zstd"] {
        let (p50, p99, bytes) = latency_encoded(client, url, n, coding).await;
        println!(
            "GET /api/{path}, Accept-Encoding {coding}: p50 {p50:.1} ms, p99 {p99:.1} ms ({bytes} bytes; {:.2}x the bytes, {:.2}x the p50 of plain)",
            bytes as f64 / plain_bytes as f64,
            p50 / plain_p50
        );
    }
}

async fn serve_api(backend: Arc<dyn TelemetryBackend>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = router(AppState {
        backend,
        keys: KeyRing::new("k".to_string().into()),
        metrics: Arc::default(),
        ranges: api::routes::range_slots(api::routes::DEFAULT_CONCURRENT_RANGES),
        streams: Arc::default(),
    });
    tokio::spawn(api::serve(l, app, std::future::pending()));
    format!("http://{addr}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let exposition_only = std::env::args().any(|a| a == "exposition");
    let recs = records();
    println!(
        "workload: {} records = {} GPU samples ({} GPUs x {ROUNDS} rounds)",
        recs.len(),
        recs.len() * 8,
        NODES * 8
    );

    let f = fetched(&recs);
    if !exposition_only {
        // 2. Ingest of already-fetched records.
        let mut rates = Vec::new();
        for _ in 0..5 {
            let (_dir, store) = temp_store();
            let ing = ingestor(store.clone());
            let t = Instant::now();
            for chunk in f.chunks(2000) {
                ing.process(chunk).unwrap();
            }
            rates.push(f.len() as f64 * 8.0 / t.elapsed().as_secs_f64());
            assert_eq!(store.latest().sample_count(), f.len() as u64 * 8);
        }
        println!(
            "streamer ingest (verify+decode+store, fetched records): median {:.0} samples/s over 5 runs",
            median(rates)
        );

        // 1. End to end through the broker.
        let broker = Broker::start();
        let mut rates = Vec::new();
        for _ in 0..3 {
            rates.push(end_to_end(&broker, &recs).await);
        }
        println!(
            "end to end through tansu (sign→produce→broker→consume→verify→store): median {:.0} samples/s over 3 runs (runs: {:?})",
            median(rates.clone()),
            rates.iter().map(|r| *r as u64).collect::<Vec<_>>()
        );
        drop(broker);
    }

    // 3. GET /api/v1/gpus with 10,000 GPUs.
    let (_dir, store) = temp_store();
    let ing = ingestor(store.clone());
    for chunk in f.chunks(2000) {
        ing.process(chunk).unwrap();
    }
    let metrics = Arc::new(StreamerMetrics::default());
    let client = reqwest::Client::new();
    let embedded = serve_api(Arc::new(StoreBackend {
        store: store.clone(),
        metrics: metrics.clone(),
    }))
    .await;
    encodings(&client, &format!("{embedded}/api/v1/gpus"), 200, "").await;
    // 5. The Prometheus exposition under dcgm-exporter's names, streamed field by field
    //    (Prometheus asks for gzip).
    encodings(
        &client,
        &format!("{embedded}/api/v1/metrics"),
        50,
        " (dcgm-exporter names)",
    )
    .await;
    if exposition_only {
        return;
    }

    let grpc_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_l.local_addr().unwrap();
    let ring = KeyRing::new(token());
    tokio::spawn(streamer::serve_queries(
        grpc_l,
        store.clone(),
        metrics,
        ring.clone(),
        std::future::pending(),
    ));
    let grpc_backend = GrpcBackend::new(
        &format!("http://{grpc_addr}"),
        ring.clone(),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut raw = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let n = grpc_backend.list_gpus(None).await.unwrap().len();
        assert_eq!(n, 10_000);
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut local = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let n = store.latest().list(None).len();
        assert_eq!(n, 10_000);
        local.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let resp = streamer::query::proto::ListGpusResponse {
        gpus: store
            .latest()
            .list(None)
            .into_iter()
            .map(streamer::query::status)
            .collect(),
    };
    let t = Instant::now();
    let bytes = prost::Message::encode_to_vec(&resp);
    let enc = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let back: streamer::query::proto::ListGpusResponse =
        prost::Message::decode(&bytes[..]).unwrap();
    let dec = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "  protobuf: {} bytes, encode {enc:.1} ms, decode {dec:.1} ms ({} GPUs)",
        bytes.len(),
        back.gpus.len()
    );
    println!(
        "  parts: store.list_gpus p50 {:.1} ms; gRPC ListGpus round trip p50 {:.1} ms",
        pct(&mut local, 0.5),
        pct(&mut raw, 0.5)
    );
    let mirrored = GrpcBackend::new(
        &format!("http://{grpc_addr}"),
        ring,
        Duration::from_secs(10),
    )
    .unwrap();
    tokio::spawn(mirrored.clone().run_mirror(std::future::pending()));
    integration_tests::eventually(Duration::from_secs(30), "mirror synced", || async {
        mirrored
            .mirror()
            .is_fresh(Duration::from_secs(3))
            .then_some(())
    })
    .await;
    let via_grpc = serve_api(Arc::new(mirrored.clone())).await;
    let (p50, p99, _) = latency(&client, &format!("{via_grpc}/api/v1/gpus"), 200).await;
    println!(
        "GET /api/v1/gpus, 10,000 GPUs, api (mirror of the streamer, fed over gRPC): p50 {p50:.1} ms, p99 {p99:.1} ms (200 requests)"
    );

    // 4. 24 h of one GPU at 1 s.
    let (_one_dir, one) = temp_store();
    let src = SimulatedSource::new(FleetSpec {
        nodes: 1,
        gpus_per_node: 1,
        seed: 3,
    });
    for s in 0..86_400 {
        one.apply(&src.batch(0, T0 + s * 1000)).unwrap();
        // As the streamer does by default: a chunk every 10 minutes.
        if s % 600 == 599 {
            one.flush().unwrap();
        }
    }
    let uuid = SimulatedSource::info(src.spec(), 0, 0).uuid;
    let day = serve_api(Arc::new(StoreBackend {
        store: one.clone(),
        metrics: Arc::default(),
    }))
    .await;
    // The deployed shape: the api asks the streamer for the range over gRPC.
    let day_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let day_addr = day_l.local_addr().unwrap();
    let day_ring = KeyRing::new(token());
    tokio::spawn(streamer::serve_queries(
        day_l,
        one,
        Arc::new(StreamerMetrics::default()),
        day_ring.clone(),
        std::future::pending(),
    ));
    let day_grpc = serve_api(Arc::new(
        GrpcBackend::new(
            &format!("http://{day_addr}"),
            day_ring,
            Duration::from_secs(10),
        )
        .unwrap(),
    ))
    .await;
    let url = format!(
        "{day}/api/v1/gpus/{uuid}/telemetry?start_time=2026-09-21T00:00:00Z&end_time=2026-09-23T00:00:00Z&limit=100000"
    );
    let (p50, p99, bytes) = latency(&client, &url, 30).await;
    println!(
        "GET telemetry, 24 h of one GPU at 1 s (86,400 samples), embedded: p50 {p50:.1} ms, p99 {p99:.1} ms ({bytes} bytes, 30 requests)"
    );
    let url = url.replace(&day, &day_grpc);
    let (p50, p99, _) = latency(&client, &url, 30).await;
    println!(
        "GET telemetry, 24 h of one GPU at 1 s, api → gRPC → streamer: p50 {p50:.1} ms, p99 {p99:.1} ms (30 requests)"
    );
}
