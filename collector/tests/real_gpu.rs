//! The NVML path against a real driver, compared with `nvidia-smi`. Needs an NVIDIA GPU:
//! `scripts/gpu-check` runs it where one exists (`--ignored`).

use std::collections::HashMap;
use std::process::Command;

use collector::nvml::NvmlSource;
use collector::source::GpuSource;

const FIELDS: &str = "uuid,name,pci.bus_id,driver_version,memory.total,memory.used,temperature.gpu,\
power.draw,enforced.power.limit,clocks.sm,clocks.mem,utilization.gpu,memory.free,memory.reserved,\
clocks.max.sm,clocks.max.memory,utilization.encoder,utilization.decoder,pcie.link.gen.current,\
pcie.link.width.current,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total,\
ecc.errors.corrected.aggregate.total,ecc.errors.uncorrected.aggregate.total,\
clocks_event_reasons.gpu_idle,clocks_event_reasons.sw_power_cap,clocks_event_reasons.hw_slowdown,\
clocks_event_reasons.sw_thermal_slowdown,clocks_event_reasons.hw_thermal_slowdown,temperature.memory,\
remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure,\
retired_pages.single_bit_ecc.count,retired_pages.double_bit.count,retired_pages.pending";

fn smi() -> HashMap<String, HashMap<&'static str, String>> {
    let out = Command::new("nvidia-smi")
        .args([
            &format!("--query-gpu={FIELDS}"),
            "--format=csv,noheader,nounits",
        ])
        .output()
        .expect("nvidia-smi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<&'static str> = FIELDS.split(',').collect();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let row: HashMap<&'static str, String> = names
                .iter()
                .copied()
                .zip(l.split(',').map(|v| v.trim().to_string()))
                .collect();
            (row["uuid"].clone(), row)
        })
        .collect()
}

fn num(row: &HashMap<&'static str, String>, k: &str) -> Option<f64> {
    match row.get(k)?.as_str() {
        // Clock event reasons.
        "Active" | "Yes" => Some(1.0),
        "Not Active" | "No" => Some(0.0),
        v => v.parse().ok(),
    }
}

