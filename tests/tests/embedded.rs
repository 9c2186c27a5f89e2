//! The README's first command: `api --embedded` keeps its history in `./data` across a clean
//! stop and a kill -9 (its write-ahead log).

use std::time::Duration;

use integration_tests::{Proc, eventually, get_json};
use serde_json::Value;

fn spawn_embedded(cwd: &std::path::Path) -> (Proc, String) {
    integration_tests::spawn_embedded_api(
        cwd,
        &["--source", "simulated", "--interval", "100ms"],
        &[("API_KEY", "embedded-key-0123456789".to_string())],
    )
}

async fn samples(http: &reqwest::Client, base: &str) -> Option<Vec<(String, u64, Value)>> {
    let (s, body) = get_json(
        http,
        &format!("{base}/api/v1/gpus"),
        Some("embedded-key-0123456789"),
    )
    .await;
    let gpus = body["gpus"].as_array().filter(|_| s == 200)?;
    Some(
        gpus.iter()
            .map(|g| {
                (
                    g["uuid"].as_str().unwrap_or_default().to_string(),
                    g["sample_count"].as_u64().unwrap_or(0),
                    g["last_seen"].clone(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_keeps_what_it_served_across_a_clean_stop_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (mut api, base) = spawn_embedded(dir.path());
    let served = eventually(Duration::from_secs(30), "8 GPUs with samples", || async {
        samples(&http, &base)
            .await
            .filter(|g| g.len() == 8 && g.iter().all(|(_, n, _)| *n >= 5))
    })
    .await;
    api.term();
    assert!(api.wait_exit(Duration::from_secs(15)).success());

    let (mut api, base) = spawn_embedded(dir.path());
    assert!(
        api.wait_line("data directory:", Duration::from_secs(5))
            .contains("8 GPUs"),
        "the restart finds the history"
    );
    // Everything served before is still there, and more arrives.
    let served = eventually(
        Duration::from_secs(30),
        "history kept, new samples",
        || async {
            let now = samples(&http, &base).await?;
            let kept = served
                .iter()
                .all(|(u, n, _)| now.iter().any(|(v, m, _)| v == u && m > n));
            kept.then_some(now)
        },
    )
    .await;
    println!(
        "served before the kill: {:?}",
        served.iter().map(|g| g.1).collect::<Vec<_>>()
    );
    // kill -9: nothing the API had served is lost (every batch is in the fsynced
    // write-ahead log before it is served).
    api.kill9();
    let (_api, base) = spawn_embedded(dir.path());
    eventually(
        Duration::from_secs(30),
        "history kept after kill -9",
        || async {
            let now = samples(&http, &base).await?;
            served
                .iter()
                .all(|(u, n, _)| now.iter().any(|(v, m, _)| v == u && m >= n))
                .then_some(())
        },
    )
    .await;
    // The newest sample served before the kill is still readable.
    for (uuid, _, last_seen) in &served {
        let t = last_seen.as_str().unwrap();
        let url = format!(
            "{base}/api/v1/gpus/{uuid}/telemetry?start_time={t}&end_time=2100-01-01T00:00:00Z&limit=1"
        );
        let (s, body) = get_json(&http, &url, Some("embedded-key-0123456789")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["samples"][0]["timestamp"], *last_seen, "{uuid}");
    }
}
