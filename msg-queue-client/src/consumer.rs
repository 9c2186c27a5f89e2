//! The typed telemetry consumer: a consumer-group member whose *store* owns the offsets.
//!
//! On every partition assignment the consumer asks its [`OffsetSource`] where to start
//! ([`Resume`]): the offset the store has durably covered, "from the start of retention" (a
//! store that has covered nothing yet, such as a new data directory), or the group's
//! committed offset (a store that keeps no offsets, such as a remote history). A stored
//! offset the broker no longer has (past its log end: topic recreated, broker replaced) is
//! reported once and the partition read from its start. Kafka group commits, made by
//! [`TelemetryConsumer::commit`] only after the caller stored the data, then serve lag
//! monitoring — and, for a store without offsets, are where it resumes.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::{QueueError, kafka};
use telemetry_wire::wire::{RecordParts, RecordTime, header};

/// Where to resume a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// From the start of the broker's log.
    Beginning,
    /// At this offset (the next one to read).
    At(i64),
    /// At the group's committed offset (the start of the log when the group has none).
    Committed,
}

/// Tells the consumer where to resume a partition.
pub trait OffsetSource: Send + Sync + 'static {
    /// Where to resume `topic`/`partition`.
    fn resume(&self, topic: &str, partition: i32) -> Resume;
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topic to consume.
    pub topic: String,
    /// `session.timeout.ms`: how soon a dead member's partitions move to the others.
    pub session_timeout: Duration,
    /// The largest record (key, value and headers together, as delivered: decompressed) that
    /// is handed over whole; a larger one arrives as a reference only (see
    /// [`ConsumedRecord::oversized`]).
    pub max_record_bytes: usize,
    /// Extra librdkafka properties.
    pub extra: Vec<(String, String)>,
    /// Where the consumer notes its assignment and what it has handled, for
    /// [`LagProbe`]; `None`: not noted.
    pub lag: Option<Arc<ConsumerLag>>,
}

/// The default of [`ConsumerConfig::max_record_bytes`]: 1,000,000 bytes, librdkafka's
/// `message.max.bytes` — what a producer can send uncompressed, and so the most the
/// dead-letter producer can copy. A telemetry record is a few KB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Most (compressed) bytes one fetch may bring (`fetch.max.bytes`; also
/// `receive.message.max.bytes`, 512 bytes more as librdkafka requires, which caps what a zstd
/// batch may inflate to). librdkafka inflates gzip, lz4 and snappy batches without a cap of
/// its own: what bounds them is the batch size the broker allows (`max.message.bytes`) and
/// how much is fetched at once — this, and the prefetch queue ([`QUEUED_MAX_KBYTES`]).
pub const FETCH_MAX_BYTES: usize = 4 << 20;
/// `queued.max.messages.kbytes`: how much librdkafka prefetches per partition queue.
pub const QUEUED_MAX_KBYTES: usize = 8 << 10;

/// Consumer lag per assigned partition: the partition's high watermark minus the next
/// offset the consumer has still to handle (records on the broker not yet stored). The
/// consumer notes its assignment and each committed batch; a [`LagProbe`], on a client of
/// its own, reads the watermarks — so the lag keeps growing while the consumer is stuck
/// (a store failing, a batch retried), and is known before anything was ever committed.
#[derive(Debug, Default)]
pub struct ConsumerLag(std::sync::Mutex<LagState>);

#[derive(Debug, Default)]
struct LagState {
    /// Assigned partitions → the next offset to handle, once known.
    assigned: std::collections::BTreeMap<i32, Option<i64>>,
    /// The last measurement: partition → lag.
    lags: std::collections::BTreeMap<i32, i64>,
}

impl ConsumerLag {
    fn state(&self) -> std::sync::MutexGuard<'_, LagState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(partition, lag)` of each assigned partition whose watermark was read last time.
    pub fn snapshot(&self) -> Vec<(i32, i64)> {
        self.state().lags.iter().map(|(p, l)| (*p, *l)).collect()
    }

    /// Notes that `partitions` are assigned, starting at `start` (`None`: the log start).
    pub fn assigned(&self, partitions: impl IntoIterator<Item = (i32, Option<i64>)>) {
        let mut st = self.state();
        for (p, start) in partitions {
            st.assigned.insert(p, start);
        }
    }

    /// Notes that every partition was revoked.
    pub fn revoked(&self) {
        let mut st = self.state();
        st.assigned.clear();
        st.lags.clear();
    }

    /// Notes that records before `next_offsets` (partition → next offset) are handled.
    pub fn handled(&self, next_offsets: &[(i32, i64)]) {
        let mut st = self.state();
        for &(p, o) in next_offsets {
            if let Some(at) = st.assigned.get_mut(&p) {
                *at = Some(at.map_or(o, |old| old.max(o)));
            }
        }
    }
}

/// Reads the watermarks of the assigned partitions on a Kafka client of its own and turns
/// them into [`ConsumerLag`]'s values.
pub struct LagProbe {
    client: BaseConsumer,
    topic: String,
    lag: Arc<ConsumerLag>,
}

