//! The metric catalog: one table of every metric name the API serves, its unit, its kind
//! (gauge or counter), the NVML call it comes from, the DCGM field it corresponds to, and how
//! it is read off a [`GpuSample`]. Generated from it: the README's metric table
//! ([`markdown_table`], a test keeps them equal), the API's `metrics=` names and its
//! reference page, and the Prometheus names ([`MetricDef::prometheus_name`]).

use crate::wire::GpuSample;

/// Whether a metric is a level or a running total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (utilization, temperature, power).
    Gauge,
    /// A running total that only grows (until the driver reloads): rate it, do not average.
    Counter,
}

impl Kind {
    /// `gauge` or `counter` (Prometheus's words).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// snake_case name with unit suffix, e.g. `power_usage_watts`.
    pub name: &'static str,
    /// Unit, e.g. `W`.
    pub unit: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
    /// The dcgm-exporter field with the same meaning, e.g. `DCGM_FI_DEV_POWER_USAGE` (units
    /// may differ: DCGM reports framebuffer in MiB and energy in mJ).
    pub dcgm: &'static str,
    /// What it measures.
    pub description: &'static str,
    /// The NVML function it is read with.
    pub nvml: &'static str,
    /// The wire field (of [`GpuSample`]) it is read from.
    pub field: &'static str,
    /// The metric's value is the field's raw value divided by this (e.g. 1000: mW → W).
    /// Lets an aggregate of raw values (avg, min, …) be shown in the metric's unit.
    pub divisor: f64,
    read: fn(&GpuSample) -> Option<f64>,
}

impl MetricDef {
    /// The value in this metric's unit, or `None` when the sample does not carry it.
    pub fn value(&self, s: &GpuSample) -> Option<f64> {
        (self.read)(s)
    }

    /// The Prometheus name: the name under a `gpu_` prefix (not doubled:
    /// `gpu_utilization_percent`), and `_total` for a counter
    /// (`gpu_energy_consumed_joules_total`).
    pub fn prometheus_name(&self) -> String {
        let base = if self.name.starts_with("gpu_") {
            self.name.to_string()
        } else {
            format!("gpu_{}", self.name)
        };
        match self.kind {
            Kind::Gauge => base,
            Kind::Counter => base + "_total",
        }
    }
}

macro_rules! metric {
    ($name:literal, $unit:literal, $kind:ident, $nvml:literal, $dcgm:literal, $desc:literal, $field:ident, $div:literal) => {
        MetricDef {
            name: $name,
            unit: $unit,
            kind: Kind::$kind,
            dcgm: $dcgm,
            description: $desc,
            nvml: $nvml,
            field: stringify!($field),
            divisor: $div,
            read: |s: &GpuSample| s.$field.map(|v| v as f64 / $div),
        }
    };
}

