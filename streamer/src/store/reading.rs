//! The storage layer's own sample type: [`Reading`], one GPU reading as a time and a raw
//! integer per [`COLUMNS`] entry (the wire's units: percent, bytes, milliwatts, millijoules,
//! MHz). Chunks on disk name each column by its [`Column::id`], which never changes, so a
//! column added later (a new wire field) leaves old chunks readable.

use telemetry_wire::wire::GpuSample;

/// One stored metric column.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Stable id, written into every chunk: never reuse or renumber one.
    pub id: u8,
    /// The wire field it holds.
    pub field: &'static str,
    /// The largest value the wire field holds (what [`Reading::to_wire`] clamps to).
    pub max: u64,
    get: fn(&GpuSample) -> Option<u64>,
    set: fn(&mut GpuSample, u64),
}

fn narrow(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

macro_rules! col {
    ($id:literal, $f:ident, u32) => {
        Column {
            id: $id,
            field: stringify!($f),
            max: u32::MAX as u64,
            get: |s| s.$f.map(u64::from),
            set: |s, v| s.$f = Some(narrow(v)),
        }
    };
    ($id:literal, $f:ident, u64) => {
        Column {
            id: $id,
            field: stringify!($f),
            max: u64::MAX,
            get: |s| s.$f,
            set: |s, v| s.$f = Some(v),
        }
    };
}

/// Number of columns.
pub const N_COLUMNS: usize = 59;
// A reading's presence bits are a u64.
const _: () = assert!(N_COLUMNS <= 64);

/// Every column, in wire field order.
pub const COLUMNS: [Column; N_COLUMNS] = [
    col!(1, gpu_utilization_percent, u32),
    col!(2, memory_utilization_percent, u32),
    col!(3, memory_used_bytes, u64),
    col!(4, memory_total_bytes, u64),
    col!(5, temperature_celsius, u32),
    col!(6, power_usage_milliwatts, u32),
    col!(7, power_limit_milliwatts, u32),
    col!(8, energy_consumed_millijoules, u64),
    col!(9, sm_clock_mhz, u32),
    col!(10, memory_clock_mhz, u32),
    col!(11, fan_speed_percent, u32),
    // Schema version 2.
    col!(12, memory_free_bytes, u64),
    col!(13, memory_reserved_bytes, u64),
    col!(14, sm_clock_max_mhz, u32),
    col!(15, memory_clock_max_mhz, u32),
    col!(16, encoder_utilization_percent, u32),
    col!(17, decoder_utilization_percent, u32),
    col!(18, pcie_replay_count, u64),
    col!(19, pcie_link_generation, u32),
    col!(20, pcie_link_width, u32),
    col!(21, ecc_corrected_volatile, u64),
    col!(22, ecc_uncorrected_volatile, u64),
    col!(23, ecc_corrected_aggregate, u64),
    col!(24, ecc_uncorrected_aggregate, u64),
    col!(25, power_violation_ns, u64),
    col!(26, thermal_violation_ns, u64),
    col!(27, clocks_event_gpu_idle, u32),
    col!(28, clocks_event_applications_clocks, u32),
    col!(29, clocks_event_sw_power_cap, u32),
    col!(30, clocks_event_hw_slowdown, u32),
    col!(31, clocks_event_sync_boost, u32),
    col!(32, clocks_event_sw_thermal, u32),
    col!(33, clocks_event_hw_thermal, u32),
    col!(34, clocks_event_hw_power_brake, u32),
    col!(35, memory_temperature_celsius, u32),
    col!(36, remapped_rows_correctable, u32),
    col!(37, remapped_rows_uncorrectable, u32),
    col!(38, row_remap_pending, u32),
    col!(39, row_remap_failure, u32),
    col!(40, pcie_tx_bytes, u64),
    col!(41, pcie_rx_bytes, u64),
    // Schema version 3.
    col!(42, retired_pages_sbe, u32),
    col!(43, retired_pages_dbe, u32),
    col!(44, retired_pages_pending, u32),
    col!(45, nvlink_links_active, u32),
    col!(46, nvlink_crc_flit_errors, u64),
    col!(47, nvlink_crc_data_errors, u64),
    col!(48, nvlink_replay_errors, u64),
    col!(49, nvlink_recovery_errors, u64),
    col!(50, nvlink_tx_bytes, u64),
    col!(51, nvlink_rx_bytes, u64),
    col!(52, gpm_graphics_activity, u32),
    col!(53, gpm_sm_activity, u32),
    col!(54, gpm_sm_occupancy, u32),
    col!(55, gpm_tensor_activity, u32),
    col!(56, gpm_dram_activity, u32),
    col!(57, gpm_fp64_activity, u32),
    col!(58, gpm_fp32_activity, u32),
    col!(59, gpm_fp16_activity, u32),
];

/// The position in [`COLUMNS`] of column `id`, if this build knows it.
pub fn column_index(id: u8) -> Option<usize> {
    COLUMNS.iter().position(|c| c.id == id)
}

/// One reading of one GPU: its time and the value of each column it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Sample time, UTC ms.
    pub ts_ms: i64,
    present: u64,
    values: [u64; N_COLUMNS],
}

