//! [`DiskHistory`]: the durable history in a data directory.
//!
//! - `history.redb` (an embedded ACID key-value store) holds, per GPU ("series"), the index
//!   of its sealed chunks of compressed readings ([`super::chunk`]), keyed `(series id,
//!   first time)`, each pointing into a segment file; an expiry index `(last time, series
//!   id, first time)` for retention sweeps; one record per GPU (inventory, count, newest
//!   sample); the segment files' accounting; the rollup tiers; and the Kafka offsets the
//!   data covers — all written in one transaction per flush.
//! - Chunk bodies live in append-only segment files under `segments/` ([`super::segment`]),
//!   written and fsynced before the transaction that refers to them commits.
//! - New readings wait in per-GPU open buffers in memory until the next flush (every
//!   `flush_interval`, or sooner when `max_open_samples` are waiting). They are covered by
//!   the Kafka log: an offset becomes durable only in the flush that makes its samples
//!   durable, so after a kill -9 the consumer re-reads exactly what was lost. The embedded
//!   mode has no Kafka: there, each batch is first appended to a write-ahead log
//!   (`wal.log`, fsynced) that the flush empties.
//! - Idempotence on (GPU, time): a reading already buffered is a duplicate; one at or
//!   before the newest sealed time is looked up in its chunk. Late readings are merged
//!   with the chunks they overlap at flush, so chunks of a GPU never overlap.
//! - Sweeps compact (10-minute flush chunks into one per hour, hours into one per 6-hour
//!   block), age raw chunks out into rollups, and reclaim dead segment space.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message as _;
use redb::{Database, ReadTransaction, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use telemetry_wire::wire::{GpuInfo, TelemetryBatch};

use super::chunk;
use super::history::{Applied, Block, History, SeriesState, StoreError, Swept};
use super::reading::Reading;
use super::rollup::{self, Agg, AggRow, Partial};
use super::segment::{self, Kind, LOC_BYTES, Loc, SegFiles, SegRow, Segments};
use super::wal::Wal;

/// Generated storage records.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    missing_debug_implementations
)]
mod proto {
    include!(concat!(env!("OUT_DIR"), "/telemetry.storage.v1.rs"));
}

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const OFFSETS: TableDefinition<'_, i32, i64> = TableDefinition::new("offsets");
const SERIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("series");
/// `(series, first ms)` → `last ms (i64 LE) | count (u32 LE) | where the chunk's body is`
/// ([`Loc`] in a segment file).
const CHUNKS: TableDefinition<'_, (u32, i64), &[u8]> = TableDefinition::new("chunks");
/// Segment files: id → (committed length, live bytes, kind) (see [`segment`]).
const SEGMENTS: TableDefinition<'_, u32, SegRow> = TableDefinition::new("segments");
/// `(last ms, series, first ms)` → bytes of that chunk's body.
const EXPIRY: TableDefinition<'_, (i64, u32, i64), u64> = TableDefinition::new("expiry");
/// Rollup tiers: the partial aggregates of readings (or finer partials) that aged out,
/// one chunk per GPU and UTC day: `(series, day start ms)` → `end of the day (i64 LE) |
/// buckets (u32 LE) | partials` ([`rollup::encode`]).
const TIER_1M: TableDefinition<'_, (u32, i64), &[u8]> = TableDefinition::new("tier_1m");
const TIER_1H: TableDefinition<'_, (u32, i64), &[u8]> = TableDefinition::new("tier_1h");
/// `(end of the day, series, day start)` → stored bytes.
const TIER_1M_EXPIRY: TableDefinition<'_, (i64, u32, i64), u64> =
    TableDefinition::new("tier_1m_expiry");
const TIER_1H_EXPIRY: TableDefinition<'_, (i64, u32, i64), u64> =
    TableDefinition::new("tier_1h_expiry");

type TierTable<'t> = redb::Table<'t, (u32, i64), &'static [u8]>;
type TierExpiry<'t> = redb::Table<'t, (i64, u32, i64), u64>;

/// A rollup tier: partial aggregates of buckets `width` ms wide.
#[derive(Clone, Copy)]
struct Tier {
    width: i64,
    table: TableDefinition<'static, (u32, i64), &'static [u8]>,
    expiry: TableDefinition<'static, (i64, u32, i64), u64>,
}

/// The tiers, finest first.
const TIERS: [Tier; 2] = [
    Tier {
        width: 60_000,
        table: TIER_1M,
        expiry: TIER_1M_EXPIRY,
    },
    Tier {
        width: 3_600_000,
        table: TIER_1H,
        expiry: TIER_1H_EXPIRY,
    },
];

const HOUR_MS: i64 = 3_600_000;
/// Chunks of a completed block of this many hours are compacted into one.
const BLOCK_MS: i64 = 6 * HOUR_MS;
const DAY_MS: i64 = 86_400_000;

const NEXT_ID: &str = "next_series_id";
/// The layout of `CHUNKS` values: absent or 1, the body inline (builds before segment
/// files; migrated at open); 2, a [`Loc`].
const LAYOUT: &str = "chunk_layout";
const LAYOUT_SEGMENTS: u64 = 2;
const HEADER: usize = 12;

/// Page cache of the database: enough for the B-tree's inner pages; chunks are read once
/// per query and decoded, so a large cache would only grow the RSS.
const DB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Settings of a [`DiskHistory`].
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Raw readings older than this (behind the newest of their GPU, or behind the clock
    /// at a sweep) are dropped.
    pub retention: Duration,
    /// Also drop the oldest chunks while the stored chunk bytes exceed this (0: no limit).
    pub retention_bytes: u64,
    /// Flush open buffers at least this often.
    pub flush_interval: Duration,
    /// Flush sooner when this many readings wait in memory.
    pub max_open_samples: usize,
    /// Write every batch ahead to `wal.log` (the embedded mode, which has no Kafka).
    pub write_ahead: bool,
    /// How long the 1-minute rollups are kept.
    pub retention_1m: Duration,
    /// How long the 1-hour rollups are kept.
    pub retention_1h: Duration,
    /// A segment file takes appends until it holds this many bytes.
    pub segment_bytes: u64,
    /// Time one sweep spends compacting at most (after its first GPU): a sweep holds the
    /// store (ingest and queries wait), so the rest waits for the next sweep, which
    /// `run_maintenance` starts a second later. A 6-hour block of one GPU takes about 15 ms
    /// to compact: without a budget, 250 of them held the store for 3.9 s.
    pub compact_budget: Duration,
}

impl DiskConfig {
    /// Defaults for `dir`: raw 7 days, 1-minute rollups 90 days, 1-hour rollups 2 years, no
    /// byte limit, flush every 10 min or at 2 M readings, no write-ahead log.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            retention: Duration::from_secs(7 * 86_400),
            retention_bytes: 0,
            flush_interval: Duration::from_secs(600),
            max_open_samples: 2_000_000,
            write_ahead: false,
            retention_1m: Duration::from_secs(90 * 86_400),
            retention_1h: Duration::from_secs(730 * 86_400),
            segment_bytes: 64 << 20,
            compact_budget: Duration::from_millis(200),
        }
    }
}

#[derive(Debug)]
struct Series {
    id: u32,
    info: GpuInfo,
    info_at_ms: i64,
    // Inventory changed since the last flush.
    dirty: bool,
    // Readings held: on disk and open.
    count: u64,
    // Newest time on disk.
    sealed_end: Option<i64>,
    // Newest time of the raw chunks that aged out into rollups: readings at or before it
    // are not stored again (they may be counted in a rollup already).
    rolled_to: i64,
    // Hours before this are compacted (one chunk per hour, or per 6 hours once all 6 are
    // done, where the flushes allowed).
    compacted_to: i64,
    // Newest reading on disk.
    disk_latest: Option<Reading>,
    // Readings not yet on disk; those at or before `sealed_end` ("late") merge into the
    // chunks or gaps they fall in at the next flush.
    open: BTreeMap<i64, Reading>,
}

impl Series {
    fn newest(&self) -> Option<i64> {
        let open = self.open.last_key_value().map(|(k, _)| *k);
        open.max(self.sealed_end)
    }

    fn latest(&self) -> Option<Reading> {
        let open = self.open.last_key_value().map(|(_, r)| *r);
        match (open, self.disk_latest) {
            (Some(o), Some(d)) => Some(if o.ts_ms >= d.ts_ms { o } else { d }),
            (o, d) => o.or(d),
        }
    }

    fn record(
        &self,
        sealed_end: Option<i64>,
        disk_latest: Option<Reading>,
        count: u64,
        rolled_to: i64,
    ) -> Vec<u8> {
        proto::SeriesRecord {
            id: self.id,
            info: Some(self.info.clone()),
            info_at_ms: self.info_at_ms,
            sample_count: count,
            sealed_end_ms: sealed_end,
            rolled_to_ms: (rolled_to != i64::MIN).then_some(rolled_to),
            latest: disk_latest.map(|r| r.to_wire()),
        }
        .encode_to_vec()
    }
}

#[derive(Debug)]
struct State {
    series: HashMap<String, Series>,
    next_id: u32,
    // Covered in memory; durable with the next flush.
    pending: BTreeMap<i32, i64>,
    offsets_dirty: bool,
    // Some series' inventory changed since the last flush (its `dirty` is set).
    inventory_dirty: bool,
    durable: BTreeMap<i32, i64>,
    open_samples: usize,
    last_flush: Instant,
    segs: Segments,
    wal: Option<Wal>,
}

/// A consistent view for reading: a database snapshot and the segment files it refers to.
struct Snapshot {
    txn: ReadTransaction,
    files: SegFiles,
}

/// The durable history (see the module docs).
#[derive(Debug)]
pub struct DiskHistory {
    db: Database,
    cfg: DiskConfig,
    state: Mutex<State>,
}

