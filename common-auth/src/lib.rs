//! Secrets of the telemetry stack and everything that checks them.
//!
//! Two secrets exist (see `shared/seed/kubernetes-secrets.md`): the **API key** that people
//! and tools send to the REST API, and the **service token** that services use among
//! themselves (gRPC between api and streamer, HMAC signatures on Kafka records).
//!
//! - [`secret`]: what a secret is ([`SecretSpec`]), reading one from a mounted secret
//!   directory or an env value ([`load_secret`]), [`weakness`]; a missing or empty secret is
//!   a one-line [`AuthError::Missing`] naming where it looked.
//! - [`source`]: the [`SecretSource`] seam — env, a mounted directory, or (feature
//!   `kubernetes`) the Secret read and watched through the Kubernetes API — and hot reload
//!   of what it delivers into the key rings.
//! - [`KeyRing`]: the accepted values of one secret (current, plus the previous one during a
//!   rotation grace period), compared in constant time; [`RotationPolicy`] says how long
//!   the previous value is accepted and how long senders keep using it.
//! - [`reload`]: [`SecretArgs`], the shared secret settings (clap flags with feature `cli`).
//! - Record signatures (HMAC-SHA256 keyed by the service token) are part of the wire format:
//!   `telemetry_wire::signing`.
//! - `http` (feature `http`): the axum middleware that requires the API key.
//! - `grpc` (feature `grpc`): tonic interceptors that require / attach the service token.
//!
//! The core needs neither axum, tonic, clap nor kube: each is behind its feature.
//!
//! Nothing here logs or formats a secret value: they are [`secrecy::SecretString`]s; logs
//! name a value by its [`fingerprint`] at most.

#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
mod keyring;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod reload;
#[cfg(feature = "kubernetes")]
pub mod rotate;
pub mod secret;
pub mod source;

pub use keyring::{KeyRing, RetiredAt, RetiredValue, RotationPolicy, Verifying};
pub use reload::SecretArgs;
pub use secret::{SecretSpec, load_secret, load_secret_from, weakness};
pub use source::{SecretSource, SourceKind};

/// The first 8 hex digits of the SHA-256 of a credential: enough to tell two apart in an
/// audit log or in `/metrics`, nothing about the credential itself.
pub fn fingerprint(value: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(value);
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A required secret was not found or was empty. The message is one line saying which
    /// secret and every place that was looked at.
    #[error("{name} is missing: {looked}")]
    Missing {
        /// Human name of the secret, e.g. `API key`.
        name: &'static str,
        /// Where it was looked for, e.g. `env API_KEY is unset; /etc/x/api-key: not found`.
        looked: String,
    },
    /// A secret is too weak to guard anything (short, or a placeholder from the docs).
    #[error(
        "{name} from {place} is refused: {why}. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)"
    )]
    Weak {
        /// Human name of the secret.
        name: &'static str,
        /// Where it came from (a file path or `env API_KEY`).
        place: String,
        /// Why it is weak (never the value, except a docs placeholder).
        why: String,
    },
    /// The secret settings contradict each other.
    #[error("{0}")]
    Config(String),
    /// The Secret could not be read through the Kubernetes API (after retrying for the
    /// startup timeout, or at once when it does not exist or access is forbidden).
    #[cfg(feature = "kubernetes")]
    #[error("cannot read Secret {secret} through the Kubernetes API at {server}: {why}")]
    Kubernetes {
        /// `namespace/name`.
        secret: String,
        /// The API server's URL.
        server: String,
        /// What went wrong, and what to do about it.
        why: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<Box<kube::Error>>,
    },
    /// The secret file exists but could not be read.
    #[error("cannot read {name} from {path}: {source}")]
    Read {
        /// Human name of the secret.
        name: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
