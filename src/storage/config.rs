//! Settings of one log.

use std::time::Duration;

use super::cache::TailCache;

/// How appended batches are made durable. In every mode a batch reaches the
/// kernel (`write(2)` has returned) before [`Log::append`](super::Log::append)
/// returns, so a crash of the process alone never loses an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// [`Log::commit`](super::Log::commit) returns only after an fdatasync
    /// covering the batch. Concurrent callers share one fdatasync.
    #[default]
    Always,
    /// `commit` syncs when the last sync started more than this long ago;
    /// a power cut loses at most about this much.
    Interval(Duration),
    /// Never syncs except when sealing a segment and on close; the OS writes
    /// back when it likes.
    Never,
}

/// How a log writes its store files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// `pwrite` into the page cache; the kernel writes back.
    Buffered,
    /// `O_DIRECT` writes of whole 4096-byte blocks from the log's own
    /// aligned memory, which then serves readers as a tail cache (see
    /// [`TailCache`]). Durability is the same: `fdatasync` on commit.
    Direct,
}

impl IoMode {
    /// The built-in default, unless the environment variable `SPOOL_IO`
    /// (`buffered` or `direct`) names another: so that the whole test suite
    /// can run in either mode. A setting in a config file always wins.
    pub fn default_mode() -> IoMode {
        static FROM_ENV: std::sync::OnceLock<IoMode> = std::sync::OnceLock::new();
        *FROM_ENV.get_or_init(|| match std::env::var("SPOOL_IO").as_deref() {
            Ok("direct") => IoMode::Direct,
            Ok("buffered") => IoMode::Buffered,
            _ => IoMode::BUILT_IN,
        })
    }

    /// Chosen from measurement: see docs/DECISIONS.md.
    pub const BUILT_IN: IoMode = IoMode::Buffered;

    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Buffered => "buffered",
            IoMode::Direct => "direct",
        }
    }

    pub fn parse(s: &str) -> Option<IoMode> {
        match s {
            "buffered" => Some(IoMode::Buffered),
            "direct" => Some(IoMode::Direct),
            _ => None,
        }
    }
}

impl Default for IoMode {
    fn default() -> Self {
        IoMode::default_mode()
    }
}

/// Which time a stored batch carries, and the time index, retention by age
/// and seek by time go by (Kafka's `message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's: each batch's `maxTimestamp`, as sent.
    #[default]
    Create,
    /// The log's clock at append: the batch gets the LogAppendTime bit and
    /// `maxTimestamp` (and a new CRC, the only bytes under it the log
    /// rewrites).
    LogAppend,
}

/// Limits and policies of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment rolls when its store would grow past this. At most 4 GiB - 1
    /// because index positions are 32-bit.
    pub segment_bytes: u64,
    /// Bytes of one segment's index file; it holds `index_bytes / 8` batches,
    /// and a full index rolls the segment.
    pub index_bytes: u64,
    /// A segment rolls once its first batch is older than this.
    pub segment_age: Option<Duration>,
    pub sync: SyncMode,
    /// Largest batch `append` accepts.
    pub max_batch_bytes: u32,
    /// Largest record (its whole encoding) `append` accepts.
    pub max_record_bytes: u32,
    pub timestamp_type: TimestampType,
    /// With [`TimestampType::Create`], a batch whose `maxTimestamp` is more
    /// than this ahead of the log's clock is refused; `None` accepts any.
    pub max_timestamp_ahead: Option<Duration>,
    /// How the store files are written; fixed while the log is open.
    pub io: IoMode,
    /// With [`IoMode::Direct`], the memory budget the log's recently
    /// written chunks are kept in for readers (shared by every log given
    /// the same cache); `None` keeps only the chunk being written.
    pub cache: Option<TailCache>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            index_bytes: 10 << 20,
            segment_age: None,
            sync: SyncMode::Always,
            max_batch_bytes: 64 << 20,
            max_record_bytes: u32::MAX,
            timestamp_type: TimestampType::Create,
            max_timestamp_ahead: Some(Duration::from_secs(3600)),
            io: IoMode::default(),
            cache: None,
        }
    }
}

impl LogConfig {
    /// Checks the settings against each other and the format's limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 1024 || self.segment_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "segment_bytes must be between 1 KiB and 4 GiB - 1, got {}",
                self.segment_bytes
            ));
        }
        if self.index_bytes < 64 || self.index_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "index_bytes must be between 64 B and 4 GiB - 1, got {}",
                self.index_bytes
            ));
        }
        if (self.max_batch_bytes as usize) < crate::batch::HEADER_LEN {
            return Err(format!(
                "max_batch_bytes is too small: {}",
                self.max_batch_bytes
            ));
        }
        Ok(())
    }

    /// The most entries one segment's index can need (and its file can
    /// grow to): `index_bytes / 8`, but never more than a store of
    /// `segment_bytes` (or `store_bytes`, for one already larger) can use.
    /// Every batch takes at least [`MIN_BATCH_LEN`] bytes, and a damaged
    /// range that recovery indexes is at least one byte followed by a batch,
    /// so two entries always cover at least `MIN_BATCH_LEN + 1` bytes.
    pub(crate) fn index_entries(&self, store_bytes: u64) -> Index {
        let bytes = self.segment_bytes.max(store_bytes);
        let usable = bytes / (MIN_BATCH_LEN as u64 + 1).div_euclid(2) + 2;
        let configured = self.index_bytes / super::index::IndexEntry::WIDTH as u64;
        let entries = configured.min(usable).min(u64::from(u32::MAX)) as u32;
        // One time entry per new millisecond of append time: a segment that
        // rolls by age spans at most that many.
        let times = match self.segment_age {
            Some(age) => entries.min(u32::try_from(age.as_millis() + 1).unwrap_or(u32::MAX)),
            None => entries,
        };
        Index { entries, times }
    }
}

/// Smallest stored batch: the header and one record of null key and value
/// (length, attributes, timestamp and offset deltas, key, value, headers).
pub(crate) const MIN_BATCH_LEN: usize = crate::batch::HEADER_LEN + 7;

/// How many entries a segment's index and time index may grow to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Index {
    pub entries: u32,
    pub times: u32,
}
