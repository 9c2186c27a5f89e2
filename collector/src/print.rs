//! `--output json`: each sampled batch as one JSON line on stdout, metric names as the API
//! names them. No broker, no service token: for checking what NVML reports on a node
//! (`collector --output json --rounds 1`) and for the real-GPU check script.

use serde_json::{Map, Value, json};
use std::io::Write as _;
use telemetry_wire::wire::proto::PodRef;
use telemetry_wire::wire::{GpuInfo, TelemetryBatch};
use telemetry_wire::{health, metric};

use crate::sampler::BatchSink;

/// Prints batches as JSON lines.
#[derive(Debug, Default)]
pub struct JsonSink;

/// The JSON form of a batch.
pub fn batch_json(b: &TelemetryBatch) -> Value {
    let gpus: Vec<Value> = b
        .gpus
        .iter()
        .map(|g| {
            let sample = b.samples.iter().find(|s| s.uuid == g.uuid);
            let metrics: Map<String, Value> = sample
                .map(|s| {
                    metric::values(s)
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "uuid": g.uuid,
                "index": g.index,
                "name": g.name,
                "serial": g.serial,
                "pci_bus_id": g.pci_bus_id,
                "driver_version": g.driver_version,
                "cuda_driver_version": g.cuda_driver_version,
                "mig_enabled": g.mig_enabled,
                "timestamp_ms": sample.map(|s| s.timestamp_ms),
                "metrics": metrics,
                "health": g.health.as_ref().map(|h| json!({
                    "status": health::status_name(h.status()),
                    "reasons": h.reasons,
                })),
                "xid": xid_json(g),
                "pods": g.pods_as_of_ms.map(|_| g.pods.iter().map(pod_json).collect::<Vec<_>>()),
                "pods_stale": g.pods_as_of_ms.map(|_| g.pods_stale),
                "processes": g.processes.iter().map(|p| json!({
                    "pid": p.pid,
                    "used_memory_bytes": p.used_memory_bytes,
                    "sm_utilization_percent": p.sm_utilization_percent,
                    "memory_utilization_percent": p.memory_utilization_percent,
                    "namespace": p.namespace,
                    "pod": p.pod,
                    "container": p.container,
                    "pod_uid": p.pod_uid,
                    "mig_device_uuid": p.mig_device_uuid,
                })).collect::<Vec<_>>(),
                "mig_devices": g.mig_devices.iter().map(|m| json!({
                    "uuid": m.uuid,
                    "index": m.index,
                    "gpu_instance_id": m.gpu_instance_id,
                    "compute_instance_id": m.compute_instance_id,
                    "profile": m.profile,
                    "memory_total_bytes": m.memory_total_bytes,
                    "memory_used_bytes": m.memory_used_bytes,
                    "pods": m.pods.iter().map(pod_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"node": b.node, "collected_at_ms": b.collected_at_ms, "gpus": gpus})
}

fn pod_json(p: &PodRef) -> Value {
    json!({"namespace": p.namespace, "pod": p.pod, "container": p.container, "device_id": p.device_id})
}

/// `{"counts": {"<code>": n}, "last": {"code": c, "at_ms": t}}`, `null` without XIDs.
fn xid_json(g: &GpuInfo) -> Value {
    if g.xid_counts.is_empty() {
        return Value::Null;
    }
    let counts: Map<String, Value> = g
        .xid_counts
        .iter()
        .map(|x| (x.code.to_string(), json!(x.count)))
        .collect();
    json!({
        "counts": counts,
        "last": g.last_xid.map(|code| json!({"code": code, "at_ms": g.last_xid_ms})),
    })
}

impl BatchSink for JsonSink {
    fn accept(&self, batch: TelemetryBatch) {
        let _ = writeln!(std::io::stdout(), "{}", batch_json(&batch));
    }
}
