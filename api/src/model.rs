//! JSON shapes of the REST API.

use serde::Serialize;
use serde::ser::SerializeMap;
use streamer::query::proto::GpuStatus;
use streamer::store::GpuView;
use telemetry_wire::health::{self, HealthStatus};
use telemetry_wire::metric::{self, MetricDef};
use telemetry_wire::wire::{GpuInfo, GpuSample};
use time::OffsetDateTime;
use time::macros::format_description;

/// Formats UTC milliseconds as RFC 3339 with millisecond precision, e.g.
/// `2026-11-27T19:29:30.123Z`. Hand-rolled (a response can hold 100,000 timestamps);
/// years outside 0000–9999 fall back to the `time` crate.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_ms(ms, &mut out);
    String::from_utf8(out).unwrap_or_else(|_| "invalid-time".into())
}

/// [`rfc3339_ms`] appended to `out`.
pub fn write_rfc3339_ms(ms: i64, out: &mut Vec<u8>) {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        out.extend_from_slice(rfc3339_ms_slow(ms).as_bytes());
        return;
    }
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (sec, milli) = (rest / 1000, rest % 1000);
    let digits = |out: &mut Vec<u8>, v: i64, width: u32| {
        for p in (0..width).rev() {
            out.push(b'0' + ((v / 10_i64.pow(p)) % 10) as u8);
        }
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, i64::from(m), 2);
    out.push(b'-');
    digits(out, i64::from(d), 2);
    out.push(b'T');
    digits(out, h, 2);
    out.push(b':');
    digits(out, min, 2);
    out.push(b':');
    digits(out, sec, 2);
    out.push(b'.');
    digits(out, milli, 3);
    out.push(b'Z');
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn rfc3339_ms_slow(ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "invalid-time".into())
}

/// A metric value as JSON: an integer when it is one, else a float.
fn number(v: f64) -> serde_json::Number {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        serde_json::Number::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).unwrap_or_else(|| serde_json::Number::from(0))
    }
}

/// Metric name → value for the metrics a sample carries (absent ones are left out).
#[derive(Debug)]
pub struct MetricValues<'a> {
    sample: &'a GpuSample,
    only: Option<&'a [&'static MetricDef]>,
}

impl<'a> MetricValues<'a> {
    /// All metrics of `sample`, or only `only`.
    pub fn new(sample: &'a GpuSample, only: Option<&'a [&'static MetricDef]>) -> Self {
        Self { sample, only }
    }
}

impl Serialize for MetricValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.only {
            Some(defs) => {
                for d in defs {
                    if let Some(v) = d.value(self.sample) {
                        m.serialize_entry(d.name, &number(v))?;
                    }
                }
            }
            None => {
                for (name, v) in metric::values(self.sample) {
                    m.serialize_entry(name, &number(v))?;
                }
            }
        }
        m.end()
    }
}

/// One GPU as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Gpu<'a> {
    /// NVML UUID, e.g. `GPU-1a2b…`.
    pub uuid: &'a str,
    /// Node (Kubernetes node name) the GPU is in.
    pub node: &'a str,
    /// NVML index on its node.
    pub index: u32,
    /// Product name.
    pub name: &'a str,
    /// Board serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<&'a str>,
    /// PCI bus id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<&'a str>,
    /// Driver version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<&'a str>,
    /// CUDA driver version (e.g. 12040).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_driver_version: Option<i32>,
    /// Whether MIG mode is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_enabled: Option<bool>,
    /// Time of the latest sample, RFC 3339.
    pub last_seen: String,
    /// Samples held for this GPU.
    pub sample_count: u64,
    /// Latest value of each metric the GPU reports (metric name → number).
    #[schema(value_type = std::collections::HashMap<String, f64>)]
    pub latest: Option<MetricValues<'a>>,
    /// Health as the collector judged it in its latest round (absent from collectors
    /// older than schema version 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health<'a>>,
    /// Critical XID events since the collector started (absent when there were none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xid: Option<Xid>,
    /// Containers the kubelet assigned this GPU to (absent where pods are not attributed:
    /// no kubelet socket on the node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<PodView<'a>>>,
    /// `true` when the kubelet did not answer the collector's last refresh: `pods` is the
    /// last mapping it gave (as of `pods_as_of`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_stale: Option<bool>,
    /// When the kubelet last answered, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_as_of: Option<String>,
    /// MIG devices, by slot (absent when MIG mode is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_devices: Option<Vec<MigView<'a>>>,
}

/// A MIG device under its parent GPU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MigView<'a> {
    /// `MIG-…`.
    pub uuid: &'a str,
    /// Slot under the parent.
    pub index: u32,
    /// GPU instance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_instance_id: Option<u32>,
    /// Compute instance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_instance_id: Option<u32>,
    /// Profile, e.g. `1g.10gb`.
    pub profile: &'a str,
    /// The instance's framebuffer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Framebuffer in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Containers holding it (with pod attribution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<PodView<'a>>>,
}

impl<'a> PodView<'a> {
    fn of(p: &'a telemetry_wire::wire::proto::PodRef) -> Self {
        Self {
            namespace: &p.namespace,
            pod: &p.pod,
            container: &p.container,
            device_id: &p.device_id,
            resource: &p.resource,
        }
    }
}

