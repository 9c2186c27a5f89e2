//! Which pod a host process belongs to, from `/proc/<pid>/cgroup`.
//!
//! NVML reports host PIDs; the kubelet puts every container in a cgroup whose path names the
//! pod's UID and the container's id, under either cgroup driver and either cgroup version:
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`
//!
//! The collector reads the host's `/proc` (`--proc-root`; the chart mounts it read-only at
//! `/host/proc`), which needs no capability: a cgroup file is world-readable.

use std::path::Path;

/// A process's pod, as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID (dashed form).
    pub pod_uid: String,
    /// The container's runtime id (64 hex digits), when the path carries one.
    pub container_id: Option<String>,
}

/// The pod of host process `pid`, read from `<proc_root>/<pid>/cgroup`; `None` for a process
/// outside any pod, one that has exited, or an unreadable file.
pub fn pod_of(proc_root: &Path, pid: u32) -> Option<PodCgroup> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    parse_cgroup(&text)
}

/// The pod named by the cgroup file's content (one `hierarchy:controllers:path` per line).
pub fn parse_cgroup(text: &str) -> Option<PodCgroup> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let at = parts.iter().position(|p| pod_uid_in(p).is_some())?;
        Some(PodCgroup {
            pod_uid: pod_uid_in(parts[at])?,
            container_id: parts.get(at + 1).and_then(|c| container_id_in(c)),
        })
    })
}

/// The UID in a path component `pod<uid>` or `kubepods-<qos>-pod<uid_with_underscores>.slice`.
fn pod_uid_in(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let at = name.rfind("pod")?;
    // `pod` starts the component or follows a `-` (systemd slice names).
    if at != 0 && !name[..at].ends_with('-') {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    let dashes = [8, 13, 18, 23];
    let ok = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if dashes.contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

/// The container id in `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`
/// or a bare `<id>`.
fn container_id_in(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = name.rsplit('-').next()?;
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f3c2a10-5b7e-4d21-9c0a-1e2f3a4b5c6d";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_and_cgroupfs_paths_name_the_pod_and_container() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        );
        let want = Some(PodCgroup {
            pod_uid: UID.into(),
            container_id: Some(CID.into()),
        });
        assert_eq!(parse_cgroup(&systemd), want);
        // cgroup v1, cgroupfs driver, guaranteed QoS (no QoS level in the path).
        let v1 = format!(
            "12:memory:/kubepods/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/pod{UID}/{CID}\n"
        );
        assert_eq!(parse_cgroup(&v1), want);
        let besteffort = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup(&besteffort), want);
    }

    #[test]
    fn host_processes_and_look_alikes_are_not_pods() {
        assert_eq!(
            parse_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
        assert_eq!(parse_cgroup("0::/system.slice/ipod-service.slice\n"), None);
        assert_eq!(
            parse_cgroup("0::/kubepods.slice/kubepods-podnot-a-uid.slice\n"),
            None
        );
        assert_eq!(parse_cgroup(""), None);
        assert_eq!(parse_cgroup("garbage without colons"), None);
        // The pod's own slice (no container below it): the pod, no container.
        assert_eq!(
            parse_cgroup(&format!("0::/kubepods/pod{UID}\n")),
            Some(PodCgroup {
                pod_uid: UID.into(),
                container_id: None
            })
        );
    }
}
