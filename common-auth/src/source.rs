//! Where secret values come from ([`SecretSource`]), and hot reload of what changes into the
//! key rings.
//!
//! Three sources, chosen by [`SecretArgs::kind`]:
//! - **env**: `API_KEY` / `SERVICE_TOKEN` (or their flags), read once; nothing to follow.
//! - **mount**: the Secret mounted as a directory (files named after its keys), re-read every
//!   `--secret-reload-interval`; env is the fallback for a file that is missing.
//! - **kubernetes** (feature `kubernetes`): the Secret read through the Kubernetes API and
//!   then watched ([`crate::kubernetes`]); a change arrives within a second of the patch.
//!
//! Each source delivers a [`SecretView`] (the values under the Secret's keys at one moment);
//! [`apply`] turns a view into rotations of the rings, whatever the source.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::secret::{parse_retired, single_value};
use crate::{AuthError, KeyRing, RotationPolicy, SecretArgs, SecretSpec, weakness};

/// Which source secrets come from (`--secret-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SourceKind {
    /// Env vars (or flags), read once.
    Env,
    /// A mounted Secret directory, re-read for rotations.
    #[cfg_attr(feature = "cli", value(alias = "dir"))]
    Mount,
    /// The Secret through the Kubernetes API, watched.
    Kubernetes,
}

/// The values under a Secret's keys at one moment: a mounted directory's files, or the data
/// of a Secret read from the API.
pub trait SecretView {
    /// Where `spec` is read from, for messages: a file path, or `key api-key of Secret ns/n`.
    fn place(&self, spec: &SecretSpec) -> String;
    /// The raw text under `spec`'s key, `None` when there is no such key.
    ///
    /// # Errors
    /// The key exists but cannot be read (an unreadable file, a value that is not UTF-8).
    fn read(&self, spec: &SecretSpec) -> Result<Option<SecretString>, AuthError>;
}

/// A mounted Secret directory: one file per key.
#[derive(Debug, Clone)]
pub struct DirView<'a>(pub &'a Path);

impl SecretView for DirView<'_> {
    fn place(&self, spec: &SecretSpec) -> String {
        self.0.join(spec.file_name).display().to_string()
    }

    fn read(&self, spec: &SecretSpec) -> Result<Option<SecretString>, AuthError> {
        let path = self.0.join(spec.file_name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(SecretString::from(s))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuthError::Read {
                name: spec.name,
                path,
                source,
            }),
        }
    }
}

/// The one value of `spec` in `view` (trailing newlines trimmed), `None` when absent or
/// blank.
///
/// # Errors
/// See [`SecretView::read`].
pub fn value_in(
    view: &dyn SecretView,
    spec: &SecretSpec,
) -> Result<Option<SecretString>, AuthError> {
    Ok(view.read(spec)?.and_then(single_value))
}

/// Loads `spec` from `view` (when there is one), else from `direct` (the env var or flag):
/// the value and where it came from.
///
/// # Errors
/// [`AuthError::Missing`] naming every place looked; [`AuthError::Read`] for an unreadable
/// value.
pub fn load_from(
    spec: &SecretSpec,
    direct: Option<&SecretString>,
    view: Option<&dyn SecretView>,
) -> Result<(SecretString, String), AuthError> {
    let mut looked = Vec::new();
    match view {
        Some(view) => match value_in(view, spec)? {
            Some(v) => return Ok((v, view.place(spec))),
            None => looked.push(format!("{} not found or empty", view.place(spec))),
        },
        None => looked.push("no secret directory configured (--secret-dir)".to_string()),
    }
    match direct {
        Some(v) if !v.expose_secret().trim().is_empty() => {
            return Ok((v.clone(), format!("env {}", spec.env_var)));
        }
        Some(_) => looked.push(format!("env {} is empty", spec.env_var)),
        None => looked.push(format!("env {} is unset", spec.env_var)),
    }
    Err(AuthError::Missing {
        name: spec.name,
        looked: looked.join("; "),
    })
}

