//! The telemetry wire format, free of I/O, shared by everything that writes or reads a
//! record (collector, streamer, api, tests) without pulling in a Kafka client.
//!
//! - [`wire`]: protobuf types ([`wire::TelemetryBatch`], [`wire::GpuInfo`],
//!   [`wire::GpuSample`]), the schema version, [`wire::seal`] / [`wire::open`] (encode + sign,
//!   verify + decode). Unit- and property-tested.
//! - [`signing`]: [`RecordSigner`] / [`RecordVerifier`], HMAC-SHA256 over a record's key and
//!   value with a key id that tells a rotated token from a forged signature.
//! - [`metric`]: the one table of metric names, units and how each is read off a sample.
//! - [`health`]: GPU health status names and the XID codes that bear on health.

pub mod health;
pub mod metric;
pub mod signing;
pub mod wire;

pub use signing::{RecordSigner, RecordVerifier, VerifyError};
