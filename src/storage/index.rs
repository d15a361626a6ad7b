//! The index and the time index: fixed-width entries in a memory-mapped file.
//!
//! # Layout
//!
//! Both are flat arrays of big-endian entries with no file header.
//!
//! ```text
//! index      (8 bytes per batch)     time index  (12 bytes per entry)
//! 0  u32 relative offset             0  i64 batch time, ms since the epoch
//! 4  u32 store position              8  u32 relative offset
//! ```
//!
//! An index entry maps the first offset of a batch (relative to the segment's
//! base offset) to the byte position of that batch in the store. Entries are
//! strictly increasing in both fields. A batch's time is its `maxTimestamp`
//! (the producer's, or the log's append time for a `LogAppend` log). The
//! time index holds an entry for the first batch of the segment and for
//! each batch whose time is above every earlier one's (strictly increasing
//! times, non-decreasing offsets), so it can be sparse but is never out of
//! order, and its last entry is the segment's largest time. A seek by time
//! starts at the last entry before the time asked for and reads batch
//! headers from there, as Kafka's does.
//!
//! The file of the active segment grows with `fallocate` (real blocks, never
//! a sparse file: a mapped hole would SIGBUS on a full disk) in doubling
//! steps from one page, just ahead of the writer, up to the most entries the
//! segment can use; it is cut back to its entries when the segment is sealed
//! or the log closes. After a crash the file may be longer than its entries,
//! with a zeroed tail; recovery finds the real end, so zero entries are never
//! mistaken for data.
//!
//! # Concurrency
//!
//! One writer appends entries while readers search the published prefix. The
//! writer stores an entry's bytes and then publishes the new length with a
//! release store; readers load the length with acquire and touch only entries
//! below it. Entries are never rewritten once published, so readers and the
//! writer never touch the same bytes at the same time.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::error::{Result, StorageError};
use super::fs;
use super::vfs::{Mapping, Open, VFile, Vfs};

/// A fixed-width entry that knows its byte encoding.
pub(crate) trait Entry: Copy {
    const WIDTH: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
}

/// Where a batch starts: its first offset relative to the segment base, and
/// its byte position in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel: u32,
    pub pos: u32,
}

impl IndexEntry {
    pub const WIDTH: usize = 8;
}

