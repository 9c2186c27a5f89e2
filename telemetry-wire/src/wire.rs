//! The wire format, free of I/O: protobuf encode/decode, signing and verification.
//!
//! A record on the telemetry topic is:
//! - key: the node name (UTF-8). All of a node's GPUs share a partition, so each GPU's
//!   samples stay in order.
//! - value: a protobuf [`TelemetryBatch`].
//! - headers: [`header::KEY_ID`], [`header::SIGNATURE`] (HMAC-SHA256 over key and value, see
//!   [`crate::signing`]) and [`header::SCHEMA_VERSION`] (informational; the version
//!   that counts is inside the signed value).

use crate::signing::{RecordSigner, RecordVerifier, VerifyError};
use prost::Message;

/// Generated protobuf types (package `telemetry.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/telemetry.v1.rs"));
}

pub use proto::{GpuInfo, GpuSample, TelemetryBatch};

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 3;

/// Header names.
pub mod header {
    /// Key id of the token that signed the record.
    pub const KEY_ID: &str = "x-key-id";
    /// HMAC-SHA256 signature, 32 raw bytes.
    pub const SIGNATURE: &str = "x-signature";
    /// Schema version as decimal text.
    pub const SCHEMA_VERSION: &str = "x-schema-version";
    /// On a record dead-lettered by reference (too large to copy): its size in bytes.
    pub const RECORD_BYTES: &str = "x-record-bytes";
    /// On dead-lettered records: the reject reason (snake_case, see [`super::Reject::reason`]).
    pub const REJECT_REASON: &str = "x-reject-reason";
    /// On dead-lettered records: a human-readable detail.
    pub const REJECT_DETAIL: &str = "x-reject-detail";
    /// On dead-lettered records: where the record came from.
    pub const SOURCE_TOPIC: &str = "x-source-topic";
    /// On dead-lettered records: source partition, decimal.
    pub const SOURCE_PARTITION: &str = "x-source-partition";
    /// On dead-lettered records: source offset, decimal.
    pub const SOURCE_OFFSET: &str = "x-source-offset";
}

/// A record ready to produce: key, encoded value and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// Record key (the node name).
    pub key: Vec<u8>,
    /// Encoded [`TelemetryBatch`].
    pub value: Vec<u8>,
    /// Key id of the signing token.
    pub key_id: String,
    /// HMAC-SHA256 over key and value.
    pub signature: [u8; 32],
}

/// Encodes and signs a batch; the key is the batch's node name.
pub fn seal(signer: &RecordSigner, batch: &TelemetryBatch) -> SignedRecord {
    let key = batch.node.as_bytes().to_vec();
    let value = batch.encode_to_vec();
    let signature = signer.sign(&key, &value);
    SignedRecord {
        key,
        value,
        key_id: signer.key_id().to_string(),
        signature,
    }
}

/// Why a record was rejected. Each variant maps to a dead-letter reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    /// Signature missing, from an unknown token, or wrong.
    #[error("signature rejected: {0}")]
    Signature(#[from] VerifyError),
    /// The value is not a protobuf `TelemetryBatch`.
    #[error("cannot decode batch: {0}")]
    Decode(String),
    /// The batch says a schema version this build does not read.
    #[error("unsupported schema version {0} (this build reads 1..={SCHEMA_VERSION})")]
    UnsupportedSchema(u32),
    /// The batch decoded but breaks an invariant.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// Signed with a retired service token, but timed after its retirement (a leaked token
    /// rotated out must not sign new records).
    #[error(
        "signed with a service token retired at {retired_at_ms} ms, but the record is from {record_ms} ms"
    )]
    RetiredToken {
        /// The token's retirement, UTC ms.
        retired_at_ms: i64,
        /// The record's time, UTC ms (see [`RecordTime`]).
        record_ms: i64,
    },
    /// Larger (decompressed) than the consumer takes whole: handled by reference.
    #[error(
        "record of {bytes} bytes (decompressed) is over the consumer's cap, --max-record-bytes: dead-lettered by reference (source topic, partition, offset)"
    )]
    TooLarge {
        /// Key, value and headers together.
        bytes: usize,
    },
}

