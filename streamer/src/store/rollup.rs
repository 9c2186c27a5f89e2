//! Rollups, free of I/O: per-bucket partial aggregates of a GPU's readings (min, max, sum,
//! count and last of every column), which merge exactly: partials of the same bucket made
//! from different readings combine into the bucket's true aggregate.
//!
//! Stored partials (the 1-minute and 1-hour tiers) are encoded as six [`super::chunk`]s of
//! [`Reading`]s, one row per bucket (its start as the time): min, max, sum, count, last,
//! and the offset of the last reading's time in column 0.

use std::collections::BTreeMap;

use super::chunk::{self, ChunkError};
use super::reading::{N_COLUMNS, Reading};

/// An aggregate a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Mean.
    Avg,
    /// Smallest.
    Min,
    /// Largest.
    Max,
    /// Value of the newest reading.
    Last,
    /// How many readings carried the metric.
    Count,
}

impl Agg {
    /// Every aggregate, by its query name.
    pub const ALL: [(&'static str, Agg); 5] = [
        ("avg", Agg::Avg),
        ("min", Agg::Min),
        ("max", Agg::Max),
        ("last", Agg::Last),
        ("count", Agg::Count),
    ];

    /// The aggregate named `name`.
    pub fn parse(name: &str) -> Option<Agg> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Its query name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("avg", |(n, _)| n)
    }
}

/// The partial aggregate of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// Bucket start, UTC ms.
    pub bucket: i64,
    /// Time of the newest reading counted.
    pub last_ts: i64,
    min: [u64; N_COLUMNS],
    max: [u64; N_COLUMNS],
    sum: [u64; N_COLUMNS],
    count: [u64; N_COLUMNS],
    last: [u64; N_COLUMNS],
}

impl Partial {
    fn new(bucket: i64) -> Self {
        Self {
            bucket,
            last_ts: i64::MIN,
            min: [u64::MAX; N_COLUMNS],
            max: [0; N_COLUMNS],
            sum: [0; N_COLUMNS],
            count: [0; N_COLUMNS],
            last: [0; N_COLUMNS],
        }
    }

    /// Counts one reading (of this bucket).
    pub fn add(&mut self, r: &Reading) {
        let newest = r.ts_ms >= self.last_ts;
        if newest {
            self.last_ts = r.ts_ms;
        }
        for i in 0..N_COLUMNS {
            if let Some(v) = r.get(i) {
                self.min[i] = self.min[i].min(v);
                self.max[i] = self.max[i].max(v);
                self.sum[i] = self.sum[i].saturating_add(v);
                if newest || self.count[i] == 0 {
                    self.last[i] = v;
                }
                self.count[i] += 1;
            }
        }
    }

    /// Combines another partial of the same bucket (or of a bucket inside a wider one).
    pub fn merge(&mut self, o: &Partial) {
        let newer = o.last_ts >= self.last_ts;
        for i in 0..N_COLUMNS {
            if o.count[i] == 0 {
                continue;
            }
            self.min[i] = self.min[i].min(o.min[i]);
            self.max[i] = self.max[i].max(o.max[i]);
            self.sum[i] = self.sum[i].saturating_add(o.sum[i]);
            if newer || self.count[i] == 0 {
                self.last[i] = o.last[i];
            }
            self.count[i] += o.count[i];
        }
        self.last_ts = self.last_ts.max(o.last_ts);
    }

    /// The aggregate of column `i` in raw (wire) units; `None` when no reading carried it.
    pub fn value(&self, i: usize, agg: Agg) -> Option<f64> {
        let n = self.count[i];
        if n == 0 {
            return None;
        }
        Some(match agg {
            Agg::Avg => self.sum[i] as f64 / n as f64,
            Agg::Min => self.min[i] as f64,
            Agg::Max => self.max[i] as f64,
            Agg::Last => self.last[i] as f64,
            Agg::Count => n as f64,
        })
    }
}

/// Floor of `ts` to a multiple of `width` (UTC epoch aligned).
pub fn bucket_of(ts: i64, width: i64) -> i64 {
    ts.div_euclid(width) * width
}

/// Partials of `readings` in buckets `width` ms wide, keyed by bucket start.
pub fn partials<'a>(
    readings: impl IntoIterator<Item = &'a Reading>,
    width: i64,
) -> BTreeMap<i64, Partial> {
    let mut out: BTreeMap<i64, Partial> = BTreeMap::new();
    for r in readings {
        let b = bucket_of(r.ts_ms, width);
        out.entry(b).or_insert_with(|| Partial::new(b)).add(r);
    }
    out
}

/// Re-buckets `parts` (of any width that divides `width`) into buckets `width` wide.
pub fn rebucket(parts: impl IntoIterator<Item = Partial>, width: i64) -> BTreeMap<i64, Partial> {
    let mut out: BTreeMap<i64, Partial> = BTreeMap::new();
    for p in parts {
        let b = bucket_of(p.bucket, width);
        out.entry(b).or_insert_with(|| Partial::new(b)).merge(&p);
    }
    out
}

fn put(out: &mut Vec<u8>, chunk: &[u8]) {
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(chunk);
}

