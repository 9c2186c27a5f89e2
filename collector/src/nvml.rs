//! Reading real GPUs through NVML (nvml-wrapper).
//!
//! Inventory is read once at start (it does not change while the driver is loaded); every
//! round reads each device's telemetry. A query NVML answers with `NotSupported` (or that the
//! loaded library lacks: `FailedToLoadSymbol`) leaves its field absent, never zero. Any other
//! per-field error is logged once per field and device, counted, and also leaves the field
//! absent, so one flaky counter cannot hide the rest of the GPU.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, TemperatureSensor,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, GpmSample, Nvml};
use telemetry_wire::health::XidCount;
use telemetry_wire::wire::proto::{GpuProcess, MigDevice, PodRef};
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch};

use crate::gpu_health::{Round, judge};
use crate::kubelet::{Assignment, GpuIds, PodMapping, PodTable};
use crate::procfs;
use crate::source::{GpuSource, SourceError};
use crate::xid::{XidLog, XidWatcher};

/// The library name nvml-wrapper loads when no path is given.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// GPUs read through NVML.
pub struct NvmlSource {
    // Leaked at open: GPM samples borrow it from one round to the next, and the XID thread
    // shares it; a collector opens one for its lifetime.
    nvml: &'static Nvml,
    node: String,
    inventory: Vec<GpuInfo>,
    errors: FieldErrors,
    xids: Arc<XidLog>,
    // Stops and joins the XID event thread when the source goes.
    _xid_watcher: XidWatcher,
    xid_window: Duration,
    // The kubelet's pod mapping (refreshed on its own task), when attributing pods.
    pods: Option<Arc<PodTable>>,
    // The host's /proc, for the cgroup of each GPU process.
    proc_root: PathBuf,
    // Per GPU: the newest process utilization sample read (NVML's CPU timestamp, µs).
    util_seen: HashMap<u32, u64>,
    // GPUs with GPM (Hopper and later, MIG off), and each one's sample from the last round.
    gpm_supported: HashSet<u32>,
    gpm_prev: HashMap<u32, GpmSample<'static>>,
}

/// The field values each round reads in one call, with the name a failure is logged under.
const FIELD_IDS: [(u32, &str); 15] = [
    (82, "memory_temperature"),
    (142, "remapped_rows_correctable"),
    (143, "remapped_rows_uncorrectable"),
    (144, "row_remap_pending"),
    (145, "row_remap_failure"),
    (197, "pcie_tx_bytes"),
    (198, "pcie_rx_bytes"),
    (29, "retired_pages_sbe"),
    (30, "retired_pages_dbe"),
    (31, "retired_pages_pending"),
    (91, "nvlink_link_count"),
    (38, "nvlink_crc_flit_errors"),
    (45, "nvlink_crc_data_errors"),
    (52, "nvlink_replay_errors"),
    (59, "nvlink_recovery_errors"),
];

fn sample_u64(v: SampleValue) -> Option<u64> {
    match v {
        SampleValue::U32(v) => Some(u64::from(v)),
        SampleValue::U64(v) => Some(v),
        SampleValue::I64(v) => u64::try_from(v).ok(),
        SampleValue::F64(v) => (v >= 0.0).then_some(v as u64),
    }
}

/// How long a health-bearing XID keeps a GPU `degraded` or `failed` by default.
pub const DEFAULT_XID_HEALTH_WINDOW: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("node", &self.node)
            .field("gpus", &self.inventory.len())
            .finish_non_exhaustive()
    }
}

fn nvml_err(call: &'static str) -> impl FnOnce(NvmlError) -> SourceError {
    move |e| SourceError::Nvml {
        call,
        detail: e.to_string(),
    }
}

