//! Hostile HTTP clients cost bounded resources: connections trickling their headers are
//! closed after the header timeout while legitimate requests are answered, a huge head is a
//! 431, and a `metrics=` list longer than the catalog is a 400. Each test prints the figure
//! it measured.

use std::time::{Duration, Instant};

use integration_tests::{Proc, get_json, spawn_embedded_api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "http-limits-key-0123456789";

fn rss_kib(p: &Proc) -> u64 {
    p.status_kib("VmRSS")
}

fn api(dir: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    let mut flags = vec!["--source", "simulated", "--header-read-timeout", "2s"];
    flags.extend_from_slice(extra);
    spawn_embedded_api(dir, &flags, &[("API_KEY", KEY.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_trickling_connections_are_closed_after_the_timeout_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base) = api(dir.path(), &[]);
    let addr = base.trim_start_matches("http://").to_string();
    let http = reqwest::Client::new();
    let (s, _) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(KEY)).await;
    assert_eq!(s, 200);
    let before = rss_kib(&api);

    // 2,000 connections, each sending a request head a byte every 200 ms, never ending it;
    // each one's task returns when the server closes it, with when that happened.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2_000 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /api/v1/gpus HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            let mut trickle = tokio::time::interval(Duration::from_millis(200));
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = c.read(&mut buf) => match r {
                        // Closed (a 408 or similar may come first: keep reading).
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    },
                    _ = trickle.tick() => {
                        if c.write_all(b"a").await.is_err() {
                            return Instant::now();
                        }
                    }
                }
            }
        }));
    }
    let trickle = tokio::spawn(async move {
        let mut closed_at = Vec::new();
        for t in slow {
            closed_at.push(t.await.unwrap());
        }
        closed_at
    });

    // Meanwhile a legitimate client is answered.
    let t = Instant::now();
    let (s, body) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(KEY)).await;
    let answered_in = t.elapsed();
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["count"], 8);
    let during = rss_kib(&api);

    let closed = tokio::time::timeout(Duration::from_secs(60), trickle)
        .await
        .expect("every slow connection closed within 60 s")
        .unwrap();
    assert_eq!(closed.len(), 2_000);
    let last = closed.iter().max().unwrap().duration_since(started);
    let first = closed.iter().min().unwrap().duration_since(started);
    // Not before the 2 s timeout, and soon after it.
    assert!(
        first >= Duration::from_millis(1_900),
        "closed after {first:?}"
    );
    assert!(last < Duration::from_secs(20), "last closed after {last:?}");
    let growth_mib = during.saturating_sub(before) / 1024;
    println!(
        "2,000 trickling connections: api RSS {before} kB before, {during} kB with them open (+{growth_mib} MiB); \
         a legitimate request answered in {answered_in:?}; slow ones closed {first:?}..{last:?} after they opened"
    );
    assert!(growth_mib < 64, "RSS grew {growth_mib} MiB");
    // And the api still answers afterwards.
    let (s, _) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(KEY)).await;
    assert_eq!(s, 200);
}

/// A GET written by hand (no client library limits), with the key; (status, body).
async fn raw_get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n");
    let _ = c.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_head_is_431_and_a_metrics_list_longer_than_the_catalog_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = api(dir.path(), &[]);
    let addr = base.trim_start_matches("http://").to_string();
    // A 200 KB header, sent at once.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "GET /api/v1/gpus HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = c.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.chars().take(200).collect::<String>()
    );

    // 10,000 names in `metrics=` (an api that takes a 1 MiB head, so the list reaches the
    // parameter check): a 400 naming the parameter, before any lookup.
    let dir = tempfile::tempdir().unwrap();
    let (_big, base) = api(dir.path(), &["--max-header-bytes", "1048576"]);
    let http = reqwest::Client::new();
    let uuid = integration_tests::eventually(Duration::from_secs(30), "a GPU listed", || async {
        let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(KEY)).await;
        gpus["gpus"][0]["uuid"].as_str().map(str::to_string)
    })
    .await;
    // Short names, so the request line (20 KB) stays under the URI limit and reaches the
    // parameter check: a 400 that names the parameter, before any lookup.
    let many = vec!["x"; 10_000].join(",");
    let t = Instant::now();
    let (status, body) = raw_get(
        &base,
        &format!("/api/v1/gpus/{uuid}/telemetry?metrics={many}"),
    )
    .await;
    println!("metrics= with 10,000 names: {status} in {:?}", t.elapsed());
    assert_eq!(status, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["parameter"], "metrics");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("metrics: 10000 names; at most 59"),
        "{body}"
    );
    // 10,000 real names (180 KB): past the URI limit, refused before routing, never a 5xx.
    let many = vec!["power_usage_watts"; 10_000].join(",");
    let (status, _) = raw_get(
        &base,
        &format!("/api/v1/gpus/{uuid}/telemetry?metrics={many}"),
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "a 180 KB request line is a client error: {status}"
    );
    // A repeated name is asked once.
    let url = format!(
        "{base}/api/v1/gpus/{uuid}/telemetry?metrics=power_usage_watts,power_usage_watts&limit=1&start_time=2000-01-01T00:00:00Z"
    );
    let (s, body) = get_json(&http, &url, Some(KEY)).await;
    assert_eq!(s, 200, "{body}");
    let sample = body["samples"][0].as_object().unwrap();
    assert_eq!(sample.len(), 2, "timestamp and the metric once: {sample:?}");
}
