//! The Secret read and watched through the Kubernetes API (`--secret-source kubernetes`).
//!
//! Startup reads the Secret once (GET), retrying an unreachable API server for
//! `--secret-startup-timeout`; a Secret that does not exist or a read the service account may
//! not make stops at once, with one line. Then [`KubeSecret::follow`] watches that one
//! Secret (`fieldSelector=metadata.name=…`, from the resourceVersion last seen, bookmarks on)
//! for as long as the process runs:
//! - a change (ADDED/MODIFIED) is delivered at once;
//! - a BOOKMARK only moves the resourceVersion forward;
//! - the server ending the watch (its timeout), a dropped connection or an error re-watches
//!   from the last resourceVersion, after a backoff (0.5 s doubling to 30 s) when nothing
//!   came through;
//! - a 410 Gone (the resourceVersion fell out of the API server's window) reads the Secret
//!   again and watches from there;
//! - DELETED keeps the current values (a Secret being replaced must not lock anyone out).
//!
//! A transient API failure is logged (without any value) and retried; it never stops the
//! service. The Role the chart grants is `get` and `watch` on that one Secret.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use secrecy::SecretString;

use crate::source::SecretView;
use crate::{AuthError, SecretSpec};

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
            match me.api.get(name).await {
                Ok(s) => break Snapshot::of(&me.describe(), &s),
                Err(e) => {
                    let code = status_code(&e);
                    let permanent = matches!(code, Some(401 | 403 | 404));
                    if permanent || tokio::time::Instant::now() >= deadline {
                        let why = match code {
                            Some(404) => "it does not exist (create it, or point --secret-name / --secret-namespace at it)".to_string(),
                            Some(403) => "forbidden: the service account needs `get` and `watch` on this Secret (the chart's secret-reader Role)".to_string(),
                            Some(401) => "unauthorized: the service account token was refused".to_string(),
                            _ => format!("unreachable for {startup_timeout:?}"),
                        };
                        return Err(AuthError::Kubernetes {
                            secret: me.describe(),
                            server: me.server.clone(),
                            why,
                            source: Some(Box::new(e)),
                        });
                    }
                    tracing::warn!(error = %e, secret = %me.describe(), "cannot read the Secret yet; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        };
        me.current = Mutex::new(Arc::new(snapshot));
        Ok(me)
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
            .timeout(290);
        loop {
            let mut gone = false;
            let mut progressed = false;
            match self.api.watch(&params, &rv).await {
                Err(e) if status_code(&e) == Some(410) => gone = true,
                Err(e) => {
                    tracing::warn!(error = %e, secret = %self.describe(), "cannot watch the Secret; retrying");
                }
                Ok(stream) => {
                    let mut stream = stream.boxed();
                    loop {
                        match stream.try_next().await {
                            Ok(Some(WatchEvent::Added(s) | WatchEvent::Modified(s))) => {
                                progressed = true;
                                let snap = self.store(&s);
                                rv.clone_from(&snap.resource_version);
                                tracing::info!(secret = %self.describe(), resource_version = %rv, "Secret changed");
                                on_change(&snap);
                            }
                            Ok(Some(WatchEvent::Deleted(s))) => {
                                progressed = true;
                                if let Some(v) = s.metadata.resource_version {
                                    rv = v;
                                }
                                tracing::warn!(secret = %self.describe(), "Secret deleted; the current values stay in use");
                            }
                            Ok(Some(WatchEvent::Bookmark(b))) => {
                                progressed = true;
                                rv = b.metadata.resource_version;
                            }
                            Ok(Some(WatchEvent::Error(status))) => {
                                if status.code == 410 {
                                    gone = true;
                                } else {
                                    tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, secret = %self.describe(), "the Secret's watch failed; re-watching");
                                }
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, secret = %self.describe(), "the Secret's watch dropped; re-watching");
                                break;
                            }
                        }
                    }
                }
            }
            if gone {
                tracing::info!(secret = %self.describe(), resource_version = %rv, "resourceVersion expired (410 Gone); reading the Secret again");
                rv = self.read_again(&mut on_change, &mut backoff).await;
            } else if progressed {
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }

    /// GETs the Secret until that works; delivers it; returns its resourceVersion.
    async fn read_again(
        &self,
        on_change: &mut impl FnMut(&Snapshot),
        backoff: &mut Backoff,
    ) -> String {
        loop {
            match self.api.get(&self.name).await {
                Ok(s) => {
                    let snap = self.store(&s);
                    on_change(&snap);
                    backoff.reset();
                    return snap.resource_version.clone();
                }
                Err(e) => {
                    tracing::warn!(error = %e, secret = %self.describe(), "cannot read the Secret; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
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
