"""Every command of the seed document (shared/seed/kubernetes-secrets.md), with
<release-name> = my-telemetry, names a resource, key or env var the rendered chart has."""

import pathlib
import re
import shlex

import pytest
import yaml

from conftest import ROOT, STRONG_API_KEY, STRONG_TOKEN, by_kind, env_of, install, one, pod_spec

VENDORED = ROOT / "docs" / "seed" / "kubernetes-secrets.md"
SHARED = ROOT.parent / "shared" / "seed" / "kubernetes-secrets.md"
RELEASE = "my-telemetry"
SECRET = f"{RELEASE}-telemetry-stack-auth"


def seed_text():
    return VENDORED.read_text()


def test_vendored_seed_is_the_shared_one():
    if not SHARED.exists():
        pytest.skip("no shared/ beside this checkout")
    assert VENDORED.read_text() == SHARED.read_text(), "copy shared/seed/kubernetes-secrets.md to docs/seed/"


def code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", seed_text(), flags=re.S)


def commands():
    """Shell commands of the seed's bash blocks: continuation lines joined, heredoc bodies
    and comments dropped."""
    out = []
    for block in code_blocks("bash"):
        lines = iter(block.splitlines())
        for line in lines:
            line = line.strip()
            while line.endswith("\\"):
                line = line[:-1] + " " + next(lines).strip()
            if not line or line.startswith("#"):
                continue
            if "<<EOF" in line:
                body = []
                for inner in lines:
                    if inner.strip() == "EOF":
                        break
                    body.append(inner)
                out.append((line, "\n".join(body)))
                continue
            out.append((line, None))
    return out


@pytest.fixture(scope="module")
def option1():
    return install({"secrets": {"enabled": True, "apiKey": STRONG_API_KEY, "serviceToken": STRONG_TOKEN}})[1]


@pytest.fixture(scope="module")
def option2():
    return install({"secrets": {"enabled": False, "existingSecret": "telemetry-auth-secret"}})[1]


def workload(docs, kind, name):
    if kind == "deployment" and name == "collector":
        # The collector runs on every GPU node: a DaemonSet. docs/deploy.md says how the
        # seed's `deployment/collector` reads.
        assert "daemonset/collector" in (ROOT / "docs" / "deploy.md").read_text()
        return one(docs, "DaemonSet", "collector")
    kinds = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}
    return one(docs, kinds[kind], name)


