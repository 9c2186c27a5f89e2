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
            let text = get_text(&http, &format!("{base}/metrics")).await?;
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
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&n.dead_letter]).unwrap();
    let mut got = BTreeMap::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("dead-letter records within 30 s")
            .unwrap();
        let headers: BTreeMap<String, Vec<u8>> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let reason = String::from_utf8(headers[header::REJECT_REASON].clone()).unwrap();
        assert_eq!(headers[header::SOURCE_TOPIC], n.topic.as_bytes());
        got.insert(reason, m.payload().unwrap_or_default().to_vec());
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
