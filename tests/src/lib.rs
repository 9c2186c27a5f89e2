//! Test harness: a real Kafka-protocol broker (tansu) on a free port, the real binaries as
//! child processes, and a deadline-polling [`eventually`] instead of sleeps.
//!
//! Binaries are found next to the test executable's `deps/` directory; `scripts/test` builds
//! them (`cargo build --workspace`) before running the tests.

pub mod kube_api;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Command-line arguments as owned strings.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A unique name for a topic or group: `prefix-<pid>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    // Polls paced by an interval (the first at once); the deadline decides, not a count.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
    }
}

/// Blocking twin of [`eventually`] for code that is not async: polls `f` until it returns
/// `Some`, or returns `None` once `timeout` has passed. The one place that pauses between
/// polls, so callers never sleep themselves.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // The pace between polls, never past the deadline.
        std::thread::park_timeout(left.min(Duration::from_millis(20)));
    }
}

/// The median of `v` (benchmarks report medians: the machine is shared and noisy).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.to_path_buf()
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` first (scripts/test does)",
        p.display()
    );
    p
}

/// Path of the NVML test double (`libnvidia_ml.so`).
pub fn nvml_double() -> PathBuf {
    bin("libnvidia_ml.so")
}

/// A child process, killed on drop; its stdout and stderr lines are collected.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    name: String,
}

impl Proc {
    /// Spawns `program` with `args` and `envs` (the only env changes: tests never touch
    /// their own environment). stderr is inherited so failures show in the test output.
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> Proc {
        Self::spawn_in(name, program, args, envs, None)
    }

    /// [`Proc::spawn`] in working directory `cwd`.
    pub fn spawn_in(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        envs: &[(&str, String)],
        cwd: Option<&std::path::Path>,
    ) -> Proc {
        let mut cmd = Command::new(program);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Logs and summaries: shown as before (the test's stderr), and matched too.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx_err.send(line);
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            name: name.to_string(),
        }
    }

