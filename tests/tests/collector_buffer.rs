//! With no broker, the collector keeps sampling into its bounded buffer, counts what it
//! drops, reports it on /metrics, and on SIGTERM gives up after the drain timeout.

use std::time::Duration;

use integration_tests::{
    Proc, args, bin, eventually, free_port, get_text, metric_value, summary_field,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_the_collector_buffers_drops_the_oldest_and_counts() {
    let port = free_port();
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let args = args(&[
        "--source",
        "simulated",
        "--sim-nodes",
        "2",
        "--interval",
        "50ms",
        "--buffer-records",
        "6",
        "--max-in-flight",
        "4",
        "--brokers",
        &dead_broker,
        "--drain-timeout",
        "500ms",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut collector = Proc::spawn(
        "collector",
        &bin("collector"),
        &args,
        &[("SERVICE_TOKEN", "buffer-test-token-0123456789".into())],
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually(
        Duration::from_secs(30),
        "records dropped while the broker is away",
        || async {
            let text = get_text(&http, &url).await?;
            (metric_value(&text, "collector_records_dropped_total")? >= 10).then_some(text)
        },
    )
    .await;
    assert_eq!(
        metric_value(&text, "collector_buffered_records"),
        Some(6),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "collector_in_flight_records"),
        Some(4),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "collector_records_published_total"),
        Some(0),
        "{text}"
    );
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "sampling works, so the collector is healthy"
    );

    collector.term();
    let summary = collector.wait_line("collector stopped:", Duration::from_secs(30));
    assert!(collector.wait_exit(Duration::from_secs(10)).success());
    let field = |k| summary_field(&summary, k).unwrap_or_else(|| panic!("{k} in {summary}"));
    assert_eq!(field("published"), 0, "{summary}");
    assert_eq!(
        field("undelivered"),
        10,
        "six buffered and four in flight: {summary}"
    );
    // Two records per round (two nodes); all but the six buffered and four in flight were dropped.
    assert_eq!(field("dropped"), field("rounds") * 2 - 10, "{summary}");
}
