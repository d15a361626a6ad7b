//! The log: a directory of segments, oldest first, the last one active.
//!
//! # Concurrency
//!
//! Appends are serialised by one mutex. Readers never take it: they load the
//! log's next offset (published last, with release ordering), take a snapshot
//! of the segment list (an `Arc` cloned under a read lock held for a moment)
//! and read with `pread` below the published end. Commits' fdatasyncs run
//! outside the append lock, so neither appends nor reads wait for one;
//! concurrent [`Log::commit`] callers share a single fdatasync (group commit).
//! A roll is a swap of a spare segment made ahead ([`Log::prepare`]); the
//! old segment's seal (an fdatasync) is deferred, and runs under the append
//! lock only when the next roll comes before anything else did it
//! ([`Log::append_may_block`] says when an append could wait for that).
//!
//! # Directory
//!
//! Besides the segment files, the directory holds `.lock` (an advisory lock
//! taken while the log is open), `*.torn` sidecars holding bytes that
//! recovery cut off a torn tail, and `.spare-store`, `.spare-index`,
//! `.spare-timeindex`: the next segment, made ahead of its roll, and
//! `producers.snapshot`: idempotent producers' state as of the last roll or
//! close (see `producers`).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::cache::TailCache;
use super::config::{IoMode, LogConfig, SyncMode, TimestampType};
use super::error::{Result, StorageError};
use super::fs::{self, INDEX_EXT, STORE_EXT, TIME_INDEX_EXT, TORN_EXT};
use super::producers::{self, Check, ProducerBatch, Producers};
use super::segment::{RecoveryReport, Segment, SegmentWriter, Spare};
use super::vfs::{Open, OsVfs, Vfs};
use crate::batch::{self, Record};

/// The largest offset a log hands out: half of u64, so that no sum of an
/// offset and a count read from disk can overflow.
pub const MAX_OFFSET: u64 = u64::MAX / 2;

/// Bytes read at a time while rebuilding producers' state at open.
const PRODUCER_SCAN_BYTES: u64 = 4 << 20;

/// A snapshot of `MAX_PRODUCERS` producers with five batches each is about
/// 1.4 MB: anything much larger is not one.
const MAX_PRODUCER_SNAPSHOT: u64 = 4 << 20;

/// Most bytes [`Log::read`] decompresses one stored batch's records to.
const MAX_DECOMPRESSED_RECORDS: usize = batch::MAX_DECOMPRESSED;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset after its last record.
    pub next_offset: u64,
    /// The time the log stamped on it (ms since the epoch) when the log
    /// keeps append times ([`TimestampType::LogAppend`]); `None` when the
    /// batch keeps its producer's.
    pub log_append_time: Option<i64>,
    /// Whether the append rolled to a new segment first (a moment to apply
    /// retention: the log just grew by a sealed segment).
    pub rolled: bool,
    /// Bytes a compressed batch's records took once decompressed for the
    /// checks (0 for a plain batch).
    pub decompressed: usize,
    /// The batch was an idempotent producer's retry of one already stored:
    /// nothing was stored, and the offsets are the first append's.
    pub duplicate: bool,
}

/// Whole stored batches returned by [`Log::read_batches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRead {
    /// Concatenated batches, exactly as stored; empty at the end of the log.
    pub bytes: Bytes,
    /// Offset of the first record of the first batch (may be below the offset
    /// asked for: the batch holding it starts earlier).
    pub first_offset: u64,
    /// Offset after the last record returned: where the next read starts.
    pub next_offset: u64,
    /// The log's range when the read happened.
    pub log_start: u64,
    pub log_end: u64,
}

/// Limits applied by [`Log::apply_retention`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the log's total size at or below this, deleting oldest segments.
    pub max_bytes: Option<u64>,
    /// Delete segments whose newest batch is older than this.
    pub max_age: Option<Duration>,
}

/// Whether a read may wait for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    /// Only what is in the page cache; otherwise [`StorageError::WouldBlock`].
    No,
}

/// A `.torn` sidecar: bytes cut off the torn tail of a segment at recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub path: PathBuf,
    /// Base offset of the segment it was cut from.
    pub segment: u64,
    pub bytes: u64,
}

/// What retention (or truncation) deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub segments: usize,
    /// Bytes of disk freed: stores, index files and sidecars.
    pub bytes: u64,
}

/// The settings an append goes by (its time and whether it rolls), read
/// once for it.
struct AppendRules {
    timestamp_type: TimestampType,
    ahead: Option<Duration>,
    segment_age: Option<Duration>,
    segment_bytes: u64,
}

/// Serialised append state.
struct Writer {
    /// `None` once closed.
    active: Option<SegmentWriter>,
    /// The active segment has been flushed for the last time but no
    /// successor could be made (a full disk): the next append must roll
    /// first.
    active_sealed: bool,
    /// Set by a failed write, flush, seal or sync; appends fail until reopen.
    fenced: Option<String>,
    /// Idempotent producers' sequences, as of the last append.
    producers: Producers,
}

/// Work a roll leaves for later, so that the roll itself is a swap: the
/// sealing of the segment it rolled away from, and a sync of the directory
/// (the new segment's names). Done by [`Log::prepare`], by the next sync
/// (before it counts anything after them as durable), by the next roll, or
/// at close, whichever comes first.
#[derive(Default)]
struct Deferred {
    unsealed: Option<Arc<Segment>>,
    dir_dirty: bool,
    /// The producers' snapshot taken at the roll, written once the segment
    /// it covers is sealed.
    snapshot: Option<Vec<u8>>,
}

/// Group-commit state.
struct SyncState {
    /// Every offset below this is durable.
    synced: u64,
    running: bool,
    last_started: Option<Instant>,
    failed: Option<String>,
    /// Bumped by `reset`: a sync that started before it covers nothing of
    /// the log after it.
    generation: u64,
}

