//! The store: a segment's batches, back to back, in one file.
//!
//! # Layout
//!
//! The file is the concatenation of batches in the format of
//! [`batch`](crate::batch), with nothing between them and no file header.
//! Batch `k` starts where batch `k - 1` ends; the index records each start.
//!
//! Appends go through a buffer that is flushed (`pwrite`) before an append
//! returns, so an appended batch has reached the kernel. Reads are positional
//! (`pread`), so they never wait for the writer.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Result, StorageError};
use super::fs;
use super::log::Wait;
use super::vfs::{Open, VFile, Vfs};

/// Bytes the writer buffers before they go to the kernel; a batch larger
/// than this is written directly.
const WRITE_BUFFER: usize = 64 * 1024;
/// After this many bytes, the writer asks the kernel to start writing them
/// back (without waiting), so that dirty pages never pile up: the fsync that
/// seals a segment, or a commit, then has little left to do.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// A store file, shared by its readers and its one writer.
pub(crate) struct Store {
    path: PathBuf,
    file: Arc<dyn VFile>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if asked) a store file.
    pub fn open(vfs: &dyn Vfs, path: &Path, create: bool) -> Result<Store> {
        let (how, op) = if create {
            (Open::CreateNew, "create")
        } else {
            (Open::ReadWrite, "open")
        };
        let file = vfs
            .open(path, how)
            .map_err(|e| StorageError::io(op, path, e))?;
        Ok(Store {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `to` (before anyone else holds the store).
    pub fn rename(&mut self, vfs: &dyn Vfs, to: PathBuf) -> Result<()> {
        vfs.rename(&self.path, &to)
            .map_err(|e| StorageError::io("rename", &self.path, e))?;
        self.path = to;
        Ok(())
    }

    /// Size of the file (not the published end of the segment).
    pub fn file_len(&self) -> Result<u64> {
        self.file
            .size()
            .map_err(|e| StorageError::io("stat", &self.path, e))
    }

    /// Reads exactly `len` bytes at `pos`.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        self.file
            .read_at(pos, len)
            .map_err(|e| StorageError::io("read", &self.path, e))
    }

    /// `read_at`, or with [`Wait::No`] [`StorageError::WouldBlock`] where
    /// the bytes are not all in the page cache.
    pub fn read_with(&self, pos: u64, len: usize, wait: Wait) -> Result<Vec<u8>> {
        match wait {
            Wait::Yes => self.read_at(pos, len),
            Wait::No => match self.file.read_at_nowait(pos, len) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(StorageError::WouldBlock),
                Err(e) => Err(StorageError::io("read", &self.path, e)),
            },
        }
    }

    /// A writer appending at `end`. Only one may exist at a time.
    pub fn writer(&self, end: u64) -> StoreWriter {
        StoreWriter {
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            buffer: Vec::with_capacity(WRITE_BUFFER),
            flushed: end,
            written_back: end,
        }
    }

    /// fdatasync: makes every byte written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync", &self.path, e))
    }

    /// Cuts the file to `len` bytes (recovery only).
    pub fn truncate(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| StorageError::io("truncate", &self.path, e))
    }
}

/// The append side of a store.
pub(crate) struct StoreWriter {
    path: PathBuf,
    file: Arc<dyn VFile>,
    /// Bytes written after `flushed`, not yet handed to the kernel.
    buffer: Vec<u8>,
    /// Bytes known to be in the kernel.
    flushed: u64,
    /// Bytes whose writeback has been started.
    written_back: u64,
}

impl StoreWriter {
    /// Bytes written so far (buffered ones included).
    pub fn end(&self) -> u64 {
        self.flushed + self.buffer.len() as u64
    }

    /// Buffers `bytes` after what was written; returns their position. Call
    /// [`StoreWriter::flush`] before publishing them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<u64> {
        let pos = self.end();
        if self.buffer.len() + bytes.len() <= WRITE_BUFFER {
            self.buffer.extend_from_slice(bytes);
            return Ok(pos);
        }
        // Too big to buffer: what is buffered goes first, then this, directly.
        self.flush()?;
        if let Err(e) = self.file.write_at(self.flushed, bytes) {
            return Err(self.roll_back(e));
        }
        self.flushed += bytes.len() as u64;
        Ok(pos)
    }

    /// Hands everything written to the kernel.
    pub fn flush(&mut self) -> Result<()> {
        if !self.buffer.is_empty() {
            if let Err(e) = self.file.write_at(self.flushed, &self.buffer) {
                return Err(self.roll_back(e));
            }
            self.flushed += self.buffer.len() as u64;
            self.buffer.clear();
        }
        if self.flushed - self.written_back >= WRITEBACK_CHUNK {
            self.file
                .start_writeback(self.written_back, self.flushed - self.written_back);
            self.written_back = self.flushed;
        }
        Ok(())
    }

    /// After a failed write: drop the buffer and cut the file back to the
    /// last flushed byte (a short write may have left part of a batch), so
    /// that a later append does not land after a hole or a partial batch.
    /// If the file cannot be cut back, the log must fence.
    fn roll_back(&mut self, cause: io::Error) -> StorageError {
        let err = fs::classify_write_error("write", &self.path, cause);
        self.buffer.clear();
        self.written_back = self.written_back.min(self.flushed);
        match self.file.set_len(self.flushed) {
            Ok(()) => err,
            Err(e) => StorageError::Fenced {
                reason: format!(
                    "{err}; then could not cut {} back to {} bytes: {e}",
                    self.path.display(),
                    self.flushed
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vfs::OsVfs;
    use super::*;

    #[test]
    fn append_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let store = Store::open(&OsVfs, &path, true).unwrap();
        let mut w = store.writer(0);
        let mut positions = Vec::new();
        for i in 0..3u8 {
            let record = vec![i; 100 + i as usize];
            positions.push(w.write(&record).unwrap());
            w.flush().unwrap();
            // Flushed means the kernel has it: another descriptor sees it.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), w.end());
        }
        assert_eq!(positions, vec![0, 100, 201]);
        assert_eq!(store.read_at(100, 101).unwrap(), vec![1u8; 101]);
        drop(w);
        drop(store);

        let store = Store::open(&OsVfs, &path, false).unwrap();
        assert_eq!(store.file_len().unwrap(), 303);
        assert_eq!(store.read_at(201, 102).unwrap(), vec![2u8; 102]);
        assert!(
            store.read_at(300, 10).is_err(),
            "read past the end must fail"
        );
        let mut w = store.writer(303);
        assert_eq!(w.write(b"tail").unwrap(), 303);
        w.flush().unwrap();
        assert_eq!(store.read_at(303, 4).unwrap(), b"tail");
        // A write larger than the buffer goes straight through, in order.
        let big = vec![9u8; WRITE_BUFFER + 1];
        w.write(b"small").unwrap();
        assert_eq!(w.write(&big).unwrap(), 312);
        w.flush().unwrap();
        assert_eq!(store.read_at(307, 5).unwrap(), b"small");
        assert_eq!(store.read_at(312, big.len()).unwrap(), big);
    }

    #[test]
    fn buffered_bytes_are_not_in_the_file_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let store = Store::open(&OsVfs, &path, true).unwrap();
        let mut w = store.writer(0);
        w.write(b"abc").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        w.flush().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3);
    }

    #[test]
    fn create_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        Store::open(&OsVfs, &path, true).unwrap();
        assert!(Store::open(&OsVfs, &path, true).is_err());
    }
}
