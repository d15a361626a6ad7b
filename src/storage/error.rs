//! The storage layer's one error type.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;

/// Everything the log can fail with. Callers match on the variant; the text is
/// for people.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An operating-system call failed on a file of the log.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The disk has no room for the append; nothing of it was kept. Appends
    /// succeed again once space is freed (by retention, for example).
    #[error("disk full while appending to {path}")]
    DiskFull { path: PathBuf },
    /// A write or sync failed earlier, so the log no longer knows what reached
    /// the disk. It refuses appends until reopened, which recovers from the
    /// bytes actually on disk.
    #[error("log is fenced after an earlier I/O failure ({reason}); reopen it to recover")]
    Fenced { reason: String },
    /// The requested offset is outside the log.
    #[error("offset {offset} is out of range; the log holds [{lowest}, {next})")]
    OffsetOutOfRange { offset: u64, lowest: u64, next: u64 },
    /// A batch offered for appending is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A batch's producer timestamp is further ahead of the log's clock
    /// than the log accepts.
    #[error("batch timestamp {timestamp} is more than {max_ahead_ms} ms ahead of the broker's clock ({now}); check the producer's clock")]
    TimestampAhead {
        timestamp: i64,
        now: i64,
        max_ahead_ms: i64,
    },
    /// The directory holds segments in a batch format this version does
    /// not read. Nothing was changed.
    #[error("{path} holds {format}, which this version of Spool cannot read; nothing was changed. Move the directory aside (or delete it) to start afresh")]
    OldFormat { path: PathBuf, format: &'static str },
    /// A batch offered for appending exceeds the configured maximum.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: u32 },
    /// Stored bytes failed their checks. The records of the damaged range are
    /// not served; reading resumes at `resume_at`, when known.
    #[error("corrupt data in segment {segment:020} at store position {position}: {reason}")]
    Corrupt {
        segment: u64,
        position: u64,
        reason: String,
        resume_at: Option<u64>,
    },
    /// The directory holds something the log cannot make sense of.
    #[error("{path}: {reason}")]
    BadLayout { path: PathBuf, reason: String },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// The log was reset while the caller waited for a sync: what it
    /// appended before the reset is gone, so it is not acknowledged.
    #[error("log was reset while waiting for a sync; earlier appends were discarded")]
    Reset,
    /// An idempotent producer's batch does not follow the last one stored
    /// for it (a batch in between was lost); Kafka's
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    #[error("producer {producer_id}: sequence {got} is out of order (expected {expected})")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// A batch from an epoch older than the producer id's current one: a
    /// newer instance of the producer has taken over (Kafka's
    /// INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id}: epoch {epoch} is older than its current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A read asked not to wait ([`Wait::No`](super::Wait)) would have
    /// waited for the device; read again where waiting is fine.
    #[error("the data is not in the page cache")]
    WouldBlock,
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
