//! The broker goes away and comes back: the collector buffers, rebuilds its producer if the
//! broker forgot it, and on SIGTERM delivers what it holds. Nothing sampled is lost.

use std::time::Duration;

use collector::simulated::FleetSpec;
use integration_tests::{
    Broker, Names, eventually, free_port, get_json, get_text, metric_value, spawn_api,
    spawn_collector_with, spawn_streamer, summary_field,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_loses_no_sample() {
    let dir = tempfile::tempdir().unwrap();
    // sqlite storage survives kill -9 (the memory engine would forget the topic).
    let mut broker = Broker::start_sqlite(dir.path());
    let n = Names::fresh("brokerkill");
    let grpc = free_port();
    let _streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let spec = FleetSpec {
        nodes: 1,
        gpus_per_node: 2,
        seed: 11,
    };
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut collector = spawn_collector_with(
        &broker,
        &n,
        spec,
        "100ms",
        0,
        &["--metrics-addr", &metrics_addr],
    );
    let http = reqwest::Client::new();
    let count = |min: u64| {
        let http = http.clone();
        let url = format!("{base}/api/v1/gpus");
        let key = n.api_key.clone();
        async move {
            let (s, body) = get_json(&http, &url, Some(&key)).await;
            let c = body["gpus"][0]["sample_count"].as_u64().unwrap_or(0);
            (s == 200 && c >= min).then_some(c)
        }
    };
    eventually(Duration::from_secs(60), "samples flowing", || count(5)).await;

    broker.proc.kill9();
    // The collector keeps sampling while the broker is down: ten more rounds, none delivered.
    let rounds = || {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{metrics_port}/metrics");
        async move {
            let text = get_text(&http, &url).await?;
            metric_value(&text, "collector_rounds_total")
        }
    };
    let at_kill = eventually(Duration::from_secs(10), "collector metrics", rounds).await;
    eventually(
        Duration::from_secs(30),
        "ten rounds sampled without a broker",
        || async { rounds().await.filter(|r| *r >= at_kill + 10) },
    )
    .await;
    broker.restart();
    let before = eventually(Duration::from_secs(60), "samples flowing again", || {
        count(1)
    })
    .await;
    eventually(Duration::from_secs(90), "samples after the restart", || {
        count(before + 20)
    })
    .await;

    collector.term();
    let summary = collector.wait_line("collector stopped:", Duration::from_secs(30));
    assert!(
        collector.wait_exit(Duration::from_secs(30)).success(),
        "collector drains and exits 0 on SIGTERM"
    );
    let field = |k| summary_field(&summary, k).unwrap_or_else(|| panic!("{k} in {summary}"));
    assert_eq!(
        (field("dropped"), field("undelivered")),
        (0, 0),
        "{summary}"
    );
    let rounds = field("rounds");
    // Every round of every GPU reaches the API, once.
    let per_gpu = eventually(
        Duration::from_secs(60),
        "every sampled round stored",
        || {
            let http = http.clone();
            let url = format!("{base}/api/v1/gpus");
            let key = n.api_key.clone();
            async move {
                let (_, body) = get_json(&http, &url, Some(&key)).await;
                let counts: Vec<u64> = body["gpus"]
                    .as_array()?
                    .iter()
                    .filter_map(|g| g["sample_count"].as_u64())
                    .collect();
                (counts.len() == 2 && counts.iter().all(|c| *c == rounds)).then_some(counts)
            }
        },
    )
    .await;
    assert_eq!(per_gpu, vec![rounds, rounds], "{summary}");

    // Every GPU's series holds every round once.
    let (_, list) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
    for g in list["gpus"].as_array().unwrap() {
        let uuid = g["uuid"].as_str().unwrap();
        let url = format!(
            "{base}/api/v1/gpus/{uuid}/telemetry?start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&limit=100000"
        );
        let (_, body) = get_json(&http, &url, Some(&n.api_key)).await;
        let ts: Vec<i64> = body["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let t = OffsetDateTime::parse(s["timestamp"].as_str().unwrap(), &Rfc3339).unwrap();
                (t.unix_timestamp_nanos() / 1_000_000) as i64
            })
            .collect();
        assert_eq!(ts.len() as u64, rounds);
        // Each round once (a lost one would shorten the count, a doubled one lengthen it); not
        // the spacing between rounds, which measures the loaded machine's clock, not loss
        // (a 169 ms step failed a fresh-clone CI run once).
        let distinct: std::collections::BTreeSet<&i64> = ts.iter().collect();
        assert_eq!(distinct.len(), ts.len(), "GPU {uuid}: a round twice");
    }
}