fn split(value: &[u8]) -> Result<(i64, u32, &[u8]), StoreError> {
    if value.len() < HEADER {
        return Err(StoreError::Other(
            "stored chunk shorter than its header".into(),
        ));
    }
    let end = i64::from_le_bytes(value[0..8].try_into().unwrap_or_default());
    let count = u32::from_le_bytes(value[8..12].try_into().unwrap_or_default());
    Ok((end, count, &value[HEADER..]))
}

/// Every entry of table `def`, mapped by `f`.
fn read_all<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    r: &ReadTransaction,
    def: TableDefinition<'_, K, V>,
    mut f: impl FnMut(redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>) -> T,
) -> Result<Vec<T>, StoreError> {
    let table = r.open_table(def).map_err(StoreError::db)?;
    let mut out = Vec::new();
    for e in table.iter().map_err(StoreError::db)? {
        let (k, v) = e.map_err(StoreError::db)?;
        out.push(f(k, v));
    }
    Ok(out)
}

/// The body of the chunk whose stored value (after its header) is `rest`.
fn body_of(files: &SegFiles, rest: &[u8]) -> Result<(Loc, Vec<u8>), StoreError> {
    let loc = Loc::decode(rest)?;
    Ok((loc, segment::read(files, loc)?))
}

/// A stored chunk value: `last ms | count | loc`.
fn chunk_ref(last: i64, count: u32, loc: Loc) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER + LOC_BYTES);
    value.extend_from_slice(&last.to_le_bytes());
    value.extend_from_slice(&count.to_le_bytes());
    loc.encode(&mut value);
    value
}