impl Reject {
    /// Short snake_case reason for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Signature(e) => e.reason(),
            Reject::Decode(_) => "decode_error",
            Reject::UnsupportedSchema(_) => "unsupported_schema_version",
            Reject::Invalid(_) => "invalid_batch",
            Reject::RetiredToken { .. } => "retired_token",
            Reject::TooLarge { .. } => "record_too_large",
        }
    }
}

/// The parts of a consumed record that [`open`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordParts<'a> {
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// [`header::KEY_ID`] header.
    pub key_id: Option<&'a [u8]>,
    /// [`header::SIGNATURE`] header.
    pub signature: Option<&'a [u8]>,
    /// The broker's timestamp of the record.
    pub time: RecordTime,
}

/// The broker's timestamp of a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordTime {
    /// None given.
    #[default]
    None,
    /// Set by the producer (whoever signed the record chose it).
    Create(i64),
    /// Set by the broker when it appended the record (the topic's
    /// `message.timestamp.type=LogAppendTime`): not up to the producer.
    LogAppend(i64),
}

/// The time a record counts as made at, for a retired token's limit: the broker's append
/// time when the topic has one (no producer can choose it), else the latest of the
/// producer's timestamp, the batch's collection time and its newest sample (all chosen by
/// the signer, so a retired token can only sign records dated before its retirement, which
/// the retention window bounds).
pub fn record_time(batch: &TelemetryBatch, time: RecordTime) -> i64 {
    match time {
        RecordTime::LogAppend(t) => t,
        RecordTime::Create(t) => t.max(claimed_time(batch)),
        RecordTime::None => claimed_time(batch),
    }
}

fn claimed_time(batch: &TelemetryBatch) -> i64 {
    batch
        .samples
        .iter()
        .map(|s| s.timestamp_ms)
        .fold(batch.collected_at_ms, i64::max)
}

/// Verifies the signature, decodes the batch and checks its invariants; a record signed
/// with a retired token must be timed (see [`record_time`]) before the token's retirement.
///
/// Invariants: schema version in `1..=SCHEMA_VERSION`; node non-empty and equal to the
/// record key; every sample names a GPU listed in the batch, with a non-empty uuid; GPUs
/// belong to the batch's node.
///
/// # Errors
/// A [`Reject`] saying why; the caller dead-letters the record.
pub fn open(verifier: &RecordVerifier, parts: RecordParts<'_>) -> Result<TelemetryBatch, Reject> {
    let key = parts.key.unwrap_or_default();
    let value = parts.value.unwrap_or_default();
    let limit = verifier.verify_limited(parts.key_id, key, value, parts.signature)?;
    let batch = TelemetryBatch::decode(value).map_err(|e| Reject::Decode(e.to_string()))?;
    validate(&batch, key)?;
    if let Some(retired_at_ms) = limit {
        let record_ms = record_time(&batch, parts.time);
        if record_ms >= retired_at_ms {
            return Err(Reject::RetiredToken {
                retired_at_ms,
                record_ms,
            });
        }
    }
    Ok(batch)
}

/// Most GPUs one batch may list (a node has 8, 16 with MIG parents; a simulated node more).
pub const MAX_GPUS_PER_BATCH: usize = 1_024;
/// Most samples one batch may carry.
pub const MAX_SAMPLES_PER_BATCH: usize = 65_536;

