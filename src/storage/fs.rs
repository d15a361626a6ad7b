//! File-system helpers: segment file names, pre-allocation, directory sync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};

pub(crate) const STORE_EXT: &str = "store";
pub(crate) const INDEX_EXT: &str = "index";
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";
/// Bytes cut off a torn tail at recovery, kept for inspection.
pub(crate) const TORN_EXT: &str = "torn";

/// `00000000000000004096.store`: the base offset, zero-padded to 20 digits so
/// that a directory listing sorts segments in log order.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// The base offset and extension of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| StorageError::io("stat", path, e))
}

/// Makes `file` at least `len` bytes long with real blocks behind every byte,
/// so that writing through a mapping never faults on a full disk.
pub(crate) fn allocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let current = file_len(file, path)?;
    if current >= len {
        return Ok(());
    }
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOSPC) {
        return Err(StorageError::DiskFull {
            path: path.to_owned(),
        });
    }
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(StorageError::io("fallocate", path, err));
    }
    // The file system cannot pre-allocate: write zeros, which allocates too.
    let mut writer = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut remaining = len - current;
    while remaining > 0 {
        let n = remaining.min(zeros.len() as u64) as usize;
        writer
            .write_all(&zeros[..n])
            .map_err(|e| classify_write_error("extend", path, e))?;
        remaining -= n as u64;
    }
    Ok(())
}

/// Maps ENOSPC to [`StorageError::DiskFull`], anything else to `Io`.
pub(crate) fn classify_write_error(op: &'static str, path: &Path, err: io::Error) -> StorageError {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        StorageError::DiskFull {
            path: path.to_owned(),
        }
    } else {
        StorageError::io(op, path, err)
    }
}

/// fsyncs a directory, making the creation, rename or removal of its entries
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| StorageError::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Removes a file; a file already gone is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let dir = Path::new("/d");
        let p = segment_path(dir, 4096, STORE_EXT);
        assert_eq!(p, Path::new("/d/00000000000000004096.store"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some((4096, "store")));
        assert_eq!(
            parse_segment_name("18446744073709551615.index"),
            Some((u64::MAX, "index"))
        );
        assert_eq!(parse_segment_name("99999999999999999999.index"), None);
        assert_eq!(parse_segment_name("4096.store"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.store"), None);
        assert!(segment_path(dir, 9, "store") < segment_path(dir, 10, "store"));
    }

    #[test]
    fn allocate_makes_real_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        allocate(&file, &path, 1 << 20).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 1 << 20, "file is sparse");
        // Never shrinks.
        allocate(&file, &path, 10).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    }
}
