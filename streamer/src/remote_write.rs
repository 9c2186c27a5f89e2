//! Prometheus remote write (protocol 1.0: protobuf `WriteRequest`, snappy block-compressed,
//! over HTTP POST) of verified batches, for a history kept in VictoriaMetrics or anything
//! else that takes remote write (Mimir, Thanos receive).
//!
//! Each metric of the catalog becomes the series `gpu_<metric>` (`_total` for counters: see
//! [`telemetry_wire::metric::MetricDef::prometheus_name`]) labelled `uuid`, `node` and
//! `gpu` (the index on its node), one sample per reading at the reading's own timestamp in
//! the metric's unit. Writing a batch twice writes the same samples at the same timestamps:
//! the engine's deduplication (VictoriaMetrics `-dedup.minScrapeInterval`) keeps one.
//!
//! [`VictoriaHistory`] is the `victoriametrics` history backend: every batch is written to
//! the remote (acknowledged before the batch counts as stored, so Kafka offsets are
//! committed only after the remote has the samples) and `/telemetry` is read back from it;
//! the streamer keeps no history of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use telemetry_wire::metric::METRICS;
use telemetry_wire::wire::TelemetryBatch;

/// The remote-write protocol's messages (prometheus/prompb `remote.proto` and
/// `types.proto`, the fields protocol 1.0 uses).
pub mod proto {
    /// A request: series with their samples.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// The series.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// One series: its labels (sorted by name, `__name__` among them) and samples.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Labels, sorted by name.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Samples, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    /// A label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Its name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Its value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// A sample.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// The value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// UTC milliseconds.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// The series of `batch`: one per (GPU, metric) it carries, samples oldest first.
pub fn series(batch: &TelemetryBatch) -> Vec<proto::TimeSeries> {
    let index: BTreeMap<&str, u32> = batch
        .gpus
        .iter()
        .map(|g| (g.uuid.as_str(), g.index))
        .collect();
    // (uuid, metric index in the catalog) → samples.
    let mut by_series: BTreeMap<(&str, usize), Vec<proto::Sample>> = BTreeMap::new();
    for s in &batch.samples {
        for (i, m) in METRICS.iter().enumerate() {
            if let Some(value) = m.value(s) {
                by_series
                    .entry((s.uuid.as_str(), i))
                    .or_default()
                    .push(proto::Sample {
                        value,
                        timestamp: s.timestamp_ms,
                    });
            }
        }
    }
    by_series
        .into_iter()
        .map(|((uuid, i), mut samples)| {
            samples.sort_by_key(|s| s.timestamp);
            let label = |name: &str, value: String| proto::Label {
                name: name.to_string(),
                value,
            };
            proto::TimeSeries {
                // Sorted by name, as the protocol asks.
                labels: vec![
                    label("__name__", METRICS[i].prometheus_name()),
                    label(
                        "gpu",
                        index.get(uuid).map(u32::to_string).unwrap_or_default(),
                    ),
                    label("node", batch.node.clone()),
                    label("uuid", uuid.to_string()),
                ],
                samples,
            }
        })
        .collect()
}

/// `batch` as a remote-write request body: protobuf, snappy block format.
///
/// # Errors
/// snappy's (it does not fail on input this size).
pub fn encode(batch: &TelemetryBatch) -> Result<Vec<u8>, snap::Error> {
    encode_all(std::slice::from_ref(batch))
}

/// `batches` as one remote-write request body (their series one after another).
///
/// # Errors
/// snappy's (it does not fail on input this size).
pub fn encode_all(batches: &[TelemetryBatch]) -> Result<Vec<u8>, snap::Error> {
    let req = proto::WriteRequest {
        timeseries: batches.iter().flat_map(series).collect(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// Most batches (node records) in one remote-write request: 100 nodes of 8 GPUs are
/// ≈ 50,000 series, a few MB before compression — well inside the 32 MB VictoriaMetrics
/// takes by default (`-maxInsertRequestSize`).
pub const BATCHES_PER_REQUEST: usize = 100;

/// Why a write did not go through.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The endpoint could not be reached, or answered 5xx / 429: try again later.
    #[error("remote write to {url} failed, will retry: {detail}")]
    Retry {
        /// The endpoint.
        url: String,
        /// What happened (no credential in it).
        detail: String,
    },
    /// The endpoint refused the data (4xx other than 429): retrying would not help.
    #[error("remote write to {url} refused the batch: HTTP {status}: {body}")]
    Refused {
        /// The endpoint.
        url: String,
        /// Its status.
        status: u16,
        /// The start of its answer.
        body: String,
    },
    /// The body could not be made.
    #[error("remote write body: {0}")]
    Encode(#[from] snap::Error),
}

/// The HTTP client for VictoriaMetrics: system roots (and `ca_file`'s, PEM) for
/// `https://`, each request given up after `timeout`.
///
/// # Errors
/// One line naming the CA file and what is wrong with it.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "--victoriametrics-ca-file {}: cannot read it: {e}",
                path.display()
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "--victoriametrics-ca-file {}: not PEM certificates: {e}",
                path.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!(
                "--victoriametrics-ca-file {}: no certificate in it",
                path.display()
            ));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| format!("VictoriaMetrics HTTP client: {e}"))
}

/// `Name: value` lines as headers, each value marked sensitive (never logged).
///
/// # Errors
/// One line naming the header (never its value) when one does not parse.
pub fn parse_headers(lines: &[String]) -> Result<reqwest::header::HeaderMap, String> {
    let mut out = reqwest::header::HeaderMap::new();
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            "--victoriametrics-header: expected `Name: value` (one per line)".to_string()
        })?;
        let name =
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
"--victoriametrics-header: a line's name is not a valid header name (the line is not shown: it may hold a credential)".to_string()
            })?;
        let mut value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| {
            format!("--victoriametrics-header {name}: the value is not a valid header value")
        })?;
        value.set_sensitive(true);
        out.append(name, value);
    }
    Ok(out)
}