fn close(name: &str, ours: Option<f64>, theirs: Option<f64>, tolerance: f64) -> bool {
    let line = format!("{name:<22} collector {ours:>14?} nvidia-smi {theirs:>14?} (±{tolerance})");
    let ok = match (ours, theirs) {
        (Some(a), Some(b)) => (a - b).abs() <= tolerance,
        (None, None) => true,
        // nvidia-smi prints "[N/A]" where NVML says not supported: both must be absent.
        _ => false,
    };
    println!("{} {line}", if ok { "ok  " } else { "DIFF" });
    ok
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nvml_source_agrees_with_nvidia_smi() {
    let mut src = NvmlSource::open(None, "gpu-check").expect("NVML loads on a GPU machine");
    let rows = smi();
    let batch = src.collect(collector::sampler::now_ms()).unwrap().remove(0);
    assert_eq!(batch.gpus.len(), rows.len(), "same GPU count as nvidia-smi");
    let mut ok = true;
    for (info, s) in batch.gpus.iter().zip(&batch.samples) {
        let row = rows
            .get(&info.uuid)
            .unwrap_or_else(|| panic!("nvidia-smi lacks {}", info.uuid));
        println!("GPU {} {} ({})", info.index, info.uuid, info.name);
        ok &= info.name == row["name"];
        ok &= info.pci_bus_id.as_deref().map(str::to_ascii_lowercase)
            == Some(row["pci.bus_id"].to_ascii_lowercase());
        ok &= info.driver_version.as_deref() == Some(row["driver_version"].as_str());
        let mib = |b: Option<u64>| b.map(|b| b as f64 / 1_048_576.0);
        let n = |v: Option<u32>| v.map(f64::from);
        let w = |v: Option<u32>| v.map(|v| f64::from(v) / 1000.0);
        let c = |v: Option<u64>| v.map(|v| v as f64);
        // (what, ours, nvidia-smi's field, tolerance)
        let checks = [
            (
                "memory_total_mib",
                mib(s.memory_total_bytes),
                "memory.total",
                1.0,
            ),
            (
                "memory_used_mib",
                mib(s.memory_used_bytes),
                "memory.used",
                512.0,
            ),
            (
                "memory_free_mib",
                mib(s.memory_free_bytes),
                "memory.free",
                512.0,
            ),
            (
                "memory_reserved_mib",
                mib(s.memory_reserved_bytes),
                "memory.reserved",
                1.0,
            ),
            (
                "temperature_celsius",
                n(s.temperature_celsius),
                "temperature.gpu",
                3.0,
            ),
            (
                "power_usage_watts",
                w(s.power_usage_milliwatts),
                "power.draw",
                60.0,
            ),
            (
                "power_limit_watts",
                w(s.power_limit_milliwatts),
                "enforced.power.limit",
                1.0,
            ),
            ("sm_clock_mhz", n(s.sm_clock_mhz), "clocks.sm", 300.0),
            (
                "memory_clock_mhz",
                n(s.memory_clock_mhz),
                "clocks.mem",
                100.0,
            ),
            (
                "sm_clock_max_mhz",
                n(s.sm_clock_max_mhz),
                "clocks.max.sm",
                0.0,
            ),
            (
                "memory_clock_max_mhz",
                n(s.memory_clock_max_mhz),
                "clocks.max.memory",
                0.0,
            ),
            (
                "gpu_utilization_percent",
                n(s.gpu_utilization_percent),
                "utilization.gpu",
                50.0,
            ),
            (
                "encoder_util_percent",
                n(s.encoder_utilization_percent),
                "utilization.encoder",
                50.0,
            ),
            (
                "decoder_util_percent",
                n(s.decoder_utilization_percent),
                "utilization.decoder",
                50.0,
            ),
            // An idle GPU may drop its link generation between the two reads.
            (
                "pcie_link_generation",
                n(s.pcie_link_generation),
                "pcie.link.gen.current",
                3.0,
            ),
            (
                "pcie_link_width",
                n(s.pcie_link_width),
                "pcie.link.width.current",
                0.0,
            ),
            // ECC off: nvidia-smi prints [N/A] and the collector leaves them absent.
            (
                "ecc_corrected_volatile",
                c(s.ecc_corrected_volatile),
                "ecc.errors.corrected.volatile.total",
                0.0,
            ),
            (
                "ecc_uncorrected_volatile",
                c(s.ecc_uncorrected_volatile),
                "ecc.errors.uncorrected.volatile.total",
                0.0,
            ),
            (
                "ecc_corrected_aggregate",
                c(s.ecc_corrected_aggregate),
                "ecc.errors.corrected.aggregate.total",
                0.0,
            ),
            (
                "ecc_uncorrected_aggregate",
                c(s.ecc_uncorrected_aggregate),
                "ecc.errors.uncorrected.aggregate.total",
                0.0,
            ),
            // The flags can change between the two reads: presence must agree.
            (
                "clocks_event_gpu_idle",
                n(s.clocks_event_gpu_idle),
                "clocks_event_reasons.gpu_idle",
                1.0,
            ),
            (
                "clocks_event_sw_power_cap",
                n(s.clocks_event_sw_power_cap),
                "clocks_event_reasons.sw_power_cap",
                1.0,
            ),
            (
                "clocks_event_hw_slowdown",
                n(s.clocks_event_hw_slowdown),
                "clocks_event_reasons.hw_slowdown",
                1.0,
            ),
            (
                "clocks_event_sw_thermal",
                n(s.clocks_event_sw_thermal),
                "clocks_event_reasons.sw_thermal_slowdown",
                1.0,
            ),
            (
                "clocks_event_hw_thermal",
                n(s.clocks_event_hw_thermal),
                "clocks_event_reasons.hw_thermal_slowdown",
                1.0,
            ),
            (
                "memory_temperature_celsius",
                n(s.memory_temperature_celsius),
                "temperature.memory",
                3.0,
            ),
            (
                "remapped_rows_correctable",
                n(s.remapped_rows_correctable),
                "remapped_rows.correctable",
                0.0,
            ),
            (
                "remapped_rows_uncorrectable",
                n(s.remapped_rows_uncorrectable),
                "remapped_rows.uncorrectable",
                0.0,
            ),
            (
                "row_remap_pending",
                n(s.row_remap_pending),
                "remapped_rows.pending",
                0.0,
            ),
            (
                "row_remap_failure",
                n(s.row_remap_failure),
                "remapped_rows.failure",
                0.0,
            ),
            // Ampere and later: both [N/A] / absent.
            (
                "retired_pages_sbe",
                n(s.retired_pages_sbe),
                "retired_pages.single_bit_ecc.count",
                0.0,
            ),
            (
                "retired_pages_dbe",
                n(s.retired_pages_dbe),
                "retired_pages.double_bit.count",
                0.0,
            ),
            (
                "retired_pages_pending",
                n(s.retired_pages_pending),
                "retired_pages.pending",
                0.0,
            ),
        ];
        for (what, ours, field, tolerance) in checks {
            ok &= close(what, ours, num(row, field), tolerance);
        }
        // NVLink: links up against `nvidia-smi nvlink --status` (a line per link, "<inactive>"
        // for a link down; no lines without NVLink).
        let links = Command::new("nvidia-smi")
            .args(["nvlink", "--status", "-i", &info.index.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let link_lines: Vec<&str> = links
            .lines()
            .filter(|l| l.trim_start().starts_with("Link "))
            .collect();
        let up = link_lines
            .iter()
            .filter(|l| !l.contains("inactive"))
            .count();
        let theirs = (!link_lines.is_empty()).then_some(up as f64);
        ok &= close("nvlink_links_active", n(s.nvlink_links_active), theirs, 0.0);
        println!(
            "     nvlink bytes tx {:?} rx {:?}, errors flit {:?} data {:?} replay {:?} recovery {:?}",
            s.nvlink_tx_bytes,
            s.nvlink_rx_bytes,
            s.nvlink_crc_flit_errors,
            s.nvlink_crc_data_errors,
            s.nvlink_replay_errors,
            s.nvlink_recovery_errors
        );
        // Health as judged, and the XID counters (no nvidia-smi counterpart).
        let h = info
            .health
            .as_ref()
            .expect("every GPU has a health verdict");
        println!(
            "     health {:?} {:?}, xids {:?}",
            h.status(),
            h.reasons,
            info.xid_counts
        );
    }
    // GPM (Hopper and later) needs two rounds a real interval apart (NVML wants samples at
    // least 100 ms apart): every ratio within 0..=100 % where present.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = src.collect(collector::sampler::now_ms()).unwrap().remove(0);
    for s in &second.samples {
        let gpm = [
            s.gpm_graphics_activity,
            s.gpm_sm_activity,
            s.gpm_sm_occupancy,
            s.gpm_tensor_activity,
            s.gpm_dram_activity,
            s.gpm_fp64_activity,
            s.gpm_fp32_activity,
            s.gpm_fp16_activity,
        ];
        println!("GPU {} GPM (1/100 %): {gpm:?}", s.uuid);
        ok &= gpm.iter().flatten().all(|v| *v <= 10_000);
    }
    // Processes against `nvidia-smi --query-compute-apps`: the same PIDs with the same memory.
    let apps = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=gpu_uuid,pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut theirs: Vec<(String, u32, u64)> = apps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect();
    let mut ours: Vec<(String, u32, u64)> = second
        .gpus
        .iter()
        .flat_map(|g| {
            g.processes.iter().map(|p| {
                (
                    g.uuid.clone(),
                    p.pid,
                    p.used_memory_bytes.unwrap_or(0) / 1_048_576,
                )
            })
        })
        .collect();
    theirs.sort();
    ours.sort();
    println!("processes: collector {ours:?} nvidia-smi {theirs:?}");
    let pids = |v: &[(String, u32, u64)]| {
        v.iter()
            .map(|(g, p, _)| (g.clone(), *p))
            .collect::<Vec<_>>()
    };
    ok &= pids(&ours) == pids(&theirs);
    assert!(ok, "the collector and nvidia-smi disagree (see above)");
}