/// Every metric, in the order the API lists them.
pub const METRICS: &[MetricDef] = &[
    metric!(
        "gpu_utilization_percent",
        "%",
        Gauge,
        "nvmlDeviceGetUtilizationRates",
        "DCGM_FI_DEV_GPU_UTIL",
        "Percent of time a kernel was running over the last sample period",
        gpu_utilization_percent,
        1.0
    ),
    metric!(
        "memory_utilization_percent",
        "%",
        Gauge,
        "nvmlDeviceGetUtilizationRates",
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "Percent of time device memory was being read or written",
        memory_utilization_percent,
        1.0
    ),
    metric!(
        "memory_used_bytes",
        "B",
        Gauge,
        "nvmlDeviceGetMemoryInfo_v2",
        "DCGM_FI_DEV_FB_USED",
        "Device memory in use",
        memory_used_bytes,
        1.0
    ),
    metric!(
        "memory_total_bytes",
        "B",
        Gauge,
        "nvmlDeviceGetMemoryInfo_v2",
        "DCGM_FI_DEV_FB_TOTAL",
        "Device memory installed",
        memory_total_bytes,
        1.0
    ),
    metric!(
        "temperature_celsius",
        "°C",
        Gauge,
        "nvmlDeviceGetTemperature",
        "DCGM_FI_DEV_GPU_TEMP",
        "GPU die temperature",
        temperature_celsius,
        1.0
    ),
    metric!(
        "power_usage_watts",
        "W",
        Gauge,
        "nvmlDeviceGetPowerUsage",
        "DCGM_FI_DEV_POWER_USAGE",
        "Board power draw",
        power_usage_milliwatts,
        1000.0
    ),
    metric!(
        "power_limit_watts",
        "W",
        Gauge,
        "nvmlDeviceGetEnforcedPowerLimit",
        "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
        "Enforced power limit",
        power_limit_milliwatts,
        1000.0
    ),
    metric!(
        "energy_consumed_joules",
        "J",
        Counter,
        "nvmlDeviceGetTotalEnergyConsumption",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Energy since the driver loaded (counter)",
        energy_consumed_millijoules,
        1000.0
    ),
    metric!(
        "sm_clock_mhz",
        "MHz",
        Gauge,
        "nvmlDeviceGetClockInfo(SM)",
        "DCGM_FI_DEV_SM_CLOCK",
        "Streaming multiprocessor clock",
        sm_clock_mhz,
        1.0
    ),
    metric!(
        "memory_clock_mhz",
        "MHz",
        Gauge,
        "nvmlDeviceGetClockInfo(MEM)",
        "DCGM_FI_DEV_MEM_CLOCK",
        "Memory clock",
        memory_clock_mhz,
        1.0
    ),
    metric!(
        "fan_speed_percent",
        "%",
        Gauge,
        "nvmlDeviceGetFanSpeed",
        "DCGM_FI_DEV_FAN_SPEED",
        "Fan speed as percent of maximum (absent on passively cooled boards)",
        fan_speed_percent,
        1.0
    ),
    metric!(
        "memory_free_bytes",
        "B",
        Gauge,
        "nvmlDeviceGetMemoryInfo_v2",
        "DCGM_FI_DEV_FB_FREE",
        "Device memory not allocated",
        memory_free_bytes,
        1.0
    ),
    metric!(
        "memory_reserved_bytes",
        "B",
        Gauge,
        "nvmlDeviceGetMemoryInfo_v2",
        "DCGM_FI_DEV_FB_RESERVED",
        "Device memory reserved by the driver and firmware",
        memory_reserved_bytes,
        1.0
    ),
    metric!(
        "sm_clock_max_mhz",
        "MHz",
        Gauge,
        "nvmlDeviceGetMaxClockInfo(SM)",
        "DCGM_FI_DEV_MAX_SM_CLOCK",
        "Highest streaming multiprocessor clock",
        sm_clock_max_mhz,
        1.0
    ),
    metric!(
        "memory_clock_max_mhz",
        "MHz",
        Gauge,
        "nvmlDeviceGetMaxClockInfo(MEM)",
        "DCGM_FI_DEV_MAX_MEM_CLOCK",
        "Highest memory clock",
        memory_clock_max_mhz,
        1.0
    ),
    metric!(
        "encoder_utilization_percent",
        "%",
        Gauge,
        "nvmlDeviceGetEncoderUtilization",
        "DCGM_FI_DEV_ENC_UTIL",
        "Percent of time the video encoder was busy",
        encoder_utilization_percent,
        1.0
    ),
    metric!(
        "decoder_utilization_percent",
        "%",
        Gauge,
        "nvmlDeviceGetDecoderUtilization",
        "DCGM_FI_DEV_DEC_UTIL",
        "Percent of time the video decoder was busy",
        decoder_utilization_percent,
        1.0
    ),
    metric!(
        "pcie_replays",
        "1",
        Counter,
        "nvmlDeviceGetPcieReplayCounter",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "PCIe transfers retried after a link error since the driver loaded (counter)",
        pcie_replay_count,
        1.0
    ),
    metric!(
        "pcie_link_generation",
        "1",
        Gauge,
        "nvmlDeviceGetCurrPcieLinkGeneration",
        "DCGM_FI_DEV_PCIE_LINK_GEN",
        "Current PCIe link generation (a link that trained below its maximum runs slower)",
        pcie_link_generation,
        1.0
    ),
    metric!(
        "pcie_link_width",
        "lanes",
        Gauge,
        "nvmlDeviceGetCurrPcieLinkWidth",
        "DCGM_FI_DEV_PCIE_LINK_WIDTH",
        "Current PCIe link width",
        pcie_link_width,
        1.0
    ),
    metric!(
        "ecc_corrected_errors_volatile",
        "1",
        Counter,
        "nvmlDeviceGetTotalEccErrors(CORRECTED, VOLATILE)",
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "Corrected (single-bit) ECC errors since the driver loaded (counter; absent with ECC off)",
        ecc_corrected_volatile,
        1.0
    ),
    metric!(
        "ecc_uncorrected_errors_volatile",
        "1",
        Counter,
        "nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE)",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Uncorrected (double-bit) ECC errors since the driver loaded (counter)",
        ecc_uncorrected_volatile,
        1.0
    ),
    metric!(
        "ecc_corrected_errors_aggregate",
        "1",
        Counter,
        "nvmlDeviceGetTotalEccErrors(CORRECTED, AGGREGATE)",
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "Corrected ECC errors over the board's life (counter)",
        ecc_corrected_aggregate,
        1.0
    ),
    metric!(
        "ecc_uncorrected_errors_aggregate",
        "1",
        Counter,
        "nvmlDeviceGetTotalEccErrors(UNCORRECTED, AGGREGATE)",
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "Uncorrected ECC errors over the board's life (counter)",
        ecc_uncorrected_aggregate,
        1.0
    ),
    metric!(
        "power_violation_seconds",
        "s",
        Counter,
        "nvmlDeviceGetViolationStatus(POWER)",
        "DCGM_FI_DEV_POWER_VIOLATION",
        "Time the clocks were held down by the power limit since the driver loaded (counter)",
        power_violation_ns,
        1e9
    ),
    metric!(
        "thermal_violation_seconds",
        "s",
        Counter,
        "nvmlDeviceGetViolationStatus(THERMAL)",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
        "Time the clocks were held down by the thermal limit since the driver loaded (counter)",
        thermal_violation_ns,
        1e9
    ),
    metric!(
        "clocks_event_gpu_idle",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(GPU_IDLE)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Nothing running: clocks at idle (1 while active; avg over a step: the fraction of time)",
        clocks_event_gpu_idle,
        1.0
    ),
    metric!(
        "clocks_event_applications_clocks",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(APPLICATIONS_CLOCKS_SETTING)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Held at the application clocks setting (1 while active; avg over a step: the fraction of time)",
        clocks_event_applications_clocks,
        1.0
    ),
    metric!(
        "clocks_event_sw_power_cap",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(SW_POWER_CAP)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Held down by the software power cap (the power limit) (1 while active; avg over a step: the fraction of time)",
        clocks_event_sw_power_cap,
        1.0
    ),
    metric!(
        "clocks_event_hw_slowdown",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(HW_SLOWDOWN)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Hardware slowdown (temperature, power brake or supply) (1 while active; avg over a step: the fraction of time)",
        clocks_event_hw_slowdown,
        1.0
    ),
    metric!(
        "clocks_event_sync_boost",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(SYNC_BOOST)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Held in step with other GPUs of a sync-boost group (1 while active; avg over a step: the fraction of time)",
        clocks_event_sync_boost,
        1.0
    ),
    metric!(
        "clocks_event_sw_thermal",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(SW_THERMAL_SLOWDOWN)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Software thermal slowdown (GPU or memory temperature limit) (1 while active; avg over a step: the fraction of time)",
        clocks_event_sw_thermal,
        1.0
    ),
    metric!(
        "clocks_event_hw_thermal",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(HW_THERMAL_SLOWDOWN)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Hardware thermal slowdown (1 while active; avg over a step: the fraction of time)",
        clocks_event_hw_thermal,
        1.0
    ),
    metric!(
        "clocks_event_hw_power_brake",
        "0/1",
        Gauge,
        "nvmlDeviceGetCurrentClocksEventReasons(HW_POWER_BRAKE_SLOWDOWN)",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "Hardware power brake (external signal) (1 while active; avg over a step: the fraction of time)",
        clocks_event_hw_power_brake,
        1.0
    ),
    metric!(
        "memory_temperature_celsius",
        "°C",
        Gauge,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP)",
        "DCGM_FI_DEV_MEMORY_TEMP",
        "Memory (HBM) temperature",
        memory_temperature_celsius,
        1.0
    ),
    metric!(
        "remapped_rows_correctable",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_REMAPPED_COR)",
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "Memory rows remapped after correctable errors (counter)",
        remapped_rows_correctable,
        1.0
    ),
    metric!(
        "remapped_rows_uncorrectable",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_REMAPPED_UNC)",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "Memory rows remapped after uncorrectable errors (counter)",
        remapped_rows_uncorrectable,
        1.0
    ),
    metric!(
        "row_remap_pending",
        "0/1",
        Gauge,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_REMAPPED_PENDING)",
        "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "A row remap waits for the next GPU reset (1: reset the GPU when it can be drained)",
        row_remap_pending,
        1.0
    ),
    metric!(
        "row_remap_failure",
        "0/1",
        Gauge,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_REMAPPED_FAILURE)",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "A row remap failed (1: the GPU needs service)",
        row_remap_failure,
        1.0
    ),
    metric!(
        "pcie_tx_bytes",
        "B",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_PCIE_COUNT_TX_BYTES)",
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "Bytes the GPU sent over PCIe since the driver loaded (counter: rate it for throughput; DCGM reports the rate)",
        pcie_tx_bytes,
        1.0
    ),
    metric!(
        "pcie_rx_bytes",
        "B",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_PCIE_COUNT_RX_BYTES)",
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "Bytes the GPU received over PCIe since the driver loaded (counter)",
        pcie_rx_bytes,
        1.0
    ),
    metric!(
        "retired_pages_sbe",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_RETIRED_SBE)",
        "DCGM_FI_DEV_RETIRED_SBE",
        "Memory pages retired after single-bit errors (boards before Ampere)",
        retired_pages_sbe,
        1.0
    ),
    metric!(
        "retired_pages_dbe",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_RETIRED_DBE)",
        "DCGM_FI_DEV_RETIRED_DBE",
        "Memory pages retired after double-bit errors (boards before Ampere)",
        retired_pages_dbe,
        1.0
    ),
    metric!(
        "retired_pages_pending",
        "0/1",
        Gauge,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_RETIRED_PENDING)",
        "DCGM_FI_DEV_RETIRED_PENDING",
        "A page retirement waits for the next GPU reset (boards before Ampere)",
        retired_pages_pending,
        1.0
    ),
    metric!(
        "nvlink_links_active",
        "links",
        Gauge,
        "nvmlDeviceGetNvLinkState",
        "DCGM_FI_DEV_NVLINK_LINK_STATUS (per link)",
        "NVLinks up (of the NVML_FI_DEV_NVLINK_LINK_COUNT the GPU has)",
        nvlink_links_active,
        1.0
    ),
    metric!(
        "nvlink_crc_flit_errors",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL)",
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "NVLink flow-control CRC errors over all links",
        nvlink_crc_flit_errors,
        1.0
    ),
    metric!(
        "nvlink_crc_data_errors",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL)",
        "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
        "NVLink data CRC errors over all links",
        nvlink_crc_data_errors,
        1.0
    ),
    metric!(
        "nvlink_replay_errors",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL)",
        "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
        "NVLink transmissions replayed over all links",
        nvlink_replay_errors,
        1.0
    ),
    metric!(
        "nvlink_recovery_errors",
        "1",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL)",
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        "NVLink link recoveries over all links",
        nvlink_recovery_errors,
        1.0
    ),
    metric!(
        "nvlink_tx_bytes",
        "B",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, all links)",
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "Data bytes sent over all NVLinks (counter: rate it for bandwidth; DCGM reports the rate)",
        nvlink_tx_bytes,
        1.0
    ),
    metric!(
        "nvlink_rx_bytes",
        "B",
        Counter,
        "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, all links)",
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "Data bytes received over all NVLinks (counter)",
        nvlink_rx_bytes,
        1.0
    ),
    metric!(
        "gpm_graphics_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_GRAPHICS_UTIL)",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "Time the graphics/compute engine was busy over the round (Hopper and later; DCGM: 0-1)",
        gpm_graphics_activity,
        100.0
    ),
    metric!(
        "gpm_sm_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_SM_UTIL)",
        "DCGM_FI_PROF_SM_ACTIVE",
        "Time each SM had a warp assigned, averaged over SMs (Hopper and later)",
        gpm_sm_activity,
        100.0
    ),
    metric!(
        "gpm_sm_occupancy_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_SM_OCCUPANCY)",
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "Resident warps of the SMs' maximum, averaged over SMs (Hopper and later)",
        gpm_sm_occupancy,
        100.0
    ),
    metric!(
        "gpm_tensor_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_ANY_TENSOR_UTIL)",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "Time the tensor cores were busy (Hopper and later)",
        gpm_tensor_activity,
        100.0
    ),
    metric!(
        "gpm_dram_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_DRAM_BW_UTIL)",
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "Device memory bandwidth used, of its peak (Hopper and later)",
        gpm_dram_activity,
        100.0
    ),
    metric!(
        "gpm_fp64_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_FP64_UTIL)",
        "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
        "Time the FP64 pipes were busy (Hopper and later)",
        gpm_fp64_activity,
        100.0
    ),
    metric!(
        "gpm_fp32_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_FP32_UTIL)",
        "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
        "Time the FP32 pipes were busy (Hopper and later)",
        gpm_fp32_activity,
        100.0
    ),
    metric!(
        "gpm_fp16_activity_percent",
        "%",
        Gauge,
        "nvmlGpmMetricsGet(NVML_GPM_METRIC_FP16_UTIL)",
        "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
        "Time the FP16 pipes were busy (Hopper and later)",
        gpm_fp16_activity,
        100.0
    ),
];

