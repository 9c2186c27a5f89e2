//! `GET /api/v1/metrics`: the fleet's latest telemetry in Prometheus text, under
//! dcgm-exporter's metric names, units and labels, so dashboards and alerts written for
//! dcgm-exporter (NVIDIA's Grafana dashboard 12239) work unchanged against one scrape of the
//! api instead of one exporter per node.
//!
//! What dcgm-exporter's default counters list (`etc/default-counters.csv`, vendored as
//! `tests/data/dcgm-exporter-default-counters.csv`) has and this serves, in that list's
//! order, with its HELP text and type ([`FIELDS`]). Left out, each for a reason
//! ([`NOT_SERVED`]): `DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL` (DCGM's unit is not documented; ours
//! are `gpu_nvlink_{tx,rx}_bytes_total`), `DCGM_FI_DEV_VGPU_LICENSE_STATUS` (no vGPU), and
//! `DCGM_FI_PROF_PCIE_{TX,RX}_BYTES` (rates, which one sample cannot give: use
//! `rate(gpu_pcie_tx_bytes_total[1m])` on the REST data). `DCGM_FI_DRIVER_VERSION` is, as in
//! dcgm-exporter, a label on every series.
//!
//! Labels, in dcgm-exporter's order: `gpu` (index), `UUID`, `pci_bus_id`, `device`
//! (`nvidia<index>`), `modelName`, `Hostname` (the node; released dcgm-exporter versions
//! and dashboard 12239 use this spelling — upstream renamed it `hostname` in May 2026),
//! `DCGM_FI_DRIVER_VERSION`, then `container`, `namespace`, `pod` of the first pod holding
//! the GPU when the collector reports pods (dcgm-exporter's Kubernetes mapping). A value the
//! GPU does not report is left out, as dcgm-exporter leaves out a blank field.
//!
//! The body is made one field at a time from the latest index (a read lock per field, the
//! lines of all GPUs; each GPU's labels formatted once), so a 10,000-GPU fleet streams in
//! chunks instead of being built whole, zstd- or gzip-compressed chunk by chunk when the scraper
//! accepts it (Prometheus does).

use std::fmt::Write as _;

use streamer::store::GpuView;
use telemetry_wire::wire::proto::{MigDevice, PodRef};
use telemetry_wire::wire::{GpuInfo, GpuSample};

/// A value as dcgm-exporter prints it: integers as integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count, a clock, a temperature, MiB.
    Int(u64),
    /// Watts, ratios.
    Float(f64),
}

/// One dcgm-exporter field this serves.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The metric name, e.g. `DCGM_FI_DEV_GPU_UTIL`.
    pub name: &'static str,
    /// `gauge` or `counter`, as dcgm-exporter declares it.
    pub kind: &'static str,
    /// dcgm-exporter's HELP text.
    pub help: &'static str,
    value: fn(&GpuInfo, &GpuSample) -> Option<Value>,
}

impl Field {
    /// The value for one GPU's latest sample, in dcgm-exporter's unit; `None` when the GPU
    /// does not report it.
    pub fn value(&self, info: &GpuInfo, sample: &GpuSample) -> Option<Value> {
        (self.value)(info, sample)
    }
}

const MIB: u64 = 1 << 20;

fn int(v: Option<impl Into<u64>>) -> Option<Value> {
    v.map(|v| Value::Int(v.into()))
}

/// A GPM reading (1/100 %) as DCGM's profiling ratio (0–1).
fn ratio(v: Option<u32>) -> Option<Value> {
    v.map(|v| Value::Float(f64::from(v) / 10_000.0))
}

