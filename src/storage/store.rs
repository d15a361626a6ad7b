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
//!
//! With `io = "direct"` the writer copies batches into block-aligned chunks
//! (see `cache`) and writes whole 4096-byte blocks with `O_DIRECT` through a
//! second descriptor; the last block is zero-padded on disk until the next
//! write replaces it whole, so the file can be up to 4095 bytes longer than
//! the store's data. Sealing a segment cuts the padding off, and recovery
//! drops a trailing run of fewer than 4096 zero bytes silently (it is the
//! padding of the last write, not a torn batch). Readers try the chunks
//! first and read the file where the chunks no longer reach.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::cache::{self, Chunk, StoreChunks, TailCache, MAX_CHUNK, MIN_CHUNK};
use super::config::IoMode;
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
    /// A direct writer's chunks, which reads try first.
    chunks: OnceLock<Arc<StoreChunks>>,
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
            chunks: OnceLock::new(),
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
        if let Some(bytes) = self.cached(pos, len) {
            return Ok(bytes);
        }
        self.file
            .read_at(pos, len)
            .map_err(|e| StorageError::io("read", &self.path, e))
    }

    /// `read_at`, or with [`Wait::No`] [`StorageError::WouldBlock`] where
    /// the bytes are not all in the page cache.
    pub fn read_with(&self, pos: u64, len: usize, wait: Wait) -> Result<Vec<u8>> {
        match wait {
            // `read_at` tries the chunks first.
            Wait::Yes => self.read_at(pos, len),
            Wait::No => {
                if let Some(bytes) = self.cached(pos, len) {
                    return Ok(bytes);
                }
                match self.file.read_at_nowait(pos, len) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(StorageError::WouldBlock),
                    Err(e) => Err(StorageError::io("read", &self.path, e)),
                }
            }
        }
    }

    /// The bytes `[pos, pos + len)` from a direct writer's chunks, if they
    /// still hold all of them.
    fn cached(&self, pos: u64, len: usize) -> Option<Vec<u8>> {
        self.chunks.get()?.read(pos, len)
    }

    /// A writer appending at `end`. Only one may exist at a time. A direct
    /// writer registers its chunks with `cache`; on a file system without
    /// `O_DIRECT` it writes the same aligned blocks through the ordinary
    /// descriptor.
    pub fn writer(
        &self,
        vfs: &dyn Vfs,
        end: u64,
        io: IoMode,
        cache: Option<&TailCache>,
    ) -> Result<StoreWriter> {
        match io {
            IoMode::Buffered => Ok(StoreWriter::Buffered(BufferedWriter {
                path: self.path.clone(),
                file: Arc::clone(&self.file),
                buffer: Vec::with_capacity(WRITE_BUFFER),
                flushed: end,
                written_back: end,
            })),
            IoMode::Direct => {
                let out = vfs
                    .open_direct(&self.path)
                    .map_err(|e| StorageError::io("open (O_DIRECT)", &self.path, e))?
                    .unwrap_or_else(|| Arc::clone(&self.file));
                let chunks =
                    Arc::clone(self.chunks.get_or_init(|| StoreChunks::new(cache.cloned())));
                // The block the data ends in is written again, whole, by the
                // first flush: its head comes from the file.
                let start = cache::round_down(end);
                let chunk = Arc::new(Chunk::new(start, MIN_CHUNK));
                if end > start {
                    let head = self
                        .file
                        .read_at(start, (end - start) as usize)
                        .map_err(|e| StorageError::io("read", &self.path, e))?;
                    // SAFETY: a chunk no one else has seen yet.
                    unsafe { chunk.fill(0, &head) };
                }
                chunks.add(&chunk);
                Ok(StoreWriter::Direct(DirectWriter {
                    path: self.path.clone(),
                    file: Arc::clone(&self.file),
                    out,
                    chunks,
                    chunk,
                    end,
                    flushed: end,
                }))
            }
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
pub(crate) enum StoreWriter {
    Buffered(BufferedWriter),
    Direct(DirectWriter),
}

impl StoreWriter {
    /// Bytes written so far (buffered ones included).
    pub fn end(&self) -> u64 {
        match self {
            StoreWriter::Buffered(w) => w.end(),
            StoreWriter::Direct(w) => w.end,
        }
    }

    /// Buffers `bytes` after what was written; returns their position. Call
    /// [`StoreWriter::flush`] before publishing them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<u64> {
        match self {
            StoreWriter::Buffered(w) => w.write(bytes),
            StoreWriter::Direct(w) => w.write(bytes),
        }
    }

    /// Hands everything written to the kernel (with `O_DIRECT`, to the
    /// device).
    pub fn flush(&mut self) -> Result<()> {
        match self {
            StoreWriter::Buffered(w) => w.flush(),
            StoreWriter::Direct(w) => w.flush(),
        }
    }
}

/// A writer through the page cache.
pub(crate) struct BufferedWriter {
    path: PathBuf,
    file: Arc<dyn VFile>,
    /// Bytes written after `flushed`, not yet handed to the kernel.
    buffer: Vec<u8>,
    /// Bytes known to be in the kernel.
    flushed: u64,
    /// Bytes whose writeback has been started.
    written_back: u64,
}

impl BufferedWriter {
    fn end(&self) -> u64 {
        self.flushed + self.buffer.len() as u64
    }

    fn write(&mut self, bytes: &[u8]) -> Result<u64> {
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

    fn flush(&mut self) -> Result<()> {
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
        self.buffer.clear();
        self.written_back = self.written_back.min(self.flushed);
        cut_back(&*self.file, &self.path, self.flushed, cause)
    }
}

/// After a failed write, cuts the file back to `len`, its last good byte;
/// the log must fence if even that fails.
fn cut_back(file: &dyn VFile, path: &Path, len: u64, cause: io::Error) -> StorageError {
    let err = fs::classify_write_error("write", path, cause);
    match file.set_len(len) {
        Ok(()) => err,
        Err(e) => StorageError::Fenced {
            reason: format!(
                "{err}; then could not cut {} back to {len} bytes: {e}",
                path.display(),
            ),
        },
    }
}

/// A writer with `O_DIRECT`: batches are copied into aligned chunks and
/// written from there in whole blocks (see the module docs).
pub(crate) struct DirectWriter {
    path: PathBuf,
    /// The ordinary descriptor: cut back after a failed write.
    file: Arc<dyn VFile>,
    /// The `O_DIRECT` descriptor (or `file` where there is none).
    out: Arc<dyn VFile>,
    chunks: Arc<StoreChunks>,
    /// The chunk being filled; it holds every byte from its start to `end`.
    chunk: Arc<Chunk>,
    end: u64,
    /// Every byte below this is in the file.
    flushed: u64,
}

impl DirectWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<u64> {
        let pos = self.end;
        if (self.end - self.chunk.start()) as usize + bytes.len() > self.chunk.cap() {
            self.next_chunk(bytes.len())?;
        }
        let at = (self.end - self.chunk.start()) as usize;
        // SAFETY: this writer is the chunk's only writer, `at` is where it
        // is filled to, and the chunk has room (made just above).
        unsafe { self.chunk.fill(at, bytes) };
        self.end += bytes.len() as u64;
        Ok(pos)
    }

    /// Starts a chunk with room for `len` more bytes, at the block the data
    /// ends in (whose head it copies from the current one).
    fn next_chunk(&mut self, len: usize) -> Result<()> {
        self.flush()?;
        let start = cache::round_down(self.end);
        let head = (self.end - start) as usize;
        let cap = (self.chunk.cap() * 2)
            .clamp(MIN_CHUNK, MAX_CHUNK)
            .max(head + len);
        let chunk = Arc::new(Chunk::new(start, cap));
        let from = (start - self.chunk.start()) as usize;
        // SAFETY: the old chunk is no longer written (this writer is its
        // only writer and moves on), and the new one no one has seen yet.
        unsafe { chunk.fill(0, self.chunk.bytes(from, from + head)) };
        self.chunks.add(&chunk);
        self.chunk = chunk;
        Ok(())
    }

    /// Writes the blocks from the one `flushed` is in to the one `end` is
    /// in, the last zero-padded.
    fn flush(&mut self) -> Result<()> {
        if self.flushed == self.end {
            return Ok(());
        }
        let base = self.chunk.start();
        let from = cache::round_down(self.flushed);
        let to = cache::round_up(self.end);
        let (a, e, t) = (
            (from - base) as usize,
            (self.end - base) as usize,
            (to - base) as usize,
        );
        // SAFETY: only this writer writes the chunk; the padding is past
        // what is filled, where no reader reads.
        let written = unsafe {
            self.chunk.zero(e, t);
            self.out.write_at(from, self.chunk.bytes(a, t))
        };
        if let Err(cause) = written {
            // Nothing after `flushed` was published: drop it.
            self.end = self.flushed;
            // SAFETY: as above; readers never read past the published end.
            unsafe { self.chunk.unfill((self.flushed - base) as usize) };
            return Err(cut_back(&*self.file, &self.path, self.flushed, cause));
        }
        self.flushed = self.end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::vfs::OsVfs;
    use super::cache::TailCache;
    use super::*;

    #[test]
    fn append_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let store = Store::open(&OsVfs, &path, true).unwrap();
        let mut w = store.writer(&OsVfs, 0, IoMode::Buffered, None).unwrap();
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
        let mut w = store.writer(&OsVfs, 303, IoMode::Buffered, None).unwrap();
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
        let mut w = store.writer(&OsVfs, 0, IoMode::Buffered, None).unwrap();
        w.write(b"abc").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        w.flush().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3);
    }

    /// A direct writer's file, read through a store that has no chunks.
    fn file_bytes(path: &Path, len: usize) -> Vec<u8> {
        Store::open(&OsVfs, path, false)
            .unwrap()
            .read_at(0, len)
            .unwrap()
    }

    #[test]
    fn a_direct_writer_writes_whole_blocks_and_serves_reads_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let cache = TailCache::new(64 << 20);
        let store = Store::open(&OsVfs, &path, true).unwrap();
        let mut w = store
            .writer(&OsVfs, 0, IoMode::Direct, Some(&cache))
            .unwrap();
        let mut expected = Vec::new();
        // Small writes, then ones that outgrow a chunk, then one larger
        // than the largest chunk.
        let sizes = [1usize, 100, 4095, 5000, 70_000, 300_000, MAX_CHUNK + 10];
        for (i, &n) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
            assert_eq!(w.write(&bytes).unwrap(), expected.len() as u64);
            w.flush().unwrap();
            expected.extend_from_slice(&bytes);
            let len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(
                len,
                cache::round_up(expected.len() as u64),
                "padded to a block"
            );
            assert_eq!(
                file_bytes(&path, expected.len()),
                expected,
                "after write {i}"
            );
        }
        // Served from the chunks, whatever the range.
        assert_eq!(store.cached(0, expected.len()).unwrap(), expected);
        assert_eq!(store.cached(4000, 200).unwrap(), expected[4000..4200]);
        assert!(cache.used() > 0);
        drop(w);
        // Reopened at an unaligned end: the head of the last block comes
        // from the file, and the first flush writes that block whole.
        let store = Store::open(&OsVfs, &path, false).unwrap();
        let mut w = store
            .writer(&OsVfs, expected.len() as u64, IoMode::Direct, None)
            .unwrap();
        w.write(b"more").unwrap();
        w.flush().unwrap();
        expected.extend_from_slice(b"more");
        assert_eq!(file_bytes(&path, expected.len()), expected);
    }

    #[test]
    fn create_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        Store::open(&OsVfs, &path, true).unwrap();
        assert!(Store::open(&OsVfs, &path, true).is_err());
    }
}
