//! Live streams: `GET /api/v1/gpus/stream` and `GET /api/v1/gpus/{uuid}/stream`, server-sent
//! events of each GPU whose latest state changed (`event: gpu`, `data:` the GPU as
//! `GET /api/v1/gpus/{uuid}` shows it), and a `: keep-alive` comment every 15 s.
//!
//! One poller per api process reads the changes of the latest index every 250 ms (only while
//! someone listens), serialises each changed GPU once into one shared buffer, and broadcasts
//! it. Each client has a forwarder task that puts what it asks for (the whole update, or its
//! GPU's slice of it: no copy either way) into a bounded queue of `--sse-client-buffer`
//! updates: a client so slow that the queue fills — after the kernel's socket buffers have
//! filled too — is **dropped** (its stream ends; `api_sse_dropped_total` counts it). Nothing
//! waits on a client: the broadcast never blocks the poller, and a full queue never blocks
//! the forwarder, so a slow client slows neither the server nor anyone else, and holds at
//! most its queue of shared updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::backend::TelemetryBackend;

/// How often the poller looks for changed GPUs.
pub const POLL: Duration = Duration::from_millis(250);
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Updates (polls' worth of events) a client may have waiting before it is dropped, by
/// default: 4 s behind.
pub const DEFAULT_CLIENT_BUFFER: usize = 16;

/// One poll's changed GPUs: every event in one buffer, and where each GPU's is.
#[derive(Debug)]
struct Update {
    all: Bytes,
    each: Vec<(String, std::ops::Range<usize>)>,
}

type Batch = Arc<Update>;

/// The process's stream hub: the broadcast of changes and the counters.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Batch>,
    polling: AtomicBool,
    /// Updates a client may have waiting before it is dropped.
    pub client_buffer: usize,
    /// Clients dropped for reading too slowly.
    pub dropped: AtomicU64,
    /// Streams open now.
    pub open: AtomicU64,
    /// Set when the server shuts down: every stream ends (a graceful shutdown waits for the
    /// responses in flight, and a live stream would never finish by itself).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(DEFAULT_CLIENT_BUFFER)
    }
}

impl Hub {
    /// A hub whose clients may fall `client_buffer` events behind.
    pub fn new(client_buffer: usize) -> Self {
        Self {
            tx: broadcast::channel(64).0,
            polling: AtomicBool::new(false),
            client_buffer: client_buffer.max(1),
            dropped: AtomicU64::new(0),
            open: AtomicU64::new(0),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every stream, now and any opened later (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A new client's stream of events for `uuid` (every GPU when `None`); starts the poller
    /// over `backend` if it is not running.
    pub fn subscribe(
        self: &Arc<Self>,
        backend: Arc<dyn TelemetryBackend>,
        uuid: Option<String>,
    ) -> mpsc::Receiver<Bytes> {
        let rx = self.tx.subscribe();
        if !self.polling.swap(true, Ordering::AcqRel) {
            tokio::spawn(poll(self.clone(), backend));
        }
        let (out, events) = mpsc::channel(self.client_buffer);
        let hub = self.clone();
        hub.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            forward(&hub, rx, out, uuid).await;
            hub.open.fetch_sub(1, Ordering::Relaxed);
        });
        events
    }
}

/// Copies `rx` into `out` for one client until it leaves or falls behind.
async fn forward(
    hub: &Hub,
    mut rx: broadcast::Receiver<Batch>,
    out: mpsc::Sender<Bytes>,
    uuid: Option<String>,
) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    // The stream opens with a comment so the client sees it is live at once.
    if out
        .try_send(Bytes::from_static(b": stream open\n\n"))
        .is_err()
    {
        return;
    }
    let keep_alive_event = Bytes::from_static(b": keep-alive\n\n");
    let mut closing = hub.closing.subscribe();
    loop {
        let item = tokio::select! {
            r = rx.recv() => match r {
                Ok(update) => match &uuid {
                    None => update.all.clone(),
                    Some(want) => match update.each.iter().find(|(u, _)| u == want) {
                        Some((_, range)) => update.all.slice(range.clone()),
                        None => continue,
                    },
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    hub.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keep_alive.tick() => keep_alive_event.clone(),
            () = out.closed() => return,
            _ = closing.wait_for(|c| *c) => return,
        };
        match out.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                hub.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!("a live stream's client reads too slowly; dropped");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Broadcasts the changed GPUs every [`POLL`] while anyone listens; stops when nobody does.
async fn poll(hub: Arc<Hub>, backend: Arc<dyn TelemetryBackend>) {
    let mut version = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if hub.tx.receiver_count() == 0 {
            hub.polling.store(false, Ordering::Release);
            // A subscriber that came in between restarts nothing: take over again.
            if hub.tx.receiver_count() == 0 || hub.polling.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let b = backend.clone();
        let since = version;
        let changed = tokio::task::spawn_blocking(move || {
            let (gpus, v) = b.latest_changed(since.unwrap_or(u64::MAX))?;
            // The first look only takes the version: streams carry changes from now on.
            let mut all = Vec::new();
            let mut each = Vec::new();
            if since.is_some() {
                for g in &gpus {
                    let start = all.len();
                    if write_event(g, &mut all) {
                        each.push((g.info.uuid.clone(), start..all.len()));
                    } else {
                        all.truncate(start);
                    }
                }
            }
            Some((
                Update {
                    all: Bytes::from(all),
                    each,
                },
                v,
            ))
        })
        .await
        .ok()
        .flatten();
        let Some((update, v)) = changed else {
            continue; // no current copy here (the gateway's mirror is catching up)
        };
        version = Some(v);
        if !update.each.is_empty() {
            let _ = hub.tx.send(Arc::new(update));
        }
    }
}

/// Appends one GPU as an SSE event to `out`; `false` if it cannot be serialised.
fn write_event(g: &streamer::store::GpuState, out: &mut Vec<u8>) -> bool {
    let view = crate::model::Gpu::from_view(streamer::store::GpuView {
        info: &g.info,
        latest: g.latest.as_ref(),
        last_seen_ms: g.last_seen_ms,
        sample_count: g.sample_count,
    });
    out.extend_from_slice(b"event: gpu\ndata: ");
    if serde_json::to_writer(&mut *out, &view).is_err() {
        return false;
    }
    out.extend_from_slice(b"\n\n");
    true
}