/// The fields served, in dcgm-exporter's default-counters order.
pub const FIELDS: &[Field] = &[
    Field {
        name: "DCGM_FI_DEV_SM_CLOCK",
        kind: "gauge",
        help: "SM clock frequency (in MHz).",
        value: |_, s| int(s.sm_clock_mhz),
    },
    Field {
        name: "DCGM_FI_DEV_MEM_CLOCK",
        kind: "gauge",
        help: "Memory clock frequency (in MHz).",
        value: |_, s| int(s.memory_clock_mhz),
    },
    Field {
        name: "DCGM_FI_DEV_MEMORY_TEMP",
        kind: "gauge",
        help: "Memory temperature (in C).",
        value: |_, s| int(s.memory_temperature_celsius),
    },
    Field {
        name: "DCGM_FI_DEV_GPU_TEMP",
        kind: "gauge",
        help: "GPU temperature (in C).",
        value: |_, s| int(s.temperature_celsius),
    },
    Field {
        name: "DCGM_FI_DEV_POWER_USAGE",
        kind: "gauge",
        help: "Power draw (in W).",
        value: |_, s| {
            s.power_usage_milliwatts
                .map(|mw| Value::Float(f64::from(mw) / 1000.0))
        },
    },
    Field {
        name: "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        kind: "counter",
        help: "Total energy consumption since boot (in mJ).",
        value: |_, s| int(s.energy_consumed_millijoules),
    },
    Field {
        name: "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        kind: "counter",
        help: "Total number of PCIe retries.",
        value: |_, s| int(s.pcie_replay_count),
    },
    Field {
        name: "DCGM_FI_DEV_GPU_UTIL",
        kind: "gauge",
        help: "GPU utilization (in %).",
        value: |_, s| int(s.gpu_utilization_percent),
    },
    Field {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        kind: "gauge",
        help: "Memory utilization (in %).",
        value: |_, s| int(s.memory_utilization_percent),
    },
    Field {
        name: "DCGM_FI_DEV_ENC_UTIL",
        kind: "gauge",
        help: "Encoder utilization (in %).",
        value: |_, s| int(s.encoder_utilization_percent),
    },
    Field {
        name: "DCGM_FI_DEV_DEC_UTIL",
        kind: "gauge",
        help: "Decoder utilization (in %).",
        value: |_, s| int(s.decoder_utilization_percent),
    },
    Field {
        name: "DCGM_FI_DEV_XID_ERRORS",
        kind: "gauge",
        help: "Value of the last XID error encountered.",
        // DCGM reports 0 until the first XID.
        value: |i, _| Some(Value::Int(u64::from(i.last_xid.unwrap_or(0)))),
    },
    Field {
        name: "DCGM_FI_DEV_FB_FREE",
        kind: "gauge",
        help: "Framebuffer memory free (in MiB).",
        value: |_, s| s.memory_free_bytes.map(|b| Value::Int(b / MIB)),
    },
    Field {
        name: "DCGM_FI_DEV_FB_USED",
        kind: "gauge",
        help: "Framebuffer memory used (in MiB).",
        value: |_, s| s.memory_used_bytes.map(|b| Value::Int(b / MIB)),
    },
    Field {
        name: "DCGM_FI_DEV_FB_RESERVED",
        kind: "gauge",
        help: "Framebuffer memory reserved (in MiB).",
        value: |_, s| s.memory_reserved_bytes.map(|b| Value::Int(b / MIB)),
    },
    Field {
        name: "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        kind: "counter",
        help: "Number of remapped rows for uncorrectable errors",
        value: |_, s| int(s.remapped_rows_uncorrectable),
    },
    Field {
        name: "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        kind: "counter",
        help: "Number of remapped rows for correctable errors",
        value: |_, s| int(s.remapped_rows_correctable),
    },
    Field {
        name: "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        kind: "gauge",
        help: "Whether remapping of rows has failed",
        value: |_, s| int(s.row_remap_failure),
    },
    Field {
        name: "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        kind: "gauge",
        help: "Ratio of time the graphics engine is active.",
        value: |_, s| ratio(s.gpm_graphics_activity),
    },
    Field {
        name: "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        kind: "gauge",
        help: "Ratio of cycles the tensor (HMMA) pipe is active.",
        value: |_, s| ratio(s.gpm_tensor_activity),
    },
    Field {
        name: "DCGM_FI_PROF_DRAM_ACTIVE",
        kind: "gauge",
        help: "Ratio of cycles the device memory interface is active sending or receiving data.",
        value: |_, s| ratio(s.gpm_dram_activity),
    },
];

