//! The consume loop: fetch, ingest, dead-letter the rejects, then commit.
//!
//! Ordering that makes "nothing lost, nothing doubled" hold:
//! 1. a fetched batch is stored (idempotently) and its rejects are delivered to the
//!    dead-letter topic;
//! 2. only then are its offsets covered in the store (durable with the store's next flush,
//!    in the same transaction as the samples) and committed to the group.
//!
//! A crash before the flush loses the buffered samples and their offsets together: the
//! restarted consumer resumes at the last durable offset and reads them again; anything
//! read twice is absorbed by the idempotent store.

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

/// Backoff between retries of a failed step, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Sleeps `backoff` (then doubles it); `false` when `shutdown` came first.
async fn pause(
    backoff: &mut Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.as_mut() => false,
    }
}

/// Runs until `shutdown` resolves; then commits once more, synchronously.
///
/// A fetched batch is never skipped: the consumer has already moved past it, so each step
/// (store, dead-letter, record offsets) is retried with backoff until it succeeds or the
/// streamer stops; a stop before the offsets are recorded means the batch is read again
/// after the restart, which the idempotent store absorbs.
pub async fn run_consumer(
    consumer: TelemetryConsumer,
    ingestor: Ingestor,
    store: Arc<Store>,
    dead_letter: DeadLetterProducer,
    metrics: Arc<StreamerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut reject_log = RejectLog::default();
    let mut last_committed: Vec<(i32, i64)> = Vec::new();
    let mut consume_backoff = FIRST_BACKOFF;
    'outer: loop {
        let records = tokio::select! {
            r = consumer.recv_batch(MAX_BATCH, BATCH_LINGER) => r,
            () = &mut shutdown => break,
        };
        let records = match records {
            Ok(r) => {
                consume_backoff = FIRST_BACKOFF;
                r
            }
            Err(error) => {
                metrics.error("consume");
                tracing::warn!(%error, "consume error");
                if pause(&mut consume_backoff, &mut shutdown).await {
                    continue;
                }
                break;
            }
        };

        // 1. Store (on a blocking thread: the store writes to disk).
        let records = Arc::new(records);
        let mut backoff = FIRST_BACKOFF;
        let ingested = loop {
            let (ing, recs) = (ingestor.clone(), records.clone());
            let done = tokio::task::spawn_blocking(move || ing.process(&recs)).await;
            match done {
                Ok(Ok(i)) => break i,
                Ok(Err(error)) => {
                    tracing::error!(%error, records = records.len(), "store failed; retrying the batch");
                }
                Err(error) => {
                    metrics.error("store");
                    tracing::error!(%error, "store task failed; retrying the batch");
                }
            }
            if !pause(&mut backoff, &mut shutdown).await {
                break 'outer;
            }
        };

        // 2. Dead-letter the rejects, each once: all in flight together (one wait per batch),
        //    a transient failure retrying only the ones that failed.
        reject_log.add(&records, &ingested.rejected);
        let mut pending: Vec<usize> = (0..ingested.rejected.len()).collect();
        let mut backoff = FIRST_BACKOFF;
        while !pending.is_empty() {
            let sends = pending.iter().map(|&k| {
                let (i, reject) = &ingested.rejected[k];
                let rec = &records[*i];
                let dead_letter = &dead_letter;
                async move {
                    dead_letter
                        .send(rec, reject.reason(), &reject.to_string())
                        .await
                }
            });
            let results = futures::future::join_all(sends).await;
            let mut retry = Vec::new();
            let mut transient = None;
            for (&k, result) in pending.iter().zip(results) {
                let rec = &records[ingested.rejected[k].0];
                match result {
                    Ok(()) => {
                        metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) if error.is_permanent() => {
                        // Retrying cannot help and would stop all ingest behind this record:
                        // count it, log where it was, and go on.
                        metrics.error("dead_letter");
                        tracing::error!(
                            %error,
                            partition = rec.partition,
                            offset = rec.offset,
                            "dead-letter topic refuses this record for good; skipped"
                        );
                    }
                    Err(error) => {
                        metrics.error("dead_letter");
                        transient = Some(error);
                        retry.push(k);
                    }
                }
            }
            if let Some(error) = transient {
                tracing::warn!(%error, records = retry.len(), "dead-letter delivery failed; retrying");
                if !pause(&mut backoff, &mut shutdown).await {
                    break 'outer;
                }
            }
            pending = retry;
        }
        reject_log.maybe_say();

        // 3. Cover the offsets in the store (durable with its next flush, together with
        //    the samples); then commit to the group (lag monitoring).
        let mut backoff = FIRST_BACKOFF;
        while let Err(error) = store.cover(&ingested.next_offsets) {
            metrics.error("store");
            tracing::error!(%error, "cannot record offsets in the store; retrying");
            if !pause(&mut backoff, &mut shutdown).await {
                break 'outer;
            }
        }
        if let Err(error) = consumer.commit(&ingested.next_offsets, false) {
            metrics.error("commit");
            tracing::warn!(%error, "commit failed (lag monitoring only; the store owns offsets)");
        }
        merge(&mut last_committed, &ingested.next_offsets);
    }
    // The final commit blocks on the broker: off the async workers, and only for the
    // partitions this member still owns.
    let final_commit =
        tokio::task::spawn_blocking(move || consumer.commit_owned(&last_committed)).await;
    match final_commit {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "final commit failed"),
        Err(error) => tracing::warn!(%error, "final commit task failed"),
    }
    reject_log.say();
    tracing::info!("consumer stopped");
}

/// Rejected records, logged as a summary per reason at most every [`REJECT_LOG_EVERY`]
/// (a flood of junk is a handful of lines, not one per record); each record's detail is at
/// debug level.
#[derive(Debug, Default)]
struct RejectLog {
    // reason → (records since the last summary, an example: partition, offset, detail)
    pending: std::collections::BTreeMap<&'static str, (u64, String)>,
    said_at: Option<std::time::Instant>,
}

/// How often a summary of rejected records is logged, at most.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

impl RejectLog {
    fn add(
        &mut self,
        records: &[msg_queue_client::consumer::ConsumedRecord],
        rejected: &[(usize, telemetry_wire::wire::Reject)],
    ) {
        for (i, reject) in rejected {
            let rec = &records[*i];
            tracing::debug!(reason = reject.reason(), %reject, partition = rec.partition, offset = rec.offset, "record rejected");
            let e = self.pending.entry(reject.reason()).or_insert_with(|| {
                (
                    0,
                    format!(
                        "partition {} offset {}: {reject}",
                        rec.partition, rec.offset
                    ),
                )
            });
            e.0 += 1;
        }
    }

    fn maybe_say(&mut self) {
        if self.said_at.is_none_or(|t| t.elapsed() >= REJECT_LOG_EVERY) {
            self.say();
        }
    }

    fn say(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        for (reason, (count, example)) in std::mem::take(&mut self.pending) {
            tracing::warn!(
                reason,
                records = count,
                example,
                "records rejected and sent to the dead-letter topic"
            );
        }
        self.said_at = Some(std::time::Instant::now());
    }
}

fn merge(into: &mut Vec<(i32, i64)>, next: &[(i32, i64)]) {
    for &(p, o) in next {
        match into.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 = e.1.max(o),
            None => into.push((p, o)),
        }
    }
}
