"""The built-in dashboard in a real headless Chromium (Debian's), driven over the DevTools
protocol (`--remote-debugging-pipe`: no extra packages). An embedded api with a simulated
fleet serves it: the page loads without a key, asks for one, shows every simulated GPU, draws
a chart from the API's real range data, receives live updates, shows the pipeline's health,
never puts the key in a URL, and logs no console error.

DASHBOARD_SCREENSHOTS=docs/images writes the screenshots there (the README shows them)."""

import base64
import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
API_KEY = "dashboard-test-key-5f0e9c1a7b3d"
NODES, GPUS_PER_NODE = 3, 8


def chromium():
    for name in ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium: scripts/install-test-deps installs Debian's `chromium`")


def spawn_api(data, flags, env=None):
    """An embedded api (built first: never a stale binary; a no-op after scripts/test's build)."""
    subprocess.run(["cargo", "build", "-q", "-p", "api", "--bin", "api", "-p", "nvml-test-double"],
                   cwd=ROOT, check=True)
    return subprocess.Popen(
        [str(ROOT / "target/debug/api"), "--embedded", "--listen", "127.0.0.1:0",
         "--data-dir", str(data), *flags],
        env={**os.environ, "API_KEY": API_KEY, "RUST_LOG": "warn", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def base_url(proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        m = re.match(r"api listening on (\S+)", proc.stdout.readline())
        if m:
            return f"http://{m.group(1)}"
    raise AssertionError("the api did not start")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    proc = spawn_api(tmp_path_factory.mktemp("data"),
                     ["--source", "simulated", "--sim-nodes", str(NODES),
                      "--sim-gpus-per-node", str(GPUS_PER_NODE), "--interval", "250ms"])
    yield base_url(proc)
    proc.terminate()
    proc.wait(timeout=20)


def get(url, key=None, headers=None):
    req = urllib.request.Request(url, headers={**({"X-API-Key": key} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Browser:
    """Chromium over the DevTools pipe: NUL-separated JSON messages on fds 3 (in) and 4 (out)."""

    def __init__(self, tmp):
        cmd_r, self.cmd_w = os.pipe()
        self.resp_r, resp_w = os.pipe()

        def fds():
            # Moved to 3 and 4 (kept open: subprocess closes unlisted fds after this runs).
            a, b = os.dup(cmd_r), os.dup(resp_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             f"--user-data-dir={tmp}", "--window-size=1400,1250", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(resp_w)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            for m in self._read(deadline):
                if m.get("id") == self.next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m["result"]
                self.events.append(m)

    def _read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self.resp_r], [], [], left)
            if ready:
                chunk = os.read(self.resp_r, 1 << 20)
                assert chunk, "Chromium closed the pipe"
                self.buf += chunk
        out = []
        while b"\0" in self.buf:
            raw, self.buf = self.buf.split(b"\0", 1)
            out.append(json.loads(raw))
        return out

    def open(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ["Runtime", "Log", "Page", "Network"]:
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})

    def eval(self, expr):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.eval(expr)
            if v:
                return v
            self.send("Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 100))", "awaitPromise": True})
        page = self.eval("document.querySelector('main').innerText.slice(0, 2000)")
        raise AssertionError(f"timed out waiting for {what}; console: {self.console_errors()}; page: {page}")

    def screenshot(self, path):
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(png)
        return png

    def console_errors(self):
        errs = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                errs.append(p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"]["text"])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errs.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                errs.append(f"{p['entry'].get('source')}: {p['entry']['text']} {p['entry'].get('url', '')}")
        return errs

    def requests(self):
        return [e["params"]["request"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.resp_r)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def test_the_page_and_its_assets_are_the_only_new_open_routes_and_carry_no_data(api):
    status, headers, body = get(f"{api}/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert b"/assets/app.js" in body and b"GPU-" not in body
    for asset, ctype in [("app.js", "text/javascript"), ("app.css", "text/css"),
                         ("uplot.min.js", "text/javascript"), ("uplot.min.css", "text/css")]:
        status, headers, body = get(f"{api}/assets/{asset}")
        assert status == 200 and headers["content-type"].startswith(ctype), asset
        assert headers["x-content-type-options"] == "nosniff"
        # Revalidation: the same bytes answer 304 to their ETag.
        assert get(f"{api}/assets/{asset}", headers={"If-None-Match": headers["etag"]})[0] == 304
    # Anything else still needs the key.
    assert get(f"{api}/assets/other.js")[0] == 401
    assert get(f"{api}/api/v1/gpus")[0] == 401


def test_the_dashboard_shows_the_fleet_draws_real_range_data_and_follows_live_updates(api, browser, tmp_path):
    shots = pathlib.Path(os.environ.get("DASHBOARD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.open(f"{api}/")
    browser.wait("document.readyState === 'complete' && !document.querySelector('#login').hidden", "the key prompt")
    browser.screenshot(shots / "dashboard-login.png")
    browser.eval(f"document.querySelector('#key').value = {json.dumps(API_KEY)};"
                 "document.querySelector('#login-form').requestSubmit(); true")

    # Every simulated GPU, as the API lists them.
    _, _, raw = get(f"{api}/api/v1/gpus", API_KEY)
    uuids = sorted(g["uuid"] for g in json.loads(raw)["gpus"])
    assert len(uuids) == NODES * GPUS_PER_NODE
    browser.wait(f"document.querySelectorAll('.tile').length === {len(uuids)}", "every GPU's tile")
    shown = browser.eval("[...document.querySelectorAll('.tile')].map(t => t.dataset.uuid).sort()")
    assert shown == uuids
    nodes = browser.eval("[...document.querySelectorAll('.node')].map(n => n.dataset.node)")
    assert len(nodes) == NODES

    # The chart of the first GPU draws from the API's range data: every point it holds is a
    # real sample of that GPU at that time, and the canvas has pixels on it.
    browser.wait("Number(document.body.dataset.chartPoints || 0) >= 8", "a chart with points")
    uuid, metric = browser.eval("[state.selected, document.querySelector('#metric').value]")
    assert metric == "gpu_utilization_percent"
    assert browser.eval("(() => { const c = document.querySelector('#chart canvas');"
                        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()") > 1000
    xs, ys = browser.eval("state.chart.data.map(a => Array.from(a))")
    window = "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z"
    _, _, raw = get(f"{api}/api/v1/gpus/{uuid}/telemetry?{window}&metrics={metric}&limit=100000", API_KEY)
    truth = {}
    for s in json.loads(raw)["samples"]:
        ts = s["timestamp"].replace("Z", "+00:00")
        from datetime import datetime
        truth[round(datetime.fromisoformat(ts).timestamp() * 1000)] = s[metric]
    assert len(xs) >= 8
    for x, y in zip(xs, ys):
        assert truth.get(round(x * 1000)) == y, (x, y)

    # Live updates arrive (server-sent events over fetch, the key in a header) and extend it.
    before = int(browser.eval("document.body.dataset.liveEvents || '0'"))
    browser.wait(f"Number(document.body.dataset.liveEvents || 0) >= {before + 3 * len(uuids)}", "live updates")
    assert browser.eval("document.querySelector('#live').textContent").startswith("live: ")
    points = int(browser.eval("document.body.dataset.chartPoints"))
    browser.wait(f"Number(document.body.dataset.chartPoints) > {points}", "the chart extended live")

    # The pipeline's health and an aggregated range (step/agg).
    before = json.loads(get(f"{api}/api/v1/pipeline", API_KEY)[2])["records"]
    browser.wait("document.querySelector('#pipeline-facts').textContent.includes('ready')"
                 " && document.querySelector('#pipeline-facts').textContent.includes('received')"
                 f" && Number(document.body.dataset.pipelineRecords) >= {before}",
                 "pipeline health with the live updates", timeout=15)
    shown = int(browser.eval("document.body.dataset.pipelineRecords"))
    after = json.loads(get(f"{api}/api/v1/pipeline", API_KEY)[2])
    # What the panel shows is the API's count at some moment between the two reads.
    assert before <= shown <= after["records"], (before, shown, after)
    facts = browser.eval("document.querySelector('#pipeline-facts').innerText")
    assert "records rejected\tnone" in facts or "records rejected\nnone" in facts, facts
    assert after["rejected"] == {} and after["consumer_lag"] == {}
    browser.eval("document.querySelector('#range').value = '1h';"
                 "document.querySelector('#range').dispatchEvent(new Event('change')); true")
    browser.wait("document.querySelector('#chart-status').textContent.includes('point')", "the 1 h chart")
    assert not browser.eval("document.querySelector('#agg').disabled")
    browser.eval("document.querySelector('#range').value = '15m';"
                 "document.querySelector('#range').dispatchEvent(new Event('change')); true")
    browser.wait("Number(document.body.dataset.chartPoints) >= 8", "the 15 min chart again")
    browser.screenshot(shots / "dashboard.png")

    # The key: in this tab's session storage, in headers, never in a URL.
    assert browser.eval(f"sessionStorage.getItem('gpu-telemetry-api-key')") == API_KEY
    reqs = browser.requests()
    data_calls = [r for r in reqs if "/api/v1/" in r["url"]]
    assert data_calls and all(r["headers"].get("X-API-Key") == API_KEY for r in data_calls)
    assert not [r["url"] for r in reqs if API_KEY in r["url"]]
    assert any(r["url"].endswith("/api/v1/gpus/stream") for r in data_calls)
    assert browser.console_errors() == []


def login(browser, base):
    browser.open(f"{base}/")
    browser.wait("document.readyState === 'complete' && !document.querySelector('#login').hidden", "the key prompt")
    browser.eval(f"document.querySelector('#key').value = {json.dumps(API_KEY)};"
                 "document.querySelector('#login-form').requestSubmit(); true")


def test_health_and_xid_badges_show_what_the_nvml_path_reports(browser, tmp_path):
    # Two GPUs of the NVML test double: XID 13 twice on GPU 0 (the application's own: counted,
    # health unchanged), XID 48 on GPU 1 (a double-bit ECC error: the GPU fails).
    proc = spawn_api(tmp_path / "data",
                     ["--source", "nvml", "--nvml-lib", str(ROOT / "target/debug/libnvidia_ml.so"),
                      "--node-name", "gpu-node-7", "--interval", "200ms"],
                     {"NVML_TEST_DOUBLE_XIDS": "0:13,0:13,1:48"})
    try:
        base = base_url(proc)
        deadline = time.time() + 30
        while True:
            gpus = json.loads(get(f"{base}/api/v1/gpus", API_KEY)[2])["gpus"]
            if len(gpus) == 2 and all(g.get("xid", {}).get("last") for g in gpus):
                break
            assert time.time() < deadline, gpus
            time.sleep(0.2)
        login(browser, base)
        browser.wait("document.querySelectorAll('.tile').length === 2", "both GPUs")
        for g in gpus:
            sel = f".tile[data-uuid={json.dumps(g['uuid'])}]"
            badges = browser.wait(f"(() => {{ const b = [...document.querySelectorAll({json.dumps(sel + ' .badge')})]"
                                  f".map(e => e.textContent); return b.length ? b : null; }})()", "badges")
            status = g["health"]["status"]
            want = ([status] if status in ("degraded", "failed") else []) + [f"XID {g['xid']['last']['code']}"]
            assert badges == want, (g["uuid"], badges, g["health"], g["xid"])
        assert {g["xid"]["last"]["code"] for g in gpus} == {13, 48}
        assert "failed" in [g["health"]["status"] for g in gpus]
        assert browser.console_errors() == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_wrong_key_is_refused_and_asked_again(api, browser):
    browser.open(f"{api}/")
    browser.wait("document.readyState === 'complete' && !document.querySelector('#login').hidden", "the key prompt")
    browser.eval("document.querySelector('#key').value = 'not-the-key-0123456789';"
                 "document.querySelector('#login-form').requestSubmit(); true")
    browser.wait("document.querySelector('#login-error').textContent === 'That key was refused.'", "the refusal")
    assert browser.eval("sessionStorage.getItem('gpu-telemetry-api-key')") is None
    assert browser.eval("document.querySelector('#dashboard').hidden")
    # No error in the console but the refused request's own (Chromium logs that one only
    # sometimes, and not always before the page shows the refusal: it may be absent).
    errors = browser.console_errors()
    assert all("401" in e for e in errors), errors
