//! `NvmlSource` through the real nvml-wrapper code path, against the workspace's test build
//! of `libnvidia-ml.so` (`collector/nvml-test-double`), and the binary's NVML failures.

use std::path::PathBuf;
use std::process::Command;

use collector::nvml::NvmlSource;
use collector::source::{GpuSource, SourceError};
use telemetry_wire::health::HealthStatus;
use telemetry_wire::wire::GpuSample;

/// `target/debug/libnvidia_ml.so`, built by `cargo build --workspace`.
fn double() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("libnvidia_ml.so");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

#[test]
fn nvml_source_reads_inventory_and_exact_values_with_unsupported_fields_absent() {
    let mut src = NvmlSource::open(Some(&double()), "gpu-node-1").unwrap();
    assert_eq!(src.describe(), "nvml (2 GPUs)");
    let inv = src.inventory().to_vec();
    assert_eq!(inv[0].uuid, "GPU-11111111-2222-3333-4444-555555555555");
    assert_eq!(inv[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(inv[0].serial.as_deref(), Some("1650123456789"));
    assert_eq!(inv[0].pci_bus_id.as_deref(), Some("00000000:18:00.0"));
    assert_eq!(inv[0].driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(inv[0].cuda_driver_version, Some(12040));
    assert_eq!(inv[0].mig_enabled, Some(false));
    assert_eq!(inv[1].index, 1);
    assert!(inv.iter().all(|g| g.node == "gpu-node-1"));

    let batches = src.collect(1_790_000_000_000).unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.node, "gpu-node-1");
    assert_eq!(
        b.samples[0],
        GpuSample {
            uuid: "GPU-11111111-2222-3333-4444-555555555555".into(),
            timestamp_ms: 1_790_000_000_000,
            gpu_utilization_percent: Some(37),
            memory_utilization_percent: Some(21),
            memory_used_bytes: Some(21_474_836_480),
            memory_total_bytes: Some(85_899_345_920),
            temperature_celsius: Some(54),
            power_usage_milliwatts: Some(312_500),
            power_limit_milliwatts: Some(700_000),
            energy_consumed_millijoules: Some(123_456_789),
            sm_clock_mhz: Some(1980),
            memory_clock_mhz: Some(2619),
            fan_speed_percent: None, // NOT_SUPPORTED: absent, not zero
            memory_free_bytes: Some(85_899_345_920 - 536_870_912 - 21_474_836_480),
            memory_reserved_bytes: Some(536_870_912),
            sm_clock_max_mhz: Some(1980),
            memory_clock_max_mhz: Some(2619),
            encoder_utilization_percent: Some(12),
            decoder_utilization_percent: Some(3),
            pcie_replay_count: Some(7),
            pcie_link_generation: Some(5),
            pcie_link_width: Some(16),
            ecc_corrected_volatile: Some(3),
            ecc_uncorrected_volatile: Some(0),
            ecc_corrected_aggregate: Some(41),
            ecc_uncorrected_aggregate: Some(1),
            power_violation_ns: Some(2_500_000_000),
            thermal_violation_ns: Some(0),
            clocks_event_gpu_idle: Some(0),
            clocks_event_applications_clocks: Some(0),
            clocks_event_sw_power_cap: Some(1),
            clocks_event_hw_slowdown: Some(0),
            clocks_event_sync_boost: Some(0),
            clocks_event_sw_thermal: Some(0),
            clocks_event_hw_thermal: Some(0),
            clocks_event_hw_power_brake: Some(0),
            memory_temperature_celsius: Some(61),
            remapped_rows_correctable: Some(2),
            remapped_rows_uncorrectable: Some(0),
            row_remap_pending: Some(0),
            row_remap_failure: Some(0),
            pcie_tx_bytes: Some(5_000_000_000),
            pcie_rx_bytes: Some(7_000_000_000),
            // Hopper: no page retirement (rows are remapped), absent.
            retired_pages_sbe: None,
            retired_pages_dbe: None,
            retired_pages_pending: None,
            // 17 of 18 links up; error totals; KiB counted by NVML, bytes here.
            nvlink_links_active: Some(17),
            nvlink_crc_flit_errors: Some(1),
            nvlink_crc_data_errors: Some(0),
            nvlink_replay_errors: Some(3),
            nvlink_recovery_errors: Some(0),
            nvlink_tx_bytes: Some(12_345_678 * 1024),
            nvlink_rx_bytes: Some(23_456_789 * 1024),
            // GPM needs two samples: none in the first round.
            gpm_graphics_activity: None,
            gpm_sm_activity: None,
            gpm_sm_occupancy: None,
            gpm_tensor_activity: None,
            gpm_dram_activity: None,
            gpm_fp64_activity: None,
            gpm_fp32_activity: None,
            gpm_fp16_activity: None,
        }
    );
    // The second round has GPM activity over the interval, in hundredths of a percent.
    let second = src.collect(1_790_000_001_000).unwrap().remove(0);
    let s0 = &second.samples[0];
    assert_eq!(
        [
            s0.gpm_graphics_activity,
            s0.gpm_sm_activity,
            s0.gpm_sm_occupancy,
            s0.gpm_tensor_activity,
            s0.gpm_dram_activity,
            s0.gpm_fp64_activity,
            s0.gpm_fp32_activity,
            s0.gpm_fp16_activity,
        ],
        [6250, 5825, 3100, 4475, 2750, 50, 1200, 2025].map(Some)
    );
    let g1 = &b.samples[1];
    // A board before Ampere answers retired pages; without NVLink or GPM those are absent.
    assert_eq!(
        (
            g1.retired_pages_sbe,
            g1.retired_pages_dbe,
            g1.retired_pages_pending
        ),
        (Some(2), Some(0), Some(0))
    );
    assert_eq!((g1.nvlink_links_active, g1.nvlink_tx_bytes), (None, None));
    assert_eq!(second.samples[1].gpm_sm_activity, None);
    assert_eq!(g1.fan_speed_percent, Some(30));
    // Between them, the two GPUs give every metric of the catalog.
    for m in telemetry_wire::metric::METRICS {
        assert!(
            second.samples.iter().any(|s| m.value(s).is_some()),
            "the test double gives no {}",
            m.name
        );
    }
    assert_eq!(
        g1.energy_consumed_millijoules, None,
        "NOT_SUPPORTED energy is absent"
    );
    assert_eq!(
        g1.gpu_utilization_percent,
        Some(0),
        "a real zero stays zero"
    );
    assert_eq!(g1.power_usage_milliwatts, Some(69_800));
    assert_eq!(
        (
            g1.encoder_utilization_percent,
            g1.decoder_utilization_percent
        ),
        (None, None),
        "no video engines: absent"
    );
    assert_eq!(g1.pcie_replay_count, Some(0), "a counter at zero is a zero");
    assert_eq!(
        (g1.pcie_link_generation, g1.pcie_link_width),
        (Some(4), Some(8))
    );
    assert_eq!(
        (
            g1.ecc_corrected_volatile,
            g1.ecc_uncorrected_aggregate,
            g1.power_violation_ns
        ),
        (None, None, Some(0)),
        "ECC off: absent; no violation: zero"
    );
    assert_eq!(
        (g1.clocks_event_gpu_idle, g1.clocks_event_sw_power_cap),
        (Some(1), Some(0)),
        "idle, not capped"
    );
    assert_eq!(
        (
            g1.memory_temperature_celsius,
            g1.remapped_rows_uncorrectable,
            g1.row_remap_pending
        ),
        (None, Some(1), Some(1)),
        "no HBM sensor: absent; a remap pending"
    );
    assert_eq!((g1.pcie_tx_bytes, g1.pcie_rx_bytes), (None, None));
    assert_eq!(src.field_errors(), 0, "NotSupported is not an error");

    // Health: GPU 0 is busy and power-capped (normal), GPU 1 has a row remap pending.
    let health: Vec<_> = b
        .gpus
        .iter()
        .map(|g| {
            let h = g.health.as_ref().unwrap();
            (h.status(), h.reasons.clone())
        })
        .collect();
    assert_eq!(
        health,
        [
            (HealthStatus::Ok, vec![]),
            (
                HealthStatus::Degraded,
                vec!["row_remap_pending: a memory row remap waits for the next GPU reset".into()]
            )
        ]
    );
    assert!(
        b.gpus
            .iter()
            .all(|g| g.xid_counts.is_empty() && g.last_xid.is_none())
    );
}

#[test]
fn xid_events_are_counted_per_code_and_a_critical_one_fails_the_gpu() {
    let lib = double();
    let before = now_ms();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--source", "nvml", "--nvml-lib", lib.to_str().unwrap()])
        .args(["--output", "json", "--rounds", "25", "--interval", "20ms"])
        .env("RUST_LOG", "warn")
        .env("NVML_TEST_DOUBLE_XIDS", "0:13,0:13,1:48")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let (g0, g1) = (&last["gpus"][0], &last["gpus"][1]);
    // Two of the same code: the counter is 2. 13 is the application's own: no health change.
    assert_eq!(g0["xid"]["counts"], serde_json::json!({"13": 2}));
    assert_eq!(g0["xid"]["last"]["code"], 13);
    assert_eq!(
        g0["health"],
        serde_json::json!({"status": "ok", "reasons": []})
    );
    assert_eq!(g1["xid"]["counts"], serde_json::json!({"48": 1}));
    let at = g1["xid"]["last"]["at_ms"].as_i64().unwrap();
    assert!((before..=now_ms()).contains(&at), "{at}");
    assert_eq!(
        g1["health"],
        serde_json::json!({"status": "failed", "reasons": [
            "xid: 48 (double-bit ECC error), 1 in the last 1h",
            "row_remap_pending: a memory row remap waits for the next GPU reset",
        ]})
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("XID event").count(),
        3,
        "one line per event: {stderr}"
    );
}

fn now_ms() -> i64 {
    collector::sampler::now_ms()
}

#[test]
fn a_field_the_gpu_does_not_support_is_logged_once_not_every_round() {
    let lib = double();
    let out = json_rounds(
        &["--source", "nvml", "--nvml-lib", lib.to_str().unwrap()],
        "info",
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = |field: &str| {
        stderr
            .lines()
            .filter(|l| {
                l.contains("not available on this GPU") && l.contains(&format!("field=\"{field}\""))
            })
            .count()
    };
    // GPU 1 lacks these, GPU 0 a fan: once per GPU and field, over three rounds.
    assert_eq!(lines("energy"), 1, "{stderr}");
    assert_eq!(lines("encoder_utilization"), 1, "{stderr}");
    assert_eq!(lines("ecc_corrected_volatile"), 1, "{stderr}");
    assert_eq!(lines("fan_speed"), 1, "{stderr}");
    assert_eq!(lines("nvlink_link_count"), 1, "{stderr}");
    // Three rounds of two GPUs on stdout.
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
}

#[test]
fn missing_library_error_names_it_and_suggests_simulated() {
    let err = NvmlSource::open(
        Some(std::path::Path::new("/nonexistent/libnvidia-ml.so.1")),
        "n",
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::NvmlLoad { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/libnvidia-ml.so.1"), "{msg}");
    assert!(msg.contains("--source simulated"), "{msg}");
}

fn run_collector(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_collector"));
    cmd.args(args)
        .env("SERVICE_TOKEN", "collector-test-token-0123456789")
        .env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn collector_without_nvml_exits_with_one_line_naming_the_library() {
    let (code, stderr) = run_collector(
        &[
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
            "--brokers",
            "127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("collector: cannot load NVML library /nonexistent/libnvidia-ml.so.1"),
        "{stderr}"
    );
    assert!(stderr.contains("--source simulated"), "{stderr}");
}

#[test]
fn collector_reports_nvml_init_failure_in_one_line() {
    let lib = double();
    let (code, stderr) = run_collector(
        &[
            "--nvml-lib",
            lib.to_str().unwrap(),
            "--brokers",
            "127.0.0.1:1",
        ],
        &[("NVML_TEST_DOUBLE_INIT_ERROR", "1")],
    );
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nvmlInit failed"), "{stderr}");
}

#[test]
fn collector_without_service_token_says_which_secret_and_where_it_looked() {
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args([
            "--source",
            "simulated",
            "--secret-dir",
            "/nonexistent-secrets",
        ])
        .env_remove("SERVICE_TOKEN")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr.trim_end(),
        "collector: service token is missing: /nonexistent-secrets/service-token not found or empty; env SERVICE_TOKEN is unset"
    );
}

#[test]
fn json_output_keeps_stdout_to_json_lines_and_the_summary_on_stderr() {
    let out = json_rounds(&["--source", "simulated", "--sim-nodes", "2"], "off");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // One batch per node and round, every line a JSON object.
    assert_eq!(lines.len(), 6, "{stdout}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.is_object(), "{l}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("collector stopped: rounds=3"), "{stderr}");
}

/// Three quick rounds of the collector binary with `--output json` (no broker).
fn json_rounds(source: &[&str], log: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(source)
        .args(["--output", "json", "--rounds", "3", "--interval", "10ms"])
        .env("RUST_LOG", log)
        .output()
        .unwrap()
}

#[test]
fn a_gpu_that_falls_off_the_bus_stops_reporting_with_one_error_line_and_the_others_go_on() {
    let lib = double();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--source", "nvml", "--nvml-lib", lib.to_str().unwrap()])
        .args(["--output", "json", "--rounds", "4", "--interval", "10ms"])
        .env("RUST_LOG", "warn")
        .env("NVML_TEST_DOUBLE_LOST_AFTER", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let per_round: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // The inventory stays; a GPU without a sample has no timestamp.
            v["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| !g["timestamp_ms"].is_null())
                .map(|g| g["uuid"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    let (g0, g1) = (
        "GPU-11111111-2222-3333-4444-555555555555".to_string(),
        "GPU-66666666-7777-8888-9999-000000000000".to_string(),
    );
    assert_eq!(
        per_round,
        [
            vec![g0.clone(), g1.clone()],
            vec![g0.clone(), g1],
            vec![g0.clone()],
            vec![g0]
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("fell off the bus (NVML").count(),
        1,
        "{stderr}"
    );
    // Still listed, with its health: failed, lost.
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let h = &last["gpus"][1]["health"];
    assert_eq!(h["status"], "failed", "{last}");
    assert_eq!(
        h["reasons"][0],
        "gpu_lost: the GPU fell off the bus (NVML: GPU is lost)"
    );
}

#[test]
fn json_output_shows_mig_devices_and_processes_on_them() {
    let lib = double();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--source", "nvml", "--nvml-lib", lib.to_str().unwrap()])
        .args(["--output", "json", "--rounds", "1"])
        .env("RUST_LOG", "off")
        .env("NVML_TEST_DOUBLE_MIG", "1")
        .env("NVML_TEST_DOUBLE_PROCS", "0:7100:2147483648:0:0:5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g0 = &v["gpus"][0];
    assert_eq!(g0["mig_enabled"], true);
    let profiles: Vec<_> = g0["mig_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["index"].as_u64().unwrap(),
                m["profile"].as_str().unwrap().to_string(),
                m["gpu_instance_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        profiles,
        [(0, "3g.40gb".to_string(), 1), (2, "1g.10gb".to_string(), 5)]
    );
    assert_eq!(
        g0["processes"][0]["mig_device_uuid"],
        "MIG-bbbbbbbb-1111-5222-8333-444444444444"
    );
    // Outside Kubernetes: no pod attribution at all (no kubelet socket), not an empty list.
    assert_eq!(g0["pods"], serde_json::Value::Null);
    assert_eq!(v["gpus"][1]["mig_devices"], serde_json::json!([]));
}

#[test]
fn a_read_that_needs_privilege_is_absent_and_said_once_without_degrading_health() {
    let lib = double();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--source", "nvml", "--nvml-lib", lib.to_str().unwrap()])
        .args(["--output", "json", "--rounds", "3", "--interval", "10ms"])
        .env("RUST_LOG", "info")
        .env("NVML_TEST_DOUBLE_NO_PERMISSION", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("needs more privilege"))
        .collect();
    // Two policies (power, thermal) on two GPUs, each once over three rounds.
    assert_eq!(said.len(), 4, "{stderr}");
    assert!(
        said.iter()
            .all(|l| l.contains("No permission") || l.contains("permission")),
        "{said:?}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let g0 = &last["gpus"][0];
    assert_eq!(g0["metrics"].get("power_violation_seconds"), None);
    assert_eq!(g0["health"]["status"], "ok", "{g0}");
}