/// dcgm-exporter's default counters this does not serve, each with why.
pub const NOT_SERVED: &[(&str, &str)] = &[
    (
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "DCGM's unit is not documented; gpu_nvlink_tx_bytes_total / gpu_nvlink_rx_bytes_total carry the bytes",
    ),
    (
        "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
        "no vGPU support in the collector",
    ),
    (
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "a rate, which one sample cannot give: rate() over gpu_pcie_tx_bytes_total",
    ),
    (
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "a rate, which one sample cannot give: rate() over gpu_pcie_rx_bytes_total",
    ),
];

/// The label the driver version goes in (a "label" field in dcgm-exporter's list).
pub const DRIVER_VERSION_LABEL: &str = "DCGM_FI_DRIVER_VERSION";

/// `v` escaped for a label value.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The labels of one GPU's series: `{gpu, UUID, pci_bus_id, device, modelName, Hostname,
/// DCGM_FI_DRIVER_VERSION}` and, when a pod holds it, `container, namespace, pod` (its
/// first).
pub fn labels(info: &GpuInfo) -> String {
    labels_with(info, None, info.pods.first())
}

/// [`labels`] with, for a MIG instance, `GPU_I_PROFILE` and `GPU_I_ID`, and `pod`'s names.
fn labels_with(info: &GpuInfo, mig: Option<&MigDevice>, pod: Option<&PodRef>) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{{gpu=\"{}\",UUID=\"", info.index);
    escape(&mut s, &info.uuid);
    s.push_str("\",pci_bus_id=\"");
    escape(&mut s, info.pci_bus_id.as_deref().unwrap_or(""));
    let _ = write!(s, "\",device=\"nvidia{}\",modelName=\"", info.index);
    escape(&mut s, &info.name);
    s.push_str("\",Hostname=\"");
    escape(&mut s, &info.node);
    let _ = write!(s, "\",{DRIVER_VERSION_LABEL}=\"");
    escape(&mut s, info.driver_version.as_deref().unwrap_or(""));
    s.push('"');
    if let Some(m) = mig {
        s.push_str(",GPU_I_PROFILE=\"");
        escape(&mut s, &m.profile);
        s.push_str("\",GPU_I_ID=\"");
        if let Some(id) = m.gpu_instance_id {
            let _ = write!(s, "{id}");
        }
        s.push('"');
    }
    if let Some(p) = pod {
        s.push_str(",container=\"");
        escape(&mut s, &p.container);
        s.push_str("\",namespace=\"");
        escape(&mut s, &p.namespace);
        s.push_str("\",pod=\"");
        escape(&mut s, &p.pod);
        s.push('"');
    }
    s.push('}');
    s
}

/// On a GPU in MIG mode dcgm-exporter reports the framebuffer per GPU instance, labelled
/// `GPU_I_PROFILE` and `GPU_I_ID` (with the pod holding that instance), not for the whole
/// GPU: these fields, from each MIG device's memory.
fn mig_value(field: &Field, m: &MigDevice) -> Option<Option<Value>> {
    match field.name {
        "DCGM_FI_DEV_FB_USED" => Some(m.memory_used_bytes.map(|b| Value::Int(b / MIB))),
        "DCGM_FI_DEV_FB_FREE" => Some(
            m.memory_total_bytes
                .zip(m.memory_used_bytes)
                .map(|(t, u)| Value::Int(t.saturating_sub(u) / MIB)),
        ),
        _ => None,
    }
}

fn push_value(value: Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Value::Float(f) => out.extend_from_slice(ryu::Buffer::new().format(f).as_bytes()),
    }
}

