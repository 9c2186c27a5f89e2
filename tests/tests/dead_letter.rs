//! Rejected records: garbage and forgeries are dead-lettered, counted, and never served.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{
    Broker, Names, eventually, free_port, get_json, get_text, metric_value, spawn_api,
    spawn_streamer, unique,
};
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::SecretString;
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch, header, seal};

/// A record read back from a dead-letter topic.
struct DeadLetter {
    headers: BTreeMap<String, Vec<u8>>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// The first `count` records of dead-letter topic `topic`.
async fn dead_letters(broker: &Broker, topic: &str, count: usize) -> Vec<DeadLetter> {
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("dead-letter records within 30 s")
            .unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(DeadLetter {
            headers,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        });
    }
    out
}

fn batch(node: &str, uuid: &str, util: u32) -> TelemetryBatch {
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        node: node.into(),
        collected_at_ms: 1_790_000_000_000,
        gpus: vec![GpuInfo {
            uuid: uuid.into(),
            index: 0,
            name: "test GPU".into(),
            node: node.into(),
            ..Default::default()
        }],
        samples: vec![GpuSample {
            uuid: uuid.into(),
            timestamp_ms: 1_790_000_000_000,
            gpu_utilization_percent: Some(util),
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_records_are_dead_lettered_counted_and_never_served() {
    let broker = Broker::start();
    let n = Names::fresh("dlq");
    let grpc = free_port();
    let _streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let token = SecretString::from(n.token.clone());
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();

    // 1. Random bytes, no headers.
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let garbage: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(97).wrapping_add(13))
        .collect();
    raw.send(
        FutureRecord::to(&n.topic)
            .key("evil-node")
            .payload(&garbage),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // 2. A well-formed batch signed with a token the streamer does not know.
    let forger = RecordSigner::new(&SecretString::from("not-the-token".to_string()));
    producer
        .send(&seal(&forger, &batch("evil-node", "GPU-forged-1", 99)))
        .await
        .unwrap();
    // 3. A genuine signature moved onto a forged value (right key id, wrong MAC).
    let signer = RecordSigner::new(&token);
    let mut tampered = seal(&signer, &batch("evil-node", "GPU-forged-2", 1));
    tampered.value = batch("evil-node", "GPU-forged-2", 100).encode_to_vec();
    producer.send(&tampered).await.unwrap();
    // 4. A good record after them: consumption goes on.
    producer
        .send(&seal(&signer, &batch("good-node", "GPU-good", 42)))
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let (gpus, metrics) = eventually(
        Duration::from_secs(60),
        "good record stored and rejects counted",
        || async {
            let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
            let text = get_text(&http, &n.streamer_metrics()).await?;
            (gpus["count"] == 1 && metric_value(&text, "streamer_dead_lettered_total") == Some(3))
                .then_some((gpus, text))
        },
    )
    .await;
    assert_eq!(gpus["gpus"][0]["uuid"], "GPU-good");
    assert_eq!(gpus["gpus"][0]["latest"]["gpu_utilization_percent"], 42);
    for reason in ["unsigned", "unknown_key_id", "bad_signature"] {
        let line = format!("streamer_records_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(
            metric_value(&metrics, &line),
            Some(1),
            "{line} in\n{metrics}"
        );
    }
    assert_eq!(
        metric_value(&metrics, "streamer_records_total"),
        Some(4),
        "{metrics}"
    );
    for uuid in ["GPU-forged-1", "GPU-forged-2"] {
        let (status, body) = get_json(
            &http,
            &format!("{base}/api/v1/gpus/{uuid}"),
            Some(&n.api_key),
        )
        .await;
        assert_eq!(status, 404, "{body}");
    }

    // The dead-letter topic has the three records, unchanged, each with its reason.
    let mut got = BTreeMap::new();
    for d in dead_letters(&broker, &n.dead_letter, 3).await {
        let reason = String::from_utf8(d.headers[header::REJECT_REASON].clone()).unwrap();
        assert_eq!(d.headers[header::SOURCE_TOPIC], n.topic.as_bytes());
        got.insert(reason, d.payload.unwrap_or_default());
    }
    assert_eq!(got["unsigned"], garbage);
    assert_eq!(got["bad_signature"], tampered.value);
    assert_eq!(
        TelemetryBatch::decode(&got["unknown_key_id"][..])
            .unwrap()
            .samples[0]
            .uuid,
        "GPU-forged-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_claiming_another_nodes_gpu_is_dead_lettered() {
    let broker = Broker::start();
    let n = Names::fresh("steal");
    let grpc = free_port();
    let _streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let signer = RecordSigner::new(&SecretString::from(n.token.clone()));
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();
    let now = collector::sampler::now_ms();
    let mut owned = batch("node-a", "GPU-owned", 10);
    owned.collected_at_ms = now;
    owned.samples[0].timestamp_ms = now;
    producer.send(&seal(&signer, &owned)).await.unwrap();
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), "node-a's GPU stored", || async {
        let (s, _) = get_json(
            &http,
            &format!("{base}/api/v1/gpus/GPU-owned"),
            Some(&n.api_key),
        )
        .await;
        (s == 200).then_some(())
    })
    .await;
    // node-b (a genuine signer) claims it while node-a reports it.
    let mut stolen = batch("node-b", "GPU-owned", 99);
    stolen.collected_at_ms = now + 1000;
    stolen.samples[0].timestamp_ms = now + 1000;
    producer.send(&seal(&signer, &stolen)).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the claim dead-lettered",
        || async {
            let text = get_text(&http, &n.streamer_metrics()).await?;
            (metric_value(
                &text,
                "streamer_records_rejected_total{reason=\"invalid_batch\"}",
            ) == Some(1)
                && metric_value(&text, "streamer_dead_lettered_total") == Some(1))
            .then_some(())
        },
    )
    .await;
    let (_, gpu) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/GPU-owned"),
        Some(&n.api_key),
    )
    .await;
    assert_eq!(gpu["node"], "node-a");
    assert_eq!(gpu["latest"]["gpu_utilization_percent"], 10);
    assert_eq!(gpu["sample_count"], 1);
}

