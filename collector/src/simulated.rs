//! A deterministic simulated fleet: `nodes × gpus_per_node` H100s whose readings are a pure
//! function of `(seed, node, gpu, timestamp)`. Laptops and demos get GPUs that move like
//! real ones (a slow load wave, noise, power and temperature following load, a monotonic
//! energy counter); tests recompute exactly what any sample must have been.

use telemetry_wire::health::{GpuHealth, HealthStatus};
use telemetry_wire::wire::{GpuInfo, GpuSample, SCHEMA_VERSION, TelemetryBatch};

use crate::source::{GpuSource, SourceError};

/// Installed memory of the simulated board (80 GiB).
pub const MEMORY_TOTAL_BYTES: u64 = 80 * 1024 * 1024 * 1024;
/// When the simulated driver loaded (2026-05-28): the PCIe byte counters start there.
const DRIVER_LOADED_MS: u64 = 1_780_000_000_000;
/// Device memory the driver and firmware keep for themselves.
pub const MEMORY_RESERVED_BYTES: u64 = 512 * 1024 * 1024;
/// Enforced power limit of the simulated board.
pub const POWER_LIMIT_MILLIWATTS: u32 = 700_000;

/// The fleet's shape and seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSpec {
    /// Number of nodes.
    pub nodes: u32,
    /// GPUs on each node.
    pub gpus_per_node: u32,
    /// Seed: the same seed gives the same fleet and readings.
    pub seed: u64,
}

