//! Which pods hold which GPUs: the kubelet's PodResources API (`List`), read on a task of its
//! own every `--kubelet-refresh` and cached, never on the sampling path (dcgm-exporter opens a
//! connection and lists on every scrape). The sampler reads the cached [`PodMapping`].
//!
//! PodResources names pods (namespace, name, container) but not their UIDs, while a
//! process's cgroup names its pod's UID only. The kubelet's device-manager checkpoint
//! (`kubelet_internal_checkpoint`, JSON: pod UID, container, resource, device ids) joins the
//! two on (container, device id); see [`PodMapping::pod_of_uid`]. Without it, a process is
//! named only on a GPU held by a single container.
//!
//! When the kubelet stops answering, the last mapping stays, marked stale, and the collector
//! says so once (and once again when it answers again).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::sampler::now_ms;

/// The generated PodResources API (package `v1`, vendored in `collector/proto`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1");
}

use proto::pod_resources_lister_client::PodResourcesListerClient;

/// Where the kubelet serves PodResources.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// The kubelet's device-manager checkpoint.
pub const DEFAULT_CHECKPOINT: &str = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";
/// Resources whose devices are GPUs (`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, …).
pub const GPU_RESOURCE_PREFIX: &str = "nvidia.com/";

/// One container holding one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The device id as listed (`GPU-…`, `GPU-…::2`, `MIG-…`, or an index).
    pub device_id: String,
    /// The resource, e.g. `nvidia.com/gpu`.
    pub resource: String,
}

impl Assignment {
    /// The device the id names, without a time-slicing replica suffix (`GPU-x::2` → `GPU-x`).
    pub fn device(&self) -> &str {
        base_device_id(&self.device_id)
    }
}

/// `id` without its `::<replica>` suffix.
pub fn base_device_id(id: &str) -> &str {
    id.split_once("::").map_or(id, |(base, _)| base)
}

/// One entry of the kubelet's device checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// Pod UID.
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// Resource name.
    pub resource: String,
    /// Device ids.
    pub device_ids: Vec<String>,
}

/// The device ids the kubelet may list for one GPU: its UUID, its NVML index (the device
/// plugin's `index` id strategy), and its MIG devices' UUIDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuIds {
    /// `GPU-…`.
    pub uuid: String,
    /// The NVML index, as text.
    pub index: String,
    /// `MIG-…` of its MIG devices.
    pub mig: Vec<String>,
}

impl GpuIds {
    /// The ids of GPU `uuid` at NVML `index` with MIG devices `mig`.
    pub fn new(uuid: &str, index: u32, mig: Vec<String>) -> Self {
        Self {
            uuid: uuid.to_string(),
            index: index.to_string(),
            mig,
        }
    }

    /// Whether `device` (a base id, without a replica suffix) is this GPU or one of its MIG
    /// devices.
    pub fn names(&self, device: &str) -> bool {
        device == self.uuid || device == self.index || self.mig.iter().any(|m| m == device)
    }
}

/// The pods-to-devices mapping as of the kubelet's last answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMapping {
    /// Every GPU device held by a container.
    pub assignments: Vec<Assignment>,
    /// The checkpoint read with it (empty when absent or unreadable).
    pub checkpoint: Vec<CheckpointEntry>,
    /// Whether the checkpoint was read: then a UID it does not list is nobody's.
    pub checkpoint_read: bool,
    /// When the kubelet answered (UTC ms); `None` until it has.
    pub as_of_ms: Option<i64>,
    /// The last refresh failed: this is the mapping from `as_of_ms`.
    pub stale: bool,
}

impl PodMapping {
    /// The containers holding the GPU (or one of its MIG devices), by device id.
    pub fn for_gpu<'a>(&'a self, gpu: &'a GpuIds) -> impl Iterator<Item = &'a Assignment> {
        self.assignments
            .iter()
            .filter(move |a| gpu.names(a.device()))
    }

    /// The containers holding exactly `device` (e.g. one MIG device).
    pub fn for_device<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Assignment> {
        self.assignments
            .iter()
            .filter(move |a| a.device() == device)
    }