/// A container holding a GPU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PodView<'a> {
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub pod: &'a str,
    /// Container name.
    pub container: &'a str,
    /// The device id the kubelet lists (`GPU-…`, `GPU-…::<replica>` when time-sliced).
    pub device_id: &'a str,
    /// The extended resource, e.g. `nvidia.com/gpu`.
    pub resource: &'a str,
}

/// One process on a GPU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessView<'a> {
    /// Host PID.
    pub pid: u32,
    /// Framebuffer memory it uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_memory_bytes: Option<u64>,
    /// Its share of the SMs over NVML's last sample, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sm_utilization_percent: Option<u32>,
    /// Its share of memory bandwidth, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_utilization_percent: Option<u32>,
    /// Its share of the video encoder, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_utilization_percent: Option<u32>,
    /// Its share of the video decoder, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder_utilization_percent: Option<u32>,
    /// Its pod's namespace, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    /// Its pod, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a str>,
    /// Its container, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'a str>,
    /// Its pod's UID (from the process's cgroup), also when the name is not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<&'a str>,
    /// On a MIG GPU, the MIG device it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_device_uuid: Option<&'a str>,
}

/// `GET /api/v1/gpus/{uuid}/processes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Processes<'a> {
    /// The GPU.
    pub uuid: &'a str,
    /// Time of the GPU's latest sample (the processes are from the same round), RFC 3339.
    pub as_of: String,
    /// Processes, by PID.
    pub processes: Vec<ProcessView<'a>>,
    /// Number of processes.
    pub count: usize,
    /// As on the GPU: the kubelet's mapping is the last one it gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_stale: Option<bool>,
}

impl<'a> Processes<'a> {
    /// The processes of a stored GPU.
    pub fn of(s: &'a GpuStatus) -> Option<Self> {
        let info = s.info.as_ref()?;
        let processes: Vec<ProcessView<'a>> = info
            .processes
            .iter()
            .map(|p| ProcessView {
                pid: p.pid,
                used_memory_bytes: p.used_memory_bytes,
                sm_utilization_percent: p.sm_utilization_percent,
                memory_utilization_percent: p.memory_utilization_percent,
                encoder_utilization_percent: p.encoder_utilization_percent,
                decoder_utilization_percent: p.decoder_utilization_percent,
                namespace: p.namespace.as_deref(),
                pod: p.pod.as_deref(),
                container: p.container.as_deref(),
                pod_uid: p.pod_uid.as_deref(),
                mig_device_uuid: p.mig_device_uuid.as_deref(),
            })
            .collect();
        Some(Self {
            uuid: &info.uuid,
            as_of: rfc3339_ms(s.last_seen_ms),
            count: processes.len(),
            processes,
            pods_stale: info.pods_as_of_ms.map(|_| info.pods_stale),
        })
    }
}

/// A GPU's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health<'a> {
    /// `ok`, `degraded`, `failed` (or `unknown`).
    #[schema(example = "degraded")]
    pub status: &'static str,
    /// Why it is not `ok`, most severe first; each starts with a stable code (`gpu_lost`,
    /// `xid`, `row_remap_failure`, `ecc_uncorrected`, `row_remap_pending`,
    /// `thermal_throttling`, `power_brake`, `hw_slowdown`, `nvml_errors`), then `: ` and
    /// the detail.
    pub reasons: &'a [String],
}

/// A GPU's XID events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Xid {
    /// Events per XID code since the collector started (a counter per code).
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub counts: std::collections::BTreeMap<u32, u64>,
    /// The newest event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<LastXid>,
}

/// The newest XID event of a GPU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LastXid {
    /// Its code.
    pub code: u32,
    /// When the collector received it, RFC 3339.
    pub at: String,
}

impl Xid {
    fn of(info: &GpuInfo) -> Option<Self> {
        if info.xid_counts.is_empty() {
            return None;
        }
        Some(Self {
            counts: info.xid_counts.iter().map(|x| (x.code, x.count)).collect(),
            last: info
                .last_xid
                .zip(info.last_xid_ms)
                .map(|(code, at)| LastXid {
                    code,
                    at: rfc3339_ms(at),
                }),
        })
    }
}

/// Which GPUs `GET /api/v1/gpus` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuFilter {
    /// Only GPUs of this node.
    pub node: Option<String>,
    /// Only GPUs with this health status (`unknown`: those without one).
    pub health: Option<HealthStatus>,
    /// Only GPUs held by a pod in this namespace.
    pub namespace: Option<String>,
    /// Only GPUs held by a pod of this name (with `namespace`: that pod).
    pub pod: Option<String>,
}

impl GpuFilter {
    /// Whether `info` passes every condition but the node (the store filters on that).
    pub fn matches(&self, info: &GpuInfo) -> bool {
        let health = self.health.is_none_or(|want| {
            info.health
                .as_ref()
                .map_or(HealthStatus::Unknown, |h| h.status())
                == want
        });
        let pod = (self.namespace.is_none() && self.pod.is_none())
            || info.pods.iter().any(|p| {
                self.namespace.as_ref().is_none_or(|n| *n == p.namespace)
                    && self.pod.as_ref().is_none_or(|n| *n == p.pod)
            });
        health && pod
    }
}