    /// Waits up to `timeout` for a line (stdout or stderr) containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: no line containing {needle:?} within {timeout:?}; exit: {:?}; saw: {:?}",
                    self.name,
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Every line the process has printed so far (stdout and stderr), reading what is
    /// waiting without blocking.
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// A field of `/proc/<pid>/status` in kB: `VmRSS` (resident now), `VmHWM` (the peak).
    pub fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit up to `timeout`; returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        poll_until(timeout, || child.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The tansu binary: `$TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("tansu");
            if p.exists() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/tansu");
    assert!(
        p.exists(),
        "tansu broker not found: run scripts/install-test-deps"
    );
    p
}

/// A Kafka-protocol broker (tansu, in-memory storage) on a free port, killed on drop.
#[derive(Debug)]
pub struct Broker {
    /// The broker process.
    pub proc: Proc,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    port: u16,
    storage: String,
    cwd: Option<PathBuf>,
    extra: Vec<String>,
}

impl Broker {
    /// Starts a broker with in-memory storage and waits until it accepts connections.
    pub fn start() -> Broker {
        Self::start_with("memory://tansu/".into(), None)
    }

    /// Starts a broker whose storage is a sqlite file in `dir` (durable across kill -9).
    pub fn start_sqlite(dir: &std::path::Path) -> Broker {
        // tansu resolves the sqlite path relative to its working directory.
        Self::start_with("sqlite://tansu.db".into(), Some(dir.to_path_buf()))
    }

    /// Starts a broker (sqlite storage in `dir`) that requires SASL/SCRAM-SHA-512 from every
    /// client, knowing `users` (name, password). tansu creates users only through a broker
    /// that does not require authentication, so: start open, create them, restart closed.
    pub fn start_scram(dir: &std::path::Path, users: &[(&str, &str)]) -> Broker {
        let mut open = Self::start_sqlite(dir);
        for (name, password) in users {
            let out = Command::new(tansu_bin())
                .args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://{}", open.addr),
                ])
                .args([name, password, "--mechanism", "scram512"])
                .output()
                .expect("run tansu user create");
            assert!(out.status.success(), "tansu user create {name}: {out:?}");
        }
        open.proc.kill9();
        let b = Self::try_start(
            open.port,
            &open.storage,
            open.cwd.clone(),
            vec!["--authentication".into()],
        )
        .expect("restart the broker with authentication");
        drop(open);
        b
    }

    fn start_with(storage: String, cwd: Option<PathBuf>) -> Broker {
        for _ in 0..5 {
            let port = free_port();
            if let Some(b) = Self::try_start(port, &storage, cwd.clone(), Vec::new()) {
                return b;
            }
        }
        panic!("could not start tansu on a free port");
    }

    fn try_start(
        port: u16,
        storage: &str,
        cwd: Option<PathBuf>,
        extra: Vec<String>,
    ) -> Option<Broker> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut args = vec![
            "broker".into(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            storage.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut proc = Proc::spawn_in("tansu", &tansu_bin(), &args, &[], cwd.as_deref());
        // Listening, or exited (the port was taken between probe and bind: try another).
        let listening = poll_until(Duration::from_secs(10), || {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                Some(true)
            } else if let Ok(Some(_)) = proc.child.try_wait() {
                Some(false)
            } else {
                None
            }
        });
        listening.unwrap_or(false).then(|| Broker {
            proc,
            addr: format!("127.0.0.1:{port}"),
            port,
            storage: storage.to_string(),
            cwd,
            extra,
        })
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let b = Self::try_start(
            self.port,
            &self.storage,
            self.cwd.clone(),
            self.extra.clone(),
        )
        .expect("restart broker on its port");
        *self = b;
    }
}

/// A real VictoriaMetrics single node (Debian's `victoria-metrics`, installed by
/// `scripts/install-test-deps`) on a free port with its own data directory, deduplicating
/// samples of the same series and timestamp (`-dedup.minScrapeInterval=1ms`).
#[derive(Debug)]
pub struct VictoriaMetrics {
    /// The process (killed on drop).
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _data: tempfile::TempDir,
}

impl VictoriaMetrics {
    /// Starts one and waits until it answers `/health`.
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("VictoriaMetrics data directory");
        let port = free_port();
        let bin = ["/usr/bin/victoria-metrics", "victoria-metrics"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").output().is_ok())
            .expect("victoria-metrics is not installed: run scripts/install-test-deps");
        let proc = Proc::spawn(
            "victoria-metrics",
            std::path::Path::new(bin),
            &args(&[
                &format!("-httpListenAddr=127.0.0.1:{port}"),
                &format!("-storageDataPath={}", data.path().display()),
                "-retentionPeriod=100y",
                "-dedup.minScrapeInterval=1ms",
                "-search.latencyOffset=0s",
                "-search.maxPointsPerTimeseries=1000000",
            ]),
            &[],
        );
        let url = format!("http://127.0.0.1:{port}");
        poll_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read as _, Write as _};
                    let _ = write!(s, "GET /health HTTP/1.0\r\n\r\n");
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    (out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
                        .then_some(())
                })
        })
        .unwrap_or_else(|| panic!("VictoriaMetrics did not answer {url}/health"));
        Self {
            proc,
            url,
            _data: data,
        }
    }

    /// Makes what was written searchable now (VictoriaMetrics buffers it about a second).
    pub async fn flush(&self, http: &reqwest::Client) {
        let r = http
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await
            .expect("force_flush");
        assert!(r.status().is_success(), "force_flush: {}", r.status());
    }

    /// Every raw sample of the series matching `selector`, as `/api/v1/export` gives them:
    /// (labels, timestamps, values) per series.
    pub async fn export(
        &self,
        http: &reqwest::Client,
        selector: &str,
    ) -> Vec<(serde_json::Value, Vec<i64>, Vec<f64>)> {
        let text = http
            .get(format!("{}/api/v1/export", self.url))
            .query(&[("match[]", selector)])
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("export body");
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("export line");
                let ts = v["timestamps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_i64().unwrap())
                    .collect();
                let vs = v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                (v["metric"].clone(), ts, vs)
            })
            .collect()
    }
}

/// A collector's flags: two simulated GPUs every 100 ms into `topic` (2 partitions).
pub fn simulated_collector_args(broker: &Broker, topic: &str) -> Vec<String> {
    args(&[
        "--source",
        "simulated",
        "--sim-gpus-per-node",
        "2",
        "--interval",
        "100ms",
        "--brokers",
        &broker.addr,
        "--topic",
        topic,
        "--partitions",
        "2",
    ])
}

/// The status of GET `url` with API key `key`; 0 when the request fails.
pub async fn status_with_key(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    http.get(url)
        .header("x-api-key", key)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The body of an unauthenticated GET (e.g. `/metrics`), `None` when the request fails.
pub async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

/// A minimal HTTP GET with an optional API key; returns (status, parsed JSON body).
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Names and secrets of one test's pipeline: a fresh topic, dead-letter topic and group.
#[derive(Debug, Clone)]
pub struct Names {
    /// Telemetry topic.
    pub topic: String,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Consumer group.
    pub group: String,
    /// Service token.
    pub token: String,
    /// API key.
    pub api_key: String,
    /// The streamer's data directory (removed when the last clone is dropped).
    pub data_dir: Arc<tempfile::TempDir>,
    /// The port the streamer serves `/metrics` on (the same across its restarts).
    pub streamer_metrics_port: u16,
}

impl Names {
    /// The streamer's `/metrics` URL.
    pub fn streamer_metrics(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.streamer_metrics_port)
    }

    /// Fresh names for a test.
    pub fn fresh(test: &str) -> Names {
        Names {
            topic: unique(&format!("{test}-telemetry")),
            dead_letter: unique(&format!("{test}-dlq")),
            group: unique(&format!("{test}-group")),
            token: format!("service-token-{}", unique("t")),
            api_key: format!("api-key-{}", unique("k")),
            data_dir: Arc::new(tempfile::tempdir().expect("temporary data directory")),
            streamer_metrics_port: free_port(),
        }
    }
}

/// Starts the streamer binary with gRPC on `127.0.0.1:grpc_port`; returns once it listens.
pub fn spawn_streamer(broker: &Broker, n: &Names, grpc_port: u16) -> Proc {
    spawn_streamer_with(
        broker,
        n,
        grpc_port,
        &[],
        &[("SERVICE_TOKEN", n.token.clone())],
    )
}

/// [`spawn_streamer`] with `extra` flags and `envs` (e.g. a secret directory instead of env
/// secrets).
pub fn spawn_streamer_with(
    broker: &Broker,
    n: &Names,
    grpc_port: u16,
    extra: &[&str],
    envs: &[(&str, String)],
) -> Proc {
    let mut args = args(&[
        "--grpc-addr",
        &format!("127.0.0.1:{grpc_port}"),
        "--brokers",
        &broker.addr,
        "--topic",
        &n.topic,
        "--dead-letter-topic",
        &n.dead_letter,
        "--group-id",
        &n.group,
        "--partitions",
        "4",
        "--session-timeout",
        "6s",
        "--data-dir",
        &n.data_dir.path().display().to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", n.streamer_metrics_port),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Proc::spawn("streamer", &bin("streamer"), &args, envs);
    p.wait_line("streamer grpc listening on", Duration::from_secs(20));
    // Printed once its metrics port is bound too (a port taken meanwhile fails here, said).
    p.wait_line("streamer metrics listening on", Duration::from_secs(20));
    p
}

/// Starts the api binary against the streamer on `grpc_port`; returns it and its base URL.
pub fn spawn_api(n: &Names, grpc_port: u16) -> (Proc, String) {
    spawn_api_with(
        grpc_port,
        &[],
        &[
            ("API_KEY", n.api_key.clone()),
            ("SERVICE_TOKEN", n.token.clone()),
        ],
    )
}

/// Starts the api binary against the streamer on `grpc_port` with `extra` flags and `envs`
/// (e.g. a secret directory instead of env secrets); returns it and its base URL.
pub fn spawn_api_with(grpc_port: u16, extra: &[&str], envs: &[(&str, String)]) -> (Proc, String) {
    let mut args = args(&[
        "--listen",
        "127.0.0.1:0",
        "--streamer-url",
        &format!("http://127.0.0.1:{grpc_port}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Proc::spawn("api", &bin("api"), &args, envs);
    let base = api_url(&mut p);
    (p, base)
}

/// The base URL an api process prints once it listens (`api listening on <addr>`).
pub fn api_url(p: &mut Proc) -> String {
    let line = p.wait_line("api listening on ", Duration::from_secs(20));
    let addr = line.trim_start_matches("api listening on ").trim();
    format!("http://{addr}")
}

/// Starts the collector binary with a simulated fleet.
pub fn spawn_collector(
    broker: &Broker,
    n: &Names,
    spec: collector::simulated::FleetSpec,
    interval: &str,
    rounds: u64,
) -> Proc {
    spawn_collector_with(broker, n, spec, interval, rounds, &[])
}

/// [`spawn_collector`] with `extra` flags (e.g. `--metrics-addr`).
pub fn spawn_collector_with(
    broker: &Broker,
    n: &Names,
    spec: collector::simulated::FleetSpec,
    interval: &str,
    rounds: u64,
    extra: &[&str],
) -> Proc {
    let mut args = args(&[
        "--source",
        "simulated",
        "--sim-nodes",
        &spec.nodes.to_string(),
        "--sim-gpus-per-node",
        &spec.gpus_per_node.to_string(),
        "--sim-seed",
        &spec.seed.to_string(),
        "--interval",
        interval,
        "--rounds",
        &rounds.to_string(),
        "--brokers",
        &broker.addr,
        "--topic",
        &n.topic,
        "--partitions",
        "4",
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(
        "collector",
        &bin("collector"),
        &args,
        &[("SERVICE_TOKEN", n.token.clone())],
    )
}

/// Waits until the API lists `gpus` GPUs with `per_gpu` samples each; returns the list.
pub async fn wait_for_samples(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    gpus: usize,
    per_gpu: u64,
) -> Vec<serde_json::Value> {
    eventually(
        Duration::from_secs(60),
        "every sample visible in the API",
        || async {
            let (status, body) = get_json(http, &format!("{base}/api/v1/gpus"), Some(key)).await;
            if status != 200 {
                return None;
            }
            let list = body["gpus"].as_array()?.clone();
            let complete = list.len() == gpus
                && list
                    .iter()
                    .all(|g| g["sample_count"].as_u64() == Some(per_gpu));
            complete.then_some(list)
        },
    )
    .await
}

/// UTC milliseconds of an RFC 3339 time.
pub fn rfc3339_ms(rfc3339: &str) -> i64 {
    (time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp_nanos()
        / 1_000_000) as i64
}

/// Checks every sample of every GPU against what the simulated fleet must have produced;
/// returns the sample timestamps per GPU.
pub async fn assert_exact_samples(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    spec: collector::simulated::FleetSpec,
    list: &[serde_json::Value],
) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut out = std::collections::BTreeMap::new();
    for g in list {
        let uuid = g["uuid"].as_str().unwrap();
        let node: u32 = g["node"]
            .as_str()
            .unwrap()
            .trim_start_matches("sim-node-")
            .parse()
            .unwrap();
        let index = g["index"].as_u64().unwrap() as u32;
        let info = collector::simulated::SimulatedSource::info(spec, node, index);
        assert_eq!(info.uuid, uuid, "uuid of node {node} GPU {index}");
        assert_eq!(g["name"], info.name);
        let url = format!(
            "{base}/api/v1/gpus/{uuid}/telemetry?start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&limit=100000"
        );
        let (status, body) = get_json(http, &url, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        let samples = body["samples"].as_array().unwrap();
        let mut stamps = Vec::new();
        for s in samples {
            let t = rfc3339_ms(s["timestamp"].as_str().unwrap());
            let expected =
                collector::simulated::SimulatedSource::sample(spec, node, index, uuid, t);
            let want: std::collections::BTreeMap<&str, f64> =
                telemetry_wire::metric::values(&expected).collect();
            let got: std::collections::BTreeMap<&str, f64> = s
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.as_str() != "timestamp")
                .map(|(k, v)| (k.as_str(), v.as_f64().unwrap()))
                .collect();
            assert_eq!(got, want, "GPU {uuid} at {t}");
            stamps.push(t);
        }
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "samples in time order, no duplicates"
        );
        // The list's `latest` is the newest sample.
        let last = collector::simulated::SimulatedSource::sample(
            spec,
            node,
            index,
            uuid,
            *stamps.last().unwrap(),
        );
        let latest: std::collections::BTreeMap<&str, f64> = g["latest"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_f64().unwrap()))
            .collect();
        assert_eq!(
            latest,
            telemetry_wire::metric::values(&last).collect::<std::collections::BTreeMap<_, _>>()
        );
        out.insert(uuid.to_string(), stamps);
    }
    out
}
/// Waits until the API lists `gpus` GPUs, each one's `/telemetry` holds `per_gpu` samples
/// (counted by the backend: `agg=count`) and the list shows each GPU's newest of them;
/// returns that list. For a history whose `sample_count` is not what the backend holds
/// (VictoriaMetrics).
pub async fn wait_for_rounds(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    gpus: usize,
    per_gpu: u64,
) -> Vec<serde_json::Value> {
    let window = "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z";
    let newest = eventually(Duration::from_secs(60), "every sample in the history", || async {
        let (status, body) = get_json(http, &format!("{base}/api/v1/gpus"), Some(key)).await;
        let list = body["gpus"].as_array()?.clone();
        if status != 200 || list.len() != gpus {
            return None;
        }
        let mut newest = std::collections::BTreeMap::new();
        for g in &list {
            let uuid = g["uuid"].as_str()?;
            let url = format!(
                "{base}/api/v1/gpus/{uuid}/telemetry?{window}&limit=100000&metrics=gpu_utilization_percent"
            );
            let (s, b) = get_json(http, &url, Some(key)).await;
            let samples = b["samples"].as_array()?;
            if s != 200 || samples.len() as u64 != per_gpu {
                return None;
            }
            newest.insert(uuid.to_string(), samples.last()?["timestamp"].as_str()?.to_string());
        }
        Some(newest)
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the list shows every GPU's newest sample",
        || async {
            let (_, body) = get_json(http, &format!("{base}/api/v1/gpus"), Some(key)).await;
            let list = body["gpus"].as_array()?.clone();
            list.iter()
                .all(|g| {
                    g["uuid"]
                        .as_str()
                        .and_then(|u| newest.get(u))
                        .map(|t| rfc3339_ms(t))
                        == g["last_seen"].as_str().map(rfc3339_ms)
                })
                .then_some(list)
        },
    )
    .await
}

/// Waits until the API lists a GPU with more than 5 samples: part of a stream is in.
pub async fn wait_for_some_samples(http: &reqwest::Client, base: &str, key: &str) {
    eventually(Duration::from_secs(60), "some samples stored", || async {
        let (s, body) = get_json(http, &format!("{base}/api/v1/gpus"), Some(key)).await;
        (s == 200
            && body["gpus"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["sample_count"].as_u64() > Some(5))))
        .then_some(())
    })
    .await;
}

/// The value of one series in Prometheus text, matched exactly: `name` with its labels as
/// printed, e.g. `streamer_records_rejected_total{reason="unsigned"}`.
pub fn metric_value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The series of metric `name` in Prometheus text (sample lines, not `# HELP`/`# TYPE`).
pub fn series_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// One `key=value` field of a summary line such as `collector stopped: rounds=3 dropped=0`.
pub fn summary_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// A kubelet's PodResources API on a unix socket in a temp dir (tonic, the collector's
/// vendored proto), answering `List` with the pods it was given.
#[derive(Debug)]
pub struct FakeKubelet {
    /// The socket path.
    pub socket: PathBuf,
    pods: std::sync::Arc<std::sync::Mutex<Vec<collector::kubelet::proto::PodResources>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone)]
struct KubeletService {
    pods: std::sync::Arc<std::sync::Mutex<Vec<collector::kubelet::proto::PodResources>>>,
}

#[tonic::async_trait]
impl collector::kubelet::proto::pod_resources_lister_server::PodResourcesLister for KubeletService {
    async fn list(
        &self,
        _: tonic::Request<collector::kubelet::proto::ListPodResourcesRequest>,
    ) -> Result<tonic::Response<collector::kubelet::proto::ListPodResourcesResponse>, tonic::Status>
    {
        let pods = self.pods.lock().unwrap().clone();
        Ok(tonic::Response::new(
            collector::kubelet::proto::ListPodResourcesResponse {
                pod_resources: pods,
            },
        ))
    }