    /// Namespace, pod and container of the pod with `uid` using the GPU `gpu` (or one of
    /// its MIG devices): the checkpoint gives the UID's containers and device ids,
    /// PodResources the names for the same (container, device id). Without a checkpoint
    /// entry for the UID, the GPU's only container if it has exactly one.
    pub fn pod_of_uid<'a>(&'a self, uid: &str, gpu: &'a GpuIds) -> Option<&'a Assignment> {
        let held: Vec<&Assignment> = self.for_gpu(gpu).collect();
        let by_checkpoint = self
            .checkpoint
            .iter()
            .filter(|e| e.pod_uid == uid)
            .find_map(|e| {
                held.iter()
                    .copied()
                    .find(|a| a.container == e.container && e.device_ids.contains(&a.device_id))
            });
        // With a checkpoint, only what it says counts: a pod it does not list for this GPU
        // (one that sees every GPU without the device plugin, say) is not the GPU's holder.
        if by_checkpoint.is_some() || self.checkpoint_read {
            return by_checkpoint;
        }
        match held.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }
}

/// The mapping, shared between the refresh task and the sampler.
#[derive(Debug, Default)]
pub struct PodTable {
    // Swapped whole on a change, so a round's snapshot is a pointer copy.
    mapping: RwLock<Arc<PodMapping>>,
}

