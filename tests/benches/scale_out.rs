//! Past one streamer (issue 11): benchmarks of the `victoriametrics` history (a bench
//! binary, not timed tests). Run:
//!
//! ```text
//! cargo build --release -p streamer -p api
//! cargo bench -p integration-tests --bench scale_out
//! ```
//! (`scripts/bench-scale-out` installs what it needs and does both.)
//!
//! 1. GPU samples/s through the pipeline into VictoriaMetrics with 1 and with 3 streamer
//!    processes in one consumer group (12 partitions, records produced beforehand, so the
//!    figure is consume → verify → remote write → acknowledged → commit): from the first
//!    sample stored to the last, `BENCH_NODES` × 8 GPUs × `BENCH_ROUNDS` rounds.
//! 2. The GPU list with the 3 streamers' views merged in the api (the chosen design) against
//!    reading every GPU's latest values from VictoriaMetrics (an instant query over every
//!    `gpu_*` series: what the other design does per list), in the same run.
//! 3. `GET /api/v1/gpus/{uuid}/telemetry` over 24 h of one GPU at 1 s (86,400 samples):
//!    raw, and `step=1m&agg=avg`, on the builtin store and on VictoriaMetrics, in one run.
//!
//! Medians (and p99) over repetitions: this machine is shared and noisy; comparisons are
//! ratios from the same run.

use std::time::{Duration, Instant};

use collector::simulated::{FleetSpec, SimulatedSource};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use integration_tests::{
    Broker, Names, Proc, VictoriaMetrics, api_url, args, bin, eventually, free_port, get_json,
    get_text, metric_value, pct, spawn_streamer_with,
};
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use streamer::remote_write::RemoteWriter;
use streamer::store::{DiskConfig, Store};
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch, seal};

const T0: i64 = 1_790_000_000_000;
const PARTITIONS: i32 = 12;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies of `n` GETs of `url` with `key`: (p50 ms, p99 ms, bytes of the last body).
async fn latency(http: &reqwest::Client, url: &str, key: &str, n: usize) -> (f64, f64, usize) {
    let mut ms = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).header("x-api-key", key).send().await.unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "{url}: {status}: {}",
            r.text().await.unwrap_or_default()
        );
        bytes = r.bytes().await.unwrap().len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (pct(&mut ms, 0.5), pct(&mut ms, 0.99), bytes)
}

/// Starts the api against `streamers` (gRPC URLs); returns it and its base URL.
fn spawn_api(streamers: &str, n: &Names) -> (Proc, String) {
    let mut p = Proc::spawn(
        "api",
        &bin("api"),
        &args(&["--listen", "127.0.0.1:0", "--streamer-url", streamers]),
        &[
            ("API_KEY", n.api_key.clone()),
            ("SERVICE_TOKEN", n.token.clone()),
            ("RUST_LOG", "error".into()),
        ],
    );
    let base = api_url(&mut p);
    (p, base)
}

/// Part 1: the fleet's records produced to a fresh 12-partition topic, then `streamers`
/// processes consuming them into VictoriaMetrics; samples/s from the first stored to the
/// last. Leaves the streamers running (returned) for part 2.
async fn ingest(
    broker: &Broker,
    vm: &VictoriaMetrics,
    spec: FleetSpec,
    rounds: u32,
    t0: i64,
    streamers: usize,
) -> (f64, Names, Vec<(Proc, u16)>) {
    let n = Names::fresh("bench-scale");
    msg_queue_client::topic::ensure_topic(&broker.addr, &n.topic, PARTITIONS, 1)
        .await
        .unwrap();
    let fleet = SimulatedSource::new(spec);
    let signer = RecordSigner::new(&secrecy::SecretString::from(n.token.clone()));
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();
    let mut inflight = FuturesUnordered::new();
    for r in 0..i64::from(rounds) {
        for node in 0..spec.nodes {
            let rec = seal(&signer, &fleet.batch(node, t0 + r * 1000));
            while inflight.len() >= 2000 {
                let done: Result<_, msg_queue_client::QueueError> = inflight.next().await.unwrap();
                done.unwrap();
            }
            let p = producer.clone();
            inflight.push(async move { p.send(&rec).await });
        }
    }
    while let Some(r) = inflight.next().await {
        r.unwrap();
    }
    let total = u64::from(spec.nodes * spec.gpus_per_node) * u64::from(rounds);
    let flags = [
        "--history-backend",
        "victoriametrics",
        "--victoriametrics-url",
        vm.url.as_str(),
        // The test broker (tansu) overshoots fetch.max.bytes (and the per-partition limit)
        // when 12 partitions are full, past what librdkafka then accepts
        // (receive.message.max.bytes, set to fetch.max.bytes + 512): room for its answers.
        // Kafka itself keeps to fetch.max.bytes.
        "--kafka-property",
        "receive.message.max.bytes=67108864",
    ];
    let env = [
        ("SERVICE_TOKEN", n.token.clone()),
        ("RUST_LOG", "error".to_string()),
    ];
    let members: Vec<Names> = (0..streamers)
        .map(|_| Names {
            streamer_metrics_port: free_port(),
            ..n.clone()
        })
        .collect();
    let procs: Vec<(Proc, u16)> = members
        .iter()
        .map(|m| {
            let grpc = free_port();
            (spawn_streamer_with(broker, m, grpc, &flags, &env), grpc)
        })
        .collect();
    let http = reqwest::Client::new();
    let stored = || async {
        let mut stored = 0;
        for m in &members {
            let text = get_text(&http, &m.streamer_metrics())
                .await
                .unwrap_or_default();
            stored += metric_value(&text, "streamer_samples_stored_total").unwrap_or(0);
        }
        stored
    };
    let first = eventually(
        Duration::from_secs(120),
        "the first sample stored",
        || async { (stored().await > 0).then(Instant::now) },
    )
    .await;
    let last = eventually(Duration::from_secs(600), "every sample stored", || async {
        (stored().await >= total).then(Instant::now)
    })
    .await;
    let secs = (last - first).as_secs_f64();
    (total as f64 / secs, n, procs)
}