/// The retired values of `spec` in `view`; `None` when the key is absent.
///
/// # Errors
/// A line that is neither a value nor a value with its retirement (named by number, never by
/// value), or an unreadable key.
pub fn retired_in(
    view: &dyn SecretView,
    spec: &SecretSpec,
) -> Result<Option<Vec<crate::RetiredValue>>, AuthError> {
    let Some(raw) = view.read(spec)? else {
        return Ok(None);
    };
    parse_retired(raw.expose_secret())
        .map(Some)
        .map_err(|(line, why)| {
            AuthError::Config(format!("{} line {line}: {why}", view.place(spec)))
        })
}

/// Applies what `view` holds to each watched ring; returns how many changed. An absent or
/// empty key keeps the current value (a Secret being replaced is briefly empty); an
/// unreadable one is logged; a weak one (see [`weakness`]) is refused and logged once,
/// keeping the current value, unless `allow_weak`. For a retired list (see
/// [`SecretSpec::SERVICE_TOKEN_PREVIOUS`]) an absent key keeps the list and an empty one
/// clears it.
pub fn apply(view: &dyn SecretView, watched: &[(SecretSpec, KeyRing)], allow_weak: bool) -> usize {
    let mut rotated = 0;
    for (spec, ring) in watched {
        if spec.retired {
            // A key that vanished (a Secret being replaced) keeps the list: dropping retired
            // tokens mid-replay would dead-letter records for good. An emptied key clears it.
            match retired_in(view, spec) {
                Ok(None) => {}
                Ok(Some(list)) => {
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
        match value_in(view, spec) {
            Ok(Some(v)) => {
                if let Some(why) = weakness(v.expose_secret()).filter(|_| !allow_weak) {
                    if !ring.accepts(v.expose_secret().as_bytes()) && ring.refuse(&v) {
                        tracing::error!(
                            secret = spec.name,
                            from = %view.place(spec),
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
                        from = %view.place(spec),
                        version = ring.version(),
                        fingerprint = %crate::fingerprint(ring.current().expose_secret().as_bytes()),
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

/// [`apply`] over a mounted directory.
pub fn reload_once(dir: &Path, watched: &[(SecretSpec, KeyRing)], allow_weak: bool) -> usize {
    apply(&DirView(dir), watched, allow_weak)
}

/// Where this process's secrets come from: opened once at startup (before any socket is
/// bound), then asked for each secret ([`SecretSource::load`]) and told which rings to keep
/// current ([`SecretSource::spawn_watch`]).
#[derive(Debug)]
pub struct SecretSource {
    args: SecretArgs,
    origin: Origin,
}

#[derive(Debug)]
enum Origin {
    Env,
    Mount(PathBuf),
    #[cfg(feature = "kubernetes")]
    Kubernetes(std::sync::Arc<crate::kubernetes::KubeSecret>),
}

impl SecretSource {
    /// Opens the source `args` choose. For `kubernetes` this reads the Secret through the
    /// API (retrying an unreachable API server for `--secret-startup-timeout`).
    ///
    /// # Errors
    /// Contradicting settings, or (kubernetes) a Secret that cannot be read: one line saying
    /// which Secret, where and why.
    pub async fn open(args: &SecretArgs) -> Result<Self, AuthError> {
        match args.kind() {
            SourceKind::Env | SourceKind::Mount => Self::local(args),
            #[cfg(feature = "kubernetes")]
            SourceKind::Kubernetes => {
                check_policy(args)?;
                let name = args.secret_name.as_deref().ok_or_else(|| {
                    AuthError::Config(
                        "--secret-source kubernetes needs --secret-name (env SECRET_NAME): the Secret to read".into(),
                    )
                })?;
                let secret = crate::kubernetes::KubeSecret::open(
                    args.secret_namespace.as_deref(),
                    name,
                    args.secret_startup_timeout,
                )
                .await?;
                Ok(Self::kubernetes(args, secret))
            }
            #[cfg(not(feature = "kubernetes"))]
            SourceKind::Kubernetes => Err(AuthError::Config(
                "--secret-source kubernetes: this binary was built without the `kubernetes` feature".into(),
            )),
        }
    }

    /// Opens an `env` or `mount` source (no I/O beyond reading files later).
    ///
    /// # Errors
    /// Contradicting settings, or `kubernetes` (use [`SecretSource::open`]).
    pub fn local(args: &SecretArgs) -> Result<Self, AuthError> {
        check_policy(args)?;
        let origin = match (args.kind(), &args.secret_dir) {
            (SourceKind::Env, _) => Origin::Env,
            (SourceKind::Mount, Some(dir)) => Origin::Mount(dir.clone()),
            (SourceKind::Mount, None) => {
                return Err(AuthError::Config(
                    "--secret-source mount needs --secret-dir (env SECRET_DIR): the directory the Secret is mounted at".into(),
                ));
            }
            (SourceKind::Kubernetes, _) => {
                return Err(AuthError::Config(
                    "--secret-source kubernetes is opened with SecretSource::open".into(),
                ));
            }
        };
        Ok(Self {
            args: args.clone(),
            origin,
        })
    }

    /// A `kubernetes` source over a Secret already read (tests build their own client).
    #[cfg(feature = "kubernetes")]
    pub fn kubernetes(args: &SecretArgs, secret: crate::kubernetes::KubeSecret) -> Self {
        Self {
            args: args.clone(),
            origin: Origin::Kubernetes(std::sync::Arc::new(secret)),
        }
    }

    /// Where secrets come from, for the startup log: `env`, `mount /etc/...`, `kubernetes
    /// Secret ns/name`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Env => "env".into(),
            Origin::Mount(dir) => format!("mount {}", dir.display()),
            #[cfg(feature = "kubernetes")]
            Origin::Kubernetes(k) => format!("kubernetes Secret {}", k.describe()),
        }
    }

    /// The rotation policy of the settings.
    pub fn policy(&self) -> RotationPolicy {
        self.args.policy()
    }

    /// Whether weak values are allowed (`--allow-weak-secrets`).
    pub fn allows_weak(&self) -> bool {
        self.args.allow_weak_secrets
    }

    fn with_view<T>(&self, f: impl FnOnce(Option<&dyn SecretView>) -> T) -> T {
        match &self.origin {
            Origin::Env => f(None),
            Origin::Mount(dir) => f(Some(&DirView(dir))),
            #[cfg(feature = "kubernetes")]
            Origin::Kubernetes(k) => {
                let snapshot = k.snapshot();
                f(Some(&*snapshot))
            }
        }
    }

    /// Loads `spec` (the source first, then `direct`: its env var or flag) into a ring with
    /// the settings' policy, refusing a weak value unless allowed.
    ///
    /// # Errors
    /// [`AuthError::Missing`] naming every place looked, [`AuthError::Weak`], or an unreadable
    /// value.
    pub fn load(
        &self,
        spec: &SecretSpec,
        direct: Option<&SecretString>,
    ) -> Result<KeyRing, AuthError> {
        let (v, place) = self.with_view(|view| load_from(spec, direct, view))?;
        if let Some(why) = weakness(v.expose_secret()).filter(|_| !self.args.allow_weak_secrets) {
            return Err(AuthError::Weak {
                name: spec.name,
                place,
                why,
            });
        }
        Ok(KeyRing::with_policy(v, self.policy()))
    }

    /// Loads the retired values of `spec` (e.g. [`SecretSpec::SERVICE_TOKEN_PREVIOUS`]) into
    /// `ring`; nothing when the source has no such key (env has none).
    ///
    /// # Errors
    /// A malformed list or an unreadable key.
    pub fn load_retired(&self, spec: &SecretSpec, ring: &KeyRing) -> Result<(), AuthError> {
        if let Some(list) = self
            .with_view(|view| view.map(|v| retired_in(v, spec)).transpose())?
            .flatten()
        {
            ring.set_retired(list);
        }
        Ok(())
    }

    /// Keeps `watched` current until `shutdown`: re-reads the mounted directory every
    /// `--secret-reload-interval`, or follows the Secret's watch. `None` for env (nothing
    /// changes), with nothing to watch, or a zero interval for mount.
    pub fn spawn_watch(
        &self,
        watched: Vec<(SecretSpec, KeyRing)>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if watched.is_empty() {
            return None;
        }
        let allow_weak = self.args.allow_weak_secrets;
        match &self.origin {
            Origin::Env => None,
            Origin::Mount(dir) => {
                let interval = self.args.secret_reload_interval;
                if interval.is_zero() {
                    return None;
                }
                Some(tokio::spawn(poll_dir(
                    dir.clone(),
                    watched,
                    interval,
                    allow_weak,
                    shutdown,
                )))
            }
            #[cfg(feature = "kubernetes")]
            Origin::Kubernetes(k) => {
                let k = k.clone();
                Some(tokio::spawn(async move {
                    let follow = k.follow(|view| {
                        apply(view, &watched, allow_weak);
                    });
                    tokio::select! {
                        () = follow => {}
                        () = shutdown => {}
                    }
                }))
            }
        }
    }
}

fn check_policy(args: &SecretArgs) -> Result<(), AuthError> {
    if args.secret_grace <= args.secret_signing_delay {
        return Err(AuthError::Config(format!(
            "--secret-grace ({:?}) must be longer than --secret-signing-delay ({:?}): senders would keep a token receivers no longer accept",
            args.secret_grace, args.secret_signing_delay
        )));
    }
    Ok(())
}

/// Calls [`reload_once`] every `interval` until `shutdown`.
async fn poll_dir(
    dir: PathBuf,
    watched: Vec<(SecretSpec, KeyRing)>,
    interval: std::time::Duration,
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
    use std::time::Duration;

    #[test]
    fn a_weak_secret_is_refused_at_start_naming_where_it_came_from_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "your-secure-api-key-here\n").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let err = SecretSource::local(&args)
            .unwrap()
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
        let err = SecretSource::local(&SecretArgs::default())
            .unwrap()
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
        assert!(
            SecretSource::local(&demo)
                .unwrap()
                .load(&SecretSpec::SERVICE_TOKEN, Some(&short))
                .is_ok()
        );
    }

    #[test]
    fn a_rotation_to_a_weak_value_is_refused_and_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "first-key-0123456789").unwrap();
        let args = SecretArgs {
            secret_dir: Some(dir.path().to_path_buf()),
            ..SecretArgs::default()
        };
        let ring = SecretSource::local(&args)
            .unwrap()
            .load(&SecretSpec::API_KEY, None)
            .unwrap();
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
        let ring = SecretSource::local(&args)
            .unwrap()
            .load(&SecretSpec::API_KEY, None)
            .unwrap();
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
        let err = SecretSource::local(&args).unwrap_err();
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
        let ring = SecretSource::local(&args)
            .unwrap()
            .load(&SecretSpec::SERVICE_TOKEN, None)
            .unwrap();
        SecretSource::local(&args)
            .unwrap()
            .load_retired(&SecretSpec::SERVICE_TOKEN_PREVIOUS, &ring)
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
                SecretSource::local(&args)
                    .unwrap()
                    .spawn_watch(vec![(SecretSpec::API_KEY, ring.clone())], async {})
                    .is_none()
            );
            let args = SecretArgs {
                secret_dir: Some("/tmp".into()),
                secret_reload_interval: Duration::ZERO,
                ..SecretArgs::default()
            };
            assert!(
                SecretSource::local(&args)
                    .unwrap()
                    .spawn_watch(vec![(SecretSpec::API_KEY, ring)], async {})
                    .is_none()
            );
        });
    }
}
