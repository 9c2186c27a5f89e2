//! Chunk bodies in append-only segment files (`segments/NNNNNNNN.seg`); the database holds
//! where each body is ([`Loc`]) and, per segment, its committed length, its live bytes and
//! its kind. A body is written to its segment before the transaction that refers to it
//! commits, and the segment is fsynced first: a crash leaves at most an unreferenced tail,
//! cut off at the next open, or a segment file the database no longer lists, deleted then.
//!
//! Three kinds of segment, so that bodies that die together sit together: `Fresh` holds
//! what flushes write (10-minute chunks, compacted away within the hour), `Hourly` the hourly
//! chunks (compacted away when their 6-hour block completes), `Compacted` the 6-hour chunks
//! (which die by retention, oldest first). A segment whose bodies are all dead is deleted;
//! one of at least 1/[`GC_MIN_FRACTION`] of the segment size with more dead than live bytes
//! has its live bodies copied out and is deleted (see `DiskHistory::sweep`).
//!
//! Why not the bodies in the database: redb allocates a large value in pages of a power
//! of two, and a chunk body is 10–20 kB; the file came to 1.65× the bodies (see
//! docs/architecture.md#storage).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::history::StoreError;

/// Where a chunk body is: segment, byte offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
}

/// Bytes of an encoded [`Loc`].
pub(crate) const LOC_BYTES: usize = 16;

impl Loc {
    pub(crate) fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seg.to_le_bytes());
        out.extend_from_slice(&self.off.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != LOC_BYTES {
            return Err(StoreError::Other(format!(
                "chunk locator of {} bytes, expected {LOC_BYTES}",
                b.len()
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[4..12]);
        Ok(Self {
            seg: u32_at(0),
            off: u64::from_le_bytes(off),
            len: u32_at(12),
        })
    }
}

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Chunks as flushes write them.
    Fresh = 0,
    /// Chunks of 6-hour blocks (and bodies moved at open from before segment files).
    Compacted = 1,
    /// Hourly chunks.
    Hourly = 2,
}

const KINDS: usize = 3;

impl Kind {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Compacted,
            2 => Self::Hourly,
            _ => Self::Fresh,
        }
    }
}

/// A segment's row in the database: committed length, live bytes, kind.
pub(crate) type SegRow = (u64, u64, u8);

#[derive(Debug, Clone, Copy)]
struct Info {
    kind: Kind,
    len: u64,
    live: u64,
}

/// A segment smaller than this fraction of the segment size is never rewritten (its dead
/// bytes cost less than copying).
pub(crate) const GC_MIN_FRACTION: u64 = 64;

/// Open segment files, shared with readers: a reader holds the set it started with, so a
/// segment deleted meanwhile stays readable to it (an unlinked file lives while open).
pub(crate) type SegFiles = Arc<HashMap<u32, Arc<File>>>;

/// Reads the body at `loc`.
pub(crate) fn read(files: &SegFiles, loc: Loc) -> Result<Vec<u8>, StoreError> {
    let f = files.get(&loc.seg).ok_or_else(|| {
        StoreError::Other(format!("chunk in segment {} which does not exist", loc.seg))
    })?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.off)
        .map_err(|e| StoreError::Other(format!("read segment {}: {e}", loc.seg)))?;
    Ok(buf)
}

/// What [`Segments::sync`] asks of the transaction: rows to write, segments to delete.
pub(crate) type Synced = (Vec<(u32, SegRow)>, Vec<u32>);

/// The segment files of a data directory and their accounting. Changes since the last
/// [`Segments::commit`] are undone by [`Segments::rollback`].
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    committed: BTreeMap<u32, Info>,
    work: BTreeMap<u32, Info>,
    active: [Option<u32>; KINDS],
    next_id: u32,
    files: SegFiles,
    // Written (or released) since the last commit.
    touched: Vec<u32>,
    // Deleted by the transaction under way: unlinked once it commits.
    dropped: Vec<u32>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Other(format!("{what}: {e}"))
}

fn name(id: u32) -> String {
    format!("{id:08}.seg")
}