impl<'a> Gpu<'a> {
    /// The API view of a GPU borrowed from a store.
    pub fn from_view(v: GpuView<'a>) -> Self {
        let info = v.info;
        Self {
            uuid: &info.uuid,
            node: &info.node,
            index: info.index,
            name: &info.name,
            serial: info.serial.as_deref(),
            pci_bus_id: info.pci_bus_id.as_deref(),
            driver_version: info.driver_version.as_deref(),
            cuda_driver_version: info.cuda_driver_version,
            mig_enabled: info.mig_enabled,
            last_seen: rfc3339_ms(v.last_seen_ms),
            sample_count: v.sample_count,
            latest: v.latest.map(|l| MetricValues::new(l, None)),
            health: info.health.as_ref().map(|h| Health {
                status: health::status_name(h.status()),
                reasons: &h.reasons,
            }),
            xid: Xid::of(info),
            pods: info
                .pods_as_of_ms
                .map(|_| info.pods.iter().map(PodView::of).collect()),
            mig_devices: (!info.mig_devices.is_empty()).then(|| {
                info.mig_devices
                    .iter()
                    .map(|m| MigView {
                        uuid: &m.uuid,
                        index: m.index,
                        gpu_instance_id: m.gpu_instance_id,
                        compute_instance_id: m.compute_instance_id,
                        profile: &m.profile,
                        memory_total_bytes: m.memory_total_bytes,
                        memory_used_bytes: m.memory_used_bytes,
                        pods: info
                            .pods_as_of_ms
                            .map(|_| m.pods.iter().map(PodView::of).collect()),
                    })
                    .collect()
            }),
            pods_stale: info.pods_as_of_ms.map(|_| info.pods_stale),
            pods_as_of: info.pods_as_of_ms.map(rfc3339_ms),
        }
    }

    /// The API view of a stored GPU.
    pub fn from_status(s: &'a GpuStatus) -> Option<Self> {
        Some(Self::from_view(GpuView {
            info: s.info.as_ref()?,
            latest: s.latest.as_ref(),
            last_seen_ms: s.last_seen_ms,
            sample_count: s.sample_count,
        }))
    }
}

/// `GET /api/v1/gpus`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GpuList<'a> {
    /// The GPUs, ordered by node, then index.
    pub gpus: Vec<Gpu<'a>>,
    /// Number of GPUs returned.
    pub count: usize,
}

/// Serialises `GET /api/v1/gpus` from GPUs a backend returned.
///
/// # Errors
/// The serialiser's error.
pub fn gpu_list_json(gpus: &[GpuStatus], filter: &GpuFilter) -> serde_json::Result<Vec<u8>> {
    let list: Vec<Gpu<'_>> = gpus
        .iter()
        .filter(|g| g.info.as_ref().is_some_and(|i| filter.matches(i)))
        .filter_map(Gpu::from_status)
        .collect();
    serde_json::to_vec(&GpuList {
        count: list.len(),
        gpus: list,
    })
}

