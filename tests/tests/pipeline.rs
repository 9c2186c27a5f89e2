//! The whole pipeline as separate processes: real broker, collector, streamer, api.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use collector::simulated::{FleetSpec, SimulatedSource};
use integration_tests::{
    Broker, Names, eventually, free_port, get_json, get_text, metric_value, spawn_api,
    spawn_collector, spawn_streamer, spawn_streamer_with, wait_for_samples, wait_for_some_samples,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SPEC: FleetSpec = FleetSpec {
    nodes: 2,
    gpus_per_node: 8,
    seed: 7,
};

async fn assert_exact_samples(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    list: &[Value],
) -> BTreeMap<String, Vec<i64>> {
    integration_tests::assert_exact_samples(http, base, key, SPEC, list).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_sample_reaches_the_api_with_exactly_its_values() {
    let broker = Broker::start();
    let n = Names::fresh("exact");
    let grpc = free_port();
    let mut streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let mut collector = spawn_collector(&broker, &n, SPEC, "100ms", 20);
    assert!(
        collector.wait_exit(Duration::from_secs(60)).success(),
        "collector exits 0 after 20 rounds"
    );

    let http = reqwest::Client::new();
    let list = wait_for_samples(&http, &base, &n.api_key, 16, 20).await;
    let stamps = assert_exact_samples(&http, &base, &n.api_key, &list).await;
    // All 16 GPUs were read in the same 20 rounds.
    let rounds: BTreeSet<&Vec<i64>> = stamps.values().collect();
    assert_eq!(rounds.len(), 1);
    assert_eq!(stamps.values().next().unwrap().len(), 20);
    let nodes: BTreeSet<&str> = list.iter().map(|g| g["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, BTreeSet::from(["sim-node-000", "sim-node-001"]));

    // The node filter.
    let (_, one) = get_json(
        &http,
        &format!("{base}/api/v1/gpus?node=sim-node-001"),
        Some(&n.api_key),
    )
    .await;
    assert_eq!(one["count"], 8);
    assert!(
        one["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["node"] == "sim-node-001")
    );

    // Aggregates through the deployed shape (api → gRPC → streamer) match the samples.
    for (uuid, ts) in &stamps {
        let g = list.iter().find(|g| g["uuid"] == uuid.as_str()).unwrap();
        let node: u32 = g["node"].as_str().unwrap()[9..].parse().unwrap();
        let index = g["index"].as_u64().unwrap() as u32;
        let utils: Vec<f64> = ts
            .iter()
            .map(|t| {
                f64::from(
                    SimulatedSource::sample(SPEC, node, index, uuid, *t)
                        .gpu_utilization_percent
                        .unwrap(),
                )
            })
            .collect();
        let url = format!(
            "{base}/api/v1/gpus/{uuid}/telemetry?start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&step=366d&metrics=gpu_utilization_percent&agg="
        );
        let total = |body: &Value| -> f64 {
            body["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["gpu_utilization_percent"].as_f64().unwrap())
                .sum()
        };
        let (_, count) = get_json(&http, &format!("{url}count"), Some(&n.api_key)).await;
        assert_eq!(total(&count), 20.0, "{count}");
        let (_, max) = get_json(&http, &format!("{url}max"), Some(&n.api_key)).await;
        let want = utils.iter().cloned().fold(f64::MIN, f64::max);
        assert!(
            max["samples"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["gpu_utilization_percent"].as_f64().unwrap() <= want)
        );
        assert!(
            max["samples"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["gpu_utilization_percent"].as_f64() == Some(want)),
            "{max}"
        );
    }

    // SIGTERM: the streamer stops promptly and cleanly, even with the api's latest-state
    // stream open (it is ended, not waited on).
    streamer.term();
    assert!(streamer.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamer_killed_mid_stream_restarts_and_each_sample_appears_exactly_once() {
    let broker = Broker::start();
    let n = Names::fresh("kill9");
    let grpc = free_port();
    let mut streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", 80);
    let http = reqwest::Client::new();

    // Kill -9 once the streamer has stored part of the stream.
    wait_for_some_samples(&http, &base, &n.api_key).await;
    assert!(
        matches!(collector.child.try_wait(), Ok(None)),
        "the collector is still producing when the streamer dies"
    );
    streamer.kill9();
    let _restarted = spawn_streamer(&broker, &n, grpc);

    assert!(collector.wait_exit(Duration::from_secs(60)).success());
    let list = wait_for_samples(&http, &base, &n.api_key, 16, 80).await;
    let stamps = assert_exact_samples(&http, &base, &n.api_key, &list).await;
    assert!(stamps.values().all(|s| s.len() == 80));
    // The killed streamer never flushed (the default interval is 10 min), so its durable
    // offsets were none: the restarted one read the topic from the start and stored all
    // 16 × 80 samples itself, each once.
    let text = get_text(&http, &n.streamer_metrics()).await.unwrap();
    assert_eq!(
        metric_value(&text, "streamer_samples_stored_total"),
        Some(16 * 80),
        "{text}"
    );
}

/// Streamer flags that make flushes and sweeps happen all the time, so a kill lands amid
/// them.
const BUSY_STORE: &[&str] = &["--flush-interval", "150ms", "--sweep-interval", "100ms"];

fn spawn_busy_streamer(broker: &Broker, n: &Names, grpc: u16) -> integration_tests::Proc {
    spawn_streamer_with(
        broker,
        n,
        grpc,
        BUSY_STORE,
        &[("SERVICE_TOKEN", n.token.clone())],
    )
}

/// The streamer's counter `name` as its /metrics shows it (0 while unreachable).
async fn streamer_counter(http: &reqwest::Client, n: &Names, name: &str) -> u64 {
    let text = get_text(http, &n.streamer_metrics())
        .await
        .unwrap_or_default();
    metric_value(&text, name).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamer_killed_five_times_amid_flushes_and_sweeps_keeps_every_sample_exactly_once() {
    let broker = Broker::start();
    let n = Names::fresh("crash");
    let grpc = free_port();
    let mut streamer = spawn_busy_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    // Long enough (40 s) for five kills and restarts (each rejoin waits out the dead
    // member's 6 s session).
    const ROUNDS: u64 = 1000;
    let mut collector = spawn_collector(&broker, &n, SPEC, "40ms", ROUNDS);
    let http = reqwest::Client::new();
    // Random kill moments, reproducible from the printed seed.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    println!("kill-moment seed {seed}");
    let mut flushes_seen = 0;
    for kill in 0..5 {
        // This process is consuming and has flushed at least once: a kill now lands amid
        // stores, flushes (every 150 ms) and sweeps (every 100 ms).
        eventually(Duration::from_secs(60), "the streamer flushes", || async {
            (streamer_counter(&http, &n, "streamer_store_flushes_total").await > 0).then_some(())
        })
        .await;
        flushes_seen += 1;
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let pause = Duration::from_millis(seed >> 33 & 0xff);
        tokio::time::sleep(pause).await;
        println!("kill {kill} after {pause:?}");
        streamer.kill9();
        streamer = spawn_busy_streamer(&broker, &n, grpc);
    }
    assert_eq!(flushes_seen, 5);
    assert!(
        matches!(collector.child.try_wait(), Ok(None)),
        "every kill landed while records were still coming"
    );
    assert!(collector.wait_exit(Duration::from_secs(120)).success());
    let list = wait_for_samples(&http, &base, &n.api_key, 16, ROUNDS).await;
    let stamps = assert_exact_samples(&http, &base, &n.api_key, &list).await;
    assert!(stamps.values().all(|s| s.len() == ROUNDS as usize));
    // A clean stop flushes everything: the next start finds it all on disk and reads on
    // from the stored offsets, so only new records are stored.
    streamer.term();
    assert!(streamer.wait_exit(Duration::from_secs(20)).success());
    let _last = spawn_busy_streamer(&broker, &n, grpc);
    let mut more = spawn_collector(&broker, &n, SPEC, "40ms", 5);
    assert!(more.wait_exit(Duration::from_secs(60)).success());
    let list = wait_for_samples(&http, &base, &n.api_key, 16, ROUNDS + 5).await;
    assert_exact_samples(&http, &base, &n.api_key, &list).await;
    let text = get_text(&http, &n.streamer_metrics()).await.unwrap();
    assert_eq!(
        metric_value(&text, "streamer_samples_stored_total"),
        Some(16 * 5),
        "after a clean stop only new samples are stored: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamer_and_broker_killed_broker_back_empty_history_kept_and_new_records_consumed() {
    let mut broker = Broker::start();
    let n = Names::fresh("empty-broker");
    let grpc = free_port();
    let mut streamer = spawn_busy_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let http = reqwest::Client::new();
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", 30);
    assert!(collector.wait_exit(Duration::from_secs(60)).success());
    wait_for_samples(&http, &base, &n.api_key, 16, 30).await;
    // Everything on disk before the kill (a flush every 150 ms).
    eventually(Duration::from_secs(30), "all samples durable", || async {
        (streamer_counter(&http, &n, "streamer_samples_durable_total").await == 16 * 30)
            .then_some(())
    })
    .await;

    streamer.kill9();
    broker.restart(); // memory storage: the broker comes back with no topics, no offsets
    let _streamer = spawn_busy_streamer(&broker, &n, grpc);
    // The history is served at once, exactly once.
    let list = wait_for_samples(&http, &base, &n.api_key, 16, 30).await;
    assert_exact_samples(&http, &base, &n.api_key, &list).await;

    // New records (offsets start again at 0, below the stored ones) are consumed.
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", 10);
    assert!(collector.wait_exit(Duration::from_secs(60)).success());
    let list = wait_for_samples(&http, &base, &n.api_key, 16, 40).await;
    let stamps = assert_exact_samples(&http, &base, &n.api_key, &list).await;
    assert!(stamps.values().all(|s| s.len() == 40));
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamer_killed_amid_rollups_keeps_every_sample_once_in_raw_or_rollups() {
    use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
    use telemetry_wire::RecordSigner;
    use telemetry_wire::wire::seal;
    const ROUNDS: i64 = 1080; // 3 h at one sample per 10 s
    let broker = Broker::start();
    let n = Names::fresh("rollup-crash");
    msg_queue_client::topic::ensure_topic(&broker.addr, &n.topic, 4, 1)
        .await
        .unwrap();
    // Raw samples older than 1 h (whole hours) roll up while the data streams in.
    let flags = [BUSY_STORE, &["--retention", "1h"]].concat();
    let spawn = || {
        spawn_streamer_with(
            &broker,
            &n,
            free_port_of(&n),
            &flags,
            &[("SERVICE_TOKEN", n.token.clone())],
        )
    };
    let mut streamer = spawn();
    let (_api, base) = spawn_api(&n, free_port_of(&n));
    let now = collector::sampler::now_ms();
    let t0 = now - now.rem_euclid(3_600_000) - 3 * 3_600_000;
    let fleet = SimulatedSource::new(SPEC);
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();
    let signer = RecordSigner::new(&secrecy::SecretString::from(n.token.clone()));
    // About 40 s of records, in time order, while the streamer is killed five times.
    // Paced, not waited on: a round every 35 ms, so the data is still streaming in while
    // the streamer is killed.
    let produce = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(35));
        for r in 0..ROUNDS {
            pace.tick().await;
            for node in 0..SPEC.nodes {
                let rec = seal(&signer, &fleet.batch(node, t0 + r * 10_000));
                producer.send(&rec).await.unwrap();
            }
        }
    });
    let http = reqwest::Client::new();
    let mut seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    println!("kill-moment seed {seed}");
    for kill in 0..5 {
        eventually(Duration::from_secs(60), "the streamer flushes", || async {
            (streamer_counter(&http, &n, "streamer_store_flushes_total").await > 0).then_some(())
        })
        .await;
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let pause = Duration::from_millis(seed >> 33 & 0xff);
        tokio::time::sleep(pause).await;
        println!("kill {kill} after {pause:?}");
        streamer.kill9();
        streamer = spawn();
    }
    assert!(
        !produce.is_finished(),
        "every kill landed while records were still coming"
    );
    produce.await.unwrap();

    let window = format!(
        "start_time={}&end_time={}",
        rfc3339(t0),
        rfc3339(t0 + ROUNDS * 10_000)
    );
    let list = eventually(Duration::from_secs(90), "every sample counted once", || async {
        let (s, body) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
        let list = body["gpus"].as_array().filter(|g| s == 200 && g.len() == 16)?.clone();
        for g in &list {
            let uuid = g["uuid"].as_str()?;
            let url = format!("{base}/api/v1/gpus/{uuid}/telemetry?{window}&step=3h&agg=count&metrics=gpu_utilization_percent");
            let (_, body) = get_json(&http, &url, Some(&n.api_key)).await;
            let total: f64 = body["samples"].as_array()?.iter().filter_map(|s| s["gpu_utilization_percent"].as_f64()).sum();
            if total != ROUNDS as f64 {
                return None;
            }
        }
        Some(list)
    })
    .await;
    drop(list);
    // The list (the api's mirror) shows the newest round once it has caught up.
    let newest = t0 + (ROUNDS - 1) * 10_000;
    let list = eventually(
        Duration::from_secs(30),
        "the list shows the newest round",
        || async {
            let (_, body) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
            let list = body["gpus"].as_array()?.clone();
            list.iter()
                .all(|g| g["last_seen"].as_str().map(integration_tests::rfc3339_ms) == Some(newest))
                .then_some(list)
        },
    )
    .await;
    // Some hours were rolled up and left raw retention: what is raw is exact, and every
    // minute's count, min and max (raw and rollups together) is that of the generated data.
    let rolled_up = streamer_counter(&http, &n, "streamer_samples_swept_total").await;
    for g in &list {
        let uuid = g["uuid"].as_str().unwrap();
        let node: u32 = g["node"].as_str().unwrap()[9..].parse().unwrap();
        let index = g["index"].as_u64().unwrap() as u32;
        let mut want: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for r in 0..ROUNDS {
            let t = t0 + r * 10_000;
            let s = SimulatedSource::sample(SPEC, node, index, uuid, t);
            want.entry(t - t.rem_euclid(60_000))
                .or_default()
                .push(f64::from(s.power_usage_milliwatts.unwrap()) / 1000.0);
        }
        for (agg, f) in [
            (
                "count",
                (|v: &Vec<f64>| v.len() as f64) as fn(&Vec<f64>) -> f64,
            ),
            ("min", |v| v.iter().cloned().fold(f64::MAX, f64::min)),
            ("max", |v| v.iter().cloned().fold(f64::MIN, f64::max)),
        ] {
            let url = format!(
                "{base}/api/v1/gpus/{uuid}/telemetry?{window}&step=1m&agg={agg}&metrics=power_usage_watts&limit=1000"
            );
            let (s, body) = get_json(&http, &url, Some(&n.api_key)).await;
            assert_eq!(s, 200, "{body}");
            let got: Vec<(i64, f64)> = body["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        integration_tests::rfc3339_ms(s["timestamp"].as_str().unwrap()),
                        s["power_usage_watts"].as_f64().unwrap(),
                    )
                })
                .collect();
            let expected: Vec<(i64, f64)> = want.iter().map(|(t, v)| (*t, f(v))).collect();
            assert_eq!(got, expected, "{uuid} {agg}");
        }
    }
    let stamps = assert_exact_samples(&http, &base, &n.api_key, &list).await;
    let raw: usize = stamps.values().map(Vec::len).sum();
    println!("raw samples left {raw}, rolled up by the last streamer {rolled_up}");
    assert!(raw < 16 * ROUNDS as usize, "some hours were rolled up");
    let later = collector::sampler::now_ms();
    if later - later.rem_euclid(3_600_000) == now - now.rem_euclid(3_600_000) {
        assert!(raw > 0, "the newest hour is raw");
    }
}

/// The gRPC port of a test's streamer, the same for every restart.
fn free_port_of(n: &Names) -> u16 {
    use std::sync::{Mutex, OnceLock};
    static PORTS: OnceLock<Mutex<BTreeMap<String, u16>>> = OnceLock::new();
    *PORTS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(n.topic.clone())
        .or_insert_with(free_port)
}
