//! Remote write into a real VictoriaMetrics (the write half of the `victoriametrics` history
//! backend, issue 11): every metric of a simulated batch lands under its Prometheus name
//! with its exact values and timestamps, and writing a batch again (a redelivery after a
//! rebalance or a kill -9) stores nothing twice.

use std::time::Duration;

use integration_tests::VictoriaMetrics;
use streamer::remote_write::{RemoteWriter, WriteError};
use telemetry_wire::metric::{self, METRICS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_lands_once_with_its_exact_value_even_when_written_twice() {
    let vm = VictoriaMetrics::start();
    let http = reqwest::Client::new();
    let fleet = collector::simulated::SimulatedSource::new(collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 2,
        seed: 11,
    });
    let t0 = collector::sampler::now_ms() - 60_000;
    let batches: Vec<_> = (0..5).map(|i| fleet.batch(0, t0 + i * 1000)).collect();
    let writer = RemoteWriter::new(
        &format!("{}/api/v1/write", vm.url),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(10),
    )
    .unwrap();
    for b in &batches {
        writer.write(b).await.unwrap();
    }
    // Redelivered: the same samples again.
    for b in &batches[..3] {
        writer.write(b).await.unwrap();
    }
    vm.flush(&http).await;

    let uuid = batches[0].samples[0].uuid.clone();
    // Every metric the GPU reported, each sample exactly once with its value.
    let mut want: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    for b in &batches {
        for s in b.samples.iter().filter(|s| s.uuid == uuid) {
            for m in METRICS {
                if let Some(v) = m.value(s) {
                    want.entry(m.prometheus_name())
                        .or_default()
                        .push((s.timestamp_ms, v));
                }
            }
        }
    }
    assert!(want.len() > 10, "the simulated GPU reports many metrics");
    let got = vm.export(&http, &format!("{{uuid=\"{uuid}\"}}")).await;
    let mut have: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    for (labels, ts, vs) in got {
        assert_eq!(labels["node"], batches[0].node.as_str());
        assert_eq!(labels["uuid"], uuid.as_str());
        let name = labels["__name__"].as_str().unwrap().to_string();
        let mut points: Vec<(i64, f64)> = ts.into_iter().zip(vs).collect();
        points.sort_by_key(|p| p.0);
        assert!(have.insert(name, points).is_none(), "one series per metric");
    }
    assert_eq!(have, want);
    let util = metric::find("gpu_utilization_percent").unwrap();
    assert!(have.contains_key(&util.prometheus_name()));

    // A refused write (a path that takes no writes: 400) is said as such, not retried for
    // ever.
    let bad = RemoteWriter::new(
        &format!("{}/api/v1/no-such-path", vm.url),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(10),
    )
    .unwrap();
    match bad.write(&batches[0]).await {
        Err(WriteError::Refused { status, .. }) => assert_eq!(status, 400),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An endpoint that is not there: try again later.
    let gone = RemoteWriter::new(
        &format!(
            "http://127.0.0.1:{}/api/v1/write",
            integration_tests::free_port()
        ),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(matches!(
        gone.write(&batches[0]).await,
        Err(WriteError::Retry { .. })
    ));
}