/// A segmented, append-only commit log in one directory.
pub struct Log {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    /// `segment_bytes`, `segment_age`, `index_bytes` and `max_record_bytes`
    /// may change while the log is open ([`Log::set_limits`]); each new
    /// decision (a roll, the next segment's files) uses the current values.
    config: RwLock<LogConfig>,
    /// `config.max_record_bytes`, read without a lock on every append.
    max_record_bytes: AtomicU32,
    /// Fixed while open: `config.max_batch_bytes` and `config.sync`.
    max_batch_bytes: u32,
    sync_mode: SyncMode,
    /// Fixed while open: `config.io` and `config.cache`.
    io: IoMode,
    cache: Option<TailCache>,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    writer: Mutex<Writer>,
    next_offset: AtomicU64,
    sync: Mutex<SyncState>,
    sync_done: Condvar,
    /// Serialises retention, truncation and reset, which delete files.
    maintenance: Mutex<()>,
    /// The next segment's files, made ahead of the roll (see `prepare`).
    spare: Mutex<Option<Spare>>,
    /// Serialises the making of spares.
    preparing: Mutex<()>,
    /// What the last roll left to do off the append path.
    deferred: Mutex<Deferred>,
    recovery: Vec<(u64, RecoveryReport)>,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("lowest_offset", &self.lowest_offset())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A duration in milliseconds; one too long for an i64 counts as forever
/// (a cast would wrap it negative, and make every segment look expired).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves state that is still consistent
    // (every field is updated only after the I/O it describes succeeded).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Opens the log in `dir` (creating it if needed), recovering whatever a
    /// crash left there.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Log::open_with(OsVfs::shared(), dir, config)
    }

    /// [`Log::open`] on another file system (tests use a simulated disk).
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_owned();
        config
            .validate()
            .map_err(|reason| StorageError::BadLayout {
                path: dir.clone(),
                reason,
            })?;
        refuse_old_format(&*vfs, &dir)?;
        vfs.create_dir_all(&dir)
            .map_err(|e| StorageError::io("create directory", &dir, e))?;
        let dir_lock = take_dir_lock(&*vfs, &dir)?;
        let bases = list_segments(&*vfs, &dir)?;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut recovery = Vec::new();
        if bases.is_empty() {
            let sizes = config.index_entries(0);
            segments.push(Arc::new(Segment::create(&vfs, &dir, 0, sizes)?));
        }
        for (i, &base) in bases.iter().enumerate() {
            let (segment, report) = match bases.get(i + 1) {
                Some(&next_base) => Segment::open_sealed(&vfs, &dir, base, next_base)?,
                None => Segment::open_active(&vfs, &dir, base, &config)?,
            };
            if report != RecoveryReport::default() {
                // The broker logs it, with the topic's name, from
                // `Log::recovery`: said once.
                tracing::debug!(dir = %dir.display(), segment = base, ?report, "recovered segment");
                recovery.push((base, report));
            }
            segments.push(Arc::new(segment));
        }
        // Opening may have created the first segment, created or rebuilt
        // index files, written a sidecar or removed orphans: make those
        // directory entries durable before anything depends on them.
        fs::sync_dir(&*vfs, &dir)?;
        let active = segments.last().expect("at least one segment");
        let next_offset = active.next_offset();
        // After a process crash the page cache may hold what no fdatasync
        // covered: sync it now, before anything counts it as durable (or a
        // broker shows it to consumers).
        active.sync()?;
        // The segment before it too: a roll defers its predecessor's sync,
        // and a crash may have come before anything did it (its index files
        // were opened read-only: only the store needs the sync).
        if let Some(previous) = segments.len().checked_sub(2).map(|i| &segments[i]) {
            previous.sync()?;
        }
        let writer = Writer {
            active: Some(active.writer(config.io, config.cache.as_ref())?),
            active_sealed: false,
            fenced: None,
            producers: Producers::default(),
        };
        let log = Log {
            vfs,
            dir,
            max_record_bytes: AtomicU32::new(config.max_record_bytes),
            max_batch_bytes: config.max_batch_bytes,
            sync_mode: config.sync,
            io: config.io,
            cache: config.cache.clone(),
            config: RwLock::new(config),
            segments: RwLock::new(Arc::new(segments)),
            writer: Mutex::new(writer),
            next_offset: AtomicU64::new(next_offset),
            // The active store was synced just above: all of it is durable.
            sync: Mutex::new(SyncState {
                synced: next_offset,
                running: false,
                last_started: None,
                failed: None,
                generation: 0,
            }),
            sync_done: Condvar::new(),
            maintenance: Mutex::new(()),
            spare: Mutex::new(None),
            preparing: Mutex::new(()),
            deferred: Mutex::new(Deferred::default()),
            recovery,
            _lock: dir_lock,
        };
        let producers = log.rebuild_producers()?;
        lock(&log.writer).producers = producers;
        // Without a spare (a full disk, say) the first roll makes its files.
        if let Err(e) = log.prepare_spare() {
            tracing::warn!(dir = %log.dir.display(), error = %e, "no spare segment made at open");
        }
        Ok(log)
    }

    /// Does off the append path what makes the next roll a swap: seals the
    /// segment the last roll left unsealed, syncs the directory, and makes
    /// the next segment's files ahead of time. A broker calls it from a
    /// background thread after each roll; without it a roll does this
    /// work itself. An I/O failure fences the log.
    pub fn prepare(&self) -> Result<()> {
        if let Err(e) = self.finish_deferred() {
            return Err(fence(&mut lock(&self.writer), e));
        }
        self.prepare_spare()
    }

    /// Whether an append now could do slow I/O: a roll finds no spare ready
    /// (it creates files) or a segment still unsealed (it fdatasyncs). A
    /// caller on an async runtime can then move its other tasks aside for
    /// the append; otherwise an append is a copy into the page cache. With
    /// direct I/O every append waits for the device.
    pub fn append_may_block(&self) -> bool {
        if self.io == IoMode::Direct {
            return true;
        }
        let no_spare = lock(&self.spare).is_none();
        no_spare || lock(&self.deferred).unsealed.is_some()
    }

    /// Makes the next segment's files if there are none ready.
    fn prepare_spare(&self) -> Result<()> {
        let _one = lock(&self.preparing);
        // One lock at a time: a roll takes the spare's under the writer's.
        let ready = lock(&self.spare).is_some();
        let closed = lock(&self.writer).active.is_none();
        if ready || closed {
            return Ok(());
        }
        let spare = Spare::create(&*self.vfs, &self.dir, self.config().index_entries(0))?;
        *lock(&self.spare) = Some(spare);
        Ok(())
    }

    /// Idempotent producers' state at open: the snapshot's, brought up to
    /// date from the batch headers after the offset it covers. Without a
    /// usable snapshot, the headers of the last two segments (as Kafka
    /// does): a producer silent for longer than that is treated as new,
    /// which only lets it start at any sequence.
    fn rebuild_producers(&self) -> Result<Producers> {
        let path = self.dir.join(producers::SNAPSHOT_NAME);
        let segments = self.snapshot();
        let lowest = self.lowest_offset();
        let end = self.next_offset();
        let recent = segments
            .len()
            .checked_sub(2)
            .map_or(lowest, |i| segments[i].base_offset());
        let (mut from, mut state) = (recent, Producers::default());
        // A crash in the middle of a snapshot's write left its temporary file.
        let tmp = self.dir.join(format!("{}.tmp", producers::SNAPSHOT_NAME));
        if self.vfs.exists(&tmp) {
            self.vfs
                .remove_file(&tmp)
                .map_err(|e| StorageError::io("remove", &tmp, e))?;
        }
        if self.vfs.exists(&path) {
            match self.read_producers(&path) {
                Ok((covered, loaded)) if covered <= end => {
                    from = covered.max(lowest);
                    state = loaded;
                }
                Ok((covered, _)) => {
                    tracing::warn!(file = %path.display(), covered, end, "producer snapshot is ahead of the log; rebuilding from the log")
                }
                // A snapshot that fails to read is a disk error like any
                // other at open; only a bad one is rebuilt from the log.
                Err(e @ StorageError::BadLayout { .. }) => {
                    tracing::warn!(file = %path.display(), error = %e, "producer snapshot unusable; rebuilding from the log")
                }
                Err(e) => return Err(e),
            }
        }
        state.forget_below(lowest);
        let now = now_ms();
        let mut offset = from;
        while offset < end {
            let read = match self.read_batches(offset, PRODUCER_SCAN_BYTES) {
                Ok(read) => read,
                // Damage holds no batch to learn from: go past it.
                Err(StorageError::Corrupt {
                    resume_at: Some(next),
                    ..
                }) if next > offset => {
                    offset = next;
                    continue;
                }
                Err(StorageError::Corrupt { .. }) => break,
                Err(e) => return Err(e),
            };
            if read.bytes.is_empty() || read.next_offset <= offset {
                break;
            }
            let mut at = 0;
            while let Ok(header) = batch::BatchHeader::parse(&read.bytes[at..]) {
                if header.base_offset >= from as i64 {
                    if let Some(b) = ProducerBatch::of(&header) {
                        let base = header.base_offset as u64;
                        state.record(&b, base, header.next_offset() as u64, now);
                    }
                }
                at += header.size();
                if at >= read.bytes.len() {
                    break;
                }
            }
            offset = read.next_offset;
        }
        Ok(state)
    }

    fn read_producers(&self, path: &Path) -> Result<(u64, Producers)> {
        let file = self
            .vfs
            .open(path, Open::ReadOnly)
            .map_err(|e| StorageError::io("open", path, e))?;
        let size = file.size().map_err(|e| StorageError::io("stat", path, e))?;
        let bytes = file
            .read_at(0, size.min(MAX_PRODUCER_SNAPSHOT) as usize)
            .map_err(|e| StorageError::io("read", path, e))?;
        Producers::decode(&bytes).map_err(|reason| StorageError::BadLayout {
            path: path.to_owned(),
            reason,
        })
    }

    /// Replaces the producers' snapshot (tmp file, fdatasync, rename); the
    /// caller syncs the directory.
    fn write_producers(&self, snapshot: &[u8]) -> Result<()> {
        let path = self.dir.join(producers::SNAPSHOT_NAME);
        let tmp = self.dir.join(format!("{}.tmp", producers::SNAPSHOT_NAME));
        let vfs = &*self.vfs;
        (|| -> io::Result<()> {
            if vfs.exists(&tmp) {
                vfs.remove_file(&tmp)?;
            }
            let file = vfs.open(&tmp, Open::CreateNew)?;
            file.write_at(0, snapshot)?;
            file.sync_data()?;
            vfs.replace(&tmp, &path)
        })()
        .map_err(|e| StorageError::io("write producer snapshot", &path, e))
    }

    /// Seals what the last roll rolled away from and syncs the directory:
    /// once this returns, everything before the active segment is durable,
    /// and so are the names of every segment.
    fn finish_deferred(&self) -> Result<()> {
        let mut deferred = lock(&self.deferred);
        if let Some(segment) = deferred.unsealed.clone() {
            segment.seal_files()?;
            deferred.unsealed = None;
        }
        if let Some(snapshot) = deferred.snapshot.take() {
            if let Err(e) = self.write_producers(&snapshot) {
                // Only a longer read at the next open: not worth fencing for.
                tracing::warn!(dir = %self.dir.display(), error = %e, "producer snapshot not written");
            }
            deferred.dir_dirty = true;
        }
        if deferred.dir_dirty {
            fs::sync_dir(&*self.vfs, &self.dir)?;
            deferred.dir_dirty = false;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in effect now.
    pub fn config(&self) -> LogConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the limits that only steer future decisions: when the active
    /// segment rolls (`segment_bytes`, `segment_age`), how large the next
    /// segments' indexes may grow (`index_bytes`), the largest record the
    /// next appends accept (`max_record_bytes`). The sync mode and the batch
    /// limit stay as opened. A spare segment made before the change keeps
    /// the index size it was made with (a full index just rolls earlier).
    pub fn set_limits(&self, limits: &LogConfig) -> Result<()> {
        let mut next = self.config();
        next.segment_bytes = limits.segment_bytes;
        next.segment_age = limits.segment_age;
        next.index_bytes = limits.index_bytes;
        next.max_record_bytes = limits.max_record_bytes;
        next.timestamp_type = limits.timestamp_type;
        next.max_timestamp_ahead = limits.max_timestamp_ahead;
        next.validate().map_err(|reason| StorageError::BadLayout {
            path: self.dir.clone(),
            reason,
        })?;
        self.max_record_bytes
            .store(next.max_record_bytes, Ordering::Relaxed);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// What recovery repaired at open, per segment base offset.
    pub fn recovery(&self) -> &[(u64, RecoveryReport)] {
        &self.recovery
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        Arc::clone(&self.segments.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Offset of the oldest record still stored.
    pub fn lowest_offset(&self) -> u64 {
        self.snapshot().first().map_or(0, |s| s.base_offset())
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Bytes of disk the log takes, as `du` would count its files: every
    /// segment's store and allocated index files, and the sidecars of torn
    /// tails. Retention by bytes bounds this.
    pub fn size_bytes(&self) -> u64 {
        let segments: u64 = self.snapshot().iter().map(|s| s.disk_bytes()).sum();
        let spare = lock(&self.spare).as_ref().map_or(0, Spare::disk_bytes);
        segments + spare + self.sidecars().iter().map(|s| s.bytes).sum::<u64>()
    }

    /// Bytes of stored batches (the stores' published bytes) alone.
    pub fn record_bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.size()).sum()
    }

    /// The sidecar files in the directory: bytes recovery cut off a torn
    /// tail, kept for inspection. Retention removes a segment's sidecars
    /// with it; an operator may delete them at any time. Unreadable entries
    /// are left out.
    pub fn sidecars(&self) -> Vec<Sidecar> {
        let Ok(names) = self.vfs.list(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<Sidecar> = names
            .iter()
            .filter_map(|name| {
                let (segment, rest) = fs::parse_segment_name(name)?;
                // `<base>.<unix ms>.torn`
                let stamp = rest.strip_suffix(TORN_EXT)?.strip_suffix('.')?;
                if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let path = self.dir.join(name);
                let bytes = self
                    .vfs
                    .open(&path, super::vfs::Open::ReadOnly)
                    .and_then(|f| f.size())
                    .ok()?;
                Some(Sidecar {
                    path,
                    segment,
                    bytes,
                })
            })
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found
    }

    pub fn segment_count(&self) -> usize {
        self.snapshot().len()
    }

    /// Appends one batch (Kafka's RecordBatch v2, [`batch`](crate::batch)),
    /// assigning its offsets in place (bytes outside the CRC) and, for a
    /// [`TimestampType::LogAppend`] log, its timestamp (with a new CRC).
    /// When this returns the batch has reached the kernel and is visible to
    /// readers; call [`Log::commit`] to wait until it is as durable as the
    /// sync mode promises.
    pub fn append(&self, batch: &mut [u8]) -> Result<Appended> {
        self.append_within(batch, batch::MAX_DECOMPRESSED)
    }

    /// [`Log::append`], decompressing a compressed batch's records (to
    /// check them) to at most `max_decompressed` bytes: a caller appending
    /// many batches for one request bounds them all together
    /// ([`Appended::decompressed`] says what this one took).
    pub fn append_within(&self, batch: &mut [u8], max_decompressed: usize) -> Result<Appended> {
        if batch.len() > self.max_batch_bytes as usize {
            return Err(StorageError::BatchTooLarge {
                size: batch.len(),
                max: self.max_batch_bytes,
            });
        }
        // Validation needs no lock: do it before taking one.
        let max_record = self.max_record_bytes.load(Ordering::Relaxed);
        let batch::Validated {
            mut header,
            decompressed,
            max_timestamp,
        } = batch::validate_within(batch, max_record as usize, max_decompressed)?;
        if max_timestamp != header.max_timestamp {
            // Stored with the records' largest timestamp, as Kafka does.
            batch::set_max_timestamp(batch, max_timestamp);
            header.max_timestamp = max_timestamp;
        }
        let now = now_ms();
        // Read once per append, before the lock: the time rules here, the
        // roll rules below.
        let config = {
            let c = self.config.read().unwrap_or_else(|p| p.into_inner());
            AppendRules {
                timestamp_type: c.timestamp_type,
                ahead: c.max_timestamp_ahead,
                segment_age: c.segment_age,
                segment_bytes: c.segment_bytes,
            }
        };
        let (timestamp_type, ahead) = (config.timestamp_type, config.ahead);
        // The batch's time is what the time index, retention by age and
        // seek by time go by.
        let time = match timestamp_type {
            TimestampType::LogAppend => {
                batch::set_log_append_time(batch, now);
                now
            }
            TimestampType::Create => {
                // A producer clock far ahead would keep its data from
                // retention and hide later data from seeks (Kafka's
                // message.timestamp.after.max.ms).
                if let Some(ahead) = ahead {
                    if header.max_timestamp > now.saturating_add(millis(ahead)) {
                        return Err(StorageError::TimestampAhead {
                            timestamp: header.max_timestamp,
                            now,
                            max_ahead_ms: millis(ahead),
                        });
                    }
                }
                header.max_timestamp
            }
        };
        let mut w = lock(&self.writer);
        if let Some(reason) = &w.fenced {
            return Err(StorageError::Fenced {
                reason: reason.clone(),
            });
        }
        let count = header.records_count as u64;
        if w.active.is_none() {
            return Err(StorageError::Closed);
        }
        // Before the roll: a duplicate or a refused batch changes nothing.
        let producer = ProducerBatch::of(&header);
        if let Some(b) = &producer {
            if let Check::Duplicate { base, next } = w.producers.check(b)? {
                return Ok(Appended {
                    base_offset: base,
                    next_offset: next,
                    log_append_time: None,
                    rolled: false,
                    decompressed,
                    duplicate: true,
                });
            }
        }
        let rolled =
            w.active_sealed || self.must_roll(&w, &config, batch.len() as u64, count, time);
        if rolled {
            self.roll(&mut w)?;
        }
        let base = self.next_offset.load(Ordering::Relaxed);
        if base + count > MAX_OFFSET {
            return Err(StorageError::BadLayout {
                path: self.dir.clone(),
                reason: "the log has used up its offsets".into(),
            });
        }
        batch::assign(batch, base as i64);
        let active = w.active.as_mut().expect("checked above");
        let written = active
            .write(batch)
            .and_then(|pos| active.flush().map(|()| pos));
        let pos = match written {
            Ok(pos) => pos,
            Err(e) => return Err(fence_unless_full(&mut w, e)),
        };
        let next = base + count;
        if let Err(e) = active.publish(&[(base, pos, time, next)]) {
            return Err(fence(&mut w, e));
        }
        self.next_offset.store(next, Ordering::Release);
        if let Some(b) = &producer {
            w.producers.record(b, base, next, now);
        }
        Ok(Appended {
            base_offset: base,
            next_offset: next,
            log_append_time: (timestamp_type == TimestampType::LogAppend).then_some(time),
            decompressed,
            rolled,
            duplicate: false,
        })
    }

    /// Whether a batch of `len` bytes, `count` records and time `time` must
    /// go to a new segment. By age, the batch's time is compared with the
    /// segment's first batch's, as Kafka does: a producer backfilling old
    /// timestamps fills segments as usual rather than rolling at every
    /// append (the background check, `roll_if_due`, goes by the clock).
    fn must_roll(&self, w: &Writer, rules: &AppendRules, len: u64, count: u64, time: i64) -> bool {
        let active = w.active.as_ref().expect("open");
        let end = active.end();
        if end == 0 {
            return false;
        }
        let base = active.segment().base_offset();
        let next = self.next_offset.load(Ordering::Relaxed);
        let aged = match (rules.segment_age, active.segment().first_time()) {
            (Some(age), Some(first)) => time.saturating_sub(first) >= millis(age),
            _ => false,
        };
        end + len > rules.segment_bytes
            || active.index_full()
            || next + count - base > u64::from(u32::MAX)
            || aged
    }

    /// Starts a new segment at the next offset. With a spare ready this is
    /// a flush, three renames and a swap: the old segment's fdatasync and
    /// index trims, and the directory sync, are deferred (see [`Deferred`]);
    /// no sync counts anything after the old segment as durable before they
    /// are done, so a commit never covers a segment whose predecessor could
    /// still be torn.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let active = w.active.as_mut().ok_or(StorageError::Closed)?;
        if !w.active_sealed {
            if let Err(e) = active.flush() {
                return Err(fence(w, e));
            }
            w.active_sealed = true;
        }
        // At most one segment waits to be sealed: the one the roll before
        // left is sealed now, if nothing did it since.
        if let Err(e) = self.finish_deferred() {
            return Err(fence(w, e));
        }
        let next = self.next_offset.load(Ordering::Relaxed);
        let spare = lock(&self.spare).take();
        let segment = match spare {
            Some(spare) => match Segment::from_spare(&self.vfs, &self.dir, spare, next) {
                Ok(segment) => segment,
                // Half renamed: a reopen sorts out the directory.
                Err(e) => return Err(fence(w, e)),
            },
            // A full disk fails here, leaving the log as it was.
            None => Segment::create(&self.vfs, &self.dir, next, self.config().index_entries(0))?,
        };
        let segment = Arc::new(segment);
        let writer = match segment.writer(self.io, self.cache.as_ref()) {
            Ok(wr) => wr,
            Err(e) => return Err(fence(w, e)),
        };
        let old = Arc::clone(active.segment());
        w.producers.expire(now_ms());
        *lock(&self.deferred) = Deferred {
            unsealed: Some(old),
            dir_dirty: true,
            snapshot: Some(w.producers.encode(next)),
        };
        {
            let mut list = self.segments.write().unwrap_or_else(|p| p.into_inner());
            let mut segments = Vec::with_capacity(list.len() + 1);
            segments.extend(list.iter().cloned());
            segments.push(segment);
            *list = Arc::new(segments);
        }
        w.active = Some(writer);
        w.active_sealed = false;
        Ok(())
    }

    /// Rolls the active segment if it is older than `segment_age`; for a
    /// background task, so that an idle topic's segment can age out.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool> {
        let mut w = lock(&self.writer);
        if w.fenced.is_some() || w.active.is_none() {
            return Ok(false);
        }
        let due = match (
            self.config().segment_age,
            w.active.as_ref().and_then(|a| a.segment().first_time()),
        ) {
            (Some(age), Some(first)) => now_ms.saturating_sub(first) >= millis(age),
            _ => false,
        };
        if !due {
            return Ok(false);
        }
        self.roll(&mut w)?;
        Ok(true)
    }

    /// Waits until every record below `next_offset` is as durable as the
    /// sync mode promises: `Always` syncs (sharing one fdatasync with
    /// concurrent callers), `Interval` syncs if the last sync started longer
    /// ago than the interval, `Never` returns at once.
    pub fn commit(&self, next_offset: u64) -> Result<()> {
        let due = {
            let state = lock(&self.sync);
            // After a failed sync nothing is acknowledged again, in any mode.
            if let Some(reason) = &state.failed {
                return Err(StorageError::Fenced {
                    reason: reason.clone(),
                });
            }
            match self.sync_mode {
                SyncMode::Always => true,
                SyncMode::Never => false,
                SyncMode::Interval(every) => {
                    state.last_started.is_none_or(|t| t.elapsed() >= every)
                }
            }
        };
        if due {
            self.sync_through(next_offset)
        } else {
            Ok(())
        }
    }

    /// Every offset below this is durable (covered by a completed
    /// fdatasync); it only moves forward, except across a reset.
    pub fn synced_offset(&self) -> u64 {
        lock(&self.sync).synced
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.sync_through(self.next_offset())
    }

    /// Blocks until an fdatasync that covers every offset below `target` has
    /// completed. One caller runs the sync; the others wait for it and
    /// return if it covered them. A failed sync fails every waiter and every
    /// later call: it is never retried as if the data were safe.
    pub fn sync_through(&self, target: u64) -> Result<()> {
        // Nothing past the end can be covered: asking for it would loop.
        let target = target.min(self.next_offset());
        let mut state = lock(&self.sync);
        let generation = state.generation;
        loop {
            if state.generation != generation {
                return Err(StorageError::Reset);
            }
            if let Some(reason) = &state.failed {
                return Err(StorageError::Fenced {
                    reason: reason.clone(),
                });
            }
            if state.synced >= target {
                return Ok(());
            }
            if state.running {
                state = self
                    .sync_done
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.running = true;
            state.last_started = Some(Instant::now());
            drop(state);
            let result = self.sync_active();
            state = lock(&self.sync);
            state.running = false;
            match result {
                // A reset happened meanwhile: this sync covered the old log.
                _ if state.generation != generation => {}
                Ok(covered) => state.synced = state.synced.max(covered),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.sync_done.notify_all();
        }
    }

    /// fdatasyncs the active segment; returns the offset it covers. Sealed
    /// segments were synced when sealed.
    fn sync_active(&self) -> Result<u64> {
        let (segment, covered) = {
            let w = lock(&self.writer);
            if let Some(reason) = &w.fenced {
                return Err(StorageError::Fenced {
                    reason: reason.clone(),
                });
            }
            let active = w.active.as_ref().ok_or(StorageError::Closed)?;
            (Arc::clone(active.segment()), self.next_offset())
        };
        // What the active segment follows must be durable first.
        match self.finish_deferred().and_then(|()| segment.sync()) {
            Ok(()) => Ok(covered),
            Err(e) => {
                let mut w = lock(&self.writer);
                Err(fence(&mut w, e))
            }
        }
    }

    /// Reads whole stored batches, starting with the one that holds `offset`,
    /// up to `max_bytes` (at least one batch, whatever its size). At the end
    /// of the log the result is empty. Batches come from one segment; read
    /// again from `next_offset` for more.
    pub fn read_batches(&self, offset: u64, max_bytes: u64) -> Result<BatchRead> {
        self.read_batches_until(offset, max_bytes, u64::MAX, true)
    }

    /// Like [`Log::read_batches`], but only batches that fit in `max_bytes`:
    /// the result may be empty. For filling what room is left in a response.
    pub fn read_batches_up_to(&self, offset: u64, max_bytes: u64) -> Result<BatchRead> {
        self.read_batches_until(offset, max_bytes, u64::MAX, false)
    }

    /// The general read: whole batches from the one holding `offset`, up to
    /// `max_bytes` (at least one batch if `at_least_one`), none that starts
    /// at or after `end`. The log ends at `end` as far as this read is
    /// concerned: an offset past it is out of range. A broker passes its
    /// durable offset as `end` so that consumers never see what a power cut
    /// could take back.
    pub fn read_batches_until(
        &self,
        offset: u64,
        max_bytes: u64,
        end: u64,
        at_least_one: bool,
    ) -> Result<BatchRead> {
        self.read_batches_with(offset, max_bytes, end, at_least_one, Wait::Yes)
    }

    /// [`Log::read_batches_until`], choosing whether the read may wait for
    /// the device: with [`Wait::No`] it fails with
    /// [`StorageError::WouldBlock`] unless every byte is in the page cache
    /// (`preadv2` with `RWF_NOWAIT`), so that an async caller reads cached
    /// data in place and only a miss goes to a thread that may block.
    pub fn read_batches_with(
        &self,
        offset: u64,
        max_bytes: u64,
        end: u64,
        at_least_one: bool,
        wait: Wait,
    ) -> Result<BatchRead> {
        let end = self.next_offset().min(end);
        let segments = self.snapshot();
        let start = segments.first().map_or(0, |s| s.base_offset()).min(end);
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                lowest: start,
                next: end,
            });
        }
        let empty = BatchRead {
            bytes: Bytes::new(),
            first_offset: offset,
            next_offset: offset,
            log_start: start,
            log_end: end,
        };
        if offset == end {
            return Ok(empty);
        }
        let Some(i) = segments
            .partition_point(|s| s.base_offset() <= offset)
            .checked_sub(1)
        else {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                lowest: start,
                next: end,
            });
        };
        match segments[i].read(offset, max_bytes, at_least_one, end, wait)? {
            Some(r) => Ok(BatchRead {
                bytes: r.bytes,
                first_offset: r.first_offset,
                next_offset: r.next_offset,
                log_start: start,
                log_end: end,
            }),
            None => Ok(empty),
        }
    }

    /// Bytes of whole batches from the one holding `offset` up to `until`
    /// (a batch boundary, such as the visible end): what a read from
    /// `offset` could return. Counted from index positions, without reading
    /// any data, so a waiting fetch can tell cheaply whether enough has
    /// arrived. `None` if `offset` is outside `[lowest_offset, until]`.
    pub fn available_bytes(&self, offset: u64, until: u64) -> Option<u64> {
        let segments = self.snapshot();
        let lowest = segments.first().map_or(0, |s| s.base_offset());
        if offset < lowest || offset > until {
            return None;
        }
        let mut total = 0;
        for segment in segments.iter() {
            let next = segment.next_offset();
            if next <= offset || segment.base_offset() >= until {
                continue;
            }
            let from = segment.position_of(offset.max(segment.base_offset()));
            let to = segment.position_of(until.min(next));
            total += to.saturating_sub(from);
        }
        Some(total)
    }

    /// Reads the record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Record> {
        let read = self.read_batches(offset, 1)?;
        let out_of_range = || StorageError::OffsetOutOfRange {
            offset,
            lowest: read.log_start,
            next: read.log_end,
        };
        if read.bytes.is_empty() {
            return Err(out_of_range());
        }
        let header = batch::BatchHeader::parse(&read.bytes).map_err(StorageError::InvalidBatch)?;
        let first = read.bytes.slice(..header.size().min(read.bytes.len()));
        match batch::decode_any(&first, MAX_DECOMPRESSED_RECORDS)
            .map_err(|e| e.to_string())
            .map(|records| records.into_iter().find(|r| r.offset == offset))
        {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(out_of_range()),
            Err(e) => Err(StorageError::Corrupt {
                segment: self.segment_of(offset),
                position: 0,
                reason: e,
                resume_at: Some(header.next_offset() as u64),
            }),
        }
    }

    /// The first record of the batch at `base` whose timestamp is `time`
    /// or later: `(offset, timestamp)`. The batch's `maxTimestamp` is at
    /// least `time`, so there is one unless the batch is damaged.
    fn first_record_from(&self, base: u64, time: i64) -> Result<Option<(u64, i64)>> {
        let read = self.read_batches(base, 1)?;
        if read.bytes.is_empty() {
            return Ok(None);
        }
        let header = batch::BatchHeader::parse(&read.bytes).map_err(StorageError::InvalidBatch)?;
        let first = read.bytes.slice(..header.size().min(read.bytes.len()));
        let records = batch::decode_any(&first, MAX_DECOMPRESSED_RECORDS).map_err(|e| {
            StorageError::Corrupt {
                segment: self.segment_of(base),
                position: 0,
                reason: e.to_string(),
                resume_at: Some(header.next_offset() as u64),
            }
        })?;
        Ok(records
            .into_iter()
            .find(|r| r.timestamp >= time)
            .map(|r| (r.offset, r.timestamp)))
    }

    /// The first record whose timestamp is `time_ms` or later, as
    /// `(offset, timestamp)`, or `None` if every record is older. Records
    /// of a batch need not be in time order: the batch is the first whose
    /// `maxTimestamp` reaches `time_ms`, the record the first in it that
    /// does (as Kafka answers a ListOffsets by time).
    pub fn record_for_timestamp(&self, time_ms: i64) -> Result<Option<(u64, i64)>> {
        match self.offset_for_timestamp(time_ms)? {
            Some(base) => self.first_record_from(base, time_ms),
            None => Ok(None),
        }
    }

    /// The record with the largest timestamp (the first of equals), as
    /// `(offset, timestamp)`, or `None` in an empty log: Kafka's
    /// ListOffsets "max timestamp" (-3). The time indexes hold each
    /// segment's largest time; the batch is the segment's first to reach it.
    pub fn max_timestamp_record(&self) -> Result<Option<(u64, i64)>> {
        let segments = self.snapshot();
        let mut best: Option<(&Arc<Segment>, i64)> = None;
        for segment in segments.iter() {
            if let Some(t) = segment.last_time() {
                if best.is_none_or(|(_, b)| t > b) {
                    best = Some((segment, t));
                }
            }
        }
        let Some((segment, time)) = best else {
            return Ok(None);
        };
        match segment.offset_for_time(time)? {
            Some(base) => self.first_record_from(base, time),
            None => Ok(None),
        }
    }

    fn segment_of(&self, offset: u64) -> u64 {
        let segments = self.snapshot();
        let i = segments.partition_point(|s| s.base_offset() <= offset);
        segments
            .get(i.saturating_sub(1))
            .map_or(0, |s| s.base_offset())
    }

    /// The base offset of the first batch whose time (its `maxTimestamp`)
    /// is `time_ms` or later, or `None` if every batch is older.
    pub fn offset_for_timestamp(&self, time_ms: i64) -> Result<Option<u64>> {
        for segment in self.snapshot().iter() {
            if segment.last_time().is_some_and(|t| t >= time_ms) {
                if let Some(offset) = segment.offset_for_time(time_ms)? {
                    return Ok(Some(offset));
                }
            }
        }
        Ok(None)
    }

    /// Deletes whole segments all of whose records are below `lowest`. The
    /// active segment always stays.
    pub fn truncate(&self, lowest: u64) -> Result<Removed> {
        self.remove_oldest(|segment, _| segment.next_offset() <= lowest)
    }

    /// Deletes oldest segments (never the active one) while the log is larger
    /// than `max_bytes` or the oldest segment's newest batch is older than
    /// `max_age` at `now_ms`.
    pub fn apply_retention(&self, policy: Retention, now_ms: i64) -> Result<Removed> {
        self.remove_oldest(|segment, total| {
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            let too_old = match (policy.max_age, segment.last_time()) {
                (Some(age), Some(t)) => now_ms.saturating_sub(t) > millis(age),
                _ => false,
            };
            too_big || too_old
        })
    }

    /// Removes segments from the front while `doomed(segment, total bytes)`.
    fn remove_oldest(&self, mut doomed: impl FnMut(&Segment, u64) -> bool) -> Result<Removed> {
        let _maintenance = lock(&self.maintenance);
        // Only this lock's holder removes from the front; rolls only append.
        let list = self.snapshot();
        let sidecars = self.sidecars();
        let sidecars_of = |base: u64| sidecars.iter().filter(move |s| s.segment == base);
        let mut total = self.size_bytes();
        let mut cut = 0;
        while cut + 1 < list.len() && doomed(&list[cut], total) {
            let base = list[cut].base_offset();
            total -= list[cut].disk_bytes() + sidecars_of(base).map(|s| s.bytes).sum::<u64>();
            cut += 1;
        }
        let mut result = Removed::default();
        // Oldest first, and each removal durable before the log start moves
        // past it: a crash can bring back at most the segment being removed
        // (so the start never moves backwards across a restart), never leave
        // a hole. Until then readers keep reading it: an unlinked file stays
        // readable through its open descriptors.
        for segment in &list[..cut] {
            let bytes = segment.disk_bytes();
            segment.remove_files()?;
            let mut torn = 0;
            for sidecar in sidecars_of(segment.base_offset()) {
                fs::remove_file(&*self.vfs, &sidecar.path)?;
                torn += sidecar.bytes;
            }
            // Gone from the directory (if not yet durably): stop offering it
            // whether or not the sync works.
            let synced = fs::sync_dir(&*self.vfs, &self.dir);
            let mut published = self.segments.write().unwrap_or_else(|p| p.into_inner());
            *published = Arc::new(
                published
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, segment))
                    .cloned()
                    .collect(),
            );
            drop(published);
            synced?;
            result.segments += 1;
            result.bytes += bytes + torn;
        }
        if result.segments > 0 {
            let lowest = self.lowest_offset();
            lock(&self.writer).producers.forget_below(lowest);
            // Debug: the broker logs retention once, naming the topic.
            tracing::debug!(dir = %self.dir.display(), segments = result.segments, bytes = result.bytes, "deleted old segments");
        }
        Ok(result)
    }

    /// A reader of the raw bytes of every published batch, oldest first: the
    /// log's content for a snapshot or a copy.
    pub fn reader(&self) -> LogReader {
        LogReader {
            segments: self.snapshot(),
            current: 0,
            pos: 0,
        }
    }

    /// Flushes, syncs and trims the index files. Appends fail afterwards.
    pub fn close(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        let Some(mut active) = w.active.take() else {
            return Ok(());
        };
        if lock(&self.spare).take().is_some() {
            Spare::remove_files(&*self.vfs, &self.dir);
        }
        if let Some(reason) = &w.fenced {
            // Nothing more was synced: say so, so that no one takes the
            // close for a final sync.
            return Err(StorageError::Fenced {
                reason: reason.clone(),
            });
        }
        if let Err(e) = self.finish_deferred() {
            return Err(fence(&mut w, e));
        }
        active.seal()?;
        // Everything is sealed: the next open reads no batch at all.
        let snapshot = w.producers.encode(self.next_offset());
        self.write_producers(&snapshot)
            .and_then(|()| fs::sync_dir(&*self.vfs, &self.dir))
    }

    /// Closes a log whose files are going away (its directory was moved to
    /// be deleted): no seal and no sync, which would only fail on the
    /// moved directory, and nothing more is appended.
    pub fn discard(&self) {
        let mut w = lock(&self.writer);
        w.active = None;
        lock(&self.deferred).unsealed = None;
        lock(&self.deferred).snapshot = None;
        lock(&self.spare).take();
    }

    /// Closes the log and deletes its directory.
    pub fn remove(self) -> Result<()> {
        self.close()?;
        let (dir, vfs) = (self.dir.clone(), Arc::clone(&self.vfs));
        drop(self);
        vfs.remove_dir_all(&dir)
            .map_err(|e| StorageError::io("remove directory", &dir, e))?;
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fs::sync_dir(&*vfs, parent),
            _ => Ok(()),
        }
    }

    /// Deletes every record and starts again, empty, at offset 0.
    pub fn reset(&self) -> Result<()> {
        let _maintenance = lock(&self.maintenance);
        let mut w = lock(&self.writer);
        w.active = None;
        // The segment a roll left unsealed goes with the others, and so do
        // the producers (Kafka's DeleteRecords to the end forgets them too).
        lock(&self.deferred).unsealed = None;
        lock(&self.deferred).snapshot = None;
        w.producers.clear();
        // Readers keep the old segments (open files outlive their names)
        // until the new one replaces them in one step.
        let old = self.snapshot();
        let fresh = (|| {
            for segment in old.iter() {
                segment.remove_files()?;
            }
            let snapshot = self.dir.join(producers::SNAPSHOT_NAME);
            if self.vfs.exists(&snapshot) {
                fs::remove_file(&*self.vfs, &snapshot)?;
            }
            let segment = Arc::new(Segment::create(
                &self.vfs,
                &self.dir,
                0,
                self.config().index_entries(0),
            )?);
            fs::sync_dir(&*self.vfs, &self.dir)?;
            let writer = segment.writer(self.io, self.cache.as_ref())?;
            Ok((segment, writer))
        })();
        let (segment, writer) = match fresh {
            Ok(fresh) => fresh,
            // Half done: the old files may be gone. Refuse appends; a reopen
            // finds whatever is left (or starts empty, which is the reset).
            Err(e) => return Err(fence(&mut w, e)),
        };
        {
            let mut sync = lock(&self.sync);
            sync.generation += 1;
            sync.synced = 0;
            sync.failed = None;
        }
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(vec![segment]);
        self.next_offset.store(0, Ordering::Release);
        w.active = Some(writer);
        w.active_sealed = false;
        w.fenced = None;
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "closing log on drop failed");
        }
    }
}

