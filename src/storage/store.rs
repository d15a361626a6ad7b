//! The store: a segment's batches, back to back, in one file.
//!
//! # Layout
//!
//! The file is the concatenation of batches in the format of
//! [`batch`](crate::batch), with nothing between them and no file header.
//! Batch `k` starts where batch `k - 1` ends; the index records each start.
//!
//! Appends go through a buffered writer that is flushed before an append
//! returns, so an appended batch has reached the kernel. Reads are positional
//! (`pread`) on a shared descriptor, so they never move the writer's cursor
//! and never wait for it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};
use super::fs;

/// Bytes the writer buffers before a write reaches the kernel; a batch
/// larger than this bypasses the buffer.
const WRITE_BUFFER: usize = 64 * 1024;
/// After this many bytes, the writer asks the kernel to start writing them
/// back (without waiting), so that dirty pages never pile up: the fsync that
/// seals a segment, or a power-cut-safe commit, then has little left to do.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// The read side of a store file, shared by readers.
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    file: File,
}

impl Store {
    /// Opens (creating if asked) a store file.
    pub fn open(path: &Path, create: bool) -> Result<Store> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)
            .map_err(|e| StorageError::io(if create { "create" } else { "open" }, path, e))?;
        Ok(Store {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file on disk (not the published end of the segment).
    pub fn file_len(&self) -> Result<u64> {
        fs::file_len(&self.file, &self.path)
    }

    /// Reads exactly `len` bytes at `pos`.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        read_exact_at(&self.file, pos, len).map_err(|e| StorageError::io("read", &self.path, e))
    }

    /// A writer appending at `end`. Only one may exist at a time.
    pub fn writer(&self, end: u64) -> Result<StoreWriter> {
        let mut file = self
            .file
            .try_clone()
            .map_err(|e| StorageError::io("dup", &self.path, e))?;
        file.seek(SeekFrom::Start(end))
            .map_err(|e| StorageError::io("seek", &self.path, e))?;
        Ok(StoreWriter {
            path: self.path.clone(),
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            flushed: end,
            end,
            written_back: end,
        })
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

/// Reads exactly `len` bytes at `pos` into a fresh buffer, without zeroing it
/// first (the zeroing costs as much as a page-cache copy of the same size).
fn read_exact_at(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        // SAFETY: the destination is the unfilled part of `buf`'s allocation,
        // `len - filled` bytes long; pread writes at most that many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                (pos + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ends before byte {}", pos + len as u64),
            ));
        }
        filled += n as usize;
    }
    // SAFETY: pread initialised all `len` bytes.
    unsafe { buf.set_len(len) };
    Ok(buf)
}

/// The append side of a store.
#[derive(Debug)]
pub(crate) struct StoreWriter {
    path: PathBuf,
    /// `None` only transiently while a failed write is rolled back.
    writer: Option<BufWriter<File>>,
    /// Bytes known to be in the kernel.
    flushed: u64,
    /// Bytes written, including what is still buffered.
    end: u64,
    /// Bytes whose writeback has been started.
    written_back: u64,
}

impl StoreWriter {
    /// Bytes written so far (buffered ones included).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Buffers `bytes` after what was written; returns their position.
    /// Call [`StoreWriter::flush`] before publishing them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<u64> {
        let pos = self.end;
        let writer = self.writer.as_mut().ok_or(StorageError::Closed)?;
        if let Err(e) = writer.write_all(bytes) {
            return Err(self.roll_back(e));
        }
        self.end += bytes.len() as u64;
        Ok(pos)
    }

    /// Hands everything written to the kernel.
    pub fn flush(&mut self) -> Result<()> {
        let writer = self.writer.as_mut().ok_or(StorageError::Closed)?;
        if let Err(e) = writer.flush() {
            return Err(self.roll_back(e));
        }
        self.flushed = self.end;
        if self.flushed - self.written_back >= WRITEBACK_CHUNK {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts writeback of the bytes flushed since the last call
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: it queues the I/O and
    /// returns). A hint only: durability still comes from fdatasync, and a
    /// failure here is left for that fdatasync to report.
    fn start_writeback(&mut self) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        let (from, len) = (self.written_back, self.flushed - self.written_back);
        // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
        unsafe {
            libc::sync_file_range(
                writer.get_ref().as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.written_back = self.flushed;
    }

    /// After a failed write: forget the buffer (dropping a BufWriter would
    /// flush it), cut the file back to the last flushed byte and resume from
    /// there, so a later append does not land after a hole or a partial batch.
    /// If the file cannot be cut back the writer is gone and the log fences.
    fn roll_back(&mut self, cause: io::Error) -> StorageError {
        let err = fs::classify_write_error("write", &self.path, cause);
        let Some(writer) = self.writer.take() else {
            return err;
        };
        let (mut file, _unwritten) = writer.into_parts();
        let restored = file
            .set_len(self.flushed)
            .and_then(|()| file.seek(SeekFrom::Start(self.flushed)).map(drop));
        match restored {
            Ok(()) => {
                self.writer = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
                self.end = self.flushed;
                self.written_back = self.written_back.min(self.flushed);
                err
            }
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
    use super::*;

    #[test]
    fn append_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let store = Store::open(&path, true).unwrap();
        let mut w = store.writer(0).unwrap();
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

        let store = Store::open(&path, false).unwrap();
        assert_eq!(store.file_len().unwrap(), 303);
        assert_eq!(store.read_at(201, 102).unwrap(), vec![2u8; 102]);
        assert!(
            store.read_at(300, 10).is_err(),
            "read past the end must fail"
        );
        let mut w = store.writer(303).unwrap();
        assert_eq!(w.write(b"tail").unwrap(), 303);
        w.flush().unwrap();
        assert_eq!(store.read_at(303, 4).unwrap(), b"tail");
    }

    #[test]
    fn buffered_bytes_are_not_in_the_file_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let store = Store::open(&path, true).unwrap();
        let mut w = store.writer(0).unwrap();
        w.write(b"abc").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        w.flush().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3);
    }

    #[test]
    fn create_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        Store::open(&path, true).unwrap();
        assert!(Store::open(&path, true).is_err());
    }
}