fn validate(batch: &TelemetryBatch, key: &[u8]) -> Result<(), Reject> {
    if batch.schema_version == 0 || batch.schema_version > SCHEMA_VERSION {
        return Err(Reject::UnsupportedSchema(batch.schema_version));
    }
    if batch.node.is_empty() {
        return Err(Reject::Invalid("node is empty".into()));
    }
    if batch.node.as_bytes() != key {
        return Err(Reject::Invalid(
            "record key differs from the batch's node".into(),
        ));
    }
    if batch.gpus.len() > MAX_GPUS_PER_BATCH || batch.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(Reject::Invalid(format!(
            "{} GPUs and {} samples; at most {MAX_GPUS_PER_BATCH} and {MAX_SAMPLES_PER_BATCH} per record",
            batch.gpus.len(),
            batch.samples.len()
        )));
    }
    // One pass each: a set of the listed GPUs, then a lookup per sample (not a scan).
    let mut listed = std::collections::HashSet::with_capacity(batch.gpus.len());
    for gpu in &batch.gpus {
        if gpu.uuid.is_empty() {
            return Err(Reject::Invalid("a GPU has an empty uuid".into()));
        }
        if gpu.node != batch.node {
            return Err(Reject::Invalid(format!(
                "GPU {} claims node {:?} in a batch from {:?}",
                gpu.uuid, gpu.node, batch.node
            )));
        }
        listed.insert(gpu.uuid.as_str());
    }
    for s in &batch.samples {
        if !listed.contains(s.uuid.as_str()) {
            return Err(Reject::Invalid(format!(
                "sample for GPU {:?} which the batch does not list",
                s.uuid
            )));
        }
    }
    Ok(())
}

