//! One GPU's health each round, from what the round read: `failed` when the GPU needs a
//! reset or a drain, `degraded` when it works but something needs watching, `ok` otherwise.
//! The rules (docs/operations.md, "GPU health", lists them for operators):
//!
//! | reason code          | status   | when                                                  |
//! |----------------------|----------|-------------------------------------------------------|
//! | `gpu_lost`           | failed   | NVML answers GPU_IS_LOST (fell off the bus)           |
//! | `xid`                | per code | a health XID within the window ([`HEALTH_XIDS`])       |
//! | `row_remap_failure`  | failed   | field value 145 is 1                                  |
//! | `ecc_uncorrected`    | degraded | volatile uncorrected ECC errors > 0                   |
//! | `row_remap_pending`  | degraded | field value 144 is 1                                  |
//! | `retired_pages_pending` | degraded | field value 31 is 1 (boards before Ampere)         |
//! | `thermal_throttling` | degraded | the HW or SW thermal clocks event reason is active    |
//! | `power_brake`        | degraded | the HW power brake clocks event reason is active      |
//! | `hw_slowdown`        | degraded | the HW slowdown clocks event reason is active         |
//! | `nvml_errors`        | degraded | an NVML read of this GPU failed this round            |
//!
//! The software power cap is how a busy GPU normally runs: it is not a reason.
//!
//! [`HEALTH_XIDS`]: telemetry_wire::health::HEALTH_XIDS

use std::collections::BTreeMap;
use std::time::Duration;

use telemetry_wire::health::{GpuHealth, HealthStatus, xid_class};
use telemetry_wire::wire::GpuSample;

use crate::xid::GpuXids;

/// What one round knows about one GPU.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// The sample read, `None` when the GPU could not be read.
    pub sample: Option<&'a GpuSample>,
    /// NVML answered GPU_IS_LOST.
    pub lost: bool,
    /// NVML reads of this GPU that failed this round (not counting "not supported").
    pub nvml_errors: u64,
    /// Its XIDs, health-bearing ones pruned to the window.
    pub xids: &'a GpuXids,
    /// The window health XIDs count in.
    pub xid_window: Duration,
}

/// The GPU's health this round.
pub fn judge(r: Round<'_>) -> GpuHealth {
    let mut reasons: Vec<(HealthStatus, String)> = Vec::new();
    if r.lost {
        reasons.push((
            HealthStatus::Failed,
            "gpu_lost: the GPU fell off the bus (NVML: GPU is lost)".into(),
        ));
    }
    let mut per_code: BTreeMap<u32, u64> = BTreeMap::new();
    for (code, _) in &r.xids.recent {
        *per_code.entry(*code).or_default() += 1;
    }
    for (code, n) in per_code {
        if let Some(c) = xid_class(code) {
            reasons.push((
                c.severity,
                format!(
                    "xid: {code} ({}), {n} in the last {}",
                    c.meaning,
                    humantime::format_duration(r.xid_window)
                ),
            ));
        }
    }
    if let Some(s) = r.sample {
        let on = |v: Option<u32>| v.is_some_and(|v| v > 0);
        if on(s.row_remap_failure) {
            reasons.push((
                HealthStatus::Failed,
                "row_remap_failure: a memory row remap failed; the GPU needs service".into(),
            ));
        }
        if let Some(n) = s.ecc_uncorrected_volatile.filter(|n| *n > 0) {
            reasons.push((
                HealthStatus::Degraded,
                format!("ecc_uncorrected: {n} uncorrectable ECC errors since the driver loaded"),
            ));
        }
        if on(s.row_remap_pending) {
            reasons.push((
                HealthStatus::Degraded,
                "row_remap_pending: a memory row remap waits for the next GPU reset".into(),
            ));
        }
        if on(s.retired_pages_pending) {
            reasons.push((
                HealthStatus::Degraded,
                "retired_pages_pending: a memory page retirement waits for the next GPU reset"
                    .into(),
            ));
        }
        let thermal = [
            (s.clocks_event_hw_thermal, "hardware"),
            (s.clocks_event_sw_thermal, "software"),
        ]
        .into_iter()
        .filter(|(v, _)| on(*v))
        .map(|(_, k)| k)
        .collect::<Vec<_>>();
        if !thermal.is_empty() {
            reasons.push((
                HealthStatus::Degraded,
                format!(
                    "thermal_throttling: clocks held down by the {} thermal limit",
                    thermal.join(" and ")
                ),
            ));
        }
        if on(s.clocks_event_hw_power_brake) {
            reasons.push((
                HealthStatus::Degraded,
                "power_brake: the external power brake holds the clocks down".into(),
            ));
        }
        if on(s.clocks_event_hw_slowdown) {
            reasons.push((
                HealthStatus::Degraded,
                "hw_slowdown: hardware slowdown (temperature or power supply) holds the clocks down"
                    .into(),
            ));
        }
    }
    if r.nvml_errors > 0 && !r.lost {
        reasons.push((
            HealthStatus::Degraded,
            format!(
                "nvml_errors: {} NVML reads of this GPU failed this round",
                r.nvml_errors
            ),
        ));
    }
    // Most severe first; the rule order above within a status.
    reasons.sort_by_key(|(s, _)| std::cmp::Reverse(*s as i32));
    let status = reasons.first().map_or(HealthStatus::Ok, |(s, _)| *s);
    GpuHealth {
        status: status.into(),
        reasons: reasons.into_iter().map(|(_, r)| r).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round<'a>(sample: Option<&'a GpuSample>, xids: &'a GpuXids) -> Round<'a> {
        Round {
            sample,
            lost: false,
            nvml_errors: 0,
            xids,
            xid_window: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_busy_power_capped_gpu_is_ok() {
        let s = GpuSample {
            clocks_event_sw_power_cap: Some(1),
            ecc_uncorrected_volatile: Some(0),
            ecc_uncorrected_aggregate: Some(1),
            row_remap_pending: Some(0),
            ..Default::default()
        };
        let h = judge(round(Some(&s), &GpuXids::default()));
        assert_eq!(h.status(), HealthStatus::Ok);
        assert_eq!(h.reasons, Vec::<String>::new());
    }

    #[test]
    fn reasons_come_most_severe_first_with_their_codes() {
        let s = GpuSample {
            row_remap_pending: Some(1),
            clocks_event_hw_thermal: Some(1),
            clocks_event_sw_thermal: Some(1),
            ..Default::default()
        };
        let xids = GpuXids {
            recent: vec![(94, 1), (48, 2), (94, 3)],
            ..Default::default()
        };
        let h = judge(Round {
            nvml_errors: 2,
            ..round(Some(&s), &xids)
        });
        assert_eq!(h.status(), HealthStatus::Failed);
        assert_eq!(
            h.reasons,
            [
                "xid: 48 (double-bit ECC error), 1 in the last 1h",
                "xid: 94 (contained ECC error), 2 in the last 1h",
                "row_remap_pending: a memory row remap waits for the next GPU reset",
                "thermal_throttling: clocks held down by the hardware and software thermal limit",
                "nvml_errors: 2 NVML reads of this GPU failed this round",
            ]
        );
    }

    #[test]
    fn a_lost_gpu_has_failed_without_an_nvml_errors_reason() {
        let h = judge(Round {
            lost: true,
            nvml_errors: 1,
            ..round(None, &GpuXids::default())
        });
        assert_eq!(h.status(), HealthStatus::Failed);
        assert_eq!(
            h.reasons,
            ["gpu_lost: the GPU fell off the bus (NVML: GPU is lost)"]
        );
    }
}
