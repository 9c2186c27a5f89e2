//! Loading a secret from an env value or a mounted secret directory.
//!
//! The Helm chart gives pods both: env vars `API_KEY` / `SERVICE_TOKEN` from the Secret (so the
//! seed's `env | grep` works) and the Secret mounted as a directory with files `api-key` and
//! `service-token` (which Kubernetes updates in place on rotation, while env vars stay as the
//! pod started). So the mounted file wins when present; the env var is the fallback (docker
//! compose, local runs). Trailing newlines in files are trimmed, as `kubectl create secret
//! --from-file` keeps them.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use crate::{AuthError, RetiredAt, RetiredValue};

/// Which secret to load and where to look for it.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// Human name used in errors, e.g. `API key`.
    pub name: &'static str,
    /// Env var name that could have carried it (only used in error messages).
    pub env_var: &'static str,
    /// File name inside the secret directory, e.g. `api-key`.
    pub file_name: &'static str,
    /// A list of retired values (one per line), accepted only to verify old records; see
    /// [`SecretSpec::SERVICE_TOKEN_PREVIOUS`].
    pub retired: bool,
}

impl SecretSpec {
    /// The REST API key: env `API_KEY`, file `api-key`.
    pub const API_KEY: SecretSpec = SecretSpec {
        name: "API key",
        env_var: "API_KEY",
        file_name: "api-key",
        retired: false,
    };
    /// The internal service token: env `SERVICE_TOKEN`, file `service-token`.
    pub const SERVICE_TOKEN: SecretSpec = SecretSpec {
        name: "service token",
        env_var: "SERVICE_TOKEN",
        file_name: "service-token",
        retired: false,
    };
    /// Retired service tokens, one per line (optional file `service-token-previous` in the
    /// secret directory; there is no env var for it). The streamer rebuilds its store from
    /// Kafka, so after a restart it must still verify records signed before the last
    /// rotations: keep each retired token here for the topic's retention. Used for record
    /// verification only, never to sign or call. Never keep a *leaked* token here: records
    /// signed with it are accepted.
    pub const SERVICE_TOKEN_PREVIOUS: SecretSpec = SecretSpec {
        name: "retired service tokens",
        env_var: "SERVICE_TOKEN_PREVIOUS",
        file_name: "service-token-previous",
        retired: true,
    };
}

/// The shortest secret a service accepts (without `--allow-weak-secrets`).
pub const MIN_SECRET_LEN: usize = 16;

/// The docs' example values (the seed document's and ours): a secret equal to one of these is
/// a copy-paste, not a secret. The Helm chart refuses the same list (`ts.checkSecretValue`).
pub const PLACEHOLDERS: &[&str] = &[
    "your-secure-api-key-here",
    "your-secure-service-token-here",
    "your-secure-api-key",
    "your-secure-service-token",
    "new-secure-api-key",
    "new-secure-service-token",
    "new-api-key",
    "new-service-token",
    "changeme",
    "change-me",
];

/// Why `value` is too weak to guard anything, `None` when it is fine: shorter than
/// [`MIN_SECRET_LEN`], or one of the docs' [`PLACEHOLDERS`]. What the seed's generators make
/// (`openssl rand -hex 32`, `uuidgen`, `pwgen -s 32 1`) always passes.
pub fn weakness(value: &str) -> Option<String> {
    let v = value.trim();
    if PLACEHOLDERS.iter().any(|p| p.eq_ignore_ascii_case(v)) {
        return Some("it is one of the placeholders from the docs".to_string());
    }
    let n = v.chars().count();
    (n < MIN_SECRET_LEN).then(|| format!("it is {n} characters, fewer than {MIN_SECRET_LEN}"))
}

/// Parses a list of retired values, one per line: the value, then optionally its retirement
/// time (RFC 3339, e.g. `2026-11-28T10:00:00Z`: it verifies only records timed before) or
/// `revoked` (a leaked value: it verifies nothing). A value without either counts as retired
/// when the service first loads it.
///
/// # Errors
/// The 1-based line and why (never the value) when a line's second word is neither a time
/// nor `revoked`, or a line has more than two words.
pub fn parse_retired(text: &str) -> Result<Vec<RetiredValue>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(value) = words.next() else {
            continue;
        };
        let at = match words.next() {
            None => RetiredAt::Unstated,
            Some("revoked") => RetiredAt::Revoked,
            Some(t) => {
                let when = humantime::parse_rfc3339_weak(t).map_err(|_| {
                    (
                        n + 1,
                        "after the value comes its retirement time (RFC 3339, e.g. 2026-11-28T10:00:00Z) or `revoked`".to_string(),
                    )
                })?;
                let ms = when
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                RetiredAt::At(ms)
            }
        };
        if words.next().is_some() {
            return Err((n + 1, "more than a value and one time or `revoked`".into()));
        }
        out.push(RetiredValue {
            value: SecretString::from(value.to_string()),
            at,
        });
    }
    Ok(out)
}

