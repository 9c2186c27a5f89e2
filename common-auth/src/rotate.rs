//! `api rotate-secrets`: the seed's "complete secret rotation", through the Kubernetes API
//! and without restarts.
//!
//! 1. Reads the release's Secret (`<release>-telemetry-stack-auth`).
//! 2. Makes strong new values (32 random bytes as 64 hex digits, what `openssl rand -hex 32`
//!    makes) for the API key and/or the service token.
//! 3. Patches the Secret in one merge patch, guarded by the resourceVersion it read (a Secret
//!    changed meanwhile is not overwritten): the replaced service token is prepended to
//!    `service-token-previous` with its retirement time (now + `--grace`), so records it
//!    signed stay verifiable and nothing signed with it after the rotation's grace is.
//! 4. Prints what changed by fingerprint (first 8 hex digits of SHA-256), never a value.
//! 5. Waits until every running component uses the new values: each api pod's and collector
//!    pod's `/metrics` (read through the API server's pod proxy) shows the new fingerprints
//!    (`api_secret_info`, `collector_secret_info`), the streamer holds the new token
//!    (`streamer_secret_info`, on its own `/metrics`) and every node's newest record is signed
//!    with it (`streamer_signer_info`).
//!
//! The services pick the change up by themselves (hot reload), so nothing is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use secrecy::{ExposeSecret, SecretString};

use crate::{AuthError, fingerprint};

/// Which secrets to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Which {
    /// The API key and the service token.
    Both,
    /// The API key only.
    ApiKey,
    /// The service token only.
    ServiceToken,
}

/// Flags of `api rotate-secrets`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RotateArgs {
    /// The Helm release: its Secret is `<release>-telemetry-stack-auth` and its pods carry
    /// `app.kubernetes.io/instance=<release>`.
    #[cfg_attr(feature = "cli", arg(long))]
    pub release: String,
    /// The Secret, when not the chart's name for the release (seed Option 2).
    #[cfg_attr(feature = "cli", arg(long))]
    pub secret_name: Option<String>,
    /// The release's namespace (default: the kubeconfig's, or the service account's).
    #[cfg_attr(feature = "cli", arg(long, short = 'n'))]
    pub namespace: Option<String>,
    /// What to rotate.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "both"))]
    pub only: Which,
    /// The services' grace period (chart `rotation.gracePeriod`): the replaced service token
    /// is retired this long from now, after which nothing it signs is accepted.
    #[cfg_attr(feature = "cli", arg(long, default_value = "30m", value_parser = humantime::parse_duration))]
    pub grace: Duration,
    /// How long to wait for every component to use the new values (0s: do not wait).
    #[cfg_attr(feature = "cli", arg(long, default_value = "10m", value_parser = humantime::parse_duration))]
    pub wait: Duration,
}

/// The chart's Secret name for `release` (the seed's `<release>-telemetry-stack-auth`).
pub fn secret_name(release: &str) -> String {
    format!("{release}-telemetry-stack-auth")
}

/// A strong new secret: 32 random bytes as 64 lowercase hex digits.
fn generate() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    SecretString::from(s)
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
}

fn failed(secret: &str, server: &str, why: impl Into<String>, e: Option<kube::Error>) -> AuthError {
    AuthError::Kubernetes {
        secret: secret.to_string(),
        server: server.to_string(),
        why: why.into(),
        source: e.map(Box::new),
    }
}

/// Runs the rotation with the kubeconfig (or in-cluster) client, writing what it does to
/// `out`.
///
/// # Errors
/// No cluster configuration, a Secret that cannot be read or patched (including one changed
/// by someone else meanwhile), or components still on the old values after `--wait`.
pub async fn run(
    args: &RotateArgs,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), AuthError> {
    let config = kube::Config::infer().await.map_err(|e| {
        failed(
            "?",
            "(none)",
            format!("no kubeconfig and no in-cluster service account: {e}"),
            None,
        )
    })?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| failed("?", &server, "cannot build a client", Some(e)))?;
    run_with(client, &namespace, &server, args, out).await
}

