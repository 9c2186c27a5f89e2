//! A small Kubernetes API server that speaks the Secret API, for tests of
//! `--secret-source kubernetes` and the rotation command with a real `kube::Client`.
//!
//! It serves what those use, the way kube-apiserver does: `GET`, `LIST` of one name (with the
//! current resourceVersion), `PATCH` (JSON merge patch and strategic merge patch, which are
//! the same for a Secret's `data`) and `WATCH` (chunked
//! JSON lines, from a resourceVersion, with bookmarks, an `ERROR` 410 event for a
//! resourceVersion older than its window) of `/api/v1/namespaces/{ns}/secrets/{name}`, with
//! bearer-token authentication. A test changes Secrets, sends bookmarks, drops or ends the
//! open watches, compacts the history, forbids reads, and reads back every request made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;

/// The fake API server; stops when dropped.
#[derive(Debug)]
pub struct FakeKubeApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type WatchTx = tokio::sync::mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

#[derive(Debug, Default)]
struct Inner {
    token: String,
    rv: u64,
    /// Watches older than this get 410 Gone.
    oldest_rv: u64,
    secrets: BTreeMap<(String, String), serde_json::Value>,
    /// Every change, for watches that start from an older resourceVersion.
    history: Vec<(u64, String, String, String)>,
    watchers: Vec<(String, String, WatchTx)>,
    forbidden: bool,
    requests: Vec<String>,
    /// Pods: (namespace, name, labels, port name, port, where its HTTP server really is).
    pods: Vec<FakePod>,
}

#[derive(Debug, Clone)]
struct FakePod {
    ns: String,
    name: String,
    labels: BTreeMap<String, String>,
    port_name: String,
    port: u16,
    url: String,
}

impl Inner {
    fn event_line(kind: &str, object: &serde_json::Value) -> Bytes {
        let mut line = serde_json::json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    fn notify(&mut self, kind: &str, ns: &str, name: &str, object: &serde_json::Value) {
        let line = Self::event_line(kind, object);
        self.history.push((
            self.rv,
            ns.to_string(),
            name.to_string(),
            String::from_utf8_lossy(&line).into(),
        ));
        self.watchers.retain(|(wns, wname, tx)| {
            (wns != ns || wname != name) || tx.send(Ok(line.clone())).is_ok()
        });
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn secret_json(
    ns: &str,
    name: &str,
    rv: u64,
    data: &BTreeMap<String, String>,
) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(b64.encode(v))))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "uid": format!("uid-{ns}-{name}")},
        "data": data,
    })
}

