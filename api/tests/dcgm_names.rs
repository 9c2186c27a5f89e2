//! `GET /api/v1/metrics` against dcgm-exporter's own default counters list (vendored in
//! `tests/data/`): every counter it enables is served under its name, type and HELP text,
//! or listed as not served with a reason; the label set is dcgm-exporter's.

use std::collections::BTreeSet;

use api::dcgm::{DRIVER_VERSION_LABEL, FIELDS, NOT_SERVED};

const LIST: &str = include_str!("data/dcgm-exporter-default-counters.csv");

/// (field, type, help) of every enabled line.
fn default_counters() -> Vec<(String, String, String)> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, ',').map(str::trim);
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn every_default_counter_is_served_with_its_type_and_help_or_named_as_not_served() {
    let list = default_counters();
    assert_eq!(list.len(), 26, "the vendored list changed: {list:?}");
    let not_served: BTreeSet<&str> = NOT_SERVED.iter().map(|(n, _)| *n).collect();
    let mut expected = Vec::new();
    for (name, kind, help) in &list {
        if kind == "label" {
            assert_eq!(name, DRIVER_VERSION_LABEL, "a label field we do not set");
            continue;
        }
        if not_served.contains(name.as_str()) {
            continue;
        }
        expected.push((name.clone(), kind.clone(), help.clone()));
    }
    let served: Vec<(String, String, String)> = FIELDS
        .iter()
        .map(|f| (f.name.to_string(), f.kind.to_string(), f.help.to_string()))
        .collect();
    assert_eq!(
        served, expected,
        "same names, types, HELP and order as the list"
    );
    for n in &not_served {
        assert!(
            list.iter().any(|(name, _, _)| name == n),
            "{n} is not in the list"
        );
    }
    assert_eq!(served.len() + not_served.len() + 1, list.len());
}

#[test]
fn every_series_carries_dcgm_exporters_labels() {
    use telemetry_wire::wire::GpuInfo;
    use telemetry_wire::wire::proto::PodRef;
    let bare = GpuInfo {
        uuid: "GPU-a".into(),
        ..Default::default()
    };
    let names = |labels: &str| -> Vec<String> {
        labels
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split("\",")
            .map(|kv| kv.split_once('=').unwrap().0.to_string())
            .collect()
    };
    // dcgm-exporter's template: gpu, UUID, pci_bus_id, device, modelName, Hostname, then its
    // label fields (the driver version), then the Kubernetes attributes.
    assert_eq!(
        names(&api::dcgm::labels(&bare)),
        [
            "gpu",
            "UUID",
            "pci_bus_id",
            "device",
            "modelName",
            "Hostname",
            DRIVER_VERSION_LABEL
        ]
    );
    let in_pod = GpuInfo {
        pods: vec![PodRef {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            ..Default::default()
        }],
        ..bare
    };
    assert_eq!(
        names(&api::dcgm::labels(&in_pod))[7..],
        ["container", "namespace", "pod"]
    );
}
