//! The `victoriametrics` history backend against a real VictoriaMetrics (issue 11): every
//! metric of a simulated batch lands under its Prometheus name with its exact values and
//! timestamps, writing a batch again (a redelivery after a rebalance or a kill -9) stores
//! nothing twice, an outage holds ingest without losing anything, and `/telemetry` read
//! back from it is the builtin store's answer byte for byte.

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

    // A GPU whose only sample is years old is still known (VictoriaMetrics reads a series
    // query's `start=0` as unset and then looks one day back: the reader asks from 1 s).
    let old_gpu = telemetry_wire::wire::TelemetryBatch {
        node: "old-node".into(),
        samples: vec![telemetry_wire::wire::GpuSample {
            uuid: "GPU-old".into(),
            timestamp_ms: 1_000_000_000_000, // 2001-09-09
            gpu_utilization_percent: Some(5),
            ..Default::default()
        }],
        ..Default::default()
    };
    writer.write(&old_gpu).await.unwrap();
    vm.flush(&http).await;
    let reader = streamer::remote_write::VictoriaReader::new(
        &vm.url,
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(reader.knows("GPU-old").await.unwrap());
    assert!(reader.knows(&uuid).await.unwrap());
    assert!(!reader.knows("GPU-never").await.unwrap());

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
    // An endpoint that never answers (a port held, nothing served): try again later.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = RemoteWriter::new(
        &format!("http://{}/api/v1/write", silent.local_addr().unwrap()),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(matches!(
        gone.write(&batches[0]).await,
        Err(WriteError::Retry { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamer_writing_to_victoriametrics_killed_mid_stream_leaves_every_sample_there_once() {
    use integration_tests::{
        Broker, Names, free_port, spawn_api, spawn_collector, spawn_streamer_with,
    };
    const SPEC: collector::simulated::FleetSpec = collector::simulated::FleetSpec {
        nodes: 2,
        gpus_per_node: 2,
        seed: 21,
    };
    const ROUNDS: u64 = 60;
    let vm = VictoriaMetrics::start();
    let broker = Broker::start();
    let n = Names::fresh("vm-kill9");
    let grpc = free_port();
    let flags = [
        "--history-backend",
        "victoriametrics",
        "--victoriametrics-url",
        vm.url.as_str(),
    ];
    let token = [("SERVICE_TOKEN", n.token.clone())];
    let mut streamer = spawn_streamer_with(&broker, &n, grpc, &flags, &token);
    let (_api, base) = spawn_api(&n, grpc);
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", ROUNDS);
    let http = reqwest::Client::new();

    // Kill -9 once part of the stream is in.
    integration_tests::wait_for_some_samples(&http, &base, &n.api_key).await;
    assert!(
        matches!(collector.child.try_wait(), Ok(None)),
        "the collector is still producing when the streamer dies"
    );
    streamer.kill9();
    // The new one resumes at the group's last commit: what the killed one wrote after it is
    // written again, at the same timestamps.
    let _restarted = spawn_streamer_with(&broker, &n, grpc, &flags, &token);
    assert!(collector.wait_exit(Duration::from_secs(60)).success());

    // Every GPU's every sample, once, with its exact values: in VictoriaMetrics and so in
    // the API, which reads its history from there.
    let gpus = integration_tests::wait_for_rounds(&http, &base, &n.api_key, 4, ROUNDS).await;
    let stamps =
        integration_tests::assert_exact_samples(&http, &base, &n.api_key, SPEC, &gpus).await;
    assert!(
        stamps.values().all(|s| s.len() == ROUNDS as usize),
        "{stamps:?}"
    );
    vm.flush(&http).await;
    let util = metric::find("gpu_utilization_percent").unwrap();
    for g in &gpus {
        let uuid = g["uuid"].as_str().unwrap();
        let series = vm
            .export(
                &http,
                &format!("{}{{uuid=\"{uuid}\"}}", util.prometheus_name()),
            )
            .await;
        assert_eq!(series.len(), 1, "one series for {uuid}");
        let (labels, ts, _) = &series[0];
        assert_eq!(labels["node"], g["node"]);
        let mut ts = ts.clone();
        ts.sort_unstable();
        assert_eq!(
            &ts, &stamps[uuid],
            "{uuid}: each sample once in VictoriaMetrics"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_victoriametrics_is_down_batches_wait_and_nothing_is_lost_or_doubled() {
    use integration_tests::{
        Broker, Names, eventually, free_port, get_text, metric_value, spawn_collector,
        spawn_streamer_with,
    };
    const SPEC: collector::simulated::FleetSpec = collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 2,
        seed: 4,
    };
    const ROUNDS: u64 = 40;
    let vm = VictoriaMetrics::start();
    // The streamer reaches VictoriaMetrics through a proxy the test can cut: its port stays
    // held throughout (a stopped VictoriaMetrics would free its port for anyone to take).
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let target = vm.url.trim_start_matches("http://").to_string();
    let gate = up.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = proxy.accept().await {
            if !gate.load(std::sync::atomic::Ordering::SeqCst) {
                continue; // dropped: the connection is reset, as with nobody listening
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let broker = Broker::start();
    let n = Names::fresh("vm-down");
    let grpc = free_port();
    let flags = [
        "--history-backend",
        "victoriametrics",
        "--victoriametrics-url",
        proxy_url.as_str(),
    ];
    let _streamer = spawn_streamer_with(
        &broker,
        &n,
        grpc,
        &flags,
        &[("SERVICE_TOKEN", n.token.clone())],
    );
    let http = reqwest::Client::new();
    let stored = |http: reqwest::Client, url: String| async move {
        metric_value(
            &get_text(&http, &url).await?,
            "streamer_samples_stored_total",
        )
    };
    // VictoriaMetrics goes away before anything is written: batches fail and wait.
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", ROUNDS);
    assert!(collector.wait_exit(Duration::from_secs(60)).success());
    eventually(Duration::from_secs(30), "writes failing", || async {
        let text = get_text(&http, &n.streamer_metrics()).await?;
        (metric_value(&text, "streamer_errors_total{error_type=\"store\"}")? >= 2).then_some(())
    })
    .await;
    // Nothing taken while the remote is away: not even the streamer's own store.
    assert_eq!(
        stored(http.clone(), n.streamer_metrics()).await,
        Some(0),
        "a batch is stored only once the remote has it"
    );
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(60), "every sample stored", || async {
        (stored(http.clone(), n.streamer_metrics()).await == Some(2 * ROUNDS)).then_some(())
    })
    .await;
    let util = metric::find("gpu_utilization_percent").unwrap();
    let selector = format!("{}{{node=\"sim-node-000\"}}", util.prometheus_name());
    // Searchable once VictoriaMetrics has flushed what it took (it acknowledged every batch
    // before the streamer stored it).
    let series = eventually(
        Duration::from_secs(30),
        "every round searchable",
        || async {
            vm.flush(&http).await;
            let series = vm.export(&http, &selector).await;
            (series.len() == 2 && series.iter().all(|s| s.1.len() >= ROUNDS as usize))
                .then_some(series)
        },
    )
    .await;
    for (labels, ts, _) in &series {
        let distinct: std::collections::BTreeSet<&i64> = ts.iter().collect();
        assert_eq!(
            (ts.len(), distinct.len()),
            (ROUNDS as usize, ROUNDS as usize),
            "{labels}: every round, once"
        );
    }
}

#[test]
fn a_victoriametrics_backend_misconfigured_stops_startup_in_one_line() {
    use integration_tests::{Proc, args, bin};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let not_pem = not_pem.display().to_string();
    let vm = ["--history-backend", "victoriametrics"];
    let url = ["--victoriametrics-url", "http://vm.example:8428"];
    for (extra, said) in [
        (
            vec![],
            "streamer: --history-backend victoriametrics needs --victoriametrics-url (env VICTORIAMETRICS_URL)".to_string(),
        ),
        (
            vec!["--victoriametrics-url", "ftp://vm.example:8428"],
            "streamer: --victoriametrics-url must be an http:// or https:// URL".to_string(),
        ),
        (
            [&url[..], &["--victoriametrics-read-url", "vmselect:8481"]].concat(),
            "streamer: --victoriametrics-read-url must be an http:// or https:// URL".to_string(),
        ),
        (
            // The value (a credential) is never echoed.
            [&url[..], &["--victoriametrics-header", "Authorization Basic c2VjcmV0"]].concat(),
            "streamer: --victoriametrics-header: expected `Name: value` (one per line)".to_string(),
        ),
        (
            [&url[..], &["--victoriametrics-header", "X-Scope: sec\u{7}ret"]].concat(),
            "streamer: --victoriametrics-header x-scope: the value is not a valid header value".to_string(),
        ),
        (
            [&url[..], &["--victoriametrics-ca-file", "/no/such/ca.pem"]].concat(),
            "streamer: --victoriametrics-ca-file /no/such/ca.pem: cannot read it: No such file or directory (os error 2)".to_string(),
        ),
        (
            [&url[..], &["--victoriametrics-ca-file", not_pem.as_str()]].concat(),
            format!("streamer: --victoriametrics-ca-file {not_pem}: no certificate in it"),
        ),
    ] {
        let mut flags = vec!["--grpc-addr", "127.0.0.1:0", "--data-dir", data.as_str()];
        flags.extend(vm);
        flags.extend(extra);
        let mut p = Proc::spawn(
            "streamer",
            &bin("streamer"),
            &args(&flags),
            &[("SERVICE_TOKEN", "vm-config-test-token-0123456789".into())],
        );
        let status = p.wait_exit(Duration::from_secs(20));
        assert!(!status.success());
        let line = p.wait_line("streamer: ", Duration::from_secs(5));
        assert_eq!(line, said);
        assert!(!line.contains("c2VjcmV0") && !line.contains("sec"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_read_back_from_victoriametrics_is_byte_for_byte_the_builtin_answer() {
    use integration_tests::{
        Broker, Names, free_port, get_json, spawn_api, spawn_collector, spawn_streamer_with, unique,
    };
    const SPEC: collector::simulated::FleetSpec = collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 2,
        seed: 8,
    };
    const ROUNDS: u64 = 30;
    let vm = VictoriaMetrics::start();
    let broker = Broker::start();
    // Two streamers on the same topic in two groups: the builtin store, and VictoriaMetrics
    // (written to it, read back from it).
    let n = Names::fresh("vm-reads");
    let n_vm = Names {
        group: unique("vm-reads-vm"),
        data_dir: std::sync::Arc::new(tempfile::tempdir().unwrap()),
        streamer_metrics_port: free_port(),
        ..n.clone()
    };
    let (grpc, grpc_vm) = (free_port(), free_port());
    let token = [("SERVICE_TOKEN", n.token.clone())];
    let _builtin = spawn_streamer_with(&broker, &n, grpc, &[], &token);
    let _remote = spawn_streamer_with(
        &broker,
        &n_vm,
        grpc_vm,
        &[
            "--history-backend",
            "victoriametrics",
            "--victoriametrics-url",
            vm.url.as_str(),
        ],
        &token,
    );
    let (_api, base) = spawn_api(&n, grpc);
    let (_api_vm, base_vm) = spawn_api(&n_vm, grpc_vm);
    let mut collector = spawn_collector(&broker, &n, SPEC, "50ms", ROUNDS);
    assert!(collector.wait_exit(Duration::from_secs(60)).success());
    let http = reqwest::Client::new();
    for b in [&base, &base_vm] {
        integration_tests::wait_for_samples(&http, b, &n.api_key, 2, ROUNDS).await;
    }
    vm.flush(&http).await;
    let (_, list) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
    let window = "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z";
    let mut compared = 0;
    for g in list["gpus"].as_array().unwrap() {
        let uuid = g["uuid"].as_str().unwrap();
        for q in [
            window.to_string(),
            format!("{window}&limit=7"),
            format!("{window}&metrics=power_usage_watts,memory_used_bytes"),
            format!("{window}&step=1s&agg=avg"),
            format!("{window}&step=1s&agg=max&metrics=gpu_utilization_percent"),
            format!("{window}&step=1h&agg=count"),
        ] {
            let url = |b: &str| format!("{b}/api/v1/gpus/{uuid}/telemetry?{q}");
            let get = |u: String| {
                let http = http.clone();
                let key = n.api_key.clone();
                async move {
                    let r = http.get(u).header("x-api-key", key).send().await.unwrap();
                    (r.status().as_u16(), r.bytes().await.unwrap())
                }
            };
            let (s1, a) = get(url(&base)).await;
            let (s2, b) = get(url(&base_vm)).await;
            assert_eq!((s1, s2), (200, 200), "{q}");
            assert!(a.len() > 100, "{q}");
            assert_eq!(
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
                "{uuid} {q}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 12);
    // The second answers really come from VictoriaMetrics (equal answers alone would also
    // come from a streamer keeping a store of its own): a sample written to VictoriaMetrics
    // only is in its answer and not in the builtin one.
    let uuid = list["gpus"][0]["uuid"].as_str().unwrap().to_string();
    let only_in_vm = telemetry_wire::wire::TelemetryBatch {
        node: list["gpus"][0]["node"].as_str().unwrap().to_string(),
        samples: vec![telemetry_wire::wire::GpuSample {
            uuid: uuid.clone(),
            timestamp_ms: 1_000_000_000_000, // 2001-09-09T01:46:40Z
            gpu_utilization_percent: Some(77),
            ..Default::default()
        }],
        ..Default::default()
    };
    RemoteWriter::new(
        &format!("{}/api/v1/write", vm.url),
        reqwest::header::HeaderMap::new(),
        Duration::from_secs(10),
    )
    .unwrap()
    .write(&only_in_vm)
    .await
    .unwrap();
    vm.flush(&http).await;
    let q = "start_time=2001-09-09T00:00:00Z&end_time=2001-09-10T00:00:00Z&metrics=gpu_utilization_percent";
    let (_, from_vm) = get_json(
        &http,
        &format!("{base_vm}/api/v1/gpus/{uuid}/telemetry?{q}"),
        Some(&n.api_key),
    )
    .await;
    assert_eq!(
        from_vm["samples"],
        serde_json::json!([{"timestamp": "2001-09-09T01:46:40.000Z", "gpu_utilization_percent": 77}])
    );
    let (_, builtin) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/{uuid}/telemetry?{q}"),
        Some(&n.api_key),
    )
    .await;
    assert_eq!(builtin["samples"], serde_json::json!([]));
    // An unknown GPU is a 404 on both.
    let unknown = format!("{base_vm}/api/v1/gpus/GPU-unknown/telemetry?{window}");
    assert_eq!(get_json(&http, &unknown, Some(&n.api_key)).await.0, 404);
}

/// A private CA and a server certificate for 127.0.0.1 it signed (openssl, EC P-256):
/// (ca.pem, cert.pem, key.pem).
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n);
    let ext = p("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/install-test-deps installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// A TLS endpoint with `cert`/`key` in front of `target` (host:port); its port.
async fn tls_proxy(cert: &std::path::Path, key: &std::path::Path, target: String) -> u16 {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, target) = (acceptor.clone(), target.clone());
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to do.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_with_a_private_ca_samples_go_in_and_come_back_and_without_it_nothing_does() {
    use streamer::remote_write::{VictoriaReader, http_client};
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let port = tls_proxy(
        &cert,
        &key,
        vm.url.trim_start_matches("http://").to_string(),
    )
    .await;
    let https = format!("https://127.0.0.1:{port}");
    let fleet = collector::simulated::SimulatedSource::new(collector::simulated::FleetSpec {
        nodes: 1,
        gpus_per_node: 1,
        seed: 3,
    });
    let t0 = collector::sampler::now_ms() - 60_000;
    let batches: Vec<_> = (0..3).map(|i| fleet.batch(0, t0 + i * 1000)).collect();
    let uuid = batches[0].samples[0].uuid.clone();
    let none = reqwest::header::HeaderMap::new();

    // Without the CA: the certificate is refused, the write is "retry later", nothing lands.
    let untrusting = http_client(None, Duration::from_secs(10)).unwrap();
    let w = RemoteWriter::with_http(untrusting, &format!("{https}/api/v1/write"), none.clone());
    match w.write(&batches[0]).await {
        Err(WriteError::Retry { detail, .. }) => {
            assert!(detail.contains("certificate"), "{detail}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }

    // With it: every batch in, and read back over https exactly.
    let trusting = http_client(Some(&ca), Duration::from_secs(10)).unwrap();
    let w = RemoteWriter::with_http(
        trusting.clone(),
        &format!("{https}/api/v1/write"),
        none.clone(),
    );
    for b in &batches {
        w.write(b).await.unwrap();
    }
    vm.flush(&reqwest::Client::new()).await;
    let reader = VictoriaReader::with_http(trusting, &https, none);
    assert!(reader.knows(&uuid).await.unwrap());
    let values = |s: &telemetry_wire::wire::GpuSample| -> Vec<(String, f64)> {
        metric::values(s).map(|(k, v)| (k.to_string(), v)).collect()
    };
    let got: Vec<(i64, Vec<(String, f64)>)> = reader
        .readings(&uuid, t0, t0 + 3000)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.ts_ms, values(&r.to_wire())))
        .collect();
    let want: Vec<(i64, Vec<(String, f64)>)> = batches
        .iter()
        .map(|b| (b.samples[0].timestamp_ms, values(&b.samples[0])))
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got, want);
}
