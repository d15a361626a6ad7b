//! The file-system operations the log uses, behind a trait.
//!
//! [`OsVfs`] is the real thing: `std::fs`, `pread`/`pwrite`, `fallocate`,
//! `fdatasync` and `memmap2`. Tests run the same log on a simulated disk
//! (`tests/common/sim.rs`) that, on a simulated power cut, keeps, drops,
//! tears or garbles every write no sync covered, and that can fail any chosen
//! operation, in the manner of SQLite's crash-test VFS.
//!
//! The contract is what Linux promises and nothing more: data written is
//! durable only after `sync_data` (or `sync_all`) on its file returns Ok; a
//! created, renamed or removed directory entry only after `sync_dir` on its
//! directory returns Ok; a failed sync may have lost any unsynced write.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create it; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading.
    ReadOnly,
}

/// A file system.
pub trait Vfs: Send + Sync + std::fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn VFile>>;
    /// A second descriptor of an existing file for `O_DIRECT` writes (of
    /// 4096-aligned memory, positions and lengths); `Ok(None)` where the
    /// file system has no direct I/O, and the caller writes the same blocks
    /// through its ordinary descriptor. Reads, syncs and truncation stay on
    /// the ordinary one.
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn VFile>>> {
        let _ = path;
        Ok(None)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file or a directory, replacing nothing: atomic, and durable
    /// once the new name's directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames a file over `to`, which may exist: after a crash `to` holds
    /// the old file or the new one, whole (the new one for sure once `to`'s
    /// directory is synced).
    fn replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the creation, renaming and removal of `dir`'s entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (creating it), held until the guard
    /// is dropped; `Ok(None)` if someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;
}

/// An open file. Positional reads and writes only: no cursor.
pub trait VFile: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads exactly `len` bytes at `pos`.
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Like `read_at`, but only if every byte can be read without waiting
    /// for the device (all in the page cache); `Ok(None)` otherwise. A file
    /// that cannot tell reads as `read_at` does.
    fn read_at_nowait(&self, pos: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        self.read_at(pos, len).map(Some)
    }
    /// Writes all of `data` at `pos`.
    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file at least `len` bytes long with real blocks behind
    /// every byte (never sparse: a mapping of a sparse file faults on a full
    /// disk).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// fdatasync: the data and the size are durable when this returns Ok.
    fn sync_data(&self) -> io::Result<()>;
    /// Asks for writeback of `[from, from + len)` to start, without waiting.
    /// A hint: durability still comes only from `sync_data`.
    fn start_writeback(&self, from: u64, len: u64) {
        let _ = (from, len);
    }
    /// Maps the first `len` bytes (the file must be at least that long).
    /// Writes through a writable mapping reach the file; they are durable
    /// after `sync_data`.
    fn map(&self, len: usize, writable: bool) -> io::Result<Box<dyn Mapping>>;
}

/// A memory mapping of (part of) a file.
pub trait Mapping: Send + Sync {
    /// The first byte; valid for `size()` bytes while the mapping lives.
    fn ptr(&self) -> *mut u8;
    fn size(&self) -> usize;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsVfs;

impl OsVfs {
    pub fn shared() -> Arc<dyn Vfs> {
        Arc::new(OsVfs)
    }
}

impl Vfs for OsVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn VFile>> {
        let mut options = OpenOptions::new();
        match how {
            Open::CreateNew => options.read(true).write(true).create_new(true),
            Open::ReadWrite => options.read(true).write(true),
            Open::ReadOnly => options.read(true),
        };
        Ok(Arc::new(OsFile {
            file: options.open(path)?,
        }))
    }

    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn VFile>>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Ok(Some(Arc::new(OsFile { file }))),
            // tmpfs and some others refuse O_DIRECT: write through the
            // ordinary descriptor instead (same blocks, page cache).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(path = %path.display(), "the file system refuses O_DIRECT: io = \"direct\" writes through the page cache");
                });
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        std::fs::rename(from, to)
    }

    fn replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

struct OsFile {
    file: File,
}

impl VFile for OsFile {
    fn size(&self) -> io::Result<u64> {
        self.file.metadata().map(|m| m.len())
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        // Into an uninitialised buffer: zeroing it first would cost as much
        // as the page-cache copy itself.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let mut filled = 0;
        while filled < len {
            // SAFETY: the destination is the unfilled part of `buf`'s
            // allocation, `len - filled` bytes long; pread writes at most that.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
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
                let msg = format!("file ends before byte {}", pos + len as u64);
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
            filled += n as usize;
        }
        // SAFETY: pread initialised all `len` bytes.
        unsafe { buf.set_len(len) };
        Ok(buf)
    }

    fn read_at_nowait(&self, pos: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        // SAFETY: one iovec over `buf`'s spare capacity, `len` bytes long;
        // preadv2 writes at most that.
        let n = unsafe {
            libc::preadv2(
                self.file.as_raw_fd(),
                &iov,
                1,
                pos as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                // A kernel or file system without RWF_NOWAIT: read as always.
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    self.read_at(pos, len).map(Some)
                }
                _ => Err(err),
            };
        }
        if (n as usize) < len {
            // Part of it is not cached (or the file is shorter): let the
            // caller read it all where waiting is fine.
            return Ok(None);
        }
        // SAFETY: preadv2 initialised all `len` bytes.
        unsafe { buf.set_len(len) };
        Ok(Some(buf))
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, pos)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let current = self.size()?;
        if current >= len {
            return Ok(());
        }
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
        // The file system cannot pre-allocate: write zeros, which allocates too.
        let zeros = vec![0u8; 64 * 1024];
        let mut at = current;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.write_at(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, from: u64, len: u64) {
        // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    fn map(&self, len: usize, writable: bool) -> io::Result<Box<dyn Mapping>> {
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if writable {
            options.map_raw(&self.file)?
        } else {
            options.map_raw_read_only(&self.file)?
        };
        Ok(Box::new(OsMapping(map)))
    }
}

struct OsMapping(MmapRaw);

impl Mapping for OsMapping {
    fn ptr(&self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    fn size(&self) -> usize {
        self.0.len()
    }
}
