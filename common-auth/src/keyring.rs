use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted values of one secret: the current one and, during a rotation's grace
/// period, the previous one. Cheap to clone; clones share state, so a reload seen by one
/// is seen by all.
///
/// Comparison hashes both sides with SHA-256 and compares the digests in constant time, so
/// neither the content nor the length of the expected value leaks through timing.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<RwLock<Inner>>,
}

struct Inner {
    current: SecretString,
    current_digest: [u8; 32],
    previous: Option<(SecretString, [u8; 32], Instant)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

fn digest(v: &[u8]) -> [u8; 32] {
    Sha256::digest(v).into()
}

impl KeyRing {
    /// A ring that accepts exactly `current`.
    pub fn new(current: SecretString) -> Self {
        let current_digest = digest(current.expose_secret().as_bytes());
        Self {
            inner: Arc::new(RwLock::new(Inner {
                current,
                current_digest,
                previous: None,
            })),
        }
    }

    /// Makes `next` the current value; the old one stays accepted for `grace`.
    /// Rotating to the value already current changes nothing.
    pub fn rotate(&self, next: SecretString, grace: Duration) {
        let next_digest = digest(next.expose_secret().as_bytes());
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if bool::from(inner.current_digest.ct_eq(&next_digest)) {
            return;
        }
        let old = std::mem::replace(&mut inner.current, next);
        let old_digest = std::mem::replace(&mut inner.current_digest, next_digest);
        inner.previous = Some((old, old_digest, Instant::now() + grace));
    }

    /// Whether `candidate` is the current value or the previous one within its grace period.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let d = digest(candidate);
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut ok = inner.current_digest.ct_eq(&d);
        if let Some((_, prev, until)) = &inner.previous
            && Instant::now() < *until
        {
            ok |= prev.ct_eq(&d);
        }
        ok.into()
    }

    /// The current value (for signing, or for attaching to outgoing requests).
    pub fn current(&self) -> SecretString {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// All values accepted right now: current first, then the previous one if still in grace.
    pub fn accepted(&self) -> Vec<SecretString> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out = vec![inner.current.clone()];
        if let Some((prev, _, until)) = &inner.previous
            && Instant::now() < *until
        {
            out.push(prev.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_current_and_rejects_others() {
        let ring = KeyRing::new("alpha".to_string().into());
        assert!(ring.accepts(b"alpha"));
        assert!(!ring.accepts(b"alph"));
        assert!(!ring.accepts(b"alphaa"));
        assert!(!ring.accepts(b""));
    }

    #[test]
    fn previous_value_is_accepted_only_during_grace() {
        let ring = KeyRing::new("old".to_string().into());
        ring.rotate("new".to_string().into(), Duration::from_secs(3600));
        assert!(ring.accepts(b"new"));
        assert!(ring.accepts(b"old"));
        assert_eq!(ring.accepted().len(), 2);
        ring.rotate("newer".to_string().into(), Duration::ZERO);
        assert!(ring.accepts(b"newer"));
        assert!(!ring.accepts(b"new"));
        assert!(!ring.accepts(b"old"));
        assert_eq!(ring.current().expose_secret(), "newer");
    }
}