/// 24 h of one GPU at 1 s, in batches of 10 minutes.
fn day_of_one_gpu() -> Vec<TelemetryBatch> {
    let spec = FleetSpec {
        nodes: 1,
        gpus_per_node: 1,
        seed: 5,
    };
    let info: GpuInfo = SimulatedSource::info(spec, 0, 0);
    (0..144)
        .map(|b| TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: info.node.clone(),
            collected_at_ms: T0 + b * 600_000,
            gpus: vec![info.clone()],
            samples: (0..600)
                .map(|i| {
                    let t = T0 + b * 600_000 + i * 1000;
                    let s: GpuSample = SimulatedSource::sample(spec, 0, 0, &info.uuid, t);
                    s
                })
                .collect(),
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = env_u32("BENCH_NODES", 125);
    let rounds = env_u32("BENCH_ROUNDS", 60);
    let spec = FleetSpec {
        nodes,
        gpus_per_node: 8,
        seed: 9,
    };
    let vm = VictoriaMetrics::start();
    let broker = Broker::start();
    let http = reqwest::Client::new();

    // `-- telemetry` runs part 3 only.
    let only_telemetry = std::env::args().any(|a| a == "telemetry");
    if !only_telemetry {
        ingest_and_list(&broker, &vm, &http, spec, rounds).await;
    }
    telemetry(&vm, &http).await;
}

/// Parts 1 and 2.
async fn ingest_and_list(
    broker: &Broker,
    vm: &VictoriaMetrics,
    http: &reqwest::Client,
    spec: FleetSpec,
    rounds: u32,
) {
    let gpus = spec.nodes * spec.gpus_per_node;
    // 1. Ingest with 1, then 3 streamers (each run its own topic, group and timestamps).
    println!(
        "1. pipeline into VictoriaMetrics: {gpus} GPUs x {rounds} rounds = {} samples, 12 partitions, records produced beforehand",
        u64::from(gpus) * u64::from(rounds)
    );
    let (one, _, one_procs) = ingest(broker, vm, spec, rounds, T0, 1).await;
    drop(one_procs);
    let (three, n3, procs) = ingest(broker, vm, spec, rounds, T0 + 86_400_000, 3).await;
    // Each sample is one point per catalog metric it carries.
    let points = SimulatedSource::new(spec)
        .batch(0, T0)
        .samples
        .iter()
        .map(|s| telemetry_wire::metric::values(s).count())
        .sum::<usize>() as f64
        / f64::from(spec.gpus_per_node);
    println!(
        "  1 streamer:  {one:.0} samples/s ({:.0} metric points/s, {points:.0} per sample)",
        one * points
    );
    println!(
        "  3 streamers: {three:.0} samples/s ({:.0} points/s; {:.2}x one; 2 cores shared by the broker, VictoriaMetrics and the streamers)",
        three * points,
        three / one
    );

    // 2. The GPU list: merged mirror (api over the 3 streamers) vs an instant query of every
    //    GPU's latest values in VictoriaMetrics.
    let urls: Vec<String> = procs
        .iter()
        .map(|(_, p)| format!("http://127.0.0.1:{p}"))
        .collect();
    let (_api, base) = spawn_api(&urls.join(","), &n3);
    let list = format!("{base}/api/v1/gpus");
    eventually(
        Duration::from_secs(60),
        "the api lists every GPU",
        || async {
            let (_, body) = get_json(http, &list, Some(&n3.api_key)).await;
            (body["count"].as_u64() == Some(u64::from(gpus))).then_some(())
        },
    )
    .await;
    vm.flush(http).await;
    let (m50, m99, mbytes) = latency(http, &list, &n3.api_key, 50).await;
    let at = (T0 + 86_400_000 + i64::from(rounds - 1) * 1000) as f64 / 1000.0;
    let instant = format!(
        "{}/api/v1/query?query=%7B__name__%3D~%22gpu_.%2B%22%7D&time={at}",
        vm.url
    );
    let (v50, v99, vbytes) = latency(http, &instant, "", 20).await;
    println!("2. the GPU list, {gpus} GPUs:");
    println!(
        "  api merging 3 streamers' views (chosen): p50 {m50:.1} ms, p99 {m99:.1} ms, {mbytes} bytes"
    );
    println!(
        "  VictoriaMetrics instant query of every gpu_* series: p50 {v50:.1} ms, p99 {v99:.1} ms, {vbytes} bytes ({:.1}x the merged list's p50, before any JSON of ours; no inventory in it)",
        v50 / m50
    );
    drop(procs);
}

/// Part 3: 24 h of one GPU on both backends.
async fn telemetry(vm: &VictoriaMetrics, http: &reqwest::Client) {
    let day = day_of_one_gpu();
    let uuid = day[0].gpus[0].uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut cfg = DiskConfig::new(dir.path());
        cfg.retention = Duration::from_secs(3650 * 86_400);
        let store = Store::open_disk(cfg).unwrap();
        for b in &day {
            store.apply(b).unwrap();
        }
        store.flush().unwrap();
    }
    let writer = RemoteWriter::new(
        &format!("{}/api/v1/write", vm.url),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(60),
    )
    .unwrap();
    for b in &day {
        writer.write(b).await.unwrap();
    }
    vm.flush(http).await;
    let n = Names::fresh("bench-day");
    let spawn = |extra: Vec<String>| {
        let grpc = free_port();
        let mut a = args(&[
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--brokers",
            "127.0.0.1:1", // no broker: the history and queries alone
            "--retention",
            "3650d",
        ]);
        a.extend(extra);
        let mut p = Proc::spawn(
            "streamer",
            &bin("streamer"),
            &a,
            &[
                ("SERVICE_TOKEN", n.token.clone()),
                ("RUST_LOG", "error".into()),
            ],
        );
        p.wait_line("streamer grpc listening on", Duration::from_secs(120));
        (p, grpc)
    };
    let builtin = spawn(args(&["--data-dir", &dir.path().display().to_string()]));
    let remote = spawn(args(&[
        "--history-backend",
        "victoriametrics",
        "--victoriametrics-url",
        &vm.url,
    ]));
    let (_a1, b1) = spawn_api(&format!("http://127.0.0.1:{}", builtin.1), &n);
    let (_a2, b2) = spawn_api(&format!("http://127.0.0.1:{}", remote.1), &n);
    let reps = env_u32("BENCH_REQUESTS", 10) as usize;
    println!(
        "3. GET /api/v1/gpus/{{uuid}}/telemetry, 24 h of one GPU at 1 s (86,400 samples), api -> gRPC -> streamer, {reps} requests each:"
    );
    for (what, q) in [
        ("raw", "limit=100000"),
        ("step=1m&agg=avg", "step=1m&agg=avg"),
    ] {
        let path = format!(
            "/api/v1/gpus/{uuid}/telemetry?start_time=2026-09-21T14:13:20Z&end_time=2026-09-22T14:13:20Z&{q}"
        );
        let (l50, l99, lbytes) = latency(http, &format!("{b1}{path}"), &n.api_key, reps).await;
        let (r50, r99, rbytes) = latency(http, &format!("{b2}{path}"), &n.api_key, reps).await;
        assert_eq!(lbytes, rbytes, "{what}: the same answer from both");
        println!(
            "  {what}: builtin p50 {l50:.1} ms (p99 {l99:.1}); victoriametrics p50 {r50:.1} ms (p99 {r99:.1}) = {:.1}x; {lbytes} bytes",
            r50 / l50
        );
    }
}
