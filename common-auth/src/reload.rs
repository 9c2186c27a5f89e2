//! The secret settings every binary shares ([`SecretArgs`]): where secrets come from
//! ([`SourceKind`]) and how a rotation rolls out. With feature `cli` they are clap flags,
//! each with its env var.
//!
//! Kubernetes updates a mounted Secret in place (an atomic symlink swap) when it changes, and
//! the Kubernetes API announces the change on a watch; env vars keep the value the pod
//! started with. On a change a service rotates its [`crate::KeyRing`]: the new value is
//! accepted at once, the previous one for the grace period, and senders switch to the new
//! one after the signing delay (see [`crate::RotationPolicy`]). No restart is needed.

use std::path::PathBuf;
use std::time::Duration;

use crate::{RotationPolicy, SourceKind};

/// Settings shared by every binary: where the secrets come from and how rotation rolls out.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SecretArgs {
    /// Where secrets come from: `env` (API_KEY / SERVICE_TOKEN, read once), `mount` (the
    /// Secret mounted as --secret-dir, re-read for rotations; env is the fallback for a
    /// missing file) or `kubernetes` (the Secret --secret-name read and watched through the
    /// Kubernetes API with the pod's service account). Default: `mount` when --secret-dir is
    /// given, else `env`.
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_SOURCE", value_enum))]
    pub secret_source: Option<SourceKind>,
    /// Directory holding the mounted secret (files `api-key`, `service-token`). Read first,
    /// and re-read for rotation.
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_DIR"))]
    pub secret_dir: Option<PathBuf>,
    /// The Secret to read with `--secret-source kubernetes` (keys `api-key`,
    /// `service-token`, `service-token-previous`).
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_NAME"))]
    pub secret_name: Option<String>,
    /// Its namespace (default: the service account's namespace, or the kubeconfig's).
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_NAMESPACE"))]
    pub secret_namespace: Option<String>,
    /// How long to retry the first read of the Secret through the Kubernetes API when the
    /// API server cannot be reached (a missing Secret or a refused read stops at once).
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_STARTUP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub secret_startup_timeout: Duration,
    /// How often to re-read the secret directory for a rotated value (0s: never).
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration))]
    pub secret_reload_interval: Duration,
    /// After a rotation, how long the previous value stays accepted.
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_GRACE_PERIOD", default_value = "30m", value_parser = humantime::parse_duration))]
    pub secret_grace: Duration,
    /// After a rotation, how long senders keep using the previous value (so receivers see
    /// the new one first).
    #[cfg_attr(feature = "cli", arg(long, env = "SECRET_SIGNING_DELAY", default_value = "2m", value_parser = humantime::parse_duration))]
    pub secret_signing_delay: Duration,
    /// Accept secrets shorter than 16 characters or equal to a placeholder from the docs
    /// (throwaway demos only; a weak value is otherwise refused at start and on rotation).
    #[cfg_attr(feature = "cli", arg(long, env = "ALLOW_WEAK_SECRETS"))]
    pub allow_weak_secrets: bool,
}

impl Default for SecretArgs {
    fn default() -> Self {
        let p = RotationPolicy::default();
        Self {
            secret_source: None,
            secret_dir: None,
            secret_name: None,
            secret_namespace: None,
            secret_startup_timeout: Duration::from_secs(30),
            secret_reload_interval: Duration::from_secs(10),
            secret_grace: p.grace,
            secret_signing_delay: p.signing_delay,
            allow_weak_secrets: false,
        }
    }
}

impl SecretArgs {
    /// The rotation policy these flags describe.
    pub fn policy(&self) -> RotationPolicy {
        RotationPolicy {
            grace: self.secret_grace,
            signing_delay: self.secret_signing_delay,
        }
    }

    /// The source these settings choose: `--secret-source`, else `mount` with a directory,
    /// else `env`.
    pub fn kind(&self) -> SourceKind {
        self.secret_source.unwrap_or(if self.secret_dir.is_some() {
            SourceKind::Mount
        } else {
            SourceKind::Env
        })
    }
}
