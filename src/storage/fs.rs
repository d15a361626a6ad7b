//! File-system helpers: segment file names, error mapping, and the few
//! operations the log wraps with its own error type.

use std::io;
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};
use super::vfs::Vfs;

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
pub(crate) fn sync_dir(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    vfs.sync_dir(dir)
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Removes a file; a file already gone is fine.
pub(crate) fn remove_file(vfs: &dyn Vfs, path: &Path) -> Result<()> {
    match vfs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::vfs::{Open, OsVfs};
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
    fn a_no_wait_read_of_cached_bytes_returns_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OsVfs.open(&path, Open::CreateNew).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        file.write_at(0, &data).unwrap();
        // Just written: in the page cache.
        let read = file.read_at_nowait(10, 90_000).unwrap();
        assert_eq!(read.as_deref(), Some(&data[10..90_010]));
        // Past the end is never served as bytes.
        assert_eq!(file.read_at_nowait(99_990, 100).unwrap(), None);
    }

    #[test]
    fn allocate_makes_real_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OsVfs.open(&path, Open::CreateNew).unwrap();
        file.allocate(1 << 20).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 1 << 20, "file is sparse");
        // Never shrinks.
        file.allocate(10).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    }
}
