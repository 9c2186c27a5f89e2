//! The Secret read and watched through the Kubernetes API (`--secret-source kubernetes`).
//!
//! Startup reads the Secret once (a LIST of that one name, so the resourceVersion it gets
//! is the API server's current one), retrying an unreachable API server for
//! `--secret-startup-timeout`; a Secret that does not exist or a read the service account may
//! not make stops at once, with one line. Then [`KubeSecret::follow`] watches that one
//! Secret (`fieldSelector=metadata.name=…`, from the resourceVersion last seen, bookmarks on)
//! for as long as the process runs:
//! - a change (ADDED/MODIFIED) is delivered at once;
//! - a BOOKMARK only moves the resourceVersion forward;
//! - the server ending the watch (its 290 s timeout) re-watches at once; a dropped
//!   connection, a watch silent for 320 s (a connection that died without a reset), a
//!   request unanswered for 30 s or an error re-watches from the last resourceVersion after
//!   a backoff (0.5 s doubling to 30 s, reset by progress);
//! - a 410 Gone (the resourceVersion fell out of the API server's window) LISTs the Secret
//!   again and watches from the list's resourceVersion;
//! - DELETED keeps the current values (a Secret being replaced must not lock anyone out).
//!
//! A transient API failure is logged (without any value) and retried; it never stops the
//! service. The Role the chart grants is `get`, `list` and `watch` on that one Secret (a
//! list or watch of one name is authorized against `resourceNames`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use secrecy::SecretString;

use crate::source::SecretView;
use crate::{AuthError, SecretSpec};

/// How long the API server keeps one watch open (`timeoutSeconds`).
const WATCH_SECONDS: u32 = 290;
/// No event, bookmark or end for this long: the connection is dead.
const STALL_TIMEOUT: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 30);
/// How long a LIST or the start of a watch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A watch the server ends after at least this long is a normal end, not a failure.
const QUIET_WATCH: Duration = Duration::from_secs(10);

/// One Secret in the Kubernetes API, and its values as last read.
pub struct KubeSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    server: String,
    current: Mutex<Arc<Snapshot>>,
}

impl std::fmt::Debug for KubeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecret")
            .field("secret", &self.describe())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A Secret's data at one resourceVersion. A value that is not UTF-8 is kept as `None` and
/// reported when read.
#[derive(Debug)]
pub struct Snapshot {
    secret: String,
    resource_version: String,
    data: BTreeMap<String, Option<SecretString>>,
}

impl Snapshot {
    fn of(secret: &str, s: &Secret) -> Self {
        let data = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| {
                let text = String::from_utf8(v.0.clone()).ok().map(SecretString::from);
                (k.clone(), text)
            })
            .collect();
        Self {
            secret: secret.to_string(),
            resource_version: s.metadata.resource_version.clone().unwrap_or_default(),
            data,
        }
    }

    /// The resourceVersion this snapshot was read at.
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }
}

impl SecretView for Snapshot {
    fn place(&self, spec: &SecretSpec) -> String {
        format!("key {} of Secret {}", spec.file_name, self.secret)
    }

    fn read(&self, spec: &SecretSpec) -> Result<Option<SecretString>, AuthError> {
        match self.data.get(spec.file_name) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v.clone())),
            Some(None) => Err(AuthError::Config(format!(
                "{} is not UTF-8 text",
                self.place(spec)
            ))),
        }
    }
}

