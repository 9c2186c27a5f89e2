"""The Helm chart, rendered by the real Helm SDK and validated against Kubernetes schemas."""

import base64
import copy
import pathlib

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import (
    offline,
    CHART, KUBE_VERSIONS, NAMESPACE, RELEASE, ROOT, STRONG_API_KEY, STRONG_TOKEN, VALUE_SETS,
    by_kind, chart, env_of, hooks, install, one, pod_spec,
)

SECRET = f"{RELEASE}-telemetry-stack-auth"
OUR_WORKLOADS = [("Deployment", "api"), ("Deployment", "streamer"), ("DaemonSet", "collector")]


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_lint_is_clean_in_strict_mode(value_set, kube):
    _, values = value_set
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{kube}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(value_set, kube):
    _, values = value_set
    _, docs = install(values)
    docs = docs + hooks(values)
    checked = 0
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a custom resource: no upstream schema; checked below
        kubernetes_validate.validate(d, kube, strict=True)
        checked += 1
    assert checked >= 15


def test_validator_rejects_a_misspelled_field():
    _, docs = install({})
    deploy = copy.deepcopy(one(docs, "Deployment", "api"))
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, KUBE_VERSIONS[0], strict=True)


def test_seed_option_1_secret_has_the_contract_name_keys_and_base64_values():
    _, docs = install(VALUE_SETS["seed-option-1"])
    s = one(docs, "Secret", SECRET)
    assert s["type"] == "Opaque"
    assert set(s["data"]) == {"api-key", "service-token"}
    assert base64.b64decode(s["data"]["api-key"]).decode() == STRONG_API_KEY
    assert base64.b64decode(s["data"]["service-token"]).decode() == STRONG_TOKEN
    assert s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_retired_service_tokens_go_into_service_token_previous():
    _, docs = install({"secrets": {"previousServiceTokens": [STRONG_TOKEN[::-1], STRONG_API_KEY]}})
    data = one(docs, "Secret", SECRET)["data"]
    assert base64.b64decode(data["service-token-previous"]).decode() == f"{STRONG_TOKEN[::-1]}\n{STRONG_API_KEY}"
    _, docs = install({})
    assert "service-token-previous" not in one(docs, "Secret", SECRET)["data"]


