//! A segment: one store, its index and its time index, covering the offsets
//! `[base_offset, next_offset)`. Files are named by the base offset,
//! zero-padded to 20 digits: `00000000000000004096.store`, `.index`,
//! `.timeindex`.
//!
//! Readers share a [`Segment`]; the one writer of the active segment holds its
//! [`SegmentWriter`]. A batch becomes visible when the writer publishes the new
//! index length and store end together in one atomic word, after the bytes
//! have reached the kernel and the index entry is written.
//!
//! # Recovery
//!
//! A sealed segment (every segment but the last) is synced before anything
//! after it counts as durable (its seal may be deferred past the roll, see
//! `log`), so it is trusted when its files agree: the index is
//! whole-entry sized, starts at (0, 0), its last entry is in order and points
//! at a batch header with the right offset that ends exactly at the end of the
//! store, and that batch ends at the next segment's base offset. Checking this
//! reads one 61-byte header, never the segment's data. A sealed segment whose
//! files disagree gets its index rebuilt from a scan of its store.
//!
//! The last segment may have been cut anywhere. Its index is trusted up to the
//! last entry that is in order and points at a batch whose CRC checks; the
//! store is scanned from there. A batch that fails its checks is either damage
//! (a valid batch follows it somewhere later: the range is kept, indexed and
//! fenced, so reads of it return [`StorageError::Corrupt`]) or a torn tail
//! (nothing valid follows: the bytes are moved to a `.torn` sidecar file and
//! cut off).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::cache::{TailCache, BLOCK};
use super::config::{Index, IoMode, LogConfig};
use super::error::{Result, StorageError};
use super::fs::{self, INDEX_EXT, STORE_EXT, TIME_INDEX_EXT, TORN_EXT};
use super::index::{IndexEntry, Table, TimeEntry};
use super::log::Wait;
use super::scan::scan_store;
use super::store::{Store, StoreWriter};
use super::vfs::{Open, Vfs};
use crate::batch::{self, BatchHeader, HEADER_LEN};

/// Packs the published index length and store end into one word, so a reader
/// never sees an entry without the bytes it points to, or the reverse.
fn pack(entries: u32, end: u32) -> u64 {
    (u64::from(entries) << 32) | u64::from(end)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// The stored bytes of whole batches, read from one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentRead {
    pub bytes: Bytes,
    /// Offset of the first record of the first batch.
    pub first_offset: u64,
    /// Offset after the last record of the last batch.
    pub next_offset: u64,
}

/// One segment, as readers see it.
pub(crate) struct Segment {
    vfs: Arc<dyn Vfs>,
    base: u64,
    store: Store,
    index: Table<IndexEntry>,
    times: Table<TimeEntry>,
    /// `pack(index entries, store end)` of the published batches.
    published: AtomicU64,
    next_offset: AtomicU64,
    /// Serialises fsyncs of the store. Holds the reason of a failed fsync: an
    /// fsync that failed is never retried as if the data were safe, because
    /// the kernel may have dropped the dirty pages it could not write.
    sync_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (entries, end) = unpack(self.published.load(Ordering::Relaxed));
        f.debug_struct("Segment")
            .field("base", &self.base)
            .field("next_offset", &self.next_offset())
            .field("entries", &entries)
            .field("end", &end)
            .finish()
    }
}

/// What recovery did to a segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut off a torn tail (moved to the sidecar file).
    pub truncated_bytes: u64,
    /// The sidecar holding the cut bytes.
    pub sidecar: Option<PathBuf>,
    /// Damaged ranges `(store position, length)` kept and fenced.
    pub damaged: Vec<(u64, u64)>,
    /// Whether the index or time index was rebuilt or extended from the store.
    pub index_rebuilt: bool,
}

