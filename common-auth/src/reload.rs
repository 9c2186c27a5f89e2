//! Hot reload of rotated secrets from the mounted secret directory.
//!
//! Kubernetes updates a mounted Secret in place (an atomic symlink swap) when it changes;
//! env vars keep the value the pod started with. So every service re-reads its secret files
//! every `--secret-reload-interval` and, on a change, rotates its [`KeyRing`]: the new value
//! is accepted at once, the previous one for the grace period, and senders switch to the
//! new one after the signing delay (see [`crate::RotationPolicy`]). No restart is needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::secret::{read_retired_file, read_secret_file};
use crate::{AuthError, KeyRing, RotationPolicy, SecretSpec, load_secret_from, weakness};

/// Flags shared by every binary: where the secret directory is and how rotation rolls out.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
    /// Directory holding the mounted secret (files `api-key`, `service-token`). Read first,
    /// and re-read for rotation.
    #[arg(long, env = "SECRET_DIR")]
    pub secret_dir: Option<PathBuf>,
    /// How often to re-read the secret directory for a rotated value (0s: never).
    #[arg(long, env = "SECRET_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub secret_reload_interval: Duration,
    /// After a rotation, how long the previous value stays accepted.
    #[arg(long, env = "SECRET_GRACE_PERIOD", default_value = "30m", value_parser = humantime::parse_duration)]
    pub secret_grace: Duration,
    /// After a rotation, how long senders keep using the previous value (so receivers see
    /// the new one first).
    #[arg(long, env = "SECRET_SIGNING_DELAY", default_value = "2m", value_parser = humantime::parse_duration)]
    pub secret_signing_delay: Duration,
    /// Accept secrets shorter than 16 characters or equal to a placeholder from the docs
    /// (throwaway demos only; a weak value is otherwise refused at start and on rotation).
    #[arg(long, env = "ALLOW_WEAK_SECRETS")]
    pub allow_weak_secrets: bool,
}

