//! The chunk codec, free of I/O: a time-ordered run of [`Reading`]s of one GPU, stored
//! column by column and compressed with pco (numerical compression that finds the delta
//! order, bins and common multiples by itself).
//!
//! Format (version 1), integers as LEB128 varints unless said otherwise:
//! ```text
//! u8 version | n | numbers(timestamps as u64) | ncols | ncols × column
//! column := u8 id | u8 kind | payload
//!   kind 0: absent in every reading          (no payload)
//!   kind 1: present in every reading          numbers(values)
//!   kind 2: present in every reading, constant value
//!   kind 3: present in some                   bitmap ((n+7)/8 bytes), numbers(present values)
//! numbers := len | u8 codec | body
//!   codec 0: pco
//!   codec 1: varints of the zigzagged differences to the previous number (from 0)
//! ```
//! Short runs (a rollup chunk of a few buckets) take whichever codec is smaller: pco's
//! per-run metadata outweighs its gains below a few hundred numbers.
//! A column id this build does not know is skipped, so older builds read newer chunks.

use super::reading::{COLUMNS, N_COLUMNS, Reading, column_index};

const VERSION: u8 = 1;
const ABSENT: u8 = 0;
const DENSE: u8 = 1;
const CONSTANT: u8 = 2;
const SPARSE: u8 = 3;

/// A chunk could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The bytes are not a chunk this build understands.
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
    /// pco refused the numbers.
    #[error("pco: {0}")]
    Pco(#[from] pco::errors::PcoError),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, ChunkError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(ChunkError::Corrupt("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError::Corrupt("varint too long"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        if self.buf.len() < n {
            return Err(ChunkError::Corrupt("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], ChunkError> {
        let n = usize::try_from(self.varint()?).map_err(|_| ChunkError::Corrupt("length"))?;
        self.bytes(n)
    }
}

/// Runs this long or shorter also try the varint codec.
const SHORT_RUN: usize = 512;
const PCO: u8 = 0;
const DELTA_VARINT: u8 = 1;

fn put_numbers(out: &mut Vec<u8>, v: &[u64]) -> Result<(), ChunkError> {
    let pco = pco::standalone::simple_compress(v, &pco::ChunkConfig::default())?;
    let mut best = (PCO, pco);
    if v.len() <= SHORT_RUN {
        let mut deltas = Vec::with_capacity(v.len() * 2);
        let mut prev = 0u64;
        for &x in v {
            let d = x.wrapping_sub(prev) as i64;
            put_varint(&mut deltas, ((d << 1) ^ (d >> 63)) as u64);
            prev = x;
        }
        if deltas.len() < best.1.len() {
            best = (DELTA_VARINT, deltas);
        }
    }
    put_varint(out, best.1.len() as u64 + 1);
    out.push(best.0);
    out.extend_from_slice(&best.1);
    Ok(())
}

fn get_numbers(bytes: &[u8]) -> Result<Vec<u64>, ChunkError> {
    let (&codec, body) = bytes
        .split_first()
        .ok_or(ChunkError::Corrupt("empty number run"))?;
    match codec {
        PCO => Ok(pco::standalone::simple_decompress(body)?),
        DELTA_VARINT => {
            let mut r = Reader { buf: body };
            let mut out = Vec::new();
            let mut prev = 0u64;
            while !r.buf.is_empty() {
                let z = r.varint()?;
                let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
                prev = prev.wrapping_add(d as u64);
                out.push(prev);
            }
            Ok(out)
        }
        _ => Err(ChunkError::Corrupt("unknown number codec")),
    }
}

/// Encodes `readings`, which must be sorted by time without duplicates (checked).
///
/// # Errors
/// [`ChunkError::Corrupt`] for unsorted or empty input; [`ChunkError::Pco`] if pco fails.
pub fn encode(readings: &[Reading]) -> Result<Vec<u8>, ChunkError> {
    if readings.is_empty() {
        return Err(ChunkError::Corrupt("empty chunk"));
    }
    if readings.windows(2).any(|w| w[0].ts_ms >= w[1].ts_ms) {
        return Err(ChunkError::Corrupt("readings not strictly time-ordered"));
    }
    let n = readings.len();
    let mut out = Vec::with_capacity(64 + n);
    out.push(VERSION);
    put_varint(&mut out, n as u64);
    let ts: Vec<u64> = readings.iter().map(|r| r.ts_ms as u64).collect();
    put_numbers(&mut out, &ts)?;
    put_varint(&mut out, N_COLUMNS as u64);
    let mut values = Vec::with_capacity(n);
    for (i, col) in COLUMNS.iter().enumerate() {
        out.push(col.id);
        values.clear();
        values.extend(readings.iter().filter_map(|r| r.get(i)));
        if values.is_empty() {
            out.push(ABSENT);
        } else if values.len() == n && values.iter().all(|v| *v == values[0]) {
            out.push(CONSTANT);
            put_varint(&mut out, values[0]);
        } else if values.len() == n {
            out.push(DENSE);
            put_numbers(&mut out, &values)?;
        } else {
            out.push(SPARSE);
            let mut bitmap = vec![0u8; n.div_ceil(8)];
            for (j, r) in readings.iter().enumerate() {
                if r.get(i).is_some() {
                    bitmap[j / 8] |= 1 << (j % 8);
                }
            }
            out.extend_from_slice(&bitmap);
            put_numbers(&mut out, &values)?;
        }
    }
    Ok(out)
}

fn header<'a>(bytes: &'a [u8]) -> Result<(Reader<'a>, usize, Vec<i64>), ChunkError> {
    let mut r = Reader { buf: bytes };
    if r.u8()? != VERSION {
        return Err(ChunkError::Corrupt("unknown chunk version"));
    }
    let n = usize::try_from(r.varint()?).map_err(|_| ChunkError::Corrupt("count"))?;
    let ts: Vec<i64> = get_numbers(r.len_prefixed()?)?
        .into_iter()
        .map(|t| t as i64)
        .collect();
    if ts.len() != n {
        return Err(ChunkError::Corrupt("timestamp count"));
    }
    Ok((r, n, ts))
}

