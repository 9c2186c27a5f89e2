//! Rotating both secrets in the mounted directory, with every service running: no restart,
//! no rejected record, no failed request; the old API key works for the grace period only.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{
    Broker, Names, Proc, args, bin, eventually, free_port, get_text, series_of, spawn_api_with,
    spawn_streamer_with, status_with_key as status, unique,
};

fn write_atomically(dir: &Path, name: &str, value: &str) {
    // As the kubelet does: write aside, then swap in one rename.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn sample_count(http: &reqwest::Client, base: &str, key: &str) -> Option<u64> {
    let body: serde_json::Value = http
        .get(format!("{base}/api/v1/gpus"))
        .header("x-api-key", key)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["gpus"][0]["sample_count"].as_u64()
}

/// Where the services read their secrets in a rotation test, and how the test changes them.
enum Secrets {
    /// A mounted directory, changed as the kubelet does.
    Mount(tempfile::TempDir),
    /// The Secret `telemetry/auth` in a fake Kubernetes API, read with a service-account
    /// token through a kubeconfig.
    Kubernetes(integration_tests::kube_api::FakeKubeApi, tempfile::TempDir),
}

const SA_TOKEN: &str = "sa-token-for-the-rotation-test-0123456789";

impl Secrets {
    async fn kubernetes() -> Self {
        let fake = integration_tests::kube_api::FakeKubeApi::start(SA_TOKEN).await;
        Self::Kubernetes(fake, tempfile::tempdir().unwrap())
    }

    fn set(&self, key: &str, value: &str) {
        match self {
            Secrets::Mount(dir) => write_atomically(dir.path(), key, value),
            Secrets::Kubernetes(fake, _) => {
                fake.set("telemetry", "auth", key, value);
            }
        }
    }

    /// The flags every service gets, plus the rotation timing.
    fn flags(&self) -> Vec<String> {
        let mut f = match self {
            Secrets::Mount(dir) => args(&[
                "--secret-dir",
                dir.path().to_str().unwrap(),
                "--secret-reload-interval",
                "100ms",
            ]),
            Secrets::Kubernetes(..) => {
                args(&["--secret-source", "kubernetes", "--secret-name", "auth"])
            }
        };
        f.extend(args(&[
            "--secret-grace",
            "4s",
            "--secret-signing-delay",
            "1s",
        ]));
        f
    }