/// The simulated source.
#[derive(Debug, Clone)]
pub struct SimulatedSource {
    spec: FleetSpec,
    inventory: Vec<Vec<GpuInfo>>,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser: a good 64-bit hash of its input.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A percentage in hundredths (GPM fields).
fn centi(percent: f64) -> u32 {
    (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl SimulatedSource {
    /// A fleet of `spec.nodes × spec.gpus_per_node` GPUs.
    pub fn new(spec: FleetSpec) -> Self {
        let inventory = (0..spec.nodes)
            .map(|n| {
                (0..spec.gpus_per_node)
                    .map(|g| Self::info(spec, n, g))
                    .collect()
            })
            .collect();
        Self { spec, inventory }
    }

    /// The fleet's shape.
    pub fn spec(&self) -> FleetSpec {
        self.spec
    }

    /// Node name of node `n`.
    pub fn node_name(n: u32) -> String {
        format!("sim-node-{n:03}")
    }

    fn gpu_hash(spec: FleetSpec, node: u32, gpu: u32) -> u64 {
        mix(spec.seed ^ mix((u64::from(node) << 32) | u64::from(gpu)))
    }

    /// Inventory of GPU `gpu` on node `node`.
    pub fn info(spec: FleetSpec, node: u32, gpu: u32) -> GpuInfo {
        let h = Self::gpu_hash(spec, node, gpu);
        let h2 = mix(h);
        let uuid = format!(
            "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xffff,
            h2 >> 48,
            h2 & 0xffff_ffff_ffff
        );
        GpuInfo {
            uuid,
            index: gpu,
            name: "NVIDIA H100 80GB HBM3 (simulated)".into(),
            serial: Some(format!("SIM{:013}", h2 % 10_000_000_000_000)),
            pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x18 + gpu * 0x10)),
            driver_version: Some("550.54.15".into()),
            cuda_driver_version: Some(12040),
            mig_enabled: Some(false),
            node: Self::node_name(node),
            // The simulated fleet is healthy and has no XIDs.
            health: Some(GpuHealth {
                status: HealthStatus::Ok.into(),
                reasons: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// The sample GPU `gpu` of node `node` gives at `timestamp_ms`. Pure: tests call it to
    /// know exactly what the pipeline must deliver.
    pub fn sample(
        spec: FleetSpec,
        node: u32,
        gpu: u32,
        uuid: &str,
        timestamp_ms: i64,
    ) -> GpuSample {
        let h = Self::gpu_hash(spec, node, gpu);
        let noise = mix(h ^ timestamp_ms as u64);
        let t = timestamp_ms as f64 / 1000.0;
        // Each GPU runs a load wave with its own period (2–12 min), phase and baseline.
        let period = 120.0 + unit(mix(h ^ 1)) * 600.0;
        let phase = unit(mix(h ^ 2)) * std::f64::consts::TAU;
        let base = 15.0 + unit(mix(h ^ 3)) * 55.0;
        let wave = (t / period * std::f64::consts::TAU + phase).sin();
        let util = (base + 30.0 * wave + (unit(noise) - 0.5) * 10.0).clamp(0.0, 100.0);
        let util_pct = util.round() as u32;
        let mem_frac = 0.15 + 0.8 * (base / 100.0) + 0.02 * wave;
        let mem_used = ((MEMORY_TOTAL_BYTES as f64 * mem_frac) as u64) & !((1 << 20) - 1);
        let mem_used = mem_used.min(MEMORY_TOTAL_BYTES - MEMORY_RESERVED_BYTES);
        let temp = 32.0 + util * 0.42 + unit(mix(noise)) * 2.0;
        let power_mw = 68_000 + (util * 5_900.0) as u32 + (mix(noise ^ 7) % 3_000) as u32;
        // Energy: a counter since "driver load" that only grows (≈ 350 W average).
        let energy_mj = (timestamp_ms.max(0) as u64).saturating_sub(1_600_000_000_000) * 350;
        GpuSample {
            uuid: uuid.to_string(),
            timestamp_ms,
            gpu_utilization_percent: Some(util_pct),
            memory_utilization_percent: Some((util * 0.6).round() as u32),
            memory_used_bytes: Some(mem_used),
            memory_total_bytes: Some(MEMORY_TOTAL_BYTES),
            temperature_celsius: Some(temp.round() as u32),
            power_usage_milliwatts: Some(power_mw.min(POWER_LIMIT_MILLIWATTS)),
            power_limit_milliwatts: Some(POWER_LIMIT_MILLIWATTS),
            energy_consumed_millijoules: Some(energy_mj),
            sm_clock_mhz: Some(if util_pct > 5 { 1980 } else { 345 }),
            memory_clock_mhz: Some(2619),
            // Passively cooled boards report no fan: absent, not zero.
            fan_speed_percent: None,
            memory_free_bytes: Some(MEMORY_TOTAL_BYTES - MEMORY_RESERVED_BYTES - mem_used),
            memory_reserved_bytes: Some(MEMORY_RESERVED_BYTES),
            sm_clock_max_mhz: Some(1980),
            memory_clock_max_mhz: Some(2619),
            // Compute GPUs: the video engines idle.
            encoder_utilization_percent: Some(0),
            decoder_utilization_percent: Some(0),
            // One GPU in 16 sits on a flaky riser: a replay every few minutes.
            pcie_replay_count: Some(if h.is_multiple_of(16) {
                (timestamp_ms.max(0) as u64).saturating_sub(1_600_000_000_000) / 200_000
            } else {
                0
            }),
            pcie_link_generation: Some(5),
            pcie_link_width: Some(16),
            ecc_corrected_volatile: Some(0),
            ecc_uncorrected_volatile: Some(0),
            ecc_corrected_aggregate: Some(h % 5),
            ecc_uncorrected_aggregate: Some(0),
            // One GPU in 8 runs against its power limit a tenth of the time.
            power_violation_ns: Some(if (h >> 8).is_multiple_of(8) {
                (timestamp_ms.max(0) as u64).saturating_sub(1_600_000_000_000) * 100_000
            } else {
                0
            }),
            thermal_violation_ns: Some(0),
            clocks_event_gpu_idle: Some(u32::from(util_pct <= 5)),
            clocks_event_applications_clocks: Some(0),
            // Within 50 W of the limit the power cap holds the clocks (util above ~93 %).
            clocks_event_sw_power_cap: Some(u32::from(power_mw + 50_000 >= POWER_LIMIT_MILLIWATTS)),
            clocks_event_hw_slowdown: Some(0),
            clocks_event_sync_boost: Some(0),
            clocks_event_sw_thermal: Some(0),
            clocks_event_hw_thermal: Some(0),
            clocks_event_hw_power_brake: Some(0),
            memory_temperature_celsius: Some((temp + 6.0).round() as u32),
            remapped_rows_correctable: Some((h % 3) as u32),
            remapped_rows_uncorrectable: Some(0),
            row_remap_pending: Some(0),
            row_remap_failure: Some(0),
            // About 2 GB/s out and 3 GB/s in, on average, since the driver loaded.
            pcie_tx_bytes: Some(
                (timestamp_ms.max(0) as u64).saturating_sub(DRIVER_LOADED_MS) * 2_000_000,
            ),
            pcie_rx_bytes: Some(
                (timestamp_ms.max(0) as u64).saturating_sub(DRIVER_LOADED_MS) * 3_000_000,
            ),
            // H100 SXM: no page retirement (rows are remapped): absent.
            retired_pages_sbe: None,
            retired_pages_dbe: None,
            retired_pages_pending: None,
            nvlink_links_active: Some(18),
            nvlink_crc_flit_errors: Some(0),
            nvlink_crc_data_errors: Some(0),
            nvlink_replay_errors: Some(h % 4),
            nvlink_recovery_errors: Some(0),
            // About 40 GB/s each way, on average, since the driver loaded.
            nvlink_tx_bytes: Some(
                (timestamp_ms.max(0) as u64).saturating_sub(DRIVER_LOADED_MS) * 40_000_000,
            ),
            nvlink_rx_bytes: Some(
                (timestamp_ms.max(0) as u64).saturating_sub(DRIVER_LOADED_MS) * 40_000_000,
            ),
            // GPM activity follows the load (hundredths of a percent).
            gpm_graphics_activity: Some(centi(util)),
            gpm_sm_activity: Some(centi(util * 0.9)),
            gpm_sm_occupancy: Some(centi(util * 0.45)),
            gpm_tensor_activity: Some(centi(util * 0.6)),
            gpm_dram_activity: Some(centi(util * 0.7)),
            gpm_fp64_activity: Some(centi(util * 0.02)),
            gpm_fp32_activity: Some(centi(util * 0.3)),
            gpm_fp16_activity: Some(centi(util * 0.4)),
        }
    }

    /// The batch node `node` gives at `now_ms`.
    pub fn batch(&self, node: u32, now_ms: i64) -> TelemetryBatch {
        let gpus = self.inventory[node as usize].clone();
        let samples = gpus
            .iter()
            .map(|g| Self::sample(self.spec, node, g.index, &g.uuid, now_ms))
            .collect();
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: Self::node_name(node),
            collected_at_ms: now_ms,
            gpus,
            samples,
        }
    }
}

impl GpuSource for SimulatedSource {
    fn collect(&mut self, now_ms: i64) -> Result<Vec<TelemetryBatch>, SourceError> {
        Ok((0..self.spec.nodes)
            .map(|n| self.batch(n, now_ms))
            .collect())
    }

    fn describe(&self) -> String {
        format!(
            "simulated ({} nodes x {} GPUs, seed {})",
            self.spec.nodes, self.spec.gpus_per_node, self.spec.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: FleetSpec = FleetSpec {
        nodes: 2,
        gpus_per_node: 8,
        seed: 42,
    };

    #[test]
    fn same_seed_same_readings_and_other_seed_other_uuids() {
        let mut a = SimulatedSource::new(SPEC);
        let mut b = SimulatedSource::new(SPEC);
        assert_eq!(
            a.collect(1_700_000_000_000).unwrap(),
            b.collect(1_700_000_000_000).unwrap()
        );
        let c = SimulatedSource::new(FleetSpec { seed: 43, ..SPEC });
        assert_ne!(a.inventory[0][0].uuid, c.inventory[0][0].uuid);
    }

    #[test]
    fn fleet_has_distinct_uuids_and_values_in_physical_ranges() {
        let mut s = SimulatedSource::new(SPEC);
        let mut uuids = std::collections::HashSet::new();
        for t in (0..600).map(|i| 1_700_000_000_000 + i * 1000) {
            for b in s.collect(t).unwrap() {
                for x in &b.samples {
                    uuids.insert(x.uuid.clone());
                    assert!(x.gpu_utilization_percent.unwrap() <= 100);
                    assert!(x.memory_used_bytes.unwrap() <= MEMORY_TOTAL_BYTES);
                    assert!((30..=80).contains(&x.temperature_celsius.unwrap()));
                    assert!(x.power_usage_milliwatts.unwrap() <= POWER_LIMIT_MILLIWATTS);
                    assert_eq!(x.fan_speed_percent, None);
                }
            }
        }
        assert_eq!(uuids.len(), 16);
    }

    #[test]
    fn utilization_moves_and_energy_only_grows() {
        let info = SimulatedSource::info(SPEC, 0, 0);
        let at = |t| SimulatedSource::sample(SPEC, 0, 0, &info.uuid, t);
        let utils: std::collections::HashSet<_> = (0..300)
            .map(|i| at(1_700_000_000_000 + i * 1000).gpu_utilization_percent)
            .collect();
        assert!(
            utils.len() > 10,
            "a GPU whose load never moves is not realistic"
        );
        let e1 = at(1_700_000_000_000).energy_consumed_millijoules.unwrap();
        let e2 = at(1_700_000_001_000).energy_consumed_millijoules.unwrap();
        assert_eq!(e2 - e1, 350_000);
    }
}