impl PodTable {
    /// The current mapping (shared, not copied).
    pub fn snapshot(&self) -> Arc<PodMapping> {
        self.mapping
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the mapping (the refresh task's job; benchmarks set one directly).
    pub fn set(&self, mapping: PodMapping) {
        *self.mapping.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(mapping);
    }

    /// Marks the mapping stale (the kubelet did not answer).
    fn mark_stale(&self) {
        let mut m = self.mapping.write().unwrap_or_else(|p| p.into_inner());
        if !m.stale {
            let mut next = PodMapping::clone(&m);
            next.stale = true;
            *m = Arc::new(next);
        }
    }
}

/// Flattens a `List` answer to the GPU devices held.
pub fn assignments(resp: proto::ListPodResourcesResponse) -> Vec<Assignment> {
    let mut out = Vec::new();
    for pod in resp.pod_resources {
        for c in pod.containers {
            for d in c.devices {
                if !d.resource_name.starts_with(GPU_RESOURCE_PREFIX) {
                    continue;
                }
                for id in d.device_ids {
                    out.push(Assignment {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: c.name.clone(),
                        device_id: id,
                        resource: d.resource_name.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Parses the kubelet's checkpoint: `{"Data": {"PodDeviceEntries": [{"PodUID", "ContainerName",
/// "ResourceName", "DeviceIDs"}]}}`, where `DeviceIDs` is a list (before Kubernetes 1.20) or
/// a map of NUMA node to list. GPU resources only.
///
/// # Errors
/// A line saying what is wrong when the text is not such a checkpoint.
pub fn parse_checkpoint(text: &str) -> Result<Vec<CheckpointEntry>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let entries = v
        .pointer("/Data/PodDeviceEntries")
        .ok_or("no Data.PodDeviceEntries")?;
    let Some(entries) = entries.as_array() else {
        // `null` when no pod holds a device.
        return if entries.is_null() {
            Ok(Vec::new())
        } else {
            Err("Data.PodDeviceEntries is not a list".into())
        };
    };
    let text =
        |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        let list = |l: &serde_json::Value| {
            l.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        match v {
            serde_json::Value::Object(by_numa) => by_numa.values().flat_map(list).collect(),
            other => list(other),
        }
    };
    Ok(entries
        .iter()
        .filter_map(|e| {
            Some(CheckpointEntry {
                pod_uid: text(e, "PodUID")?,
                container: text(e, "ContainerName")?,
                resource: text(e, "ResourceName")?,
                device_ids: ids(e.get("DeviceIDs")?),
            })
        })
        .filter(|e| e.resource.starts_with(GPU_RESOURCE_PREFIX))
        .collect())
}

/// Where and how often to ask the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The PodResources socket.
    pub socket: PathBuf,
    /// The device-manager checkpoint.
    pub checkpoint: PathBuf,
    /// Time between refreshes.
    pub refresh: Duration,
}

/// A client for the PodResources API on a unix socket (connects on first use, reconnects
/// after a failure).
fn client(socket: &Path) -> PodResourcesListerClient<Channel> {
    let socket = socket.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    let channel = Endpoint::from_static("http://kubelet.invalid")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }));
    // A node with hundreds of pods answers in well under the default 4 MiB; allow more.
    PodResourcesListerClient::new(channel).max_decoding_message_size(64 << 20)
}

/// Refreshes `table` from the kubelet every `cfg.refresh` until `shutdown` resolves.
pub async fn run(
    cfg: KubeletConfig,
    table: Arc<PodTable>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut client = client(&cfg.socket);
    tokio::pin!(shutdown);
    let mut failing = false;
    let mut said_absent = false;
    let mut checkpoint_said = false;
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.list(proto::ListPodResourcesRequest {}),
        )
        .await;
        match answer {
            Ok(Ok(resp)) => {
                let assignments = assignments(resp.into_inner());
                let mut checkpoint_read = true;
                let checkpoint = match std::fs::read_to_string(&cfg.checkpoint) {
                    Ok(text) => parse_checkpoint(&text).unwrap_or_else(|error| {
                        checkpoint_read = false;
                        if !checkpoint_said {
                            tracing::warn!(path = %cfg.checkpoint.display(), %error, "cannot read the kubelet's device checkpoint: processes on shared GPUs are not named");
                            checkpoint_said = true;
                        }
                        Vec::new()
                    }),
                    Err(error) => {
                        checkpoint_read = false;
                        if !checkpoint_said {
                            tracing::info!(path = %cfg.checkpoint.display(), %error, "no kubelet device checkpoint: processes on shared GPUs are not named");
                            checkpoint_said = true;
                        }
                        Vec::new()
                    }
                };
                if failing {
                    tracing::info!(socket = %cfg.socket.display(), "the kubelet answers again; pod mapping current");
                } else if table.snapshot().as_of_ms.is_none() {
                    tracing::info!(socket = %cfg.socket.display(), devices = assignments.len(), "pod attribution from the kubelet");
                }
                failing = false;
                table.set(PodMapping {
                    assignments,
                    checkpoint,
                    checkpoint_read,
                    as_of_ms: Some(now_ms()),
                    stale: false,
                });
            }
            failed => {
                let error = match failed {
                    Ok(Err(status)) => status.to_string(),
                    _ => "no answer in 5 s".to_string(),
                };
                let known = table.snapshot().as_of_ms.is_some();
                if !known && !cfg.socket.exists() {
                    if !said_absent {
                        tracing::info!(socket = %cfg.socket.display(), "no kubelet PodResources socket: pods are not attributed (expected outside Kubernetes)");
                        said_absent = true;
                    }
                } else if !failing {
                    tracing::warn!(socket = %cfg.socket.display(), %error, "the kubelet's PodResources API does not answer; keeping the last pod mapping, marked stale");
                    failing = true;
                }
                if known {
                    table.mark_stale();
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.refresh) => {}
            () = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ns: &str, pod: &str, container: &str, id: &str) -> Assignment {
        Assignment {
            namespace: ns.into(),
            pod: pod.into(),
            container: container.into(),
            device_id: id.into(),
            resource: "nvidia.com/gpu".into(),
        }
    }

    #[test]
    fn checkpoints_of_both_formats_parse_and_other_resources_are_left_out() {
        let new = r#"{"Data":{"PodDeviceEntries":[
            {"PodUID":"u1","ContainerName":"c","ResourceName":"nvidia.com/gpu","DeviceIDs":{"0":["GPU-a::0"],"1":["GPU-a::1"]},"AllocResp":"AA=="},
            {"PodUID":"u2","ContainerName":"nic","ResourceName":"rdma/hca","DeviceIDs":{"-1":["0"]}}
        ],"RegisteredDevices":{}},"Checksum":1}"#;
        let mut got = parse_checkpoint(new).unwrap();
        got[0].device_ids.sort();
        assert_eq!(
            got,
            [CheckpointEntry {
                pod_uid: "u1".into(),
                container: "c".into(),
                resource: "nvidia.com/gpu".into(),
                device_ids: vec!["GPU-a::0".into(), "GPU-a::1".into()],
            }]
        );
        let old = r#"{"Data":{"PodDeviceEntries":[{"PodUID":"u3","ContainerName":"c","ResourceName":"nvidia.com/gpu","DeviceIDs":["GPU-b"]}]}}"#;
        assert_eq!(parse_checkpoint(old).unwrap()[0].device_ids, ["GPU-b"]);
        assert_eq!(
            parse_checkpoint(r#"{"Data":{"PodDeviceEntries":null}}"#).unwrap(),
            []
        );
        assert!(
            parse_checkpoint("{}")
                .unwrap_err()
                .contains("PodDeviceEntries")
        );
        assert!(parse_checkpoint("not json").is_err());
    }

    #[test]
    fn a_uid_is_named_through_the_checkpoint_or_a_gpu_with_one_container() {
        let mut m = PodMapping {
            assignments: vec![
                a("ml", "train-0", "main", "GPU-a::0"),
                a("ml", "infer-1", "server", "GPU-a::1"),
                a("ml", "solo", "main", "GPU-b"),
                a("ml", "by-index", "main", "3"),
            ],
            ..Default::default()
        };
        let (ga, gb) = (
            GpuIds::new("GPU-a", 0, vec![]),
            GpuIds::new("GPU-b", 1, vec![]),
        );
        assert_eq!(m.for_gpu(&ga).count(), 2);
        let gx = GpuIds::new("GPU-x", 3, vec![]);
        assert_eq!(m.for_gpu(&gx).next().unwrap().pod, "by-index");
        // Without a checkpoint: the single holder of GPU-b; GPU-a is shared, so no name.
        assert_eq!(m.pod_of_uid("u-solo", &gb).unwrap().pod, "solo");
        assert_eq!(m.pod_of_uid("u-infer", &ga), None);
        m.checkpoint_read = true;
        m.checkpoint = vec![
            CheckpointEntry {
                pod_uid: "u-infer".into(),
                container: "server".into(),
                resource: "nvidia.com/gpu".into(),
                device_ids: vec!["GPU-a::1".into()],
            },
            CheckpointEntry {
                pod_uid: "u-other".into(),
                container: "x".into(),
                resource: "nvidia.com/gpu".into(),
                device_ids: vec!["GPU-c".into()],
            },
        ];
        assert_eq!(m.pod_of_uid("u-infer", &ga).unwrap().pod, "infer-1");
        // A pod the checkpoint knows on another GPU is not this GPU's holder, nor is one the
        // checkpoint does not list at all (it sees every GPU without the device plugin).
        assert_eq!(m.pod_of_uid("u-other", &gb), None);
        assert_eq!(m.pod_of_uid("u-rogue", &gb), None);
    }

    #[test]
    fn mig_devices_count_as_their_parent_gpu() {
        let mut mig = a("ml", "small", "main", "MIG-1");
        mig.resource = "nvidia.com/mig-1g.10gb".into();
        let m = PodMapping {
            assignments: vec![mig, a("ml", "other", "main", "GPU-z")],
            ..Default::default()
        };
        let parent = GpuIds::new("GPU-p", 0, vec!["MIG-1".into(), "MIG-2".into()]);
        assert_eq!(
            m.for_gpu(&parent).map(|a| &a.pod).collect::<Vec<_>>(),
            ["small"]
        );
        assert_eq!(m.for_device("MIG-1").count(), 1);
        assert_eq!(m.for_device("MIG-2").count(), 0);
        assert_eq!(m.pod_of_uid("u", &parent).unwrap().pod, "small");
    }
}