def check(cmd, body, option1, option2):
    """Asserts what `cmd` relies on exists; returns a short description of what was checked."""
    cmd = cmd.replace("<release-name>", RELEASE).replace("<secret-name>", SECRET)
    if cmd.split()[0] in {"openssl", "uuidgen", "pwgen", "echo"} or re.match(r"^[A-Z_]+=", cmd):
        return "key generation or shell: names nothing of the chart"
    if m := re.match(r"kubectl rollout restart (deployment|statefulset|daemonset)/([\w-]+)", cmd):
        workload(option1, m[1], m[2])
        return f"workload {m[1]}/{m[2]}"
    if cmd.startswith("curl "):
        assert "X-API-Key" in cmd and "http://localhost:8080/api/v1/gpus" in cmd
        assert one(option1, "Service", "api")["spec"]["ports"][0]["port"] == 8080
        assert "api-key" in one(option1, "Secret", SECRET)["data"]
        return "api service port 8080 and the key"
    if m := re.search(r"kubectl (?:get|describe|patch) secret ([\w-]+)", cmd):
        if m[1] == "--all-namespaces":
            # The grep must find the Secret the chart renders (not just a name we expect).
            assert any("telemetry" in name for name in by_kind(option1, "Secret"))
            return "secret name matches telemetry"
        secret = one(option1, "Secret", m[1])
        for key in re.findall(r"(?:data\.|\\?\")(api-key|service-token)", cmd):
            assert key in secret["data"]
        return f"secret {m[1]} keys"
    if cmd.startswith("kubectl get secrets"):
        one(option1, "Secret", SECRET)
        return "secret listed"
    if cmd.startswith("kubectl create secret generic"):
        name = shlex.split(cmd)[4]
        keys = re.findall(r"--from-literal=([\w-]+)=", cmd)
        assert keys == ["api-key", "service-token"]
        uses_it(option2, name, keys)
        return f"existing secret {name} usable"
    if cmd.startswith("cat <<EOF | kubectl apply -f -"):
        doc = yaml.safe_load(re.sub(r"\$\(.*?\)", "x", body))
        assert doc["kind"] == "Secret"
        uses_it(option2, doc["metadata"]["name"], sorted(doc["data"]))
        return "applied secret usable"
    if m := re.match(r"helm (install|upgrade) ([\w-]+) (\S+)", cmd):
        assert m[2] == RELEASE
        assert (ROOT / m[3] / "Chart.yaml").exists(), m[3]
        return f"chart path {m[3]}"
    if cmd.startswith("cat > my-secrets.yaml"):
        values = yaml.safe_load(re.sub(r"\$\(.*?\)", "x" * 32, body))
        check_values(values)
        return "values file keys"
    if cmd.startswith("kubectl exec"):
        names = {v for v in re.findall(r"[A-Z_]{5,}", cmd)}
        assert names == {"API_KEY", "SERVICE_TOKEN"}
        env = env_of(pod_spec(one(option1, "Deployment", "api"))["containers"][0])
        assert names <= set(env)
        return "pod env"
    if cmd.startswith("kubectl logs -n kube-system"):
        # An audit line for the rendered Secret matches the seed's grep.
        assert any(re.search(r"secrets.*telemetry", f"secrets/{name}") for name in by_kind(option1, "Secret"))
        return "audit grep matches"
    raise AssertionError(f"seed command this test does not know: {cmd}")


def uses_it(docs, name, keys):
    for kind, wl in [("Deployment", "api"), ("Deployment", "streamer"), ("DaemonSet", "collector")]:
        spec = pod_spec(one(docs, kind, wl))
        required = spec["volumes"][0]["projected"]["sources"][0]["secret"]
        assert required["name"] == name
        assert {i["key"] for i in required["items"]} <= set(keys)
    assert one(docs, "Role", "secret-reader")["rules"][0]["resourceNames"] == [name]


def check_values(values):
    chart_values = yaml.safe_load((ROOT / "helm" / "telemetry-stack" / "values.yaml").read_text())
    for key in values["secrets"]:
        assert key in chart_values["secrets"], key


def test_every_seed_command_names_what_the_chart_renders(option1, option2, request):
    cmds = commands()
    assert len(cmds) >= 30
    seen = {}
    for cmd, body in cmds:
        seen[cmd] = check(cmd, body, option1, option2)
    # The workloads of the rollout-restart lines, all four.
    assert {v for v in seen.values() if v.startswith("workload")} == {
        "workload deployment/api", "workload deployment/collector",
        "workload deployment/streamer", "workload statefulset/msg-queue",
    }


def test_every_values_block_of_the_seed_uses_chart_values():
    blocks = code_blocks("yaml")
    values_blocks = [yaml.safe_load(b) for b in blocks if b.lstrip().startswith(("# values.yaml", "secrets:"))]
    assert len(values_blocks) >= 3
    for v in values_blocks:
        check_values(v)


def test_seed_rbac_example_matches_the_chart_role_name(option1):
    role = [yaml.safe_load(b) for b in code_blocks("yaml") if "kind: Role" in b][0]
    ours = one(option1, "Role", role["metadata"]["name"])
    assert ours["rules"][0]["resources"] == role["rules"][0]["resources"]
    assert ours["rules"][0]["resourceNames"] == [SECRET]


def test_unknown_commands_are_refused(option1, option2):
    with pytest.raises(AssertionError, match="does not know"):
        check("kubectl delete namespace default", None, option1, option2)
    with pytest.raises(AssertionError):
        check("kubectl rollout restart deployment/apii", None, option1, option2)
