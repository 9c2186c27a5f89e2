//! One sampling round over a node's GPUs through the real nvml-wrapper path against the NVML
//! test double (whose answers cost next to nothing, so this is our overhead: the reads, the
//! batch, encoding and signing it), and the collector's memory over many rounds.
//!
//! Each GPU runs two processes of two pods sharing it (time-slicing), attributed through a
//! pod mapping and a /proc tree of cgroup files, as on a Kubernetes node.
//!
//! Run with `scripts/bench-collector` (builds the double, sets `NVML_TEST_DOUBLE_GPUS=8` and
//! `NVML_TEST_DOUBLE_PROCS`).

use std::time::Instant;

use std::sync::Arc;

use collector::kubelet::{Assignment, CheckpointEntry, PodMapping, PodTable};
use collector::nvml::NvmlSource;
use collector::source::GpuSource;
use secrecy::SecretString;
use telemetry_wire::RecordSigner;
use telemetry_wire::wire::seal;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/<bench> → target/release
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let double = dir.join("libnvidia_ml.so");
    assert!(
        double.exists(),
        "{} missing: run scripts/bench-collector (it builds the NVML test double)",
        double.display()
    );
    let src = NvmlSource::open(Some(&double), "bench-node").unwrap();
    let gpus = src.inventory().len();
    assert_eq!(
        gpus, 8,
        "set NVML_TEST_DOUBLE_GPUS=8 (scripts/bench-collector does)"
    );
    // Pods a and b share each GPU; their processes are pids 1000 + 2g and 1001 + 2g.
    let procs = std::env::var("NVML_TEST_DOUBLE_PROCS").unwrap_or_default();
    assert_eq!(
        procs.split(',').count(),
        16,
        "two processes per GPU (scripts/bench-collector)"
    );
    let proc_root = tempfile::tempdir().unwrap();
    let mut mapping = PodMapping {
        as_of_ms: Some(1_790_000_000_000),
        checkpoint_read: true,
        ..Default::default()
    };
    for (g, info) in src.inventory().iter().enumerate() {
        for (k, name) in ["a", "b"].iter().enumerate() {
            let uid = format!("{g:08x}-0000-4000-8000-00000000000{k}");
            let device_id = format!("{}::{k}", info.uuid);
            let pid = 1000 + 2 * g + k;
            let dir = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("cgroup"),
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
                    uid.replace('-', "_"),
                    "ab".repeat(32)
                ),
            )
            .unwrap();
            mapping.assignments.push(Assignment {
                namespace: "bench".into(),
                pod: format!("pod-{g}-{name}"),
                container: "main".into(),
                device_id: device_id.clone(),
                resource: "nvidia.com/gpu".into(),
            });
            mapping.checkpoint.push(CheckpointEntry {
                pod_uid: uid,
                container: "main".into(),
                resource: "nvidia.com/gpu".into(),
                device_ids: vec![device_id],
            });
        }
    }
    let table = Arc::new(PodTable::default());
    table.set(mapping);
    let mut src = src.with_pods(table, proc_root.path().to_path_buf());
    let first = src.collect(1_789_999_999_000).unwrap();
    let named = first[0]
        .gpus
        .iter()
        .flat_map(|g| &g.processes)
        .filter(|p| p.pod.is_some())
        .count();
    assert_eq!(named, 16, "every process named");
    let signer = RecordSigner::new(&SecretString::from("bench-token-0123456789".to_string()));
    let mut round = |t: i64| {
        let batches = src.collect(t).unwrap();
        for b in &batches {
            std::hint::black_box(seal(&signer, b));
        }
    };
    for t in 0..1_000 {
        round(1_790_000_000_000 + t * 1000);
    }
    let mut us = Vec::new();
    for r in 0..7 {
        let t0 = Instant::now();
        for t in 0..1_000 {
            round(1_790_001_000_000 + (r * 1_000 + t) * 1000);
        }
        us.push(t0.elapsed().as_secs_f64() * 1e6 / 1_000.0);
    }
    println!(
        "one round over {gpus} GPUs with 16 processes of 16 pods (NVML reads through nvml-wrapper + pod attribution + batch + encode + sign): median {:.1} µs over 7 runs of 1,000 rounds (runs: {:?})",
        median(us.clone()),
        us.iter()
            .map(|u| (u * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    let start = rss_kib();
    let t0 = Instant::now();
    for t in 0..100_000 {
        round(1_790_100_000_000 + t * 1000);
    }
    println!(
        "RSS over 100,000 rounds: {start} kB after 8,000 warm-up rounds, {} kB at the end ({:.1} s)",
        rss_kib(),
        t0.elapsed().as_secs_f64()
    );
}