impl Segment {
    pub fn base_offset(&self) -> u64 {
        self.base
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Published bytes of the store.
    pub fn size(&self) -> u64 {
        u64::from(unpack(self.published.load(Ordering::Acquire)).1)
    }

    /// Bytes of disk the segment takes: its store's published bytes and its
    /// index files' allocated ones.
    pub fn disk_bytes(&self) -> u64 {
        self.size() + self.index.disk_bytes() + self.times.disk_bytes()
    }

    /// The time of the newest batch (the largest in the segment), if any.
    pub fn last_time(&self) -> Option<i64> {
        self.times.last().map(|e| e.time)
    }

    /// The time of the oldest batch, if any.
    pub fn first_time(&self) -> Option<i64> {
        self.times.get(0).map(|e| e.time)
    }

    /// Creates the files of a new, empty segment.
    pub fn create(vfs: &Arc<dyn Vfs>, dir: &Path, base: u64, sizes: Index) -> Result<Segment> {
        let store = Store::open(&**vfs, &fs::segment_path(dir, base, STORE_EXT), true)?;
        let made = (|| {
            let index = Table::create(
                &**vfs,
                &fs::segment_path(dir, base, INDEX_EXT),
                sizes.entries,
            )?;
            let times = Table::create(
                &**vfs,
                &fs::segment_path(dir, base, TIME_INDEX_EXT),
                sizes.times,
            )?;
            Ok((index, times))
        })();
        let (index, times) = match made {
            Ok(tables) => tables,
            Err(e) => {
                // Leave no half-made segment behind (a full disk, typically).
                for ext in [STORE_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                    let _ = fs::remove_file(&**vfs, &fs::segment_path(dir, base, ext));
                }
                return Err(e);
            }
        };
        Ok(Segment::assemble(
            vfs, base, store, index, times, 0, 0, base,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        vfs: &Arc<dyn Vfs>,
        base: u64,
        store: Store,
        index: Table<IndexEntry>,
        times: Table<TimeEntry>,
        entries: u32,
        end: u32,
        next_offset: u64,
    ) -> Segment {
        Segment {
            vfs: Arc::clone(vfs),
            base,
            store,
            index,
            times,
            published: AtomicU64::new(pack(entries, end)),
            next_offset: AtomicU64::new(next_offset),
            sync_failure: Mutex::new(None),
        }
    }

    /// Opens a sealed segment whose successor starts at `next_base`.
    pub fn open_sealed(
        vfs: &Arc<dyn Vfs>,
        dir: &Path,
        base: u64,
        next_base: u64,
    ) -> Result<(Segment, RecoveryReport)> {
        let store_path = fs::segment_path(dir, base, STORE_EXT);
        let store = Store::open(&**vfs, &store_path, false)?;
        let size = store.file_len()?;
        if size > u64::from(u32::MAX) {
            return Err(bad_layout(&store_path, "store is larger than 4 GiB"));
        }
        let index_path = fs::segment_path(dir, base, INDEX_EXT);
        let time_path = fs::segment_path(dir, base, TIME_INDEX_EXT);
        let index = open_sealed_table::<IndexEntry>(&**vfs, &index_path)?;
        let times = open_sealed_table::<TimeEntry>(&**vfs, &time_path)?;
        let index_ok = index
            .as_ref()
            .is_some_and(|i| sealed_index_ok(i, &store, base, size, next_base));
        let times_ok = index_ok
            && times
                .as_ref()
                .is_some_and(|t| sealed_times_ok(t, index.as_ref().expect("checked")));
        if index_ok && times_ok {
            let index = index.expect("checked");
            let entries = index.len();
            let segment = Segment::assemble(
                vfs,
                base,
                store,
                index,
                times.expect("checked"),
                entries,
                size as u32,
                next_base,
            );
            return Ok((segment, RecoveryReport::default()));
        }
        // The old index, damaged as it may be, still names batch starts: hints
        // for resynchronising after damage.
        let hints = index
            .as_ref()
            .map_or_else(Vec::new, |i| positions(i, 0, i.len()));
        drop((index, times));
        tracing::warn!(segment = %store_path.display(), "sealed segment's index disagrees with its store; rebuilding it");
        let scan = scan_store(&store, base, 0, base, Some(next_base), &hints)?;
        // A crash between a direct writer's roll and the seal that cuts its
        // last block's padding leaves the padding: cut it now.
        let mut size = size;
        if let Some(tail) = scan.tail.filter(|&t| is_padding(&store, t, size)) {
            store.truncate(tail)?;
            store.sync()?;
            size = tail;
        }
        let (index, times) = rebuild_tables(&**vfs, &index_path, &time_path, &scan.batches)?;
        index.seal()?;
        times.seal()?;
        let report = RecoveryReport {
            damaged: scan.damaged.clone(),
            index_rebuilt: true,
            ..RecoveryReport::default()
        };
        let entries = index.len();
        Ok((
            Segment::assemble(
                vfs,
                base,
                store,
                index,
                times,
                entries,
                size as u32,
                next_base,
            ),
            report,
        ))
    }

    /// Opens the last segment of a log for appending, recovering it from
    /// whatever a crash left.
    pub fn open_active(
        vfs: &Arc<dyn Vfs>,
        dir: &Path,
        base: u64,
        config: &LogConfig,
    ) -> Result<(Segment, RecoveryReport)> {
        let store_path = fs::segment_path(dir, base, STORE_EXT);
        let store = Store::open(&**vfs, &store_path, false)?;
        let size = store.file_len()?;
        if size > u64::from(u32::MAX) {
            return Err(bad_layout(&store_path, "store is larger than 4 GiB"));
        }
        let index_path = fs::segment_path(dir, base, INDEX_EXT);
        let time_path = fs::segment_path(dir, base, TIME_INDEX_EXT);
        // Sized for what the store holds: recovery indexes all of it, and a
        // segment that rolled by age under an older setting may span longer
        // than the current one allows.
        let entries = config.index_entries(size).entries;
        let mut index = open_or_create_table::<IndexEntry>(&**vfs, &index_path, entries)?;
        let mut times = open_or_create_table::<TimeEntry>(&**vfs, &time_path, entries)?;
        let mut report = RecoveryReport::default();

        // The index is trusted up to its last in-order entry that points at a
        // good batch; from there on the store is scanned.
        let ordered = ordered_prefix(&index, size);
        let mut start: Option<(u32, BatchHeader)> = None;
        for k in (0..ordered).rev() {
            let e = index.get(k).expect("below len");
            if let Some(h) = good_batch_at(&store, base, e, size)? {
                start = Some((k, h));
                break;
            }
        }
        let (kept, scan_from, expected) = match start {
            Some((k, h)) => (
                k + 1,
                u64::from(index.get(k).expect("below len").pos) + h.size() as u64,
                h.next_offset() as u64,
            ),
            None => (0, 0, base),
        };
        // Entries past the ordered prefix are the zero tail of a pre-sized
        // file: dropping them is routine, not a repair.
        if kept < ordered {
            report.index_rebuilt = true;
        }
        let hints = positions(&index, kept, ordered);
        index.truncate(kept)?;
        let last_rel = index.last().map(|e| e.rel);
        let mut time_kept = ordered_time_prefix(&times, last_rel);
        // In order is not enough (a zeroed file starts with a plausible
        // entry): the first and last kept entries must match their batches.
        let matches = |k: u32| match times.get(k) {
            Some(t) => time_entry_matches(&store, &index, t),
            None => Ok(false),
        };
        if time_kept > 0 && !(matches(0)? && matches(time_kept - 1)?) {
            time_kept = 0;
            report.index_rebuilt = true;
        }
        times.truncate(time_kept)?;
        // Batches indexed after the last time entry (the time index lost its
        // tail, or the whole file) get their entries back from their headers.
        let first_missing = times
            .last()
            .map_or(0, |t| index.partition_point(kept, |e| e.rel <= t.rel));
        for k in first_missing..kept {
            let e = index.get(k).expect("below len");
            // A damaged header is skipped: the read of that batch reports it.
            let Ok(header) = BatchHeader::parse(&store.read_at(u64::from(e.pos), HEADER_LEN)?)
            else {
                continue;
            };
            if push_time(&times, header.max_timestamp, e.rel) {
                report.index_rebuilt = true;
            }
        }

        let scan = scan_store(&store, base, scan_from, expected, None, &hints)?;
        if !scan.batches.is_empty() {
            report.index_rebuilt = true;
        }
        report.damaged = scan.damaged.clone();
        for &(entry, time) in &scan.batches {
            // SAFETY: the table is not shared yet; this thread is its only user.
            let pushed = unsafe { index.push(entry) };
            if !pushed {
                return Err(bad_layout(
                    &index_path,
                    "index is too small for the batches in its store",
                ));
            }
            if let Some(time) = time {
                push_time(&times, time, entry.rel);
            }
        }
        let mut end = scan.good_end;
        if let Some(tail) = scan.tail {
            if is_padding(&store, tail, size) {
                // The zero padding of a direct write's last block: not data.
                store.truncate(tail)?;
            } else {
                let cut = size - tail;
                let sidecar = move_to_sidecar(&**vfs, dir, &store, base, tail, size)?;
                tracing::warn!(
                    segment = %store_path.display(),
                    bytes = cut,
                    sidecar = %sidecar.display(),
                    "cut a torn tail off the active segment"
                );
                report.truncated_bytes = cut;
                report.sidecar = Some(sidecar);
            }
            end = tail;
        }
        let entries = index.len();
        let next = scan.next_offset;
        Ok((
            Segment::assemble(vfs, base, store, index, times, entries, end as u32, next),
            report,
        ))
    }

    /// The writer of this (active) segment. Only one may exist.
    pub fn writer(
        self: &Arc<Self>,
        io: IoMode,
        cache: Option<&TailCache>,
    ) -> Result<SegmentWriter> {
        let (entries, end) = unpack(self.published.load(Ordering::Acquire));
        Ok(SegmentWriter {
            segment: Arc::clone(self),
            store: self.store.writer(&*self.vfs, u64::from(end), io, cache)?,
            entries,
            last_time: self.times.last(),
        })
    }

    /// Makes the store durable (fdatasync), one fsync at a time. After a
    /// failure every later call fails too.
    pub fn sync(&self) -> Result<()> {
        let mut failure = self.sync_failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = failure.as_ref() {
            return Err(StorageError::Fenced {
                reason: reason.clone(),
            });
        }
        if let Err(e) = self.store.sync() {
            *failure = Some(e.to_string());
            return Err(StorageError::Fenced {
                reason: e.to_string(),
            });
        }
        Ok(())
    }

    /// The store position where the batch holding `offset` starts, or the
    /// published end for an offset at or past the segment's end.
    pub fn position_of(&self, offset: u64) -> u64 {
        let next = self.next_offset();
        let (entries, end) = unpack(self.published.load(Ordering::Acquire));
        if offset >= next {
            return u64::from(end);
        }
        self.locate(offset, entries)
            .map_or(0, |(_, e)| u64::from(e.pos.min(end)))
    }

    /// The index entry of the batch holding `offset`, with its position in
    /// the index, among the first `entries` entries.
    fn locate(&self, offset: u64, entries: u32) -> Option<(u32, IndexEntry)> {
        let rel = offset.checked_sub(self.base)?;
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let k = self
            .index
            .partition_point(entries, |e| e.rel <= rel)
            .checked_sub(1)?;
        Some((k, self.index.get(k)?))
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` but always at least one batch. Each batch's header and CRC
    /// are checked; a bad first batch is an error, a bad later one ends the
    /// read before it.
    ///
    /// Without `at_least_one`, a first batch larger than `max_bytes` is not
    /// read either, and the result may hold no batch. Batches that start at
    /// or after `until` are left out.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        at_least_one: bool,
        until: u64,
        wait: Wait,
    ) -> Result<Option<SegmentRead>> {
        let (entries, end) = unpack(self.published.load(Ordering::Acquire));
        let Some((k, first)) = self.locate(offset, entries) else {
            return Ok(None);
        };
        // Extend over following batches while they fit in max_bytes.
        let mut spans = Vec::new();
        let mut j = k;
        let mut total = 0u64;
        loop {
            let entry = if j == k {
                first
            } else {
                self.index.get(j).expect("below entries")
            };
            let stop = if j + 1 < entries {
                self.index.get(j + 1).expect("below entries").pos
            } else {
                end
            };
            // A stop outside [pos, end] means a damaged index: a zero length,
            // which fails the checks below.
            let len = if stop < entry.pos || stop > end {
                0
            } else {
                u64::from(stop - entry.pos)
            };
            if j > k && self.base + u64::from(entry.rel) >= until {
                break;
            }
            if (j > k || !at_least_one) && total + len > max_bytes {
                break;
            }
            spans.push((entry, len));
            total += len;
            j += 1;
            if j >= entries || total >= max_bytes {
                break;
            }
        }
        if spans.is_empty() {
            return Ok(None);
        }
        // Where the next readable batch starts, for a corruption report.
        let resume_at = self
            .index
            .get(k + 1)
            .filter(|_| k + 1 < entries)
            .map(|e| self.base + u64::from(e.rel))
            .or(Some(self.next_offset()));
        let corrupt = |reason: String| StorageError::Corrupt {
            segment: self.base,
            position: u64::from(first.pos),
            reason,
            resume_at,
        };
        // The first batch's extent comes from the index alone, unbounded by
        // max_bytes: check it against the batch's own header before reading
        // it whole, so that a damaged index never makes a read (and an
        // allocation) larger than the batch.
        let first_len = spans[0].1;
        if u64::from(first.pos) + HEADER_LEN as u64 > u64::from(end)
            || first_len < HEADER_LEN as u64
        {
            return Err(corrupt(format!(
                "index entry points at position {} of {end} published bytes",
                first.pos
            )));
        }
        let header = BatchHeader::parse(&self.store.read_with(
            u64::from(first.pos),
            HEADER_LEN,
            wait,
        )?)
        .map_err(|e| corrupt(e.to_string()))?;
        if header.size() as u64 != first_len {
            return Err(corrupt(format!(
                "batch of {} bytes does not fill its {first_len}-byte slot in the index",
                header.size()
            )));
        }
        let bytes = Bytes::from(self.store.read_with(
            u64::from(first.pos),
            total as usize,
            wait,
        )?);
        // Check each batch; serve the good prefix.
        let mut at = 0usize;
        let mut next_offset = self.base + u64::from(first.rel);
        for (i, (entry, len)) in spans.iter().enumerate() {
            let chunk = &bytes[at..at + *len as usize];
            // The offset and length the index gives cover what Kafka's
            // CRC leaves out.
            let claimed = self.base + u64::from(entry.rel);
            match batch::check_stored(chunk, claimed as i64, chunk.len()) {
                Ok(h) => {
                    next_offset = h.next_offset() as u64;
                    at += *len as usize;
                }
                // Serve the good prefix; the next read reports the damage.
                Err(_) if i > 0 => break,
                Err(e) => return Err(corrupt(e.to_string())),
            }
        }
        Ok(Some(SegmentRead {
            bytes: bytes.slice(..at),
            first_offset: self.base + u64::from(first.rel),
            next_offset,
        }))
    }

    /// The base offset of the first batch whose time is `time` or later.
    pub fn offset_for_time(&self, time: i64) -> Result<Option<u64>> {
        let (entries, end) = unpack(self.published.load(Ordering::Acquire));
        let tlen = self.times.len();
        // The time index may be sparse after recovery: start at the last
        // entry before `time` and check batch headers from there.
        let t = self.times.partition_point(tlen, |e| e.time < time);
        let start_rel = match t.checked_sub(1).and_then(|i| self.times.get(i)) {
            Some(e) => e.rel,
            None => 0,
        };
        let Some((mut k, _)) = self.locate(self.base + u64::from(start_rel), entries) else {
            return Ok(None);
        };
        while k < entries {
            let e = self.index.get(k).expect("below entries");
            if u64::from(e.pos) + HEADER_LEN as u64 > u64::from(end) {
                break;
            }
            let header = BatchHeader::parse(&self.store.read_at(u64::from(e.pos), HEADER_LEN)?);
            if let Ok(h) = header {
                if h.max_timestamp >= time {
                    return Ok(Some(self.base + u64::from(e.rel)));
                }
            }
            k += 1;
        }
        Ok(None)
    }

    /// Raw published bytes `[pos, pos + len)` of the store, clamped to the end.
    pub fn read_raw(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        let end = self.size();
        let len = (end.saturating_sub(pos)).min(len as u64) as usize;
        self.store.read_at(pos, len)
    }

    /// Unlinks the segment's files. Readers holding it keep reading: an open
    /// file and its mappings outlive the directory entry. The indexes go
    /// first: a crash or a failure before the store goes loses nothing
    /// (recovery rebuilds missing indexes); once the store is gone, so are
    /// the records.
    pub fn remove_files(&self) -> Result<()> {
        fs::remove_file(&*self.vfs, self.times.path())?;
        fs::remove_file(&*self.vfs, self.index.path())?;
        fs::remove_file(&*self.vfs, self.store.path())
    }
}

/// The append side of the active segment.
pub(crate) struct SegmentWriter {
    segment: std::sync::Arc<Segment>,
    store: StoreWriter,
    /// Index entries written (all published once `publish` returns).
    entries: u32,
    last_time: Option<TimeEntry>,
}

impl SegmentWriter {
    pub fn segment(&self) -> &std::sync::Arc<Segment> {
        &self.segment
    }

    /// Bytes the store holds, buffered ones included.
    pub fn end(&self) -> u64 {
        self.store.end()
    }

    /// Whether the index or the time index has no room for another batch
    /// (at its maximum, or the disk cannot grow it): the log rolls first.
    pub fn index_full(&self) -> bool {
        !(self.segment.index.make_room() && self.segment.times.make_room())
    }

    /// Buffers one batch (offsets already assigned); returns its position.
    pub fn write(&mut self, batch: &[u8]) -> Result<u64> {
        self.store.write(batch)
    }

    /// Hands buffered batches to the kernel.
    pub fn flush(&mut self) -> Result<()> {
        self.store.flush()
    }

    /// Indexes and publishes flushed batches: `(first offset, position,
    /// batch time, next offset)` each. Fails, publishing nothing more, if
    /// the index has no room (the log rolls before that, so this is a bug
    /// guard: the caller fences the log).
    pub fn publish(&mut self, batches: &[(u64, u64, i64, u64)]) -> Result<()> {
        let Some(&(_, _, _, next)) = batches.last() else {
            return Ok(());
        };
        for &(offset, pos, time, _) in batches {
            let rel = (offset - self.segment.base) as u32;
            // SAFETY: the log's append lock makes this the only writer.
            let pushed = unsafe {
                self.segment.index.push(IndexEntry {
                    rel,
                    pos: pos as u32,
                })
            };
            if !pushed {
                return Err(StorageError::BadLayout {
                    path: self.segment.index.path().to_owned(),
                    reason: "index full before the segment rolled".into(),
                });
            }
            self.entries += 1;
            if self.last_time.is_none_or(|t| time > t.time) {
                let entry = TimeEntry { time, rel };
                if push_time(&self.segment.times, entry.time, rel) {
                    self.last_time = Some(entry);
                }
            }
        }
        let end = self.store.end() as u32;
        self.segment
            .published
            .store(pack(self.entries, end), Ordering::Release);
        self.segment.next_offset.store(next, Ordering::Release);
        Ok(())
    }

    /// Makes the segment immutable on disk: flush, fsync, cut the index files
    /// to their entries.
    pub fn seal(&mut self) -> Result<()> {
        self.store.flush()?;
        self.segment.seal_files()
    }
}

/// The files of the next segment, made ahead of the roll that needs them
/// under placeholder names (`.spare-store`, `.spare-index`,
/// `.spare-timeindex`), so that the roll only renames them.
pub(crate) struct Spare {
    store: Store,
    index: Table<IndexEntry>,
    times: Table<TimeEntry>,
}

/// `dir/.spare-<ext>`: never a segment name (nor a name with a segment's
/// extension), so never taken for one.
fn spare_path(dir: &Path, ext: &str) -> PathBuf {
    dir.join(format!(".spare-{ext}"))
}

impl Spare {
    /// Creates the files, replacing any an earlier run left.
    pub fn create(vfs: &dyn Vfs, dir: &Path, sizes: Index) -> Result<Spare> {
        for ext in [STORE_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            fs::remove_file(vfs, &spare_path(dir, ext))?;
        }
        let made = (|| {
            let store = Store::open(vfs, &spare_path(dir, STORE_EXT), true)?;
            let index = Table::create(vfs, &spare_path(dir, INDEX_EXT), sizes.entries)?;
            let times = Table::create(vfs, &spare_path(dir, TIME_INDEX_EXT), sizes.times)?;
            Ok(Spare {
                store,
                index,
                times,
            })
        })();
        if made.is_err() {
            Spare::remove_files(vfs, dir);
        }
        made
    }

    /// Removes whatever spare files are in `dir` (best effort).
    pub fn remove_files(vfs: &dyn Vfs, dir: &Path) {
        for ext in [STORE_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let _ = fs::remove_file(vfs, &spare_path(dir, ext));
        }
    }

    pub fn disk_bytes(&self) -> u64 {
        self.index.disk_bytes() + self.times.disk_bytes()
    }
}

impl Segment {
    /// Installs a spare as the new, empty segment at `base`: its files take
    /// their real names, the index files first and the store last, so that
    /// a crash midway leaves index files without a store (which opening
    /// removes). The directory is not synced here: the log syncs it before
    /// the first sync that covers anything in the segment.
    pub fn from_spare(vfs: &Arc<dyn Vfs>, dir: &Path, spare: Spare, base: u64) -> Result<Segment> {
        let Spare {
            mut store,
            mut index,
            mut times,
        } = spare;
        index.rename(&**vfs, fs::segment_path(dir, base, INDEX_EXT))?;
        times.rename(&**vfs, fs::segment_path(dir, base, TIME_INDEX_EXT))?;
        store.rename(&**vfs, fs::segment_path(dir, base, STORE_EXT))?;
        Ok(Segment::assemble(
            vfs, base, store, index, times, 0, 0, base,
        ))
    }

    /// Seals a segment whose writer has flushed for the last time: fdatasync
    /// of the store, then its index files cut to their entries and synced.
    /// Safe beside readers (they never look past the published entries).
    pub fn seal_files(&self) -> Result<()> {
        // A direct writer's last block is padded on disk: a sealed store
        // ends where its data does.
        let (_, end) = unpack(self.published.load(Ordering::Acquire));
        if self.store.file_len()? > u64::from(end) {
            self.store.truncate(u64::from(end))?;
        }
        self.sync()?;
        self.index.seal()?;
        self.times.seal()
    }
}

/// Whether the store's bytes `[from, size)` are the zero padding a direct
/// write leaves after the data: fewer than a block, all zero, and ending the
/// file at a block boundary, as every direct write does. Anything else
/// (zeros that end mid-block: a buffered batch cut after its first bytes,
/// say) is a torn tail and is kept in a sidecar.
fn is_padding(store: &Store, from: u64, size: u64) -> bool {
    size.is_multiple_of(BLOCK)
        && size - from < BLOCK
        && store
            .read_at(from, (size - from) as usize)
            .is_ok_and(|b| b.iter().all(|&x| x == 0))
}

/// Pushes a time entry if it is newer than the last one; true if pushed.
fn push_time(times: &Table<TimeEntry>, time: i64, rel: u32) -> bool {
    if times.last().is_some_and(|t| t.time >= time) {
        return false;
    }
    // SAFETY: called only by the segment's single writer (or by recovery
    // before the table is shared).
    unsafe { times.push(TimeEntry { time, rel }) }
}

fn bad_layout(path: &Path, reason: &str) -> StorageError {
    StorageError::BadLayout {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn open_sealed_table<E: super::index::Entry>(
    vfs: &dyn Vfs,
    path: &Path,
) -> Result<Option<Table<E>>> {
    match Table::open_sealed(vfs, path) {
        Ok(t) => Ok(Some(t)),
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn open_or_create_table<E: super::index::Entry>(
    vfs: &dyn Vfs,
    path: &Path,
    capacity: u32,
) -> Result<Table<E>> {
    if vfs.exists(path) {
        Table::open_writable(vfs, path, capacity)
    } else {
        Table::create(vfs, path, capacity)
    }
}

/// The cheap consistency check of a sealed segment (see the module docs).
fn sealed_index_ok(
    index: &Table<IndexEntry>,
    store: &Store,
    base: u64,
    size: u64,
    next_base: u64,
) -> bool {
    let n = index.len();
    if n == 0 {
        return size == 0 && next_base == base;
    }
    if index.get(0) != Some(IndexEntry { rel: 0, pos: 0 }) {
        return false;
    }
    let last = index.get(n - 1).expect("below len");
    if n >= 2 {
        let prev = index.get(n - 2).expect("below len");
        if prev.rel > last.rel || prev.pos >= last.pos {
            return false;
        }
    }
    if u64::from(last.pos) + HEADER_LEN as u64 > size {
        return false;
    }
    let Ok(bytes) = store.read_at(u64::from(last.pos), HEADER_LEN) else {
        return false;
    };
    let Ok(h) = BatchHeader::parse(&bytes) else {
        return false;
    };
    h.base_offset as u64 == base + u64::from(last.rel)
        && u64::from(last.pos) + h.size() as u64 == size
        && h.next_offset() as u64 == next_base
}

fn sealed_times_ok(times: &Table<TimeEntry>, index: &Table<IndexEntry>) -> bool {
    let n = times.len();
    let Some(last_rel) = index.last().map(|e| e.rel) else {
        return n == 0;
    };
    let Some(last) = times.last() else {
        return false;
    };
    if n >= 2 {
        let prev = times.get(n - 2).expect("below len");
        if prev.time >= last.time || prev.rel > last.rel {
            return false;
        }
    }
    times.get(0).is_some_and(|e| e.rel == 0) && last.rel <= last_rel
}

/// Number of leading index entries that are in order: the first is (0, 0),
/// both fields increase, and every position is inside the store (so the
/// zero tail of a pre-sized file, or an empty store, yields none).
fn ordered_prefix(index: &Table<IndexEntry>, size: u64) -> u32 {
    let n = index.len();
    let mut prev: Option<IndexEntry> = None;
    for k in 0..n {
        let e = index.get(k).expect("below len");
        let in_order = match prev {
            None => e == IndexEntry { rel: 0, pos: 0 },
            // Equal offsets are allowed: a damaged range that holds no
            // offsets shares its successor's.
            Some(p) => e.rel >= p.rel && e.pos > p.pos,
        };
        if !in_order || u64::from(e.pos) >= size {
            return k;
        }
        prev = Some(e);
    }
    n
}

/// Number of leading time entries that are in order and refer to offsets
/// not beyond `last_rel`.
fn ordered_time_prefix(times: &Table<TimeEntry>, last_rel: Option<u32>) -> u32 {
    let Some(last_rel) = last_rel else { return 0 };
    let n = times.len();
    let mut prev: Option<TimeEntry> = None;
    for k in 0..n {
        let e = times.get(k).expect("below len");
        let in_order = match prev {
            None => e.rel == 0,
            Some(p) => e.time > p.time && e.rel >= p.rel,
        };
        if !in_order || e.rel > last_rel {
            return k;
        }
        prev = Some(e);
    }
    n
}

/// Whether a time entry names a batch of the index appended at its time.
fn time_entry_matches(store: &Store, index: &Table<IndexEntry>, t: TimeEntry) -> Result<bool> {
    let k = index.partition_point(index.len(), |e| e.rel < t.rel);
    let Some(e) = index.get(k).filter(|e| e.rel == t.rel) else {
        return Ok(false);
    };
    // Kept index entries point at good batches, inside the store.
    let bytes = store.read_at(u64::from(e.pos), HEADER_LEN)?;
    Ok(BatchHeader::parse(&bytes).is_ok_and(|h| h.max_timestamp == t.time))
}

/// The header of the batch `entry` points at, if that batch is whole, its CRC
/// checks and its offset is the one the entry claims. A store that cannot be
/// read is an error, never taken for a bad batch.
fn good_batch_at(
    store: &Store,
    base: u64,
    entry: IndexEntry,
    size: u64,
) -> Result<Option<BatchHeader>> {
    let pos = u64::from(entry.pos);
    if pos + HEADER_LEN as u64 > size {
        return Ok(None);
    }
    let Ok(header) = BatchHeader::parse(&store.read_at(pos, HEADER_LEN)?) else {
        return Ok(None);
    };
    let expected = base + u64::from(entry.rel);
    if pos + header.size() as u64 > size || header.base_offset as u64 != expected {
        return Ok(None);
    }
    let bytes = store.read_at(pos, header.size())?;
    Ok(batch::check_stored(&bytes, expected as i64, bytes.len()).ok())
}

/// Sorted store positions named by index entries `[from, to)`.
fn positions(index: &Table<IndexEntry>, from: u32, to: u32) -> Vec<u32> {
    let mut out: Vec<u32> = (from..to)
        .filter_map(|k| index.get(k))
        .map(|e| e.pos)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Writes fresh index and time index files for a sealed segment.
fn rebuild_tables(
    vfs: &dyn Vfs,
    index_path: &Path,
    time_path: &Path,
    batches: &[(IndexEntry, Option<i64>)],
) -> Result<(Table<IndexEntry>, Table<TimeEntry>)> {
    fs::remove_file(vfs, index_path)?;
    fs::remove_file(vfs, time_path)?;
    let capacity = batches.len().max(1) as u32;
    let index = Table::create(vfs, index_path, capacity)?;
    let time_table = Table::create(vfs, time_path, capacity)?;
    for &(e, t) in batches {
        // SAFETY: the tables are not shared yet.
        unsafe { index.push(e) };
        if let Some(t) = t {
            push_time(&time_table, t, e.rel);
        }
    }
    Ok((index, time_table))
}

/// Copies store bytes `[from, size)` into a sidecar file, then cuts the store
/// to `from`. The copy is synced before the cut, so the bytes are never lost.
fn move_to_sidecar(
    vfs: &dyn Vfs,
    dir: &Path,
    store: &Store,
    base: u64,
    from: u64,
    size: u64,
) -> Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let path = dir.join(format!("{base:020}.{stamp}.{TORN_EXT}"));
    let file = vfs
        .open(&path, Open::CreateNew)
        .map_err(|e| StorageError::io("create", &path, e))?;
    // In chunks: a torn tail can be most of a segment.
    const CHUNK: u64 = 1 << 20;
    let mut at = from;
    while at < size {
        let len = CHUNK.min(size - at);
        let bytes = store.read_at(at, len as usize)?;
        file.write_at(at - from, &bytes)
            .map_err(|e| StorageError::io("write", &path, e))?;
        at += len;
    }
    file.sync_data()
        .map_err(|e| StorageError::io("fsync", &path, e))?;
    fs::sync_dir(vfs, dir)?;
    store.truncate(from)?;
    store.sync()?;
    Ok(path)
}
