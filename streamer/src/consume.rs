//! The consume loop: fetch, ingest, dead-letter the rejects, then commit.
//!
//! Ordering that makes "nothing lost, nothing doubled" hold:
//! 1. a fetched batch is stored (idempotently) and its rejects are delivered to the
//!    dead-letter topic;
//! 2. only then are its offsets recorded in the store and committed to the group.
//!
//! A crash between 1 and 2 redelivers the batch, which the idempotent store absorbs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use msg_queue_client::consumer::TelemetryConsumer;
use msg_queue_client::dead_letter::DeadLetterProducer;

use crate::ingest::Ingestor;
use crate::metrics::StreamerMetrics;
use crate::store::Store;

/// Largest number of records handled as one batch.
pub const MAX_BATCH: usize = 2000;
/// How long to wait for more records once one has arrived.
pub const BATCH_LINGER: Duration = Duration::from_millis(20);

/// Runs until `shutdown` resolves; then commits once more, synchronously.
pub async fn run_consumer(
    consumer: TelemetryConsumer,
    ingestor: Ingestor,
    store: Arc<dyn Store>,
    dead_letter: DeadLetterProducer,
    metrics: Arc<StreamerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_committed: Vec<(i32, i64)> = Vec::new();
    'outer: loop {
        let records = tokio::select! {
            r = consumer.recv_batch(MAX_BATCH, BATCH_LINGER) => r,
            () = &mut shutdown => break,
        };
        let records = match records {
            Ok(r) => r,
            Err(error) => {
                metrics.error("consume");
                tracing::warn!(%error, "consume error");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let ingested = match ingestor.process(&records) {
            Ok(i) => i,
            Err(error) => {
                // Not committed: the records come back after a restart or rebalance.
                tracing::error!(%error, "store failed; batch not committed");
                continue;
            }
        };
        for (i, reject) in &ingested.rejected {
            let rec = &records[*i];
            tracing::warn!(
                reason = reject.reason(),
                %reject,
                partition = rec.partition,
                offset = rec.offset,
                "record rejected; sending to dead-letter topic"
            );
            // Retry until delivered: committing past an undelivered reject would lose it.
            loop {
                match dead_letter
                    .send(rec, reject.reason(), &reject.to_string())
                    .await
                {
                    Ok(()) => {
                        metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        metrics.error("dead_letter");
                        tracing::warn!(%error, "dead-letter delivery failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                            () = &mut shutdown => break 'outer,
                        }
                    }
                }
            }
        }
        if let Err(error) = store.record_offsets(&ingested.next_offsets) {
            metrics.error("store");
            tracing::error!(%error, "cannot record offsets in the store");
            continue;
        }
        if let Err(error) = consumer.commit(&ingested.next_offsets, false) {
            metrics.error("commit");
            tracing::warn!(%error, "commit failed (lag monitoring only; the store owns offsets)");
        }
        merge(&mut last_committed, &ingested.next_offsets);
    }
    if let Err(error) = consumer.commit(&last_committed, true) {
        tracing::warn!(%error, "final commit failed");
    }
    tracing::info!("consumer stopped");
}

fn merge(into: &mut Vec<(i32, i64)>, next: &[(i32, i64)]) {
    for &(p, o) in next {
        match into.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 = e.1.max(o),
            None => into.push((p, o)),
        }
    }
}
