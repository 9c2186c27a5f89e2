//! A real Prometheus (Debian's `prometheus`, installed by scripts/install-test-deps) scrapes
//! `GET /api/v1/metrics` with the API key as a bearer token and answers PromQL with exactly
//! the values the simulated fleet produced, under dcgm-exporter's names and labels.

use std::time::Duration;

use integration_tests::{
    Broker, Names, Proc, args, eventually, free_port, get_json, spawn_api, spawn_collector,
    spawn_streamer,
};

fn prometheus_bin() -> std::path::PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .map(Into::into)
        .unwrap_or_else(|| "/usr/bin/prometheus".into())
}

/// PromQL `query` → (labels, value) of each series.
async fn query(
    http: &reqwest::Client,
    prom: &str,
    q: &str,
) -> Option<Vec<(serde_json::Value, String)>> {
    let body: serde_json::Value = http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let result = body["data"]["result"].as_array()?;
    Some(
        result
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_fleet_with_a_bearer_key_under_dcgm_exporter_names() {
    assert!(
        prometheus_bin().exists(),
        "prometheus missing: run scripts/install-test-deps"
    );
    let broker = Broker::start();
    let n = Names::fresh("prom");
    let grpc = free_port();
    let _streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    // Three rounds, then the collector stops: the latest values are final.
    let spec = collector::simulated::FleetSpec {
        nodes: 2,
        gpus_per_node: 2,
        seed: 11,
    };
    let mut collector = spawn_collector(&broker, &n, spec, "100ms", 3);
    collector.wait_exit(Duration::from_secs(60));
    let http = reqwest::Client::new();
    let gpus = eventually(Duration::from_secs(60), "all rounds stored", || async {
        let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
        let list = gpus["gpus"].as_array()?.clone();
        (list.len() == 4 && list.iter().all(|g| g["sample_count"] == 3)).then_some(list)
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-key"), &n.api_key).unwrap();
    let target = base.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gpu-telemetry\n    metrics_path: /api/v1/metrics\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
        dir.path().join("api-key").display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let _prometheus = Proc::spawn(
        "prometheus",
        &prometheus_bin(),
        &args(&[
            &format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ]),
        &[],
    );
    let prom = format!("http://127.0.0.1:{port}");
    let util = eventually(Duration::from_secs(60), "a successful scrape", || async {
        let up = query(&http, &prom, "up{job=\"gpu-telemetry\"}").await?;
        if up.first().map(|(_, v)| v.as_str()) != Some("1") {
            return None;
        }
        let util = query(&http, &prom, "DCGM_FI_DEV_GPU_UTIL").await?;
        (util.len() == 4).then_some(util)
    })
    .await;

    // Every GPU, with dcgm-exporter's labels and exactly the API's latest values.
    let by_uuid = |uuid: &str| {
        gpus.iter()
            .find(|g| g["uuid"] == uuid)
            .unwrap_or_else(|| panic!("{uuid} not in the API's list"))
    };
    for (labels, value) in &util {
        let g = by_uuid(labels["UUID"].as_str().unwrap());
        assert_eq!(value, &g["latest"]["gpu_utilization_percent"].to_string());
        assert_eq!(labels["gpu"], g["index"].to_string().as_str());
        assert_eq!(labels["device"], format!("nvidia{}", g["index"]).as_str());
        assert_eq!(labels["modelName"], g["name"]);
        assert_eq!(labels["Hostname"], g["node"]);
        assert_eq!(labels["job"], "gpu-telemetry");
    }
    let power = query(&http, &prom, "DCGM_FI_DEV_POWER_USAGE")
        .await
        .unwrap();
    assert_eq!(power.len(), 4);
    for (labels, value) in &power {
        let g = by_uuid(labels["UUID"].as_str().unwrap());
        let want = g["latest"]["power_usage_watts"].as_f64().unwrap();
        assert_eq!(value.parse::<f64>().unwrap(), want, "{labels}");
    }
    let fb = query(&http, &prom, "DCGM_FI_DEV_FB_USED").await.unwrap();
    for (labels, value) in &fb {
        let g = by_uuid(labels["UUID"].as_str().unwrap());
        let bytes = g["latest"]["memory_used_bytes"].as_u64().unwrap();
        assert_eq!(value, &(bytes >> 20).to_string(), "MiB, as DCGM");
    }
    // A PromQL aggregate over the fleet, as dashboards write them.
    let avg = query(&http, &prom, "avg(DCGM_FI_DEV_GPU_UTIL)")
        .await
        .unwrap();
    let mean = gpus
        .iter()
        .map(|g| g["latest"]["gpu_utilization_percent"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    // The same mean, up to the order Prometheus adds the four values in (56.75 came back as
    // 56.75000000000001 once).
    let got = avg[0].1.parse::<f64>().unwrap();
    assert!((got - mean).abs() <= mean.abs() * 1e-12, "{got} vs {mean}");

    // Without the key the scrape is refused like any other call.
    let refused = http
        .get(format!("{base}/api/v1/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