impl std::fmt::Debug for LagProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagProbe")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl LagProbe {
    /// A probe of `topic` on `brokers` (with the consumer's `extra` properties: security).
    ///
    /// # Errors
    /// [`QueueError::Kafka`] for invalid configuration.
    pub fn new(
        brokers: &str,
        topic: &str,
        extra: &[(String, String)],
        lag: Arc<ConsumerLag>,
    ) -> Result<Self, QueueError> {
        Ok(Self {
            client: crate::client_config(brokers, extra)
                .create()
                .map_err(kafka("create lag probe"))?,
            topic: topic.to_string(),
            lag,
        })
    }

    /// Measures every assigned partition once (blocks: up to [`WATERMARK_TIMEOUT`] per
    /// partition). A partition whose watermarks cannot be read has no value this time.
    pub fn measure(&self) {
        let assigned: Vec<(i32, Option<i64>)> = self
            .lag
            .state()
            .assigned
            .iter()
            .map(|(p, a)| (*p, *a))
            .collect();
        let mut lags = std::collections::BTreeMap::new();
        for (p, at) in assigned {
            match self
                .client
                .fetch_watermarks(&self.topic, p, WATERMARK_TIMEOUT)
            {
                Ok((low, high)) => {
                    let at = at.unwrap_or(low).max(low);
                    lags.insert(p, (high - at).max(0));
                }
                Err(error) => {
                    tracing::debug!(%error, partition = p, "watermarks unavailable; lag unknown");
                }
            }
        }
        let mut st = self.lag.state();
        // Only partitions still assigned (a rebalance may have come meanwhile).
        lags.retain(|p, _| st.assigned.contains_key(p));
        st.lags = lags;
    }
}

impl ConsumerConfig {
    /// Defaults: 10 s session timeout.
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topic: topic.into(),
            session_timeout: Duration::from_secs(10),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            extra: Vec::new(),
            lag: None,
        }
    }
}

/// The consumer context: seeks each newly assigned partition to where the store says.
pub struct AssignContext {
    offsets: Arc<dyn OffsetSource>,
    lag: Option<Arc<ConsumerLag>>,
}

impl std::fmt::Debug for AssignContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignContext").finish_non_exhaustive()
    }
}

impl ClientContext for AssignContext {}

impl ConsumerContext for AssignContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in assigned {
                    let offset = match self.offsets.resume(&topic, partition) {
                        Resume::At(o) => checked_resume(base, &topic, partition, o),
                        Resume::Beginning => Offset::Beginning,
                        Resume::Committed => match committed(base, &topic, partition) {
                            Ok(Some(o)) => checked_resume(base, &topic, partition, o),
                            Ok(None) => Offset::Beginning,
                            // librdkafka looks the commit up itself (the log start without one).
                            Err(()) => Offset::Stored,
                        },
                    };
                    tracing::info!(topic, partition, ?offset, "partition assigned");
                    if let Some(lag) = &self.lag {
                        let start = match offset {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        };
                        lag.assigned([(partition, start)]);
                    }
                    if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                        tracing::error!(%error, topic, partition, "cannot set start offset");
                    }
                }
                if let Err(error) = base.assign(tpl) {
                    tracing::error!(%error, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                if let Some(lag) = &self.lag {
                    lag.revoked();
                }
                if let Err(error) = base.unassign() {
                    tracing::error!(%error, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = base.unassign();
            }
        }
    }
}

/// The group's committed offset of `partition`: `Ok(None)` when it has none, `Err` when it
/// cannot be read now (said once here).
fn committed<C: ConsumerContext>(
    base: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, ()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    match base.committed_offsets(tpl, WATERMARK_TIMEOUT) {
        Ok(c) => Ok(
            match c.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        ),
        Err(error) => {
            tracing::warn!(%error, topic, partition, "cannot read the group's committed offset now; librdkafka will resume at it");
            Err(())
        }
    }
}

/// How long an assignment waits for a partition's watermarks.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to resume `partition` given the store's `stored` offset: there, unless the broker
/// no longer has it. A stored offset past the broker's log end means the topic was
/// recreated or the broker replaced (its log starts again); one before the log start means
/// retention deleted records never stored. Either way the broker's log is read from its
/// start — every stored sample is kept, and idempotence on (GPU, time) absorbs re-reads.
fn checked_resume<C: ConsumerContext>(
    base: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    stored: i64,
) -> Offset {
    match base.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
        Ok((_, high)) if stored > high => {
            tracing::warn!(
                topic,
                partition,
                stored_offset = stored,
                log_end = high,
                "the broker no longer has the stored offset (topic recreated or broker \
                 replaced); keeping the stored history and reading the partition from its start"
            );
            Offset::Beginning
        }
        Ok((low, _)) if stored < low => {
            tracing::warn!(
                topic,
                partition,
                stored_offset = stored,
                log_start = low,
                "records after the stored offset were deleted by the broker's retention before \
                 they were stored; reading from the log start"
            );
            Offset::Beginning
        }
        Ok(_) => Offset::Offset(stored),
        Err(error) => {
            tracing::warn!(%error, topic, partition, "cannot read watermarks; resuming at the stored offset");
            Offset::Offset(stored)
        }
    }
}

