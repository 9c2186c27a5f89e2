//! `--output json`: each sampled batch as one JSON line on stdout, metric names as the API
//! names them. No broker, no service token: for checking what NVML reports on a node
//! (`collector --output json --rounds 1`) and for the real-GPU check script.

use serde_json::{Map, Value, json};
use std::io::Write as _;
use telemetry_wire::metric;
use telemetry_wire::wire::TelemetryBatch;

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
            })
        })
        .collect();
    json!({"node": b.node, "collected_at_ms": b.collected_at_ms, "gpus": gpus})
}

impl BatchSink for JsonSink {
    fn accept(&self, batch: TelemetryBatch) {
        let _ = writeln!(std::io::stdout(), "{}", batch_json(&batch));
    }
}
