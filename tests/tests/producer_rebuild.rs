//! A broker that forgets the idempotent producer (tansu's memory engine after a restart)
//! makes librdkafka's producer fail fatally; the TelemetryProducer rebuilds itself and
//! delivers again instead of stalling.

use std::time::Duration;

use integration_tests::{Broker, eventually, unique};
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use secrecy::SecretString;
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{SCHEMA_VERSION, TelemetryBatch, seal};

fn record(n: i64) -> telemetry_wire::wire::SignedRecord {
    let batch = TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        node: "node-a".into(),
        collected_at_ms: 1_790_000_000_000 + n,
        ..Default::default()
    };
    seal(
        &RecordSigner::new(&SecretString::from("t".to_string())),
        &batch,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_recovers_after_the_broker_forgets_it() {
    let mut broker = Broker::start();
    let topic = unique("rebuild");
    msg_queue_client::topic::ensure_topic(&broker.addr, &topic, 1, 1)
        .await
        .unwrap();
    let mut cfg = ProducerConfig::new(&broker.addr, &topic);
    cfg.message_timeout = Duration::from_secs(3);
    cfg.stall_timeout = Duration::from_secs(5);
    let producer = TelemetryProducer::new(cfg).unwrap();
    for n in 0..5 {
        producer.send(&record(n)).await.unwrap();
    }

    broker.restart(); // memory engine: topic and producer state are gone
    msg_queue_client::topic::ensure_topic(&broker.addr, &topic, 1, 1)
        .await
        .unwrap();

    let mut n = 100;
    let delivered = eventually(
        Duration::from_secs(60),
        "a delivery after the restart",
        || {
            n += 1;
            let p = producer.clone();
            // Until the rebuild these time out (the stall), after it they are delivered.
            async move { p.send(&record(n)).await.ok() }
        },
    )
    .await;
    assert_eq!(
        delivered.offset, 0,
        "the first record of the recreated topic"
    );
    assert!(
        producer.rebuilds() >= 1,
        "recovered by rebuilding the producer"
    );
}