/// Loads one secret: the file `spec.file_name` in `dir` when it exists and is non-empty
/// (the mounted Secret is what Kubernetes updates on rotation, so it wins), else `direct`
/// (the env var's value, as clap parsed it) when non-empty.
///
/// # Errors
/// [`AuthError::Missing`] when neither gives a non-empty value (one line naming both places),
/// [`AuthError::Read`] when the file exists but cannot be read.
pub fn load_secret(
    spec: &SecretSpec,
    direct: Option<&SecretString>,
    dir: Option<&Path>,
) -> Result<SecretString, AuthError> {
    load_secret_from(spec, direct, dir).map(|(v, _)| v)
}

/// [`load_secret`], also saying where the value came from (a file path or `env <VAR>`).
///
/// # Errors
/// See [`load_secret`].
pub fn load_secret_from(
    spec: &SecretSpec,
    direct: Option<&SecretString>,
    dir: Option<&Path>,
) -> Result<(SecretString, String), AuthError> {
    let view = dir.map(crate::source::DirView);
    crate::source::load_from(
        spec,
        direct,
        view.as_ref().map(|v| v as &dyn crate::source::SecretView),
    )
}

/// A secret's raw text as its one value: trailing newlines trimmed (`kubectl create secret
/// --from-file` keeps them), `None` when nothing is left.
pub(crate) fn single_value(raw: SecretString) -> Option<SecretString> {
    let trimmed = raw.expose_secret().trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        None
    } else {
        Some(SecretString::from(trimmed.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_lists_take_a_time_or_revoked_and_bad_lines_name_their_number_not_their_value() {
        let got =
            parse_retired("old-a\n\n  old-b 2026-11-28T10:00:00Z \nleaked revoked\n").unwrap();
        let at: Vec<_> = got.iter().map(|r| r.at).collect();
        assert_eq!(
            at,
            [
                RetiredAt::Unstated,
                RetiredAt::At(1_795_860_000_000),
                RetiredAt::Revoked
            ]
        );
        assert_eq!(got[1].value.expose_secret(), "old-b");
        let (line, why) = parse_retired("ok-token\nsecret-value yesterday\n")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(line, 2);
        assert!(
            !why.contains("secret-value") && why.contains("RFC 3339"),
            "{why}"
        );
        assert_eq!(parse_retired("a b c").unwrap_err().0, 1);
    }

    #[test]
    fn short_values_and_the_docs_placeholders_are_weak_generated_ones_are_not() {
        for weak in [
            "short",
            "fifteen-chars-x",
            "your-secure-api-key-here",
            "CHANGEME",
            " change-me ",
        ] {
            assert!(weakness(weak).is_some(), "{weak}");
        }
        assert_eq!(
            weakness("your-secure-api-key").unwrap(),
            "it is one of the placeholders from the docs"
        );
        assert_eq!(
            weakness("short").unwrap(),
            "it is 5 characters, fewer than 16"
        );
        // openssl rand -hex 32, uuidgen, pwgen -s 32 1
        for strong in [
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "0b5a1c34-7f3e-4d2a-9c1e-5d6f7a8b9c0d",
            "Xk3vQ9pL2mN7rT5wY8zB1cD4fG6hJ0aS",
            "sixteen-chars-ok",
        ] {
            assert_eq!(weakness(strong), None, "{strong}");
        }
    }

    #[test]
    fn mounted_file_wins_over_the_env_value_and_env_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let direct = SecretString::from("from-env");
        let got = load_secret(&SecretSpec::API_KEY, Some(&direct), Some(dir.path())).unwrap();
        assert_eq!(got.expose_secret(), "from-env");
        std::fs::write(dir.path().join("api-key"), "from-file\n").unwrap();
        let got = load_secret(&SecretSpec::API_KEY, Some(&direct), Some(dir.path())).unwrap();
        assert_eq!(got.expose_secret(), "from-file");
    }

    #[test]
    fn file_value_is_read_with_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("service-token"), "tok-123\n").unwrap();
        let got = load_secret(&SecretSpec::SERVICE_TOKEN, None, Some(dir.path())).unwrap();
        assert_eq!(got.expose_secret(), "tok-123");
    }

    #[test]
    fn missing_secret_error_is_one_line_naming_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let empty = SecretString::from("  ");
        let err = load_secret(&SecretSpec::API_KEY, Some(&empty), Some(dir.path())).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'));
        assert_eq!(
            msg,
            format!(
                "API key is missing: {}/api-key not found or empty; env API_KEY is empty",
                dir.path().display()
            )
        );
        let err = load_secret(&SecretSpec::SERVICE_TOKEN, None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service token is missing: no secret directory configured (--secret-dir); env SERVICE_TOKEN is unset"
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_retired_list_parses_or_names_a_line_never_a_value(text in "(?s).{0,400}") {
            match parse_retired(&text) {
                Ok(list) => {
                    // One entry per non-blank line, each value a line's first word.
                    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
                    prop_assert_eq!(list.len(), lines);
                }
                Err((line, why)) => {
                    prop_assert!(line >= 1 && line <= text.lines().count());
                    let value = text.lines().nth(line - 1).unwrap().split_whitespace().next().unwrap();
                    prop_assert!(!why.contains(value) || value.len() < 4, "{why}");
                }
            }
        }

        #[test]
        fn weakness_never_panics_and_long_random_values_pass(v in "[A-Za-z0-9]{16,64}") {
            prop_assert_eq!(weakness(&v), None);
        }
    }
}