/// The README's metric table (Markdown), generated from [`METRICS`].
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| metric | unit | kind | NVML | dcgm-exporter field | meaning |\n|---|---|---|---|---|---|\n",
    );
    for m in METRICS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | `{}` | {} |\n",
            m.name,
            m.unit,
            m.kind.as_str(),
            m.nvml,
            m.dcgm,
            m.description
        ));
    }
    out
}

/// Looks a metric up by name.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// Every metric the sample carries, as `(name, value)`, in catalog order.
pub fn values(s: &GpuSample) -> impl Iterator<Item = (&'static str, f64)> + '_ {
    METRICS
        .iter()
        .filter_map(|m| m.value(s).map(|v| (m.name, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_units_convert() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        // Lower case, digits and underscores, starting with a letter (Prometheus-safe).
        assert!(names.iter().all(|n| {
            n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }));
        let s = GpuSample {
            power_usage_milliwatts: Some(312_500),
            energy_consumed_millijoules: Some(1_234_567),
            gpu_utilization_percent: Some(0),
            gpm_fp16_activity: Some(4_321),
            ..Default::default()
        };
        let got: Vec<_> = values(&s).collect();
        assert_eq!(
            got,
            vec![
                ("gpu_utilization_percent", 0.0),
                ("power_usage_watts", 312.5),
                ("energy_consumed_joules", 1234.567),
                ("gpm_fp16_activity_percent", 43.21)
            ]
        );
        assert!(find("power_usage_watts").is_some());
        assert!(find("power").is_none());
    }

    #[test]
    fn readme_metric_table_is_the_generated_one() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- metric table: generated from telemetry-wire/src/metric.rs -->\n";
        let end = "<!-- end of metric table -->";
        let table = readme
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(t, _)| t)
            .expect("README has the metric table markers");
        assert_eq!(
            table,
            markdown_table(),
            "README's metric table differs from the catalog; replace it with:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn prometheus_names_follow_the_conventions() {
        let names: Vec<String> = METRICS.iter().map(MetricDef::prometheus_name).collect();
        assert!(names.contains(&"gpu_power_usage_watts".to_string()));
        assert!(names.contains(&"gpu_energy_consumed_joules_total".to_string()));
        assert!(names.contains(&"gpu_utilization_percent".to_string()));
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "no two metrics share a name");
        for (m, n) in METRICS.iter().zip(&names) {
            assert_eq!(n.ends_with("_total"), m.kind == Kind::Counter, "{n}");
            assert!(m.dcgm.starts_with("DCGM_FI_"), "{}", m.name);
        }
    }
}