/// Encodes partials sorted by bucket (one per bucket).
///
/// # Errors
/// [`ChunkError`] for empty or unsorted input.
pub fn encode(parts: &[Partial]) -> Result<Vec<u8>, ChunkError> {
    let rows = |f: &dyn Fn(&Partial, usize) -> u64| -> Vec<Reading> {
        parts
            .iter()
            .map(|p| {
                let mut r = Reading::empty(p.bucket);
                for i in 0..N_COLUMNS {
                    if p.count[i] > 0 {
                        r.set(i, f(p, i));
                    }
                }
                r
            })
            .collect()
    };
    let mut out = Vec::new();
    put(&mut out, &chunk::encode(&rows(&|p, i| p.min[i]))?);
    put(&mut out, &chunk::encode(&rows(&|p, i| p.max[i]))?);
    put(&mut out, &chunk::encode(&rows(&|p, i| p.sum[i]))?);
    put(&mut out, &chunk::encode(&rows(&|p, i| p.count[i]))?);
    put(&mut out, &chunk::encode(&rows(&|p, i| p.last[i]))?);
    let offsets: Vec<Reading> = parts
        .iter()
        .map(|p| {
            let mut r = Reading::empty(p.bucket);
            r.set(0, p.last_ts.saturating_sub(p.bucket).max(0) as u64);
            r
        })
        .collect();
    put(&mut out, &chunk::encode(&offsets)?);
    Ok(out)
}

/// Decodes what [`encode`] wrote.
///
/// # Errors
/// [`ChunkError`] for bytes that are not encoded partials.
pub fn decode(mut bytes: &[u8]) -> Result<Vec<Partial>, ChunkError> {
    let mut parts: Vec<Vec<Reading>> = Vec::with_capacity(6);
    for _ in 0..6 {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or(ChunkError::Corrupt("truncated rollup"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let body = rest
            .get(..len)
            .ok_or(ChunkError::Corrupt("truncated rollup"))?;
        parts.push(chunk::decode(body)?);
        bytes = &rest[len..];
    }
    let n = parts[0].len();
    if parts.iter().any(|p| p.len() != n) {
        return Err(ChunkError::Corrupt("rollup row counts differ"));
    }
    let [min, max, sum, count, last, offset] = &parts[..] else {
        return Err(ChunkError::Corrupt("rollup parts"));
    };
    let rows = min
        .iter()
        .zip(max)
        .zip(sum)
        .zip(count)
        .zip(last)
        .zip(offset);
    let mut out = Vec::with_capacity(n);
    for (((((mn, mx), sm), ct), ls), off) in rows {
        let mut p = Partial::new(mn.ts_ms);
        for i in 0..N_COLUMNS {
            if let Some(c) = ct.get(i) {
                p.count[i] = c;
                p.min[i] = mn.get(i).unwrap_or(0);
                p.max[i] = mx.get(i).unwrap_or(0);
                p.sum[i] = sm.get(i).unwrap_or(0);
                p.last[i] = ls.get(i).unwrap_or(0);
            }
        }
        let off = off.get(0).unwrap_or(0);
        p.last_ts = p.bucket.saturating_add(i64::try_from(off).unwrap_or(0));
        out.push(p);
    }
    Ok(out)
}

/// One row of an aggregated answer: a bucket start and, per column, the aggregate in raw
/// (wire) units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggRow {
    /// Bucket start, UTC ms.
    pub ts_ms: i64,
    /// Per [`super::reading::COLUMNS`] position.
    pub values: [Option<f64>; N_COLUMNS],
}

/// The rows of `parts` for `agg`.
pub fn rows(parts: impl IntoIterator<Item = Partial>, agg: Agg) -> Vec<AggRow> {
    parts
        .into_iter()
        .map(|p| {
            let mut values = [None; N_COLUMNS];
            for (i, v) in values.iter_mut().enumerate() {
                *v = p.value(i, agg);
            }
            AggRow {
                ts_ms: p.bucket,
                values,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(t: i64, v: u64) -> Reading {
        let mut r = Reading::empty(t);
        r.set(0, v);
        if t % 2000 == 0 {
            r.set(4, v * 10);
        }
        r
    }

    #[test]
    fn partials_of_split_data_merge_into_the_whole_aggregate() {
        let rs: Vec<Reading> = (0..600)
            .map(|s| reading(s * 1000, (s * 7 % 101) as u64))
            .collect();
        let whole = partials(&rs, 60_000);
        // The same readings in two flushes, split mid-bucket, merged.
        let (a, b) = rs.split_at(337);
        let merged = rebucket(
            partials(a, 60_000)
                .into_values()
                .chain(partials(b, 60_000).into_values()),
            60_000,
        );
        assert_eq!(merged, whole);
        let hour = rebucket(whole.values().copied(), 3_600_000);
        assert_eq!(hour.len(), 1);
        let h = hour.values().next().unwrap();
        let vals: Vec<u64> = rs.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(h.value(0, Agg::Count), Some(600.0));
        assert_eq!(h.value(0, Agg::Min), vals.iter().min().map(|v| *v as f64));
        assert_eq!(h.value(0, Agg::Max), vals.iter().max().map(|v| *v as f64));
        assert_eq!(h.value(0, Agg::Last), Some(vals[599] as f64));
        let avg = vals.iter().sum::<u64>() as f64 / 600.0;
        assert_eq!(h.value(0, Agg::Avg), Some(avg));
        assert_eq!(h.value(4, Agg::Count), Some(300.0));
        assert_eq!(h.value(9, Agg::Avg), None);
    }

    #[test]
    fn encoded_partials_round_trip_exactly() {
        let rs: Vec<Reading> = (0..1000)
            .map(|s| reading(s * 1000 + 17, s as u64))
            .collect();
        let parts: Vec<Partial> = partials(&rs, 60_000).into_values().collect();
        let bytes = encode(&parts).unwrap();
        assert_eq!(decode(&bytes).unwrap(), parts);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn buckets_align_to_the_epoch_also_before_it() {
        assert_eq!(bucket_of(61_000, 60_000), 60_000);
        assert_eq!(bucket_of(-1, 60_000), -60_000);
        assert_eq!(Agg::parse("max"), Some(Agg::Max));
        assert_eq!(Agg::parse("median"), None);
        assert_eq!(Agg::Count.name(), "count");
    }
}
