//! The seam between "where GPU readings come from" and the rest of the collector.

use telemetry_wire::wire::TelemetryBatch;

/// Something that can read GPUs: NVML on a real node, or a simulated fleet.
pub trait GpuSource: Send {
    /// Reads every GPU once. `now_ms` is the collector clock (UTC ms) stamped on every
    /// sample of this round. Returns one batch per node the source covers (one for NVML,
    /// `nodes` for the simulated fleet).
    ///
    /// # Errors
    /// [`SourceError`] when the whole round failed; a single unsupported field is not an
    /// error (the field is absent).
    fn collect(&mut self, now_ms: i64) -> Result<Vec<TelemetryBatch>, SourceError>;

    /// Short description for the startup log, e.g. `nvml (2 GPUs)`.
    fn describe(&self) -> String;
}

/// Why a source could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The NVML shared library could not be loaded.
    #[error(
        "cannot load NVML library {library}: {detail}. Is the NVIDIA driver installed and the library visible to this process? On a machine without NVIDIA GPUs run with --source simulated"
    )]
    NvmlLoad {
        /// The library looked for.
        library: String,
        /// The loader's error.
        detail: String,
    },
    /// The library loaded but `nvmlInit` failed.
    #[error(
        "NVML library {library} loaded but nvmlInit failed: {detail}. Check the driver (nvidia-smi) or run with --source simulated"
    )]
    NvmlInit {
        /// The library.
        library: String,
        /// NVML's error.
        detail: String,
    },
    /// A device query that every round needs failed.
    #[error("NVML {call} failed: {detail}")]
    Nvml {
        /// The call, e.g. `nvmlDeviceGetCount`.
        call: &'static str,
        /// NVML's error.
        detail: String,
    },
}