/// Records `e` as the reason the log is fenced and returns it.
fn fence(w: &mut Writer, e: StorageError) -> StorageError {
    let reason = e.to_string();
    tracing::error!(error = %reason, "log fenced: appends refused until it is reopened");
    w.fenced.get_or_insert(reason);
    e
}

/// A full disk leaves the log as it was (the store writer rolled back); any
/// other write failure fences it.
fn fence_unless_full(w: &mut Writer, e: StorageError) -> StorageError {
    match e {
        StorageError::DiskFull { .. } => e,
        e => fence(w, e),
    }
}

/// Takes an exclusive advisory lock on `dir/.lock`, so that two processes
/// never append to one log.
fn take_dir_lock(vfs: &dyn Vfs, dir: &Path) -> Result<Box<dyn std::any::Any + Send + Sync>> {
    let path = dir.join(".lock");
    match vfs.lock(&path) {
        Ok(Some(guard)) => Ok(guard),
        Ok(None) => Err(StorageError::BadLayout {
            path,
            reason: "log is already open (locked by another process or handle)".into(),
        }),
        Err(e) => Err(StorageError::io("lock", &path, e)),
    }
}

/// Refuses a directory whose stores hold Spool 0.1's batches, before
/// anything in it is changed (not even a lock file). That format's 48-byte
/// header has magic 1 at byte 24; a v2 batch has magic 2 at byte 16.
fn refuse_old_format(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    if !vfs.is_dir(dir) {
        return Ok(());
    }
    let names = vfs
        .list(dir)
        .map_err(|e| StorageError::io("list", dir, e))?;
    for name in names {
        if !matches!(fs::parse_segment_name(&name), Some((_, STORE_EXT))) {
            continue;
        }
        let path = dir.join(&name);
        let file = vfs
            .open(&path, Open::ReadOnly)
            .map_err(|e| StorageError::io("open", &path, e))?;
        let size = file
            .size()
            .map_err(|e| StorageError::io("stat", &path, e))?;
        let read = |pos: u64, len: usize| {
            file.read_at(pos, len)
                .map_err(|e| StorageError::io("read", &path, e))
        };
        if size < OLD_HEADER_LEN as u64 {
            continue;
        }
        let head = read(0, OLD_HEADER_LEN)?;
        if head[OLD_MAGIC_AT] != 1 || head[NEW_MAGIC_AT] == batch::MAGIC as u8 {
            continue;
        }
        // Only a whole first batch with a good 0.1 checksum counts: a
        // damaged v2 store must open (and recover), not be refused.
        let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
        // A damaged v2 store must not make this read large: 0.1 batches
        // were at most its max_batch_bytes default.
        if (len as usize) < OLD_HEADER_LEN || u64::from(len) > size || len > OLD_MAX_BATCH {
            continue;
        }
        let old = read(0, len as usize)?;
        let crc = crc32c::crc32c(&old[..20]) ^ crc32c::crc32c(&old[24..]);
        if crc.to_be_bytes() == old[20..24] {
            return Err(StorageError::OldFormat {
                path: dir.to_owned(),
                format: "Spool 0.1's batch format (magic 1)",
            });
        }
    }
    Ok(())
}

