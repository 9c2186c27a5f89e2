//! GPU health: the status names the API speaks, and the XID codes that bear on health.
//!
//! XID codes and their meaning follow NVIDIA's "XID Errors" catalog
//! (<https://docs.nvidia.com/deploy/xid-errors/>). Most XIDs are caused by the application
//! (13 graphics engine exception, 31 MMU fault, 43 stopped by the user, 45 preemptive
//! cleanup): they are counted but do not change a GPU's health. The ones below say the
//! hardware or its firmware is in trouble.

pub use crate::wire::proto::{GpuHealth, HealthStatus, XidCount};

/// What a critical XID does to health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidClass {
    /// The code.
    pub code: u32,
    /// `Failed` (the GPU needs a reset or a drain) or `Degraded` (watch it).
    pub severity: HealthStatus,
    /// NVIDIA's description, short.
    pub meaning: &'static str,
}

/// The XIDs that change health, ascending by code.
pub const HEALTH_XIDS: &[XidClass] = &[
    xid(48, HealthStatus::Failed, "double-bit ECC error"),
    xid(
        61,
        HealthStatus::Degraded,
        "internal micro-controller breakpoint",
    ),
    xid(62, HealthStatus::Degraded, "internal micro-controller halt"),
    xid(
        63,
        HealthStatus::Degraded,
        "ECC page retirement or row remapping event",
    ),
    xid(
        64,
        HealthStatus::Failed,
        "ECC page retirement or row remapping failure",
    ),
    xid(74, HealthStatus::Degraded, "NVLink error"),
    xid(79, HealthStatus::Failed, "GPU has fallen off the bus"),
    xid(92, HealthStatus::Degraded, "high single-bit ECC error rate"),
    xid(94, HealthStatus::Degraded, "contained ECC error"),
    xid(95, HealthStatus::Failed, "uncontained ECC error"),
    xid(119, HealthStatus::Failed, "GSP RPC timeout"),
    xid(120, HealthStatus::Failed, "GSP error"),
    xid(140, HealthStatus::Failed, "unrecovered ECC error"),
];

const fn xid(code: u32, severity: HealthStatus, meaning: &'static str) -> XidClass {
    XidClass {
        code,
        severity,
        meaning,
    }
}

/// The class of `code`, `None` for an XID that does not bear on health.
pub fn xid_class(code: u32) -> Option<&'static XidClass> {
    HEALTH_XIDS
        .binary_search_by_key(&code, |c| c.code)
        .ok()
        .map(|i| &HEALTH_XIDS[i])
}

/// The API's name of a status: `unknown`, `ok`, `degraded`, `failed`.
pub fn status_name(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Unknown => "unknown",
        HealthStatus::Ok => "ok",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Failed => "failed",
    }
}

/// The status an API name stands for (`ok`, `degraded`, `failed`, `unknown`).
pub fn parse_status(name: &str) -> Option<HealthStatus> {
    [
        HealthStatus::Unknown,
        HealthStatus::Ok,
        HealthStatus::Degraded,
        HealthStatus::Failed,
    ]
    .into_iter()
    .find(|s| status_name(*s) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xid_table_is_sorted_and_looked_up_by_code() {
        assert!(HEALTH_XIDS.windows(2).all(|w| w[0].code < w[1].code));
        assert_eq!(xid_class(79).unwrap().severity, HealthStatus::Failed);
        assert_eq!(xid_class(94).unwrap().severity, HealthStatus::Degraded);
        assert_eq!(xid_class(13), None, "an application's own fault");
    }

    #[test]
    fn status_names_round_trip() {
        for s in ["unknown", "ok", "degraded", "failed"] {
            assert_eq!(status_name(parse_status(s).unwrap()), s);
        }
        assert_eq!(parse_status("OK"), None);
        assert_eq!(parse_status("healthy"), None);
    }
}