impl Segments {
    /// Opens `dir` (created if missing) as the database lists it (`rows`): cuts each file to
    /// its committed length and deletes files the database does not list.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        rows: impl IntoIterator<Item = (u32, SegRow)>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let committed: BTreeMap<u32, Info> = rows
            .into_iter()
            .map(|(id, (len, live, kind))| {
                (
                    id,
                    Info {
                        kind: Kind::from_u8(kind),
                        len,
                        live,
                    },
                )
            })
            .collect();
        let mut files = HashMap::new();
        for (id, info) in &committed {
            let path = dir.join(name(*id));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(format!("open {}", path.display())))?;
            let on_disk = f
                .metadata()
                .map_err(io(format!("stat {}", path.display())))?
                .len();
            if on_disk < info.len {
                return Err(StoreError::Other(format!(
                    "{} holds {on_disk} bytes but the database refers to {}: the data directory is damaged",
                    path.display(),
                    info.len
                )));
            }
            if on_disk > info.len {
                // The tail of a flush that did not commit.
                f.set_len(info.len)
                    .map_err(io(format!("truncate {}", path.display())))?;
            }
            files.insert(*id, Arc::new(f));
        }
        for e in std::fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))? {
            let e = e.map_err(io(format!("list {}", dir.display())))?;
            let file = e.file_name();
            let Some(id) = file
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !committed.contains_key(&id) {
                // Created by a transaction that did not commit, or deleted by one that did.
                std::fs::remove_file(e.path()).map_err(io(format!("remove {:?}", file)))?;
            }
        }
        let mut active = [None; KINDS];
        for (id, info) in &committed {
            if info.len < max_bytes {
                active[info.kind as usize] = Some(*id);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            next_id: committed.keys().next_back().map_or(1, |id| id + 1),
            work: committed.clone(),
            committed,
            active,
            files: Arc::new(files),
            touched: Vec::new(),
            dropped: Vec::new(),
        })
    }

    /// The open files, for readers.
    pub(crate) fn files(&self) -> SegFiles {
        self.files.clone()
    }

    /// Live bytes in every segment.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.work.values().map(|i| i.live).sum()
    }

    /// Bytes of every segment file.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.work.values().map(|i| i.len).sum()
    }

    /// Appends `body` to the active segment of `kind` (a new one when there is none or it
    /// is full). Durable only after [`Segments::sync`] and the commit.
    pub(crate) fn append(&mut self, kind: Kind, body: &[u8]) -> Result<Loc, StoreError> {
        let len = u32::try_from(body.len())
            .map_err(|_| StoreError::Other("chunk body over 4 GiB".into()))?;
        let id = match self.active[kind as usize] {
            Some(id) if self.work.get(&id).is_some_and(|i| i.len < self.max_bytes) => id,
            _ => self.create(kind)?,
        };
        let info = self
            .work
            .get_mut(&id)
            .ok_or_else(|| StoreError::Other(format!("segment {id} vanished")))?;
        let f = &self.files[&id];
        f.write_all_at(body, info.len)
            .map_err(io(format!("write segment {id}")))?;
        let loc = Loc {
            seg: id,
            off: info.len,
            len,
        };
        info.len += u64::from(len);
        info.live += u64::from(len);
        self.touched.push(id);
        Ok(loc)
    }

    fn create(&mut self, kind: Kind) -> Result<u32, StoreError> {
        let id = self.next_id;
        self.next_id += 1;
        let path = self.dir.join(name(id));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(format!("create {}", path.display())))?;
        let mut files = (*self.files).clone();
        files.insert(id, Arc::new(f));
        self.files = Arc::new(files);
        self.work.insert(
            id,
            Info {
                kind,
                len: 0,
                live: 0,
            },
        );
        self.active[kind as usize] = Some(id);
        Ok(id)
    }

    /// The body at `loc` is no longer referred to.
    pub(crate) fn release(&mut self, loc: Loc) {
        if let Some(i) = self.work.get_mut(&loc.seg) {
            i.live = i.live.saturating_sub(u64::from(loc.len));
            self.touched.push(loc.seg);
        }
    }

    /// Reads the body at `loc`, including bodies appended by the transaction under way.
    pub(crate) fn read(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        read(&self.files, loc)
    }

    /// A segment worth rewriting: not tiny, more dead than live bytes (it stops taking
    /// appends: its live bodies go to a new one).
    pub(crate) fn gc_candidate(&mut self) -> Option<(u32, Kind)> {
        let min = self.max_bytes / GC_MIN_FRACTION;
        let (id, info) = self
            .work
            .iter()
            .find(|(_, i)| i.len >= min && i.live > 0 && i.live * 2 < i.len)
            .map(|(id, i)| (*id, *i))?;
        if self.active[info.kind as usize] == Some(id) {
            self.active[info.kind as usize] = None;
        }
        Some((id, info.kind))
    }

    /// Fsyncs what was appended and returns the rows the transaction must write: changed
    /// segments, and segments with nothing live left to delete (unlinked after the commit).
    pub(crate) fn sync(&mut self) -> Result<Synced, StoreError> {
        self.touched.sort_unstable();
        self.touched.dedup();
        let mut rows = Vec::new();
        let mut gone = Vec::new();
        for id in std::mem::take(&mut self.touched) {
            let Some(info) = self.work.get(&id).copied() else {
                continue;
            };
            if info.live == 0 {
                self.work.remove(&id);
                if self.active[info.kind as usize] == Some(id) {
                    self.active[info.kind as usize] = None;
                }
                gone.push(id);
                continue;
            }
            if self.committed.get(&id).is_none_or(|c| c.len != info.len) {
                self.files[&id]
                    .sync_data()
                    .map_err(io(format!("fsync segment {id}")))?;
            }
            rows.push((id, (info.len, info.live, info.kind as u8)));
        }
        // A new segment's name must survive a crash along with the rows naming it.
        if rows.iter().any(|(id, _)| !self.committed.contains_key(id)) {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(format!("fsync {}", self.dir.display())))?;
        }
        self.dropped.extend(&gone);
        Ok((rows, gone))
    }

    /// The transaction committed: deletes the files of dropped segments.
    pub(crate) fn commit(&mut self) {
        self.committed = self.work.clone();
        if self.dropped.is_empty() {
            return;
        }
        let mut files = (*self.files).clone();
        for id in std::mem::take(&mut self.dropped) {
            files.remove(&id);
            // A file left behind (an error here) is deleted at the next open.
            if let Err(error) = std::fs::remove_file(self.dir.join(name(id))) {
                tracing::warn!(%error, segment = id, "could not delete a dead segment");
            }
        }
        self.files = Arc::new(files);
    }

    /// The transaction failed: back to the committed state (appended bytes are cut off).
    pub(crate) fn rollback(&mut self) {
        for (id, info) in &self.work {
            let keep = self.committed.get(id).map_or(0, |c| c.len);
            if info.len != keep
                && let Some(f) = self.files.get(id)
            {
                let _ = f.set_len(keep);
            }
        }
        self.work = self.committed.clone();
        self.touched.clear();
        self.dropped.clear();
        for a in &mut self.active {
            if a.is_some_and(|id| !self.work.contains_key(&id)) {
                *a = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locator_round_trips_and_a_wrong_length_is_an_error() {
        let loc = Loc {
            seg: 7,
            off: u64::MAX - 3,
            len: 12_345,
        };
        let mut b = Vec::new();
        loc.encode(&mut b);
        assert_eq!(b.len(), LOC_BYTES);
        assert_eq!(Loc::decode(&b).unwrap(), loc);
        assert!(Loc::decode(&b[1..]).is_err());
    }

    #[test]
    fn appends_survive_a_commit_and_vanish_with_a_rollback_or_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 1 << 20, []).unwrap();
        let a = s.append(Kind::Fresh, b"hello").unwrap();
        let b = s.append(Kind::Compacted, b"world!").unwrap();
        assert_ne!(a.seg, b.seg);
        let (rows, gone) = s.sync().unwrap();
        assert!(gone.is_empty());
        s.commit();
        assert_eq!(s.read(a).unwrap(), b"hello");
        // Uncommitted: rolled back, the bytes are cut off.
        let c = s.append(Kind::Fresh, b"lost").unwrap();
        assert_eq!(c.off, 5);
        s.rollback();
        let d = s.append(Kind::Fresh, b"again").unwrap();
        assert_eq!(d.off, 5);
        // A crash before the commit: the next open cuts the tail and keeps what committed.
        drop(s);
        let s = Segments::open(dir.path(), 1 << 20, rows.clone()).unwrap();
        assert_eq!(s.read(a).unwrap(), b"hello");
        assert_eq!(s.read(b).unwrap(), b"world!");
        assert_eq!(
            std::fs::metadata(dir.path().join(name(a.seg)))
                .unwrap()
                .len(),
            5
        );
        assert_eq!(s.live_bytes(), 11);
    }

    #[test]
    fn a_segment_with_nothing_live_is_deleted_after_the_commit_but_stays_readable_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 1 << 20, []).unwrap();
        let a = s.append(Kind::Fresh, b"bytes").unwrap();
        s.sync().unwrap();
        s.commit();
        let reader = s.files();
        s.release(a);
        let (rows, gone) = s.sync().unwrap();
        assert_eq!((rows, gone), (vec![], vec![a.seg]));
        s.commit();
        assert!(!dir.path().join(name(a.seg)).exists());
        assert_eq!(read(&reader, a).unwrap(), b"bytes");
        assert!(s.read(a).is_err());
        // The next append starts a new segment.
        assert_ne!(s.append(Kind::Fresh, b"x").unwrap().seg, a.seg);
    }

    #[test]
    fn files_the_database_does_not_list_are_deleted_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name(3)), b"orphan").unwrap();
        std::fs::write(dir.path().join(name(4)), b"kept").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
        let s = Segments::open(dir.path(), 1 << 20, [(4, (4, 4, 1))]).unwrap();
        assert!(!dir.path().join(name(3)).exists());
        assert!(dir.path().join("notes.txt").exists());
        // Appends go on in the segment of their kind that has room.
        assert_eq!(s.active, [None, Some(4), None]);
        drop(s);
        let e = Segments::open(dir.path(), 1 << 20, [(4, (9, 9, 1))]).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn a_mostly_dead_segment_is_a_candidate_and_takes_no_more_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 64 * 100, []).unwrap();
        let locs: Vec<Loc> = (0..4)
            .map(|_| s.append(Kind::Compacted, &[7u8; 40]).unwrap())
            .collect();
        s.sync().unwrap();
        s.commit();
        assert_eq!(s.gc_candidate(), None);
        s.release(locs[0]);
        s.release(locs[1]);
        assert_eq!(
            s.gc_candidate(),
            None,
            "half dead is not more dead than live"
        );
        s.release(locs[2]);
        assert_eq!(s.gc_candidate(), Some((locs[0].seg, Kind::Compacted)));
        assert_ne!(s.append(Kind::Compacted, b"new").unwrap().seg, locs[0].seg);
    }
}
