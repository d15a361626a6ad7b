//! Spool's storage layer: one segmented commit log per topic, usable as a
//! library without any networking.
//!
//! A [`Log`] is a directory of segments. Each segment is a store file (whole
//! [`batch`]es back to back), an index file (batch start offset to store
//! position) and a time index file (batch time to offset). See
//! `docs/STORAGE.md` for the formats, recovery and durability in one place;
//! each module documents its own format byte by byte.
//!
//! ```
//! use spool::storage::{BatchBuilder, Log, LogConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let log = Log::open(dir.path(), LogConfig::default())?;
//! let mut batch = BatchBuilder::new();
//! let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
//! batch.push(now.as_millis() as i64, Some(b"key"), Some(b"hello"), &[]);
//! let mut bytes = batch.finish();
//! let appended = log.append(&mut bytes)?;
//! log.commit(appended.next_offset)?; // durable, as the sync mode promises
//! assert_eq!(log.read(appended.base_offset)?.value.as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod config;
mod error;
mod fs;
mod index;
mod log;
pub mod offsets;
mod producers;
mod scan;
mod segment;
mod store;
pub mod vfs;

/// The batch format lives at the crate root (the protocol shares it); it is
/// re-exported here because the store is made of batches.
pub use crate::batch;
pub use crate::batch::{BatchBuilder, BatchError, BatchHeader, Record};
pub use cache::TailCache;
pub use config::{IoMode, LogConfig, SyncMode, TimestampType};
pub use error::StorageError;
pub use log::{Appended, BatchRead, Log, LogReader, Removed, Retention, Sidecar, Wait};
pub use segment::RecoveryReport;
pub use vfs::{Mapping, Open, OsVfs, VFile, Vfs};