impl Default for SecretArgs {
    fn default() -> Self {
        let p = RotationPolicy::default();
        Self {
            secret_dir: None,
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

    /// Loads `spec` (the directory first, then `direct`) into a ring with this policy.
    ///
    /// # Errors
    /// See [`load_secret`].
    pub fn load(
        &self,
        spec: &SecretSpec,
        direct: Option<&SecretString>,
    ) -> Result<KeyRing, AuthError> {
        if self.secret_grace <= self.secret_signing_delay {
            return Err(AuthError::Config(format!(
                "--secret-grace ({:?}) must be longer than --secret-signing-delay ({:?}): senders would keep a token receivers no longer accept",
                self.secret_grace, self.secret_signing_delay
            )));
        }
        let (v, place) = load_secret_from(spec, direct, self.secret_dir.as_deref())?;
        if let Some(why) = weakness(v.expose_secret()).filter(|_| !self.allow_weak_secrets) {
            return Err(AuthError::Weak {
                name: spec.name,
                place,
                why,
            });
        }
        Ok(KeyRing::with_policy(v, self.policy()))
    }

    /// Loads the retired values of `spec` (e.g. [`SecretSpec::SERVICE_TOKEN_PREVIOUS`]) from
    /// the secret directory into `ring`; nothing when there is no directory or no file.
    ///
    /// # Errors
    /// [`AuthError::Read`] when the file exists but cannot be read.
    pub fn load_retired(&self, spec: &SecretSpec, ring: &KeyRing) -> Result<(), AuthError> {
        if let Some(dir) = &self.secret_dir {
            ring.set_retired(read_retired_file(spec, &dir.join(spec.file_name))?);
        }
        Ok(())
    }

    /// Starts re-reading the secret directory for `watched` until `shutdown`. `None` when
    /// there is no directory or reloading is off.
    pub fn spawn_watch(
        &self,
        watched: Vec<(SecretSpec, KeyRing)>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let dir = self.secret_dir.clone()?;
        if self.secret_reload_interval.is_zero() || watched.is_empty() {
            return None;
        }
        Some(tokio::spawn(watch(
            dir,
            watched,
            self.secret_reload_interval,
            self.allow_weak_secrets,
            shutdown,
        )))
    }
}

/// Re-reads each watched secret once; rotates the rings whose file changed. Returns how
/// many rotated. A missing or empty file keeps the current value (a Secret being replaced
/// is briefly empty); an unreadable one is logged; a weak one (see [`weakness`]) is refused
/// and logged, keeping the current value, unless `allow_weak`.
pub fn reload_once(dir: &Path, watched: &[(SecretSpec, KeyRing)], allow_weak: bool) -> usize {
    let mut rotated = 0;
    for (spec, ring) in watched {
        if spec.retired {
            let path = dir.join(spec.file_name);
            // A file that vanished (a Secret being replaced) keeps the list: dropping retired
            // tokens mid-replay would dead-letter records for good. An emptied file clears it;
            // a removed key takes effect at the next restart.
            if !path.exists() {
                continue;
            }
            match read_retired_file(spec, &path) {
                Ok(list) => {
                    let n = list.len();
                    if ring.set_retired(list) {
                        rotated += 1;
                        tracing::info!(secret = spec.name, count = n, "retired values reloaded");
                    }
                }
                Err(error) => tracing::warn!(%error, secret = spec.name, "cannot re-read secret"),
            }
            continue;
        }
        match read_secret_file(spec, &dir.join(spec.file_name)) {
            Ok(Some(v)) => {
                if let Some(why) = weakness(v.expose_secret()).filter(|_| !allow_weak) {
                    if !ring.accepts(v.expose_secret().as_bytes()) && ring.refuse(&v) {
                        tracing::error!(
                            secret = spec.name,
                            file = %dir.join(spec.file_name).display(),
                            why,
                            "rotation to a weak value refused; the current value stays in use"
                        );
                    }
                    continue;
                }
                if ring.rotate(v) {
                    rotated += 1;
                    let p = ring.policy();
                    tracing::info!(
                        secret = spec.name,
                        version = ring.version(),
                        grace = ?p.grace,
                        signing_delay = ?p.signing_delay,
                        "secret rotated: new value accepted now, previous one during the grace period"
                    );
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, secret = spec.name, "cannot re-read secret"),
        }
    }
    rotated
}

/// Calls [`reload_once`] every `interval` until `shutdown`.
pub async fn watch(
    dir: PathBuf,
    watched: Vec<(SecretSpec, KeyRing)>,
    interval: Duration,
    allow_weak: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        reload_once(&dir, &watched, allow_weak);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weak_secret_is_refused_at_start_naming_where_it_came_from_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "your-secure-api-key-here\n").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let err = args
            .load(&SecretSpec::API_KEY, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "API key from {}/api-key is refused: it is one of the placeholders from the docs. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)",
                dir.path().display()
            )
        );
        let short = SecretString::from("short".to_string());
        let err = SecretArgs::default()
            .load(&SecretSpec::SERVICE_TOKEN, Some(&short))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("service token from env SERVICE_TOKEN is refused: it is 5 characters"),
            "{err}"
        );
        assert!(!err.contains("short\""), "the value is never shown: {err}");
        let demo = SecretArgs {
            allow_weak_secrets: true,
            ..SecretArgs::default()
        };
        assert!(demo.load(&SecretSpec::SERVICE_TOKEN, Some(&short)).is_ok());
    }

    #[test]
    fn a_rotation_to_a_weak_value_is_refused_and_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "first-key-0123456789").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let ring = args.load(&SecretSpec::API_KEY, None).unwrap();
        let watched = vec![(SecretSpec::API_KEY, ring.clone())];
        std::fs::write(dir.path().join("api-key"), "changeme").unwrap();
        assert_eq!(reload_once(dir.path(), &watched, false), 0);
        assert_eq!(ring.current().expose_secret(), "first-key-0123456789");
        assert!(!ring.accepts(b"changeme"));
        // Said once per refused value, not at every reload.
        assert!(!ring.refuse(&SecretString::from("changeme".to_string())));
        assert!(ring.refuse(&SecretString::from("change-me".to_string())));
        // A demo that allows weak values takes it.
        assert_eq!(reload_once(dir.path(), &watched, true), 1);
    }

    #[test]
    fn a_changed_file_rotates_the_ring_and_an_unchanged_or_missing_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "first-key-0123456789\n").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let ring = args.load(&SecretSpec::API_KEY, None).unwrap();
        let watched = vec![(SecretSpec::API_KEY, ring.clone())];
        assert_eq!(reload_once(dir.path(), &watched, false), 0);

        std::fs::write(dir.path().join("api-key"), "second-key-0123456789").unwrap();
        assert_eq!(reload_once(dir.path(), &watched, false), 1);
        assert_eq!(ring.current().expose_secret(), "second-key-0123456789");
        assert!(
            ring.accepts(b"first-key-0123456789"),
            "previous key in grace"
        );
        assert_eq!(
            ring.signing().expose_secret(),
            "first-key-0123456789",
            "within signing delay"
        );

        std::fs::remove_file(dir.path().join("api-key")).unwrap();
        assert_eq!(reload_once(dir.path(), &watched, false), 0);
        assert_eq!(ring.current().expose_secret(), "second-key-0123456789");
    }

    #[test]
    fn a_grace_period_not_longer_than_the_signing_delay_is_refused() {
        let args = SecretArgs {
            secret_grace: Duration::from_secs(60),
            secret_signing_delay: Duration::from_secs(120),
            ..SecretArgs::default()
        };
        let err = args
            .load(
                &SecretSpec::API_KEY,
                Some(&SecretString::from("key-0123456789abcdef".to_string())),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--secret-grace (60s) must be longer"),
            "{err}"
        );
    }

    #[test]
    fn retired_tokens_are_loaded_and_reloaded_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("service-token"), "token-now-0123456789").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let ring = args.load(&SecretSpec::SERVICE_TOKEN, None).unwrap();
        args.load_retired(&SecretSpec::SERVICE_TOKEN_PREVIOUS, &ring)
            .unwrap();
        assert_eq!(ring.verifying().1.len(), 1, "no file: nothing retired");
        std::fs::write(
            dir.path().join("service-token-previous"),
            "old-a\n\n  old-b  \n",
        )
        .unwrap();
        let watched = vec![(SecretSpec::SERVICE_TOKEN_PREVIOUS, ring.clone())];
        assert_eq!(reload_once(dir.path(), &watched, false), 1);
        let values: Vec<String> = ring
            .verifying()
            .1
            .iter()
            .map(|t| t.value.expose_secret().to_string())
            .collect();
        assert_eq!(values, ["token-now-0123456789", "old-a", "old-b"]);
        std::fs::remove_file(dir.path().join("service-token-previous")).unwrap();
        assert_eq!(reload_once(dir.path(), &watched, false), 0);
        assert_eq!(
            ring.verifying().1.len(),
            3,
            "file gone for a moment: list kept"
        );
        std::fs::write(dir.path().join("service-token-previous"), "").unwrap();
        assert_eq!(reload_once(dir.path(), &watched, false), 1);
        assert_eq!(
            ring.verifying().1.len(),
            1,
            "file emptied: retired values dropped"
        );
    }

    #[test]
    fn no_directory_or_zero_interval_means_no_watch() {
        let ring = KeyRing::new(SecretString::from("x".to_string()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let args = SecretArgs::default();
            assert!(
                args.spawn_watch(vec![(SecretSpec::API_KEY, ring.clone())], async {})
                    .is_none()
            );
            let args = SecretArgs {
                secret_dir: Some("/tmp".into()),
                secret_reload_interval: Duration::ZERO,
                ..SecretArgs::default()
            };
            assert!(
                args.spawn_watch(vec![(SecretSpec::API_KEY, ring)], async {})
                    .is_none()
            );
        });
    }
}
