//! The whole pipeline as separate processes: real broker, collector, streamer, api.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use collector::simulated::{FleetSpec, SimulatedSource};
use integration_tests::{
    Broker, Names, eventually, free_port, get_json, get_text, metric_value, spawn_api,
    spawn_collector, spawn_streamer,
};
use msg_queue_client::metric;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SPEC: FleetSpec = FleetSpec {
    nodes: 2,
    gpus_per_node: 8,
    seed: 7,
};

fn ms(rfc3339: &str) -> i64 {
    (OffsetDateTime::parse(rfc3339, &Rfc3339)
        .unwrap()
        .unix_timestamp_nanos()
        / 1_000_000) as i64
}

/// Waits until the API lists `gpus` GPUs with `per_gpu` samples each; returns the list.
async fn wait_for_samples(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    gpus: usize,
    per_gpu: u64,
) -> Vec<Value> {
    eventually(
        Duration::from_secs(60),
        "every sample visible in the API",
        || async {
            let (status, body) = get_json(http, &format!("{base}/api/v1/gpus"), Some(key)).await;
            if status != 200 {
                return None;
            }
            let list = body["gpus"].as_array()?.clone();
            let complete = list.len() == gpus
                && list
                    .iter()
                    .all(|g| g["sample_count"].as_u64() == Some(per_gpu));
            complete.then_some(list)
        },
    )
    .await
}

/// Checks every sample of every GPU against what the simulated fleet must have produced;
/// returns the sample timestamps per GPU.
async fn assert_exact_samples(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    list: &[Value],
) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    for g in list {
        let uuid = g["uuid"].as_str().unwrap();
        let node: u32 = g["node"]
            .as_str()
            .unwrap()
            .trim_start_matches("sim-node-")
            .parse()
            .unwrap();
        let index = g["index"].as_u64().unwrap() as u32;
        let info = SimulatedSource::info(SPEC, node, index);
        assert_eq!(info.uuid, uuid, "uuid of node {node} GPU {index}");
        assert_eq!(g["name"], info.name);
        let url = format!(
            "{base}/api/v1/gpus/{uuid}/telemetry?start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&limit=100000"
        );
        let (status, body) = get_json(http, &url, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        let samples = body["samples"].as_array().unwrap();
        let mut stamps = Vec::new();
        for s in samples {
            let t = ms(s["timestamp"].as_str().unwrap());
            let expected = SimulatedSource::sample(SPEC, node, index, uuid, t);
            let want: BTreeMap<&str, f64> = metric::values(&expected).collect();
            let got: BTreeMap<&str, f64> = s
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.as_str() != "timestamp")
                .map(|(k, v)| (k.as_str(), v.as_f64().unwrap()))
                .collect();
            assert_eq!(got, want, "GPU {uuid} at {t}");
            stamps.push(t);
        }
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "samples in time order, no duplicates"
        );
        // The list's `latest` is the newest sample.
        let last = SimulatedSource::sample(SPEC, node, index, uuid, *stamps.last().unwrap());
        let latest: BTreeMap<&str, f64> = g["latest"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_f64().unwrap()))
            .collect();
        assert_eq!(latest, metric::values(&last).collect::<BTreeMap<_, _>>());
        out.insert(uuid.to_string(), stamps);
    }
    out
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
    eventually(Duration::from_secs(60), "some samples stored", || async {
        let (s, body) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
        (s == 200
            && body["gpus"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["sample_count"].as_u64() > Some(5))))
        .then_some(())
    })
    .await;
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
    // The restarted streamer rebuilt everything from Kafka, including what the killed one
    // had stored: it stored all 16 × 80 samples itself, each once.
    let text = get_text(&http, &format!("{base}/metrics")).await.unwrap();
    assert_eq!(
        metric_value(&text, "streamer_samples_stored_total"),
        Some(16 * 80),
        "{text}"
    );
}