impl KubeSecret {
    /// Connects with the pod's service account (or the kubeconfig: `KUBECONFIG`,
    /// `~/.kube/config`) and reads the Secret `name` in `namespace` (default: the service
    /// account's namespace).
    ///
    /// # Errors
    /// [`AuthError::Kubernetes`]: no cluster configuration, a Secret that does not exist, a
    /// forbidden read, or an API server unreachable for `startup_timeout`.
    pub async fn open(
        namespace: Option<&str>,
        name: &str,
        startup_timeout: Duration,
    ) -> Result<Self, AuthError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| AuthError::Kubernetes {
                secret: format!("{}/{name}", namespace.unwrap_or("?")),
                server: "(none)".into(),
                why: format!("no in-cluster service account and no kubeconfig: {e}"),
                source: None,
            })?;
        let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_string);
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| AuthError::Kubernetes {
            secret: format!("{namespace}/{name}"),
            server: server.clone(),
            why: "cannot build a client".into(),
            source: Some(Box::new(e)),
        })?;
        Self::read_with(client, &namespace, name, &server, startup_timeout).await
    }

    /// Reads the Secret through `client` (whose API server is `server`, for messages).
    ///
    /// # Errors
    /// See [`KubeSecret::open`].
    pub async fn read_with(
        client: kube::Client,
        namespace: &str,
        name: &str,
        server: &str,
        startup_timeout: Duration,
    ) -> Result<Self, AuthError> {
        let mut me = Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            server: server.to_string(),
            current: Mutex::new(Arc::new(Snapshot {
                secret: String::new(),
                resource_version: String::new(),
                data: BTreeMap::new(),
            })),
        };
        let deadline = tokio::time::Instant::now() + startup_timeout;
        let mut backoff = Backoff::default();
        let snapshot = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match me
                .read(left.clamp(Duration::from_secs(1), REQUEST_TIMEOUT))
                .await
            {
                Ok(Some(snap)) => break snap,
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let code = error.as_ref().and_then(status_code);
            let permanent = error.is_none() || matches!(code, Some(401 | 403));
            if permanent || tokio::time::Instant::now() >= deadline {
                let why = match (&error, code) {
                    (None, _) => "it does not exist (create it, or point --secret-name / --secret-namespace at it)".to_string(),
                    (_, Some(403)) => "forbidden: the service account needs `get`, `list` and `watch` on this Secret (the chart's secret-reader Role)".to_string(),
                    (_, Some(401)) => "unauthorized: the service account token was refused".to_string(),
                    _ => format!("unreachable for {startup_timeout:?}"),
                };
                return Err(AuthError::Kubernetes {
                    secret: me.describe(),
                    server: me.server.clone(),
                    why,
                    source: error.map(Box::new),
                });
            }
            if let Some(e) = &error {
                tracing::warn!(error = %e, secret = %me.describe(), "cannot read the Secret yet; retrying");
            }
            tokio::time::sleep(backoff.next()).await;
        };
        me.current = Mutex::new(Arc::new(snapshot));
        Ok(me)
    }

    /// Reads the Secret with a LIST of that one name (`fieldSelector=metadata.name=…`):
    /// the list's resourceVersion is the API server's current one, so a watch from it never
    /// starts outside the server's window (a Secret's own resourceVersion may be days old).
    /// `None` when it does not exist.
    async fn read(&self, timeout: Duration) -> Result<Option<Snapshot>, kube::Error> {
        let params = ListParams::default().fields(&format!("metadata.name={}", self.name));
        let list = match tokio::time::timeout(timeout, self.api.list(&params)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(kube::Error::Service(
                    format!("no answer within {timeout:?}").into(),
                ));
            }
        };
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        Ok(list.items.first().map(|s| {
            let mut snap = Snapshot::of(&self.describe(), s);
            if !rv.is_empty() {
                snap.resource_version = rv;
            }
            snap
        }))
    }

    /// `namespace/name`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The values as last read.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn store(&self, s: &Secret) -> Arc<Snapshot> {
        let snap = Arc::new(Snapshot::of(&self.describe(), s));
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snap.clone();
        snap
    }

    /// Watches the Secret for ever, calling `on_change` with each new version of its values
    /// (see the module docs for how errors, bookmarks and 410 are handled). Never returns.
    pub async fn follow(&self, mut on_change: impl FnMut(&Snapshot)) {
        let mut rv = self.snapshot().resource_version.clone();
        let mut backoff = Backoff::default();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(WATCH_SECONDS);
        loop {
            let mut gone = false;
            let mut progressed = false;
            let started = tokio::time::Instant::now();
            let opened = tokio::time::timeout(REQUEST_TIMEOUT, self.api.watch(&params, &rv)).await;
            match opened {
                Err(_) => {
                    tracing::warn!(secret = %self.describe(), "no answer to the Secret's watch; retrying");
                }
                Ok(Err(e)) if status_code(&e) == Some(410) => gone = true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, secret = %self.describe(), "cannot watch the Secret; retrying");
                }
                Ok(Ok(stream)) => {
                    let mut stream = stream.boxed();
                    loop {
                        // The server ends a watch after WATCH_SECONDS; a connection that dies
                        // without a reset would otherwise be waited on for ever.
                        let next = tokio::time::timeout(STALL_TIMEOUT, stream.try_next()).await;
                        match next {
                            Err(_) => {
                                tracing::warn!(secret = %self.describe(), "the Secret's watch went silent; re-watching");
                                break;
                            }
                            Ok(Ok(Some(WatchEvent::Added(s) | WatchEvent::Modified(s)))) => {
                                progressed = true;
                                let snap = self.store(&s);
                                rv.clone_from(&snap.resource_version);
                                tracing::info!(secret = %self.describe(), resource_version = %rv, "Secret changed");
                                on_change(&snap);
                            }
                            Ok(Ok(Some(WatchEvent::Deleted(s)))) => {
                                progressed = true;
                                if let Some(v) = s.metadata.resource_version {
                                    rv = v;
                                }
                                tracing::warn!(secret = %self.describe(), "Secret deleted; the current values stay in use");
                            }
                            Ok(Ok(Some(WatchEvent::Bookmark(b)))) => {
                                progressed = true;
                                rv = b.metadata.resource_version;
                            }
                            Ok(Ok(Some(WatchEvent::Error(status)))) => {
                                if status.code == 410 {
                                    gone = true;
                                } else {
                                    tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, secret = %self.describe(), "the Secret's watch failed; re-watching");
                                }
                                break;
                            }
                            Ok(Ok(None)) => {
                                // Ended by the server (its timeout): a quiet watch that lasted
                                // is no failure, re-watch at once.
                                if started.elapsed() >= QUIET_WATCH {
                                    progressed = true;
                                }
                                break;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, secret = %self.describe(), "the Secret's watch dropped; re-watching");
                                break;
                            }
                        }
                    }
                }
            }
            if gone {
                tracing::info!(secret = %self.describe(), resource_version = %rv, "resourceVersion expired (410 Gone); reading the Secret again");
                if let Some(fresh) = self.read_again(&mut on_change, &mut backoff).await {
                    rv = fresh;
                }
            } else if progressed {
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }

    /// LISTs the Secret until that works; delivers it; returns the list's resourceVersion
    /// (the server's current one: the next watch starts inside its window). A Secret that
    /// is gone keeps the values and is looked for again. Backs off between failed reads and
    /// after every read, so a server answering 410 again at once is not hammered.
    async fn read_again(
        &self,
        on_change: &mut impl FnMut(&Snapshot),
        backoff: &mut Backoff,
    ) -> Option<String> {
        loop {
            match self.read(REQUEST_TIMEOUT).await {
                Ok(Some(snap)) => {
                    let snap = Arc::new(snap);
                    *self
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = snap.clone();
                    on_change(&snap);
                    tokio::time::sleep(backoff.next()).await;
                    return Some(snap.resource_version.clone());
                }
                Ok(None) => {
                    tracing::warn!(secret = %self.describe(), "the Secret does not exist; the current values stay in use");
                }
                Err(e) => {
                    tracing::warn!(error = %e, secret = %self.describe(), "cannot read the Secret; retrying");
                }
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }
}

/// The HTTP status an API error carries, if any.
fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Retry delays: 0.5 s doubling to 30 s, back to 0.5 s after progress.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(500))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        d
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}
