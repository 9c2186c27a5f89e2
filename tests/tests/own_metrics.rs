//! Each service serves its own metrics (prometheus-client: HELP and TYPE on every family):
//! the collector what it published, the streamer what it consumed and stored (the same
//! count), its consumer lag and gRPC latency by method; the api its request latency by
//! route template and none of the streamer's series.

use std::time::Duration;

use integration_tests::{
    Broker, Names, eventually, free_port, get_json, get_text, metric_value, series_of, spawn_api,
    spawn_collector_with, spawn_streamer,
};

/// Every family named in `text` has a `# HELP` and a `# TYPE` line.
fn assert_described(text: &str) {
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    assert!(!families.is_empty(), "{text}");
    for f in families {
        assert!(
            text.contains(&format!("# HELP {f} ")),
            "no HELP for {f}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {f} ")),
            "no TYPE for {f}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_its_own_metrics_with_help_lag_and_latency_by_route() {
    let broker = Broker::start();
    let n = Names::fresh("own-metrics");
    let grpc = free_port();
    let _streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let collector_port = free_port();
    // One round now, the next in an hour: the collector stays up with settled counts.
    let _collector = spawn_collector_with(
        &broker,
        &n,
        collector::simulated::FleetSpec {
            nodes: 2,
            gpus_per_node: 2,
            seed: 3,
        },
        "1h",
        0,
        &["--metrics-addr", &format!("127.0.0.1:{collector_port}")],
    );
    let http = reqwest::Client::new();
    // 2 nodes × 2 GPUs: 2 records, 4 samples.
    let collector_metrics = format!("http://127.0.0.1:{collector_port}/metrics");
    let published = eventually(Duration::from_secs(60), "2 records published", || async {
        let text = get_text(&http, &collector_metrics).await?;
        (metric_value(&text, "collector_records_published_total") == Some(2)).then_some(text)
    })
    .await;
    assert_described(&published);
    assert_eq!(metric_value(&published, "collector_samples_total"), Some(4));
    assert_eq!(metric_value(&published, "collector_rounds_total"), Some(1));
    assert_eq!(
        metric_value(&published, "collector_buffered_records"),
        Some(0)
    );

    // The streamer: the same 2 records, 4 samples, and no lag once they are stored.
    let streamer = eventually(Duration::from_secs(60), "stored, lag 0", || async {
        let text = get_text(&http, &n.streamer_metrics()).await?;
        let lags = series_of(&text, "streamer_consumer_lag_records");
        (metric_value(&text, "streamer_samples_stored_total") == Some(4)
            && !lags.is_empty()
            && lags.iter().all(|l| l.ends_with(" 0")))
        .then_some(text)
    })
    .await;
    assert_described(&streamer);
    assert_eq!(metric_value(&streamer, "streamer_records_total"), Some(2));
    let lags = series_of(&streamer, "streamer_consumer_lag_records");
    assert!(
        lags.len() <= 4
            && lags
                .iter()
                .all(|l| l.starts_with("streamer_consumer_lag_records{partition=\"")),
        "one series per assigned partition of 4: {lags:?}"
    );
    assert!(
        series_of(&streamer, "streamer_records_rejected_total").is_empty(),
        "{streamer}"
    );

    // The api: each request timed under its route template, never the raw path.
    let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
    let uuid = gpus["gpus"][0]["uuid"].as_str().unwrap().to_string();
    let window = "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z";
    for _ in 0..3 {
        let (s, _) = get_json(
            &http,
            &format!("{base}/api/v1/gpus/{uuid}/telemetry?{window}"),
            Some(&n.api_key),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, _) = get_json(&http, &format!("{base}/api/v1/gpus/{uuid}"), None).await;
    assert_eq!(s, 401);
    let (s, _) = get_json(&http, &format!("{base}/no/such/path"), Some(&n.api_key)).await;
    assert_eq!(s, 404);
    let api = get_text(&http, &format!("{base}/metrics")).await.unwrap();
    assert_described(&api);
    let count = |route: &str, status: u16| {
        metric_value(
            &api,
            &format!(
                "api_http_request_duration_seconds_count{{route=\"{route}\",method=\"GET\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(
        count("/api/v1/gpus/{uuid}/telemetry", 200),
        Some(3),
        "{api}"
    );
    assert_eq!(count("/api/v1/gpus/{uuid}", 401), Some(1), "{api}");
    assert_eq!(count("unmatched", 404), Some(1), "{api}");
    assert!(!api.contains(&uuid), "no raw path in a label:\n{api}");
    assert_eq!(
        metric_value(&api, "api_errors_total{error_type=\"unauthorized\"}"),
        Some(1)
    );
    // A gateway does not repeat the streamer's series: a sum over replicas counts once.
    assert!(!api.lines().any(|l| l.starts_with("streamer_")), "{api}");

    // The streamer timed the three range calls the api made for them.
    let streamer = get_text(&http, &n.streamer_metrics()).await.unwrap();
    assert_eq!(
        metric_value(
            &streamer,
            "streamer_grpc_request_duration_seconds_count{method=\"StreamRange\",code=\"0\"}"
        ),
        Some(3),
        "{streamer}"
    );

    // OpenMetrics when asked.
    let om = http
        .get(n.streamer_metrics())
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        om.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = om.text().await.unwrap();
    assert!(
        om.contains("# TYPE streamer_records counter\nstreamer_records_total 2\n"),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_is_what_the_broker_holds_past_what_the_consumer_handled_committed_or_not() {
    use msg_queue_client::consumer::{ConsumerLag, LagProbe};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::Arc;

    let broker = Broker::start();
    let topic = integration_tests::unique("lag");
    msg_queue_client::topic::ensure_topic(&broker.addr, &topic, 1, 1)
        .await
        .unwrap();
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for i in 0..10 {
        raw.send(
            FutureRecord::to(&topic)
                .key("k")
                .payload(&format!("record {i}")),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let lag = Arc::new(ConsumerLag::default());
    let probe = Arc::new(LagProbe::new(&broker.addr, &topic, &[], lag.clone()).unwrap());
    let measure = || {
        let p = probe.clone();
        async move {
            tokio::task::spawn_blocking(move || p.measure())
                .await
                .unwrap()
        }
    };
    // Assigned, nothing handled or committed yet: the whole log is lag (not "unknown").
    // Partition 7 does not exist: no value rather than a wrong one.
    lag.assigned([(0, None), (7, None)]);
    measure().await;
    assert_eq!(lag.snapshot(), [(0, 10)]);
    // Resumed from a stored offset, then batches handled: what is left.
    lag.assigned([(0, Some(3))]);
    measure().await;
    assert_eq!(lag.snapshot(), [(0, 7)]);
    lag.handled(&[(0, 8)]);
    measure().await;
    assert_eq!(lag.snapshot(), [(0, 2)]);
    // A stuck consumer handles nothing while records keep coming: the lag grows.
    for _ in 0..5 {
        raw.send(
            FutureRecord::to(&topic).key("k").payload("more"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    measure().await;
    assert_eq!(lag.snapshot(), [(0, 7)]);
    lag.handled(&[(0, 15)]);
    measure().await;
    assert_eq!(lag.snapshot(), [(0, 0)]);
    // Revoked: no series.
    lag.revoked();
    measure().await;
    assert_eq!(lag.snapshot(), []);
}