fn corrupt(series: u32) -> impl FnOnce(chunk::ChunkError) -> StoreError {
    move |source| StoreError::Corrupt { series, source }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl DiskHistory {
    /// Opens (or creates) the history in `cfg.dir`; with `write_ahead`, replays and then
    /// flushes what the write-ahead log holds.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the directory or database cannot be opened (another
    /// process holding it, no permission, a file that is not a database).
    pub fn open(cfg: DiskConfig) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            dir: cfg.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.dir).map_err(|e| open_err(Box::new(e)))?;
        let db = redb::Builder::new()
            .set_cache_size(DB_CACHE_BYTES)
            .create(cfg.dir.join("history.redb"))
            .map_err(|e| open_err(Box::new(e)))?;
        let w = db.begin_write().map_err(StoreError::db)?;
        {
            w.open_table(META).map_err(StoreError::db)?;
            w.open_table(OFFSETS).map_err(StoreError::db)?;
            w.open_table(SERIES).map_err(StoreError::db)?;
            w.open_table(CHUNKS).map_err(StoreError::db)?;
            w.open_table(SEGMENTS).map_err(StoreError::db)?;
            w.open_table(EXPIRY).map_err(StoreError::db)?;
            for t in TIERS {
                w.open_table(t.table).map_err(StoreError::db)?;
                w.open_table(t.expiry).map_err(StoreError::db)?;
            }
        }
        w.commit().map_err(StoreError::db)?;
        let segs = Self::open_segments(&db, &cfg)?;

        let r = db.begin_read().map_err(StoreError::db)?;
        let meta = r.open_table(META).map_err(StoreError::db)?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(StoreError::db)?
                .map_or(0, |v| v.value()))
        };
        let next_id = u32::try_from(get(NEXT_ID)?).unwrap_or(u32::MAX);
        let durable: BTreeMap<i32, i64> = read_all(&r, OFFSETS, |k, v| (k.value(), v.value()))?
            .into_iter()
            .collect();
        let mut series = HashMap::new();
        for e in r
            .open_table(SERIES)
            .map_err(StoreError::db)?
            .iter()
            .map_err(StoreError::db)?
        {
            let (k, v) = e.map_err(StoreError::db)?;
            let rec = proto::SeriesRecord::decode(v.value())
                .map_err(|e| StoreError::Other(format!("series record {}: {e}", k.value())))?;
            series.insert(
                k.value().to_string(),
                Series {
                    id: rec.id,
                    info: rec.info.unwrap_or_default(),
                    info_at_ms: rec.info_at_ms,
                    dirty: false,
                    count: rec.sample_count,
                    sealed_end: rec.sealed_end_ms,
                    compacted_to: i64::MIN,
                    rolled_to: rec.rolled_to_ms.unwrap_or(i64::MIN),
                    disk_latest: rec.latest.as_ref().map(Reading::from_wire),
                    open: BTreeMap::new(),
                },
            );
        }
        drop(meta);
        drop(r);
        let history = Self {
            db,
            state: Mutex::new(State {
                series,
                next_id,
                pending: durable.clone(),
                offsets_dirty: false,
                inventory_dirty: false,
                durable,
                open_samples: 0,
                last_flush: Instant::now(),
                segs,
                wal: None,
            }),
            cfg,
        };
        if history.cfg.write_ahead {
            let (wal, batches) = Wal::open(&history.cfg.dir.join("wal.log"))?;
            let replayed = batches.len();
            {
                let mut st = history.lock();
                for b in &batches {
                    history.apply_locked(&mut st, b)?;
                }
                st.wal = Some(wal);
                if replayed > 0 {
                    history.flush_locked(&mut st)?;
                }
            }
            if replayed > 0 {
                tracing::info!(batches = replayed, "replayed the write-ahead log");
            }
        }
        Ok(history)
    }

    /// The segment files as the database lists them; a database from before segment files
    /// (bodies inline) has its bodies moved out first, in one transaction.
    fn open_segments(db: &Database, cfg: &DiskConfig) -> Result<Segments, StoreError> {
        let dir = cfg.dir.join("segments");
        let r = db.begin_read().map_err(StoreError::db)?;
        let layout = r
            .open_table(META)
            .map_err(StoreError::db)?
            .get(LAYOUT)
            .map_err(StoreError::db)?
            .map(|v| v.value());
        let rows = read_all(&r, SEGMENTS, |k, v| (k.value(), v.value()))?;
        drop(r);
        let mut segs = Segments::open(&dir, cfg.segment_bytes, rows)?;
        if layout == Some(LAYOUT_SEGMENTS) {
            return Ok(segs);
        }
        let txn = db.begin_write().map_err(StoreError::db)?;
        let moved = (|| {
            let mut chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut inline = Vec::new();
            for e in chunks.iter().map_err(StoreError::db)? {
                let (k, v) = e.map_err(StoreError::db)?;
                inline.push((k.value(), v.value().to_vec()));
            }
            for (key, value) in &inline {
                let (last, count, body) = split(value)?;
                let loc = segs.append(Kind::Compacted, body)?;
                chunks
                    .insert(key, chunk_ref(last, count, loc).as_slice())
                    .map_err(StoreError::db)?;
            }
            Self::write_segment_rows(&txn, &mut segs)?;
            let mut meta = txn.open_table(META).map_err(StoreError::db)?;
            meta.insert(LAYOUT, LAYOUT_SEGMENTS)
                .map_err(StoreError::db)?;
            Ok::<usize, StoreError>(inline.len())
        })();
        let moved = moved.and_then(|n| txn.commit().map_err(StoreError::db).map(|()| n));
        match moved {
            Ok(n) => {
                segs.commit();
                if n > 0 {
                    tracing::info!(chunks = n, "moved chunk bodies into segment files");
                }
                Ok(segs)
            }
            Err(e) => {
                segs.rollback();
                Err(e)
            }
        }
    }

    /// Fsyncs the segments and writes their rows into `txn` (before its commit).
    fn write_segment_rows(
        txn: &redb::WriteTransaction,
        segs: &mut Segments,
    ) -> Result<(), StoreError> {
        let (rows, gone) = segs.sync()?;
        let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        for (id, row) in rows {
            t.insert(id, row).map_err(StoreError::db)?;
        }
        for id in gone {
            t.remove(id).map_err(StoreError::db)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of stored chunks (what `retention_bytes` limits).
    pub fn stored_bytes(&self) -> u64 {
        self.lock().segs.live_bytes()
    }

    /// Bytes of the segment files (stored chunks and the dead bytes not yet reclaimed).
    pub fn segment_file_bytes(&self) -> u64 {
        self.lock().segs.file_bytes()
    }

    /// Readings waiting in memory for the next flush.
    pub fn open_samples(&self) -> usize {
        self.lock().open_samples
    }

    /// Whether reading `ts` of series `id` is in a sealed chunk.
    fn on_disk(
        &self,
        files: &SegFiles,
        txn: &mut Option<ReadTransaction>,
        cache: &mut HashMap<(u32, i64), Vec<i64>>,
        id: u32,
        ts: i64,
    ) -> Result<bool, StoreError> {
        let txn = match txn {
            Some(t) => t,
            None => txn.insert(self.db.begin_read().map_err(StoreError::db)?),
        };
        let table = txn.open_table(CHUNKS).map_err(StoreError::db)?;
        let mut it = table
            .range((id, i64::MIN)..=(id, ts))
            .map_err(StoreError::db)?;
        let Some(entry) = it.next_back() else {
            return Ok(false);
        };
        let (k, v) = entry.map_err(StoreError::db)?;
        let start = k.value().1;
        if let Some(times) = cache.get(&(id, start)) {
            return Ok(times.binary_search(&ts).is_ok());
        }
        let value = v.value();
        let (end, _, rest) = split(value)?;
        if end < ts {
            return Ok(false);
        }
        let (_, body) = body_of(files, rest)?;
        let times = chunk::decode_times(&body).map_err(corrupt(id))?;
        let found = times.binary_search(&ts).is_ok();
        cache.insert((id, start), times);
        Ok(found)
    }

    /// Series `uuid`'s id, its open readings in `[start_ms, end_ms)` (at most `limit` + 1)
    /// and a database snapshot, taken under one lock: a flush (which holds it through its
    /// commit) cannot move readings between them. `None` when the GPU is unknown.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Option<(u32, Vec<Reading>, Snapshot)>, StoreError> {
        let st = self.lock();
        let Some(s) = st.series.get(uuid) else {
            return Ok(None);
        };
        let open: Vec<Reading> = if start_ms < end_ms {
            s.open
                .range(start_ms..end_ms)
                .map(|(_, r)| *r)
                .take(limit.saturating_add(1))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Some((
            s.id,
            open,
            Snapshot {
                txn: self.db.begin_read().map_err(StoreError::db)?,
                files: st.segs.files(),
            },
        )))
    }

    /// The raw readings of series `id` in `[start_ms, end_ms)` from `snap` merged with
    /// `open`, in blocks (see [`History::range_blocks`]); returns whether more than `limit`
    /// matched.
    #[allow(clippy::too_many_arguments)]
    fn read_range(
        &self,
        id: u32,
        open: Vec<Reading>,
        snap: &Snapshot,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
        encoded: bool,
        emit: &mut dyn FnMut(Block) -> bool,
    ) -> Result<bool, StoreError> {
        if start_ms >= end_ms {
            return Ok(false);
        }
        let table = snap.txn.open_table(CHUNKS).map_err(StoreError::db)?;
        let mut blocks = Blocks {
            open: open.into_iter().peekable(),
            sent: 0,
            limit,
            truncated: false,
            stopped: false,
            emit,
        };
        let take =
            |first: i64, value: &[u8], blocks: &mut Blocks<'_, '_>| -> Result<(), StoreError> {
                let (end, count, rest) = split(value)?;
                if end < start_ms {
                    return Ok(());
                }
                let (_, body) = body_of(&snap.files, rest)?;
                // Wholly in the range, no open reading among its own, within the limit: as
                // stored.
                if encoded
                    && first >= start_ms
                    && end < end_ms
                    && blocks.open.peek().is_none_or(|r| r.ts_ms > end)
                    && blocks.sent + count as usize <= blocks.limit
                {
                    blocks.push_encoded(body, count as usize);
                    return Ok(());
                }
                let rs: Vec<Reading> = chunk::decode(&body)
                    .map_err(corrupt(id))?
                    .into_iter()
                    .filter(|r| r.ts_ms >= start_ms && r.ts_ms < end_ms)
                    .collect();
                blocks.push(rs, end);
                Ok(())
            };
        // The chunk starting at or before `start_ms` may reach into the range.
        if let Some(e) = table
            .range((id, i64::MIN)..=(id, start_ms))
            .map_err(StoreError::db)?
            .next_back()
        {
            let (k, v) = e.map_err(StoreError::db)?;
            take(k.value().1, v.value(), &mut blocks)?;
        }
        if start_ms.saturating_add(1) < end_ms {
            for e in table
                .range((id, start_ms + 1)..(id, end_ms))
                .map_err(StoreError::db)?
            {
                if blocks.done() {
                    break;
                }
                let (k, v) = e.map_err(StoreError::db)?;
                take(k.value().1, v.value(), &mut blocks)?;
            }
        }
        blocks.push(Vec::new(), i64::MAX);
        Ok(blocks.truncated)
    }

    fn apply_locked(
        &self,
        st: &mut State,
        batch: &TelemetryBatch,
    ) -> Result<(Applied, Vec<bool>), StoreError> {
        for info in &batch.gpus {
            match st.series.get_mut(&info.uuid) {
                Some(s) => {
                    if batch.collected_at_ms >= s.info_at_ms && s.info != *info {
                        s.info = info.clone();
                        s.info_at_ms = batch.collected_at_ms;
                        s.dirty = true;
                        st.inventory_dirty = true;
                    }
                }
                None => {
                    let id = st.next_id;
                    st.next_id = st
                        .next_id
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Other("series ids exhausted".into()))?;
                    st.series.insert(
                        info.uuid.clone(),
                        Series {
                            id,
                            info: info.clone(),
                            info_at_ms: batch.collected_at_ms,
                            dirty: true,
                            count: 0,
                            sealed_end: None,
                            compacted_to: i64::MIN,
                            rolled_to: i64::MIN,
                            disk_latest: None,
                            open: BTreeMap::new(),
                        },
                    );
                    st.inventory_dirty = true;
                }
            }
        }
        let retention = ms(self.cfg.retention);
        let mut out = Applied::default();
        let mut new = vec![false; batch.samples.len()];
        let (mut txn, mut cache) = (None, HashMap::new());
        let files = st.segs.files();
        let mut added = 0usize;
        for (i, sample) in batch.samples.iter().enumerate() {
            // `open` (the wire check) made sure every sample's GPU is in the batch.
            let Some(s) = st.series.get_mut(&sample.uuid) else {
                continue;
            };
            let ts = sample.timestamp_ms;
            if ts <= s.rolled_to || s.newest().is_some_and(|n| ts < n.saturating_sub(retention)) {
                out.expired += 1;
                continue;
            }
            if s.open.contains_key(&ts) {
                out.duplicates += 1;
                continue;
            }
            if s.sealed_end.is_some_and(|e| ts <= e)
                && self.on_disk(&files, &mut txn, &mut cache, s.id, ts)?
            {
                out.duplicates += 1;
                continue;
            }
            s.open.insert(ts, Reading::from_wire(sample));
            s.count += 1;
            added += 1;
            new[i] = true;
        }
        out.inserted = added as u64;
        st.open_samples += added;
        Ok((out, new))
    }

    fn flush_locked(&self, st: &mut State) -> Result<u64, StoreError> {
        let pending = st.open_samples > 0 || st.offsets_dirty || st.inventory_dirty;
        if !pending {
            st.last_flush = Instant::now();
            return Ok(0);
        }
        let written = st.open_samples as u64;
        let sealed = match self.write_open(st) {
            Ok(sealed) => {
                st.segs.commit();
                sealed
            }
            Err(e) => {
                st.segs.rollback();
                return Err(e);
            }
        };
        // Durable: now the memory state may move on.
        for (uuid, sealed_end, disk_latest) in sealed {
            if let Some(s) = st.series.get_mut(&uuid) {
                s.open.clear();
                s.dirty = false;
                s.sealed_end = sealed_end;
                s.disk_latest = disk_latest;
            }
        }
        st.durable = st.pending.clone();
        st.offsets_dirty = false;
        st.inventory_dirty = false;
        st.open_samples = 0;
        st.last_flush = Instant::now();
        if let Some(wal) = &mut st.wal {
            wal.reset()?;
        }
        Ok(written)
    }

    /// Writes the open buffers, the inventory and the offsets in one transaction and
    /// commits it; returns per GPU written its newest time and reading on disk.
    #[allow(clippy::type_complexity)]
    fn write_open(
        &self,
        st: &mut State,
    ) -> Result<Vec<(String, Option<i64>, Option<Reading>)>, StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::db)?;
        let mut sealed: Vec<(String, Option<i64>, Option<Reading>)> = Vec::new();
        let segs = &mut st.segs;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(StoreError::db)?;
            let mut series_t = txn.open_table(SERIES).map_err(StoreError::db)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(StoreError::db)?;
            let mut meta = txn.open_table(META).map_err(StoreError::db)?;
            for (uuid, s) in &st.series {
                if s.open.is_empty() && !s.dirty {
                    continue;
                }
                let (mut sealed_end, mut disk_latest) = (s.sealed_end, s.disk_latest);
                // Late readings (at or before the newest on disk) merge into the chunk
                // whose span holds them, or form a chunk in the gap they fall in; the rest
                // is a new chunk after every other.
                let split_at = s.sealed_end.map_or(i64::MIN, |e| e.saturating_add(1));
                let late: Vec<Reading> = s.open.range(..split_at).map(|(_, r)| *r).collect();
                let fresh: Vec<Reading> = s.open.range(split_at..).map(|(_, r)| *r).collect();
                let mut writes: Vec<Vec<Reading>> = Vec::new();
                if let (Some(lo), Some(hi)) = (late.first(), late.last()) {
                    let mut spans = Vec::new();
                    {
                        let mut it = chunks
                            .range((s.id, i64::MIN)..=(s.id, hi.ts_ms))
                            .map_err(StoreError::db)?;
                        while let Some(e) = it.next_back() {
                            let (k, v) = e.map_err(StoreError::db)?;
                            let (end, _, rest) = split(v.value())?;
                            if end < lo.ts_ms {
                                break;
                            }
                            spans.push((k.value().1, end, Loc::decode(rest)?));
                        }
                    }
                    spans.reverse();
                    // Group: (span index, inside it?) — readings before span i and after
                    // span i-1 form one gap group.
                    let mut groups: BTreeMap<(usize, bool), Vec<Reading>> = BTreeMap::new();
                    let mut si = 0;
                    for r in late {
                        while si < spans.len() && spans[si].1 < r.ts_ms {
                            si += 1;
                        }
                        let inside = si < spans.len() && spans[si].0 <= r.ts_ms;
                        groups.entry((si, inside)).or_default().push(r);
                    }
                    for ((si, inside), mut rs) in groups {
                        if inside {
                            let (start, end, loc) = spans[si];
                            let body = segs.read(loc)?;
                            rs.extend(chunk::decode(&body).map_err(corrupt(s.id))?);
                            rs.sort_by_key(|r| r.ts_ms);
                            rs.dedup_by_key(|r| r.ts_ms);
                            chunks.remove((s.id, start)).map_err(StoreError::db)?;
                            expiry.remove((end, s.id, start)).map_err(StoreError::db)?;
                            segs.release(loc);
                        }
                        writes.push(rs);
                    }
                }
                if !fresh.is_empty() {
                    writes.push(fresh);
                }
                for readings in writes {
                    let last =
                        put_chunk(s.id, &readings, Kind::Fresh, segs, &mut chunks, &mut expiry)?;
                    sealed_end = sealed_end.max(Some(last));
                    let newest = readings[readings.len() - 1];
                    if disk_latest.is_none_or(|d| d.ts_ms < newest.ts_ms) {
                        disk_latest = Some(newest);
                    }
                }
                series_t
                    .insert(
                        uuid.as_str(),
                        s.record(sealed_end, disk_latest, s.count, s.rolled_to)
                            .as_slice(),
                    )
                    .map_err(StoreError::db)?;
                sealed.push((uuid.clone(), sealed_end, disk_latest));
            }
            for (p, o) in &st.pending {
                offsets.insert(*p, *o).map_err(StoreError::db)?;
            }
            meta.insert(NEXT_ID, u64::from(st.next_id))
                .map_err(StoreError::db)?;
        }
        Self::write_segment_rows(&txn, segs)?;
        txn.commit().map_err(StoreError::db)?;
        Ok(sealed)
    }
}