impl Reading {
    /// A reading at `ts_ms` with no values.
    pub fn empty(ts_ms: i64) -> Self {
        Self {
            ts_ms,
            present: 0,
            values: [0; N_COLUMNS],
        }
    }

    /// The value of column `i` (a [`COLUMNS`] position), if present.
    pub fn get(&self, i: usize) -> Option<u64> {
        (self.present & (1 << i) != 0).then(|| self.values[i])
    }

    /// Sets column `i` (a [`COLUMNS`] position).
    pub fn set(&mut self, i: usize, v: u64) {
        self.present |= 1 << i;
        self.values[i] = v;
    }

    /// The reading a wire sample carries.
    pub fn from_wire(s: &GpuSample) -> Self {
        let mut r = Self::empty(s.timestamp_ms);
        for (i, c) in COLUMNS.iter().enumerate() {
            if let Some(v) = (c.get)(s) {
                r.set(i, v);
            }
        }
        r
    }

    /// The wire sample for this reading, with an empty `uuid`.
    pub fn to_wire(&self) -> GpuSample {
        let mut s = GpuSample {
            timestamp_ms: self.ts_ms,
            ..Default::default()
        };
        for (i, c) in COLUMNS.iter().enumerate() {
            if let Some(v) = self.get(i) {
                (c.set)(&mut s, v);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_sample_survives_the_round_trip_with_absent_fields_absent() {
        let s = GpuSample {
            uuid: String::new(),
            timestamp_ms: 1_700_000_000_123,
            gpu_utilization_percent: Some(0),
            memory_used_bytes: Some(u64::MAX),
            power_usage_milliwatts: Some(u32::MAX),
            fan_speed_percent: None,
            ..Default::default()
        };
        let r = Reading::from_wire(&s);
        assert_eq!(r.get(0), Some(0));
        assert_eq!(r.get(10), None);
        assert_eq!(r.to_wire(), s);
    }

    #[test]
    fn column_ids_are_unique_and_cover_every_wire_metric() {
        let mut ids: Vec<u8> = COLUMNS.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), N_COLUMNS);
        // Every metric of the catalog reads a field some column stores.
        let full = GpuSample {
            gpu_utilization_percent: Some(1),
            memory_utilization_percent: Some(2),
            memory_used_bytes: Some(3),
            memory_total_bytes: Some(4),
            temperature_celsius: Some(5),
            power_usage_milliwatts: Some(6),
            power_limit_milliwatts: Some(7),
            energy_consumed_millijoules: Some(8),
            sm_clock_mhz: Some(9),
            memory_clock_mhz: Some(10),
            fan_speed_percent: Some(11),
            memory_free_bytes: Some(12),
            memory_reserved_bytes: Some(13),
            sm_clock_max_mhz: Some(14),
            memory_clock_max_mhz: Some(15),
            encoder_utilization_percent: Some(16),
            decoder_utilization_percent: Some(17),
            pcie_replay_count: Some(18),
            pcie_link_generation: Some(19),
            pcie_link_width: Some(20),
            ecc_corrected_volatile: Some(21),
            ecc_uncorrected_volatile: Some(22),
            ecc_corrected_aggregate: Some(23),
            ecc_uncorrected_aggregate: Some(24),
            power_violation_ns: Some(25),
            thermal_violation_ns: Some(26),
            clocks_event_gpu_idle: Some(0),
            clocks_event_applications_clocks: Some(1),
            clocks_event_sw_power_cap: Some(0),
            clocks_event_hw_slowdown: Some(1),
            clocks_event_sync_boost: Some(0),
            clocks_event_sw_thermal: Some(1),
            clocks_event_hw_thermal: Some(0),
            clocks_event_hw_power_brake: Some(1),
            memory_temperature_celsius: Some(35),
            remapped_rows_correctable: Some(36),
            remapped_rows_uncorrectable: Some(37),
            row_remap_pending: Some(0),
            row_remap_failure: Some(1),
            pcie_tx_bytes: Some(40),
            pcie_rx_bytes: Some(41),
            retired_pages_sbe: Some(42),
            retired_pages_dbe: Some(43),
            retired_pages_pending: Some(1),
            nvlink_links_active: Some(18),
            nvlink_crc_flit_errors: Some(46),
            nvlink_crc_data_errors: Some(47),
            nvlink_replay_errors: Some(48),
            nvlink_recovery_errors: Some(49),
            nvlink_tx_bytes: Some(50 << 40),
            nvlink_rx_bytes: Some(51 << 40),
            gpm_graphics_activity: Some(5_200),
            gpm_sm_activity: Some(5_300),
            gpm_sm_occupancy: Some(5_400),
            gpm_tensor_activity: Some(5_500),
            gpm_dram_activity: Some(5_600),
            gpm_fp64_activity: Some(5_700),
            gpm_fp32_activity: Some(5_800),
            gpm_fp16_activity: Some(10_000),
            ..Default::default()
        };
        let back = Reading::from_wire(&full).to_wire();
        assert_eq!(back, full);
        for m in telemetry_wire::metric::METRICS {
            assert!(m.value(&back).is_some(), "{} is stored", m.name);
        }
    }
}
