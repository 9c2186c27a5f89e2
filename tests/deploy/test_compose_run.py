"""docker/docker-compose.yml run for real on a Docker engine.

No image registry is reachable from CI, so what runs is built here from local parts: a
Debian base image from debootstrap (made once, kept by the engine), the service images
through the project's own Dockerfile runtime stages with the binaries `cargo build` made
(`--build-arg BINARIES=prebuilt`), and the test broker (tansu) in place of the Kafka image
(tests/deploy/compose/override.yml swaps only that image and its health check). Everything
else is the real file: secrets files, read-only root filesystems, dropped capabilities, the
non-root user, volumes, the published port.

The engine: `docker info` must answer, or `dockerd` is started here (and stopped after).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, compose_bin

COMPOSE = ROOT / "docker" / "docker-compose.yml"
OVERRIDE = ROOT / "tests" / "deploy" / "compose" / "override.yml"
BROKER_DOCKERFILE = ROOT / "tests" / "deploy" / "compose" / "broker.Dockerfile"
BASE_IMAGE = "debian:bookworm-slim"
TAG = "citest"
SERVICES = ["api", "collector", "streamer"]
# SIM_NODES × SIM_GPUS_PER_NODE of the compose file's simulated collector.
FLEET = 2 * 8


def docker_cli():
    """The engine's own CLI when installed (Debian's docker.io): its `docker build` has
    BuildKit built in, where a newer CLI wants the buildx plugin for it."""
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def sh(cmd, check=True, env=None, **kw):
    full_env = dict(os.environ)
    full_env.pop("TELEMETRY_SECRETS_DIR", None)
    full_env.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def docker(*args, check=True, **kw):
    return sh([docker_cli(), *args], check=check, **kw)


def engine_up():
    return docker("info", check=False).returncode == 0


def eventually(what, timeout, probe, interval=0.5):
    """`probe()` until it returns something truthy; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, AssertionError, ValueError) as e:
            last = e
            if isinstance(e, AssertionError):
                last = f"not yet: {e}"
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def strip_copy(src, dst):
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755)
    if shutil.which("strip"):
        sh(["strip", str(dst)])


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    started = None
    log = None
    if not engine_up():
        dockerd = shutil.which("dockerd")
        assert dockerd, "no Docker engine and no dockerd: run scripts/install-test-deps (Debian docker.io)"
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        clear_stale_pid_file()
        started = subprocess.Popen([dockerd], stdout=open(log, "w"), stderr=subprocess.STDOUT)
        try:
            eventually("dockerd answering", 60, engine_up)
        except AssertionError:
            started.terminate()
            raise AssertionError(f"dockerd did not come up:\n{log.read_text()[-3000:]}") from None
    make_base_image()
    build_images()
    yield
    if started:
        started.terminate()
        started.wait(timeout=60)