def test_generated_secrets_are_strong_and_the_checksum_does_not_change_between_renders():
    _, first = install({})
    _, second = install({})
    a, b = one(first, "Secret", SECRET), one(second, "Secret", SECRET)
    for key in ("api-key", "service-token"):
        value = base64.b64decode(a["data"][key]).decode()
        assert len(value) == 48 and value.isalnum()
        # Offline `lookup` finds nothing, so each render generates anew; in a cluster the
        # existing value is looked up and kept. The pods' checksum must not follow that.
        assert a["data"][key] != b["data"][key]
    for kind, name in OUR_WORKLOADS:
        ca = one(first, kind, name)["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        cb = one(second, kind, name)["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        assert ca == cb


def test_checksum_changes_when_the_secret_values_change():
    _, one_set = install(VALUE_SETS["seed-option-1"])
    rotated = {"secrets": {"apiKey": STRONG_API_KEY[::-1], "serviceToken": STRONG_TOKEN}}
    _, other = install(rotated)
    a = one(one_set, "Deployment", "api")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    b = one(other, "Deployment", "api")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    assert a != b


def test_seed_option_2_uses_the_existing_secret_everywhere_and_creates_none():
    _, docs = install(VALUE_SETS["seed-option-2"])
    assert by_kind(docs, "Secret") == {}
    role = one(docs, "Role", "secret-reader")
    assert role["rules"][0]["resourceNames"] == ["my-existing-secret"]
    for kind, name in OUR_WORKLOADS:
        spec = pod_spec(one(docs, kind, name))
        assert {s["secret"]["name"] for s in spec["volumes"][0]["projected"]["sources"]} == {"my-existing-secret"}
        for e in spec["containers"][0]["env"]:
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
                assert e["valueFrom"]["secretKeyRef"]["name"] == "my-existing-secret"
        assert "annotations" not in one(docs, kind, name)["spec"]["template"]["metadata"]


def test_secret_reader_role_names_the_secret_and_only_reads_and_watches():
    _, docs = install({})
    role = one(docs, "Role", "secret-reader")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(docs, "RoleBinding", "secret-reader")
    assert binding["roleRef"]["name"] == "secret-reader"
    # Not the collectors: they read only the mounted service token, whatever the source.
    assert sorted(s["name"] for s in binding["subjects"]) == ["api", "streamer"]
    assert all(s["namespace"] == NAMESPACE for s in binding["subjects"])


def test_secrets_from_the_kubernetes_api_mount_only_a_token_and_open_egress_to_the_api_server():
    _, docs = install({"secrets": {"source": "kubernetes"}})
    for kind, name in [("Deployment", "api"), ("Deployment", "streamer")]:
        spec = pod_spec(one(docs, kind, name))
        assert spec["automountServiceAccountToken"] is True, name
        assert "auth" not in {v["name"] for v in spec.get("volumes", [])}, name
        container = spec["containers"][0]
        assert "auth" not in {m["name"] for m in container.get("volumeMounts", [])}, name
        env = env_of(container)
        assert env["SECRET_SOURCE"]["value"] == "kubernetes"
        assert env["SECRET_NAME"]["value"] == SECRET
        assert env["SECRET_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert "SECRET_DIR" not in env
        assert not [e for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})], name
    # Collectors keep the mounted service token alone: no API token on GPU nodes, no way to
    # read the API key.
    collector = pod_spec(one(docs, "DaemonSet", "collector"))
    assert collector["automountServiceAccountToken"] is False
    assert {i["key"] for i in collector["volumes"][0]["projected"]["sources"][0]["secret"]["items"]} == {"service-token"}
    assert env_of(collector["containers"][0])["SECRET_DIR"]["value"] == "/etc/telemetry/secrets"
    # The service accounts themselves still mount nothing: only these pods ask for a token.
    assert all(sa["automountServiceAccountToken"] is False for sa in by_kind(docs, "ServiceAccount").values())
    role = one(docs, "Role", "secret-reader")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "list", "watch"]}
    ]
    api_server = {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    pols = by_kind(docs, "NetworkPolicy")
    for name in ["api", "streamer"]:
        assert pols[name]["spec"]["egress"][-1] == api_server, name
    for name in ["collector", "msg-queue"]:
        assert api_server not in pols[name]["spec"]["egress"], name
    # The default (mount) opens no way to the API server.
    _, mounted = install({})
    for p in by_kind(mounted, "NetworkPolicy").values():
        assert api_server not in p["spec"]["egress"]
    control_plane = [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    _, narrowed = install({"secrets": {"source": "kubernetes"}, "networkPolicy": {"apiServerTo": control_plane}})
    assert by_kind(narrowed, "NetworkPolicy")["api"]["spec"]["egress"][-1]["to"] == control_plane
    with pytest.raises(helm.HelmError) as err:
        install({"secrets": {"source": "vault"}})
    assert 'secrets.source is "vault": use mount' in str(err.value)


def test_bundled_kafka_with_sasl_makes_clients_log_in_and_keeps_replication_among_brokers():
    _, docs = install({"msgQueue": {"sasl": {"enabled": True}}})
    kafka_secret = one(docs, "Secret", f"{RELEASE}-telemetry-stack-kafka")
    passwords = {k: base64.b64decode(v).decode() for k, v in kafka_secret["data"].items()}
    assert sorted(passwords) == ["collector-password", "streamer-password"]
    assert all(len(p) == 48 for p in passwords.values())
    assert kafka_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    mq = pod_spec(one(docs, "StatefulSet", "msg-queue"))["containers"][0]
    env = env_of(mq)
    assert env["KAFKA_LISTENERS"]["value"] == "SASL_PLAINTEXT://:9092,CONTROLLER://:9093,INTERNAL://:9094"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"]["value"] == "INTERNAL"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"]["value"] == "PLAIN"
    assert env["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_PLAIN_SASL_JAAS_CONFIG"]["value"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required '
        'user_collector="$(SASL_COLLECTOR_PASSWORD)" user_streamer="$(SASL_STREAMER_PASSWORD)";'
    )
    names = [e["name"] for e in mq["env"]]
    for user in ["collector", "streamer"]:
        var = f"SASL_{user.upper()}_PASSWORD"
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-telemetry-stack-kafka", "key": f"{user}-password"}
        # The kubelet expands $(VAR) only from variables defined before.
        assert names.index(var) < names.index("KAFKA_LISTENER_NAME_SASL__PLAINTEXT_PLAIN_SASL_JAAS_CONFIG")
    assert "SASL_PLAINTEXT://${HOSTNAME}." in mq["args"][0] and "INTERNAL://${HOSTNAME}." in mq["args"][0]
    for kind, name in [("DaemonSet", "collector"), ("Deployment", "streamer")]:
        c = pod_spec(one(docs, kind, name))["containers"][0]
        env = env_of(c)
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{RELEASE}-telemetry-stack-kafka", "key": f"{name}-password"}
        assert env["KAFKA_PROPERTIES"]["value"] == (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\n"
            f"sasl.username={name}\nsasl.password=$(KAFKA_SASL_PASSWORD)"
        )
        order = [e["name"] for e in c["env"]]
        assert order.index("KAFKA_SASL_PASSWORD") < order.index("KAFKA_PROPERTIES")
    peers = by_kind(docs, "NetworkPolicy")["msg-queue"]["spec"]["ingress"][1]["ports"]
    assert {"port": 9094, "protocol": "TCP"} in peers
    clients = by_kind(docs, "NetworkPolicy")["msg-queue"]["spec"]["ingress"][0]["ports"]
    assert clients == [{"port": 9092, "protocol": "TCP"}], "clients reach only the SASL listener"
    # Given passwords are used; one the JAAS line cannot carry is refused.
    _, given = install({"msgQueue": {"sasl": {"enabled": True, "collectorPassword": "c" * 32, "streamerPassword": "s" * 32}}})
    data = one(given, "Secret", f"{RELEASE}-telemetry-stack-kafka")["data"]
    assert base64.b64decode(data["collector-password"]).decode() == "c" * 32
    with pytest.raises(helm.HelmError) as err:
        install({"msgQueue": {"sasl": {"enabled": True, "collectorPassword": 'quote"0123456789abcdef'}}})
    assert "msgQueue.sasl.collectorPassword holds a quote" in str(err.value)
    with pytest.raises(helm.HelmError) as err:
        install({"msgQueue": {"sasl": {"enabled": True}}, "networkPolicy": {"enabled": False}})
    assert "msgQueue.sasl needs networkPolicy.enabled" in str(err.value)
    assert env_of(mq)["KAFKA_OPTS"]["value"], "the image's start script requires it with SASL"
    # Without SASL nothing of it is rendered.
    _, plain = install({})
    assert f"{RELEASE}-telemetry-stack-kafka" not in by_kind(plain, "Secret")
    assert "KAFKA_PROPERTIES" not in env_of(pod_spec(one(plain, "DaemonSet", "collector"))["containers"][0])


def test_an_external_kafkas_client_properties_come_from_a_secret():
    _, docs = install({"msgQueue": {"external": {"bootstrapServers": "kafka:9093", "clientSecret": "kafka-client"}}})
    for kind, name in [("DaemonSet", "collector"), ("Deployment", "streamer")]:
        env = env_of(pod_spec(one(docs, kind, name))["containers"][0])
        assert env["KAFKA_PROPERTIES"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-client", "key": name}


def test_every_service_gets_the_log_format():
    _, docs = install({"logFormat": "json"})
    for kind, name in OUR_WORKLOADS:
        assert env_of(pod_spec(one(docs, kind, name))["containers"][0])["LOG_FORMAT"]["value"] == "json"
    _, plain = install({})
    assert env_of(pod_spec(one(plain, "Deployment", "api"))["containers"][0])["LOG_FORMAT"]["value"] == "text"
    with pytest.raises(helm.HelmError):
        install({"logFormat": "xml"})


def exported_metric_names():
    """Every metric name the stack exports, read from the code: dcgm-exporter fields served
    at /api/v1/metrics, and each service's own metrics."""
    import re
    names = set(re.findall(r'name: "(DCGM_[A-Z_]+)"', (ROOT / "api/src/dcgm.rs").read_text()))
    for f in ["api/src/metrics.rs", "streamer/src/metrics.rs", "collector/src/metrics.rs"]:
        for name in re.findall(r'pub const \w+: &str = "(\w+)";', (ROOT / f).read_text()):
            names.add(name)
            # A histogram is queried through its series.
            if name.endswith("_seconds"):
                names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names


def test_grafana_dashboards_ship_as_a_sidecar_configmap_and_query_only_what_the_stack_exports():
    import json
    import re
    _, none = install({})
    assert not [d for d in by_kind(none, "ConfigMap") if "dashboards" in d]
    _, docs = install({"grafana": {"dashboards": {"enabled": True}}})
    cm = one(docs, "ConfigMap", "dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "GPU telemetry"
    assert sorted(cm["data"]) == [
        "gpu-telemetry-fleet.json", "gpu-telemetry-gpu.json",
        "gpu-telemetry-node.json", "gpu-telemetry-pipeline.json",
    ]
    exported = exported_metric_names()
    assert {"DCGM_FI_DEV_GPU_UTIL", "streamer_records_total", "collector_records_dropped_total",
            "api_http_request_duration_seconds_count", "api_sse_dropped_total",
            "streamer_consumer_lag_records"} <= exported
    uids, used = set(), set()
    for name, text in cm["data"].items():
        d = json.loads(text)
        assert d["uid"] not in uids, name
        uids.add(d["uid"])
        assert d["templating"]["list"][0] == {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
        queries = [t["expr"] for p in d["panels"] for t in p["targets"]]
        queries += [v["query"] for v in d["templating"]["list"][1:]]
        assert len(d["panels"]) >= 6 and queries, name
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "${datasource}", (name, p["title"])
        for q in queries:
            for metric in re.findall(r"\b((?:DCGM|streamer|collector|api)_[A-Za-z0-9_]+)\b", q):
                used.add(metric)
                assert metric in exported, f"{name}: {metric} in {q!r} is not exported"
    # The dashboards cover both faces: GPUs (dcgm names) and the pipeline's own health.
    assert any(m.startswith("DCGM_") for m in used) and any(m.startswith("streamer_") for m in used)
    _, elsewhere = install({"grafana": {"dashboards": {"enabled": True, "namespace": "monitoring", "label": "grafana_dash", "labelValue": "yes"}}})
    cm = one(elsewhere, "ConfigMap", "dashboards")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dash"] == "yes"


def test_pods_get_env_vars_and_the_mounted_secret_with_only_the_keys_they_need():
    _, docs = install({})
    need = {"api": {"api-key", "service-token"}, "streamer": {"service-token"}, "collector": {"service-token"}}
    for kind, name in OUR_WORKLOADS:
        spec = pod_spec(one(docs, kind, name))
        env = env_of(spec["containers"][0])
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs == need[name]
        for key in need[name]:
            var = key.upper().replace("-", "_")
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
        assert env["SECRET_DIR"]["value"] == "/etc/telemetry/secrets"
        sources = spec["volumes"][0]["projected"]["sources"]
        assert spec["volumes"][0]["projected"]["defaultMode"] == 0o440
        assert {i["key"] for i in sources[0]["secret"]["items"]} == need[name]
        assert "optional" not in sources[0]["secret"]
        optional = [s["secret"] for s in sources[1:]]
        if name == "streamer":
            # Retired tokens, if the Secret has them: to verify records replayed from Kafka.
            assert optional == [
                {"name": SECRET, "optional": True,
                 "items": [{"key": "service-token-previous", "path": "service-token-previous"}]}
            ]
        else:
            assert optional == []
        mount = spec["containers"][0]["volumeMounts"][0]
        assert mount == {"name": "auth", "mountPath": "/etc/telemetry/secrets", "readOnly": True}


def test_workloads_are_named_as_the_seed_commands_use_them_and_prefix_applies():
    _, docs = install({})
    for kind, name in OUR_WORKLOADS + [("StatefulSet", "msg-queue")]:
        one(docs, kind, name)
    _, prefixed = install(VALUE_SETS["prefix"])
    for kind, name in OUR_WORKLOADS + [("StatefulSet", "msg-queue"), ("Role", "secret-reader")]:
        one(prefixed, kind, f"team-a-{name}")
    # The secret keeps the contract name; releases are unique in a namespace anyway.
    one(prefixed, "Secret", SECRET)
    api = pod_spec(one(prefixed, "Deployment", "team-a-api"))
    assert env_of(api["containers"][0])["STREAMER_URL"]["value"] == "http://team-a-streamer:50051"


def test_two_prefixed_releases_in_one_namespace_share_no_name():
    _, a = install({"namePrefix": "a-"}, name="rel-a")
    _, b = install({"namePrefix": "b-"}, name="rel-b")
    names = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs}  # noqa: E731
    assert names(a) & names(b) == set()


def test_collector_is_an_unprivileged_daemonset_on_gpu_nodes():
    _, docs = install(VALUE_SETS["everything-on"])
    ds = one(docs, "DaemonSet", "collector")
    spec = pod_spec(ds)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["priorityClassName"] == "system-node-critical"
    assert not spec.get("hostPID") and not spec.get("hostNetwork") and not spec.get("hostIPC")
    c = spec["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not c["securityContext"].get("privileged")
    assert "resources" in c and "nvidia.com/gpu" not in c["resources"].get("limits", {})
    env = env_of(c)
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert env["COLLECTOR_SOURCE"]["value"] == "simulated"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    _, defaults = install({})
    assert "runtimeClassName" not in pod_spec(one(defaults, "DaemonSet", "collector"))


def test_nvml_collector_reads_the_kubelet_and_host_proc_read_only_and_nothing_more():
    _, docs = install({})
    spec = pod_spec(one(docs, "DaemonSet", "collector"))
    c = spec["containers"][0]
    env = env_of(c)
    assert env["KUBELET_SOCKET"]["value"] == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert env["KUBELET_CHECKPOINT"]["value"] == "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"
    assert env["KUBELET_REFRESH"]["value"] == "10s"
    assert env["HOST_PROC"]["value"] == "/host/proc"
    host = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host == {
        "pod-resources": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"},
        "device-plugins": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"},
        "host-proc": {"path": "/proc", "type": "Directory"},
    }
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in [("pod-resources", "/var/lib/kubelet/pod-resources"),
                       ("device-plugins", "/var/lib/kubelet/device-plugins"), ("host-proc", "/host/proc")]:
        assert mounts[name]["mountPath"] == path and mounts[name]["readOnly"] is True
    # Still no root, no capabilities, no host PID namespace: /proc is a read-only mount.
    assert spec["securityContext"]["runAsUser"] == 10001 and "supplementalGroups" not in spec["securityContext"]
    assert not spec.get("hostPID")
    # The node's group for the socket, where the admin gave one; another kubelet root.
    _, docs = install({"collector": {"podAttribution": {"supplementalGroups": [997], "kubeletRoot": "/data/kubelet/"}}})
    spec = pod_spec(one(docs, "DaemonSet", "collector"))
    assert spec["securityContext"]["supplementalGroups"] == [997]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v} == {
        "/data/kubelet/pod-resources", "/data/kubelet/device-plugins", "/proc"}
    # Off, or the simulated fleet: no host paths at all.
    for values in [{"collector": {"podAttribution": {"enabled": False}}}, {"collector": {"source": "simulated"}}]:
        _, docs = install(values)
        spec = pod_spec(one(docs, "DaemonSet", "collector"))
        assert not [v for v in spec["volumes"] if "hostPath" in v], values
        assert "KUBELET_SOCKET" not in env_of(spec["containers"][0])


def test_every_pod_of_ours_is_non_root_read_only_and_drops_all_capabilities():
    _, docs = install({})
    for kind, name in OUR_WORKLOADS:
        spec = pod_spec(one(docs, kind, name))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in c["resources"] and "requests" in c["resources"]
    mq = pod_spec(one(docs, "StatefulSet", "msg-queue"))
    assert mq["securityContext"]["runAsNonRoot"] is True
    assert mq["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for sa in by_kind(docs, "ServiceAccount").values():
        assert sa["automountServiceAccountToken"] is False


def test_network_policies_expose_only_the_api_and_the_broker_only_to_collector_and_streamer():
    _, docs = install({})
    pols = by_kind(docs, "NetworkPolicy")
    assert set(pols) == {"api", "streamer", "collector", "msg-queue"}
    comp = lambda peer: peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]  # noqa: E731
    api = pols["api"]["spec"]["ingress"]
    assert api == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # any source
    streamer = pols["streamer"]["spec"]["ingress"]
    assert [comp(p) for p in streamer[0]["from"]] == ["api"]
    assert streamer[0]["ports"] == [{"port": 50051, "protocol": "TCP"}]
    # Its metrics port: open (counters and fingerprints, no data) unless scrapers are named;
    # then those and the API server (the pod proxy `api rotate-secrets` reads it through).
    assert streamer[1] == {"ports": [{"port": 9401, "protocol": "TCP"}]}
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    control_plane = [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    _, narrowed = install({"networkPolicy": {"metricsFrom": scrapers, "apiServerTo": control_plane}})
    assert by_kind(narrowed, "NetworkPolicy")["streamer"]["spec"]["ingress"][1] == {
        "ports": [{"port": 9401, "protocol": "TCP"}], "from": scrapers + control_plane}
    mq = pols["msg-queue"]["spec"]["ingress"]
    assert sorted(comp(p) for p in mq[0]["from"]) == ["collector", "streamer"]
    assert mq[0]["ports"] == [{"port": 9092, "protocol": "TCP"}]
    assert [comp(p) for p in mq[1]["from"]] == ["msg-queue"]
    assert pols["collector"]["spec"]["ingress"] == []
    dns = {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
    for p in pols.values():
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
        assert p["spec"]["egress"][0] == dns
    # Out: the api only to the streamer, collector and streamer only to the brokers, the
    # brokers only to each other.
    egress = {name: p["spec"]["egress"][1:] for name, p in pols.items()}
    assert [comp(t) for t in egress["api"][0]["to"]] == ["streamer"]
    assert egress["api"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]
    for name in ["collector", "streamer"]:
        assert len(egress[name]) == 1
        assert [comp(t) for t in egress[name][0]["to"]] == ["msg-queue"]
        assert egress[name][0]["ports"] == [{"port": 9092, "protocol": "TCP"}]
    assert [comp(t) for t in egress["msg-queue"][0]["to"]] == ["msg-queue"]
    assert len(egress["api"]) == len(egress["msg-queue"]) == 1
    # An external Kafka: any address on its ports, or the peers given.
    _, docs = install(VALUE_SETS["external-kafka"])
    out = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"][1]
    assert out == {"ports": [{"port": 9092, "protocol": "TCP"}]}
    peers = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    _, docs = install({**VALUE_SETS["external-kafka"], "networkPolicy": {"kafkaTo": peers, "kafkaPorts": [9093, 9094]}})
    out = by_kind(docs, "NetworkPolicy")["collector"]["spec"]["egress"][1]
    assert out == {"to": peers, "ports": [{"port": 9093, "protocol": "TCP"}, {"port": 9094, "protocol": "TCP"}]}


def test_external_kafka_replaces_the_bundled_broker():
    _, docs = install(VALUE_SETS["external-kafka"])
    assert by_kind(docs, "StatefulSet") == {}
    assert "msg-queue" not in by_kind(docs, "NetworkPolicy")
    assert "msg-queue" not in by_kind(docs, "ServiceAccount")
    brokers = "kafka-0.kafka.data:9092,kafka-1.kafka.data:9092"
    for kind, name in [("Deployment", "streamer"), ("DaemonSet", "collector")]:
        assert env_of(pod_spec(one(docs, kind, name))["containers"][0])["KAFKA_BROKERS"]["value"] == brokers


def test_bundled_kafka_is_kraft_with_a_pvc_and_a_headless_service():
    _, docs = install(VALUE_SETS["everything-on"])
    sts = one(docs, "StatefulSet", "msg-queue")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "msg-queue-headless"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert env["KAFKA_PROCESS_ROLES"]["value"] == "broker,controller"
    domain = f"msg-queue-headless.{NAMESPACE}.svc.cluster.local"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]["value"] == ",".join(
        f"{i}@msg-queue-{i}.{domain}:9093" for i in range(3)
    )
    assert len(env["CLUSTER_ID"]["value"]) == 22
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]["value"] == "3"
    headless = one(docs, "Service", "msg-queue-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    _, defaults = install({})
    assert env_of(pod_spec(one(defaults, "DaemonSet", "collector"))["containers"][0])["KAFKA_BROKERS"]["value"] == (
        f"msg-queue.{NAMESPACE}.svc.cluster.local:9092"
    )


def test_cluster_domain_is_configurable():
    _, docs = install({"clusterDomain": "corp.example", "msgQueue": {"replicas": 3}})
    env = env_of(pod_spec(one(docs, "StatefulSet", "msg-queue"))["containers"][0])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]["value"].endswith(f"msg-queue-headless.{NAMESPACE}.svc.corp.example:9093")
    collector = env_of(pod_spec(one(docs, "DaemonSet", "collector"))["containers"][0])
    assert collector["KAFKA_BROKERS"]["value"] == f"msg-queue.{NAMESPACE}.svc.corp.example:9092"


@pytest.mark.parametrize(
    "values,replication",
    [
        ({}, "1"),
        ({"msgQueue": {"replicas": 3}}, "3"),
        ({"msgQueue": {"replicas": 5}}, "3"),
        ({"msgQueue": {"external": {"bootstrapServers": "k:9092"}}}, "3"),
        ({"msgQueue": {"external": {"bootstrapServers": "k:9092"}}, "topics": {"replication": 1}}, "1"),
    ],
)
def test_topic_replication_follows_the_brokers(values, replication):
    _, docs = install(values)
    for kind, name in [("Deployment", "streamer"), ("DaemonSet", "collector")]:
        env = env_of(pod_spec(one(docs, kind, name))["containers"][0])
        assert env["KAFKA_TOPIC_REPLICATION"]["value"] == replication


def test_replication_below_min_insync_or_an_even_quorum_is_refused():
    with pytest.raises(helm.HelmError) as err:
        install({"msgQueue": {"replicas": 3}, "topics": {"replication": 1}})
    assert "below the bundled broker's min.insync.replicas 2" in str(err.value)
    with pytest.raises(helm.HelmError) as err:
        install({"msgQueue": {"replicas": 2}})
    assert "/msgQueue/replicas" in str(err.value)


def test_pods_get_the_rotation_settings_and_the_streamer_always_recreates():
    _, docs = install({"rotation": {"gracePeriod": "1h"}})
    for kind, name in OUR_WORKLOADS:
        env = env_of(pod_spec(one(docs, kind, name))["containers"][0])
        assert env["SECRET_RELOAD_INTERVAL"]["value"] == "10s"
        assert env["SECRET_GRACE_PERIOD"]["value"] == "1h"
        assert env["SECRET_SIGNING_DELAY"]["value"] == "2m"
    assert one(docs, "Deployment", "streamer")["spec"]["strategy"] == {"type": "Recreate"}


def test_restricting_api_sources_still_admits_the_test_pod_and_the_scrapers():
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ingress = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    _, docs = install({"networkPolicy": {"apiFrom": [ingress], "metricsFrom": [monitoring]}})
    peers = one(docs, "NetworkPolicy", "api")["spec"]["ingress"][0]["from"]
    assert ingress in peers and monitoring in peers
    test_pod = [p for p in peers if "podSelector" in p][0]["podSelector"]["matchLabels"]
    assert test_pod["app.kubernetes.io/component"] == "api-test"
    assert hooks({})[0]["metadata"]["labels"]["app.kubernetes.io/component"] == "api-test"


def test_streamer_data_directory_is_a_pvc_with_recreate_or_an_empty_dir():
    _, docs = install(VALUE_SETS["everything-on"])
    d = one(docs, "Deployment", "streamer")
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    vols = {v["name"]: v for v in pod_spec(d)["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "streamer-data"
    assert one(docs, "PersistentVolumeClaim", "streamer-data")["spec"]["storageClassName"] == "fast"
    _, defaults = install({})
    d = one(defaults, "Deployment", "streamer")
    vols = {v["name"]: v for v in pod_spec(d)["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "streamer-data"
    env = {e["name"]: e.get("value") for e in pod_spec(d)["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(d)["containers"][0]["volumeMounts"]}
    assert env["STREAMER_DATA_DIR"] == mounts["data"] == "/var/lib/telemetry"
    assert env["RETIRED_TOKEN_MAX_AGE"] == "48h"
    _, off = install({"streamer": {"persistence": {"enabled": False}}})
    vols = {v["name"]: v for v in pod_spec(one(off, "Deployment", "streamer"))["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_probes_resources_and_disruption_budgets():
    _, docs = install({})
    api = pod_spec(one(docs, "Deployment", "api"))["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod_spec(one(docs, "Deployment", "streamer"))["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == "grpc"
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert set(pdbs) == {"api", "streamer", "msg-queue"}
    assert pdbs["api"]["spec"]["minAvailable"] == 1
    svc = one(docs, "Service", "api")
    assert svc["spec"]["ports"][0]["port"] == 8080


def test_service_monitor_is_optional():
    out = chart().render(offline(VALUE_SETS["everything-on"]), name=RELEASE, namespace=NAMESPACE)
    import yaml

    sm = [d for d in yaml.safe_load_all(out["telemetry-stack/templates/servicemonitor.yaml"]) if d]
    assert [d["kind"] for d in sm] == ["ServiceMonitor", "ServiceMonitor", "PodMonitor"]
    assert all(d["metadata"]["labels"]["release"] == "prometheus" for d in sm)
    assert sm[0]["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s"},
        {"port": "http", "path": "/api/v1/metrics", "interval": "30s",
         "authorization": {"type": "Bearer", "credentials": {"name": SECRET, "key": "api-key"}}},
    ]
    # Each service's own metrics, scraped where they are served: the streamer's Service
    # port, every collector pod's port (selected by the labels those workloads carry).
    _, docs = install(VALUE_SETS["everything-on"])
    streamer_svc = one(docs, "Service", "streamer")
    assert {"name": "metrics", "port": 9401, "targetPort": "metrics", "protocol": "TCP"} in streamer_svc["spec"]["ports"]
    assert sm[1]["spec"]["selector"]["matchLabels"] == streamer_svc["spec"]["selector"]
    assert sm[1]["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    collector_pod = pod_spec(one(docs, "DaemonSet", "collector"))
    assert "metrics" in [p["name"] for p in collector_pod["containers"][0]["ports"]]
    ds_labels = one(docs, "DaemonSet", "collector")["spec"]["template"]["metadata"]["labels"]
    assert sm[2]["spec"]["selector"]["matchLabels"].items() <= ds_labels.items()
    assert sm[2]["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    streamer = pod_spec(one(docs, "Deployment", "streamer"))["containers"][0]
    assert env_of(streamer)["STREAMER_METRICS_ADDR"]["value"] == "0.0.0.0:9401"
    assert streamer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    _, docs = install({})
    assert by_kind(docs, "ServiceMonitor") == {} and by_kind(docs, "PodMonitor") == {}


def test_helm_test_pod_checks_health_and_an_authenticated_request():
    pods = hooks({})
    assert len(pods) == 1
    pod = pods[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/healthz" in script and "X-API-Key: $API_KEY" in script and "/api/v1/gpus" in script
    env = env_of(pod["spec"]["containers"][0])
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "api-key"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_notes_print_the_seed_commands_for_this_release():
    rel, _ = install({})
    notes = rel["notes"]
    for line in [
        f"kubectl describe secret {SECRET} -n {NAMESPACE}",
        f"kubectl get secret {SECRET} -n {NAMESPACE} -o jsonpath='{{.data.api-key}}' | base64 -d",
        f"kubectl rollout restart deployment/api -n {NAMESPACE}",
        f"kubectl rollout restart daemonset/collector -n {NAMESPACE}",
        f"kubectl rollout restart deployment/streamer -n {NAMESPACE}",
        f"helm test {RELEASE} -n {NAMESPACE}",
    ]:
        assert line in notes, line


# --- negative cases: each check can fail -------------------------------------------------

@pytest.mark.parametrize(
    "key,value",
    [
        ("apiKey", "your-secure-api-key-here"),
        ("serviceToken", "your-secure-service-token-here"),
        ("apiKey", "your-secure-api-key"),
        ("serviceToken", "new-secure-service-token"),
    ],
)
def test_placeholder_secret_values_fail_the_install_with_a_clear_message(key, value):
    with pytest.raises(helm.HelmError) as err:
        install({"secrets": {key: value}})
    assert f"secrets.{key} is the placeholder" in str(err.value)


def test_short_secret_fails_the_install():
    with pytest.raises(helm.HelmError) as err:
        install({"secrets": {"apiKey": "hunter2"}})
    assert "at least 16" in str(err.value)


def test_disabled_secrets_without_an_existing_one_fail_the_install():
    with pytest.raises(helm.HelmError) as err:
        install({"secrets": {"enabled": False}})
    assert "secrets.existingSecret is required" in str(err.value)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"api": {"replicas": "two"}}, "/api/replicas"),
        ({"colector": {}}, "colector"),
        ({"collector": {"source": "gpu"}}, "/collector/source"),
        ({"streamer": {"replicas": -1}}, "/streamer/replicas"),
        ({"namePrefix": "Team A"}, "/namePrefix"),
    ],
)
def test_values_that_break_the_schema_are_refused(values, message):
    with pytest.raises(helm.HelmError) as err:
        install(values)
    assert message in str(err.value)


def test_lint_reports_a_broken_template(tmp_path):
    import shutil

    broken = tmp_path / "telemetry-stack"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.nope.nope }}\n")
    report = helm.lint(str(broken), {}, strict=True, kube_version="v1.30.0")
    assert [m for m in report["messages"] if m["severity"] >= 3], report


def test_upgrades_keep_existing_values_and_retire_a_replaced_token(tmp_path):
    """`lookup` finds nothing offline; this renders a copy of the chart whose lookup returns a
    Secret as a cluster would, to check what an upgrade keeps."""
    import shutil

    copy = tmp_path / "telemetry-stack"
    shutil.copytree(CHART, copy)
    secret = copy / "templates" / "secret.yaml"
    existing = (
        '(dict "data" (dict "api-key" (b64enc "existing-api-key-0123456789") '
        '"service-token" (b64enc "existing-token-0123456789") '
        '"service-token-previous" (b64enc "older-token-0123456789")))'
    )
    text = secret.read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    secret.write_text(text.replace('lookup "v1" "Secret" .Release.Namespace $name', existing))

    def rendered(values):
        out = helm.Chart.load(str(copy)).render(values, name=RELEASE, namespace=NAMESPACE)
        import yaml

        doc = yaml.safe_load(out["telemetry-stack/templates/secret.yaml"])
        return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}

    # A plain upgrade keeps everything as it is.
    assert rendered({}) == {
        "api-key": "existing-api-key-0123456789",
        "service-token": "existing-token-0123456789",
        "service-token-previous": "older-token-0123456789",
    }
    # Rotating the token through values retires the replaced one, newest first, with its
    # retirement time: the end of the grace period (30m by default).
    import datetime
    import re

    before = datetime.datetime.now(datetime.timezone.utc)
    data = rendered({"secrets": {"serviceToken": STRONG_TOKEN}})
    assert data["service-token"] == STRONG_TOKEN
    first, rest = data["service-token-previous"].split("\n", 1)
    assert rest == "older-token-0123456789"
    token, at = first.split(" ")
    assert token == "existing-token-0123456789"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at), at
    at = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    grace = datetime.timedelta(minutes=30)
    assert before + grace - datetime.timedelta(seconds=1) <= at <= datetime.datetime.now(datetime.timezone.utc) + grace
    assert data["api-key"] == "existing-api-key-0123456789"
    # A grace period in days works too.
    data = rendered({"secrets": {"serviceToken": STRONG_TOKEN}, "rotation": {"gracePeriod": "2d"}})
    at = data["service-token-previous"].split("\n")[0].split(" ")[1]
    at = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert at - before > datetime.timedelta(hours=47)


def test_the_chart_and_the_binaries_refuse_the_same_placeholders():
    """One list in two languages: the chart's ts.checkSecretValue and common-auth's PLACEHOLDERS."""
    import re
    root = pathlib.Path(__file__).resolve().parents[2]
    tpl = (root / "helm/telemetry-stack/templates/_helpers.tpl").read_text()
    chart = re.search(r'\$placeholders := list ((?:"[^"]*" ?)+)', tpl).group(1)
    rust = (root / "common-auth/src/secret.rs").read_text()
    binaries = re.search(r"pub const PLACEHOLDERS: &\[&str\] = &\[(.*?)\];", rust, re.S).group(1)
    assert re.findall(r'"([^"]*)"', chart) == re.findall(r'"([^"]*)"', binaries)


def test_an_offline_render_without_secrets_fails_in_one_line_instead_of_inventing_them():
    """`helm template` and GitOps tools cannot see the cluster: generated values would change on
    every render (and every sync would rotate the secrets)."""
    with pytest.raises(Exception) as err:
        install({}, raw=True)
    msg = str(err.value)
    assert "cannot see the cluster" in msg and "secrets.apiKey" in msg and "existingSecret" in msg, msg
    # Given values, an existing Secret, or generate=always: it renders.
    install(VALUE_SETS["seed-option-1"], raw=True)
    install(VALUE_SETS["seed-option-2"], raw=True)
    _, docs = install({"secrets": {"generate": "always"}}, raw=True)
    assert by_kind(docs, "Secret")


def test_the_history_can_live_in_victoriametrics_and_the_streamer_may_reach_it():
    _, docs = install({})
    env = env_of(pod_spec(one(docs, "Deployment", "streamer"))["containers"][0])
    assert env["HISTORY_BACKEND"]["value"] == "builtin"
    assert "VICTORIAMETRICS_URL" not in env
    egress = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"]
    assert not [e for e in egress if {"port": 8428, "protocol": "TCP"} in e.get("ports", [])]

    _, docs = install(VALUE_SETS["history-victoriametrics"])
    env = env_of(pod_spec(one(docs, "Deployment", "streamer"))["containers"][0])
    assert env["HISTORY_BACKEND"]["value"] == "victoriametrics"
    assert "HISTORY_READS" not in env
    assert env["VICTORIAMETRICS_URL"]["value"] == "http://vmsingle.monitoring:8428"
    # The token from a Secret, never a value in the manifest.
    assert env["VICTORIAMETRICS_BEARER_TOKEN"] == {
        "name": "VICTORIAMETRICS_BEARER_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "vm-auth", "key": "token"}}}
    egress = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"]
    assert egress[-1] == {"ports": [{"port": 8428, "protocol": "TCP"}]}
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    _, docs = install({**VALUE_SETS["history-victoriametrics"], "networkPolicy": {"historyTo": peers}})
    assert by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"][-1]["to"] == peers

    # Without a URL, or with https (not built in yet), the render says what is wrong.
    with pytest.raises(helm.HelmError, match="history.backend victoriametrics needs history.victoriametrics.url"):
        install({"history": {"backend": "victoriametrics"}})
    with pytest.raises(Exception, match="/history/victoriametrics/url.*ftp://vm:8428.*does not match"):
        install({"history": {"backend": "victoriametrics", "victoriametrics": {"url": "ftp://vm:8428"}}})


def test_a_victoriametrics_cluster_over_https_gets_its_read_url_ca_and_headers():
    _, docs = install(VALUE_SETS["history-victoriametrics-cluster-tls"])
    spec = pod_spec(one(docs, "Deployment", "streamer"))
    env = env_of(spec["containers"][0])
    assert env["VICTORIAMETRICS_URL"]["value"] == "https://vminsert.monitoring:8480/insert/0/prometheus"
    assert env["VICTORIAMETRICS_READ_URL"]["value"] == "https://vmselect.monitoring:8481/select/0/prometheus"
    assert env["VICTORIAMETRICS_CA_FILE"]["value"] == "/etc/telemetry-stack/victoriametrics-ca/ca.crt"
    # Headers (credentials) from a Secret, never a value in the manifest.
    assert env["VICTORIAMETRICS_HEADERS"] == {
        "name": "VICTORIAMETRICS_HEADERS",
        "valueFrom": {"secretKeyRef": {"name": "vm-headers", "key": "headers"}}}
    assert {"name": "victoriametrics-ca", "configMap": {"name": "vm-ca"}} in spec["volumes"]
    assert {"name": "victoriametrics-ca", "mountPath": "/etc/telemetry-stack/victoriametrics-ca",
            "readOnly": True} in spec["containers"][0]["volumeMounts"]
    egress = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"]
    assert egress[-1] == {"ports": [{"port": 8480, "protocol": "TCP"}, {"port": 8481, "protocol": "TCP"}]}


def test_with_the_history_in_victoriametrics_streamers_scale_out_without_volumes():
    # builtin: one streamer on its volume, Recreate; more than one is refused.
    _, docs = install({})
    streamer = one(docs, "Deployment", "streamer")
    assert (streamer["spec"]["replicas"], streamer["spec"]["strategy"]) == (1, {"type": "Recreate"})
    assert "data" in [v["name"] for v in pod_spec(streamer)["volumes"]]
    assert by_kind(docs, "PersistentVolumeClaim")
    assert "streamer-pods" not in by_kind(docs, "Service")
    api_env = env_of(pod_spec(one(docs, "Deployment", "api"))["containers"][0])
    assert api_env["STREAMER_URL"]["value"] == "http://streamer:50051"
    with pytest.raises(helm.HelmError, match=r"streamer.replicas > 1 needs history.backend victoriametrics"):
        install({"streamer": {"replicas": 2}})

    # victoriametrics: three streamers, no volume, no data directory, rolling upgrades; the
    # api resolves the headless Service that names every streamer pod.
    _, docs = install(VALUE_SETS["history-victoriametrics"])
    streamer = one(docs, "Deployment", "streamer")
    assert streamer["spec"]["replicas"] == 3
    assert streamer["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    spec = pod_spec(streamer)
    assert [v["name"] for v in spec["volumes"] if v["name"] == "data"] == []
    assert [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data"] == []
    assert "STREAMER_DATA_DIR" not in env_of(spec["containers"][0])
    assert not by_kind(docs, "PersistentVolumeClaim")
    pods = by_kind(docs, "Service")["streamer-pods"]
    assert pods["spec"]["clusterIP"] == "None"
    assert pods["spec"]["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"}]
    assert pods["spec"]["selector"] == streamer["spec"]["selector"]["matchLabels"]
    api_env = env_of(pod_spec(one(docs, "Deployment", "api"))["containers"][0])
    assert api_env["STREAMER_URL"]["value"] == "http://streamer-pods:50051"


def test_an_in_chart_victoriametrics_is_there_to_try_the_mode_and_only_streamers_reach_it():
    _, docs = install({})
    assert "victoriametrics" not in by_kind(docs, "StatefulSet")

    _, docs = install(VALUE_SETS["history-victoriametrics-in-chart"])
    vm = one(docs, "StatefulSet", "victoriametrics")
    container = pod_spec(vm)["containers"][0]
    assert "-dedup.minScrapeInterval=1ms" in container["args"]
    assert "-retentionPeriod=30d" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(vm)["securityContext"]["runAsNonRoot"] is True
    assert vm["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert by_kind(docs, "Service")["victoriametrics"]["spec"]["ports"][0]["port"] == 8428
    # The streamers write to it, and may reach it (egress to its pods, on 8428 only).
    env = env_of(pod_spec(one(docs, "Deployment", "streamer"))["containers"][0])
    assert env["VICTORIAMETRICS_URL"]["value"] == "http://victoriametrics:8428"
    vm_labels = vm["spec"]["selector"]["matchLabels"]
    egress = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"]
    assert egress[-1] == {"to": [{"podSelector": {"matchLabels": vm_labels}}],
                          "ports": [{"port": 8428, "protocol": "TCP"}]}
    # Only the streamers reach it; it reaches nothing.
    policy = by_kind(docs, "NetworkPolicy")["victoriametrics"]["spec"]
    streamer_labels = one(docs, "Deployment", "streamer")["spec"]["selector"]["matchLabels"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": streamer_labels}}],
                                  "ports": [{"port": 8428, "protocol": "TCP"}]}]
    assert policy["egress"] == []
    # Reads sent elsewhere (readUrl) open egress to there too.
    _, docs = install({"history": {"backend": "victoriametrics", "victoriametrics": {
        "deploy": {"enabled": True}, "readUrl": "http://vmselect.monitoring:8481/select/0/prometheus"}}})
    egress = by_kind(docs, "NetworkPolicy")["streamer"]["spec"]["egress"]
    assert egress[-2:] == [{"to": [{"podSelector": {"matchLabels": vm_labels}}],
                            "ports": [{"port": 8428, "protocol": "TCP"}]},
                           {"ports": [{"port": 8428, "protocol": "TCP"}]}]
    # A values file from before history.reads was dropped still installs.
    install({"history": {"reads": "local"}})
    # Without persistence: an emptyDir, no claim.
    _, docs = install({"history": {"backend": "victoriametrics", "victoriametrics": {
        "deploy": {"enabled": True, "persistence": {"enabled": False}}}}})
    vm = one(docs, "StatefulSet", "victoriametrics")
    assert "volumeClaimTemplates" not in vm["spec"]
    assert pod_spec(vm)["volumes"] == [{"name": "storage", "emptyDir": {}}]