impl FakeKubeApi {
    /// Serves on a free port of 127.0.0.1, accepting requests that carry `Bearer token`.
    pub async fn start(token: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            rv: 100,
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).patch(patch_secret),
            )
            .route("/api/v1/namespaces/{ns}/secrets", get(watch_secrets))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route(
                "/api/v1/namespaces/{ns}/pods/{pod}/proxy/{*rest}",
                get(proxy_pod),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }

    /// Creates or replaces Secret `ns/name` with `data` (plain text values); watchers get
    /// ADDED or MODIFIED. Returns its new resourceVersion.
    pub fn put(&self, ns: &str, name: &str, data: &[(&str, &str)]) -> u64 {
        let mut s = self.inner();
        s.rv += 1;
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let object = secret_json(ns, name, s.rv, &data);
        let kind = if s.secrets.contains_key(&(ns.into(), name.into())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.secrets.insert((ns.into(), name.into()), object.clone());
        s.notify(kind, ns, name, &object);
        s.rv
    }

    /// Sets one key of Secret `ns/name` (as `kubectl patch` would); watchers get MODIFIED.
    pub fn set(&self, ns: &str, name: &str, key: &str, value: &str) -> u64 {
        let mut data = self.data(ns, name).unwrap_or_default();
        data.insert(key.to_string(), value.to_string());
        let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.put(ns, name, &pairs)
    }

    /// Deletes Secret `ns/name`; watchers get DELETED.
    pub fn delete(&self, ns: &str, name: &str) {
        let mut s = self.inner();
        s.rv += 1;
        if let Some(mut object) = s.secrets.remove(&(ns.into(), name.into())) {
            object["metadata"]["resourceVersion"] = s.rv.to_string().into();
            s.notify("DELETED", ns, name, &object);
        }
    }

    /// The plain-text data of Secret `ns/name`.
    pub fn data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.inner();
        let object = s.secrets.get(&(ns.into(), name.into()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(
            object["data"]
                .as_object()?
                .iter()
                .map(|(k, v)| {
                    let bytes = b64
                        .decode(v.as_str().unwrap_or_default())
                        .unwrap_or_default();
                    (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
                })
                .collect(),
        )
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch; returns it.
    pub fn bookmark(&self) -> u64 {
        let mut s = self.inner();
        s.rv += 1;
        let rv = s.rv;
        let object = serde_json::json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
        let line = Inner::event_line("BOOKMARK", &object);
        s.watchers
            .retain(|(_, _, tx)| tx.send(Ok(line.clone())).is_ok());
        rv
    }

    /// How many watches are open.
    pub fn watchers(&self) -> usize {
        let mut s = self.inner();
        s.watchers.retain(|(_, _, tx)| !tx.is_closed());
        s.watchers.len()
    }

    /// Breaks every open watch mid-stream (the connection is reset, as when an API server
    /// or a load balancer goes away).
    pub fn drop_watches(&self) {
        let mut s = self.inner();
        for (_, _, tx) in s.watchers.drain(..) {
            let _ = tx.send(Err(std::io::Error::other("connection dropped by the test")));
        }
    }

    /// Ends every open watch cleanly, after what was sent (as the API server does at the
    /// watch's timeout).
    pub fn end_watches(&self) {
        self.inner().watchers.clear();
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone, as
    /// after etcd compaction. Open watches are ended too.
    pub fn compact(&self) {
        let mut s = self.inner();
        s.rv += 1;
        s.oldest_rv = s.rv;
        s.history.clear();
        s.watchers.clear();
    }

    /// Adds a running pod of the chart's `release` and `component` whose container port
    /// `port_name` (`port`) is served at `url` (a real process of the test): the API
    /// server's pod proxy forwards there.
    #[allow(clippy::too_many_arguments)]
    pub fn add_pod(
        &self,
        ns: &str,
        name: &str,
        release: &str,
        component: &str,
        port_name: &str,
        port: u16,
        url: &str,
    ) {
        let labels = [
            ("app.kubernetes.io/name", "telemetry-stack"),
            ("app.kubernetes.io/instance", release),
            ("app.kubernetes.io/component", component),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.inner().pods.push(FakePod {
            ns: ns.into(),
            name: name.into(),
            labels,
            port_name: port_name.into(),
            port,
            url: url.trim_end_matches('/').into(),
        });
    }

    /// Refuses every request with 403 (a service account without the Role) while `on`.
    pub fn forbid(&self, on: bool) {
        self.inner().forbidden = on;
    }

    /// Every request so far: `GET ns/name`, `LIST ns fieldSelector=…`, `PATCH ns/name`,
    /// `WATCH ns rv=… bookmarks=… fieldSelector=…`, `LIST pods …`, `PROXY …`, or
    /// `UNAUTHORIZED …`.
    pub fn requests(&self) -> Vec<String> {
        self.inner().requests.clone()
    }

    /// A kubeconfig file (in `dir`) for this server with namespace `ns`: what a process is
    /// given through `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &std::path::Path, ns: &str) -> std::path::PathBuf {
        let token = self.inner().token.clone();
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A client for this server, as a service would build it.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("url"));
        config.auth_info.token = Some(self.inner().token.clone().into());
        kube::Client::try_from(config).expect("client")
    }
}

fn authorized(s: &mut Inner, headers: &HeaderMap, what: &str) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", s.token));
    if !ok {
        s.requests.push(format!("UNAUTHORIZED {what}"));
        return Some(status(401, "Unauthorized", "Unauthorized"));
    }
    s.requests.push(what.to_string());
    s.forbidden.then(|| {
        status(
            403,
            "Forbidden",
            "secrets is forbidden: User \"system:serviceaccount:x:y\" cannot get resource \"secrets\"",
        )
    })
}

async fn get_secret(
    State(state): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = authorized(&mut s, &headers, &format!("GET {ns}/{name}")) {
        return r;
    }
    match s.secrets.get(&(ns, name.clone())) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
    }
}

async fn patch_secret(
    State(state): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if let Some(r) = authorized(
        &mut s,
        &headers,
        &format!("PATCH {ns}/{name} {content_type}"),
    ) {
        return r;
    }
    if !matches!(
        content_type.as_str(),
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            415,
            "UnsupportedMediaType",
            "the fake serves merge patches only",
        );
    }
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return status(400, "BadRequest", "patch is not JSON");
    };
    let key = (ns.clone(), name.clone());
    let Some(mut object) = s.secrets.get(&key).cloned() else {
        return status(404, "NotFound", &format!("secrets \"{name}\" not found"));
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
        && object["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    if let Some(data) = patch["data"].as_object() {
        for (k, v) in data {
            if v.is_null() {
                object["data"].as_object_mut().map(|d| d.remove(k));
            } else {
                object["data"][k] = v.clone();
            }
        }
    }
    s.rv += 1;
    object["metadata"]["resourceVersion"] = s.rv.to_string().into();
    s.secrets.insert(key, object.clone());
    s.notify("MODIFIED", &ns, &name, &object);
    axum::Json(object).into_response()
}

