//! `--log-format json` (env `LOG_FORMAT`) on the binaries: every log line on stderr is one
//! JSON object; the default text lines carry no colour codes when stderr is not a terminal
//! (a pod's log, a file).

use std::process::Command;
use std::time::Duration;

use integration_tests::{bin, spawn_embedded_api};

fn collector(format: &str) -> String {
    let out = Command::new(bin("collector"))
        .args(["--source", "simulated", "--sim-gpus-per-node", "1"])
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--rounds",
            "2",
            "--interval",
            "10ms",
        ])
        .args(["--drain-timeout", "1s", "--log-format", format])
        .env("SERVICE_TOKEN", "log-format-token-0123456789")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// The lines that are log records (the exit summary is the binary's own line).
fn records(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("collector stopped:"))
        .collect()
}

#[test]
fn the_collector_logs_one_json_object_per_line_when_asked_and_plain_text_otherwise() {
    let json = collector("json");
    let lines = records(&json);
    assert!(lines.len() >= 2, "{json}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    let starting: serde_json::Value = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "collector starting")
        .expect("the starting line");
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["fields"]["topic"], "gpu-telemetry");

    let text = collector("text");
    assert!(
        text.contains(" INFO collector: collector starting"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no escape sequences off a terminal: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_the_format_from_its_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let (mut api, base) = spawn_embedded_api(
        dir.path(),
        &["--source", "simulated", "--interval", "100ms"],
        &[
            ("API_KEY", "log-format-key-0123456789".to_string()),
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "info".to_string()),
        ],
    );
    // A refused key is an audit line: as JSON, with its fields.
    let status = integration_tests::status_with_key(
        &reqwest::Client::new(),
        &format!("{base}/api/v1/gpus"),
        "wrong-key-0123456789abcdef",
    )
    .await;
    assert_eq!(status, 401);
    let line = api.wait_line("\"level\":\"WARN\"", Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["message"], "authentication failed", "{line}");
    assert_eq!(v["fields"]["route"], "/api/v1/gpus", "{line}");
    assert!(!line.contains("wrong-key"), "{line}");
}