impl Entry for IndexEntry {
    const WIDTH: usize = IndexEntry::WIDTH;

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.rel.to_be_bytes());
        out[4..8].copy_from_slice(&self.pos.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        IndexEntry {
            rel: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            pos: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// The first batch appended at `time` starts at relative offset `rel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub time: i64,
    pub rel: u32,
}

impl Entry for TimeEntry {
    const WIDTH: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.time.to_be_bytes());
        out[8..12].copy_from_slice(&self.rel.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        let mut time = [0u8; 8];
        time.copy_from_slice(&b[0..8]);
        TimeEntry {
            time: i64::from_be_bytes(time),
            rel: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Bytes a table file first gets, and grows by at least: one page.
const FIRST_STEP: u64 = 4096;

/// An append-only array of `E` in a memory-mapped file.
///
/// The mapping spans the most entries the table may ever hold (`max`), but
/// only the first `allocated` of them have disk blocks behind them
/// (`fallocate`): the file grows in doubling steps just ahead of the writer,
/// so a table's disk use follows its entries. No byte at or past the
/// allocated size is ever touched (that would be a SIGBUS past the end of
/// the file), because readers stay below `len` and the writer below
/// `allocated`, and `len <= allocated <= max` always.
pub(crate) struct Table<E: Entry> {
    path: PathBuf,
    file: Arc<dyn VFile>,
    /// `None` when the table can hold nothing: a zero-length mapping is not
    /// possible.
    map: Option<Box<dyn Mapping>>,
    /// Entries the mapping spans.
    max: u32,
    /// Entries with allocated disk behind them; only the writer changes it.
    allocated: AtomicU32,
    /// Entries published to readers.
    len: AtomicU32,
    _entry: PhantomData<E>,
}

impl<E: Entry> Table<E> {
    /// Creates a new, empty table file that may grow to `max` entries; its
    /// first page is allocated now, so that a full disk fails the creation
    /// rather than the first append.
    pub fn create(vfs: &dyn Vfs, path: &Path, max: u32) -> Result<Self> {
        let file = vfs
            .open(path, Open::CreateNew)
            .map_err(|e| StorageError::io("create", path, e))?;
        let table = Self::writable(path, file, max, 0)?;
        if max > 0 {
            table.grow().map_err(|e| e.into_storage(path))?;
        }
        Ok(table)
    }

    /// Opens an existing table for appending, growable to `max` entries
    /// (or the entries the file already has room for, if more). All whole
    /// entries in the file count as published until [`Table::truncate`]
    /// says otherwise.
    pub fn open_writable(vfs: &dyn Vfs, path: &Path, max: u32) -> Result<Self> {
        let file = vfs
            .open(path, Open::ReadWrite)
            .map_err(|e| StorageError::io("open", path, e))?;
        let entries = whole_entries::<E>(&*file, path)?;
        Self::writable(path, file, max.max(entries), entries)
    }

    fn writable(path: &Path, file: Arc<dyn VFile>, max: u32, len: u32) -> Result<Self> {
        let allocated = whole_entries::<E>(&*file, path)?;
        let bytes = u64::from(max) * E::WIDTH as u64;
        let map = if bytes == 0 {
            None
        } else {
            Some(
                file.map(bytes as usize, true)
                    .map_err(|e| StorageError::io("mmap", path, e))?,
            )
        };
        Ok(Table {
            path: path.to_owned(),
            file,
            map,
            max,
            allocated: AtomicU32::new(allocated),
            len: AtomicU32::new(len),
            _entry: PhantomData,
        })
    }

    /// Opens the table of a sealed segment read-only; every whole entry in the
    /// file is published.
    pub fn open_sealed(vfs: &dyn Vfs, path: &Path) -> Result<Self> {
        let file = vfs
            .open(path, Open::ReadOnly)
            .map_err(|e| StorageError::io("open", path, e))?;
        let entries = whole_entries::<E>(&*file, path)?;
        let bytes = entries as usize * E::WIDTH;
        let map = if bytes == 0 {
            None
        } else {
            Some(
                file.map(bytes, false)
                    .map_err(|e| StorageError::io("mmap", path, e))?,
            )
        };
        Ok(Table {
            path: path.to_owned(),
            file,
            map,
            max: entries,
            allocated: AtomicU32::new(entries),
            len: AtomicU32::new(entries),
            _entry: PhantomData,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `to` (before the table is shared).
    pub fn rename(&mut self, vfs: &dyn Vfs, to: PathBuf) -> Result<()> {
        vfs.rename(&self.path, &to)
            .map_err(|e| StorageError::io("rename", &self.path, e))?;
        self.path = to;
        Ok(())
    }

    /// Published entries.
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    /// Bytes of disk the file holds (allocated, not only published).
    pub fn disk_bytes(&self) -> u64 {
        u64::from(self.allocated.load(Ordering::Acquire)) * E::WIDTH as u64
    }

    /// Makes sure there is allocated room for one more entry, growing the
    /// file if needed; false if the table is at its maximum or the disk
    /// cannot give more (the log then rolls, and a full disk fails the
    /// append cleanly). Only the table's writer may call it.
    pub fn make_room(&self) -> bool {
        if self.len.load(Ordering::Relaxed) < self.allocated.load(Ordering::Relaxed) {
            return true;
        }
        match self.grow() {
            Ok(()) => true,
            Err(Grow::AtMax) => false,
            Err(Grow::Failed(e)) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot grow index file");
                false
            }
        }
    }

    /// Doubles the allocated entries (at least one page's worth), up to `max`.
    fn grow(&self) -> std::result::Result<(), Grow> {
        let allocated = self.allocated.load(Ordering::Relaxed);
        if allocated >= self.max {
            return Err(Grow::AtMax);
        }
        let bytes = (u64::from(allocated) * E::WIDTH as u64 * 2)
            .max(FIRST_STEP)
            .min(u64::from(self.max) * E::WIDTH as u64);
        self.file.allocate(bytes).map_err(Grow::Failed)?;
        self.allocated
            .store((bytes / E::WIDTH as u64) as u32, Ordering::Release);
        Ok(())
    }

    /// Entry `i`, if published.
    pub fn get(&self, i: u32) -> Option<E> {
        if i >= self.len() {
            return None;
        }
        let map = self.map.as_ref()?;
        let mut buf = [0u8; 16];
        let width = E::WIDTH;
        // SAFETY: i < len <= allocated <= max, so the bytes lie inside the
        // mapping and the file, and
        // published entries are never written again (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(
                map.ptr().add(i as usize * width),
                buf.as_mut_ptr(),
                width,
            );
        }
        Some(E::decode(&buf[..width]))
    }

    pub fn last(&self) -> Option<E> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// Number of leading entries (among the first `n`) for which `pred` holds;
    /// `pred` must be true for a prefix and false after it.
    pub fn partition_point(&self, n: u32, mut pred: impl FnMut(&E) -> bool) -> u32 {
        let (mut lo, mut hi) = (0u32, n.min(self.len()));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if pred(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// Appends one entry and publishes it. Returns false when the table is full.
    ///
    /// # Safety
    /// At most one thread may call `push` on a table at a time (the log's
    /// append lock guarantees it).
    pub unsafe fn push(&self, entry: E) -> bool {
        if !self.make_room() {
            return false;
        }
        let len = self.len.load(Ordering::Relaxed);
        let Some(map) = self.map.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 16];
        entry.encode(&mut buf[..E::WIDTH]);
        // SAFETY: slot `len` is inside the mapping and the allocated file
        // (len < allocated <= max, by `make_room`), writable (tables that
        // can grow come from `writable`), and not yet published, so no
        // reader looks at it; the caller guarantees a single writer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                map.ptr().add(len as usize * E::WIDTH),
                E::WIDTH,
            );
        }
        self.len.store(len + 1, Ordering::Release);
        true
    }

    /// Forgets every entry from `n` on. Takes `&mut self`: only recovery,
    /// before the table is shared, may shrink it.
    pub fn truncate(&mut self, n: u32) -> Result<()> {
        let len = self.len.get_mut();
        *len = (*len).min(n);
        let n = *len;
        // Cut the file too, so that no stale entry survives past the kept
        // ones: a later crash that loses new entries must expose zeros, never
        // old entries that look in order. It grows again as entries come;
        // make the cut durable before any new entry is written.
        let bytes = u64::from(n) * E::WIDTH as u64;
        self.file
            .set_len(bytes)
            .map_err(|e| StorageError::io("truncate", &self.path, e))?;
        *self.allocated.get_mut() = n;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &self.path, e))
    }

    /// Cuts the file to its published entries and syncs it. The mapping stays
    /// valid for readers: they never touch bytes past the published length.
    pub fn seal(&self) -> Result<()> {
        let len = self.len();
        let bytes = u64::from(len) * E::WIDTH as u64;
        self.file
            .set_len(bytes)
            .map_err(|e| StorageError::io("truncate", &self.path, e))?;
        // No entry is written after a seal: the table is as full as it gets.
        self.allocated.store(len, Ordering::Release);
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &self.path, e))
    }
}