/// An error and its causes in one line (`a: b: c`): "error sending request" alone does not
/// say that a certificate was refused.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Posts remote-write bodies to one endpoint (`…/api/v1/write`).
#[derive(Debug, Clone)]
pub struct RemoteWriter {
    http: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
}

impl RemoteWriter {
    /// A writer to `url`, each request sending `headers` too (e.g. `Authorization`) and
    /// given up after `timeout`.
    ///
    /// # Errors
    /// The HTTP client's, when it cannot be built.
    pub fn new(
        url: &str,
        headers: reqwest::header::HeaderMap,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self::with_http(
            reqwest::Client::builder().timeout(timeout).build()?,
            url,
            headers,
        ))
    }

    /// A writer to `url` through `http` (see [`http_client`]), sending `headers` too.
    pub fn with_http(
        http: reqwest::Client,
        url: &str,
        headers: reqwest::header::HeaderMap,
    ) -> Self {
        Self {
            http,
            url: url.to_string(),
            headers,
        }
    }

    /// The URL as errors say it: without user and password.
    fn shown_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.to_string()
            }
            Err(_) => "the remote-write URL".into(),
        }
    }

    /// Writes `batch` once.
    ///
    /// # Errors
    /// [`WriteError::Retry`] when it may succeed later, [`WriteError::Refused`] when not.
    pub async fn write(&self, batch: &TelemetryBatch) -> Result<(), WriteError> {
        self.write_all(std::slice::from_ref(batch)).await
    }

    /// Writes `batches` in one request.
    ///
    /// # Errors
    /// As [`RemoteWriter::write`].
    pub async fn write_all(&self, batches: &[TelemetryBatch]) -> Result<(), WriteError> {
        let body = encode_all(batches)?;
        let resp = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_err(|e| WriteError::Retry {
                url: self.shown_url(),
                detail: causes(&e.without_url()),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        if status.is_server_error() || status.as_u16() == 429 {
            Err(WriteError::Retry {
                url: self.shown_url(),
                detail: format!("HTTP {status}: {text}"),
            })
        } else {
            Err(WriteError::Refused {
                url: self.shown_url(),
                status: status.as_u16(),
                body: text,
            })
        }
    }
}

/// Every catalog series of `uuid`, as a PromQL series selector.
fn selector(uuid: &str) -> String {
    format!(
        "{{__name__=~\"gpu_.+\",uuid=\"{}\"}}",
        uuid.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// Reads a GPU's raw readings back from VictoriaMetrics (`/api/v1/export`): every catalog
/// series of the GPU in the window, turned back into readings (the metric's value times its
/// divisor is the wire field's value, exactly for the integers the collector sends).
#[derive(Debug, Clone)]
pub struct VictoriaReader {
    http: reqwest::Client,
    export_url: String,
    series_url: String,
    headers: reqwest::header::HeaderMap,
    /// Prometheus name → (column position, divisor).
    columns: std::collections::HashMap<String, (usize, f64)>,
}

impl VictoriaReader {
    /// A reader of VictoriaMetrics at `base_url`, sending `headers` with each request.
    ///
    /// # Errors
    /// The HTTP client's, when it cannot be built.
    pub fn new(
        base_url: &str,
        headers: reqwest::header::HeaderMap,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self::with_http(
            reqwest::Client::builder().timeout(timeout).build()?,
            base_url,
            headers,
        ))
    }

    /// A reader of VictoriaMetrics at `base_url` through `http` (see [`http_client`]).
    pub fn with_http(
        http: reqwest::Client,
        base_url: &str,
        headers: reqwest::header::HeaderMap,
    ) -> Self {
        use crate::store::reading::COLUMNS;
        let columns = METRICS
            .iter()
            .filter_map(|m| {
                COLUMNS
                    .iter()
                    .position(|c| c.field == m.field)
                    .map(|i| (m.prometheus_name(), (i, m.divisor)))
            })
            .collect();
        Self {
            http,
            export_url: format!("{}/api/v1/export", base_url.trim_end_matches('/')),
            series_url: format!("{}/api/v1/series", base_url.trim_end_matches('/')),
            headers,
            columns,
        }
    }

    /// Whether VictoriaMetrics holds any series of `uuid` (over its whole retention).
    ///
    /// # Errors
    /// A line saying what failed.
    pub async fn knows(&self, uuid: &str) -> Result<bool, String> {
        let resp = self
            .http
            .get(&self.series_url)
            .headers(self.headers.clone())
            // Over all time: 1 s after the epoch (VictoriaMetrics reads `start=0` as unset, and
            // then looks one day back only).
            .query(&[("match[]", selector(uuid).as_str()), ("start", "1")])
            .send()
            .await
            .map_err(|e| format!("VictoriaMetrics series: {}", causes(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(format!("VictoriaMetrics series: HTTP {}", resp.status()));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("VictoriaMetrics series: {}", e.without_url()))?;
        Ok(v["data"].as_array().is_some_and(|d| !d.is_empty()))
    }

    /// `uuid`'s readings with `start_ms <= t < end_ms`, oldest first (empty when it has none
    /// there).
    ///
    /// # Errors
    /// A line saying what failed (unreachable, an HTTP status, an answer that does not parse).
    pub async fn readings(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<crate::store::Reading>, String> {
        // `end` is inclusive there: ask to the millisecond before ours.
        let secs = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
        let resp = self
            .http
            .get(&self.export_url)
            .headers(self.headers.clone())
            .query(&[
                ("match[]", selector(uuid).as_str()),
                ("start", &secs(start_ms)),
                ("end", &secs(end_ms.saturating_sub(1))),
            ])
            .send()
            .await
            .map_err(|e| format!("VictoriaMetrics export: {}", causes(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(format!("VictoriaMetrics export: HTTP {}", resp.status()));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| format!("VictoriaMetrics export: {}", e.without_url()))?;
        let mut by_ts: BTreeMap<i64, crate::store::Reading> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("VictoriaMetrics export line: {e}"))?;
            let Some(&(col, divisor)) = v["metric"]["__name__"]
                .as_str()
                .and_then(|n| self.columns.get(n))
            else {
                continue; // a series this catalog does not know
            };
            let (Some(ts), Some(vs)) = (v["timestamps"].as_array(), v["values"].as_array()) else {
                return Err("VictoriaMetrics export line without timestamps/values".into());
            };
            for (t, x) in ts.iter().zip(vs) {
                let (Some(t), Some(x)) = (t.as_i64(), x.as_f64()) else {
                    continue;
                };
                if t < start_ms || t >= end_ms || !x.is_finite() || x < 0.0 {
                    continue;
                }
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let raw = (x * divisor).round() as u64;
                by_ts
                    .entry(t)
                    .or_insert_with(|| crate::store::Reading::empty(t))
                    .set(col, raw);
            }
        }
        Ok(by_ts.into_values().collect())
    }
}

/// The `victoriametrics` history: VictoriaMetrics holds the history, the streamer none of it.
/// A batch is stored when the remote write is acknowledged (a failure fails the batch: the
/// consume loop retries it with backoff, and its offsets are committed only after);
/// ranges and aggregates are read back through [`VictoriaReader`]. Offsets are the consumer
/// group's ([`crate::store::History::keeps_offsets`] is `false`), so any number of
/// streamers share the partitions and one that starts, or takes over a partition, resumes
/// at the group's last commit; what it re-reads is written again at the same timestamps,
/// and VictoriaMetrics's deduplication keeps one sample.
#[derive(Debug)]
pub struct VictoriaHistory {
    writer: RemoteWriter,
    reader: VictoriaReader,
    runtime: tokio::runtime::Handle,
    /// uuid → the newest sample time this streamer wrote: what [`Self::apply`] calls new.
    newest: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl VictoriaHistory {
    /// A history written through `writer` and read through `reader`; both run on `runtime`
    /// (the store is called from blocking threads).
    pub fn new(
        writer: RemoteWriter,
        reader: VictoriaReader,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            writer,
            reader,
            runtime,
            newest: std::sync::Mutex::default(),
        }
    }

    /// The readings of `uuid` in the window, or `None` when VictoriaMetrics has no series of
    /// that GPU at all (an unknown GPU, as the durable store says for one it never had).
    fn readings(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<Vec<crate::store::Reading>>, crate::store::StoreError> {
        let remote = |e: String| crate::store::StoreError::Remote(e.into());
        let rs = self
            .runtime
            .block_on(self.reader.readings(uuid, start_ms, end_ms))
            .map_err(remote)?;
        // Only an empty window costs a second question.
        if rs.is_empty()
            && !self
                .runtime
                .block_on(self.reader.knows(uuid))
                .map_err(remote)?
        {
            return Ok(None);
        }
        Ok(Some(rs))
    }
}

impl crate::store::History for VictoriaHistory {
    fn apply(
        &self,
        batch: &TelemetryBatch,
    ) -> Result<(crate::store::Applied, Vec<bool>), crate::store::StoreError> {
        let mut done = self.apply_all(std::slice::from_ref(batch))?;
        Ok(done.remove(0))
    }

    fn apply_all(
        &self,
        batches: &[TelemetryBatch],
    ) -> Result<Vec<(crate::store::Applied, Vec<bool>)>, crate::store::StoreError> {
        // Every sample, new or redelivered: the remote keeps one per series and timestamp.
        // A few requests at once, each of up to BATCHES_PER_REQUEST batches.
        let writes = batches
            .chunks(BATCHES_PER_REQUEST)
            .map(|chunk| self.writer.write_all(chunk));
        let results = self.runtime.block_on(futures::future::join_all(writes));
        for r in results {
            r.map_err(|e| crate::store::StoreError::Remote(Box::new(e)))?;
        }
        // New = newer than anything this streamer wrote for the GPU (the latest index
        // counts and shows only those); a re-read after a restart or a rebalance counts
        // again here, while VictoriaMetrics holds it once.
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(batches
            .iter()
            .map(|batch| {
                let mut applied = crate::store::Applied::default();
                let new = batch
                    .samples
                    .iter()
                    .map(|s| {
                        let at = newest.entry(s.uuid.clone()).or_insert(i64::MIN);
                        let is_new = s.timestamp_ms > *at;
                        if is_new {
                            *at = s.timestamp_ms;
                            applied.inserted += 1;
                        } else {
                            applied.duplicates += 1;
                        }
                        is_new
                    })
                    .collect();
                (applied, new)
            })
            .collect())
    }

    fn cover(&self, _next: &[(i32, i64)]) -> Result<(), crate::store::StoreError> {
        Ok(())
    }

    fn resume_offset(&self, _partition: i32) -> Option<i64> {
        None
    }

    fn keeps_offsets(&self) -> bool {
        false
    }

    fn writes_in_bulk(&self) -> bool {
        true
    }

    fn knows(&self, uuid: &str) -> Result<bool, crate::store::StoreError> {
        self.runtime
            .block_on(self.reader.knows(uuid))
            .map_err(|e| crate::store::StoreError::Remote(e.into()))
    }

    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Option<(Vec<crate::store::Reading>, bool)>, crate::store::StoreError> {
        Ok(self.readings(uuid, start_ms, end_ms)?.map(|mut rs| {
            let more = rs.len() > limit;
            rs.truncate(limit);
            (rs, more)
        }))
    }

    fn range_blocks(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
        _encoded: bool,
        emit: &mut dyn FnMut(crate::store::Block) -> bool,
    ) -> Result<Option<bool>, crate::store::StoreError> {
        let Some((rs, more)) = self.range(uuid, start_ms, end_ms, limit)? else {
            return Ok(None);
        };
        // Blocks of about a stored chunk's size, so a long answer streams in pieces.
        for block in rs.chunks(512) {
            if !emit(crate::store::Block::Readings(block.to_vec())) {
                break;
            }
        }
        Ok(Some(more))
    }

    fn aggregate(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: crate::store::Agg,
        limit: usize,
    ) -> Result<Option<(Vec<crate::store::AggRow>, bool)>, crate::store::StoreError> {
        if step_ms <= 0 {
            return Err(crate::store::StoreError::Other(
                "step must be positive".into(),
            ));
        }
        // Whole buckets, as the durable store answers them.
        use crate::store::rollup;
        let start = rollup::bucket_of(start_ms, step_ms);
        let end = rollup::bucket_of(end_ms.saturating_sub(1), step_ms).saturating_add(step_ms);
        let Some(rs) = self.readings(uuid, start, end)? else {
            return Ok(None);
        };
        // Limited as the durable store limits: by buckets.
        let parts = rollup::partials(&rs, step_ms);
        let more = parts.len() > limit;
        Ok(Some((
            rollup::rows(parts.into_values().take(limit), agg),
            more,
        )))
    }

    fn flush(&self) -> Result<u64, crate::store::StoreError> {
        Ok(0)
    }

    fn flush_due(&self) -> bool {
        false
    }

    fn sweep(&self, _now_ms: i64) -> Result<crate::store::Swept, crate::store::StoreError> {
        // Retention is VictoriaMetrics's (-retentionPeriod).
        Ok(crate::store::Swept::default())
    }

    fn series(&self) -> Result<Vec<crate::store::SeriesState>, crate::store::StoreError> {
        // The latest index starts empty and fills from the partitions this streamer takes.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_wire::wire::{GpuInfo, GpuSample};

    #[test]
    fn a_batch_becomes_one_series_per_gpu_and_metric_in_metric_units_sorted_by_label() {
        let batch = TelemetryBatch {
            node: "node-a".into(),
            gpus: vec![GpuInfo {
                uuid: "GPU-1".into(),
                index: 2,
                ..Default::default()
            }],
            samples: vec![
                GpuSample {
                    uuid: "GPU-1".into(),
                    timestamp_ms: 2_000,
                    gpu_utilization_percent: Some(40),
                    power_usage_milliwatts: Some(312_500),
                    ..Default::default()
                },
                GpuSample {
                    uuid: "GPU-1".into(),
                    timestamp_ms: 1_000,
                    gpu_utilization_percent: Some(30),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = series(&batch);
        let named: Vec<(String, Vec<(i64, f64)>)> = s
            .iter()
            .map(|t| {
                assert!(t.labels.windows(2).all(|w| w[0].name < w[1].name));
                (
                    t.labels[0].value.clone(),
                    t.samples.iter().map(|x| (x.timestamp, x.value)).collect(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                (
                    "gpu_utilization_percent".to_string(),
                    vec![(1_000, 30.0), (2_000, 40.0)]
                ),
                ("gpu_power_usage_watts".to_string(), vec![(2_000, 312.5)]),
            ]
        );
        let labels: Vec<(&str, &str)> = s[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("__name__", "gpu_utilization_percent"),
                ("gpu", "2"),
                ("node", "node-a"),
                ("uuid", "GPU-1")
            ]
        );
        // The body decodes back to the same request.
        let body = encode(&batch).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(proto::WriteRequest::decode(&raw[..]).unwrap().timeseries, s);
    }
}