    /// The env every service gets.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "RUST_LOG",
            "debug,rdkafka=info,h2=info,hyper=info,tower=info,kube_client=debug".to_string(),
        )];
        if let Secrets::Kubernetes(fake, dir) = self {
            let config = fake.kubeconfig(dir.path(), "telemetry");
            env.push(("KUBECONFIG", config.display().to_string()));
        }
        env
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_both_secrets_needs_no_restart_and_loses_nothing() {
    rotate_both_secrets(Secrets::Mount(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_both_secrets_in_the_kubernetes_api_needs_no_restart_and_loses_nothing() {
    let secrets = Secrets::kubernetes().await;
    rotate_both_secrets(secrets).await;
}

async fn rotate_both_secrets(secrets: Secrets) {
    let (k1, t1) = (
        "api-key-one-0123456789abcdef",
        "service-token-one-0123456789",
    );
    let (k2, t2) = (
        "api-key-two-0123456789abcdef",
        "service-token-two-0123456789",
    );
    secrets.set("api-key", k1);
    secrets.set("service-token", t1);
    let flags = secrets.flags();
    let rotation: Vec<&str> = flags.iter().map(String::as_str).collect();

    let broker = Broker::start();
    let n = Names::fresh("rot");
    let grpc = free_port();
    // Debug logs: everything a service could say about its secrets is in the scan below.
    let debug = secrets.env();
    let mut streamer = spawn_streamer_with(&broker, &n, grpc, &rotation, &debug);
    let (mut api, base) = spawn_api_with(grpc, &rotation, &debug);
    let mut collector = Proc::spawn(
        "collector",
        &bin("collector"),
        &[
            integration_tests::simulated_collector_args(&broker, &n.topic),
            args(&rotation),
        ]
        .concat(),
        &debug,
    );
    let http = reqwest::Client::new();
    let gpus = format!("{base}/api/v1/gpus");
    eventually(
        Duration::from_secs(60),
        "samples flowing before the rotation",
        || async { sample_count(&http, &base, k1).await.filter(|c| *c >= 5) },
    )
    .await;

    secrets.set("api-key", k2);
    secrets.set("service-token", t2);
    let rotated = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the new API key accepted",
        || async { (status(&http, &gpus, k2).await == 200).then_some(()) },
    )
    .await;
    println!(
        "new API key accepted {:?} after the change",
        rotated.elapsed()
    );
    assert_eq!(
        status(&http, &gpus, k1).await,
        200,
        "the old key still works during the grace period"
    );

    // Every request with the new key keeps succeeding while the old token ages out and
    // after: each poll below also counts a failed request.
    let failures = std::sync::atomic::AtomicU32::new(0);
    let count_failure = |ok: bool| {
        if !ok {
            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    eventually(
        Duration::from_secs(10),
        "the old API key refused after the grace period",
        || async {
            count_failure(status(&http, &gpus, k2).await == 200);
            (status(&http, &gpus, k1).await == 401).then_some(())
        },
    )
    .await;
    assert!(
        rotated.elapsed() >= Duration::from_secs(4),
        "the old key lasted the grace period"
    );

    // Records signed with the new token keep arriving (the old one is no longer accepted).
    let after_grace = sample_count(&http, &base, k2).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "samples signed with the new token stored",
        || async {
            let count = sample_count(&http, &base, k2).await;
            count_failure(count.is_some());
            count.filter(|c| *c >= after_grace + 10)
        },
    )
    .await;
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "requests failed during the rotation"
    );
    let metrics = get_text(&http, &n.streamer_metrics()).await.unwrap();
    assert!(
        series_of(&metrics, "streamer_records_rejected_total").is_empty(),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamer_dead_lettered_total 0"),
        "{metrics}"
    );
    let api_metrics = get_text(&http, &format!("{base}/metrics")).await.unwrap();
    assert!(
        api_metrics.contains("api_errors_total{error_type=\"unavailable\"} 0"),
        "{api_metrics}"
    );
    assert!(
        series_of(&api_metrics, "streamer_records_total").is_empty(),
        "a gateway api does not repeat the streamer's metrics: {api_metrics}"
    );

    // Failures too: a wrong key, and a rotation to a weak value (refused, said, not used).
    assert_eq!(
        status(&http, &gpus, "wrong-key-0123456789abcdef").await,
        401
    );
    secrets.set("api-key", "changeme");
    api.wait_line("rotation to a weak value refused", Duration::from_secs(10));
    assert_eq!(status(&http, &gpus, k2).await, 200, "the current key stays");
    assert_eq!(status(&http, &gpus, "changeme").await, 401);

    collector.term();
    let summary = collector.wait_line("collector stopped:", Duration::from_secs(30));
    assert!(
        summary.contains("dropped=0") && summary.contains("undelivered=0"),
        "{summary}"
    );
    // Every line every service printed in the whole run (debug level, rotations, failures):
    // no secret, no value from the Secret.
    let mut all: Vec<String> = Vec::new();
    for p in [&mut streamer, &mut api, &mut collector] {
        all.extend(p.lines_so_far().iter().cloned());
    }
    assert!(
        all.len() > 10,
        "the run said something: {} lines",
        all.len()
    );
    for value in [
        k1,
        k2,
        t1,
        t2,
        "changeme",
        "wrong-key-0123456789abcdef",
        SA_TOKEN,
    ] {
        let leaks: Vec<&String> = all.iter().filter(|l| l.contains(value)).collect();
        assert!(leaks.is_empty(), "{value} appears in: {leaks:?}");
    }
    println!("{} log lines scanned, no secret in them", all.len());
    if let Secrets::Kubernetes(fake, _) = &secrets {
        // Each service read the Secret once at startup and then only watched it.
        let requests = fake.requests();
        let count = |p: &str| requests.iter().filter(|r| r.starts_with(p)).count();
        assert_eq!(
            count("LIST telemetry fieldSelector=metadata.name=auth"),
            3,
            "{requests:?}"
        );
        assert!(
            count("WATCH telemetry rv=") >= 3
                && requests
                    .iter()
                    .filter(|r| r.starts_with("WATCH"))
                    .all(|r| r.ends_with("bookmarks=true fieldSelector=metadata.name=auth")),
            "{requests:?}"
        );
        assert_eq!(count("UNAUTHORIZED"), 0, "{requests:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_streamer_still_verifies_records_signed_before_a_rotation_with_the_retired_token()
 {
    use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
    use telemetry_wire::RecordSigner;
    use telemetry_wire::wire::seal;

    let secrets = tempfile::tempdir().unwrap();
    let dir = secrets.path().to_str().unwrap().to_string();
    let (old, new, key) = (
        "service-token-old-0123456789",
        "service-token-new-0123456789",
        "api-key-0123456789abcdef",
    );
    write_atomically(secrets.path(), "service-token", new);
    write_atomically(secrets.path(), "api-key", key);
    let broker = Broker::start();
    let n = Names::fresh("retired");
    let topic = n.topic.clone();
    msg_queue_client::topic::ensure_topic(&broker.addr, &topic, 2, 1)
        .await
        .unwrap();
    // Five records signed before the rotation, still in Kafka.
    let fleet = collector::simulated::SimulatedSource::new(collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 2,
        seed: 3,
    });
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &topic)).unwrap();
    let signer = RecordSigner::new(&secrecy::SecretString::from(old.to_string()));
    let t0 = collector::sampler::now_ms() - 60_000;
    for i in 0..5 {
        producer
            .send(&seal(&signer, &fleet.batch(0, t0 + i * 1000)))
            .await
            .unwrap();
    }

    let grpc = free_port();
    let (_api, base) = spawn_api_with(grpc, &["--secret-dir", &dir], &[]);
    let http = reqwest::Client::new();
    let metrics = || {
        let http = http.clone();
        let url = n.streamer_metrics();
        async move { get_text(&http, &url).await }
    };

    // Without the retired token, the restarted streamer cannot verify them.
    let mut first = spawn_streamer_with(&broker, &n, grpc, &["--secret-dir", &dir], &[]);
    eventually(Duration::from_secs(60), "old records rejected", || async {
        let text = metrics().await?;
        (integration_tests::metric_value(
            &text,
            "streamer_records_rejected_total{reason=\"unknown_key_id\"}",
        ) == Some(5))
        .then_some(())
    })
    .await;
    first.kill9();

    // With it (file service-token-previous), every old record is stored again.
    write_atomically(
        secrets.path(),
        "service-token-previous",
        &format!("{old}\n"),
    );
    // A new group: the killed member would otherwise hold up the join until its session ends.
    let n2 = Names {
        group: unique("retired-group-2"),
        ..n.clone()
    };
    let _second = spawn_streamer_with(&broker, &n2, grpc, &["--secret-dir", &dir], &[]);
    let text = eventually(Duration::from_secs(60), "old records stored", || async {
        let text = metrics().await?;
        (integration_tests::metric_value(&text, "streamer_samples_stored_total") == Some(10))
            .then_some(text)
    })
    .await;
    assert!(
        series_of(&text, "streamer_records_rejected_total").is_empty(),
        "{text}"
    );
    // The api's mirror follows the new streamer within a reconnect.
    eventually(
        Duration::from_secs(30),
        "the api shows the rebuilt history",
        || async { (sample_count(&http, &base, key).await == Some(5)).then_some(()) },
    )
    .await;
}

/// RFC 3339 of UTC ms, for `service-token-previous`.
fn rfc3339(ms: i64) -> String {
    api::model::rfc3339_ms(ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_token_verifies_only_records_from_before_its_retirement_and_a_revoked_one_none() {
    use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
    use telemetry_wire::RecordSigner;
    use telemetry_wire::wire::seal;

    let secrets = tempfile::tempdir().unwrap();
    let dir = secrets.path().to_str().unwrap().to_string();
    let (old, new) = (
        "service-token-leaked-0123456789",
        "service-token-fresh-0123456789",
    );
    write_atomically(secrets.path(), "service-token", new);
    let broker = Broker::start();
    let n = Names::fresh("retired-at");
    let grpc = free_port();
    let fleet = collector::simulated::SimulatedSource::new(collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 1,
        seed: 5,
    });
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();
    let old_signer = RecordSigner::new(&secrecy::SecretString::from(old.to_string()));
    let now = collector::sampler::now_ms;

    // A record signed with the old token while it was still the one in use (the topic made
    // as the streamer makes it: the broker stamps append times).
    msg_queue_client::topic::ensure_topic(&broker.addr, &n.topic, 4, 1)
        .await
        .unwrap();
    producer
        .send(&seal(&old_signer, &fleet.batch(0, now() - 1_000)))
        .await
        .unwrap();
    // Then it is retired (its time stated) and the streamer starts: it replays the record,
    // appended before the retirement, and stores it.
    let retired_at = now();
    write_atomically(
        secrets.path(),
        "service-token-previous",
        &format!("{old} {}\n", rfc3339(retired_at)),
    );
    let mut streamer = spawn_streamer_with(
        &broker,
        &n,
        grpc,
        &["--secret-dir", &dir, "--secret-reload-interval", "200ms"],
        &[("RUST_LOG", "info".to_string())],
    );
    let http = reqwest::Client::new();
    let counter = |name: &'static str| {
        let (http, url) = (http.clone(), n.streamer_metrics());
        async move {
            let text = get_text(&http, &url).await?;
            integration_tests::metric_value(&text, name)
        }
    };
    eventually(
        Duration::from_secs(60),
        "the first record stored",
        || async { (counter("streamer_samples_stored_total").await == Some(1)).then_some(()) },
    )
    .await;

    // Backdating the batch does not help: the broker stamps the record when it appends it
    // (or the producer does, and that is after the retirement too).
    producer
        .send(&seal(&old_signer, &fleet.batch(0, retired_at - 30_000)))
        .await
        .unwrap();
    producer
        .send(&seal(&old_signer, &fleet.batch(0, now())))
        .await
        .unwrap();
    // Counted as rejected when their batch is handled, as dead-lettered once the dead-letter
    // topic has them: wait for both.
    eventually(
        Duration::from_secs(60),
        "both late records refused and dead-lettered",
        || async {
            (counter("streamer_records_rejected_total{reason=\"retired_token\"}").await == Some(2)
                && counter("streamer_dead_lettered_total").await == Some(2))
            .then_some(())
        },
    )
    .await;
    assert_eq!(counter("streamer_samples_stored_total").await, Some(1));

    // Revoked (it leaked): not even records from before count any more.
    write_atomically(
        secrets.path(),
        "service-token-previous",
        &format!("{old} revoked\n"),
    );
    streamer.wait_line("retired values reloaded", Duration::from_secs(10));
    producer
        .send(&seal(&old_signer, &fleet.batch(0, retired_at - 60_000)))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "a revoked token's record refused",
        || async {
            (counter("streamer_records_rejected_total{reason=\"unknown_key_id\"}").await == Some(1))
                .then_some(())
        },
    )
    .await;
    assert_eq!(counter("streamer_samples_stored_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_command_patches_the_secret_and_waits_until_every_component_uses_the_new_values()
 {
    let secrets = Secrets::kubernetes().await;
    let Secrets::Kubernetes(fake, kube_dir) = &secrets else {
        unreachable!()
    };
    let (k1, t1) = (
        "api-key-before-0123456789abcdef",
        "service-token-before-0123456789",
    );
    secrets.set("api-key", k1);
    secrets.set("service-token", t1);
    let mut flags = args(&[
        "--secret-source",
        "kubernetes",
        "--secret-name",
        "auth",
        "--secret-grace",
        "20s",
        "--secret-signing-delay",
        "1s",
    ]);
    let flags_ref: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = secrets.env();
    let broker = Broker::start();
    let n = Names::fresh("rotcmd");
    let grpc = free_port();
    let mut streamer = spawn_streamer_with(&broker, &n, grpc, &flags_ref, &env);
    let (mut api, base) = spawn_api_with(grpc, &flags_ref, &env);
    let metrics_port = free_port();
    flags.extend(integration_tests::simulated_collector_args(
        &broker, &n.topic,
    ));
    flags.extend(args(&[
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]));
    let mut collector = Proc::spawn("collector", &bin("collector"), &flags, &env);
    let api_port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    fake.add_pod(
        "telemetry",
        "api-0",
        "my-telemetry",
        "api",
        "http",
        api_port,
        &base,
    );
    fake.add_pod(
        "telemetry",
        "collector-node-a",
        "my-telemetry",
        "collector",
        "metrics",
        metrics_port,
        &format!("http://127.0.0.1:{metrics_port}"),
    );
    fake.add_pod(
        "telemetry",
        "streamer-0",
        "my-telemetry",
        "streamer",
        "metrics",
        n.streamer_metrics_port,
        &format!("http://127.0.0.1:{}", n.streamer_metrics_port),
    );
    // Another release's pod is none of this command's business.
    fake.add_pod(
        "telemetry",
        "api-other",
        "other",
        "api",
        "http",
        1,
        "http://127.0.0.1:1",
    );
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), "samples flowing", || async {
        sample_count(&http, &base, k1).await.filter(|c| *c >= 5)
    })
    .await;

    let kubeconfig = fake.kubeconfig(kube_dir.path(), "telemetry");
    let command = |extra: &[&str]| {
        let mut a = args(&[
            "rotate-secrets",
            "--release",
            "my-telemetry",
            "-n",
            "telemetry",
        ]);
        a.extend(args(extra));
        Proc::spawn(
            "rotate-secrets",
            &bin("api"),
            &a,
            &[("KUBECONFIG", kubeconfig.display().to_string())],
        )
    };
    // The chart's Secret name is not there (this test's is `auth`): one line, nothing done.
    let mut missing = command(&[]);
    assert!(!missing.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        missing.lines_so_far(),
        [format!(
            "api rotate-secrets: cannot read Secret telemetry/my-telemetry-telemetry-stack-auth through the Kubernetes API at {}/: it does not exist",
            fake.url
        )]
    );

    let started = Instant::now();
    let mut rotate = command(&["--secret-name", "auth", "--grace", "20s", "--wait", "60s"]);
    assert!(rotate.wait_exit(Duration::from_secs(90)).success());
    let out = rotate.lines_so_far().to_vec();
    println!(
        "rotation command done in {:?}:\n{}",
        started.elapsed(),
        out.join("\n")
    );
    let data = fake.data("telemetry", "auth").unwrap();
    let (k2, t2) = (data["api-key"].clone(), data["service-token"].clone());
    for v in [&k2, &t2] {
        assert!(
            v.len() == 64 && v.bytes().all(|c| c.is_ascii_hexdigit()),
            "strong: 64 hex digits"
        );
    }
    assert_ne!(k2, k1);
    assert_ne!(t2, t1);
    let (old_line, rest) = data["service-token-previous"].split_once('\n').unwrap();
    assert_eq!(rest, "");
    let (retired, at) = old_line.split_once(' ').unwrap();
    assert_eq!(
        retired, t1,
        "the replaced token is kept as retired, with its time"
    );
    let fp = |v: &str| common_auth::fingerprint(v.as_bytes());
    assert!(
        out[0].starts_with("rotated Secret telemetry/auth (resourceVersion "),
        "{out:?}"
    );
    assert_eq!(out[1], format!("  api-key        {} → {}", fp(k1), fp(&k2)));
    assert_eq!(
        out[2],
        format!(
            "  service-token  {} → {} (the old one retired at {at}, kept in service-token-previous with 0 others)",
            fp(t1),
            fp(&t2)
        )
    );
    let last = out.last().unwrap();
    assert!(
        last.starts_with(
            "every component uses the new values (1 api pod, 1 collector pod, the streamer, 1 node signing) after "
        ),
        "{out:?}"
    );
    assert!(
        fake.requests()
            .contains(&"PATCH telemetry/auth application/merge-patch+json".to_string())
    );

    // The services really use them: the new key works, the old one in its grace period.
    let gpus = format!("{base}/api/v1/gpus");
    assert_eq!(status(&http, &gpus, &k2).await, 200);
    assert_eq!(status(&http, &gpus, k1).await, 200);
    let metrics = get_text(&http, &n.streamer_metrics()).await.unwrap();
    assert!(
        metrics.contains(&format!(
            "streamer_signer_info{{node=\"sim-node-000\",fingerprint=\"{}\"}} 1",
            fp(&t2)
        )),
        "{metrics}"
    );
    assert!(
        series_of(&metrics, "streamer_records_rejected_total").is_empty(),
        "nothing rejected across the rotation: {metrics}"
    );
    // Nobody printed a value: the command, or any service.
    let mut all: Vec<String> = out.clone();
    for p in [&mut streamer, &mut api, &mut collector] {
        all.extend(p.lines_so_far().iter().cloned());
    }
    for value in [k1, t1, &k2, &t2, SA_TOKEN] {
        let leaks: Vec<&String> = all.iter().filter(|l| l.contains(value)).collect();
        assert!(leaks.is_empty(), "a value appears in: {leaks:?}");
    }
}