/// Spool 0.1's batch header: its size and where its magic byte sat (its
/// length was at bytes 16..20 and its check at 20..24: crc32c of [0, 20)
/// XOR crc32c of [24, end)).
const OLD_HEADER_LEN: usize = 48;
const OLD_MAX_BATCH: u32 = 64 << 20;
const OLD_MAGIC_AT: usize = 24;
const NEW_MAGIC_AT: usize = 16;

/// Base offsets of the segments in `dir`, ascending. Index files without a
/// store (a crash while creating a segment) are removed.
fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<u64>> {
    let mut stores = Vec::new();
    let mut tables = Vec::new();
    for name in vfs
        .list(dir)
        .map_err(|e| StorageError::io("list", dir, e))?
    {
        let Some((base, ext)) = fs::parse_segment_name(&name) else {
            continue;
        };
        match ext {
            STORE_EXT if base > MAX_OFFSET => {
                return Err(StorageError::BadLayout {
                    path: dir.join(&name),
                    reason: format!("segment base offset above the largest offset, {MAX_OFFSET}"),
                })
            }
            STORE_EXT => stores.push(base),
            INDEX_EXT | TIME_INDEX_EXT => tables.push((base, dir.join(&name))),
            _ => {}
        }
    }
    stores.sort_unstable();
    for (base, path) in tables {
        if stores.binary_search(&base).is_err() {
            tracing::warn!(file = %path.display(), "removing index file without a store");
            fs::remove_file(vfs, &path)?;
        }
    }
    Ok(stores)
}

/// Streams the raw bytes of a snapshot of the log's segments, in order.
pub struct LogReader {
    segments: Arc<Vec<Arc<Segment>>>,
    current: usize,
    pos: u64,
}

impl Read for LogReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.get(self.current) {
            if self.pos >= segment.size() {
                self.current += 1;
                self.pos = 0;
                continue;
            }
            let chunk = segment
                .read_raw(self.pos, buf.len())
                .map_err(io::Error::other)?;
            buf[..chunk.len()].copy_from_slice(&chunk);
            self.pos += chunk.len() as u64;
            return Ok(chunk.len());
        }
        Ok(0)
    }
}
