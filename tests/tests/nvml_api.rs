//! The NVML path end to end: `api --embedded --source nvml` against the test build of
//! `libnvidia-ml.so`, read over HTTP. Exact metric values, health with its reasons, XID
//! counters, the `health=` filter, and a GPU that falls off the bus.

use std::time::Duration;

use collector::nvml::NvmlSource;
use collector::source::GpuSource;
use integration_tests::{Proc, eventually, get_json, nvml_double};
use serde_json::{Value, json};
use telemetry_wire::metric;

const KEY: &str = "nvml-api-key-0123456789";
const G0: &str = "GPU-11111111-2222-3333-4444-555555555555";
const G1: &str = "GPU-66666666-7777-8888-9999-000000000000";

fn spawn(dir: &std::path::Path, env: &[(&str, &str)]) -> (Proc, String) {
    let lib = nvml_double();
    let mut vars = vec![("API_KEY", KEY.to_string())];
    vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_string())));
    integration_tests::spawn_embedded_api(
        dir,
        &[
            "--source",
            "nvml",
            "--nvml-lib",
            lib.to_str().unwrap(),
            "--node-name",
            "gpu-node-7",
            "--interval",
            "100ms",
        ],
        &vars,
    )
}

async fn gpus(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    get_json(http, &format!("{base}/api/v1/gpus{query}"), Some(KEY)).await
}