/// The Content-Type of the answer.
pub fn content_type(openmetrics: bool) -> &'static str {
    if openmetrics {
        telemetry_metrics::OPENMETRICS
    } else {
        telemetry_metrics::TEXT
    }
}

/// `# HELP` and `# TYPE` of `field`. In OpenMetrics a counter's samples must end in
/// `_total`, which would rename dcgm-exporter's series; there its counters are typed
/// `unknown`, so every name stays as dashboards know it.
pub fn header(field: &Field, openmetrics: bool, out: &mut Vec<u8>) {
    let kind = if openmetrics && field.kind == "counter" {
        "unknown"
    } else {
        field.kind
    };
    out.extend_from_slice(
        format!(
            "# HELP {} {}\n# TYPE {} {kind}\n",
            field.name, field.help, field.name
        )
        .as_bytes(),
    );
}

/// Each GPU's label set, made once per answer (not once per field).
#[derive(Debug, Default)]
pub struct LabelCache(std::collections::HashMap<String, String>);

impl LabelCache {
    /// The labels of `info`, formatted on first use.
    pub fn get(&mut self, info: &GpuInfo) -> &str {
        if !self.0.contains_key(&info.uuid) {
            self.0.insert(info.uuid.clone(), labels(info));
        }
        &self.0[&info.uuid]
    }
}

/// The series of `field` for one GPU (nothing when it does not report it).
pub fn line(field: &Field, v: GpuView<'_>, cache: &mut LabelCache, out: &mut Vec<u8>) {
    let Some(sample) = v.latest else {
        return;
    };
    if !v.info.mig_devices.is_empty() && mig_value(field, &v.info.mig_devices[0]).is_some() {
        for m in &v.info.mig_devices {
            if let Some(Some(value)) = mig_value(field, m) {
                out.extend_from_slice(field.name.as_bytes());
                out.extend_from_slice(labels_with(v.info, Some(m), m.pods.first()).as_bytes());
                out.push(b' ');
                push_value(value, out);
                out.push(b'\n');
            }
        }
        return;
    }
    let Some(value) = field.value(v.info, sample) else {
        return;
    };
    out.extend_from_slice(field.name.as_bytes());
    out.extend_from_slice(cache.get(v.info).as_bytes());
    out.push(b' ');
    push_value(value, out);
    out.push(b'\n');
}

