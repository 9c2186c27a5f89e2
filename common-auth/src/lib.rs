//! Secrets of the telemetry stack and everything that checks them.
//!
//! Two secrets exist (see `shared/seed/kubernetes-secrets.md`): the **API key** that people
//! and tools send to the REST API, and the **service token** that services use among
//! themselves (gRPC between api and streamer, HMAC signatures on Kafka records).
//!
//! - [`secret`]: loading a secret from an env value or a mounted secret directory
//!   ([`SecretSpec`], [`load_secret`]); a missing or empty secret is a one-line
//!   [`AuthError::Missing`] naming where it looked.
//! - [`KeyRing`]: the accepted values of one secret (current, plus the previous one during a
//!   rotation grace period), compared in constant time; [`RotationPolicy`] says how long
//!   the previous value is accepted and how long senders keep using it.
//! - [`reload`]: [`SecretArgs`] (the shared secret flags) and hot reload of rotated values
//!   from the mounted secret directory.
//! - Record signatures (HMAC-SHA256 keyed by the service token) are part of the wire format:
//!   `telemetry_wire::signing`.
//! - [`http`]: the axum middleware that requires the API key.
//! - [`grpc`]: tonic interceptors that require / attach the service token.
//!
//! Nothing here logs or formats a secret value: they are [`secrecy::SecretString`]s.

pub mod grpc;
pub mod http;
mod keyring;
pub mod reload;
pub mod secret;

pub use keyring::{KeyRing, RetiredAt, RetiredValue, RotationPolicy, Verifying};
pub use reload::SecretArgs;
pub use secret::{SecretSpec, load_secret, load_secret_from, weakness};

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
