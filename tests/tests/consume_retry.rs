//! The consume loop never skips a batch: store and offset-recording failures are retried
//! until they succeed, and every sample ends up stored exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use collector::simulated::{FleetSpec, SimulatedSource};
use common_auth::KeyRing;
use integration_tests::{Broker, eventually, unique};
use msg_queue_client::consumer::{ConsumerConfig, TelemetryConsumer};
use msg_queue_client::dead_letter::DeadLetterProducer;
use msg_queue_client::producer::{ProducerConfig, TelemetryProducer};
use secrecy::SecretString;
use streamer::StoreOffsets;
use streamer::ingest::Ingestor;
use streamer::metrics::StreamerMetrics;
use streamer::store::{
    Agg, AggRow, Applied, Block, DiskConfig, DiskHistory, History, Reading, SeriesState, Store,
    StoreError, Swept,
};
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{TelemetryBatch, seal};

/// A history whose first `apply` and `cover` calls fail.
struct FlakyHistory {
    inner: DiskHistory,
    apply_failures: AtomicU32,
    offset_failures: AtomicU32,
}

fn fail_once_more(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl History for FlakyHistory {
    fn apply(&self, batch: &TelemetryBatch) -> Result<(Applied, Vec<bool>), StoreError> {
        if fail_once_more(&self.apply_failures) {
            return Err(StoreError::Other("disk on fire (test)".into()));
        }
        self.inner.apply(batch)
    }
    fn cover(&self, next: &[(i32, i64)]) -> Result<(), StoreError> {
        if fail_once_more(&self.offset_failures) {
            return Err(StoreError::Other("fsync failed (test)".into()));
        }
        self.inner.cover(next)
    }
    fn resume_offset(&self, p: i32) -> Option<i64> {
        self.inner.resume_offset(p)
    }
    fn range(
        &self,
        uuid: &str,
        s: i64,
        e: i64,
        l: usize,
    ) -> Result<Option<(Vec<Reading>, bool)>, StoreError> {
        self.inner.range(uuid, s, e, l)
    }
    fn range_blocks(
        &self,
        uuid: &str,
        s: i64,
        e: i64,
        l: usize,
        encoded: bool,
        emit: &mut dyn FnMut(Block) -> bool,
    ) -> Result<Option<bool>, StoreError> {
        self.inner.range_blocks(uuid, s, e, l, encoded, emit)
    }
    fn aggregate(
        &self,
        uuid: &str,
        s: i64,
        e: i64,
        step: i64,
        agg: Agg,
        l: usize,
    ) -> Result<Option<(Vec<AggRow>, bool)>, StoreError> {
        self.inner.aggregate(uuid, s, e, step, agg, l)
    }
    fn flush(&self) -> Result<u64, StoreError> {
        self.inner.flush()
    }
    fn flush_due(&self) -> bool {
        self.inner.flush_due()
    }
    fn sweep(&self, now_ms: i64) -> Result<Swept, StoreError> {
        self.inner.sweep(now_ms)
    }
    fn series(&self) -> Result<Vec<SeriesState>, StoreError> {
        self.inner.series()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_retried_and_no_sample_is_skipped_or_doubled() {
    let broker = Broker::start();
    let (topic, dlq) = (unique("flaky"), unique("flaky-dlq"));
    for t in [&topic, &dlq] {
        msg_queue_client::topic::ensure_topic(&broker.addr, t, 2, 1)
            .await
            .unwrap();
    }
    let token = SecretString::from("flaky-token-0123456789".to_string());
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(FlakyHistory {
        inner: DiskHistory::open(DiskConfig::new(dir.path())).unwrap(),
        apply_failures: AtomicU32::new(3),
        offset_failures: AtomicU32::new(2),
    });
    let store = Arc::new(Store::open(flaky.clone()).unwrap());
    let metrics = Arc::new(StreamerMetrics::default());
    let consumer = TelemetryConsumer::new(
        &ConsumerConfig::new(&broker.addr, unique("g"), &topic),
        Arc::new(StoreOffsets(store.clone())),
    )
    .unwrap();
    let dead_letter = DeadLetterProducer::new(&broker.addr, &dlq, &topic, &[]).unwrap();
    let ingestor = Ingestor::new(KeyRing::new(token.clone()), store.clone(), metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(streamer::consume::run_consumer(
        consumer,
        ingestor,
        store.clone(),
        dead_letter,
        metrics.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let spec = FleetSpec {
        nodes: 3,
        gpus_per_node: 4,
        seed: 5,
    };
    let fleet = SimulatedSource::new(spec);
    let producer = TelemetryProducer::new(ProducerConfig::new(&broker.addr, &topic)).unwrap();
    let signer = RecordSigner::new(&token);
    let t0 = collector::sampler::now_ms() - 60_000;
    for round in 0..10 {
        for node in 0..spec.nodes {
            producer
                .send(&seal(&signer, &fleet.batch(node, t0 + round * 1000)))
                .await
                .unwrap();
        }
    }

    eventually(
        Duration::from_secs(60),
        "every sample stored despite the failures",
        || async { (store.latest().sample_count() == 3 * 4 * 10).then_some(()) },
    )
    .await;
    assert_eq!(
        flaky.apply_failures.load(Ordering::SeqCst),
        0,
        "the store did fail"
    );
    assert_eq!(
        flaky.offset_failures.load(Ordering::SeqCst),
        0,
        "offset recording did fail"
    );
    let snapshot = metrics.snapshot();
    let get = |name: &str, labels: &str| {
        snapshot
            .iter()
            .find(|(n, l, _)| *n == name && l == labels)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(get("streamer_samples_stored_total", ""), Some(120));
    assert_eq!(
        get("streamer_records_total", ""),
        Some(30),
        "each record counted once, though its batch was retried"
    );
    assert_eq!(
        get("streamer_errors_total", "error_type=\"store\""),
        Some(5)
    );
    for g in store.latest().list(None) {
        assert_eq!(g.sample_count, 10);
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("consumer stops")
        .unwrap();
}
