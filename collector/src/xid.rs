//! XID events: NVML's critical-XID event set, waited on by a thread of its own so that a
//! wait never delays a sampling round. Each event is counted per GPU and code (a counter that
//! only grows, never a sticky gauge), the newest is kept with the time it arrived, and the
//! ones that bear on health ([`telemetry_wire::health::HEALTH_XIDS`]) are kept for the
//! health window.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use telemetry_wire::health::xid_class;

use crate::sampler::now_ms;

/// Health-bearing events kept per GPU for the health window, at most.
const MAX_RECENT: usize = 1_000;

/// The code NVML reports for an XID it cannot name.
pub const UNKNOWN_XID: u32 = 999;

/// The XIDs of one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuXids {
    /// Events per code since the collector started.
    pub counts: BTreeMap<u32, u64>,
    /// The newest event: code and arrival time (UTC ms).
    pub last: Option<(u32, i64)>,
    /// Health-bearing events (code, arrival time), oldest first; pruned to the health
    /// window by [`XidLog::snapshot`].
    pub recent: Vec<(u32, i64)>,
}

/// Every GPU's XIDs, written by the event thread, read by the sampler.
#[derive(Debug, Default)]
pub struct XidLog {
    gpus: Mutex<HashMap<u32, GpuXids>>,
}

impl XidLog {
    /// Counts one event of `code` on GPU `index` at `at_ms`.
    pub fn record(&self, index: u32, code: u32, at_ms: i64) {
        let mut gpus = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        let g = gpus.entry(index).or_default();
        *g.counts.entry(code).or_default() += 1;
        g.last = Some((code, at_ms));
        if xid_class(code).is_some() {
            g.recent.push((code, at_ms));
            // A storm of XIDs must not grow this without bound: the oldest go first (the
            // counts keep every one).
            if g.recent.len() > MAX_RECENT {
                let excess = g.recent.len() - MAX_RECENT;
                g.recent.drain(..excess);
            }
        }
    }

    /// GPU `index`'s XIDs, with health-bearing events older than `window_ms` before `now_ms`
    /// dropped for good.
    pub fn snapshot(&self, index: u32, now_ms: i64, window_ms: i64) -> GpuXids {
        let mut gpus = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        let Some(g) = gpus.get_mut(&index) else {
            return GpuXids::default();
        };
        g.recent
            .retain(|&(_, at)| at > now_ms.saturating_sub(window_ms));
        g.clone()
    }
}

/// The event thread; stopped and joined on drop.
#[derive(Debug)]
pub struct XidWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long one wait blocks: the longest a stop waits for the thread.
const WAIT_MS: u32 = 500;

impl XidWatcher {
    /// Starts waiting for critical XID events of `gpus` (NVML index, UUID) into `log`. A
    /// GPU whose driver offers no XID events is said once at info and skipped; without an
    /// event set at all the thread says so once and ends.
    pub fn start(nvml: &'static Nvml, gpus: Vec<(u32, String)>, log: Arc<XidLog>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nvml-xid".into())
            .spawn(move || watch(nvml, &gpus, &log, &stopping))
            .map_err(|error| tracing::warn!(%error, "cannot start the XID event thread"))
            .ok();
        Self { stop, thread }
    }
}

impl Drop for XidWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An event set with every GPU of `devices` registered. NVML frees a set when a
/// registration fails, so a failure rebuilds it with the GPUs registered before.
fn event_set<'n>(nvml: &'n Nvml, devices: &[(u32, Device<'n>)]) -> Option<(EventSet<'n>, usize)> {
    let mut registered: Vec<usize> = Vec::new();
    let mut set = nvml
        .create_event_set()
        .map_err(
            |error| tracing::info!(%error, "NVML event sets unavailable: XIDs are not watched"),
        )
        .ok()?;
    for (i, (index, d)) in devices.iter().enumerate() {
        match d.supported_event_types() {
            Ok(t) if t.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) => {
                tracing::info!(gpu = index, "no XID events on this GPU");
                continue;
            }
            Err(error) => {
                tracing::info!(gpu = index, %error, "cannot read the GPU's event types: XIDs not watched");
                continue;
            }
        }
        match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                registered.push(i);
            }
            Err(error) => {
                tracing::warn!(gpu = index, %error, "cannot register for XID events: XIDs of this GPU not watched");
                set = nvml.create_event_set().ok()?;
                for &j in &registered {
                    set = devices[j]
                        .1
                        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
                        .ok()?;
                }
            }
        }
    }
    Some((set, registered.len()))
}

fn watch(nvml: &Nvml, gpus: &[(u32, String)], log: &XidLog, stop: &AtomicBool) {
    let devices: Vec<(u32, Device<'_>)> = gpus
        .iter()
        .filter_map(|(index, uuid)| Some((*index, nvml.device_by_uuid(uuid.as_str()).ok()?)))
        .collect();
    let Some((set, n)) = event_set(nvml, &devices) else {
        return;
    };
    if n == 0 {
        return;
    }
    tracing::info!(gpus = n, "watching XID events");
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let event = match set.wait(WAIT_MS) {
            Ok(e) => e,
            Err(NvmlError::Timeout) => continue,
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "waiting for XID events failed; retrying every second");
                }
                failing = true;
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        failing = false;
        let Some(xid) = event.event_data else {
            continue;
        };
        let code = match xid {
            XidError::Value(v) => u32::try_from(v).unwrap_or(UNKNOWN_XID),
            XidError::Unknown => UNKNOWN_XID,
        };
        // Which GPU: by UUID, else by index (a GPU off the bus may not tell its UUID).
        let index = event
            .device
            .uuid()
            .ok()
            .and_then(|u| gpus.iter().find(|(_, g)| *g == u).map(|(i, _)| *i))
            .or_else(|| event.device.index().ok());
        let Some(index) = index else {
            tracing::warn!(
                xid = code,
                "XID event from a GPU NVML cannot name; not counted"
            );
            continue;
        };
        match xid_class(code) {
            Some(c) => {
                tracing::error!(gpu = index, xid = code, meaning = c.meaning, "XID event");
            }
            None => tracing::warn!(gpu = index, xid = code, "XID event"),
        }
        log.record(index, code, now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_per_code_and_only_health_xids_are_windowed() {
        let log = XidLog::default();
        log.record(0, 13, 1_000);
        log.record(0, 13, 2_000);
        log.record(0, 79, 3_000);
        let g = log.snapshot(0, 3_500, 10_000);
        assert_eq!(g.counts, BTreeMap::from([(13, 2), (79, 1)]));
        assert_eq!(g.last, Some((79, 3_000)));
        assert_eq!(g.recent, vec![(79, 3_000)], "13 is the application's own");
        // Past the window the health reason goes, the counts stay.
        let g = log.snapshot(0, 13_001, 10_000);
        assert_eq!(g.recent, vec![]);
        assert_eq!(g.counts[&13], 2);
        assert_eq!(log.snapshot(1, 0, 1), GpuXids::default());
        // A storm: counted in full, the window list bounded.
        for t in 0..5_000 {
            log.record(2, 94, t);
        }
        let g = log.snapshot(2, 5_000, 1_000_000);
        assert_eq!(g.counts[&94], 5_000);
        assert_eq!(g.recent.len(), MAX_RECENT);
        assert_eq!(g.recent[0], (94, 4_000), "the oldest went first");
    }
}