/// Hands a range out in blocks: each chunk's readings merged with the open readings up to
/// the chunk's end, `limit` in all, noting whether more matched.
struct Blocks<'e, 'f> {
    open: std::iter::Peekable<std::vec::IntoIter<Reading>>,
    sent: usize,
    limit: usize,
    truncated: bool,
    stopped: bool,
    emit: &'e mut (dyn FnMut(Block) -> bool + 'f),
}

impl Blocks<'_, '_> {
    fn done(&self) -> bool {
        self.truncated || self.stopped
    }

    /// `rs`: a chunk's readings in the range (sorted), `upto`: the chunk's last time (open
    /// readings up to it belong before the next chunk; chunks never overlap).
    fn push(&mut self, rs: Vec<Reading>, upto: i64) {
        if self.done() {
            return;
        }
        let mut merged = Vec::with_capacity(rs.len());
        let mut rs = rs.into_iter().peekable();
        loop {
            let next = match (rs.peek(), self.open.peek()) {
                (Some(a), Some(b)) if b.ts_ms <= upto && b.ts_ms < a.ts_ms => self.open.next(),
                (Some(_), _) => rs.next(),
                (None, Some(b)) if b.ts_ms <= upto => self.open.next(),
                (None, _) => None,
            };
            match next {
                Some(r) => merged.push(r),
                None => break,
            }
        }
        if self.sent + merged.len() > self.limit {
            self.truncated = true;
            merged.truncate(self.limit - self.sent);
        }
        self.sent += merged.len();
        if !merged.is_empty() && !(self.emit)(Block::Readings(merged)) {
            self.stopped = true;
        }
    }

    /// A stored chunk whose readings all count (the caller checked the range, the limit
    /// and that no open reading falls among them).
    fn push_encoded(&mut self, bytes: Vec<u8>, count: usize) {
        if self.done() {
            return;
        }
        self.sent += count;
        if !(self.emit)(Block::Encoded { bytes, count }) {
            self.stopped = true;
        }
    }
}

/// The first `limit` rows of `parts`, and whether there were more.
fn finish(parts: BTreeMap<i64, Partial>, agg: Agg, limit: usize) -> (Vec<AggRow>, bool) {
    let truncated = parts.len() > limit;
    (
        rollup::rows(parts.into_values().take(limit), agg),
        truncated,
    )
}

/// Merges `parts` (of `tier`'s width, all of UTC day `day`) into series `id`'s chunk of
/// that day.
fn merge_into_tier(
    id: u32,
    day: i64,
    parts: impl IntoIterator<Item = Partial>,
    table: &mut TierTable<'_>,
    expiry: &mut TierExpiry<'_>,
) -> Result<(), StoreError> {
    let mut merged: BTreeMap<i64, Partial> = BTreeMap::new();
    if let Some(old) = table.remove((id, day)).map_err(StoreError::db)? {
        let (_, _, body) = split(old.value())?;
        for p in rollup::decode(body).map_err(corrupt(id))? {
            merged.insert(p.bucket, p);
        }
    }
    for p in parts {
        merged
            .entry(p.bucket)
            .and_modify(|q| q.merge(&p))
            .or_insert(p);
    }
    let parts: Vec<Partial> = merged.into_values().collect();
    let end = day.saturating_add(DAY_MS);
    let body = rollup::encode(&parts).map_err(corrupt(id))?;
    let mut value = Vec::with_capacity(HEADER + body.len());
    value.extend_from_slice(&end.to_le_bytes());
    value.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    value.extend_from_slice(&body);
    table
        .insert((id, day), value.as_slice())
        .map_err(StoreError::db)?;
    expiry
        .insert((end, id, day), value.len() as u64)
        .map_err(StoreError::db)?;
    Ok(())
}

/// Partials of `width`, grouped by series and UTC day, waiting to be merged into a tier.
type TierBatch = BTreeMap<(u32, i64), BTreeMap<i64, Partial>>;

fn add_to_batch(batch: &mut TierBatch, id: u32, parts: impl IntoIterator<Item = Partial>) {
    for p in parts {
        let day = rollup::bucket_of(p.bucket, DAY_MS);
        batch
            .entry((id, day))
            .or_default()
            .entry(p.bucket)
            .and_modify(|q| q.merge(&p))
            .or_insert(p);
    }
}

/// GPUs whose completed hours one sweep compacts at most.
const COMPACT_PER_SWEEP: usize = 250;

/// Merges series `id`'s chunks that start in `[from, to)` (`to`: a whole hour) into one
/// chunk per UTC hour, and those of completed 6-hour blocks (before `block_to`) into one
/// chunk per block. A longer chunk compresses better (pco's per-run tables cost less per
/// reading): 10-minute chunks take 0.42 bytes per point, hourly 0.35, 6-hourly 0.33 on the
/// simulated fleet. The last chunk of a group may reach into the next: chunks never overlap.
/// Each level goes to segments of its own kind (bodies that die together sit together).
fn compact_series(
    id: u32,
    from: i64,
    to: i64,
    block_to: i64,
    segs: &mut Segments,
    chunks: &mut redb::Table<'_, (u32, i64), &[u8]>,
    expiry: &mut redb::Table<'_, (i64, u32, i64), u64>,
) -> Result<(), StoreError> {
    // Spans first (headers only), bodies only for groups of more than one chunk.
    // (start of the hour or block, a block?) → (first, last, body) of its chunks.
    type Spans = Vec<(i64, i64, Loc)>;
    let mut groups: BTreeMap<(i64, bool), Spans> = BTreeMap::new();
    for e in chunks.range((id, from)..(id, to)).map_err(StoreError::db)? {
        let (k, v) = e.map_err(StoreError::db)?;
        let start = k.value().1;
        let (end, _, rest) = split(v.value())?;
        let key = if start < block_to {
            (rollup::bucket_of(start, BLOCK_MS), true)
        } else {
            (rollup::bucket_of(start, HOUR_MS), false)
        };
        groups
            .entry(key)
            .or_default()
            .push((start, end, Loc::decode(rest)?));
    }
    for ((_, block), group) in groups.into_iter().filter(|(_, g)| g.len() > 1) {
        let mut readings = Vec::new();
        for (start, end, loc) in group {
            readings.extend(chunk::decode(&segs.read(loc)?).map_err(corrupt(id))?);
            chunks.remove((id, start)).map_err(StoreError::db)?;
            expiry.remove((end, id, start)).map_err(StoreError::db)?;
            segs.release(loc);
        }
        readings.sort_by_key(|r| r.ts_ms);
        let kind = if block { Kind::Compacted } else { Kind::Hourly };
        put_chunk(id, &readings, kind, segs, chunks, expiry)?;
    }
    Ok(())
}

/// Stores `readings` (sorted, unique) as one chunk of series `id`, its body appended to a
/// segment of `kind`; returns its last time.
fn put_chunk(
    id: u32,
    readings: &[Reading],
    kind: Kind,
    segs: &mut Segments,
    chunks: &mut redb::Table<'_, (u32, i64), &[u8]>,
    expiry: &mut redb::Table<'_, (i64, u32, i64), u64>,
) -> Result<i64, StoreError> {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return Err(StoreError::Other("empty chunk".into()));
    };
    let (first, last) = (first.ts_ms, last.ts_ms);
    let body = chunk::encode(readings).map_err(corrupt(id))?;
    let count =
        u32::try_from(readings.len()).map_err(|_| StoreError::Other("chunk too large".into()))?;
    let loc = segs.append(kind, &body)?;
    chunks
        .insert((id, first), chunk_ref(last, count, loc).as_slice())
        .map_err(StoreError::db)?;
    expiry
        .insert((last, id, first), u64::from(loc.len))
        .map_err(StoreError::db)?;
    Ok(last)
}

/// What a sweep has dropped so far: samples per series, the chunk bytes left, the
/// 1-minute partials of the dropped readings, and per series the newest time rolled up.
#[derive(Default)]
struct Aged {
    dropped: HashMap<u32, u64>,
    rolled: TierBatch,
    rolled_ends: HashMap<u32, i64>,
}