/// The whole exposition over the GPUs `visit` yields (once per field).
pub fn render(mut visit: impl FnMut(&mut dyn FnMut(GpuView<'_>)), openmetrics: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cache = LabelCache::default();
    for field in FIELDS {
        header(field, openmetrics, &mut out);
        visit(&mut |v| line(field, v, &mut cache, &mut out));
    }
    if openmetrics {
        out.extend_from_slice(b"# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(info: &'a GpuInfo, sample: &'a GpuSample) -> GpuView<'a> {
        GpuView {
            info,
            latest: Some(sample),
            last_seen_ms: 1,
            sample_count: 1,
        }
    }

    fn gpu() -> (GpuInfo, GpuSample) {
        let info = GpuInfo {
            uuid: "GPU-1".into(),
            index: 3,
            name: "NVIDIA H100 \"SXM\"".into(),
            pci_bus_id: Some("00000000:1B:00.0".into()),
            driver_version: Some("550.54.15".into()),
            node: "gpu-node-7".into(),
            last_xid: Some(79),
            pods: vec![PodRef {
                namespace: "ml".into(),
                pod: "train-0".into(),
                container: "main".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let sample = GpuSample {
            gpu_utilization_percent: Some(87),
            power_usage_milliwatts: Some(312_500),
            memory_used_bytes: Some(5 * MIB + 17),
            gpm_tensor_activity: Some(4_250),
            ..Default::default()
        };
        (info, sample)
    }

    #[test]
    fn a_gpu_renders_with_dcgm_exporters_labels_units_and_escaping() {
        let (info, sample) = gpu();
        let view = view(&info, &sample);
        let text = String::from_utf8(render(|f| f(view), false)).unwrap();
        let labels = "{gpu=\"3\",UUID=\"GPU-1\",pci_bus_id=\"00000000:1B:00.0\",device=\"nvidia3\",modelName=\"NVIDIA H100 \\\"SXM\\\"\",Hostname=\"gpu-node-7\",DCGM_FI_DRIVER_VERSION=\"550.54.15\",container=\"main\",namespace=\"ml\",pod=\"train-0\"}";
        for want in [
            format!("DCGM_FI_DEV_GPU_UTIL{labels} 87\n"),
            format!("DCGM_FI_DEV_POWER_USAGE{labels} 312.5\n"),
            format!("DCGM_FI_DEV_FB_USED{labels} 5\n"),
            format!("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{labels} 0.425\n"),
            format!("DCGM_FI_DEV_XID_ERRORS{labels} 79\n"),
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
                .to_string(),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        // Not reported: no series (SM clock), but its HELP/TYPE still.
        assert!(!text.contains("DCGM_FI_DEV_SM_CLOCK{"), "{text}");
        assert!(text.contains("# TYPE DCGM_FI_DEV_SM_CLOCK gauge\n"));
        assert!(!text.contains("# EOF"));
        let om = String::from_utf8(render(|f| f(view), true)).unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\n"));
    }

    #[test]
    fn a_mig_gpus_framebuffer_is_one_series_per_gpu_instance_with_its_profile_id_and_pod() {
        let (mut info, sample) = gpu();
        info.mig_enabled = Some(true);
        info.pods.clear();
        info.mig_devices = vec![
            MigDevice {
                uuid: "MIG-a".into(),
                index: 0,
                gpu_instance_id: Some(7),
                profile: "1g.10gb".into(),
                memory_total_bytes: Some(10 * 1024 * MIB),
                memory_used_bytes: Some(1500 * MIB + 3),
                pods: vec![PodRef {
                    namespace: "ml".into(),
                    pod: "infer-0".into(),
                    container: "server".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            MigDevice {
                uuid: "MIG-b".into(),
                index: 1,
                gpu_instance_id: Some(9),
                profile: "3g.40gb".into(),
                memory_total_bytes: Some(40 * 1024 * MIB),
                memory_used_bytes: Some(0),
                ..Default::default()
            },
        ];
        let view = view(&info, &sample);
        let text = String::from_utf8(render(|f| f(view), false)).unwrap();
        let base = "gpu=\"3\",UUID=\"GPU-1\",pci_bus_id=\"00000000:1B:00.0\",device=\"nvidia3\",modelName=\"NVIDIA H100 \\\"SXM\\\"\",Hostname=\"gpu-node-7\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"";
        let a = format!(
            "{{{base},GPU_I_PROFILE=\"1g.10gb\",GPU_I_ID=\"7\",container=\"server\",namespace=\"ml\",pod=\"infer-0\"}}"
        );
        let b = format!("{{{base},GPU_I_PROFILE=\"3g.40gb\",GPU_I_ID=\"9\"}}");
        let fb: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("DCGM_FI_DEV_FB_USED{") || l.starts_with("DCGM_FI_DEV_FB_FREE{")
            })
            .collect();
        assert_eq!(
            fb,
            [
                format!("DCGM_FI_DEV_FB_FREE{a} 8739"),
                format!("DCGM_FI_DEV_FB_FREE{b} 40960"),
                format!("DCGM_FI_DEV_FB_USED{a} 1500"),
                format!("DCGM_FI_DEV_FB_USED{b} 0"),
            ],
            "{text}"
        );
        // The rest stays per GPU, without instance labels.
        assert!(
            text.contains(&format!("DCGM_FI_DEV_GPU_UTIL{{{base}}} 87\n")),
            "{text}"
        );
    }
}