impl NvmlSource {
    /// Loads NVML from `library` (default [`DEFAULT_LIBRARY`]), initialises it and reads the
    /// inventory of every device.
    ///
    /// # Errors
    /// [`SourceError::NvmlLoad`] when the library cannot be loaded,
    /// [`SourceError::NvmlInit`] when `nvmlInit` fails, [`SourceError::Nvml`] when the
    /// device list cannot be read.
    pub fn open(library: Option<&Path>, node: &str) -> Result<Self, SourceError> {
        let lib_name =
            library.map_or_else(|| DEFAULT_LIBRARY.to_string(), |p| p.display().to_string());
        let mut builder = Nvml::builder();
        if let Some(p) = library {
            builder.lib_path(p.as_os_str());
        } else {
            builder.lib_path(OsStr::new(DEFAULT_LIBRARY));
        }
        let nvml = builder.init().map_err(|e| match e {
            NvmlError::LibloadingError(le) => SourceError::NvmlLoad {
                library: lib_name.clone(),
                detail: le.to_string(),
            },
            NvmlError::FailedToLoadSymbol(s) => SourceError::NvmlLoad {
                library: lib_name.clone(),
                detail: format!("missing symbol {s}"),
            },
            other => SourceError::NvmlInit {
                library: lib_name.clone(),
                detail: other.to_string(),
            },
        })?;
        let driver = nvml.sys_driver_version().ok();
        let cuda = nvml.sys_cuda_driver_version().ok();
        let count = nvml
            .device_count()
            .map_err(nvml_err("nvmlDeviceGetCount"))?;
        let mut inventory = Vec::with_capacity(count as usize);
        for index in 0..count {
            let d = nvml
                .device_by_index(index)
                .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            inventory.push(GpuInfo {
                uuid: d.uuid().map_err(nvml_err("nvmlDeviceGetUUID"))?,
                index,
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                serial: d.serial().ok(),
                pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
                driver_version: driver.clone(),
                cuda_driver_version: cuda,
                mig_enabled: d.mig_mode().ok().map(|m| m.current == 1),
                node: node.to_string(),
                ..Default::default()
            });
        }
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let xids = Arc::new(XidLog::default());
        let watched = inventory
            .iter()
            .map(|g| (g.index, g.uuid.clone()))
            .collect();
        let gpm_supported = inventory
            .iter()
            .filter(|g| g.mig_enabled != Some(true))
            .filter(|g| {
                let support = nvml
                    .device_by_uuid(g.uuid.as_str())
                    .and_then(|d| d.gpm_support());
                match support {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::info!(gpu = g.index, "no GPM on this GPU (before Hopper): profiling metrics absent");
                        false
                    }
                    Err(error) => {
                        tracing::info!(gpu = g.index, %error, "GPM unavailable: profiling metrics absent");
                        false
                    }
                }
            })
            .map(|g| g.index)
            .collect();
        Ok(Self {
            _xid_watcher: XidWatcher::start(nvml, watched, xids.clone()),
            nvml,
            node: node.to_string(),
            inventory,
            errors: FieldErrors::default(),
            xids,
            xid_window: DEFAULT_XID_HEALTH_WINDOW,
            pods: None,
            proc_root: PathBuf::from("/proc"),
            util_seen: HashMap::new(),
            gpm_supported,
            gpm_prev: HashMap::new(),
        })
    }

    /// GPM activity between the last round's sample of GPU `d` and this one's, into `s`
    /// (nothing the first round: there is no interval yet).
    fn gpm(&mut self, d: &Device<'static>, index: u32, s: &mut GpuSample) {
        use nvml_wrapper::enums::gpm::GpmMetricId as Id;
        let Some(now) = self.errors.field(index, "gpm_sample", d.gpm_sample()) else {
            return;
        };
        let Some(prev) = self.gpm_prev.insert(index, now) else {
            return;
        };
        let now = &self.gpm_prev[&index];
        const IDS: [Id; 8] = [
            Id::GraphicsUtil,
            Id::SmUtil,
            Id::SmOccupancy,
            Id::AnyTensorUtil,
            Id::DramBwUtil,
            Id::Fp64Util,
            Id::Fp32Util,
            Id::Fp16Util,
        ];
        let got = nvml_wrapper::gpm::gpm_metrics_get(self.nvml, &prev, now, &IDS);
        let Some(results) = self.errors.field(index, "gpm_metrics", got) else {
            return;
        };
        let mut v = [None; 8];
        for (slot, r) in v.iter_mut().zip(results) {
            *slot = self
                .errors
                .field(index, "gpm_metric", r)
                .map(|m| (m.value * 100.0).round().clamp(0.0, 10_000.0) as u32);
        }
        [
            s.gpm_graphics_activity,
            s.gpm_sm_activity,
            s.gpm_sm_occupancy,
            s.gpm_tensor_activity,
            s.gpm_dram_activity,
            s.gpm_fp64_activity,
            s.gpm_fp32_activity,
            s.gpm_fp16_activity,
        ] = v;
    }

    /// Attributes GPUs to pods from `table` and GPU processes to pods through the cgroup
    /// files under `proc_root` (the host's /proc).
    #[must_use]
    pub fn with_pods(mut self, table: Arc<PodTable>, proc_root: PathBuf) -> Self {
        self.pods = Some(table);
        self.proc_root = proc_root;
        self
    }

    /// The MIG devices of GPU `d` (MIG mode on), by slot, with what NVML measures for each.
    fn mig_devices(&mut self, d: &Device<'_>, index: u32) -> Vec<MigDevice> {
        let Some(slots) = self
            .errors
            .field(index, "mig_device_count", d.mig_device_count())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for slot in 0..slots {
            let m = match d.mig_device_by_index(slot) {
                Ok(m) => m,
                // An empty slot.
                Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
                Err(e) => {
                    self.errors.field::<()>(index, "mig_device", Err(e));
                    continue;
                }
            };
            let Some(uuid) = self.errors.field(index, "mig_uuid", m.uuid()) else {
                continue;
            };
            // "NVIDIA H100 80GB HBM3 MIG 1g.10gb" → "1g.10gb".
            let profile = m
                .name()
                .ok()
                .and_then(|n| n.rsplit_once("MIG ").map(|(_, p)| p.trim().to_string()))
                .unwrap_or_default();
            let mem = self.errors.field(index, "mig_memory", m.memory_info());
            let gi = instance_id(self.nvml, &m, Instance::Gpu);
            let ci = instance_id(self.nvml, &m, Instance::Compute);
            out.push(MigDevice {
                uuid,
                index: slot,
                gpu_instance_id: self.errors.field(index, "mig_gpu_instance_id", gi),
                compute_instance_id: self.errors.field(index, "mig_compute_instance_id", ci),
                profile,
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                pods: Vec::new(),
            });
        }
        out
    }

    /// The processes on GPU `d` with their utilization and pod, ordered by PID.
    fn processes(
        &mut self,
        d: &Device<'_>,
        index: u32,
        gpu: &GpuIds,
        mig: &[MigDevice],
        mapping: Option<&PodMapping>,
    ) -> Vec<GpuProcess> {
        let Some(procs) = self
            .errors
            .field(index, "processes", d.running_compute_processes())
        else {
            return Vec::new();
        };
        if procs.is_empty() {
            return Vec::new();
        }
        // Samples newer than the last one read; NotFound means none.
        let util = match d.process_utilization_stats(self.util_seen.get(&index).copied()) {
            Err(NvmlError::NotFound) => Vec::new(),
            r => self
                .errors
                .field(index, "process_utilization", r)
                .unwrap_or_default(),
        };
        if let Some(newest) = util.iter().map(|u| u.timestamp).max() {
            self.util_seen.insert(index, newest);
        }
        let mut out: Vec<GpuProcess> = procs
            .into_iter()
            .map(|p| {
                let u = util
                    .iter()
                    .filter(|u| u.pid == p.pid)
                    .max_by_key(|u| u.timestamp);
                let cgroup = procfs::pod_of(&self.proc_root, p.pid);
                let holder = cgroup
                    .as_ref()
                    .zip(mapping)
                    .and_then(|(c, m)| m.pod_of_uid(&c.pod_uid, gpu));
                // On a MIG GPU, the instance it runs on.
                let mig_device_uuid = p.gpu_instance_id.and_then(|gi| {
                    mig.iter()
                        .find(|m| {
                            m.gpu_instance_id == Some(gi)
                                && (p.compute_instance_id.is_none()
                                    || m.compute_instance_id == p.compute_instance_id)
                        })
                        .map(|m| m.uuid.clone())
                });
                GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_utilization_percent: u.map(|u| u.sm_util),
                    memory_utilization_percent: u.map(|u| u.mem_util),
                    encoder_utilization_percent: u.map(|u| u.enc_util),
                    decoder_utilization_percent: u.map(|u| u.dec_util),
                    namespace: holder.map(|h| h.namespace.clone()),
                    pod: holder.map(|h| h.pod.clone()),
                    container: holder.map(|h| h.container.clone()),
                    pod_uid: cgroup.map(|c| c.pod_uid),
                    mig_device_uuid,
                }
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Sets how long a health-bearing XID keeps a GPU `degraded` or `failed`.
    #[must_use]
    pub fn with_xid_window(mut self, window: Duration) -> Self {
        self.xid_window = window;
        self
    }

    /// The GPUs found at start.
    pub fn inventory(&self) -> &[GpuInfo] {
        &self.inventory
    }

    /// Per-field read errors other than "not supported" since start.
    pub fn field_errors(&self) -> u64 {
        self.errors.count
    }
}

/// Per-field read errors: logged once per (GPU, field), all counted; fields the GPU does not
/// support are logged once too (and not counted: absent is their value).
#[derive(Debug, Default)]
struct FieldErrors {
    warned: HashSet<(u32, &'static str)>,
    unsupported: HashSet<(u32, &'static str)>,
    // GPUs that fell off the bus (NVML's GPU_IS_LOST), until they answer again.
    lost: HashSet<u32>,
    count: u64,
}

impl FieldErrors {
    fn field<T>(&mut self, index: u32, field: &'static str, r: Result<T, NvmlError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(NvmlError::GpuLost) => {
                self.gone(index);
                None
            }
            // Not there, or (the collector runs unprivileged on purpose) not allowed: absent,
            // said once with NVML's reason, neither an error nor a health matter.
            Err(
                e @ (NvmlError::NotSupported
                | NvmlError::FailedToLoadSymbol(_)
                | NvmlError::NoPermission),
            ) => {
                if self.unsupported.insert((index, field)) {
                    if matches!(e, NvmlError::NoPermission) {
                        tracing::info!(gpu = index, field, reason = %e, "needs more privilege than the collector has (it runs as non-root with no capabilities); left absent");
                    } else {
                        tracing::info!(gpu = index, field, reason = %e, "not available on this GPU; left absent");
                    }
                }
                None
            }
            Err(error) => {
                self.count += 1;
                if self.warned.insert((index, field)) {
                    tracing::warn!(%error, gpu = index, field, "NVML read failed; field left absent");
                }
                None
            }
        }
    }

    /// The field values read in one call (NVML field ids): memory temperature, the four
    /// row-remapping values, the PCIe byte counters, retired pages, the NVLink link count and
    /// error totals. Each can fail on its own (absent, logged once).
    fn field_values(&mut self, d: &Device<'_>, index: u32) -> [Option<u64>; FIELD_IDS.len()] {
        const N: usize = FIELD_IDS.len();
        let ids = FIELD_IDS.map(|(id, _)| FieldId(id));
        let Some(values) = self.field(index, "field_values", d.field_values_for(&ids)) else {
            return [None; N];
        };
        let mut out = [None; N];
        for ((slot, (_, name)), v) in out.iter_mut().zip(FIELD_IDS).zip(values) {
            let v = v.and_then(|s| s.value);
            *slot = self.field(index, name, v).and_then(sample_u64);
        }
        out
    }

    /// Links up of `count` (nvmlDeviceGetNvLinkState per link); `None` without NVLink.
    fn links_active(&mut self, d: &Device<'_>, index: u32, count: Option<u64>) -> Option<u32> {
        let count = u32::try_from(count?).ok().filter(|c| *c > 0)?;
        let mut up = 0;
        for link in 0..count {
            up += u32::from(self.field(
                index,
                "nvlink_state",
                d.link_wrapper_for(link).is_active(),
            )?);
        }
        Some(up)
    }

    /// GPU `index` answered GPU_IS_LOST: said once until it answers again, counted each time.
    fn gone(&mut self, index: u32) {
        self.count += 1;
        if self.lost.insert(index) {
            tracing::error!(
                gpu = index,
                "GPU fell off the bus (NVML: GPU is lost); no samples from it until it answers again"
            );
        }
    }

    /// One GPU's reading; `None` while it is off the bus (said once, counted each round).
    fn read(
        &mut self,
        nvml: &Nvml,
        d: &Device<'_>,
        index: u32,
        uuid: String,
        now_ms: i64,
    ) -> Option<GpuSample> {
        let util = match d.utilization_rates() {
            Err(NvmlError::GpuLost) => {
                self.gone(index);
                return None;
            }
            r => {
                if self.lost.remove(&index) {
                    tracing::warn!(gpu = index, "GPU answers again");
                }
                self.field(index, "utilization", r)
            }
        };
        let mem = self.field(index, "memory", d.memory_info());
        let temperature_celsius =
            self.field(index, "temperature", d.temperature(TemperatureSensor::Gpu));
        let power = self.field(index, "power", d.power_usage());
        let limit = self.field(index, "power_limit", d.enforced_power_limit());
        let energy = self.field(index, "energy", d.total_energy_consumption());
        let sm = self.field(index, "sm_clock", d.clock_info(Clock::SM));
        let memclk = self.field(index, "memory_clock", d.clock_info(Clock::Memory));
        let fan = self.field(index, "fan_speed", d.fan_speed(0));
        let sm_max = self.field(index, "sm_clock_max", d.max_clock_info(Clock::SM));
        let mem_max = self.field(index, "memory_clock_max", d.max_clock_info(Clock::Memory));
        let enc = self.field(index, "encoder_utilization", d.encoder_utilization());
        let dec = self.field(index, "decoder_utilization", d.decoder_utilization());
        let replays = self.field(index, "pcie_replay_count", d.pcie_replay_counter());
        let link_gen = self.field(index, "pcie_link_generation", d.current_pcie_link_gen());
        let link_width = self.field(index, "pcie_link_width", d.current_pcie_link_width());
        use {EccCounter::*, MemoryError::*, PerformancePolicy as Policy};
        let [ecc_cv, ecc_uv, ecc_ca, ecc_ua] = [
            ("ecc_corrected_volatile", Corrected, Volatile),
            ("ecc_uncorrected_volatile", Uncorrected, Volatile),
            ("ecc_corrected_aggregate", Corrected, Aggregate),
            ("ecc_uncorrected_aggregate", Uncorrected, Aggregate),
        ]
        .map(|(field, error, counter)| {
            self.field(index, field, d.total_ecc_errors(error, counter))
        });
        let [power_viol, thermal_viol] = [
            ("power_violation", Policy::Power),
            ("thermal_violation", Policy::Thermal),
        ]
        .map(|(field, policy)| self.field(index, field, d.violation_status(policy)));
        let [
            mem_temp,
            rows_cor,
            rows_unc,
            remap_pending,
            remap_failure,
            tx,
            rx,
            retired_sbe,
            retired_dbe,
            retired_pending,
            link_count,
            nvl_flit,
            nvl_data,
            nvl_replay,
            nvl_recovery,
        ] = self.field_values(d, index);
        let links_active = self.links_active(d, index, link_count);
        // Bytes over all links: only a GPU with NVLink is asked.
        let [nvl_tx, nvl_rx] = match links_active {
            Some(_) => match nvlink_bytes(nvml, d) {
                Ok(v) => v.map(|(name, r)| self.field(index, name, r)),
                Err(e) => {
                    self.field::<()>(index, "nvlink_bytes", Err(e));
                    [None, None]
                }
            },
            None => [None, None],
        };
        let small = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
        let reasons = self.field(index, "clocks_event_reasons", d.current_throttle_reasons());
        let flag = |r: ThrottleReasons| reasons.map(|m| u32::from(m.contains(r)));
        // Fallen off the bus in the middle of this round: nothing half read is sent.
        if self.lost.contains(&index) {
            return None;
        }
        Some(GpuSample {
            uuid,
            timestamp_ms: now_ms,
            gpu_utilization_percent: util.as_ref().map(|u| u.gpu),
            memory_utilization_percent: util.as_ref().map(|u| u.memory),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            temperature_celsius,
            power_usage_milliwatts: power,
            power_limit_milliwatts: limit,
            energy_consumed_millijoules: energy,
            sm_clock_mhz: sm,
            memory_clock_mhz: memclk,
            fan_speed_percent: fan,
            memory_free_bytes: mem.as_ref().map(|m| m.free),
            memory_reserved_bytes: mem.as_ref().map(|m| m.reserved),
            sm_clock_max_mhz: sm_max,
            memory_clock_max_mhz: mem_max,
            encoder_utilization_percent: enc.map(|u| u.utilization),
            decoder_utilization_percent: dec.map(|u| u.utilization),
            pcie_replay_count: replays.map(u64::from),
            pcie_link_generation: link_gen,
            pcie_link_width: link_width,
            ecc_corrected_volatile: ecc_cv,
            ecc_uncorrected_volatile: ecc_uv,
            ecc_corrected_aggregate: ecc_ca,
            ecc_uncorrected_aggregate: ecc_ua,
            power_violation_ns: power_viol.map(|v| v.violation_time),
            thermal_violation_ns: thermal_viol.map(|v| v.violation_time),
            clocks_event_gpu_idle: flag(ThrottleReasons::GPU_IDLE),
            clocks_event_applications_clocks: flag(ThrottleReasons::APPLICATIONS_CLOCKS_SETTING),
            clocks_event_sw_power_cap: flag(ThrottleReasons::SW_POWER_CAP),
            clocks_event_hw_slowdown: flag(ThrottleReasons::HW_SLOWDOWN),
            clocks_event_sync_boost: flag(ThrottleReasons::SYNC_BOOST),
            clocks_event_sw_thermal: flag(ThrottleReasons::SW_THERMAL_SLOWDOWN),
            clocks_event_hw_thermal: flag(ThrottleReasons::HW_THERMAL_SLOWDOWN),
            clocks_event_hw_power_brake: flag(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN),
            memory_temperature_celsius: small(mem_temp),
            remapped_rows_correctable: small(rows_cor),
            remapped_rows_uncorrectable: small(rows_unc),
            row_remap_pending: small(remap_pending),
            row_remap_failure: small(remap_failure),
            pcie_tx_bytes: tx,
            pcie_rx_bytes: rx,
            retired_pages_sbe: small(retired_sbe),
            retired_pages_dbe: small(retired_dbe),
            retired_pages_pending: small(retired_pending),
            nvlink_links_active: links_active,
            nvlink_crc_flit_errors: nvl_flit,
            nvlink_crc_data_errors: nvl_data,
            nvlink_replay_errors: nvl_replay,
            nvlink_recovery_errors: nvl_recovery,
            nvlink_tx_bytes: nvl_tx,
            nvlink_rx_bytes: nvl_rx,
            // Filled in by the GPM step (Hopper and later).
            gpm_graphics_activity: None,
            gpm_sm_activity: None,
            gpm_sm_occupancy: None,
            gpm_tensor_activity: None,
            gpm_dram_activity: None,
            gpm_fp64_activity: None,
            gpm_fp32_activity: None,
            gpm_fp16_activity: None,
        })
    }
}

fn pod_ref(a: &Assignment) -> PodRef {
    PodRef {
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        container: a.container.clone(),
        device_id: a.device_id.clone(),
        resource: a.resource.clone(),
    }
}

/// A value read under a field name (for [`FieldErrors::field`]).
type NamedRead = (&'static str, Result<u64, NvmlError>);

/// NVLink data bytes sent and received over all links: field values 138 and 139 with the
/// all-links scope (`UINT_MAX`), which nvml-wrapper's `field_values_for` cannot ask for (it
/// always sends scope 0, link 0), through the raw symbol. NVML counts KiB.
#[allow(unsafe_code)]
fn nvlink_bytes(nvml: &Nvml, d: &Device<'_>) -> Result<[NamedRead; 2], NvmlError> {
    use nvml_wrapper_sys::bindings::nvmlFieldValue_t;
    let f = nvml
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .map_err(|_| NvmlError::FailedToLoadSymbol("nvmlDeviceGetFieldValues".into()))?;
    // SAFETY: nvmlFieldValue_t is plain data (integers and a union of integers and a
    // double): all zeroes is a valid value.
    let mut values: [nvmlFieldValue_t; 2] = unsafe { std::mem::zeroed() };
    for (v, id) in values.iter_mut().zip([138, 139]) {
        v.fieldId = id;
        v.scopeId = u32::MAX;
    }
    // SAFETY: `d` is a live handle of this NVML; NVML writes at most `values.len()` entries
    // into the array, whose length we pass.
    nvml_wrapper::error::nvml_try(unsafe { f(d.handle(), 2, values.as_mut_ptr()) })?;
    Ok(
        [("nvlink_tx_bytes", 0), ("nvlink_rx_bytes", 1)].map(|(name, i)| {
            let v = &values[i];
            let got = nvml_wrapper::error::nvml_try(v.nvmlReturn).and_then(|()| {
                // SAFETY: the union member read is the one `valueType` names.
                let kib = unsafe {
                    match v.valueType {
                        0 => v.value.dVal as u64,
                        1 => u64::from(v.value.uiVal),
                        2 => v.value.ulVal as u64,
                        3 => v.value.ullVal,
                        4 => u64::try_from(v.value.sllVal).unwrap_or(0),
                        _ => return Err(NvmlError::UnexpectedVariant(v.valueType)),
                    }
                };
                Ok(kib.saturating_mul(1024))
            });
            (name, got)
        }),
    )
}

/// Which instance id [`instance_id`] reads.
#[derive(Debug, Clone, Copy)]
enum Instance {
    Gpu,
    Compute,
}

/// A MIG device's GPU or compute instance id: `nvmlDeviceGetGpuInstanceId` /
/// `nvmlDeviceGetComputeInstanceId`, which nvml-wrapper does not wrap, through its raw
/// symbols (a driver without them: `FailedToLoadSymbol`, so the field is absent).
#[allow(unsafe_code)]
fn instance_id(nvml: &Nvml, d: &Device<'_>, which: Instance) -> Result<u32, NvmlError> {
    let lib = nvml.lib();
    let (f, name) = match which {
        Instance::Gpu => (
            lib.nvmlDeviceGetGpuInstanceId.as_ref().ok(),
            "nvmlDeviceGetGpuInstanceId",
        ),
        Instance::Compute => (
            lib.nvmlDeviceGetComputeInstanceId.as_ref().ok(),
            "nvmlDeviceGetComputeInstanceId",
        ),
    };
    let f = f.ok_or_else(|| NvmlError::FailedToLoadSymbol(name.into()))?;
    let mut id: std::os::raw::c_uint = 0;
    // SAFETY: `d` is a live handle of this NVML instance (it borrows `nvml`), and the
    // function writes one unsigned int through the pointer, which points at `id`.
    nvml_wrapper::error::nvml_try(unsafe { f(d.handle(), &mut id) })?;
    Ok(id)
}

fn window_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl GpuSource for NvmlSource {
    fn collect(&mut self, now_ms: i64) -> Result<Vec<TelemetryBatch>, SourceError> {
        let mut samples = Vec::with_capacity(self.inventory.len());
        let mut gpus = Vec::with_capacity(self.inventory.len());
        let mapping = self.pods.as_ref().map(|t| t.snapshot());
        let nvml = self.nvml;
        for i in 0..self.inventory.len() {
            let (index, uuid) = (self.inventory[i].index, self.inventory[i].uuid.clone());
            let errors_before = self.errors.count;
            let mut processes = Vec::new();
            let mut mig = Vec::new();
            let mut ids = GpuIds::new(&uuid, index, Vec::new());
            // By UUID, not index: indexes can change if devices are re-enumerated, and a
            // sample must never be stamped with another GPU's UUID.
            let sample = match nvml.device_by_uuid(uuid.as_str()) {
                Ok(device) => {
                    let mut sample = self.errors.read(nvml, &device, index, uuid.clone(), now_ms);
                    if let Some(s) = sample
                        .as_mut()
                        .filter(|_| self.gpm_supported.contains(&index))
                    {
                        self.gpm(&device, index, s);
                    }
                    if sample.is_some() {
                        if self.inventory[i].mig_enabled == Some(true) {
                            mig = self.mig_devices(&device, index);
                            ids.mig = mig.iter().map(|m| m.uuid.clone()).collect();
                        }
                        processes = self.processes(&device, index, &ids, &mig, mapping.as_deref());
                    }
                    sample
                }
                Err(NvmlError::GpuLost) => {
                    self.errors.gone(index);
                    None
                }
                Err(error) => {
                    self.errors.count += 1;
                    tracing::warn!(%error, gpu = index, "cannot get device handle; GPU skipped this round");
                    None
                }
            };
            let xids = self
                .xids
                .snapshot(index, now_ms, window_ms(self.xid_window));
            let mut info = self.inventory[i].clone();
            info.health = Some(judge(Round {
                sample: sample.as_ref(),
                lost: self.errors.lost.contains(&index),
                nvml_errors: self.errors.count - errors_before,
                xids: &xids,
                xid_window: self.xid_window,
            }));
            info.xid_counts = xids
                .counts
                .iter()
                .map(|(&code, &count)| XidCount { code, count })
                .collect();
            info.last_xid = xids.last.map(|(code, _)| code);
            info.last_xid_ms = xids.last.map(|(_, at)| at);
            if let Some(m) = mapping.as_ref().filter(|m| m.as_of_ms.is_some()) {
                info.pods = m.for_gpu(&ids).map(pod_ref).collect();
                for d in &mut mig {
                    d.pods = m.for_device(&d.uuid).map(pod_ref).collect();
                }
                info.pods_as_of_ms = m.as_of_ms;
                info.pods_stale = m.stale;
            }
            info.processes = processes;
            info.mig_devices = mig;
            gpus.push(info);
            samples.extend(sample);
        }
        Ok(vec![TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: self.node.clone(),
            collected_at_ms: now_ms,
            gpus,
            samples,
        }])
    }

    fn describe(&self) -> String {
        format!("nvml ({} GPUs)", self.inventory.len())
    }
}