impl Aged {
    /// Deletes the raw chunk of expiry entry `key`, counting what it held and rolling its
    /// readings up into 1-minute partials.
    fn drop_chunk(
        &mut self,
        key: (i64, u32, i64),
        segs: &mut Segments,
        chunks: &mut redb::Table<'_, (u32, i64), &[u8]>,
        expiry: &mut redb::Table<'_, (i64, u32, i64), u64>,
    ) -> Result<(), StoreError> {
        let (end, id, start) = key;
        let e = self.rolled_ends.entry(id).or_insert(end);
        *e = (*e).max(end);
        if let Some(v) = chunks.remove((id, start)).map_err(StoreError::db)? {
            let (_, count, rest) = split(v.value())?;
            let loc = Loc::decode(rest)?;
            let readings = chunk::decode(&segs.read(loc)?).map_err(corrupt(id))?;
            add_to_batch(
                &mut self.rolled,
                id,
                rollup::partials(&readings, TIERS[0].width).into_values(),
            );
            *self.dropped.entry(id).or_default() += u64::from(count);
            segs.release(loc);
        }
        expiry.remove(key).map_err(StoreError::db)?;
        Ok(())
    }
}

impl History for DiskHistory {
    fn range(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Option<(Vec<Reading>, bool)>, StoreError> {
        let mut out = Vec::new();
        // Not `encoded`: every block comes as readings.
        let truncated = self.range_blocks(uuid, start_ms, end_ms, limit, false, &mut |b| {
            if let Block::Readings(rs) = b {
                out.extend(rs);
            }
            true
        })?;
        Ok(truncated.map(|t| (out, t)))
    }

    fn apply(&self, batch: &TelemetryBatch) -> Result<(Applied, Vec<bool>), StoreError> {
        let mut st = self.lock();
        if let Some(wal) = &mut st.wal {
            wal.append(batch)?;
        }
        self.apply_locked(&mut st, batch)
    }

    fn cover(&self, next: &[(i32, i64)]) -> Result<(), StoreError> {
        let mut st = self.lock();
        for &(p, o) in next {
            if st.pending.insert(p, o) != Some(o) {
                st.offsets_dirty = true;
            }
        }
        Ok(())
    }

    fn resume_offset(&self, partition: i32) -> Option<i64> {
        self.lock().durable.get(&partition).copied()
    }

    fn range_blocks(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
        encoded: bool,
        emit: &mut dyn FnMut(Block) -> bool,
    ) -> Result<Option<bool>, StoreError> {
        let Some((id, open, snap)) = self.snapshot(uuid, start_ms, end_ms, limit)? else {
            return Ok(None);
        };
        self.read_range(id, open, &snap, start_ms, end_ms, limit, encoded, emit)
            .map(Some)
    }

    fn aggregate(
        &self,
        uuid: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        agg: Agg,
        limit: usize,
    ) -> Result<Option<(Vec<AggRow>, bool)>, StoreError> {
        if step_ms <= 0 {
            return Err(StoreError::Other("step must be positive".into()));
        }
        // Whole buckets: the range is widened to multiples of the step.
        let start = rollup::bucket_of(start_ms, step_ms);
        let end = rollup::bucket_of(end_ms.saturating_sub(1), step_ms).saturating_add(step_ms);
        // Every reading is in exactly one place: raw (open or on disk), or, once aged out,
        // one tier. Raw readings, the tiers whose buckets make up the step, all from one
        // snapshot (a sweep moving readings to a tier cannot be seen half done).
        let Some((id, open, snap)) = self.snapshot(uuid, start, end, usize::MAX - 1)? else {
            return Ok(None);
        };
        let mut readings = Vec::new();
        self.read_range(
            id,
            open,
            &snap,
            start,
            end,
            usize::MAX - 1,
            false,
            &mut |b| {
                if let Block::Readings(rs) = b {
                    readings.extend(rs);
                }
                true
            },
        )?;
        let mut parts = rollup::partials(&readings, step_ms);
        drop(readings);
        for t in TIERS.iter().filter(|t| step_ms % t.width == 0) {
            let table = snap.txn.open_table(t.table).map_err(StoreError::db)?;
            let (first_day, last_day) = (
                rollup::bucket_of(start, DAY_MS),
                rollup::bucket_of(end.saturating_sub(1), DAY_MS),
            );
            let mut stored = Vec::new();
            for e in table
                .range((id, first_day)..=(id, last_day))
                .map_err(StoreError::db)?
            {
                let (_, v) = e.map_err(StoreError::db)?;
                let (_, _, body) = split(v.value())?;
                stored.extend(
                    rollup::decode(body)
                        .map_err(corrupt(id))?
                        .into_iter()
                        .filter(|p| p.bucket >= start && p.bucket < end),
                );
            }
            for (b, p) in rollup::rebucket(stored, step_ms) {
                parts.entry(b).and_modify(|q| q.merge(&p)).or_insert(p);
            }
        }
        Ok(Some(finish(parts, agg, limit)))
    }

    fn flush(&self) -> Result<u64, StoreError> {
        let mut st = self.lock();
        self.flush_locked(&mut st)
    }

    fn flush_due(&self) -> bool {
        let st = self.lock();
        st.open_samples >= self.cfg.max_open_samples
            || (st.last_flush.elapsed() >= self.cfg.flush_interval
                && (st.open_samples > 0 || st.offsets_dirty || st.inventory_dirty))
    }

    fn sweep(&self, now_ms: i64) -> Result<Swept, StoreError> {
        let mut st = self.lock();
        let (mut out, aged, records, compacted) = match self.sweep_txn(&mut st, now_ms) {
            Ok(r) => {
                st.segs.commit();
                r
            }
            Err(e) => {
                st.segs.rollback();
                return Err(e);
            }
        };
        for (uuid, horizon) in compacted {
            if let Some(s) = st.series.get_mut(&uuid) {
                s.compacted_to = horizon;
            }
        }
        for (uuid, rec) in records {
            match rec {
                None => {
                    st.series.remove(&uuid);
                    out.gone.push(uuid);
                }
                Some(_) => {
                    if let Some(s) = st.series.get_mut(&uuid) {
                        let Some(n) = aged.dropped.get(&s.id).copied() else {
                            continue;
                        };
                        s.count = s.count.saturating_sub(n);
                        if let Some(r) = aged.rolled_ends.get(&s.id) {
                            s.rolled_to = s.rolled_to.max(*r);
                        }
                        out.counts.push((uuid, s.count));
                    }
                }
            }
        }
        Ok(out)
    }

    fn series(&self) -> Result<Vec<SeriesState>, StoreError> {
        let st = self.lock();
        Ok(st
            .series
            .values()
            .map(|s| SeriesState {
                info: s.info.clone(),
                info_at_ms: s.info_at_ms,
                latest: s.latest().map(|r| r.to_wire()),
                sample_count: s.count,
            })
            .collect())
    }
}

/// What one sweep transaction did: samples dropped, per series what it aged, the new
/// records (`None`: the GPU is gone), and the GPUs compacted up to which hour.
type SweptTxn = (
    Swept,
    Aged,
    Vec<(String, Option<Vec<u8>>)>,
    Vec<(String, i64)>,
);

impl DiskHistory {
    /// A sweep's transaction, committed; the memory state is the caller's to update.
    fn sweep_txn(&self, st: &mut State, now_ms: i64) -> Result<SweptTxn, StoreError> {
        let started = Instant::now();
        // Whole hours: an hour's raw chunks age out together, so its 1-minute rollups are
        // written once.
        let cutoff = rollup::bucket_of(now_ms.saturating_sub(ms(self.cfg.retention)), HOUR_MS);
        // Picked first: the segment stops taking appends before this sweep writes any.
        let gc = st.segs.gc_candidate();
        let txn = self.db.begin_write().map_err(StoreError::db)?;
        let mut aged = Aged::default();
        let mut out = Swept::default();
        let mut records: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut compacted: Vec<(String, i64)> = Vec::new();
        let segs = &mut st.segs;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(StoreError::db)?;
            let mut victims: Vec<(i64, u32, i64)> = Vec::new();
            for e in expiry
                .range((i64::MIN, 0, i64::MIN)..(cutoff, 0, i64::MIN))
                .map_err(StoreError::db)?
            {
                victims.push(e.map_err(StoreError::db)?.0.value());
            }
            for key in victims {
                aged.drop_chunk(key, segs, &mut chunks, &mut expiry)?;
            }
            while self.cfg.retention_bytes > 0 && segs.live_bytes() > self.cfg.retention_bytes {
                let Some(first) = expiry.first().map_err(StoreError::db)? else {
                    break;
                };
                let key = first.0.value();
                drop(first);
                aged.drop_chunk(key, segs, &mut chunks, &mut expiry)?;
            }
            // Raw readings that aged out live on as 1-minute rollups; 1-minute rollups
            // that age out (whole days) as 1-hour ones; then they go.
            let keeps = [self.cfg.retention_1m, self.cfg.retention_1h];
            // GPUs whose raw readings are all gone may still have rollups (then they stay).
            let candidates: Vec<u32> = st
                .series
                .values()
                .filter(|s| aged.dropped.contains_key(&s.id) || (s.count == 0 && s.open.is_empty()))
                .map(|s| s.id)
                .collect();
            let mut has_rollups: std::collections::HashSet<u32> = std::collections::HashSet::new();
            for (ti, (t, keep)) in TIERS.iter().zip(keeps).enumerate() {
                let mut table = txn.open_table(t.table).map_err(StoreError::db)?;
                let mut exp = txn.open_table(t.expiry).map_err(StoreError::db)?;
                for ((id, day), parts) in std::mem::take(&mut aged.rolled) {
                    merge_into_tier(id, day, parts.into_values(), &mut table, &mut exp)?;
                }
                let tier_cutoff = now_ms.saturating_sub(ms(keep));
                let mut victims = Vec::new();
                for e in exp
                    .range((i64::MIN, 0, i64::MIN)..=(tier_cutoff, u32::MAX, i64::MAX))
                    .map_err(StoreError::db)?
                {
                    victims.push(e.map_err(StoreError::db)?.0.value());
                }
                for key in victims {
                    let (_, id, day) = key;
                    let old = table.remove((id, day)).map_err(StoreError::db)?;
                    if let (Some(v), Some(next)) = (old, TIERS.get(ti + 1)) {
                        let (_, _, body) = split(v.value())?;
                        let parts = rollup::decode(body).map_err(corrupt(id))?;
                        add_to_batch(
                            &mut aged.rolled,
                            id,
                            rollup::rebucket(parts, next.width).into_values(),
                        );
                    }
                    exp.remove(key).map_err(StoreError::db)?;
                }
                for id in &candidates {
                    if table
                        .range((*id, i64::MIN)..=(*id, i64::MAX))
                        .map_err(StoreError::db)?
                        .next()
                        .is_some()
                    {
                        has_rollups.insert(*id);
                    }
                }
            }
            // Compaction: a GPU's chunks that start in one completed UTC hour become one,
            // those of a completed 6-hour block one (see `compact_series`). A bounded
            // number of GPUs per sweep.
            for (uuid, s) in &st.series {
                let Some(sealed) = s.sealed_end else { continue };
                let horizon = rollup::bucket_of(sealed, HOUR_MS);
                if s.compacted_to >= horizon {
                    continue;
                }
                if compacted.len() >= COMPACT_PER_SWEEP
                    || (!compacted.is_empty() && started.elapsed() >= self.cfg.compact_budget)
                {
                    out.more = true;
                    break;
                }
                // From the start of the block the last compaction stopped in: its hourly
                // chunks become one when the block completes.
                compact_series(
                    s.id,
                    match s.compacted_to {
                        i64::MIN => i64::MIN,
                        t => rollup::bucket_of(t, BLOCK_MS),
                    },
                    horizon,
                    rollup::bucket_of(sealed, BLOCK_MS),
                    segs,
                    &mut chunks,
                    &mut expiry,
                )?;
                compacted.push((uuid.clone(), horizon));
            }
            // A mostly dead segment: its live bodies move to the active one of its kind.
            if let Some((seg, kind)) = gc {
                let mut moves = Vec::new();
                for e in chunks.iter().map_err(StoreError::db)? {
                    let (k, v) = e.map_err(StoreError::db)?;
                    let (last, count, rest) = split(v.value())?;
                    let loc = Loc::decode(rest)?;
                    if loc.seg == seg {
                        moves.push((k.value(), last, count, loc));
                    }
                }
                for (key, last, count, loc) in moves {
                    let to = segs.append(kind, &segs.read(loc)?)?;
                    segs.release(loc);
                    chunks
                        .insert(key, chunk_ref(last, count, to).as_slice())
                        .map_err(StoreError::db)?;
                }
            }
            let mut series_t = txn.open_table(SERIES).map_err(StoreError::db)?;
            for (uuid, s) in &st.series {
                let n = match aged.dropped.get(&s.id) {
                    Some(n) => *n,
                    // Raw readings gone earlier, rollups maybe now.
                    None if s.count == 0 && s.open.is_empty() => 0,
                    None => continue,
                };
                let count = s.count.saturating_sub(n);
                out.samples += n;
                // A GPU is kept while its rollups outlive its raw readings (its newest
                // sample stays as "last seen").
                let disk_latest = s.disk_latest;
                if count == 0 && !has_rollups.contains(&s.id) {
                    series_t.remove(uuid.as_str()).map_err(StoreError::db)?;
                    records.push((uuid.clone(), None));
                } else {
                    let rolled_to = aged.rolled_ends.get(&s.id).copied().unwrap_or(i64::MIN);
                    let rec = s.record(
                        s.sealed_end,
                        disk_latest,
                        count - s.open.len() as u64,
                        s.rolled_to.max(rolled_to),
                    );
                    series_t
                        .insert(uuid.as_str(), rec.as_slice())
                        .map_err(StoreError::db)?;
                    records.push((uuid.clone(), Some(rec)));
                }
            }
        }
        Self::write_segment_rows(&txn, segs)?;
        txn.commit().map_err(StoreError::db)?;
        Ok((out, aged, records, compacted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_wire::wire::GpuSample;

    fn batch(node: &str, uuid: &str, ts: &[i64]) -> TelemetryBatch {
        super::super::test_batch(node, uuid, 0, ts)
    }

    fn times(h: &DiskHistory, uuid: &str, s: i64, e: i64, limit: usize) -> (Vec<i64>, bool) {
        let (r, more) = h.range(uuid, s, e, limit).unwrap().unwrap();
        (r.iter().map(|r| r.ts_ms).collect(), more)
    }

    fn secs(v: impl IntoIterator<Item = i64>) -> Vec<i64> {
        v.into_iter().map(|s| s * 1000).collect()
    }

    fn cfg(dir: &std::path::Path) -> DiskConfig {
        let mut c = DiskConfig::new(dir);
        c.retention = Duration::from_secs(3600);
        c
    }

    #[test]
    fn a_sample_is_stored_once_whether_buffered_or_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        let b = batch("n", "GPU-1", &secs(1..=5));
        assert_eq!(h.apply(&b).unwrap().0.inserted, 5);
        assert_eq!(h.apply(&b).unwrap().0.duplicates, 5);
        h.flush().unwrap();
        let (a, new) = h.apply(&batch("n", "GPU-1", &secs(3..=7))).unwrap();
        assert_eq!((a.inserted, a.duplicates), (2, 3));
        assert_eq!(new, [false, false, false, true, true]);
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100), (secs(1..=7), false));
    }

