//! Producer ids for InitProducerId: handed out in blocks, each block's end
//! made durable before its first id is, so that no id is given twice, even
//! across a crash (a restart skips what is left of the block in use).
//!
//! # File (`<data_dir>/producer.ids`)
//!
//! One line of ASCII: the decimal id at which the next block starts, then
//! `\n`. Absent at the first start (ids start at 0). Replaced as a whole:
//! written to `producer.ids.tmp`, fsynced, renamed, directory fsynced.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ids reserved by each write of the file.
const BLOCK: i64 = 1000;

pub struct ProducerIds {
    dir: PathBuf,
    /// (next id to hand out, end of the reserved block)
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// Reads where the next block starts; reserves nothing yet.
    pub fn open(data_dir: &Path) -> io::Result<ProducerIds> {
        let path = data_dir.join(FILE);
        let start = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {text:?} is not a producer id", path.display()),
                    )
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(ProducerIds {
            dir: data_dir.to_owned(),
            state: Mutex::new((start, start)),
        })
    }

    /// A new producer id. Blocking: every `BLOCK` ids it writes and syncs
    /// the file.
    pub fn next(&self) -> io::Result<i64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (next, end) = *state;
        if next == end {
            let new_end = end
                .checked_add(BLOCK)
                .ok_or_else(|| io::Error::other("producer ids are used up"))?;
            write_durably(&self.dir, FILE, format!("{new_end}\n").as_bytes())?;
            state.1 = new_end;
        }
        state.0 = next + 1;
        Ok(next)
    }
}

const FILE: &str = "producer.ids";

/// Replaces `dir/name` with `contents`: tmp file, fsync, rename, directory
/// fsync. A crash leaves the old file or the new one.
pub fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, contents)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_handed_out_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..5).map(|_| ids.next().unwrap()).collect();
        assert_eq!(first, [0, 1, 2, 3, 4]);
        drop(ids);
        // A restart (or a crash) skips the rest of the block.
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.next().unwrap(), BLOCK);
        for _ in 0..BLOCK {
            ids.next().unwrap();
        }
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.next().unwrap(), 3 * BLOCK);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let e = ProducerIds::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("producer.ids"), "{e}");
    }
}