/// [`run`] with a given client (whose API server is `server`, for messages).
///
/// # Errors
/// See [`run`].
pub async fn run_with(
    client: kube::Client,
    namespace: &str,
    server: &str,
    args: &RotateArgs,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), AuthError> {
    let name = args
        .secret_name
        .clone()
        .unwrap_or_else(|| secret_name(&args.release));
    let where_ = format!("{namespace}/{name}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let current = secrets.get(&name).await.map_err(|e| {
        let why = match &e {
            kube::Error::Api(s) if s.code == 404 => "it does not exist".to_string(),
            kube::Error::Api(s) if s.code == 403 => {
                "forbidden: rotating needs `get` and `patch` on this Secret".to_string()
            }
            _ => "cannot read it".to_string(),
        };
        failed(&where_, server, why, Some(e))
    })?;
    let rv = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // The replaced token retires after the longest grace period the running pods use
    // (SECRET_GRACE_PERIOD), or --grace if longer: none of them may still sign with it then.
    let grace = deployed_grace(&pods, &args.release)
        .await
        .map_or(args.grace, |g| g.max(args.grace));
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut expect = Expect::default();
    let now = SystemTime::now();
    if matches!(args.only, Which::Both | Which::ApiKey) {
        let new = generate();
        let old = text(&current, "api-key")
            .map_or_else(|| "(none)".to_string(), |v| fingerprint(v.as_bytes()));
        let fp = fingerprint(new.expose_secret().as_bytes());
        lines.push(format!("  api-key        {old} → {fp}"));
        expect.api_key = Some(new.clone());
        data.insert(
            "api-key".into(),
            ByteString(new.expose_secret().as_bytes().to_vec()),
        );
    }
    if matches!(args.only, Which::Both | Which::ServiceToken) {
        let new = generate();
        let old = text(&current, "service-token");
        let fp = fingerprint(new.expose_secret().as_bytes());
        let previous = text(&current, "service-token-previous").unwrap_or_default();
        let mut kept: Vec<&str> = previous.lines().filter(|l| !l.trim().is_empty()).collect();
        let retire_at = humantime::format_rfc3339_seconds(now + grace).to_string();
        let retired_line;
        let note = match &old {
            Some(old) => {
                kept.retain(|l| l.split_whitespace().next() != Some(old.as_str()));
                retired_line = format!("{old} {retire_at}");
                kept.insert(0, &retired_line);
                format!(
                    " (the old one retired at {retire_at}, kept in service-token-previous with {} other{})",
                    kept.len() - 1,
                    if kept.len() == 2 { "" } else { "s" }
                )
            }
            None => String::new(),
        };
        let old_fp = old
            .as_deref()
            .map_or_else(|| "(none)".to_string(), |v| fingerprint(v.as_bytes()));
        lines.push(format!("  service-token  {old_fp} → {fp}{note}"));
        expect.token = Some(fp);
        data.insert(
            "service-token".into(),
            ByteString(new.expose_secret().as_bytes().to_vec()),
        );
        let mut joined = kept.join("\n");
        joined.push('\n');
        data.insert(
            "service-token-previous".into(),
            ByteString(joined.into_bytes()),
        );
    }
    let patch = Secret {
        metadata: kube::api::ObjectMeta {
            resource_version: Some(rv.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let patched = secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            let why = match &e {
                kube::Error::Api(s) if s.code == 409 => {
                    "it changed while this command ran: nothing was written; run it again"
                        .to_string()
                }
                kube::Error::Api(s) if s.code == 403 => {
                    "forbidden: rotating needs `get` and `patch` on this Secret".to_string()
                }
                _ => "cannot patch it".to_string(),
            };
            failed(&where_, server, why, Some(e))
        })?;
    let _ = writeln!(
        out,
        "rotated Secret {where_} (resourceVersion {rv} → {}):",
        patched.metadata.resource_version.unwrap_or_default()
    );
    for l in &lines {
        let _ = writeln!(out, "{l}");
    }
    if args.wait.is_zero() {
        let _ = writeln!(
            out,
            "not waiting (--wait 0s): the services pick the new values up by themselves"
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "waiting up to {} for every component to use them (senders switch tokens after their signing delay)…",
        humantime::format_duration(args.wait)
    );
    let started = Instant::now();
    let mut last_pending: Option<BTreeSet<String>> = None;
    loop {
        let (pending, seen) = check(&client, &pods, namespace, &args.release, &expect).await;
        if pending.is_empty() {
            let _ = writeln!(
                out,
                "every component uses the new values ({seen}) after {}",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            return Ok(());
        }
        if last_pending.as_ref() != Some(&pending) {
            let _ = writeln!(
                out,
                "  waiting for: {}",
                pending.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            last_pending = Some(pending.clone());
        }
        if started.elapsed() >= args.wait {
            return Err(failed(
                &where_,
                server,
                format!(
                    "the Secret is rotated, but after {} these still use the old values: {}",
                    humantime::format_duration(args.wait),
                    pending.into_iter().collect::<Vec<_>>().join(", ")
                ),
                None,
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fingerprints every component should show.
#[derive(Debug, Default)]
struct Expect {
    /// The new API key itself: each api pod is asked whether it accepts it (a fingerprint
    /// of a possibly human-chosen key is not published on the open `/metrics`).
    api_key: Option<SecretString>,
    /// The new service token's fingerprint.
    token: Option<String>,
}

/// `name{labels} value` lines of `metric` in Prometheus text, as label maps.
fn series(text: &str, metric: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, _)) = rest.split_once('}') else {
            continue;
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        out.push(map);
    }
    out
}

fn shows(text: &str, metric: &str, secret: &str, want: &str) -> bool {
    series(text, metric).iter().any(|l| {
        l.get("secret").map(String::as_str) == Some(secret)
            && l.get("fingerprint").map(String::as_str) == Some(want)
    })
}

/// What is still pending (by component), and a summary of what was checked.
async fn check(
    client: &kube::Client,
    pods: &Api<Pod>,
    namespace: &str,
    release: &str,
    expect: &Expect,
) -> (BTreeSet<String>, String) {
    let mut pending = BTreeSet::new();
    let selector =
        format!("app.kubernetes.io/name=telemetry-stack,app.kubernetes.io/instance={release}");
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(l) => l,
        Err(e) => {
            pending.insert(format!("the pod list ({e})"));
            return (pending, String::new());
        }
    };
    let (mut apis, mut collectors, mut nodes, mut collectors_unreachable) = (0, 0, 0, 0);
    let mut streamer_seen = false;
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let component = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/component"))
            .cloned()
            .unwrap_or_default();
        let port_name = match component.as_str() {
            "api" => "http",
            "collector" | "streamer" => "metrics",
            _ => continue,
        };
        if !running {
            continue;
        }
        let port = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(port_name)))
            .map_or(
                match component.as_str() {
                    "api" => 8080,
                    "streamer" => 9401,
                    _ => 9400,
                },
                |p| p.container_port,
            );
        let proxy = format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy");
        let Some(text) = proxy_text(client, &format!("{proxy}/metrics")).await else {
            match component.as_str() {
                "api" => {
                    pending.insert(format!(
                        "api/{name} (metrics unreachable through the pod proxy)"
                    ));
                }
                "streamer" => {
                    pending.insert(format!(
                        "streamer/{name} (metrics unreachable through the pod proxy: with \
                         networkPolicy.metricsFrom set, list the API server's address in \
                         networkPolicy.apiServerTo)"
                    ));
                }
                // Its records say which token it signs with (streamer_signer_info): a
                // collector whose port the NetworkPolicy closes to the API server is still
                // checked.
                _ => collectors_unreachable += 1,
            }
            continue;
        };
        if component == "api" {
            apis += 1;
            if let Some(k) = &expect.api_key
                && !accepts(
                    client,
                    &format!("{proxy}/api/v1/gpus/GPU-rotate-secrets-check"),
                    k,
                )
                .await
            {
                pending.insert(format!("api/{name} (api-key)"));
            }
            if let Some(t) = &expect.token
                && !shows(&text, "api_secret_info", "service-token", t)
            {
                pending.insert(format!("api/{name} (service-token)"));
            }
        } else if component == "collector" {
            collectors += 1;
            if let Some(t) = &expect.token
                && !shows(&text, "collector_secret_info", "service-token", t)
            {
                pending.insert(format!("collector/{name} (service-token)"));
            }
        }
        // The streamer's own /metrics (an embedded api shows the same series itself).
        if let Some(t) = &expect.token
            && !series(&text, "streamer_secret_info").is_empty()
        {
            streamer_seen = true;
            if !shows(&text, "streamer_secret_info", "service-token", t) {
                pending.insert(format!("{component}/{name} (service-token)"));
            }
            for s in series(&text, "streamer_signer_info") {
                nodes += 1;
                if s.get("fingerprint") != Some(t) {
                    pending.insert(format!(
                        "node {} (records signed with {})",
                        s.get("node").cloned().unwrap_or_default(),
                        s.get("fingerprint").cloned().unwrap_or_default()
                    ));
                }
            }
        }
    }
    if apis == 0 {
        pending.insert(format!("an api pod (none running with {selector})"));
    }
    if expect.token.is_some() && !streamer_seen {
        pending.insert(format!(
            "the streamer (no running streamer pod of {selector} shows streamer_secret_info)"
        ));
    }
    let unreachable = if collectors_unreachable > 0 {
        format!(
            " ({collectors_unreachable} more not reachable through the pod proxy: checked by their records)"
        )
    } else {
        String::new()
    };
    let summary = format!(
        "{apis} api pod{}, {collectors} collector pod{}{unreachable}, the streamer, {nodes} node{} signing",
        if apis == 1 { "" } else { "s" },
        if collectors == 1 { "" } else { "s" },
        if nodes == 1 { "" } else { "s" },
    );
    (pending, summary)
}

/// How long one request through the pod proxy may take.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` on the API server (a pod proxy path): the body of a 2xx answer, else `None`.
async fn proxy_text(client: &kube::Client, path: &str) -> Option<String> {
    let req = http::Request::get(path).body(Vec::new()).ok()?;
    tokio::time::timeout(PROXY_TIMEOUT, client.request_text(req))
        .await
        .ok()?
        .ok()
}

/// Whether the api behind pod proxy `path` accepts API key `key`: anything but 401 (the
/// check's GPU does not exist: 404 with a good key).
async fn accepts(client: &kube::Client, path: &str, key: &SecretString) -> bool {
    let Ok(req) = http::Request::get(path)
        .header("x-api-key", key.expose_secret())
        .body(kube::client::Body::from(Vec::new()))
    else {
        return false;
    };
    match tokio::time::timeout(PROXY_TIMEOUT, client.send(req)).await {
        Ok(Ok(res)) => {
            res.status() != http::StatusCode::UNAUTHORIZED && !res.status().is_server_error()
        }
        _ => false,
    }
}

/// The longest `SECRET_GRACE_PERIOD` the release's running api and streamer pods were
/// started with, if any says one.
async fn deployed_grace(pods: &Api<Pod>, release: &str) -> Option<Duration> {
    let selector =
        format!("app.kubernetes.io/name=telemetry-stack,app.kubernetes.io/instance={release}");
    let list = tokio::time::timeout(
        PROXY_TIMEOUT,
        pods.list(&ListParams::default().labels(&selector)),
    )
    .await
    .ok()?
    .ok()?;
    list.items
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == "SECRET_GRACE_PERIOD")
        .filter_map(|e| humantime::parse_duration(e.value.as_deref()?).ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_from_prometheus_text_by_label() {
        let text = "# TYPE api_secret_info gauge\napi_secret_info{secret=\"api-key\",fingerprint=\"1a2b3c4d\"} 1\napi_secret_info_other{secret=\"x\"} 1\nstreamer_signer_info{node=\"gpu-1\",fingerprint=\"00ff00ff\"} 1\n";
        assert!(shows(text, "api_secret_info", "api-key", "1a2b3c4d"));
        assert!(!shows(text, "api_secret_info", "api-key", "1a2b3c4e"));
        assert!(!shows(text, "api_secret_info", "x", "1a2b3c4d"));
        let s = series(text, "streamer_signer_info");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["node"], "gpu-1");
        assert_eq!(s[0]["fingerprint"], "00ff00ff");
    }

    #[test]
    fn generated_secrets_are_64_hex_digits_strong_and_different() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.expose_secret().len(), 64);
        assert!(a.expose_secret().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(crate::weakness(a.expose_secret()), None);
    }
}