    async fn get_allocatable_resources(
        &self,
        _: tonic::Request<collector::kubelet::proto::AllocatableResourcesRequest>,
    ) -> Result<
        tonic::Response<collector::kubelet::proto::AllocatableResourcesResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn get(
        &self,
        _: tonic::Request<collector::kubelet::proto::GetPodResourcesRequest>,
    ) -> Result<tonic::Response<collector::kubelet::proto::GetPodResourcesResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("not in the fake"))
    }
}

impl FakeKubelet {
    /// Serves `pods` on `<dir>/kubelet.sock`.
    pub fn start(
        dir: &std::path::Path,
        pods: Vec<collector::kubelet::proto::PodResources>,
    ) -> Self {
        use collector::kubelet::proto::pod_resources_lister_server::PodResourcesListerServer;
        let socket = dir.join("kubelet.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind the kubelet socket");
        let pods = std::sync::Arc::new(std::sync::Mutex::new(pods));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = KubeletService { pods: pods.clone() };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Self {
            socket,
            pods,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Answers `pods` from now on.
    pub fn set(&self, pods: Vec<collector::kubelet::proto::PodResources>) {
        *self.pods.lock().unwrap() = pods;
    }

    /// Stops serving and removes the socket, as a kubelet going away does.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A pod as the kubelet lists it: `containers` are (name, resource, device ids).
pub fn pod_resources(
    namespace: &str,
    name: &str,
    containers: &[(&str, &str, &[&str])],
) -> collector::kubelet::proto::PodResources {
    use collector::kubelet::proto::{ContainerDevices, ContainerResources, PodResources};
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers: containers
            .iter()
            .map(|(c, resource, ids)| ContainerResources {
                name: (*c).into(),
                devices: vec![ContainerDevices {
                    resource_name: (*resource).into(),
                    device_ids: ids.iter().map(|s| (*s).into()).collect(),
                    topology: None,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `api --embedded --listen 127.0.0.1:0` plus `extra` flags, with `env`, in `cwd` (its
/// `./data`); returns the process and the base URL it printed.
pub fn spawn_embedded_api(
    cwd: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> (Proc, String) {
    let mut flags = vec!["--embedded", "--listen", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let mut p = Proc::spawn_in("api", &bin("api"), &args(&flags), env, Some(cwd));
    let base = api_url(&mut p);
    (p, base)
}