/// Why a table could not grow.
enum Grow {
    AtMax,
    Failed(std::io::Error),
}

impl Grow {
    fn into_storage(self, path: &Path) -> StorageError {
        match self {
            Grow::AtMax => StorageError::BadLayout {
                path: path.to_owned(),
                reason: "index cannot hold a single entry".into(),
            },
            Grow::Failed(e) => fs::classify_write_error("fallocate", path, e),
        }
    }
}

/// Whole entries the file has room for.
fn whole_entries<E: Entry>(file: &dyn VFile, path: &Path) -> Result<u32> {
    let size = file.size().map_err(|e| StorageError::io("stat", path, e))?;
    Ok((size / E::WIDTH as u64).min(u64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::super::vfs::OsVfs;
    use super::*;

    fn entry(rel: u32, pos: u32) -> IndexEntry {
        IndexEntry { rel, pos }
    }

    #[test]
    fn write_read_and_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.index");
        let table = Table::<IndexEntry>::create(&OsVfs, &path, 4).unwrap();
        assert_eq!(table.len(), 0);
        assert_eq!(table.get(0), None, "an empty table reads nothing");
        assert_eq!(table.last(), None);
        let entries = [entry(0, 0), entry(1, 10), entry(5, 30), entry(9, 70)];
        for e in entries {
            // SAFETY: single-threaded test: the only writer.
            assert!(unsafe { table.push(e) });
        }
        assert!(!table.make_room(), "four entries is the most it may hold");
        assert!(
            // SAFETY: single-threaded test: the only writer.
            !unsafe { table.push(entry(10, 80)) },
            "a full table refuses entries"
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(table.get(i as u32), Some(*e));
        }
        assert_eq!(table.get(4), None, "reading past the end gives nothing");
        // The last entry at or below each relative offset.
        let find = |rel| table.partition_point(table.len(), |e| e.rel <= rel);
        assert_eq!(find(0), 1);
        assert_eq!(find(4), 2);
        assert_eq!(find(5), 3);
        assert_eq!(find(100), 4);
    }

    #[test]
    fn file_grows_in_doubling_steps_then_is_trimmed_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.index");
        let size = || std::fs::metadata(&path).unwrap().len();
        let table = Table::<IndexEntry>::create(&OsVfs, &path, 2000).unwrap();
        assert_eq!(size(), 4096, "one page to start with, not the maximum");
        assert_eq!(table.disk_bytes(), 4096);
        for i in 0..513 {
            // SAFETY: single-threaded test: the only writer.
            assert!(unsafe { table.push(entry(i, i * 10)) });
        }
        assert_eq!(size(), 8192, "doubled when the first page filled");
        for i in 513..2000 {
            // SAFETY: single-threaded test: the only writer.
            assert!(unsafe { table.push(entry(i, i * 10)) });
        }
        assert_eq!(size(), 16_000, "never past the maximum");
        // SAFETY: single-threaded test: the only writer.
        assert!(!unsafe { table.push(entry(2000, 20_000)) });
        table.seal().unwrap();
        assert_eq!(size(), 16_000);
        drop(table);

        let table = Table::<IndexEntry>::create(&OsVfs, &dir.path().join("u"), 1000).unwrap();
        // SAFETY: single-threaded test: the only writer.
        unsafe {
            table.push(entry(0, 0));
            table.push(entry(3, 100));
        }
        let path = dir.path().join("u");
        table.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        assert_eq!(table.disk_bytes(), 16);
        // Still readable through the old mapping after the trim.
        assert_eq!(table.get(1), Some(entry(3, 100)));
        drop(table);

        let sealed = Table::<IndexEntry>::open_sealed(&OsVfs, &path).unwrap();
        assert_eq!(sealed.len(), 2);
        assert!(!sealed.make_room(), "a sealed table takes no entries");
        assert_eq!(sealed.last(), Some(entry(3, 100)));
        drop(sealed);

        let mut reopened = Table::<IndexEntry>::open_writable(&OsVfs, &path, 1000).unwrap();
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            16,
            "grows on demand"
        );
        // SAFETY: single-threaded test: the only writer.
        assert!(unsafe { reopened.push(entry(4, 200)) });
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        assert_eq!(reopened.get(2), Some(entry(4, 200)));
        reopened.truncate(1).unwrap();
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened.get(1), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8);
        // SAFETY: single-threaded test: the only writer.
        assert!(unsafe { reopened.push(entry(9, 300)) });
        assert_eq!(reopened.get(1), Some(entry(9, 300)));
    }

    #[test]
    fn time_entries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.timeindex");
        let table = Table::<TimeEntry>::create(&OsVfs, &path, 2).unwrap();
        let e = TimeEntry {
            time: -5,
            rel: u32::MAX,
        };
        // SAFETY: single-threaded test: the only writer.
        assert!(unsafe { table.push(e) });
        assert_eq!(table.get(0), Some(e));
        let mut raw = [0u8; 12];
        e.encode(&mut raw);
        assert_eq!(
            raw,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn readers_see_only_published_entries_while_a_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let table = std::sync::Arc::new(
            Table::<IndexEntry>::create(&OsVfs, &dir.path().join("t"), 20_000).unwrap(),
        );
        let reader = {
            let table = std::sync::Arc::clone(&table);
            std::thread::spawn(move || {
                let mut seen = 0;
                while seen < 20_000 {
                    let n = table.len();
                    for i in seen..n {
                        assert_eq!(table.get(i), Some(entry(i, i * 2)));
                    }
                    seen = n;
                }
            })
        };
        for i in 0..20_000 {
            // SAFETY: this thread is the only writer; the other only reads.
            assert!(unsafe { table.push(entry(i, i * 2)) });
        }
        reader.join().unwrap();
    }
}