    /// GPU-1 with seconds 1–10, 11–20 and 21–30 in three stored chunks, 31–35 open.
    fn three_chunks_and_five_open() -> (tempfile::TempDir, DiskHistory) {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        for part in [1..=10, 11..=20, 21..=30] {
            h.apply(&batch("n", "GPU-1", &secs(part))).unwrap();
            h.flush().unwrap();
        }
        h.apply(&batch("n", "GPU-1", &secs(31..=35))).unwrap();
        (dir, h)
    }

    #[test]
    fn ranges_are_half_open_ordered_and_truncated_across_chunks_and_buffers() {
        let (_dir, h) = three_chunks_and_five_open();
        assert_eq!(times(&h, "GPU-1", 5_000, 33_000, 100), (secs(5..33), false));
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 12), (secs(1..=12), true));
        assert_eq!(times(&h, "GPU-1", 29_000, 40_000, 3), (secs(29..=31), true));
        assert_eq!(times(&h, "GPU-1", 9_000, 9_000, 3), (vec![], false));
        assert!(h.range("GPU-x", 0, 1, 1).unwrap().is_none());
        // The values come back exactly.
        let (r, _) = h.range("GPU-1", 12_000, 13_000, 1).unwrap().unwrap();
        assert_eq!(
            r[0].to_wire(),
            GpuSample {
                timestamp_ms: 12_000,
                gpu_utilization_percent: Some(12),
                power_usage_milliwatts: Some(100_005),
                ..Default::default()
            }
        );
    }

    /// `range_blocks` with `encoded`: what came as stored bytes (times only) and the times
    /// of everything, decoded.
    fn encoded_read(
        h: &DiskHistory,
        start: i64,
        end: i64,
        limit: usize,
    ) -> (Vec<Vec<i64>>, Vec<i64>, bool) {
        let (mut stored, mut all) = (Vec::new(), Vec::new());
        let more = h
            .range_blocks("GPU-1", start, end, limit, true, &mut |b| {
                let encoded = matches!(b, Block::Encoded { .. });
                let count = match &b {
                    Block::Encoded { count, .. } => Some(*count),
                    Block::Readings(_) => None,
                };
                let ts: Vec<i64> = b.into_readings().unwrap().iter().map(|r| r.ts_ms).collect();
                if encoded {
                    assert_eq!(count, Some(ts.len()));
                    stored.push(ts.clone());
                }
                all.extend(ts);
                true
            })
            .unwrap()
            .unwrap();
        (stored, all, more)
    }

    #[test]
    fn whole_chunks_in_the_range_come_as_stored_bytes_the_rest_as_readings() {
        let (_dir, h) = three_chunks_and_five_open();
        // Whole: the middle chunk; cut by the range: the first and the last.
        let (stored, all, more) = encoded_read(&h, 5_000, 25_000, 100);
        assert_eq!(stored, [secs(11..=20)]);
        assert_eq!((all, more), (secs(5..25), false));
        // Open readings (31..35) come as readings after the stored chunks.
        let (stored, all, more) = encoded_read(&h, 11_000, 33_000, 100);
        assert_eq!(stored, [secs(11..=20), secs(21..=30)]);
        assert_eq!((all, more), (secs(11..33), false));
        let (stored, all, more) = encoded_read(&h, 0, i64::MAX, 1000);
        assert_eq!(stored, [secs(1..=10), secs(11..=20), secs(21..=30)]);
        assert_eq!((all, more), (secs(1..=35), false));
        // A chunk that would pass the limit is cut, as readings.
        let (stored, all, more) = encoded_read(&h, 0, i64::MAX, 15);
        assert_eq!(stored, [secs(1..=10)]);
        assert_eq!((all, more), (secs(1..=15), true));
        // A late open reading inside a stored chunk's span: that chunk comes as readings.
        h.apply(&batch("n", "GPU-1", &[15_500])).unwrap();
        let (stored, all, _) = encoded_read(&h, 0, 31_000, 1000);
        assert_eq!(stored, [secs(1..=10), secs(21..=30)]);
        let mut want = secs(1..=30);
        want.insert(15, 15_500);
        assert_eq!(all, want);
    }

    #[test]
    fn late_samples_merge_into_the_chunks_they_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        let even: Vec<i64> = (0..20).map(|s| s * 2000).collect();
        let odd: Vec<i64> = (0..20).map(|s| s * 2000 + 1000).collect();
        h.apply(&batch("n", "GPU-1", &even)).unwrap();
        h.flush().unwrap();
        // Late, interleaved, plus one duplicate of a stored sample.
        let mut late = odd.clone();
        late.push(even[3]);
        let (a, _) = h.apply(&batch("n", "GPU-1", &late)).unwrap();
        assert_eq!((a.inserted, a.duplicates), (20, 1));
        // Before and after the merge, the range is the union, once each.
        let all: Vec<i64> = (0..40).map(|s| s * 1000).collect();
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100).0, all);
        h.flush().unwrap();
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100).0, all);
        let st = h.lock();
        assert_eq!(st.series["GPU-1"].count, 40);
    }

    #[test]
    fn a_late_reading_joins_only_the_chunk_or_gap_it_falls_in() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        h.apply(&batch("n", "GPU-1", &secs(0..10))).unwrap();
        h.flush().unwrap();
        h.apply(&batch("n", "GPU-1", &secs(20..30))).unwrap();
        h.flush().unwrap();
        // Late: one inside the first chunk, one in the gap; and a fresh one.
        h.apply(&batch("n", "GPU-1", &[5_500, 15_000, 40_000]))
            .unwrap();
        h.flush().unwrap();
        assert_eq!(
            spans(&h),
            [
                (0, 9_000),
                (15_000, 15_000),
                (20_000, 29_000),
                (40_000, 40_000)
            ]
        );
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100).0.len(), 23);
    }

    fn spans(h: &DiskHistory) -> Vec<(i64, i64)> {
        let r = h.db.begin_read().unwrap();
        let t = r.open_table(CHUNKS).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().1, split(v.value()).unwrap().0)
            })
            .collect()
    }

    /// `n` flushes of 10 minutes of `gpus` at 1 s from 00:05, with a sweep after each when
    /// `sweep` (the streamer's maintenance).
    fn ten_minute_flushes(h: &DiskHistory, gpus: &[&str], n: i64, sweep: bool) {
        for k in 0..n {
            let from = 300 + k * 600;
            for g in gpus {
                h.apply(&batch("n", g, &secs(from..from + 600))).unwrap();
            }
            h.flush().unwrap();
            if sweep {
                h.sweep((from + 600) * 1000).unwrap();
            }
        }
    }

    #[test]
    fn a_completed_hour_is_compacted_into_one_chunk_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(86_400);
        let h = DiskHistory::open(c).unwrap();
        // Flushes every 10 minutes from 00:05 to 02:05.
        ten_minute_flushes(&h, &["GPU-1"], 12, false);
        let before = times(&h, "GPU-1", 0, i64::MAX, 100_000).0;
        let bytes = h.stored_bytes();
        h.sweep(7_500_000).unwrap();
        // The chunks starting in 00:00-01:00 become one (reaching 01:05), so do those
        // starting in 01:00-02:00 (reaching 02:05).
        assert_eq!(spans(&h), [(300_000, 3_899_000), (3_900_000, 7_499_000)]);
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100_000).0, before);
        assert!(h.stored_bytes() < bytes);
        // Nothing more to do for the same hours.
        let again = spans(&h);
        h.sweep(7_500_000).unwrap();
        assert_eq!(spans(&h), again);
    }

    #[test]
    fn compaction_past_its_budget_goes_on_in_the_next_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(86_400);
        c.compact_budget = Duration::ZERO;
        let h = DiskHistory::open(c).unwrap();
        ten_minute_flushes(&h, &["GPU-1", "GPU-2", "GPU-3"], 12, false);
        // One GPU a sweep: two sweeps leave work, the third finishes.
        let mores: Vec<bool> = (0..4).map(|_| h.sweep(7_500_000).unwrap().more).collect();
        assert_eq!(mores, [true, true, false, false]);
        for g in ["GPU-1", "GPU-2", "GPU-3"] {
            assert_eq!(
                times(&h, g, 0, i64::MAX, 100_000).0,
                secs(300..300 + 12 * 600)
            );
        }
        assert_eq!(spans(&h).len(), 6, "two hours for each of three GPUs");
    }

    /// A directory with two days of retention and 64 KiB segments.
    fn small_segments() -> (tempfile::TempDir, DiskConfig) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(2 * 86_400);
        c.segment_bytes = 64 * 1024;
        (dir, c)
    }

    fn segment_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("segments")).unwrap().count()
    }

    #[test]
    fn six_completed_hours_become_one_chunk_and_dead_segments_go() {
        let (dir, c) = small_segments();
        let h = DiskHistory::open(c).unwrap();
        // Flushes every 10 minutes from 00:05 to 07:05, a sweep after each (the streamer's
        // maintenance).
        ten_minute_flushes(&h, &["GPU-1"], 42, true);
        // 00:05–06:05 in one chunk, 06:05–07:05 in one; every reading once.
        assert_eq!(spans(&h), [(300_000, 21_899_000), (21_900_000, 25_499_000)]);
        assert_eq!(
            times(&h, "GPU-1", 0, i64::MAX, 100_000).0,
            secs(300..300 + 42 * 600)
        );
        // The 10-minute chunks' segment died whole and is gone; the hourly chunks' one had
        // its one live chunk copied out: the files hold exactly the live bodies, one
        // segment for the 6-hour chunk, one for the hourly.
        assert_eq!(h.segment_file_bytes(), h.stored_bytes());
        assert_eq!(segment_files(dir.path()), 2);
        // What the files hold is what is live.
        let on_disk: u64 = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, h.segment_file_bytes());
        // After a reopen, the same.
        drop(h);
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        assert_eq!(
            times(&h, "GPU-1", 0, i64::MAX, 100_000).0,
            secs(300..300 + 42 * 600)
        );
    }

    #[test]
    fn a_mostly_dead_segment_has_its_live_chunks_copied_out_and_is_deleted() {
        let (dir, c) = small_segments();
        let h = DiskHistory::open(c.clone()).unwrap();
        let gpus = ["GPU-1", "GPU-2", "GPU-3"];
        ten_minute_flushes(&h, &gpus, 42, true);
        let segments = |dir: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.join("segments"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let before = segments(dir.path());
        // Late readings for two GPUs inside their 6-hour chunks: those chunks are rewritten
        // (into a fresh segment), two thirds of the 6-hour chunks' segment die.
        for g in &gpus[..2] {
            h.apply(&batch("n", g, &[1_000_500, 2_000_500])).unwrap();
        }
        h.flush().unwrap();
        assert!(h.segment_file_bytes() > h.stored_bytes());
        h.sweep(25_500_000).unwrap();
        let after = segments(dir.path());
        assert_eq!(h.segment_file_bytes(), h.stored_bytes());
        // The old 6-hour segment is gone; GPU-3's chunk lives on in a new one.
        let gone: Vec<&String> = before.iter().filter(|s| !after.contains(s)).collect();
        assert_eq!(gone.len(), 1, "{before:?} -> {after:?}");
        let mut late = secs(300..300 + 42 * 600);
        late.extend([1_000_500, 2_000_500]);
        late.sort_unstable();
        drop(h);
        let h = DiskHistory::open(c).unwrap();
        for g in gpus {
            let want = if g == "GPU-3" {
                secs(300..300 + 42 * 600)
            } else {
                late.clone()
            };
            let got: Vec<i64> = h
                .range(g, 0, i64::MAX, 100_000)
                .unwrap()
                .unwrap()
                .0
                .iter()
                .map(|r| r.ts_ms)
                .collect();
            assert_eq!(got, want, "{g}");
        }
    }

    #[test]
    fn a_database_with_bodies_inline_has_them_moved_into_segments_at_open() {
        let (dir, h) = three_chunks_and_five_open();
        h.flush().unwrap();
        let want = times(&h, "GPU-1", 0, i64::MAX, 100);
        let files = h.lock().segs.files();
        // Back to the layout of the builds before segment files: bodies inline.
        let w = h.db.begin_write().unwrap();
        {
            let mut t = w.open_table(CHUNKS).unwrap();
            let rows: Vec<((u32, i64), Vec<u8>)> = t
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect();
            assert_eq!(rows.len(), 4);
            for (k, v) in rows {
                let (last, count, rest) = split(&v).unwrap();
                let mut inline = last.to_le_bytes().to_vec();
                inline.extend_from_slice(&count.to_le_bytes());
                inline.extend_from_slice(&body_of(&files, rest).unwrap().1);
                t.insert(k, inline.as_slice()).unwrap();
            }
            let mut segs = w.open_table(SEGMENTS).unwrap();
            let ids: Vec<u32> = segs.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
            for id in ids {
                segs.remove(id).unwrap();
            }
            w.open_table(META).unwrap().remove(LAYOUT).unwrap();
        }
        w.commit().unwrap();
        drop(h);
        std::fs::remove_dir_all(dir.path().join("segments")).unwrap();
        for _ in 0..2 {
            let h = DiskHistory::open(cfg(dir.path())).unwrap();
            assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100), want);
            assert_eq!(segment_files(dir.path()), 1);
        }
    }

    #[test]
    fn data_offsets_and_inventory_survive_a_reopen_but_unflushed_data_does_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = DiskHistory::open(cfg(dir.path())).unwrap();
            h.apply(&batch("n", "GPU-1", &secs(1..=3))).unwrap();
            h.cover(&[(0, 17), (3, 5)]).unwrap();
            assert_eq!(h.resume_offset(0), None, "not durable before a flush");
            h.flush().unwrap();
            h.apply(&batch("n", "GPU-1", &secs(4..=6))).unwrap();
            h.cover(&[(0, 20)]).unwrap();
            // Dropped without a flush: as after a kill -9.
        }
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        assert_eq!(
            (h.resume_offset(0), h.resume_offset(3)),
            (Some(17), Some(5))
        );
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100).0, secs(1..=3));
        let s = h.series().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].sample_count, 3);
        assert_eq!(s[0].latest.as_ref().unwrap().timestamp_ms, 3000);
        // Re-reading from offset 17 redelivers 4..=6 and, idempotently, 3.
        let (a, _) = h.apply(&batch("n", "GPU-1", &secs(3..=6))).unwrap();
        assert_eq!((a.inserted, a.duplicates), (3, 1));
    }

    #[test]
    fn a_lower_offset_replaces_the_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        h.cover(&[(0, 500)]).unwrap();
        h.flush().unwrap();
        h.cover(&[(0, 3)]).unwrap();
        h.flush().unwrap();
        drop(h);
        assert_eq!(
            DiskHistory::open(cfg(dir.path())).unwrap().resume_offset(0),
            Some(3)
        );
    }

    #[test]
    fn sweeps_drop_whole_chunks_past_retention_and_forget_gpus_with_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(100);
        (c.retention_1m, c.retention_1h) = (c.retention, c.retention);
        let h = DiskHistory::open(c.clone()).unwrap();
        h.apply(&batch("n", "GPU-old", &secs(1..=10))).unwrap();
        h.apply(&batch("n", "GPU-live", &secs(1..=10))).unwrap();
        h.flush().unwrap();
        h.apply(&batch("n", "GPU-live", &secs(3700..=3710)))
            .unwrap();
        h.flush().unwrap();
        let before = h.stored_bytes();
        // Raw retention ends at whole hours: 100 s before now, rounded down to 1 h.
        let mut swept = h.sweep(3_700_001).unwrap();
        swept.counts.sort();
        assert_eq!(swept.samples, 20);
        assert_eq!(
            swept.counts,
            [("GPU-live".to_string(), 11), ("GPU-old".to_string(), 0)]
        );
        // GPU-old's 1-minute rollups (a day's chunk, kept until the day's end + 100 s) keep
        // it known.
        assert!(swept.gone.is_empty());
        assert!(h.stored_bytes() < before);
        assert!(
            h.range("GPU-old", 0, i64::MAX, 10)
                .unwrap()
                .unwrap()
                .0
                .is_empty()
        );
        assert_eq!(times(&h, "GPU-live", 0, i64::MAX, 100).0, secs(3700..=3710));
        drop(h);
        let h = DiskHistory::open(c).unwrap();
        let mut counts: Vec<u64> = h.series().unwrap().iter().map(|s| s.sample_count).collect();
        counts.sort_unstable();
        assert_eq!(counts, [0, 11]);
        let mut swept = h.sweep(86_400_000 + 100_001).unwrap();
        swept.gone.sort();
        assert_eq!(swept.gone, ["GPU-live", "GPU-old"]);
        assert!(h.series().unwrap().is_empty());
    }

    #[test]
    fn a_byte_budget_drops_the_oldest_chunks_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(10 * 365 * 86_400);
        let h = DiskHistory::open(c.clone()).unwrap();
        for k in 0..5 {
            h.apply(&batch("n", "GPU-1", &secs(k * 100..k * 100 + 50)))
                .unwrap();
            h.flush().unwrap();
        }
        let per_chunk = h.stored_bytes() / 5;
        drop(h);
        c.retention_bytes = per_chunk * 2 + per_chunk / 2;
        let h = DiskHistory::open(c).unwrap();
        let swept = h.sweep(1_000_000).unwrap();
        assert_eq!(swept.samples, 150);
        assert_eq!(
            times(&h, "GPU-1", 0, i64::MAX, 1000).0,
            secs((300..350).chain(400..450))
        );
    }

    #[test]
    fn the_write_ahead_log_brings_back_what_was_not_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.write_ahead = true;
        {
            let h = DiskHistory::open(c.clone()).unwrap();
            h.apply(&batch("n", "GPU-1", &secs(1..=3))).unwrap();
            h.flush().unwrap();
            h.apply(&batch("n", "GPU-1", &secs(4..=6))).unwrap();
        }
        let h = DiskHistory::open(c.clone()).unwrap();
        assert_eq!(times(&h, "GPU-1", 0, i64::MAX, 100).0, secs(1..=6));
        assert_eq!(h.open_samples(), 0, "replayed and flushed on open");
        assert_eq!(h.series().unwrap()[0].sample_count, 6);
    }

    #[test]
    fn old_samples_are_expired_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(cfg(dir.path())).unwrap();
        h.apply(&batch("n", "GPU-1", &[10_000_000])).unwrap();
        let (a, _) = h.apply(&batch("n", "GPU-1", &[1_000, 9_999_000])).unwrap();
        assert_eq!((a.inserted, a.expired), (1, 1));
    }

    fn agg_of(h: &DiskHistory, step: i64, agg: Agg) -> Vec<(i64, Option<f64>, Option<f64>)> {
        let (rows, _) = h
            .aggregate("GPU-1", 0, 10_000_000, step, agg, 100_000)
            .unwrap()
            .unwrap();
        rows.iter()
            .map(|r| (r.ts_ms, r.values[0], r.values[5]))
            .collect()
    }

    #[test]
    fn aggregates_over_tiers_and_raw_readings_equal_aggregates_of_every_reading() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(7200);
        let h = DiskHistory::open(c).unwrap();
        // 2 h of readings in uneven flushes, the last part left unflushed, and a late
        // batch that lands in flushed chunks.
        let all: Vec<i64> = secs(0..7200)
            .into_iter()
            .filter(|t| t % 7000 != 0)
            .collect();
        for part in all.chunks(1234) {
            h.apply(&batch("n", "GPU-1", part)).unwrap();
            if part[0] < 6_000_000 {
                h.flush().unwrap();
            }
        }
        let late: Vec<i64> = (0..7200)
            .map(|k| k * 7000)
            .filter(|t| *t < 1_200_000)
            .collect();
        h.apply(&batch("n", "GPU-1", &late)).unwrap();
        h.flush().unwrap();
        h.apply(&batch("n", "GPU-1", &secs(7200..7300))).unwrap();
        let readings: Vec<Reading> = h.range("GPU-1", 0, i64::MAX, 100_000).unwrap().unwrap().0;
        let stored = readings.len();
        assert_eq!(stored, 7300 - (7200 / 7 - 1200 / 7));
        let want = |step: i64, agg: Agg| -> Vec<(i64, Option<f64>, Option<f64>)> {
            rollup::rows(rollup::partials(&readings, step).into_values(), agg)
                .iter()
                .map(|r| (r.ts_ms, r.values[0], r.values[5]))
                .collect()
        };
        let check = |h: &DiskHistory| {
            for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::Count] {
                for step in [60_000, 300_000, 3_600_000, 7_200_000] {
                    assert_eq!(agg_of(h, step, agg), want(step, agg), "{agg:?} step {step}");
                }
            }
        };
        check(&h);
        // The chunks ending in the first hour age out of raw retention into the 1-minute
        // tier; the answers stay the same.
        let swept = h.sweep(3_600_000 + 7_200_000).unwrap();
        // Two flushed chunks of 1,234, and the 172 late readings merged into the first.
        assert_eq!(swept.samples, 2 * 1234 + 172, "{swept:?}");
        assert!(
            h.range("GPU-1", 0, 2_400_000, 10)
                .unwrap()
                .unwrap()
                .0
                .is_empty()
        );
        check(&h);
        // A step no tier divides reads raw readings only.
        assert_eq!(
            agg_of(&h, 45_000, Agg::Count)
                .iter()
                .map(|r| r.1.unwrap())
                .sum::<f64>(),
            (stored as u64 - swept.samples) as f64
        );
        let (rows, more) = h
            .aggregate("GPU-1", 0, 7_200_000, 60_000, Agg::Avg, 10)
            .unwrap()
            .unwrap();
        assert_eq!((rows.len(), more), (10, true));
        assert!(
            h.aggregate("GPU-x", 0, 1, 60_000, Agg::Avg, 1)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rollups_outlive_raw_readings_and_keep_their_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retention = Duration::from_secs(600);
        let h = DiskHistory::open(c).unwrap();
        h.apply(&batch("n", "GPU-1", &secs(0..3600))).unwrap();
        h.flush().unwrap();
        let before = agg_of(&h, 3_600_000, Agg::Avg);
        let minutes = agg_of(&h, 60_000, Agg::Max);
        let swept = h.sweep(3_600_000 + 700_000).unwrap();
        assert_eq!(swept.samples, 3600);
        assert!(swept.gone.is_empty(), "rollups remain: the GPU stays");
        assert!(
            h.range("GPU-1", 0, i64::MAX, 10)
                .unwrap()
                .unwrap()
                .0
                .is_empty()
        );
        assert_eq!(agg_of(&h, 3_600_000, Agg::Avg), before);
        assert_eq!(agg_of(&h, 60_000, Agg::Max), minutes);
        // A redelivery of readings already rolled up is not stored again (it would count
        // twice): expired, also after a reopen.
        let (a, _) = h.apply(&batch("n", "GPU-1", &secs(10..20))).unwrap();
        assert_eq!((a.inserted, a.expired), (0, 10));
        assert_eq!(agg_of(&h, 3_600_000, Agg::Avg), before);
        // Past the 1-minute tier's retention the day becomes hours: still the same hour,
        // no more minutes; past the hour tier's, nothing, and the GPU goes.
        let swept = h.sweep(3_600_000 + 91 * 86_400_000).unwrap();
        assert!(swept.gone.is_empty());
        assert!(agg_of(&h, 60_000, Agg::Count).is_empty());
        assert_eq!(agg_of(&h, 3_600_000, Agg::Avg), before);
        let swept = h.sweep(3_600_000 + 731 * 86_400_000).unwrap();
        assert_eq!(swept.gone, ["GPU-1"]);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _h = DiskHistory::open(cfg(dir.path())).unwrap();
        let err = DiskHistory::open(cfg(dir.path())).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