/// Serialises `GET /api/v1/gpus` straight from borrowed data, without copying the GPUs
/// first: `visit` calls its argument for every GPU in listing order (e.g.
/// `Store::visit_gpus`), of which those `filter` passes are written. Writes
/// `{"gpus": [...], "count": n}`, the same bytes [`GpuList`] gives.
///
/// # Errors
/// The serialiser's error (only possible for a failing writer).
pub fn write_gpu_list(
    visit: impl FnOnce(&mut dyn FnMut(GpuView<'_>)),
    filter: &GpuFilter,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    use serde::ser::{SerializeSeq, Serializer};
    out.extend_from_slice(b"{\"gpus\":");
    let mut count = 0usize;
    let mut result = Ok(());
    {
        let mut ser = serde_json::Serializer::new(&mut *out);
        let mut seq = ser.serialize_seq(None)?;
        visit(&mut |v| {
            if result.is_ok() && filter.matches(v.info) {
                result = seq.serialize_element(&Gpu::from_view(v));
                count += 1;
            }
        });
        result?;
        SerializeSeq::end(seq)?;
    }
    out.extend_from_slice(format!(",\"count\":{count}}}").as_bytes());
    Ok(())
}

/// A metric value in the API's number format (see [`MetricValues`]) appended to `out`.
fn write_number(v: f64, out: &mut Vec<u8>) {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.push(b'0');
    }
}

/// Writes `GET /api/v1/gpus/{uuid}/telemetry`'s body, byte for byte what serialising
/// [`Telemetry`] gives, without serde's generic machinery: a 24 h answer holds 86,400
/// samples of a dozen small fields each, and the generic path spends most of its time there.
pub fn write_telemetry(
    uuid: &str,
    start_ms: i64,
    end_ms: i64,
    samples: &[GpuSample],
    only: Option<&[&'static MetricDef]>,
    truncated: bool,
    out: &mut Vec<u8>,
) {
    write_window_head(uuid, start_ms, end_ms, samples.len(), out);
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_sample(s, only, out);
    }
    write_window_tail(samples.len(), truncated, out);
    out.push(b'}');
}

/// One sample object: `timestamp`, then the metrics (`only` those, if given).
fn write_sample(s: &GpuSample, only: Option<&[&'static MetricDef]>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_rfc3339_ms(s.timestamp_ms, out);
    out.push(b'"');
    let mut entry = |name: &str, v: f64| {
        // Metric names are static snake_case ASCII: nothing to escape.
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        write_number(v, out);
    };
    match only {
        Some(defs) => {
            for d in defs {
                if let Some(v) = d.value(s) {
                    entry(d.name, v);
                }
            }
        }
        None => {
            for (name, v) in metric::values(s) {
                entry(name, v);
            }
        }
    }
    out.push(b'}');
}

/// Samples written apart from their body (see [`TelemetryBody::push_written`]).
#[derive(Debug)]
pub struct WrittenSamples {
    bytes: Vec<u8>,
    count: usize,
}

/// `readings` as the sample objects of a telemetry body (`only` those metrics), for
/// [`TelemetryBody::push_written`]: the CPU-heavy part of a long answer, on any thread.
pub fn write_readings(
    readings: &[streamer::store::Reading],
    only: Option<&[&'static MetricDef]>,
) -> WrittenSamples {
    ReadingWriter::new(only).write_all(readings)
}

/// Writes stored readings as sample objects, byte for byte what [`write_sample`] writes for
/// [`streamer::store::Reading::to_wire`], without the detour: each metric's column, key and
/// number format are worked out once per answer, the date once per day. A sample is built
/// in a scratch line and appended in one copy: the pieces go in as fixed-size copies (a few
/// vector moves) and digits are written in place, where appending each piece to the body
/// was a `memcpy` call per key and number (a 24 h answer has a million of them).
struct ReadingWriter {
    fields: Vec<ReadingField>,
    day: i64,
    // "YYYY-MM-DDT" of `day`, or `None` when its year takes the general path.
    day_prefix: Option<[u8; 11]>,
    line: Vec<u8>,
}

/// Longest `,"name":` a field's key may be (metric names are far shorter; checked).
const KEY: usize = 48;
/// Room for one number: 16 integer digits, a point and 3 decimals, or what `ryu` writes.
const NUMBER: usize = 32;
/// `,{"timestamp":"…"` (a year of up to 6 digits and a sign) and the closing `}`, with room
/// to spare.
const LINE_FIXED: usize = 64;

struct ReadingField {
    column: usize,
    max: u64,
    /// `,"name":`, padded with zeros to `KEY` bytes.
    key: [u8; KEY],
    key_len: usize,
    divisor: f64,
    /// The divisor as 10^decimals when it is 1, 10, 100 or 1000.
    decimals: Option<u32>,
}

/// Below this a value divided by at most 1000 prints as its exact decimal: doubles near it
/// are far closer together than 0.001, so no shorter decimal names the same double.
const EXACT_DECIMAL_BELOW: u64 = 1 << 50;

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes the decimal digits of `v` at `line[at..]`; returns the position after them.
fn put_digits(line: &mut [u8], at: usize, mut v: u64) -> usize {
    let n = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    let mut i = at + n;
    while v >= 100 {
        let p = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        line[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
    }
    if v >= 10 {
        let p = v as usize * 2;
        line[at..at + 2].copy_from_slice(&PAIRS[p..p + 2]);
    } else {
        line[at] = b'0' + v as u8;
    }
    at + n
}

/// `v / 10^decimals` at `line[at..]` as its exact decimal, trailing zeros (and a bare point)
/// dropped: what [`write_number`] writes for that quotient while `v < EXACT_DECIMAL_BELOW`.
fn put_decimal(line: &mut [u8], at: usize, v: u64, decimals: u32) -> usize {
    // Constant divisors: a multiply each, where a divisor in a variable is a `div`.
    let (int, mut frac) = match decimals {
        0 => return put_digits(line, at, v),
        1 => (v / 10, v % 10),
        2 => (v / 100, v % 100),
        _ => (v / 1000, v % 1000),
    };
    let mut at = put_digits(line, at, int);
    if frac == 0 {
        return at;
    }
    let mut digits = decimals as usize;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    line[at] = b'.';
    at += 1;
    for i in (0..digits).rev() {
        line[at + i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    at + digits
}

impl ReadingWriter {
    fn new(only: Option<&[&'static MetricDef]>) -> Self {
        use streamer::store::reading::COLUMNS;
        let defs: Vec<&'static MetricDef> = match only {
            Some(d) => d.to_vec(),
            None => metric::METRICS.iter().collect(),
        };
        let fields: Vec<ReadingField> = defs
            .into_iter()
            .filter_map(|d| {
                let column = COLUMNS.iter().position(|c| c.field == d.field)?;
                let text = format!(",\"{}\":", d.name);
                let mut key = [0u8; KEY];
                key.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
                Some(ReadingField {
                    column,
                    max: COLUMNS[column].max,
                    key,
                    key_len: text.len(),
                    divisor: d.divisor,
                    decimals: (0..=3).find(|k| d.divisor == 10f64.powi(*k as i32)),
                })
            })
            .collect();
        Self {
            line: vec![0; LINE_FIXED + fields.len() * (KEY + NUMBER)],
            fields,
            day: i64::MIN,
            day_prefix: None,
        }
    }

    /// Every reading, each preceded by a comma.
    fn write_all(&mut self, readings: &[streamer::store::Reading]) -> WrittenSamples {
        // One buffer per block: splitting it into pieces of 1,024 samples cost a third more
        // CPU per answer (measured).
        let mut bytes = Vec::with_capacity(readings.len() * 340);
        for r in readings {
            self.write(r, &mut bytes);
        }
        WrittenSamples {
            bytes,
            count: readings.len(),
        }
    }

    /// `,` and the sample object of `r`.
    fn write(&mut self, r: &streamer::store::Reading, out: &mut Vec<u8>) {
        const HEAD: &[u8; 15] = b",{\"timestamp\":\"";
        self.set_day(r.ts_ms);
        let line = &mut self.line;
        line[..15].copy_from_slice(HEAD);
        let mut at = match self.day_prefix {
            Some(prefix) => {
                line[15..26].copy_from_slice(&prefix);
                line[26..39].copy_from_slice(&time_of_day(r.ts_ms - self.day * 86_400_000));
                39
            }
            // A year outside 0000–9999: the general formatter.
            None => {
                let t = rfc3339_ms(r.ts_ms);
                line[15..15 + t.len()].copy_from_slice(t.as_bytes());
                15 + t.len()
            }
        };
        line[at] = b'"';
        at += 1;
        for f in &self.fields {
            let Some(v) = r.get(f.column) else { continue };
            let v = v.min(f.max);
            line[at..at + KEY].copy_from_slice(&f.key);
            at += f.key_len;
            at = match f.decimals {
                Some(k) if v < EXACT_DECIMAL_BELOW => put_decimal(line, at, v, k),
                _ => {
                    let mut num = Vec::with_capacity(NUMBER);
                    write_number(v as f64 / f.divisor, &mut num);
                    line[at..at + num.len()].copy_from_slice(&num);
                    at + num.len()
                }
            };
        }
        line[at] = b'}';
        out.extend_from_slice(&line[..=at]);
    }

    fn set_day(&mut self, ms: i64) {
        let day = ms.div_euclid(86_400_000);
        if day == self.day {
            return;
        }
        self.day = day;
        let mut text = Vec::with_capacity(24);
        write_rfc3339_ms(day * 86_400_000, &mut text);
        // "YYYY-MM-DDT00:00:00.000Z": the fast path; other years write the long way.
        self.day_prefix = (text.len() == 24)
            .then(|| text[..11].try_into().ok())
            .flatten();
    }
}

/// `HH:MM:SS.mmmZ` of `in_day` ms after midnight.
fn time_of_day(in_day: i64) -> [u8; 13] {
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    let pair = |v: i64| {
        let p = v as usize * 2;
        [PAIRS[p], PAIRS[p + 1]]
    };
    let ([h0, h1], [m0, m1], [s0, s1]) = (pair(h), pair(m), pair(s));
    [
        h0,
        h1,
        b':',
        m0,
        m1,
        b':',
        s0,
        s1,
        b'.',
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
        b'Z',
    ]
}

/// `GET /api/v1/pipeline`: what the ingest path has done, from the streamer's counters.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Pipeline {
    /// Records consumed from the telemetry topic (each once; rejects included).
    pub records: u64,
    /// Samples newly stored.
    pub samples_stored: u64,
    /// Samples written to disk by the store's flushes.
    pub samples_durable: u64,
    /// Samples stored in memory, not yet on disk.
    pub samples_unflushed: u64,
    /// Redelivered samples ignored.
    pub samples_duplicate: u64,
    /// Records rejected, by reason (`unsigned`, `bad_signature`, `invalid_batch`, …).
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Rejected records delivered to the dead-letter topic.
    pub dead_lettered: u64,
    /// Failures, by kind (`consume`, `store`, `dead_letter`, `commit`).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Records on the broker not yet stored, by partition (empty in embedded mode).
    pub consumer_lag: std::collections::BTreeMap<String, u64>,
}

impl Pipeline {
    /// From the `Stats` counters (`name`, `labels` as `key="value"`, `value`).
    pub fn from_counters(counters: &[streamer::query::proto::Counter]) -> Self {
        use streamer::metrics as m;
        let label = |labels: &str| {
            labels
                .split_once('=')
                .map(|(_, v)| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut p = Pipeline::default();
        for c in counters {
            match c.name.as_str() {
                n if n == m::RECORDS => p.records = c.value,
                n if n == m::SAMPLES_STORED => p.samples_stored = c.value,
                n if n == m::SAMPLES_DURABLE => p.samples_durable = c.value,
                n if n == m::UNFLUSHED => p.samples_unflushed = c.value,
                n if n == m::SAMPLES_DUPLICATE => p.samples_duplicate = c.value,
                n if n == m::DEAD_LETTERED => p.dead_lettered = c.value,
                n if n == m::REJECTED => {
                    p.rejected.insert(label(&c.labels), c.value);
                }
                n if n == m::ERRORS => {
                    p.errors.insert(label(&c.labels), c.value);
                }
                n if n == m::CONSUMER_LAG => {
                    p.consumer_lag.insert(label(&c.labels), c.value);
                }
                _ => {}
            }
        }
        p
    }
}

/// A telemetry body written piece by piece as blocks of readings arrive (a chunked HTTP
/// body), byte for byte what [`write_telemetry`] writes in one go; compressed (each piece
/// flushed, so it can be sent at once) when asked.
pub struct TelemetryBody {
    buf: Vec<u8>,
    count: usize,
    writer: ReadingWriter,
    zip: Option<crate::compress::ChunkEncoder>,
}

impl std::fmt::Debug for TelemetryBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryBody")
            .field("count", &self.count)
            .field("zip", &self.zip)
            .finish_non_exhaustive()
    }
}

impl TelemetryBody {
    /// Starts the body of `uuid`'s window, compressed in `coding` when given.
    ///
    /// # Errors
    /// The encoder's, when it cannot start.
    pub fn new(
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        only: Option<Vec<&'static MetricDef>>,
        coding: Option<crate::compress::Coding>,
    ) -> std::io::Result<Self> {
        let mut buf = Vec::new();
        write_window_head(uuid, start_ms, end_ms, 0, &mut buf);
        Ok(Self {
            buf,
            count: 0,
            writer: ReadingWriter::new(only.as_deref()),
            zip: coding
                .map(|c| crate::compress::ChunkEncoder::new(c, 0))
                .transpose()?,
        })
    }

    fn take(&mut self, last: bool) -> bytes::Bytes {
        let raw = std::mem::take(&mut self.buf);
        if last {
            return match self.zip.take() {
                None => raw.into(),
                // Writing to memory does not fail.
                Some(z) => z.finish(&raw).unwrap_or_default().into(),
            };
        }
        match self.zip.as_mut() {
            None => raw.into(),
            Some(z) => z.chunk(&raw).unwrap_or_default().into(),
        }
    }

    /// The next piece: these readings as samples.
    pub fn samples(&mut self, readings: &[streamer::store::Reading]) -> bytes::Bytes {
        let w = self.writer.write_all(readings);
        self.push_written(w)
    }

    /// The next piece: samples written by [`write_readings`] (on another thread, say).
    pub fn push_written(&mut self, w: WrittenSamples) -> bytes::Bytes {
        // Every sample came with a comma before it; the body's first has none.
        let skip = usize::from(self.count == 0 && w.count > 0);
        if self.buf.is_empty() && self.zip.is_none() {
            self.count += w.count;
            return bytes::Bytes::from(w.bytes).slice(skip..);
        }
        self.buf.extend_from_slice(&w.bytes[skip..]);
        self.count += w.count;
        self.take(false)
    }

    /// The last piece: `count`, `truncated`, the end.
    pub fn finish(&mut self, truncated: bool) -> bytes::Bytes {
        write_window_tail(self.count, truncated, &mut self.buf);
        self.buf.push(b'}');
        self.take(true)
    }
}

/// The start of a telemetry body, up to the opening `[` of `samples`.
fn write_window_head(uuid: &str, start_ms: i64, end_ms: i64, rows: usize, out: &mut Vec<u8>) {
    out.reserve(rows * 330 + 256);
    out.extend_from_slice(b"{\"uuid\":");
    // The uuid was validated (letters, digits, '-', '_', '.'), but escape it anyway.
    let _ = serde_json::to_writer(&mut *out, uuid);
    out.extend_from_slice(b",\"start_time\":\"");
    write_rfc3339_ms(start_ms, out);
    out.extend_from_slice(b"\",\"end_time\":\"");
    write_rfc3339_ms(end_ms, out);
    out.extend_from_slice(b"\",\"samples\":[");
}

/// The end of `samples`, then `count` and `truncated` (the closing `}` is the caller's).
fn write_window_tail(count: usize, truncated: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"],\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.extend_from_slice(if truncated {
        b",\"truncated\":true"
    } else {
        b",\"truncated\":false"
    });
}

/// Writes an aggregated `GET /api/v1/gpus/{uuid}/telemetry` body: the same shape as
/// [`write_telemetry`], one sample per bucket, values in each metric's unit (a `count` is a
/// count), plus `step` and `agg`.
#[allow(clippy::too_many_arguments)]
pub fn write_aggregate(
    uuid: &str,
    start_ms: i64,
    end_ms: i64,
    step: &str,
    agg: streamer::store::Agg,
    rows: &[streamer::store::AggRow],
    only: Option<&[&'static MetricDef]>,
    truncated: bool,
    out: &mut Vec<u8>,
) {
    use streamer::store::reading::COLUMNS;
    let defs: Vec<(&MetricDef, Option<usize>)> = only
        .map_or_else(|| metric::METRICS.iter().collect::<Vec<_>>(), <[_]>::to_vec)
        .into_iter()
        .map(|m| (m, COLUMNS.iter().position(|c| c.field == m.field)))
        .collect();
    write_window_head(uuid, start_ms, end_ms, rows.len(), out);
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_rfc3339_ms(r.ts_ms, out);
        out.push(b'"');
        for (m, col) in &defs {
            let Some(v) = col.and_then(|c| r.values[c]) else {
                continue;
            };
            let v = if agg == streamer::store::Agg::Count {
                v
            } else {
                v / m.divisor
            };
            out.extend_from_slice(b",\"");
            out.extend_from_slice(m.name.as_bytes());
            out.extend_from_slice(b"\":");
            write_number(v, out);
        }
        out.push(b'}');
    }
    write_window_tail(rows.len(), truncated, out);
    out.extend_from_slice(b",\"step\":");
    let _ = serde_json::to_writer(&mut *out, step);
    out.extend_from_slice(b",\"agg\":\"");
    out.extend_from_slice(agg.name().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// One sample of `GET /api/v1/gpus/{uuid}/telemetry`: `timestamp` plus one field per metric.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sample<'a> {
    /// Sample time (collector clock), RFC 3339, millisecond precision.
    pub timestamp: String,
    /// Metric values (flattened into the sample object).
    #[serde(flatten)]
    #[schema(value_type = std::collections::HashMap<String, f64>)]
    pub values: MetricValues<'a>,
}

/// `GET /api/v1/gpus/{uuid}/telemetry`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Telemetry<'a> {
    /// The GPU.
    pub uuid: &'a str,
    /// Start of the window (inclusive), RFC 3339.
    pub start_time: String,
    /// End of the window (exclusive), RFC 3339.
    pub end_time: String,
    /// Samples in time order.
    pub samples: Vec<Sample<'a>>,
    /// Number of samples returned.
    pub count: usize,
    /// More samples matched than `limit` allowed; ask again from the last timestamp.
    pub truncated: bool,
    /// With `step`: the bucket width, as asked (each sample is one bucket, `timestamp` its
    /// start, values the bucket's aggregate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// With `step`: the aggregate (`avg`, `min`, `max`, `last`, `count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agg: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_gpu_list_is_byte_for_byte_the_serialised_list() {
        use collector::simulated::{FleetSpec, SimulatedSource};
        use streamer::store::{DiskConfig, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_disk(DiskConfig::new(dir.path())).unwrap();
        let fleet = SimulatedSource::new(FleetSpec {
            nodes: 3,
            gpus_per_node: 4,
            seed: 9,
        });
        for node in 0..3 {
            let mut b = fleet.batch(node, 1_790_000_000_000);
            if node == 1 {
                b.gpus[2].health = Some(telemetry_wire::health::GpuHealth {
                    status: HealthStatus::Degraded.into(),
                    reasons: vec!["row_remap_pending: a memory row remap waits".into()],
                });
            }
            store.apply(&b).unwrap();
        }
        let mut seen = Vec::new();
        for node in [None, Some("sim-node-001"), Some("nope")] {
            for health in [None, Some(HealthStatus::Ok), Some(HealthStatus::Degraded)] {
                let filter = GpuFilter {
                    node: node.map(str::to_string),
                    health,
                    ..Default::default()
                };
                let mut streamed = Vec::new();
                write_gpu_list(|f| store.latest().visit(node, f), &filter, &mut streamed).unwrap();
                let gpus: Vec<_> = store
                    .latest()
                    .list(node)
                    .into_iter()
                    .map(streamer::query::status)
                    .collect();
                let reference = gpu_list_json(&gpus, &filter).unwrap();
                let streamed = String::from_utf8(streamed).unwrap();
                assert_eq!(streamed, String::from_utf8(reference).unwrap());
                let v: serde_json::Value = serde_json::from_str(&streamed).unwrap();
                seen.push(v["count"].as_u64().unwrap());
            }
        }
        // 12 GPUs, one degraded (on sim-node-001).
        assert_eq!(seen, [12, 11, 1, 4, 3, 1, 0, 0, 0]);
    }

    #[test]
    fn hand_written_telemetry_is_byte_for_byte_the_serialised_struct() {
        let samples: Vec<GpuSample> = (0..50)
            .map(|i| GpuSample {
                uuid: String::new(),
                timestamp_ms: 1_790_000_000_000 + i * 1001,
                gpu_utilization_percent: Some((i % 101) as u32),
                memory_used_bytes: (i % 3 != 0).then_some(85_899_345_920 - i as u64),
                power_usage_milliwatts: Some(312_500 + i as u32 * 7),
                energy_consumed_millijoules: Some(68_532_952_693_123 + i as u64),
                temperature_celsius: (i % 5 != 0).then_some(54),
                ..Default::default()
            })
            .collect();
        let subset = [
            metric::find("power_usage_watts").unwrap(),
            metric::find("gpu_utilization_percent").unwrap(),
        ];
        for only in [None, Some(&subset[..])] {
            for truncated in [false, true] {
                let reference = serde_json::to_string(&Telemetry {
                    uuid: "GPU-x",
                    start_time: rfc3339_ms(1_790_000_000_000),
                    end_time: rfc3339_ms(1_790_000_100_000),
                    samples: samples
                        .iter()
                        .map(|s| Sample {
                            timestamp: rfc3339_ms(s.timestamp_ms),
                            values: MetricValues::new(s, only),
                        })
                        .collect(),
                    count: samples.len(),
                    truncated,
                    step: None,
                    agg: None,
                })
                .unwrap();
                let mut fast = Vec::new();
                write_telemetry(
                    "GPU-x",
                    1_790_000_000_000,
                    1_790_000_100_000,
                    &samples,
                    only,
                    truncated,
                    &mut fast,
                );
                assert_eq!(String::from_utf8(fast).unwrap(), reference);
            }
        }
    }

    #[test]
    fn a_body_written_in_pieces_is_the_one_written_at_once_plain_or_compressed() {
        use crate::compress::Coding;
        use std::io::Read as _;
        let readings: Vec<streamer::store::Reading> = (0..1000)
            .map(|i| {
                streamer::store::Reading::from_wire(&GpuSample {
                    timestamp_ms: 1_790_000_000_000 + i * 1000,
                    gpu_utilization_percent: Some((i % 101) as u32),
                    power_usage_milliwatts: Some(100_000 + i as u32),
                    ..Default::default()
                })
            })
            .collect();
        let samples: Vec<GpuSample> = readings.iter().map(|r| r.to_wire()).collect();
        let subset = [metric::find("power_usage_watts").unwrap()];
        for only in [None, Some(&subset[..])] {
            let mut whole = Vec::new();
            write_telemetry("GPU-x", 1, 2, &samples, only, true, &mut whole);
            for coding in [None, Some(Coding::Gzip), Some(Coding::Zstd)] {
                let mut body =
                    TelemetryBody::new("GPU-x", 1, 2, only.map(<[_]>::to_vec), coding).unwrap();
                let mut out = Vec::new();
                for block in readings.chunks(333) {
                    let piece = body.samples(block);
                    assert!(!piece.is_empty(), "each piece can leave at once");
                    out.extend_from_slice(&piece);
                }
                out.extend_from_slice(&body.finish(true));
                if let Some(c) = coding {
                    let mut plain = Vec::new();
                    match c {
                        Coding::Gzip => {
                            flate2::read::GzDecoder::new(&out[..])
                                .read_to_end(&mut plain)
                                .unwrap();
                        }
                        Coding::Zstd => plain = zstd::decode_all(&out[..]).unwrap(),
                    }
                    assert!(out.len() < plain.len() / 4, "{c:?}");
                    out = plain;
                }
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(whole.clone()).unwrap()
                );
            }
        }
    }

    #[test]
    fn readings_are_written_byte_for_byte_as_their_wire_samples() {
        use streamer::store::Reading;
        use streamer::store::reading::{COLUMNS, N_COLUMNS};
        // Every metric has a column to be read from.
        assert_eq!(ReadingWriter::new(None).fields.len(), metric::METRICS.len());
        let edges = [
            0,
            1,
            9,
            10,
            999,
            1000,
            1001,
            1010,
            1100,
            312_500,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            EXACT_DECIMAL_BELOW - 1,
            EXACT_DECIMAL_BELOW,
            EXACT_DECIMAL_BELOW + 1,
            9_000_000_000_000_000,
            u64::MAX,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let subset = [
            metric::find("energy_consumed_joules").unwrap(),
            metric::find("power_usage_watts").unwrap(),
        ];
        for only in [None, Some(&subset[..])] {
            let mut writer = ReadingWriter::new(only);
            for k in 0..20_000u64 {
                // Times across days, years and the edges of the fast date path.
                let ts = match k % 4 {
                    0 => 1_790_000_000_000 + (k as i64) * 999,
                    1 => (next() % 400_000_000_000_000) as i64 - 62_135_596_800_000,
                    2 => -1 - (k as i64),
                    _ => 253_402_300_799_000 + (k as i64),
                };
                let mut r = Reading::empty(ts);
                for i in 0..N_COLUMNS {
                    let v = match next() % 5 {
                        0 => continue,
                        1 => edges[(next() % edges.len() as u64) as usize],
                        2 => next() % 1_000_000,
                        3 => next() >> (next() % 64),
                        _ => next() % (1 << 42),
                    };
                    r.set(i, v);
                }
                let (mut fast, mut slow) = (Vec::new(), vec![b',']);
                writer.write(&r, &mut fast);
                write_sample(&r.to_wire(), only, &mut slow);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap(),
                    "{r:?}"
                );
            }
        }
        assert_eq!(COLUMNS.len(), N_COLUMNS);
    }

    #[test]
    fn fast_rfc3339_matches_the_time_crate() {
        let mut ms: i64 = -62_135_596_800_000; // 0001-01-01
        while ms < 253_402_300_799_000 {
            assert_eq!(rfc3339_ms(ms), rfc3339_ms_slow(ms), "{ms}");
            ms += 7_777_777_777 + 123;
        }
        for ms in [0, -1, 951_782_400_000, 1_790_000_000_123, 4_107_542_399_999] {
            assert_eq!(rfc3339_ms(ms), rfc3339_ms_slow(ms), "{ms}");
        }
        assert_eq!(rfc3339_ms(1_790_000_000_123), "2026-09-21T14:13:20.123Z");
    }
}
