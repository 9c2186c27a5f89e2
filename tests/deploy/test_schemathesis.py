"""Schemathesis against the api's own /openapi.json: generated requests to every documented
route (coverage, fuzzing and stateful phases), with zero server errors and zero responses
that break the documented schema. Runs the debug build `scripts/test` made."""

import re
import subprocess
import time

from conftest import ROOT, venv_bin

KEY = "schemathesis-key-0123456789abcdef"


def test_generated_requests_get_no_server_error_and_no_schema_violation(tmp_path):
    api = subprocess.Popen(
        [str(ROOT / "target/debug/api"), "--embedded", "--source", "simulated",
         "--listen", "127.0.0.1:0", "--interval", "200ms"],
        cwd=tmp_path, env={"API_KEY": KEY, "RUST_LOG": "error", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = None
        deadline = time.monotonic() + 30
        while base is None and time.monotonic() < deadline:
            line = api.stdout.readline()
            if not line:
                break
            m = re.search(r"api listening on (\S+)", line)
            if m:
                base = "http://" + m.group(1).removeprefix("http://")
        assert base, "the api did not say where it listens"
        run = subprocess.run(
            [venv_bin("schemathesis"), "run", f"{base}/openapi.json",
             "-H", f"X-API-Key: {KEY}",
             "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", "50", "--generation-deterministic",
             # Live streams never end: tests/tests/live_stream.rs covers them.
             "--exclude-path-regex", "/stream$"],
            capture_output=True, text=True, timeout=600,
        )
        out = run.stdout + run.stderr
        summary = re.search(r"(\d+) generated, (\d+) passed", out)
        print(out[-1500:])
        assert run.returncode == 0, out[-4000:]
        assert summary and summary.group(1) == summary.group(2), out[-2000:]
        assert int(summary.group(1)) >= 100, "too few cases to mean anything"
    finally:
        api.terminate()
        api.wait(timeout=20)
