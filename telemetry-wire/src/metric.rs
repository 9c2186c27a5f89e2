//! The metric catalog: one table of every metric name the API serves, its unit, the NVML
//! call it comes from, and how it is read off a [`GpuSample`]. The README's metric table is
//! this table; the API's `metrics=` parameter accepts exactly these names.

use crate::wire::GpuSample;

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// snake_case name with unit suffix, e.g. `power_usage_watts`.
    pub name: &'static str,
    /// Unit, e.g. `W`.
    pub unit: &'static str,
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
}

macro_rules! metric {
    ($name:literal, $unit:literal, $nvml:literal, $desc:literal, $field:ident, $div:literal) => {
        MetricDef {
            name: $name,
            unit: $unit,
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
        "nvmlDeviceGetUtilizationRates",
        "Percent of time a kernel was running over the last sample period",
        gpu_utilization_percent,
        1.0
    ),
    metric!(
        "memory_utilization_percent",
        "%",
        "nvmlDeviceGetUtilizationRates",
        "Percent of time device memory was being read or written",
        memory_utilization_percent,
        1.0
    ),
    metric!(
        "memory_used_bytes",
        "B",
        "nvmlDeviceGetMemoryInfo_v2",
        "Device memory in use",
        memory_used_bytes,
        1.0
    ),
    metric!(
        "memory_total_bytes",
        "B",
        "nvmlDeviceGetMemoryInfo_v2",
        "Device memory installed",
        memory_total_bytes,
        1.0
    ),
    metric!(
        "temperature_celsius",
        "°C",
        "nvmlDeviceGetTemperature",
        "GPU die temperature",
        temperature_celsius,
        1.0
    ),
    metric!(
        "power_usage_watts",
        "W",
        "nvmlDeviceGetPowerUsage",
        "Board power draw",
        power_usage_milliwatts,
        1000.0
    ),
    metric!(
        "power_limit_watts",
        "W",
        "nvmlDeviceGetEnforcedPowerLimit",
        "Enforced power limit",
        power_limit_milliwatts,
        1000.0
    ),
    metric!(
        "energy_consumed_joules",
        "J",
        "nvmlDeviceGetTotalEnergyConsumption",
        "Energy since the driver loaded (counter)",
        energy_consumed_millijoules,
        1000.0
    ),
    metric!(
        "sm_clock_mhz",
        "MHz",
        "nvmlDeviceGetClockInfo(SM)",
        "Streaming multiprocessor clock",
        sm_clock_mhz,
        1.0
    ),
    metric!(
        "memory_clock_mhz",
        "MHz",
        "nvmlDeviceGetClockInfo(MEM)",
        "Memory clock",
        memory_clock_mhz,
        1.0
    ),
    metric!(
        "fan_speed_percent",
        "%",
        "nvmlDeviceGetFanSpeed",
        "Fan speed as percent of maximum (absent on passively cooled boards)",
        fan_speed_percent,
        1.0
    ),
];

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
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        let s = GpuSample {
            power_usage_milliwatts: Some(312_500),
            energy_consumed_millijoules: Some(1_234_567),
            gpu_utilization_percent: Some(0),
            ..Default::default()
        };
        let got: Vec<_> = values(&s).collect();
        assert_eq!(
            got,
            vec![
                ("gpu_utilization_percent", 0.0),
                ("power_usage_watts", 312.5),
                ("energy_consumed_joules", 1234.567)
            ]
        );
        assert!(find("power_usage_watts").is_some());
        assert!(find("power").is_none());
    }

    #[test]
    fn readme_metric_table_is_this_catalog() {
        let readme = include_str!("../../README.md");
        for m in METRICS {
            let row = format!("| `{}` | {} | {} |", m.name, m.unit, m.nvml);
            assert!(readme.contains(&row), "README lacks the row starting {row}");
        }
        let rows = readme
            .lines()
            .filter(|l| l.starts_with("| `") && l.contains("| nvmlDevice"))
            .count();
        assert_eq!(
            rows,
            METRICS.len(),
            "README lists a metric the catalog does not have"
        );
    }
}
