//! Storage benchmarks (a bench binary, not timed tests). Run:
//!
//! ```text
//! cargo build --release -p streamer -p api
//! cargo bench -p integration-tests --bench storage
//! ```
//! (`scripts/bench-storage` does both and installs VictoriaMetrics for part 3.)
//!
//! 1. Our store, `BENCH_GPUS` simulated GPUs (default 1,000) × `BENCH_HOURS` of 1 s samples
//!    (default 24), flushed every 10 simulated minutes as the streamer does: ingest points/s
//!    on one core (apply + compress + commit, generation excluded), bytes per metric point on
//!    disk (the database file), and the open (restart) time.
//! 2. The real `streamer` binary on that data directory: time from start to serving, its
//!    RSS while holding it; and the deployed shape (api → gRPC → streamer) for
//!    `GET …/telemetry` over 24 h of one GPU.
//! 3. Side by side with VictoriaMetrics (when `victoria-metrics` is installed): the same
//!    generated points (`BENCH_VM_GPUS`, default 16, × `BENCH_HOURS`) into our store and
//!    into VictoriaMetrics via `/api/v1/import`, in one run: ingest points/s per core, bytes
//!    per point on disk, and the same raw range query (one GPU, 24 h, every metric).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use collector::simulated::{FleetSpec, SimulatedSource};
use integration_tests::{Proc, args, bin, free_port, median, pct};
use streamer::store::{DiskConfig, Store};
use telemetry_wire::metric;

const T0: i64 = 1_790_000_000_000;