/// One consumed record, owned (so a batch can outlive the consumer's poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Option<Vec<u8>>,
    /// All headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The broker's timestamp.
    pub time: RecordTime,
    /// `Some(bytes)` when the record was larger than [`ConsumerConfig::max_record_bytes`]:
    /// key, value and headers are then left out (never copied), and the record is handled by
    /// its partition and offset alone.
    pub oversized: Option<usize>,
}

impl ConsumedRecord {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The parts [`telemetry_wire::wire::open`] checks.
    pub fn parts(&self) -> RecordParts<'_> {
        RecordParts {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            key_id: self.header(header::KEY_ID),
            signature: self.header(header::SIGNATURE),
            time: self.time,
        }
    }
}

/// A consumer-group member of the telemetry topic.
pub struct TelemetryConsumer {
    inner: StreamConsumer<AssignContext>,
    topic: String,
    max_record_bytes: usize,
    lag: Option<Arc<ConsumerLag>>,
}

impl std::fmt::Debug for TelemetryConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryConsumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TelemetryConsumer {
    /// Joins the group and subscribes. Partitions start where `offsets` says.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] for invalid configuration.
    pub fn new(cfg: &ConsumerConfig, offsets: Arc<dyn OffsetSource>) -> Result<Self, QueueError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Fewer, fuller fetches under load; at most 100 ms added when idle (well inside
            // the 1 s visibility target).
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "100")
            // Bounded fetches; see FETCH_MAX_BYTES.
            .set("fetch.max.bytes", FETCH_MAX_BYTES.to_string())
            .set(
                "receive.message.max.bytes",
                (FETCH_MAX_BYTES + 512).to_string(),
            )
            .set(
                "session.timeout.ms",
                cfg.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (cfg.session_timeout.as_millis() / 4).max(100).to_string(),
            );
        for (k, v) in &cfg.extra {
            c.set(k, v);
        }
        let inner: StreamConsumer<AssignContext> = c
            .create_with_context(AssignContext {
                offsets,
                lag: cfg.lag.clone(),
            })
            .map_err(kafka("create consumer"))?;
        inner.subscribe(&[&cfg.topic]).map_err(kafka("subscribe"))?;
        Ok(Self {
            inner,
            topic: cfg.topic.clone(),
            max_record_bytes: cfg.max_record_bytes,
            lag: cfg.lag.clone(),
        })
    }

    /// Waits for at least one record, then takes what else arrives within `linger`, up to
    /// `max` records.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] for a consume error (the caller logs it and calls again).
    pub async fn recv_batch(
        &self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<ConsumedRecord>, QueueError> {
        let first = self.inner.recv().await.map_err(kafka("consume"))?;
        let mut out = Vec::with_capacity(max.min(1024));
        out.push(own(&first, self.max_record_bytes));
        drop(first);
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Ok(Ok(m)) => out.push(own(&m, self.max_record_bytes)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume error inside a batch");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Commits `next_offsets` (partition → the next offset to read) to the group,
    /// asynchronously, or synchronously when `sync` (used once on shutdown).
    ///
    /// # Errors
    /// [`QueueError::Kafka`] when the commit cannot be issued.
    pub fn commit(&self, next_offsets: &[(i32, i64)], sync: bool) -> Result<(), QueueError> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(next_offsets.len());
        for &(p, o) in next_offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(kafka("build commit list"))?;
        }
        if let Some(lag) = &self.lag {
            lag.handled(next_offsets);
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.inner.commit(&tpl, mode).map_err(kafka("commit"))
    }
}

impl TelemetryConsumer {
    /// Synchronous commit of `next_offsets`, limited to the partitions still assigned to
    /// this member (a revoked partition's offsets belong to its new owner now). Used once,
    /// on shutdown; blocks up to the client's request timeout.
    ///
    /// # Errors
    /// [`QueueError::Kafka`] when the assignment cannot be read or the commit fails.
    pub fn commit_owned(&self, next_offsets: &[(i32, i64)]) -> Result<(), QueueError> {
        let assigned = self.inner.assignment().map_err(kafka("read assignment"))?;
        let owned: Vec<(i32, i64)> = next_offsets
            .iter()
            .copied()
            .filter(|(p, _)| {
                assigned
                    .elements()
                    .iter()
                    .any(|e| e.topic() == self.topic && e.partition() == *p)
            })
            .collect();
        self.commit(&owned, true)
    }
}

fn own(m: &rdkafka::message::BorrowedMessage<'_>, max: usize) -> ConsumedRecord {
    let time = match m.timestamp() {
        rdkafka::Timestamp::CreateTime(t) => RecordTime::Create(t),
        rdkafka::Timestamp::LogAppendTime(t) => RecordTime::LogAppend(t),
        rdkafka::Timestamp::NotAvailable => RecordTime::None,
    };
    let header_bytes: usize = m.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    let size = m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len) + header_bytes;
    if size > max {
        // By reference only: a decompressed bomb is not copied again.
        return ConsumedRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: None,
            value: None,
            headers: Vec::new(),
            time,
            oversized: Some(size),
        };
    }
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
        time,
        oversized: None,
    }
}
