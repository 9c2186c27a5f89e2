use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a rotation is rolled out.
///
/// Each pod sees a rotated Secret at its own moment (the kubelet refreshes mounted Secrets
/// on its own schedule, up to a minute or two apart). So after seeing a new value, a ring
/// - **accepts** both the new and the previous value for `grace`, and
/// - keeps **sending/signing** with the previous value for `signing_delay`,
///
/// so that every receiver has seen the new value before any sender uses it. Keep
/// `grace` > `signing_delay` + the longest propagation skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long the previous value stays accepted after a rotation.
    pub grace: Duration,
    /// How long senders keep using the previous value after a rotation.
    pub signing_delay: Duration,
}

impl Default for RotationPolicy {
    /// 30 minutes of grace, 2 minutes of signing delay.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30 * 60),
            signing_delay: Duration::from_secs(120),
        }
    }
}

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

struct Previous {
    value: SecretString,
    digest: [u8; 32],
    rotated_at: Instant,
}

/// When a retired value stopped being the one to sign with, as its list states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetiredAt {
    /// At this time (UTC ms): it verifies records of earlier times only.
    At(i64),
    /// No time given: retired when this service first saw it listed.
    Unstated,
    /// Revoked (a leaked token): verifies nothing.
    Revoked,
}

/// One entry of a retired-values list (`service-token-previous`).
#[derive(Debug, Clone)]
pub struct RetiredValue {
    /// The value.
    pub value: SecretString,
    /// When it was retired.
    pub at: RetiredAt,
}

/// A value that may verify a record signature: the current and previous ones without a time
/// limit, a retired one only for records timed before its retirement (UTC ms).
#[derive(Debug, Clone)]
pub struct Verifying {
    /// The value.
    pub value: SecretString,
    /// Records signed with it must be timed before this (UTC ms); `None`: no limit.
    pub not_after_ms: Option<i64>,
}

struct Retired {
    value: SecretString,
    digest: [u8; 32],
    at: RetiredAt,
}

