//! The NVML path against a real driver, compared with `nvidia-smi`. Needs an NVIDIA GPU:
//! `scripts/gpu-check` runs it where one exists (`--ignored`).

use std::collections::HashMap;
use std::process::Command;

use collector::nvml::NvmlSource;
use collector::source::GpuSource;

const FIELDS: &str = "uuid,name,pci.bus_id,driver_version,memory.total,memory.used,temperature.gpu,\
power.draw,enforced.power.limit,clocks.sm,clocks.mem,utilization.gpu";

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
    row.get(k)?.parse().ok()
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
        ok &= close(
            "memory_total_mib",
            mib(s.memory_total_bytes),
            num(row, "memory.total"),
            1.0,
        );
        ok &= close(
            "memory_used_mib",
            mib(s.memory_used_bytes),
            num(row, "memory.used"),
            512.0,
        );
        ok &= close(
            "temperature_celsius",
            s.temperature_celsius.map(f64::from),
            num(row, "temperature.gpu"),
            3.0,
        );
        ok &= close(
            "power_usage_watts",
            s.power_usage_milliwatts.map(|v| f64::from(v) / 1000.0),
            num(row, "power.draw"),
            60.0,
        );
        ok &= close(
            "power_limit_watts",
            s.power_limit_milliwatts.map(|v| f64::from(v) / 1000.0),
            num(row, "enforced.power.limit"),
            1.0,
        );
        ok &= close(
            "sm_clock_mhz",
            s.sm_clock_mhz.map(f64::from),
            num(row, "clocks.sm"),
            300.0,
        );
        ok &= close(
            "memory_clock_mhz",
            s.memory_clock_mhz.map(f64::from),
            num(row, "clocks.mem"),
            100.0,
        );
        ok &= close(
            "gpu_utilization_percent",
            s.gpu_utilization_percent.map(f64::from),
            num(row, "utilization.gpu"),
            50.0,
        );
    }
    assert!(ok, "the collector and nvidia-smi disagree (see above)");
}