def clear_stale_pid_file(path=pathlib.Path("/var/run/docker.pid")):
    """A dockerd killed without its shutdown (an interrupted run) leaves its pid file, and
    the next dockerd refuses to start while it is there."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    if not pathlib.Path(f"/proc/{pid}").exists():
        path.unlink(missing_ok=True)


def make_base_image():
    """Debian bookworm from debootstrap, imported under the name the Dockerfile uses; once
    per engine (the engine keeps it)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    assert shutil.which("debootstrap"), "debootstrap missing: run scripts/install-test-deps"
    root = pathlib.Path(tempfile.mkdtemp(prefix="bookworm-"))
    try:
        sh(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"])
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        sh([docker_cli(), "import", "-", BASE_IMAGE], stdin=tar.stdout)
        assert tar.wait() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_images():
    """The service images through docker/Dockerfile's runtime stages, with the binaries of
    `cargo build --workspace` (scripts/test builds them first); the broker image from the
    installed tansu binary."""
    prebuilt = ROOT / "docker" / "prebuilt"
    prebuilt.mkdir(exist_ok=True)
    for b in SERVICES:
        built = ROOT / "target" / "debug" / b
        assert built.exists(), f"{built} not built: run cargo build --workspace first"
        strip_copy(built, prebuilt / b)
    for b in SERVICES:
        docker(
            "build", "-q", "-f", "docker/Dockerfile", "--build-arg", "BINARIES=prebuilt",
            "--target", b, "-t", f"gpu-telemetry/{b}:{TAG}", ".",
            cwd=ROOT, env={"DOCKER_BUILDKIT": "1"},
        )
    ctx = pathlib.Path(tempfile.mkdtemp(prefix="broker-image-"))
    try:
        tansu = os.environ.get("TANSU_BIN") or shutil.which("tansu") or str(pathlib.Path.home() / ".cargo/bin/tansu")
        assert os.path.exists(tansu), "tansu missing: run scripts/install-test-deps"
        strip_copy(tansu, ctx / "tansu")
        docker("build", "-q", "-f", str(BROKER_DOCKERFILE), "-t", f"gpu-telemetry/test-broker:{TAG}", str(ctx),
               env={"DOCKER_BUILDKIT": "1"})
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project of the real file plus overrides, on a free port."""

    def __init__(self, tmp, project, extra_overrides=()):
        self.project = project
        self.secrets = tmp / "secrets"
        sh([str(ROOT / "docker" / "gen-secrets"), str(self.secrets)])
        self.key = (self.secrets / "api-key").read_text().strip()
        self.port = free_port()
        self.files = [COMPOSE, OVERRIDE, *extra_overrides]
        self.env = {"TELEMETRY_SECRETS_DIR": str(self.secrets), "TELEMETRY_TAG": TAG, "API_PORT": str(self.port)}

    def compose(self, *args, check=True):
        cmd = [compose_bin(), "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        return sh([*cmd, *args], check=check, env=self.env)

    def up(self):
        self.compose("up", "-d", "--no-build")

    def logs(self):
        return self.compose("logs", "--no-color", "--tail", "40", check=False).stdout

    def get(self, path, key=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"X-API-Key": key or self.key})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def fleet(self):
        """The GPU list once every simulated GPU is there with samples."""
        status, body = self.get("/api/v1/gpus")
        assert status == 200, f"{status} {body}"
        gpus = body["gpus"]
        assert len(gpus) == FLEET and all(g["sample_count"] > 0 for g in gpus), f"{len(gpus)} GPUs"
        return gpus

    def wait_fleet(self, timeout=90):
        try:
            return eventually(f"{FLEET} GPUs with samples", timeout, self.fleet)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def containers(self):
        ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}").stdout.split()
        return ids

    def container(self, service):
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return json.loads(docker("inspect", ids[0]).stdout)[0]

    def window(self, uuid, end):
        """Timestamps and values of `uuid` from the epoch to `end` (RFC 3339)."""
        status, body = self.get(f"/api/v1/gpus/{uuid}/telemetry?start_time=2000-01-01T00:00:00Z&end_time={end}&limit=100000")
        assert status == 200, f"{status} {body}"
        return body["samples"]

    def down(self, volumes):
        self.compose("down", *(["-v"] if volumes else []), "--timeout", "20")


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("compose"), "gpu-telemetry-citest")
    s.compose("down", "-v", check=False)  # what an earlier, interrupted run left
    s.up()
    s.wait_fleet()
    yield s
    s.down(volumes=True)
    assert s.containers() == [], "docker compose down left containers running"
    vols = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={s.project}").stdout.split()
    assert vols == [], f"down -v left volumes: {vols}"


def test_every_simulated_gpu_reports_through_the_published_port(stack):
    gpus = stack.fleet()
    assert sorted({g["node"] for g in gpus}) == ["sim-node-000", "sim-node-001"]
    assert all(g["latest"]["gpu_utilization_percent"] >= 0 for g in gpus)
    # New samples keep arriving.
    before = {g["uuid"]: g["sample_count"] for g in gpus}
    eventually("sample counts growing", 30, lambda: all(
        g["sample_count"] > before[g["uuid"]] for g in stack.fleet()))


def test_the_key_from_the_secrets_directory_works_and_a_wrong_one_is_401(stack):
    assert stack.get("/api/v1/gpus")[0] == 200
    status, body = stack.get("/api/v1/gpus", key="not-the-key")
    assert status == 401, body
    assert stack.key not in str(body)


def test_services_run_as_uid_10001_on_a_read_only_root_without_capabilities(stack):
    for service in SERVICES:
        c = stack.container(service)
        assert c["State"]["Running"], service
        assert c["Config"]["User"] == "10001:10001", service
        assert c["HostConfig"]["ReadonlyRootfs"] is True, service
        assert c["HostConfig"]["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in c["HostConfig"]["SecurityOpt"], service
        status = docker("exec", c["Id"], "cat", "/proc/1/status").stdout
        uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid.split()[1:] == ["10001"] * 4, (service, uid)
        w = docker("exec", c["Id"], "touch", "/usr/local/bin/x", check=False)
        assert w.returncode != 0 and "Read-only file system" in w.stderr, (service, w.stderr)


def test_a_rotated_api_key_file_is_picked_up_without_a_restart(stack):
    started = stack.container("api")["State"]["StartedAt"]
    old, new = stack.key, "rotated-" + os.urandom(16).hex()
    # In place (same inode), as an editor or `echo > file` does: the bind mount sees it.
    with open(stack.secrets / "api-key", "w") as f:
        f.write(new + "\n")
    # Each try before the reload (every 10 s) is a failed authentication: poll slower than the
    # per-address limiter refills (1 a second, bursts of 10), or the test's own address ends
    # up refused with 429 for the checks after it.
    eventually("the new key accepted", 40, lambda: stack.get("/api/v1/gpus", key=new)[0] == 200,
               interval=2)
    assert stack.get("/api/v1/gpus", key=old)[0] == 200, "the old key keeps working for the grace period"
    assert stack.get("/api/v1/gpus", key="not-the-key")[0] == 401
    assert stack.container("api")["State"]["StartedAt"] == started, "no restart"
    stack.key = new


def history_before_now(stack):
    """One GPU's samples up to a moment already in the past, and that moment."""
    gpu = stack.fleet()[0]
    end = gpu["last_seen"]
    samples = stack.window(gpu["uuid"], end)
    assert len(samples) > 5
    return gpu["uuid"], end, samples


def test_restarting_the_streamer_loses_nothing(stack):
    uuid, end, samples = history_before_now(stack)
    stack.compose("restart", "streamer")
    after = eventually("the history served again", 60, lambda: stack.window(uuid, end))
    assert after == samples
    stack.wait_fleet()


def test_the_history_survives_down_and_up_without_v(stack):
    uuid, end, samples = history_before_now(stack)
    stack.down(volumes=False)
    assert stack.containers() == []
    stack.up()
    # The broker (in memory here) comes back empty: the history is the streamer's volume.
    after = eventually("the history served again", 90, lambda: stack.window(uuid, end))
    assert after == samples
    # And new records are consumed again.
    counts = {g["uuid"]: g["sample_count"] for g in stack.wait_fleet()}
    eventually("new samples after the restart", 60, lambda: all(
        g["sample_count"] > counts[g["uuid"]] for g in stack.fleet()))


def test_the_fleet_check_fails_when_the_collector_cannot_reach_the_broker(engine, tmp_path):
    # The negative case: the same stack with the collector pointed at no broker must not
    # pass the check the tests above rely on.
    wrong = tmp_path / "wrong-broker.yml"
    wrong.write_text("services:\n  collector:\n    environment:\n      KAFKA_BROKERS: nowhere:9092\n")
    s = Stack(tmp_path, "gpu-telemetry-citest-negative", [wrong])
    s.compose("down", "-v", check=False)
    s.up()
    try:
        eventually("the api answering", 60, lambda: s.get("/api/v1/gpus")[0] == 200)
        with pytest.raises(AssertionError, match=f"{FLEET} GPUs with samples"):
            s.wait_fleet(timeout=20)
        assert s.get("/api/v1/gpus")[1]["count"] == 0
    finally:
        s.down(volumes=True)
    assert s.containers() == []