/// Key, value and headers of a record produced as is.
type RawRecord = (String, Vec<u8>, Vec<(String, Vec<u8>)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_is_dead_lettered_about_as_fast_as_valid_records_are_stored_with_few_log_lines()
 {
    const N: usize = 10_000;
    let broker = Broker::start();
    let n = Names::fresh("flood");
    let grpc = free_port();
    let mut streamer = integration_tests::spawn_streamer_with(
        &broker,
        &n,
        grpc,
        &[],
        &[
            ("SERVICE_TOKEN", n.token.clone()),
            ("RUST_LOG", "info".to_string()),
        ],
    );
    let http = reqwest::Client::new();
    let counter = |name: &'static str| {
        let (http, url) = (http.clone(), n.streamer_metrics());
        async move {
            let text = get_text(&http, &url).await?;
            metric_value(&text, name)
        }
    };
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let send_all = |values: Vec<RawRecord>| {
        let raw = raw.clone();
        let topic = n.topic.clone();
        async move {
            let sends = values.iter().map(|(key, value, headers)| {
                let mut h = rdkafka::message::OwnedHeaders::new();
                for (k, v) in headers {
                    h = h.insert(rdkafka::message::Header {
                        key: k,
                        value: Some(v),
                    });
                }
                raw.send(
                    FutureRecord::to(&topic).key(key).payload(value).headers(h),
                    Duration::from_secs(30),
                )
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).unwrap();
            }
        }
    };
    // N valid records (one node, one GPU, a sample each), then N unsigned ones.
    let token = SecretString::from(n.token.clone());
    let signer = RecordSigner::new(&token);
    let now = collector::sampler::now_ms() - N as i64;
    let valid: Vec<_> = (0..N)
        .map(|i| {
            let mut b = batch("flood-node", "GPU-flood", (i % 100) as u32);
            b.collected_at_ms = now + i as i64;
            b.samples[0].timestamp_ms = now + i as i64;
            let r = seal(&signer, &b);
            (
                String::from_utf8(r.key).unwrap(),
                r.value,
                vec![
                    (header::KEY_ID.to_string(), r.key_id.into_bytes()),
                    (header::SIGNATURE.to_string(), r.signature.to_vec()),
                ],
            )
        })
        .collect();
    let junk: Vec<_> = (0..N)
        .map(|i| {
            (
                "junk-node".to_string(),
                format!("junk {i}").into_bytes(),
                vec![],
            )
        })
        .collect();

    let t = std::time::Instant::now();
    send_all(valid).await;
    eventually(Duration::from_secs(120), "valid records stored", || async {
        (counter("streamer_samples_stored_total").await == Some(N as u64)).then_some(())
    })
    .await;
    let valid_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    send_all(junk).await;
    eventually(Duration::from_secs(120), "junk dead-lettered", || async {
        (counter("streamer_dead_lettered_total").await == Some(N as u64)).then_some(())
    })
    .await;
    let junk_s = t.elapsed().as_secs_f64();
    let ratio = junk_s / valid_s;
    let lines = streamer
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("rejected"))
        .count();
    println!(
        "{N} valid records produced and stored in {valid_s:.2} s ({:.0}/s); {N} unsigned produced and dead-lettered in {junk_s:.2} s ({:.0}/s): ratio {ratio:.2}; {lines} log lines about rejects",
        N as f64 / valid_s,
        N as f64 / junk_s
    );
    assert_eq!(
        counter("streamer_records_rejected_total{reason=\"unsigned\"}").await,
        Some(N as u64)
    );
    // A summary per reason at most every 10 s, not a line per record.
    assert!(lines <= 5, "{lines} lines");
    // Before batching: about 500 times slower than valid records. The target is 2x; the bound
    // here leaves room for a noisy shared machine.
    assert!(
        ratio < 4.0,
        "junk took {ratio:.2} times as long as valid records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_is_dead_lettered_by_reference_in_bounded_memory_and_survives_a_restart()
{
    let broker = Broker::start();
    let n = Names::fresh("bomb");
    let grpc = free_port();
    let mut streamer = spawn_streamer(&broker, &n, grpc);
    let (_api, base) = spawn_api(&n, grpc);
    let signer = RecordSigner::new(&SecretString::from(n.token.clone()));
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &n.topic)).unwrap();
    let http = reqwest::Client::new();
    let counter = |name: String| {
        let (http, url) = (http.clone(), n.streamer_metrics());
        async move {
            let text = get_text(&http, &url).await?;
            metric_value(&text, &name)
        }
    };
    producer
        .send(&seal(&signer, &batch("node-a", "GPU-before", 1)))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the first record stored",
        || async {
            (counter("streamer_samples_stored_total".into()).await == Some(1)).then_some(())
        },
    )
    .await;
    let settled_kib = streamer.status_kib("VmRSS");

    // 128 MiB of zeros, gzip-compressed by the producer to about 128 KB: under the broker's
    // 1 MB message limit, 128 MiB once librdkafka inflates it in the streamer.
    const BOMB: usize = 128 << 20;
    let bomber: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("compression.type", "gzip")
        .set("message.max.bytes", "300000000")
        .create()
        .unwrap();
    let zeros = vec![0u8; BOMB];
    let rdkafka::producer::future_producer::Delivery {
        partition, offset, ..
    } = bomber
        .send(
            FutureRecord::to(&n.topic).key("node-a").payload(&zeros),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    drop(zeros);
    producer
        .send(&seal(&signer, &batch("node-a", "GPU-after", 2)))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the bomb dead-lettered and the next record stored",
        || async {
            let too_large =
                counter("streamer_records_rejected_total{reason=\"record_too_large\"}".into())
                    .await;
            let stored = counter("streamer_samples_stored_total".into()).await;
            (too_large == Some(1) && stored == Some(2)).then_some(())
        },
    )
    .await;
    assert_eq!(
        counter("streamer_dead_lettered_total".into()).await,
        Some(1)
    );
    let peak_kib = streamer.status_kib("VmHWM");
    let after_kib = streamer.status_kib("VmRSS");
    println!(
        "compression bomb of {} MiB: streamer RSS {settled_kib} kB before, peak {peak_kib} kB, {after_kib} kB after",
        BOMB >> 20
    );
    // One inflated copy (librdkafka's), none of ours: the peak stays under two bombs.
    assert!(
        peak_kib < settled_kib + 2 * (BOMB as u64 >> 10),
        "peak {peak_kib} kB"
    );

    // In the dead-letter topic: a reference, not the 128 MiB.
    let d = dead_letters(&broker, &n.dead_letter, 1).await.remove(0);
    assert_eq!(d.payload, None);
    assert_eq!(d.key, None);
    let headers = d.headers;
    let text = |k: &str| String::from_utf8(headers[k].clone()).unwrap();
    assert_eq!(text(header::REJECT_REASON), "record_too_large");
    assert_eq!(
        text(header::RECORD_BYTES),
        (BOMB + "node-a".len()).to_string()
    );
    assert_eq!(text(header::SOURCE_TOPIC), n.topic);
    assert_eq!(text(header::SOURCE_PARTITION), partition.to_string());
    assert_eq!(text(header::SOURCE_OFFSET), offset.to_string());

    // Killed and restarted (replaying what its store had not made durable, the bomb
    // included): it handles the bomb the same way and serves on, no crash loop.
    streamer.kill9();
    let mut again = spawn_streamer(&broker, &n, grpc);
    eventually(
        Duration::from_secs(60),
        "the restarted streamer serving both GPUs",
        || async {
            let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
            (gpus["count"] == 2).then_some(())
        },
    )
    .await;
    assert!(again.child.try_wait().unwrap().is_none(), "still running");
    println!("restarted streamer: peak {} kB", again.status_kib("VmHWM"));
}