/// The UUIDs of a GPU list, in order.
fn uuids(body: &Value) -> Vec<String> {
    body["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect()
}

/// The metrics the test double's GPUs give from their second round on, as the API names and
/// scales them: read through the same library in this process.
fn expected_latest() -> Vec<Value> {
    let mut src = NvmlSource::open(Some(&nvml_double()), "here").unwrap();
    // The second round: GPM activity needs an interval.
    src.collect(0).unwrap();
    let batch = src.collect(1000).unwrap().remove(0);
    batch
        .samples
        .iter()
        .map(|s| {
            Value::Object(
                metric::values(s)
                    .map(|(name, v)| (name.to_string(), json!(v)))
                    .collect(),
            )
        })
        .collect()
}

/// Compares numbers as numbers (the API writes 312.5 and 54; `json!` of f64 is 54.0).
fn same_numbers(got: &Value, want: &Value) -> bool {
    let (Some(g), Some(w)) = (got.as_object(), want.as_object()) else {
        return false;
    };
    g.len() == w.len()
        && w.iter()
            .all(|(k, v)| g.get(k).and_then(Value::as_f64) == v.as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_readings_health_and_xids_reach_the_api_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (_api, base) = spawn(dir.path(), &[("NVML_TEST_DOUBLE_XIDS", "0:13,0:13,1:48")]);
    let want = expected_latest();
    let list = eventually(
        Duration::from_secs(30),
        "both GPUs with their XIDs",
        || async {
            let (s, body) = gpus(&http, &base, "").await;
            (s == 200
                && body["count"] == 2
                && body["gpus"][1]["xid"]["counts"] == json!({"48": 1})
                && body["gpus"][0]["xid"]["counts"] == json!({"13": 2})
                // From the second round on (GPM needs an interval).
                && body["gpus"][0]["latest"]
                    .get("gpm_sm_activity_percent")
                    .is_some())
            .then_some(body)
        },
    )
    .await;
    let (g0, g1) = (&list["gpus"][0], &list["gpus"][1]);
    assert_eq!(
        (g0["uuid"].as_str(), g1["uuid"].as_str()),
        (Some(G0), Some(G1))
    );
    assert_eq!(g0["node"], "gpu-node-7");
    // Every metric, exactly; what NVML reports unsupported is absent.
    assert!(
        same_numbers(&g0["latest"], &want[0]),
        "{} vs {}",
        g0["latest"],
        want[0]
    );
    assert!(
        same_numbers(&g1["latest"], &want[1]),
        "{} vs {}",
        g1["latest"],
        want[1]
    );
    assert_eq!(g0["latest"]["power_usage_watts"], 312.5);
    assert_eq!(g0["latest"]["pcie_tx_bytes"], 5_000_000_000u64);
    assert_eq!(g0["latest"]["gpm_sm_activity_percent"], 58.25);
    assert_eq!(g0["latest"]["nvlink_links_active"], 17);
    assert_eq!(g1["latest"].get("energy_consumed_joules"), None);
    assert_eq!(g1["latest"]["gpu_utilization_percent"], 0);
    // Health and XIDs: 13 is the application's own (counted, no health change); 48 fails
    // GPU 1, which also has a row remap pending.
    assert_eq!(g0["health"], json!({"status": "ok", "reasons": []}));
    assert_eq!(g0["xid"]["last"]["code"], 13);
    assert_eq!(
        g1["health"],
        json!({"status": "failed", "reasons": [
            "xid: 48 (double-bit ECC error), 1 in the last 1h",
            "row_remap_pending: a memory row remap waits for the next GPU reset",
        ]})
    );
    assert_eq!(g1["xid"]["last"]["code"], 48);
    assert!(g1["xid"]["last"]["at"].as_str().unwrap().ends_with('Z'));
    // One GPU is the same in the list and on its own.
    let (s, one) = get_json(&http, &format!("{base}/api/v1/gpus/{G1}"), Some(KEY)).await;
    assert_eq!(s, 200);
    assert_eq!((&one["health"], &one["xid"]), (&g1["health"], &g1["xid"]));

    // The health filter.
    for (query, want) in [
        ("?health=failed", vec![G1]),
        ("?health=ok", vec![G0]),
        ("?health=degraded", vec![]),
        ("?health=unknown", vec![]),
        ("?health=failed&node=gpu-node-7", vec![G1]),
        ("?health=failed&node=other", vec![]),
    ] {
        let (s, body) = gpus(&http, &base, query).await;
        assert_eq!(s, 200, "{query}: {body}");
        assert_eq!(uuids(&body), want, "{query}");
        assert_eq!(body["count"], want.len(), "{query}");
    }
    let (s, body) = gpus(&http, &base, "?health=sick").await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["parameter"], "health", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_off_the_bus_is_listed_failed_with_its_xid_79_and_stops_counting_samples() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (_api, base) = spawn(dir.path(), &[("NVML_TEST_DOUBLE_LOST_AFTER", "3")]);
    let body = eventually(Duration::from_secs(30), "GPU 1 failed, XID 79", || async {
        let (s, body) = gpus(&http, &base, "?health=failed").await;
        (s == 200 && body["count"] == 1 && body["gpus"][0]["xid"]["counts"] == json!({"79": 1}))
            .then_some(body)
    })
    .await;
    let g1 = &body["gpus"][0];
    assert_eq!(g1["uuid"], G1);
    assert_eq!(
        g1["health"]["reasons"],
        json!([
            "gpu_lost: the GPU fell off the bus (NVML: GPU is lost)",
            "xid: 79 (GPU has fallen off the bus), 1 in the last 1h",
        ])
    );
    // Three rounds read it before it fell off; the other GPU goes on.
    assert_eq!(g1["sample_count"], 3);
    let (_, all) = gpus(&http, &base, "").await;
    let g0_count = all["gpus"][0]["sample_count"].as_u64().unwrap();
    eventually(Duration::from_secs(10), "GPU 0 keeps reporting", || async {
        let (_, all) = gpus(&http, &base, "").await;
        (all["gpus"][0]["sample_count"].as_u64().unwrap() > g0_count
            && all["gpus"][1]["sample_count"] == 3)
            .then_some(())
    })
    .await;
}

const UID_A: &str = "0a0a0a0a-1111-4222-8333-444444444444";
const UID_B: &str = "0b0b0b0b-1111-4222-8333-444444444444";
const UID_C: &str = "0c0c0c0c-1111-4222-8333-444444444444";

/// A fake host /proc: each pid's cgroup file (systemd driver paths for pods).
fn fake_proc(root: &std::path::Path, pids: &[(u32, Option<&str>)]) {
    for (pid, uid) in pids {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = match uid {
            Some(uid) => format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
                uid.replace('-', "_"),
                "ab".repeat(32)
            ),
            None => "0::/user.slice/user-1000.slice/session-2.scope\n".to_string(),
        };
        std::fs::write(dir.join("cgroup"), path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_the_kubelet_and_each_pods_share_of_a_time_sliced_gpu_reach_the_api() {
    use integration_tests::{FakeKubelet, pod_resources};
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // GPU 0 is time-sliced between two pods (replicas ::0 and ::1); GPU 1 is one pod's whole.
    let (g0_0, g0_1) = (format!("{G0}::0"), format!("{G0}::1"));
    let pods = vec![
        pod_resources("ml", "train-a", &[("trainer", "nvidia.com/gpu", &[&g0_0])]),
        pod_resources("ml", "infer-b", &[("server", "nvidia.com/gpu", &[&g0_1])]),
        pod_resources(
            "research",
            "notebook-c",
            &[("jupyter", "nvidia.com/gpu", &[G1])],
        ),
        // Another device plugin's devices are no GPU's.
        pod_resources("net", "router", &[("r", "rdma/hca", &["0"])]),
    ];
    let mut kubelet = FakeKubelet::start(dir.path(), pods);
    let checkpoint = dir.path().join("kubelet_internal_checkpoint");
    std::fs::write(
        &checkpoint,
        json!({"Data": {"PodDeviceEntries": [
            {"PodUID": UID_A, "ContainerName": "trainer", "ResourceName": "nvidia.com/gpu", "DeviceIDs": {"0": [g0_0]}},
            {"PodUID": UID_B, "ContainerName": "server", "ResourceName": "nvidia.com/gpu", "DeviceIDs": {"0": [g0_1]}},
            {"PodUID": UID_C, "ContainerName": "jupyter", "ResourceName": "nvidia.com/gpu", "DeviceIDs": {"1": [G1]}},
        ], "RegisteredDevices": {}}, "Checksum": 0})
        .to_string(),
    )
    .unwrap();
    let proc_root = dir.path().join("proc");
    fake_proc(
        &proc_root,
        &[
            (4242, Some(UID_A)),
            (4343, Some(UID_B)),
            (5151, Some(UID_C)),
            (6000, None),
        ],
    );
    let (mut api, base) = spawn(
        dir.path(),
        &[
            (
                "NVML_TEST_DOUBLE_PROCS",
                "0:4242:8589934592:40:22,0:4343:2147483648:15:5,0:6000:104857600:1:0,1:5151:524288000:0:0",
            ),
            ("KUBELET_SOCKET", kubelet.socket.to_str().unwrap()),
            ("KUBELET_CHECKPOINT", checkpoint.to_str().unwrap()),
            ("KUBELET_REFRESH", "200ms"),
            ("HOST_PROC", proc_root.to_str().unwrap()),
        ],
    );
    let list = eventually(Duration::from_secs(30), "pods on both GPUs", || async {
        let (s, body) = gpus(&http, &base, "").await;
        (s == 200
            && body["gpus"][1]["pods"]
                .as_array()
                .is_some_and(|p| p.len() == 1))
        .then_some(body)
    })
    .await;
    let pod = |ns: &str, name: &str, c: &str, id: &str| json!({"namespace": ns, "pod": name, "container": c, "device_id": id, "resource": "nvidia.com/gpu"});
    assert_eq!(
        list["gpus"][0]["pods"],
        json!([
            pod("ml", "train-a", "trainer", &g0_0),
            pod("ml", "infer-b", "server", &g0_1)
        ])
    );
    assert_eq!(
        list["gpus"][1]["pods"],
        json!([pod("research", "notebook-c", "jupyter", G1)])
    );
    assert_eq!(list["gpus"][0]["pods_stale"], false);
    assert!(
        list["gpus"][0]["pods_as_of"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // Each process with its pod: the time-sliced GPU shows each pod's share.
    let (s, procs) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/{G0}/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 200, "{procs}");
    let common = |pid: u32, mem: u64, sm: u32, mu: u32| {
        json!({"pid": pid, "used_memory_bytes": mem, "sm_utilization_percent": sm,
               "memory_utilization_percent": mu, "encoder_utilization_percent": 0,
               "decoder_utilization_percent": 0})
    };
    let with_pod = |mut v: Value, ns: &str, pod: &str, c: &str, uid: &str| {
        let o = v.as_object_mut().unwrap();
        o.insert("namespace".into(), json!(ns));
        o.insert("pod".into(), json!(pod));
        o.insert("container".into(), json!(c));
        o.insert("pod_uid".into(), json!(uid));
        v
    };
    assert_eq!(
        procs["processes"],
        json!([
            with_pod(
                common(4242, 8_589_934_592, 40, 22),
                "ml",
                "train-a",
                "trainer",
                UID_A
            ),
            with_pod(
                common(4343, 2_147_483_648, 15, 5),
                "ml",
                "infer-b",
                "server",
                UID_B
            ),
            // A host process (not in a pod): no pod.
            common(6000, 104_857_600, 1, 0),
        ])
    );
    assert_eq!(
        (procs["uuid"].as_str(), &procs["count"]),
        (Some(G0), &json!(3))
    );
    assert_eq!(procs["pods_stale"], false);
    let (_, procs1) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/{G1}/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!(
        procs1["processes"],
        json!([with_pod(
            common(5151, 524_288_000, 0, 0),
            "research",
            "notebook-c",
            "jupyter",
            UID_C
        )])
    );

    // Filters by namespace and pod.
    for (query, want) in [
        ("?namespace=ml", vec![G0]),
        ("?namespace=research", vec![G1]),
        ("?pod=infer-b", vec![G0]),
        ("?namespace=ml&pod=notebook-c", vec![]),
        ("?namespace=net", vec![]),
        ("?namespace=research&health=degraded", vec![G1]),
    ] {
        let (s, body) = gpus(&http, &base, query).await;
        assert_eq!(s, 200, "{query}: {body}");
        assert_eq!(uuids(&body), want, "{query}");
    }
    let (s, body) = gpus(&http, &base, "?pod=").await;
    assert_eq!((s, &body["error"]["parameter"]), (400, &json!("pod")));
    let (s, body) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/GPU%20x/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!((s, &body["error"]["parameter"]), (400, &json!("uuid")));
    let (s, _) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/GPU-0000/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 404, "an unknown GPU");

    // The kubelet goes away: the last mapping stays, marked stale, said once.
    kubelet.stop().await;
    let stale = eventually(Duration::from_secs(30), "pods marked stale", || async {
        let (_, body) = gpus(&http, &base, "").await;
        (body["gpus"][0]["pods_stale"] == true).then_some(body)
    })
    .await;
    assert_eq!(stale["gpus"][0]["pods"], list["gpus"][0]["pods"]);
    let (_, procs) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/{G0}/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!(procs["processes"][1]["pod"], "infer-b", "names kept");
    assert_eq!(procs["pods_stale"], true);
    api.wait_line(
        "does not answer; keeping the last pod mapping",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_devices_are_listed_under_their_gpu_with_their_pods_and_processes() {
    use integration_tests::{FakeKubelet, pod_resources};
    const MIG_A: &str = "MIG-aaaaaaaa-1111-5222-8333-444444444444";
    const MIG_B: &str = "MIG-bbbbbbbb-1111-5222-8333-444444444444";
    const UID_D: &str = "0d0d0d0d-1111-4222-8333-444444444444";
    const UID_E: &str = "0e0e0e0e-1111-4222-8333-444444444444";
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let _kubelet = FakeKubelet::start(
        dir.path(),
        vec![
            pod_resources(
                "ml",
                "mig-big",
                &[("main", "nvidia.com/mig-3g.40gb", &[MIG_A])],
            ),
            pod_resources(
                "ml",
                "mig-small",
                &[("main", "nvidia.com/mig-1g.10gb", &[MIG_B])],
            ),
        ],
    );
    let checkpoint = dir.path().join("kubelet_internal_checkpoint");
    std::fs::write(
        &checkpoint,
        json!({"Data": {"PodDeviceEntries": [
            {"PodUID": UID_D, "ContainerName": "main", "ResourceName": "nvidia.com/mig-3g.40gb", "DeviceIDs": {"0": [MIG_A]}},
            {"PodUID": UID_E, "ContainerName": "main", "ResourceName": "nvidia.com/mig-1g.10gb", "DeviceIDs": {"0": [MIG_B]}},
        ]}})
        .to_string(),
    )
    .unwrap();
    let proc_root = dir.path().join("proc");
    fake_proc(&proc_root, &[(7100, Some(UID_D)), (7200, Some(UID_E))]);
    let socket = dir.path().join("kubelet.sock");
    let (_api, base) = spawn(
        dir.path(),
        &[
            ("NVML_TEST_DOUBLE_MIG", "1"),
            (
                "NVML_TEST_DOUBLE_PROCS",
                "0:7100:2147483648:0:0:1,0:7200:536870912:0:0:5",
            ),
            ("KUBELET_SOCKET", socket.to_str().unwrap()),
            ("KUBELET_CHECKPOINT", checkpoint.to_str().unwrap()),
            ("KUBELET_REFRESH", "200ms"),
            ("HOST_PROC", proc_root.to_str().unwrap()),
        ],
    );
    let list = eventually(Duration::from_secs(30), "MIG pods", || async {
        let (s, body) = gpus(&http, &base, "").await;
        (s == 200
            && body["gpus"][0]["pods"]
                .as_array()
                .is_some_and(|p| p.len() == 2))
        .then_some(body)
    })
    .await;
    let g0 = &list["gpus"][0];
    assert_eq!(g0["mig_enabled"], true);
    let pod = |name: &str, profile: &str, id: &str| {
        json!({"namespace": "ml", "pod": name, "container": "main", "device_id": id,
               "resource": format!("nvidia.com/mig-{profile}")})
    };
    assert_eq!(
        g0["mig_devices"],
        json!([
            {"uuid": MIG_A, "index": 0, "gpu_instance_id": 1, "compute_instance_id": 0,
             "profile": "3g.40gb", "memory_total_bytes": 42_949_672_960u64,
             "memory_used_bytes": 10_737_418_240u64, "pods": [pod("mig-big", "3g.40gb", MIG_A)]},
            {"uuid": MIG_B, "index": 2, "gpu_instance_id": 5, "compute_instance_id": 0,
             "profile": "1g.10gb", "memory_total_bytes": 10_737_418_240u64,
             "memory_used_bytes": 1_073_741_824u64, "pods": [pod("mig-small", "1g.10gb", MIG_B)]},
        ])
    );
    // The parent lists its MIG devices' pods too, so the filters find it.
    assert_eq!(
        g0["pods"],
        json!([
            pod("mig-big", "3g.40gb", MIG_A),
            pod("mig-small", "1g.10gb", MIG_B)
        ])
    );
    // A MIG parent has no utilization of its own: absent, not 0.
    assert_eq!(g0["latest"].get("gpu_utilization_percent"), None);
    assert_eq!(g0["latest"]["power_usage_watts"], 312.5);
    assert_eq!(list["gpus"][1].get("mig_devices"), None);
    let (_, body) = gpus(&http, &base, "?pod=mig-small").await;
    assert_eq!(uuids(&body), [G0]);
    // Each process on its MIG device, with its pod (no per-process utilization under MIG).
    let (s, procs) = get_json(
        &http,
        &format!("{base}/api/v1/gpus/{G0}/processes"),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        procs["processes"],
        json!([
            {"pid": 7100, "used_memory_bytes": 2_147_483_648u64, "namespace": "ml", "pod": "mig-big",
             "container": "main", "pod_uid": UID_D, "mig_device_uuid": MIG_A},
            {"pid": 7200, "used_memory_bytes": 536_870_912, "namespace": "ml", "pod": "mig-small",
             "container": "main", "pod_uid": UID_E, "mig_device_uuid": MIG_B},
        ])
    );
    // Under dcgm-exporter's names: the framebuffer per GPU instance, with its profile, id
    // and pod (40 GiB − 10 GiB used = 30,720 MiB free; 10 GiB − 1 GiB = 9,216 MiB).
    let text = http
        .get(format!("{base}/api/v1/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fb: Vec<String> = text
        .lines()
        .filter(|l| {
            (l.starts_with("DCGM_FI_DEV_FB_FREE{") || l.starts_with("DCGM_FI_DEV_FB_USED{"))
                && l.contains(&format!("UUID=\"{G0}\""))
        })
        .map(|l| {
            // The labels that differ per instance, and the value.
            let keep = |k: &str| {
                l.split([',', '{', '}'])
                    .find(|p| p.starts_with(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            format!(
                "{} {} {} {} {}",
                l.split('{').next().unwrap(),
                keep("GPU_I_PROFILE"),
                keep("GPU_I_ID"),
                keep("pod"),
                l.rsplit(' ').next().unwrap()
            )
        })
        .collect();
    assert_eq!(
        fb,
        [
            "DCGM_FI_DEV_FB_FREE GPU_I_PROFILE=\"3g.40gb\" GPU_I_ID=\"1\" pod=\"mig-big\" 30720",
            "DCGM_FI_DEV_FB_FREE GPU_I_PROFILE=\"1g.10gb\" GPU_I_ID=\"5\" pod=\"mig-small\" 9216",
            "DCGM_FI_DEV_FB_USED GPU_I_PROFILE=\"3g.40gb\" GPU_I_ID=\"1\" pod=\"mig-big\" 10240",
            "DCGM_FI_DEV_FB_USED GPU_I_PROFILE=\"1g.10gb\" GPU_I_ID=\"5\" pod=\"mig-small\" 1024",
        ],
        "{text}"
    );
}