impl Inner {
    /// Whether the retired list revokes the value with `digest`.
    fn revoked(&self, digest: &[u8; 32]) -> bool {
        self.retired
            .iter()
            .any(|r| r.at == RetiredAt::Revoked && bool::from(r.digest.ct_eq(digest)))
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Inner {
    current: SecretString,
    current_digest: [u8; 32],
    previous: Option<Previous>,
    // Retired values: accepted for verifying old records only (see `verifying`).
    retired: Vec<Retired>,
    // When each retired value without a stated time was first seen (UTC ms), by digest.
    first_seen: std::collections::HashMap<[u8; 32], i64>,
    // The last value a rotation to was refused (weak), so the refusal is said once.
    refused: Option<[u8; 32]>,
    policy: RotationPolicy,
    version: u64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

fn digest(v: &[u8]) -> [u8; 32] {
    Sha256::digest(v).into()
}

impl KeyRing {
    /// A ring that accepts exactly `current`, rotating with the default policy.
    pub fn new(current: SecretString) -> Self {
        Self::with_policy(current, RotationPolicy::default())
    }

    /// A ring that accepts exactly `current`, rotating with `policy`.
    pub fn with_policy(current: SecretString, policy: RotationPolicy) -> Self {
        let current_digest = digest(current.expose_secret().as_bytes());
        Self {
            inner: Arc::new(RwLock::new(Inner {
                current,
                current_digest,
                previous: None,
                retired: Vec::new(),
                first_seen: std::collections::HashMap::new(),
                refused: None,
                policy,
                version: 0,
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `next` the current value. Returns whether anything changed (rotating to the
    /// value already current changes nothing).
    pub fn rotate(&self, next: SecretString) -> bool {
        self.rotate_at(next, Instant::now())
    }

    /// [`KeyRing::rotate`] as of `now`.
    pub fn rotate_at(&self, next: SecretString, now: Instant) -> bool {
        let next_digest = digest(next.expose_secret().as_bytes());
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if bool::from(inner.current_digest.ct_eq(&next_digest)) {
            return false;
        }
        let value = std::mem::replace(&mut inner.current, next);
        let digest = std::mem::replace(&mut inner.current_digest, next_digest);
        inner.previous = Some(Previous {
            value,
            digest,
            rotated_at: now,
        });
        inner.version += 1;
        true
    }

    /// Whether `candidate` is the current value, or the previous one within its grace period.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        self.accepts_at(candidate, Instant::now())
    }

    /// [`KeyRing::accepts`] as of `now`. A previous value listed as revoked is not accepted,
    /// grace period or not.
    pub fn accepts_at(&self, candidate: &[u8], now: Instant) -> bool {
        let d = digest(candidate);
        let inner = self.read();
        let mut ok = inner.current_digest.ct_eq(&d);
        if let Some(p) = &inner.previous
            && now.saturating_duration_since(p.rotated_at) < inner.policy.grace
            && !inner.revoked(&p.digest)
        {
            ok |= p.digest.ct_eq(&d);
        }
        ok.into()
    }

    /// The newest value seen.
    pub fn current(&self) -> SecretString {
        self.read().current.clone()
    }

    /// The value to send or sign with: the previous one during the signing delay after a
    /// rotation (so receivers catch up first), else the current one.
    pub fn signing(&self) -> SecretString {
        self.signing_at(Instant::now())
    }

    /// [`KeyRing::signing`] as of `now`.
    pub fn signing_at(&self, now: Instant) -> SecretString {
        let inner = self.read();
        match &inner.previous {
            Some(p)
                if now.saturating_duration_since(p.rotated_at) < inner.policy.signing_delay
                    && !inner.revoked(&p.digest) =>
            {
                p.value.clone()
            }
            _ => inner.current.clone(),
        }
    }

    /// All values accepted right now: current first, then the previous one if still in grace.
    pub fn accepted(&self) -> Vec<SecretString> {
        self.accepted_at(Instant::now())
    }

    /// [`KeyRing::accepted`] as of `now`.
    pub fn accepted_at(&self, now: Instant) -> Vec<SecretString> {
        let inner = self.read();
        let mut out = vec![inner.current.clone()];
        if let Some(p) = &inner.previous
            && now.saturating_duration_since(p.rotated_at) < inner.policy.grace
            && !inner.revoked(&p.digest)
        {
            out.push(p.value.clone());
        }
        out
    }

    /// Replaces the retired values (accepted only by [`KeyRing::verifying`]). Returns whether
    /// they changed. A value listed without a time counts as retired at the end of the
    /// rotation's grace period, counted from the first time this ring saw it listed.
    pub fn set_retired(&self, retired: Vec<RetiredValue>) -> bool {
        let now = wall_ms();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Retired> = retired
            .into_iter()
            .map(|r| Retired {
                digest: digest(r.value.expose_secret().as_bytes()),
                value: r.value,
                at: r.at,
            })
            .collect();
        for r in &next {
            if r.at == RetiredAt::Unstated {
                inner.first_seen.entry(r.digest).or_insert(now);
            }
        }
        let key = |v: &[Retired]| -> Vec<([u8; 32], RetiredAt)> {
            v.iter().map(|r| (r.digest, r.at)).collect()
        };
        if key(&inner.retired) == key(&next) {
            return false;
        }
        inner.retired = next;
        inner.version += 1;
        true
    }

    /// Every value a record signature may have been made with, and the ring's version, read
    /// together: [`KeyRing::accepted`] (no time limit) plus the retired values that are not
    /// revoked, each limited to records timed before its retirement. For verifying records
    /// that may be replayed from Kafka long after a rotation; never for authenticating calls.
    pub fn verifying(&self) -> (u64, Vec<Verifying>) {
        let now = Instant::now();
        let inner = self.read();
        let open = |value: &SecretString| Verifying {
            value: value.clone(),
            not_after_ms: None,
        };
        let mut out = vec![open(&inner.current)];
        // The previous value during its grace period, unless the retired list states a time
        // or a revocation for it (the operator's word wins).
        if let Some(p) = &inner.previous
            && now.saturating_duration_since(p.rotated_at) < inner.policy.grace
            && !inner
                .retired
                .iter()
                .any(|r| r.at != RetiredAt::Unstated && bool::from(r.digest.ct_eq(&p.digest)))
        {
            out.push(open(&p.value));
        }
        for r in &inner.retired {
            let at = match r.at {
                RetiredAt::At(t) => t,
                // Senders may sign with it until the rotation's grace period ends.
                RetiredAt::Unstated => inner
                    .first_seen
                    .get(&r.digest)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(
                        i64::try_from(inner.policy.grace.as_millis()).unwrap_or(i64::MAX),
                    ),
                RetiredAt::Revoked => continue,
            };
            // The current value listed as retired stays current.
            if bool::from(r.digest.ct_eq(&inner.current_digest)) {
                continue;
            }
            out.push(Verifying {
                value: r.value.clone(),
                not_after_ms: Some(at),
            });
        }
        (inner.version, out)
    }

    /// Notes that a rotation to `value` was refused; `true` the first time for that value
    /// (so the refusal is logged once, not at every reload).
    pub fn refuse(&self, value: &SecretString) -> bool {
        let d = digest(value.expose_secret().as_bytes());
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let new = inner.refused != Some(d);
        inner.refused = Some(d);
        new
    }

    /// A number that changes on every rotation (for caches derived from the ring).
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// The rotation policy.
    pub fn policy(&self) -> RotationPolicy {
        self.read().policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_string())
    }

    const POLICY: RotationPolicy = RotationPolicy {
        grace: Duration::from_secs(600),
        signing_delay: Duration::from_secs(60),
    };

    #[test]
    fn accepts_current_and_rejects_others() {
        let ring = KeyRing::new(s("alpha"));
        assert!(ring.accepts(b"alpha"));
        assert!(!ring.accepts(b"alph"));
        assert!(!ring.accepts(b"alphaa"));
        assert!(!ring.accepts(b""));
    }

    #[test]
    fn previous_value_is_accepted_only_during_grace() {
        let t0 = Instant::now();
        let ring = KeyRing::with_policy(s("old"), POLICY);
        assert!(ring.rotate_at(s("new"), t0));
        assert!(ring.accepts_at(b"new", t0));
        assert!(ring.accepts_at(b"old", t0 + Duration::from_secs(599)));
        assert_eq!(ring.accepted_at(t0 + Duration::from_secs(599)).len(), 2);
        assert!(!ring.accepts_at(b"old", t0 + Duration::from_secs(600)));
        assert_eq!(ring.accepted_at(t0 + Duration::from_secs(600)).len(), 1);
        assert!(ring.accepts_at(b"new", t0 + Duration::from_secs(6000)));
    }

    #[test]
    fn senders_keep_the_previous_value_for_the_signing_delay() {
        let t0 = Instant::now();
        let ring = KeyRing::with_policy(s("old"), POLICY);
        assert_eq!(ring.signing_at(t0).expose_secret(), "old");
        ring.rotate_at(s("new"), t0);
        assert_eq!(ring.current().expose_secret(), "new");
        assert_eq!(
            ring.signing_at(t0 + Duration::from_secs(59))
                .expose_secret(),
            "old"
        );
        assert_eq!(
            ring.signing_at(t0 + Duration::from_secs(60))
                .expose_secret(),
            "new"
        );
    }

    #[test]
    fn retired_values_verify_older_records_only_and_never_authenticate() {
        let ring = KeyRing::with_policy(s("new"), POLICY);
        let retired = |v: &str, at: RetiredAt| RetiredValue { value: s(v), at };
        let list = vec![
            retired("old-1", RetiredAt::At(1_000)),
            retired("old-2", RetiredAt::Unstated),
            retired("leaked", RetiredAt::Revoked),
        ];
        let before = wall_ms();
        assert!(ring.set_retired(list.clone()));
        assert!(!ring.set_retired(list));
        let (v, verifying) = ring.verifying();
        assert_eq!(v, 1);
        let got: Vec<_> = verifying
            .iter()
            .map(|t| (t.value.expose_secret().to_string(), t.not_after_ms))
            .collect();
        assert_eq!(
            got[..2],
            [
                ("new".to_string(), None),
                ("old-1".to_string(), Some(1_000))
            ]
        );
        // Listed without a time: retired a grace period after it was first seen; a revoked
        // one verifies nothing.
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2].0, "old-2");
        let grace = i64::try_from(POLICY.grace.as_millis()).unwrap();
        assert!((before + grace..=wall_ms() + grace).contains(&got[2].1.unwrap()));
        // Seen again later: still the first time.
        let first = got[2].1;
        assert!(ring.set_retired(vec![retired("old-2", RetiredAt::Unstated)]));
        assert_eq!(ring.verifying().1[1].not_after_ms, first);
        assert!(
            !ring.accepts(b"old-1"),
            "a retired token is not a credential"
        );
        assert_eq!(ring.accepted().len(), 1);
        // Rotated out and revoked at once (it leaked): the grace period does not keep it.
        assert!(ring.rotate(s("newer")));
        assert_eq!(ring.verifying().1.len(), 3, "new in grace, newer, old-2");
        assert!(ring.accepts(b"new"), "in grace");
        assert!(ring.set_retired(vec![retired("new", RetiredAt::Revoked)]));
        // Revoked: no longer a credential, nor signed with, grace or not.
        assert!(!ring.accepts(b"new"));
        assert_eq!(ring.signing().expose_secret(), "newer");
        let values: Vec<_> = ring
            .verifying()
            .1
            .iter()
            .map(|v| v.value.expose_secret().to_string())
            .collect();
        assert_eq!(values, ["newer"]);
    }

    #[test]
    fn rotating_to_the_same_value_changes_nothing_and_versions_count_rotations() {
        let t0 = Instant::now();
        let ring = KeyRing::with_policy(s("a"), POLICY);
        assert!(!ring.rotate_at(s("a"), t0));
        assert_eq!(ring.version(), 0);
        ring.rotate_at(s("b"), t0);
        ring.rotate_at(s("c"), t0 + Duration::from_secs(1));
        assert_eq!(ring.version(), 2);
        // Only one previous value is kept: the one rotated out last.
        assert!(ring.accepts_at(b"b", t0 + Duration::from_secs(2)));
        assert!(!ring.accepts_at(b"a", t0 + Duration::from_secs(2)));
    }
}