/// How many readings a chunk holds (its header alone).
///
/// # Errors
/// [`ChunkError`] for bytes that do not start like a chunk.
pub fn reading_count(bytes: &[u8]) -> Result<usize, ChunkError> {
    let mut r = Reader { buf: bytes };
    if r.u8()? != VERSION {
        return Err(ChunkError::Corrupt("unknown chunk version"));
    }
    usize::try_from(r.varint()?).map_err(|_| ChunkError::Corrupt("count"))
}

/// The times of a chunk's readings, without decoding the values.
///
/// # Errors
/// [`ChunkError`] for bytes that are not a valid chunk.
pub fn decode_times(bytes: &[u8]) -> Result<Vec<i64>, ChunkError> {
    Ok(header(bytes)?.2)
}

/// One decoded column, before the readings are assembled.
enum Decoded<'a> {
    Constant(u64),
    Dense(Vec<u64>),
    Sparse(&'a [u8], std::vec::IntoIter<u64>),
}

/// Decodes a chunk.
///
/// # Errors
/// [`ChunkError`] for bytes that are not a valid chunk.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, ChunkError> {
    let (mut r, n, ts) = header(bytes)?;
    let ncols = r.varint()?;
    // Every column first, then the readings in one pass (a pass per column over the
    // readings cost more than decoding).
    let mut cols: Vec<(usize, Decoded<'_>)> = Vec::new();
    for _ in 0..ncols {
        let id = r.u8()?;
        let kind = r.u8()?;
        let slot = column_index(id);
        let col = match kind {
            ABSENT => None,
            CONSTANT => Some(Decoded::Constant(r.varint()?)),
            DENSE => {
                let bytes = r.len_prefixed()?;
                match slot {
                    Some(_) => {
                        let vals = get_numbers(bytes)?;
                        if vals.len() != n {
                            return Err(ChunkError::Corrupt("value count"));
                        }
                        Some(Decoded::Dense(vals))
                    }
                    None => None,
                }
            }
            SPARSE => {
                let bitmap = r.bytes(n.div_ceil(8))?;
                let bytes = r.len_prefixed()?;
                match slot {
                    Some(_) => {
                        let vals = get_numbers(bytes)?;
                        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
                        if vals.len() != present {
                            return Err(ChunkError::Corrupt("value count"));
                        }
                        Some(Decoded::Sparse(bitmap, vals.into_iter()))
                    }
                    None => None,
                }
            }
            _ => return Err(ChunkError::Corrupt("unknown column kind")),
        };
        if let (Some(i), Some(c)) = (slot, col) {
            cols.push((i, c));
        }
    }
    let mut out = Vec::with_capacity(n);
    for (j, &t) in ts.iter().enumerate() {
        let mut reading = Reading::empty(t);
        for (i, c) in &mut cols {
            match c {
                Decoded::Constant(v) => reading.set(*i, *v),
                Decoded::Dense(vals) => reading.set(*i, vals[j]),
                Decoded::Sparse(bitmap, vals) => {
                    if bitmap[j / 8] & (1 << (j % 8)) != 0
                        && let Some(v) = vals.next()
                    {
                        reading.set(*i, v);
                    }
                }
            }
        }
        out.push(reading);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64, k: u64) -> Reading {
        let mut r = Reading::empty(t);
        r.set(0, k % 101);
        r.set(3, 80 << 30);
        if k.is_multiple_of(3) {
            r.set(5, 100_000 + k * 7);
        }
        r.set(7, k * 350_000);
        r
    }

    #[test]
    fn every_column_kind_round_trips_exactly() {
        let rs: Vec<Reading> = (0..1000)
            .map(|k| sample(1_700_000_000_000 + k as i64 * 1000, k))
            .collect();
        let bytes = encode(&rs).unwrap();
        assert_eq!(decode(&bytes).unwrap(), rs);
        assert_eq!(
            decode_times(&bytes).unwrap(),
            rs.iter().map(|r| r.ts_ms).collect::<Vec<_>>()
        );
        // Constant and counter columns cost almost nothing.
        assert!(bytes.len() < 1000 * 3, "{} bytes", bytes.len());
    }

    #[test]
    fn a_single_reading_and_extreme_values_round_trip() {
        let mut r = Reading::empty(i64::MIN + 1);
        r.set(2, u64::MAX);
        r.set(10, 0);
        let bytes = encode(&[r]).unwrap();
        assert_eq!(decode(&bytes).unwrap(), vec![r]);
    }

    #[test]
    fn short_runs_take_the_smaller_codec_and_round_trip() {
        for n in [1, 2, 10, 60, 511, 513] {
            let rs: Vec<Reading> = (0..n)
                .map(|k| sample(-5_000 + k as i64 * 60_000, (k as u64).wrapping_mul(7919)))
                .collect();
            let bytes = encode(&rs).unwrap();
            assert_eq!(decode(&bytes).unwrap(), rs, "{n}");
        }
        let mut varint = Vec::new();
        put_numbers(&mut varint, &[5, 3, u64::MAX, 0]).unwrap();
        assert_eq!(varint[1], DELTA_VARINT);
        assert_eq!(get_numbers(&varint[1..]).unwrap(), [5, 3, u64::MAX, 0]);
    }

    #[test]
    fn unsorted_or_empty_input_is_refused() {
        assert!(encode(&[]).is_err());
        assert!(encode(&[sample(2, 1), sample(1, 1)]).is_err());
        assert!(encode(&[sample(1, 1), sample(1, 2)]).is_err());
    }

    #[test]
    fn truncated_or_garbled_bytes_are_an_error_never_a_panic() {
        let rs: Vec<Reading> = (0..100).map(|k| sample(k as i64, k)).collect();
        let bytes = encode(&rs).unwrap();
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        let mut state = 0x1234_5678_u64;
        for _ in 0..300 {
            let mut b = bytes.clone();
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let at = (state >> 33) as usize % b.len();
            b[at] ^= (state >> 20) as u8 | 1;
            let _ = decode(&b);
        }
    }
}