/// Points per (GPU, metric) series, as VictoriaMetrics's import takes them.
type SeriesPoints = std::collections::BTreeMap<(String, &'static str), (Vec<i64>, Vec<f64>)>;
const FLUSH_EVERY: i64 = 600;
/// Requests per latency figure, after this many unmeasured ones (connections, caches).
const REQUESTS: usize = 200;
const WARMUP: usize = 5;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Filled {
    samples: u64,
    points: u64,
    store_secs: f64,
    /// The longest flush or sweep (ingest waits for it: both hold the store's lock).
    longest_maintenance: Duration,
}

/// Fills a store in `dir` with `gpus` × `hours` of simulated 1 s samples, `visit` seeing
/// every batch too (for feeding another system the same points).
fn fill(
    dir: &Path,
    gpus: u32,
    hours: u32,
    mut visit: impl FnMut(&telemetry_wire::wire::TelemetryBatch),
) -> Filled {
    let mut cfg = DiskConfig::new(dir);
    cfg.retention = Duration::from_secs(3650 * 86_400);
    cfg.max_open_samples = usize::MAX;
    let store = Store::open_disk(cfg).unwrap();
    let nodes = gpus.div_ceil(8);
    let src = SimulatedSource::new(FleetSpec {
        nodes,
        gpus_per_node: 8,
        seed: 11,
    });
    let rounds = i64::from(hours) * 3600;
    let (mut samples, mut points, mut spent) = (0u64, 0u64, Duration::ZERO);
    let mut longest = Duration::ZERO;
    for r in 0..rounds {
        for n in 0..nodes {
            let b = src.batch(n, T0 + r * 1000);
            points += b
                .samples
                .iter()
                .map(|s| metric::values(s).count() as u64)
                .sum::<u64>();
            samples += b.samples.len() as u64;
            visit(&b);
            let t = Instant::now();
            store.apply(&b).unwrap();
            spent += t.elapsed();
        }
        if r % FLUSH_EVERY == FLUSH_EVERY - 1 {
            // The streamer's maintenance: a flush every 10 minutes, and sweeps (which
            // compact completed hours), counted as ingest cost.
            // Each call holds the store: the longest is the longest pause of ingest.
            let t = Instant::now();
            store.flush().unwrap();
            longest = longest.max(t.elapsed());
            loop {
                let t1 = Instant::now();
                let (_, more) = store.sweep(T0 + r * 1000).unwrap();
                longest = longest.max(t1.elapsed());
                if !more {
                    break;
                }
            }
            spent += t.elapsed();
        }
    }
    let t = Instant::now();
    store.flush().unwrap();
    // The hours completed at the end get compacted too, as the next sweeps would.
    while store.sweep(T0 + rounds * 1000 + 3_600_000).unwrap().1 {}
    spent += t.elapsed();
    Filled {
        samples,
        points,
        store_secs: spent.as_secs_f64(),
        longest_maintenance: longest,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `n` requests of `url` one after another (after `warmup` unmeasured ones): p50 and p99 in
/// ms, and the body's size.
async fn latency(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    warmup: usize,
    n: usize,
) -> (f64, f64, usize) {
    for _ in 0..warmup {
        let r = client.get(url).header("x-api-key", key).send().await;
        let _ = r.unwrap().bytes().await;
    }
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .get(url)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        // Read as it arrives (as a streaming parser would), until the last byte.
        let mut r = r;
        bytes = 0;
        while let Some(piece) = r.chunk().await.unwrap() {
            bytes += piece.len();
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (pct(&mut ms.clone(), 0.5), pct(&mut ms, 0.99), bytes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let gpus = env_u32("BENCH_GPUS", 1000);
    let hours = env_u32("BENCH_HOURS", 24);
    let work = tempfile::tempdir().unwrap();

    // 1. Our store.
    let dir = work.path().join("ours");
    let f = fill(&dir, gpus, hours, |_| {});
    let file = dir_bytes(&dir);
    println!(
        "store: {gpus} GPUs x {hours} h at 1 s = {} samples, {} metric points",
        f.samples, f.points
    );
    println!(
        "  ingest (apply + compress + commit, one thread): {:.0} points/s ({:.0} samples/s)",
        f.points as f64 / f.store_secs,
        f.samples as f64 / f.store_secs
    );
    println!(
        "  longest pause of ingest: one flush (10 simulated minutes of the fleet) or one sweep (retention, compaction within its budget): {:.0} ms",
        f.longest_maintenance.as_secs_f64() * 1000.0
    );
    println!(
        "  on disk: {file} bytes = {:.3} bytes per metric point",
        file as f64 / f.points as f64
    );
    {
        let h = streamer::store::DiskHistory::open(DiskConfig::new(&dir)).unwrap();
        println!(
            "  of which chunk values (the data itself): {} bytes = {:.3} bytes per metric point; the rest is the database's pages, index and free space",
            h.stored_bytes(),
            h.stored_bytes() as f64 / f.points as f64
        );
    }
    let mut opens = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = Store::open_disk(DiskConfig::new(&dir)).unwrap();
        opens.push(t.elapsed().as_secs_f64());
        assert_eq!(s.latest().sample_count(), f.samples);
    }
    println!(
        "  open (restart) in process: median {:.3} s over 3",
        median(opens)
    );

    // 2. The real binaries on that directory.
    let token = "bench-token-0123456789".to_string();
    let key = "bench-key-0123456789abcdef".to_string();
    let grpc = free_port();
    let t = Instant::now();
    let spawn_streamer = || {
        let mut p = Proc::spawn(
            "streamer",
            &bin("streamer"),
            &args(&[
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--brokers",
                "127.0.0.1:1", // no broker: the store and queries alone
                "--data-dir",
                &dir.display().to_string(),
                "--retention",
                "3650d",
            ]),
            &[
                ("SERVICE_TOKEN", token.clone()),
                ("RUST_LOG", "error".into()),
            ],
        );
        p.wait_line("streamer grpc listening on", Duration::from_secs(300));
        p
    };
    let mut streamer = spawn_streamer();
    println!(
        "  streamer binary: serving {:.2} s after start; RSS {} MiB holding {} samples",
        t.elapsed().as_secs_f64(),
        rss_kib(streamer.child.id()) / 1024,
        f.samples
    );
    // After a kill -9 the database file is repaired on the next open.
    streamer.kill9();
    let t = Instant::now();
    let streamer = spawn_streamer();
    println!(
        "  streamer binary after kill -9: serving {:.2} s after start",
        t.elapsed().as_secs_f64()
    );
    let mut api = Proc::spawn(
        "api",
        &bin("api"),
        &args(&[
            "--listen",
            "127.0.0.1:0",
            "--streamer-url",
            &format!("http://127.0.0.1:{grpc}"),
        ]),
        &[("SERVICE_TOKEN", token), ("API_KEY", key.clone())],
    );
    let base = integration_tests::api_url(&mut api);
    let uuid = SimulatedSource::info(
        FleetSpec {
            nodes: gpus.div_ceil(8),
            gpus_per_node: 8,
            seed: 11,
        },
        0,
        0,
    )
    .uuid;
    let client = reqwest::Client::new();
    let url = format!(
        "{base}/api/v1/gpus/{uuid}/telemetry?start_time=2026-09-21T00:00:00Z&end_time=2026-09-23T00:00:00Z&limit=100000"
    );
    let (p50, p99, bytes) = latency(&client, &url, &key, WARMUP, REQUESTS).await;
    println!(
        "  GET telemetry 24 h of one GPU, api -> gRPC -> streamer (from disk): p50 {p50:.1} ms, p99 {p99:.1} ms ({bytes} bytes, {REQUESTS} requests after {WARMUP})"
    );
    let (p50, p99, bytes) = latency(
        &client,
        &url.replace("limit=100000", "limit=100000&step=1m&agg=avg"),
        &key,
        WARMUP,
        REQUESTS,
    )
    .await;
    println!(
        "  GET telemetry 24 h of one GPU, step=1m&agg=avg (1-minute tier), deployed: p50 {p50:.1} ms, p99 {p99:.1} ms ({bytes} bytes)"
    );
    // Every GPU of the fleet, one after another.
    let spec = FleetSpec {
        nodes: gpus.div_ceil(8),
        gpus_per_node: 8,
        seed: 11,
    };
    let mut each = Vec::new();
    let t = Instant::now();
    for n in 0..spec.nodes {
        for g in 0..8 {
            let u = SimulatedSource::info(spec, n, g).uuid;
            let url = format!(
                "{base}/api/v1/gpus/{u}/telemetry?start_time=2026-09-21T00:00:00Z&end_time=2026-09-23T00:00:00Z&step=1m&agg=avg"
            );
            let (ms, _, _) = latency(&client, &url, &key, 0, 1).await;
            each.push(ms);
        }
    }
    let total = t.elapsed().as_secs_f64();
    let n = each.len();
    println!(
        "  step=1m&agg=avg over 24 h for all {n} GPUs one after another: {total:.1} s in all, p50 {:.1} ms, p99 {:.1} ms per GPU",
        pct(&mut each.clone(), 0.5),
        pct(&mut each, 0.99)
    );
    println!(
        "  streamer RSS after the queries: {} MiB",
        rss_kib(streamer.child.id()) / 1024
    );
    drop(api);
    drop(streamer);
    // This machine's own noise, in the same run: the same work in this process, no
    // sockets (read the 24 h, write its JSON), one thread, the same number of times.
    {
        let store = Store::open_disk(DiskConfig::new(&dir)).unwrap();
        let mut ms = Vec::new();
        for _ in 0..WARMUP + REQUESTS {
            let t = Instant::now();
            let (r, _) = store
                .range(&uuid, T0 - 86_400_000, T0 + 2 * 86_400_000, 100_000)
                .unwrap()
                .unwrap();
            let json = api::model::write_readings(&r, None);
            std::hint::black_box(json);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut ms = ms.split_off(WARMUP);
        let (p50, p99) = (pct(&mut ms.clone(), 0.5), pct(&mut ms, 0.99));
        println!(
            "  machine noise: the same read + JSON in process, one thread: p50 {p50:.1} ms, p99 {p99:.1} ms (p99/p50 {:.1})",
            p99 / p50
        );
    }

    // 3. Side by side with VictoriaMetrics.
    let vm_bin = ["victoria-metrics", "/usr/bin/victoria-metrics"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("-version")
                .output()
                .is_ok()
        });
    let Some(vm_bin) = vm_bin else {
        println!(
            "victoria-metrics not installed: side-by-side skipped (scripts/bench-storage installs it)"
        );
        return;
    };
    let vm_gpus = env_u32("BENCH_VM_GPUS", 16);
    let vm_dir = work.path().join("vm");
    let port = free_port();
    let vm = Proc::spawn(
        "victoria-metrics",
        Path::new(vm_bin),
        &args(&[
            &format!("-httpListenAddr=127.0.0.1:{port}"),
            &format!("-storageDataPath={}", vm_dir.display()),
            "-retentionPeriod=100y",
            "-search.maxPointsPerTimeseries=1000000",
            "-search.latencyOffset=0s",
        ]),
        &[],
    );
    let vm_url = format!("http://127.0.0.1:{port}");
    integration_tests::eventually(Duration::from_secs(30), "VictoriaMetrics up", || async {
        client
            .get(format!("{vm_url}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    // The same points, as VictoriaMetrics's JSON line import: one line per series per
    // simulated hour (written to files first: generation is not timed for either side).
    let lines_dir = work.path().join("vm-import");
    std::fs::create_dir_all(&lines_dir).unwrap();
    let mut series: SeriesPoints = Default::default();
    let mut files = Vec::new();
    let mut flush_lines = |series: &mut SeriesPoints| {
        let path = lines_dir.join(format!("{}.jsonl", files.len()));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for ((gpu, name), (ts, vs)) in std::mem::take(series) {
            let line = serde_json::json!({
                "metric": {"__name__": name, "gpu": gpu},
                "timestamps": ts,
                "values": vs,
            });
            serde_json::to_writer(&mut w, &line).unwrap();
            w.write_all(b"\n").unwrap();
        }
        w.flush().unwrap();
        files.push(path);
    };
    let ours_dir = work.path().join("ours-side-by-side");
    let mut rounds_seen = 0u64;
    let f2 = fill(&ours_dir, vm_gpus, hours, |b| {
        for s in &b.samples {
            for (name, v) in metric::values(s) {
                let e = series.entry((s.uuid.clone(), name)).or_default();
                e.0.push(s.timestamp_ms);
                e.1.push(v);
            }
        }
        rounds_seen += 1;
        if rounds_seen.is_multiple_of(3600 * u64::from(vm_gpus.div_ceil(8))) {
            flush_lines(&mut series);
        }
    });
    if !series.is_empty() {
        flush_lines(&mut series);
    }
    let vm_cpu_before = cpu_secs(vm.child.id());
    let t = Instant::now();
    for p in &files {
        let body = std::fs::read(p).unwrap();
        let r = client
            .post(format!("{vm_url}/api/v1/import"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "import: {}", r.status());
    }
    client
        .get(format!("{vm_url}/internal/force_flush"))
        .send()
        .await
        .unwrap();
    let vm_wall = t.elapsed().as_secs_f64();
    let vm_cpu = cpu_secs(vm.child.id()) - vm_cpu_before;
    client
        .get(format!("{vm_url}/internal/force_merge"))
        .send()
        .await
        .unwrap();
    // Merges run in the background: wait until none is active.
    integration_tests::eventually(
        Duration::from_secs(120),
        "VictoriaMetrics merged",
        || async {
            let text = client
                .get(format!("{vm_url}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let active: f64 = text
                .lines()
                .filter(|l| l.starts_with("vm_active_merges"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            (active == 0.0).then_some(())
        },
    )
    .await;
    // Merged parts replace the old ones a moment after the merge: the size once it has held
    // for a second.
    let last = std::cell::Cell::new((dir_bytes(&vm_dir), Instant::now()));
    let vm_bytes = integration_tests::eventually(
        Duration::from_secs(30),
        "VictoriaMetrics's directory size settled",
        || {
            let (size, since) = last.get();
            let now = dir_bytes(&vm_dir);
            if now != size {
                last.set((now, Instant::now()));
            }
            std::future::ready(
                (now == size && since.elapsed() >= Duration::from_secs(1)).then_some(now),
            )
        },
    )
    .await;
    let ours_bytes = dir_bytes(&ours_dir);
    let (ours_values, ours_segments) = {
        let h = streamer::store::DiskHistory::open(DiskConfig::new(&ours_dir)).unwrap();
        (h.stored_bytes(), h.segment_file_bytes())
    };
    println!(
        "  ours: chunk values {ours_values} B = {:.3} B/point; segment files {ours_segments} B; index (history.redb) {} B",
        ours_values as f64 / f2.points as f64,
        std::fs::metadata(ours_dir.join("history.redb")).map_or(0, |m| m.len())
    );
    println!(
        "side by side: {vm_gpus} GPUs x {hours} h = {} metric points, same points both sides",
        f2.points
    );
    println!(
        "  ingest per core: ours {:.0} points/s (one thread, {:.1} s); VictoriaMetrics {:.0} points per CPU-second ({:.1} CPU-s, {vm_wall:.1} s wall, JSON import over HTTP)",
        f2.points as f64 / f2.store_secs,
        f2.store_secs,
        f2.points as f64 / vm_cpu,
        vm_cpu
    );
    println!(
        "  on disk: ours {:.3} B/point ({ours_bytes} B); VictoriaMetrics {:.3} B/point ({vm_bytes} B, after force_merge); ratio ours/VM {:.2}",
        ours_bytes as f64 / f2.points as f64,
        vm_bytes as f64 / f2.points as f64,
        ours_bytes as f64 / vm_bytes as f64
    );
    // The same raw range: one GPU, every metric, the whole period.
    let uuid = SimulatedSource::info(
        FleetSpec {
            nodes: vm_gpus.div_ceil(8),
            gpus_per_node: 8,
            seed: 11,
        },
        0,
        0,
    )
    .uuid;
    let store = Store::open_disk(DiskConfig::new(&ours_dir)).unwrap();
    let end = T0 + i64::from(hours) * 3_600_000;
    let mut ours_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (r, _) = store.range(&uuid, T0, end, 1_000_000).unwrap().unwrap();
        assert_eq!(r.len() as i64, end.saturating_sub(T0) / 1000);
        ours_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let export = format!(
        "{vm_url}/api/v1/export?match[]={{gpu=%22{uuid}%22}}&start={}&end={}",
        T0 / 1000,
        end / 1000
    );
    let mut vm_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = client.get(&export).send().await.unwrap();
        let body = r.bytes().await.unwrap();
        // Every point of every metric of that GPU is there.
        let points: usize = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["values"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(points as u64, f2.points / u64::from(vm_gpus));
        vm_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "  raw range, one GPU x {hours} h, every metric: ours (Store::range) median {:.1} ms; VictoriaMetrics (/api/v1/export) median {:.1} ms",
        median(ours_ms),
        median(vm_ms)
    );
    drop(vm);
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}
