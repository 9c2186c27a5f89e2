//! HMAC-SHA256 signatures on Kafka records, keyed by the service token.
//!
//! The MAC covers the record key and value: `HMAC(token, be32(len(key)) || key || value)`.
//! The length prefix makes the key/value boundary unambiguous, so bytes cannot be moved from
//! one to the other, and a valid value cannot be replayed under another GPU's key.
//!
//! Each signature travels with a **key id**: the first 8 bytes of
//! `SHA-256("gpu-telemetry-key-id/v1" || token)`, hex. A verifier that does not know the key id
//! reports [`VerifyError::UnknownKeyId`] (a token it was never given, e.g. a rotation it has
//! not seen yet), while a known key id with a wrong MAC is [`VerifyError::BadSignature`]
//! (forged or corrupted). The key id reveals nothing useful about a high-entropy token.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 32;

/// The key id of a token (16 lowercase hex chars).
pub fn key_id(token: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(b"gpu-telemetry-key-id/v1");
    h.update(token.expose_secret().as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(16);
    for b in &digest[..8] {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn mac_for(token: &SecretString) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(token.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

fn feed(mac: &mut HmacSha256, key: &[u8], value: &[u8]) {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(key);
    mac.update(value);
}

/// Signs records with one service token.
#[derive(Clone)]
pub struct RecordSigner {
    key_id: String,
    mac: HmacSha256,
}

impl std::fmt::Debug for RecordSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl RecordSigner {
    /// A signer for `token`.
    pub fn new(token: &SecretString) -> Self {
        Self {
            key_id: key_id(token),
            mac: mac_for(token),
        }
    }

    /// The key id to send beside each signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signature of a record with this key and value.
    pub fn sign(&self, key: &[u8], value: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.mac.clone();
        feed(&mut mac, key, value);
        mac.finalize().into_bytes().into()
    }
}

/// Why a record's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The record carries no signature or no key id.
    #[error("record is not signed")]
    Unsigned,
    /// The key id header is not 16 lowercase hex characters (it is never echoed: it is
    /// attacker-controlled).
    #[error("malformed key id")]
    MalformedKeyId,
    /// The key id is not one of the tokens this verifier holds.
    #[error("unknown key id {0}")]
    UnknownKeyId(String),
    /// The key id is known but the MAC does not match: forged or corrupted.
    #[error("signature does not match")]
    BadSignature,
}

impl VerifyError {
    /// Short snake_case reason, used in dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Unsigned => "unsigned",
            VerifyError::MalformedKeyId => "malformed_key_id",
            VerifyError::UnknownKeyId(_) => "unknown_key_id",
            VerifyError::BadSignature => "bad_signature",
        }
    }
}

/// Verifies records against the tokens it was given (current and, during rotation, previous).
#[derive(Clone)]
pub struct RecordVerifier {
    // Per key id: the MAC, and the time (UTC ms) records signed with it must be before
    // (a retired token), if any.
    macs: HashMap<String, (HmacSha256, Option<i64>)>,
}

impl std::fmt::Debug for RecordVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordVerifier")
            .field("key_ids", &self.macs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RecordVerifier {
    /// A verifier accepting signatures made with any of `tokens`.
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a SecretString>) -> Self {
        Self::with_limits(tokens.into_iter().map(|t| (t, None)))
    }

    /// A verifier accepting signatures made with any of `tokens`, each with the time (UTC
    /// ms) a record signed with it must be timed before (`None`: no limit; a retired token:
    /// its retirement). [`RecordVerifier::verify_limited`] returns the limit of the token a
    /// signature was made with.
    pub fn with_limits<'a>(
        tokens: impl IntoIterator<Item = (&'a SecretString, Option<i64>)>,
    ) -> Self {
        Self {
            macs: tokens
                .into_iter()
                .map(|(t, limit)| (key_id(t), (mac_for(t), limit)))
                .collect(),
        }
    }

    /// Checks `signature` over `key`/`value`, made with the token named by `key_id`.
    /// The MAC comparison is constant time.
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify(
        &self,
        key_id: Option<&[u8]>,
        key: &[u8],
        value: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        self.verify_limited(key_id, key, value, signature)
            .map(|_| ())
    }

    /// [`RecordVerifier::verify`], returning the time limit of the token the signature was
    /// made with (see [`RecordVerifier::with_limits`]).
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify_limited(
        &self,
        key_id: Option<&[u8]>,
        key: &[u8],
        value: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<Option<i64>, VerifyError> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(VerifyError::Unsigned);
        };
        let well_formed = key_id.len() == 16
            && key_id
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !well_formed {
            return Err(VerifyError::MalformedKeyId);
        }
        // Checked above: 16 ASCII hex characters, safe to log.
        let key_id_str = String::from_utf8_lossy(key_id).into_owned();
        let Some((mac, limit)) = self.macs.get(&key_id_str) else {
            return Err(VerifyError::UnknownKeyId(key_id_str));
        };
        let mut mac = mac.clone();
        feed(&mut mac, key, value);
        mac.verify_slice(signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(*limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn a_signed_record_verifies() {
        let signer = RecordSigner::new(&tok("t1"));
        let sig = signer.sign(b"node-a", b"payload");
        let v = RecordVerifier::new([&tok("t1")]);
        assert_eq!(
            v.verify(
                Some(signer.key_id().as_bytes()),
                b"node-a",
                b"payload",
                Some(&sig)
            ),
            Ok(())
        );
    }

    #[test]
    fn swapping_key_or_value_or_moving_bytes_between_them_fails() {
        let signer = RecordSigner::new(&tok("t1"));
        let kid = signer.key_id().as_bytes().to_vec();
        let sig = signer.sign(b"node-a", b"payload");
        let v = RecordVerifier::new([&tok("t1")]);
        assert_eq!(
            v.verify(Some(&kid), b"node-b", b"payload", Some(&sig)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            v.verify(Some(&kid), b"node-a", b"payloaX", Some(&sig)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            v.verify(Some(&kid), b"node-ap", b"ayload", Some(&sig)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            v.verify(Some(&kid), b"node-a", b"payload", Some(&sig[..31])),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn other_token_is_unknown_key_id_and_missing_headers_are_unsigned() {
        let signer = RecordSigner::new(&tok("other"));
        let sig = signer.sign(b"k", b"v");
        let v = RecordVerifier::new([&tok("t1")]);
        assert_eq!(
            v.verify(Some(signer.key_id().as_bytes()), b"k", b"v", Some(&sig)),
            Err(VerifyError::UnknownKeyId(signer.key_id().to_string()))
        );
        assert_eq!(
            v.verify(None, b"k", b"v", Some(&sig)),
            Err(VerifyError::Unsigned)
        );
        for bad in [
            &b"0123"[..],
            b"0123456789ABCDEF",
            b"0123456789abcdeg",
            b"012345678\n9abcdef",
        ] {
            assert_eq!(
                v.verify(Some(bad), b"k", b"v", Some(&sig)),
                Err(VerifyError::MalformedKeyId)
            );
        }
    }

    #[test]
    fn verifier_with_previous_token_accepts_both_during_rotation() {
        let old = RecordSigner::new(&tok("old"));
        let new = RecordSigner::new(&tok("new"));
        let v = RecordVerifier::new([&tok("new"), &tok("old")]);
        for s in [&old, &new] {
            let sig = s.sign(b"k", b"v");
            assert_eq!(
                v.verify(Some(s.key_id().as_bytes()), b"k", b"v", Some(&sig)),
                Ok(())
            );
        }
        assert_ne!(old.key_id(), new.key_id());
        assert_eq!(old.key_id().len(), 16);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_forgery_is_accepted(
            key in proptest::collection::vec(any::<u8>(), 0..32),
            value in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<usize>(),
            bit in 0u8..8,
        ) {
            let real = SecretString::from("the-real-token-0123456789".to_string());
            let other = SecretString::from("another-token-0123456789".to_string());
            let signer = RecordSigner::new(&real);
            let sig = signer.sign(&key, &value);
            let v = RecordVerifier::new([&real]);
            let id = signer.key_id().as_bytes();
            prop_assert!(v.verify(Some(id), &key, &value, Some(&sig)).is_ok());
            // Another token's signature under the real key id: refused.
            let forged = RecordSigner::new(&other).sign(&key, &value);
            prop_assert!(v.verify(Some(id), &key, &value, Some(&forged)).is_err());
            // Any one bit changed in the signature, the value or the key: refused.
            let mut s2 = sig;
            s2[flip % s2.len()] ^= 1 << bit;
            prop_assert!(v.verify(Some(id), &key, &value, Some(&s2)).is_err());
            if !value.is_empty() {
                let mut v2 = value.clone();
                let i = flip % v2.len();
                v2[i] ^= 1 << bit;
                prop_assert!(v.verify(Some(id), &key, &v2, Some(&sig)).is_err());
            }
            if !key.is_empty() {
                let mut k2 = key.clone();
                let i = flip % k2.len();
                k2[i] ^= 1 << bit;
                prop_assert!(v.verify(Some(id), &k2, &value, Some(&sig)).is_err());
            }
            // A truncated signature: refused.
            prop_assert!(v.verify(Some(id), &key, &value, Some(&sig[..31])).is_err());
        }
    }
}
