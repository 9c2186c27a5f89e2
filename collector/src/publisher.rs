//! The publishing loop: drain the buffer into the producer, many records in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use msg_queue_client::producer::TelemetryProducer;
use telemetry_wire::wire::SignedRecord;
use tokio::time::Instant;

use crate::buffer::Buffer;
use crate::metrics::CollectorMetrics;

/// Pause before retrying after a failed delivery.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Publishes from `buffer`, at most `max_in_flight` records awaiting delivery at once (those
/// sit in the producer's queue while the broker is away), until `stop` resolves, then keeps delivering what is buffered or
/// in flight for at most `drain_timeout`. Failed deliveries go back to the buffer's front.
/// Returns the number of records left undelivered.
pub async fn run_publisher(
    producer: TelemetryProducer,
    buffer: Arc<Buffer<SignedRecord>>,
    metrics: Arc<CollectorMetrics>,
    stop: impl std::future::Future<Output = ()>,
    drain_timeout: Duration,
    max_in_flight: usize,
) -> usize {
    let max_in_flight = max_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut paused_until: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let paused = paused_until.is_some_and(|t| Instant::now() < t);
        if !paused {
            while in_flight.len() < max_in_flight {
                let Some(rec) = buffer.pop() else { break };
                let p = producer.clone();
                in_flight.push(async move {
                    let r = p.send(&rec).await;
                    (rec, r)
                });
            }
        }
        metrics
            .in_flight
            .store(in_flight.len() as u64, Ordering::Relaxed);
        if deadline.is_some() && in_flight.is_empty() && buffer.is_empty() {
            break;
        }
        let wake = paused_until
            .filter(|_| paused)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            Some((rec, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                Ok(_) => { metrics.published.fetch_add(1, Ordering::Relaxed); }
                Err(error) => {
                    let n = metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
                    if (n + 1).is_power_of_two() {
                        tracing::warn!(%error, failures = n + 1, buffered = buffer.len(), "delivery failed; will retry");
                    }
                    buffer.requeue(rec);
                    paused_until = Some(Instant::now() + RETRY_PAUSE);
                }
            },
            () = buffer.pushed(), if !paused && in_flight.len() < max_in_flight => {}
            () = tokio::time::sleep_until(wake), if paused => {}
            () = &mut stop, if deadline.is_none() => {
                deadline = Some(Instant::now() + drain_timeout);
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break;
            }
        }
    }
    let left = buffer.len() + in_flight.len();
    if left > 0 {
        tracing::warn!(
            left,
            "shutdown: records not delivered before the drain timeout"
        );
    }
    left
}
