//! The sampling loop: read the source every interval, hand each batch to a sink.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Mutex;

use common_auth::KeyRing;
use secrecy::{ExposeSecret, SecretString};
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::{SignedRecord, TelemetryBatch, seal};
use tokio::time::MissedTickBehavior;

use crate::buffer::Buffer;
use crate::metrics::CollectorMetrics;
use crate::source::GpuSource;

/// Where sampled batches go: the Kafka buffer, or straight into a store (embedded mode).
pub trait BatchSink: Send + Sync {
    /// Takes one batch. Must not block for long: it runs on the sampling task.
    fn accept(&self, batch: TelemetryBatch);
}

/// Signs batches and pushes them into the publish buffer.
#[derive(Debug)]
pub struct KafkaSink {
    tokens: KeyRing,
    // The signer for the token last used; rebuilt when the signing token changes.
    signer: Mutex<(SecretString, RecordSigner)>,
    buffer: Arc<Buffer<SignedRecord>>,
}

impl KafkaSink {
    /// A sink signing with `tokens` ([`KeyRing::signing`], so a rotation reaches the
    /// streamers before records signed with the new token do) into `buffer`.
    pub fn new(tokens: KeyRing, buffer: Arc<Buffer<SignedRecord>>) -> Self {
        let token = tokens.signing();
        let signer = RecordSigner::new(&token);
        Self {
            tokens,
            signer: Mutex::new((token, signer)),
            buffer,
        }
    }

    fn signer(&self) -> RecordSigner {
        let token = self.tokens.signing();
        let mut cached = self.signer.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0.expose_secret() != token.expose_secret() {
            tracing::info!("signing with the rotated service token from now on");
            *cached = (token.clone(), RecordSigner::new(&token));
        }
        cached.1.clone()
    }
}

impl BatchSink for KafkaSink {
    fn accept(&self, batch: TelemetryBatch) {
        if self.buffer.push(seal(&self.signer(), &batch)) {
            tracing::debug!("publish buffer full; dropped the oldest record");
        }
    }
}

/// The current time as UTC milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads `source` every `interval` until `rounds` rounds are done (`None`: forever) or
/// `shutdown` resolves. NVML reads are short blocking calls (a few ms for 8 GPUs), made on
/// this task.
pub async fn run_sampler(
    mut source: Box<dyn GpuSource>,
    interval: Duration,
    rounds: Option<u64>,
    sink: Arc<dyn BatchSink>,
    metrics: Arc<CollectorMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let mut done = 0u64;
    while rounds.is_none_or(|r| done < r) {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        match source.collect(now_ms()) {
            Ok(batches) => {
                metrics
                    .last_good_round_ms
                    .store(now_ms(), Ordering::Relaxed);
                for b in batches {
                    metrics
                        .samples
                        .fetch_add(b.samples.len() as u64, Ordering::Relaxed);
                    sink.accept(b);
                }
            }
            Err(error) => {
                metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "sampling round failed");
            }
        }
        metrics.rounds.fetch_add(1, Ordering::Relaxed);
        done += 1;
    }
}