/// Checks the batch's collection time and its sample times against the reader's clock: none
/// before the Unix epoch, none more than `max_future_ms` ahead of `now_ms`.
///
/// # Errors
/// [`Reject::Invalid`] naming the collection time or the first offending sample.
pub fn check_times(batch: &TelemetryBatch, now_ms: i64, max_future_ms: i64) -> Result<(), Reject> {
    let latest = now_ms.saturating_add(max_future_ms);
    if batch.collected_at_ms < 0 || batch.collected_at_ms > latest {
        return Err(Reject::Invalid(format!(
            "collected at {} ms, outside [0, now + {} s]",
            batch.collected_at_ms,
            max_future_ms / 1000
        )));
    }
    for s in &batch.samples {
        if s.timestamp_ms < 0 || s.timestamp_ms > latest {
            return Err(Reject::Invalid(format!(
                "sample of GPU {} at {} ms is outside [0, now + {} s]",
                s.uuid,
                s.timestamp_ms,
                max_future_ms / 1000
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::SecretString;

    fn token() -> SecretString {
        SecretString::from("test-token".to_string())
    }

    pub(crate) fn batch() -> TelemetryBatch {
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            node: "node-a".into(),
            collected_at_ms: 1_700_000_000_123,
            gpus: vec![GpuInfo {
                uuid: "GPU-1".into(),
                index: 0,
                name: "H100".into(),
                node: "node-a".into(),
                ..Default::default()
            }],
            samples: vec![GpuSample {
                uuid: "GPU-1".into(),
                timestamp_ms: 1_700_000_000_123,
                gpu_utilization_percent: Some(0),
                power_usage_milliwatts: Some(312_500),
                ..Default::default()
            }],
        }
    }

    fn parts(r: &SignedRecord) -> RecordParts<'_> {
        RecordParts {
            key: Some(&r.key),
            value: Some(&r.value),
            key_id: Some(r.key_id.as_bytes()),
            signature: Some(&r.signature),
            time: RecordTime::None,
        }
    }

    #[test]
    fn sealed_batch_opens_to_the_same_batch_with_absent_fields_still_absent() {
        let rec = seal(&RecordSigner::new(&token()), &batch());
        let got = open(&RecordVerifier::new([&token()]), parts(&rec)).unwrap();
        assert_eq!(got, batch());
        assert_eq!(got.samples[0].gpu_utilization_percent, Some(0));
        assert_eq!(got.samples[0].temperature_celsius, None);
        assert_eq!(rec.key, b"node-a");
    }

    #[test]
    fn a_retired_token_verifies_records_from_before_its_retirement_only() {
        let old = SecretString::from("retired-token".to_string());
        let v = RecordVerifier::with_limits([(&token(), None), (&old, Some(1_700_000_000_200))]);
        let rec = seal(&RecordSigner::new(&old), &batch());
        // The batch and its sample are at ...123: before the retirement at ...200.
        assert!(open(&v, parts(&rec)).is_ok());
        // The broker appended it after the retirement: refused, whatever the batch claims.
        let late = RecordParts {
            time: RecordTime::LogAppend(1_700_000_000_200),
            ..parts(&rec)
        };
        assert_eq!(
            open(&v, late).unwrap_err(),
            Reject::RetiredToken {
                retired_at_ms: 1_700_000_000_200,
                record_ms: 1_700_000_000_200
            }
        );
        assert_eq!(open(&v, late).unwrap_err().reason(), "retired_token");
        // A producer timestamp after the retirement counts too.
        let created_late = RecordParts {
            time: RecordTime::Create(1_700_000_000_300),
            ..parts(&rec)
        };
        assert!(open(&v, created_late).is_err());
        // A newer batch signed with it: refused.
        let mut newer = batch();
        newer.samples[0].timestamp_ms = 1_700_000_000_250;
        let rec = seal(&RecordSigner::new(&old), &newer);
        assert_eq!(open(&v, parts(&rec)).unwrap_err().reason(), "retired_token");
        // The current token has no limit.
        assert!(open(&v, parts(&seal(&RecordSigner::new(&token()), &newer))).is_ok());
    }

    #[test]
    fn health_and_xid_counts_survive_seal_and_open() {
        use crate::health::{GpuHealth, HealthStatus, XidCount};
        let mut b = batch();
        b.gpus[0].health = Some(GpuHealth {
            status: HealthStatus::Failed.into(),
            reasons: vec!["xid: 79 (GPU has fallen off the bus)".into()],
        });
        b.gpus[0].xid_counts = vec![
            XidCount { code: 13, count: 2 },
            XidCount { code: 79, count: 1 },
        ];
        b.gpus[0].last_xid = Some(79);
        b.gpus[0].last_xid_ms = Some(1_700_000_000_100);
        let rec = seal(&RecordSigner::new(&token()), &b);
        let got = open(&RecordVerifier::new([&token()]), parts(&rec)).unwrap();
        assert_eq!(got, b);
        assert_eq!(
            got.gpus[0].health.as_ref().unwrap().status(),
            HealthStatus::Failed
        );
    }

    #[test]
    fn a_version_1_batch_from_an_older_collector_is_still_read() {
        let mut old = batch();
        old.schema_version = 1;
        let rec = seal(&RecordSigner::new(&token()), &old);
        let got = open(&RecordVerifier::new([&token()]), parts(&rec)).unwrap();
        assert_eq!(got, old);
        assert_eq!(
            got.samples[0].memory_free_bytes, None,
            "version 2 fields absent"
        );
        assert_eq!(got.gpus[0].health, None, "version 3 fields absent");
        // A version 2 batch (no health, no XIDs) reads the same way.
        old.schema_version = 2;
        let rec = seal(&RecordSigner::new(&token()), &old);
        assert_eq!(
            open(&RecordVerifier::new([&token()]), parts(&rec)).unwrap(),
            old
        );
    }

    #[test]
    fn each_reject_has_its_reason() {
        let v = RecordVerifier::new([&token()]);
        let signer = RecordSigner::new(&token());
        let reason = |b: &TelemetryBatch| open(&v, parts(&seal(&signer, b))).unwrap_err().reason();

        let mut b = batch();
        b.schema_version = SCHEMA_VERSION + 1;
        assert_eq!(reason(&b), "unsupported_schema_version");
        let mut b = batch();
        b.samples[0].uuid = "GPU-unknown".into();
        assert_eq!(reason(&b), "invalid_batch");
        let mut b = batch();
        b.gpus[0].node = "node-b".into();
        assert_eq!(reason(&b), "invalid_batch");

        let mut rec = seal(&signer, &batch());
        rec.key = b"node-b".to_vec();
        assert_eq!(open(&v, parts(&rec)).unwrap_err().reason(), "bad_signature");

        let garbage = vec![0xff; 40];
        let sig = signer.sign(b"node-a", &garbage);
        let p = RecordParts {
            key: Some(b"node-a"),
            value: Some(&garbage),
            key_id: Some(signer.key_id().as_bytes()),
            signature: Some(&sig),
            time: RecordTime::None,
        };
        assert_eq!(open(&v, p).unwrap_err().reason(), "decode_error");
        assert_eq!(
            open(&v, RecordParts::default()).unwrap_err().reason(),
            "unsigned"
        );
    }

    #[test]
    fn sample_times_in_the_future_or_before_1970_are_invalid() {
        let b = batch();
        let t = b.samples[0].timestamp_ms;
        assert_eq!(check_times(&b, t, 0), Ok(()));
        assert_eq!(check_times(&b, t - 1000, 1000), Ok(()));
        assert_eq!(
            check_times(&b, t - 1001, 1000).unwrap_err().reason(),
            "invalid_batch"
        );
        let mut old = batch();
        old.samples[0].timestamp_ms = -1;
        assert_eq!(
            check_times(&old, t, 0).unwrap_err().reason(),
            "invalid_batch"
        );
        // The collection time is bounded the same way.
        let mut ahead = batch();
        ahead.collected_at_ms = t + 10_000;
        assert_eq!(
            check_times(&ahead, t, 1000).unwrap_err().to_string(),
            format!(
                "invalid batch: collected at {} ms, outside [0, now + 1 s]",
                t + 10_000
            )
        );
    }

    #[test]
    fn oversized_batches_are_refused_and_a_big_valid_one_checks_in_linear_time() {
        let signer = RecordSigner::new(&token());
        let v = RecordVerifier::new([&token()]);
        let gpus: Vec<GpuInfo> = (0..MAX_GPUS_PER_BATCH)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{i}"),
                node: "node-a".into(),
                ..Default::default()
            })
            .collect();
        let mut b = batch();
        b.samples = gpus
            .iter()
            .map(|g| GpuSample {
                uuid: g.uuid.clone(),
                timestamp_ms: 1,
                ..Default::default()
            })
            .collect();
        b.gpus = gpus;
        // 1,024 GPUs and samples: valid (a set lookup per sample, not a scan).
        assert!(open(&v, parts(&seal(&signer, &b))).is_ok());
        b.gpus.push(GpuInfo {
            uuid: "GPU-one-too-many".into(),
            node: "node-a".into(),
            ..Default::default()
        });
        let err = open(&v, parts(&seal(&signer, &b))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid batch: 1025 GPUs and 1024 samples; at most 1024 and 65536 per record"
        );
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_bytes(
            key in proptest::collection::vec(any::<u8>(), 0..32),
            value in proptest::collection::vec(any::<u8>(), 0..512),
            sign in any::<bool>(),
        ) {
            let signer = RecordSigner::new(&token());
            let v = RecordVerifier::new([&token()]);
            let sig = signer.sign(&key, &value);
            let p = RecordParts {
                key: Some(&key),
                value: Some(&value),
                key_id: Some(signer.key_id().as_bytes()),
                signature: sign.then_some(&sig[..]),
                time: RecordTime::Create(1),
            };
            let _ = open(&v, p);
        }

        #[test]
        fn any_batch_roundtrips(
            node in "[a-z]{1,12}",
            util in proptest::option::of(0u32..=100),
            mem in proptest::option::of(any::<u64>()),
            ts in any::<i64>(),
        ) {
            let mut b = batch();
            b.node = node.clone();
            b.gpus[0].node = node;
            b.samples[0].gpu_utilization_percent = util;
            b.samples[0].memory_used_bytes = mem;
            b.samples[0].timestamp_ms = ts;
            let rec = seal(&RecordSigner::new(&token()), &b);
            prop_assert_eq!(open(&RecordVerifier::new([&token()]), parts(&rec)).unwrap(), b);
        }
    }
}
