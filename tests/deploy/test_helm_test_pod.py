"""The `helm test` pod's script, run for real with busybox against the real api binary."""

import http.server
import pathlib
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import ROOT, hooks, run

API_BIN = ROOT / "target" / "debug" / "api"
KEY = "helm-test-key-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_for(base):
    pod = hooks({})[0]
    script = pod["spec"]["containers"][0]["args"][0]
    assert 'base="http://api:8080"' in script
    return script.replace('base="http://api:8080"', f'base="{base}"')


def busybox(script, api_key):
    return run(["busybox", "sh", "-ec", script], env={"API_KEY": api_key})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    assert API_BIN.exists(), "build the workspace first (scripts/test does): cargo build --workspace"
    port = free_port()
    data = tmp_path_factory.mktemp("api-data")
    proc = subprocess.Popen(
        [str(API_BIN), "--embedded", "--listen", f"127.0.0.1:{port}", "--source", "simulated", "--interval", "100ms",
         "--data-dir", str(data)],
        env={"API_KEY": KEY, "RUST_LOG": "warn", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            req = urllib.request.Request(f"{base}/api/v1/gpus", headers={"X-API-Key": KEY})
            if b'"uuid"' in urllib.request.urlopen(req, timeout=1).read():
                break
        except OSError:
            pass
        assert time.time() < deadline, "api did not come up"
        time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_helm_test_script_passes_against_the_real_api(api):
    r = busybox(script_for(api), KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "401 without a key, as expected" in r.stdout


def test_helm_test_script_fails_with_a_wrong_key(api):
    r = busybox(script_for(api), "not-the-key-0123456789")
    assert r.returncode != 0


def test_helm_test_script_fails_when_the_api_answers_without_a_key():
    class Open(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status":"ok","gpus":[]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Open)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = busybox(script_for(f"http://127.0.0.1:{server.server_port}"), KEY)
        assert r.returncode != 0
        assert "expected 401 without a key" in r.stdout
    finally:
        server.shutdown()