async fn watch_secrets(
    State(state): State<Arc<Mutex<Inner>>>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    let rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let field = q.get("fieldSelector").cloned().unwrap_or_default();
    let watch = q.get("watch").map(String::as_str) == Some("true");
    let what = if watch {
        format!(
            "WATCH {ns} rv={rv} bookmarks={} fieldSelector={field}",
            q.get("allowWatchBookmarks").map_or("false", String::as_str)
        )
    } else {
        format!("LIST {ns} fieldSelector={field}")
    };
    if let Some(r) = authorized(&mut s, &headers, &what) {
        return r;
    }
    let Some(name) = field.strip_prefix("metadata.name=").map(str::to_string) else {
        return status(
            400,
            "BadRequest",
            "the fake needs fieldSelector=metadata.name=<name>",
        );
    };
    if !watch {
        // A LIST of that one name: the list's resourceVersion is the current one.
        let items: Vec<serde_json::Value> =
            s.secrets.get(&(ns, name)).cloned().into_iter().collect();
        return axum::Json(serde_json::json!({
            "apiVersion": "v1", "kind": "SecretList",
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let from: u64 = rv.parse().unwrap_or(0);
    if from < s.oldest_rv {
        let gone = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", s.oldest_rv),
            "reason": "Expired", "code": 410,
        });
        let _ = tx.send(Ok(Inner::event_line("ERROR", &gone)));
        drop(tx);
    } else {
        for (at, hns, hname, line) in &s.history {
            if *at > from && *hns == ns && *hname == name {
                let _ = tx.send(Ok(Bytes::from(line.clone())));
            }
        }
        s.watchers.push((ns, name, tx));
    }
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

async fn list_pods(
    State(state): State<Arc<Mutex<Inner>>>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    if let Some(r) = authorized(&mut s, &headers, &format!("LIST pods {ns} {selector}")) {
        return r;
    }
    let wanted: Vec<(&str, &str)> = selector
        .split(',')
        .filter_map(|t| t.split_once('='))
        .collect();
    let items: Vec<serde_json::Value> = s
        .pods
        .iter()
        .filter(|p| p.ns == ns && wanted.iter().all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|p| {
            serde_json::json!({
                "metadata": {"name": p.name, "namespace": p.ns, "labels": p.labels},
                "spec": {"containers": [{"name": "main", "ports": [{"name": p.port_name, "containerPort": p.port}]}]},
                "status": {"phase": "Running"},
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn proxy_pod(
    State(state): State<Arc<Mutex<Inner>>>,
    Path((ns, pod, rest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let url = {
        let mut s = state.lock().unwrap();
        if let Some(r) = authorized(&mut s, &headers, &format!("PROXY {ns}/{pod}/{rest}")) {
            return r;
        }
        let (name, port) = pod.split_once(':').unwrap_or((pod.as_str(), ""));
        match s.pods.iter().find(|p| p.ns == ns && p.name == name) {
            Some(p) if port == p.port.to_string() => format!("{}/{rest}", p.url),
            Some(_) => return status(503, "ServiceUnavailable", "no such port on the pod"),
            None => return status(404, "NotFound", &format!("pods \"{name}\" not found")),
        }
    };
    let mut request = reqwest::Client::new().get(&url);
    if let Some(key) = headers.get("x-api-key") {
        request = request.header("x-api-key", key.as_bytes());
    }
    match request.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            )
                .into_response()
        }
        Err(e) => status(
            503,
            "ServiceUnavailable",
            &format!("error trying to reach service: {e}"),
        ),
    }
}
