//! Consumer groups' committed offsets, kept in one append-only file that is
//! replayed at open and rewritten when it grows well past what is live (as
//! Kafka's `__consumer_offsets`, compacted, but a file of Spool's own: it
//! holds nothing a client can read as a topic).
//!
//! Each change is one frame, written with one `write` and, when the store
//! syncs, one `fdatasync` before the call returns: a change is wholly in
//! the file or not at all. At open, frames are read in order until the end
//! or the first frame that is incomplete or fails its CRC (a torn tail: the
//! write that a crash interrupted, never acknowledged); the file is cut
//! there. A rewrite goes to `offsets.tmp`, is synced, and replaces the file
//! by rename, so a crash leaves the old file or the new one, whole.
//!
//! # File (`committed.offsets`), big-endian
//!
//! ```text
//! 0   4  magic "SPGO"
//! 4   2  version (1)
//! 6   .. frames, each:
//!        4  n: bytes after the CRC
//!        4  crc32c of those n bytes
//!        1  kind: 1 commit, 2 delete offsets, 3 delete group
//!        2  group name length, then the name (UTF-8)
//!        4  k: entries, each:
//!           2  topic length, topic      4  partition
//!           (commit only:)
//!           8  offset   4  leader epoch (-1: none)   8  commit time (ms)
//!           4  metadata length, then the metadata (UTF-8)
//! ```
//!
//! A commit sets each entry's offset; a delete of offsets removes the
//! entries named (their offsets fields absent); a delete of a group has no
//! entries and removes all of the group's.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::{Result, StorageError};
use super::vfs::{Open, VFile, Vfs};

/// The store's file in the data directory.
pub const FILE_NAME: &str = "committed.offsets";
const TMP_NAME: &str = "offsets.tmp";
const MAGIC: &[u8; 4] = b"SPGO";
const VERSION: u16 = 1;
const HEADER: u64 = 6;
/// The file is rewritten once it is this much larger than it was after the
/// last rewrite (or at open), and larger than `REWRITE_FLOOR`.
const REWRITE_FACTOR: u64 = 4;
const REWRITE_FLOOR: u64 = 1 << 20;

const COMMIT: u8 = 1;
const DELETE_OFFSETS: u8 = 2;
const DELETE_GROUP: u8 = 3;

/// What a group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    /// The leader epoch the client gave (-1 for none), returned as given.
    pub leader_epoch: i32,
    /// The client's metadata string, returned as given.
    pub metadata: String,
    /// When the broker took the commit (ms since the Unix epoch).
    pub commit_ms: i64,
}

/// A group's offsets by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, u32), Committed>;

/// What [`OffsetStore::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub frames: u64,
    /// Bytes of a torn tail cut from the end of the file.
    pub cut_bytes: u64,
}

/// Every group's committed offsets.
pub type AllOffsets = BTreeMap<String, GroupOffsets>;

/// The committed offsets of every group, and the file that keeps them.
/// Changes are serialised by the writer's lock, held across their write
/// and sync; readers take only the offsets' lock, which a change holds
/// just to apply itself once it is in the file, so no read waits for a
/// write or a sync.
pub struct OffsetStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    sync: bool,
    writer: Mutex<Writer>,
    groups: Mutex<AllOffsets>,
}

/// The file, where it ends, and when it is next rewritten.
struct Writer {
    file: Arc<dyn VFile>,
    len: u64,
    /// The file is rewritten when it passes this size.
    rewrite_at: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("dir", &self.dir)
            .field("len", &lock(&self.writer).len)
            .field("groups", &lock(&self.groups).len())
            .finish()
    }
}

impl OffsetStore {
    /// Opens (or creates) the store in `dir`, replaying its file. With
    /// `sync`, every change is synced before it returns.
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path, sync: bool) -> Result<(OffsetStore, Replayed)> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(TMP_NAME);
        let io_err = |op, e| StorageError::io(op, &path, e);
        // A rewrite that did not finish: the file it was to replace is whole.
        if vfs.exists(&tmp) {
            vfs.remove_file(&tmp).map_err(|e| io_err("remove", e))?;
        }
        if !vfs.exists(&path) {
            write_new(&*vfs, &tmp, &path, &[]).map_err(|e| io_err("create", e))?;
            vfs.sync_dir(dir)
                .map_err(|e| io_err("sync directory of", e))?;
        }
        let file = vfs
            .open(&path, Open::ReadWrite)
            .map_err(|e| io_err("open", e))?;
        let size = file.size().map_err(|e| io_err("size", e))?;
        let bytes = file
            .read_at(0, size as usize)
            .map_err(|e| io_err("read", e))?;
        if bytes.len() < HEADER as usize || &bytes[..4] != MAGIC {
            return Err(StorageError::BadLayout {
                path,
                reason: "not a committed-offsets file (no SPGO header)".into(),
            });
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(StorageError::BadLayout {
                path,
                reason: format!(
                    "committed-offsets file version {version}, this broker reads {VERSION}"
                ),
            });
        }
        let mut groups = BTreeMap::new();
        let mut at = HEADER as usize;
        let mut replayed = Replayed::default();
        while let Some((body, next)) = frame_at(&bytes, at) {
            match Change::decode(body) {
                Some(change) => change.apply(&mut groups),
                // A frame whose CRC holds but which does not parse was
                // written by something else: refuse rather than guess.
                None => {
                    return Err(StorageError::BadLayout {
                        path,
                        reason: format!("a committed-offsets frame at byte {at} does not parse"),
                    })
                }
            }
            replayed.frames += 1;
            at = next;
        }
        if at < bytes.len() {
            replayed.cut_bytes = (bytes.len() - at) as u64;
            file.set_len(at as u64).map_err(|e| io_err("cut", e))?;
            file.sync_data().map_err(|e| io_err("sync", e))?;
        }
        let store = OffsetStore {
            vfs,
            dir: dir.to_owned(),
            sync,
            writer: Mutex::new(Writer {
                file,
                len: at as u64,
                rewrite_at: REWRITE_FLOOR.max(REWRITE_FACTOR * at as u64),
            }),
            groups: Mutex::new(groups),
        };
        Ok((store, replayed))
    }

    /// `f` of every group's offsets (groups with at least one, by name).
    pub fn read<R>(&self, f: impl FnOnce(&AllOffsets) -> R) -> R {
        f(&lock(&self.groups))
    }

    /// A copy of the offsets `group` has committed, if any.
    pub fn group(&self, group: &str) -> Option<GroupOffsets> {
        self.read(|all| all.get(group).cloned())
    }

    /// Records `offsets` for `group`, durably (see [`OffsetStore::open`]).
    pub fn commit(&self, group: &str, offsets: Vec<(String, u32, Committed)>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.change(Change::Commit(group.to_owned(), offsets))
    }

    /// Forgets `group`'s offsets of these partitions.
    pub fn delete(&self, group: &str, partitions: Vec<(String, u32)>) -> Result<()> {
        let known = self.read(|all| {
            all.get(group).is_some_and(|offsets| {
                partitions
                    .iter()
                    .any(|(t, p)| offsets.contains_key(&(t.clone(), *p)))
            })
        });
        if !known {
            return Ok(());
        }
        self.change(Change::Delete(group.to_owned(), partitions))
    }

    /// Forgets every offset of `group`.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        if !self.read(|all| all.contains_key(group)) {
            return Ok(());
        }
        self.change(Change::DeleteGroup(group.to_owned()))
    }

    /// Syncs what was written (for a store that does not sync each change).
    pub fn sync(&self) -> Result<()> {
        lock(&self.writer)
            .file
            .sync_data()
            .map_err(|e| StorageError::io("sync", self.dir.join(FILE_NAME), e))
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        lock(&self.writer).len
    }

    fn change(&self, change: Change) -> Result<()> {
        let frame = frame(&change.encode());
        let path = self.dir.join(FILE_NAME);
        let mut w = lock(&self.writer);
        w.file
            .write_at(w.len, &frame)
            .and_then(|()| {
                if self.sync {
                    w.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| {
                // Whatever part of the frame reached the file is cut at the
                // next open (or overwritten by the next change).
                StorageError::io("write", &path, e)
            })?;
        w.len += frame.len() as u64;
        change.apply(&mut lock(&self.groups));
        // Checked against the live size only when the file has grown by the
        // factor since it was last that size, so a commit costs no scan.
        if w.len > w.rewrite_at {
            self.rewrite(&mut w)?;
            w.rewrite_at = REWRITE_FLOOR.max(REWRITE_FACTOR * w.len);
        }
        Ok(())
    }

    /// One commit frame per group: the live state.
    fn snapshot_frames(&self) -> Vec<Vec<u8>> {
        lock(&self.groups)
            .iter()
            .map(|(group, offsets)| {
                let entries = offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect();
                frame(&Change::Commit(group.clone(), entries).encode())
            })
            .collect()
    }

    /// Replaces the file with one holding only the live state.
    fn rewrite(&self, w: &mut Writer) -> Result<()> {
        let path = self.dir.join(FILE_NAME);
        let tmp = self.dir.join(TMP_NAME);
        let frames = self.snapshot_frames();
        let io_err = |e| StorageError::io("rewrite", &path, e);
        write_new(&*self.vfs, &tmp, &path, &frames).map_err(io_err)?;
        self.vfs.sync_dir(&self.dir).map_err(io_err)?;
        w.file = self.vfs.open(&path, Open::ReadWrite).map_err(io_err)?;
        w.len = w.file.size().map_err(io_err)?;
        Ok(())
    }
}

/// Writes a file of `frames` at `tmp`, syncs it, and renames it over
/// `path`; the caller syncs the directory.
fn write_new(vfs: &dyn Vfs, tmp: &Path, path: &Path, frames: &[Vec<u8>]) -> io::Result<()> {
    if vfs.exists(tmp) {
        vfs.remove_file(tmp)?;
    }
    let mut bytes =
        Vec::with_capacity(HEADER as usize + frames.iter().map(Vec::len).sum::<usize>());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_be_bytes());
    for f in frames {
        bytes.extend_from_slice(f);
    }
    let file = vfs.open(tmp, Open::CreateNew)?;
    file.write_at(0, &bytes)?;
    file.sync_data()?;
    drop(file);
    vfs.replace(tmp, path)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// The body of the frame at `at` and where the next one starts, if a whole
/// frame with a good CRC is there.
fn frame_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    // Every body has a kind, a group and a count: a shorter one (zeros, as
    // an extended but unwritten tail reads, have a good CRC) is torn.
    if n < 7 {
        return None;
    }
    let end = (at + 8).checked_add(n)?;
    let body = bytes.get(at + 8..end)?;
    (crc32c::crc32c(body) == crc).then_some((body, end))
}

enum Change {
    Commit(String, Vec<(String, u32, Committed)>),
    Delete(String, Vec<(String, u32)>),
    DeleteGroup(String),
}

impl Change {
    fn apply(self, groups: &mut BTreeMap<String, GroupOffsets>) {
        match self {
            Change::Commit(group, entries) => {
                let offsets = groups.entry(group).or_default();
                for (t, p, c) in entries {
                    offsets.insert((t, p), c);
                }
            }
            Change::Delete(group, entries) => {
                if let Some(offsets) = groups.get_mut(&group) {
                    for key in entries {
                        offsets.remove(&key);
                    }
                    if offsets.is_empty() {
                        groups.remove(&group);
                    }
                }
            }
            Change::DeleteGroup(group) => {
                groups.remove(&group);
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let string = |b: &mut Vec<u8>, s: &str, wide: bool| {
            if wide {
                b.extend_from_slice(&(s.len() as u32).to_be_bytes());
            } else {
                b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            }
            b.extend_from_slice(s.as_bytes());
        };
        let (kind, group) = match self {
            Change::Commit(g, _) => (COMMIT, g),
            Change::Delete(g, _) => (DELETE_OFFSETS, g),
            Change::DeleteGroup(g) => (DELETE_GROUP, g),
        };
        b.push(kind);
        string(&mut b, group, false);
        match self {
            Change::Commit(_, entries) => {
                b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (t, p, c) in entries {
                    string(&mut b, t, false);
                    b.extend_from_slice(&p.to_be_bytes());
                    b.extend_from_slice(&c.offset.to_be_bytes());
                    b.extend_from_slice(&c.leader_epoch.to_be_bytes());
                    b.extend_from_slice(&c.commit_ms.to_be_bytes());
                    string(&mut b, &c.metadata, true);
                }
            }
            Change::Delete(_, entries) => {
                b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (t, p) in entries {
                    string(&mut b, t, false);
                    b.extend_from_slice(&p.to_be_bytes());
                }
            }
            Change::DeleteGroup(_) => b.extend_from_slice(&0u32.to_be_bytes()),
        }
        b
    }

    fn decode(mut b: &[u8]) -> Option<Change> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (b.get(..n)?, b.get(n..)?);
            *b = rest;
            Some(head)
        }
        fn int<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
            take(b, N)?.try_into().ok()
        }
        fn string(b: &mut &[u8], wide: bool) -> Option<String> {
            let n = if wide {
                u32::from_be_bytes(int(b)?) as usize
            } else {
                u16::from_be_bytes(int(b)?) as usize
            };
            String::from_utf8(take(b, n)?.to_vec()).ok()
        }
        let kind = take(&mut b, 1)?[0];
        let group = string(&mut b, false)?;
        let count = u32::from_be_bytes(int(&mut b)?) as usize;
        // Each entry takes at least 6 bytes: no count can claim more.
        if count > b.len() / 6 {
            return None;
        }
        let change = match kind {
            COMMIT => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let topic = string(&mut b, false)?;
                    let partition = u32::from_be_bytes(int(&mut b)?);
                    let offset = i64::from_be_bytes(int(&mut b)?);
                    let leader_epoch = i32::from_be_bytes(int(&mut b)?);
                    let commit_ms = i64::from_be_bytes(int(&mut b)?);
                    let metadata = string(&mut b, true)?;
                    entries.push((
                        topic,
                        partition,
                        Committed {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_ms,
                        },
                    ));
                }
                Change::Commit(group, entries)
            }
            DELETE_OFFSETS => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let topic = string(&mut b, false)?;
                    entries.push((topic, u32::from_be_bytes(int(&mut b)?)));
                }
                Change::Delete(group, entries)
            }
            DELETE_GROUP if count == 0 => Change::DeleteGroup(group),
            _ => return None,
        };
        b.is_empty().then_some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OsVfs;

    fn c(offset: i64, metadata: &str) -> Committed {
        Committed {
            offset,
            leader_epoch: 3,
            metadata: metadata.to_owned(),
            commit_ms: 1_700_000_000_000,
        }
    }

    fn open(dir: &Path) -> (OffsetStore, Replayed) {
        OffsetStore::open(OsVfs::shared(), dir, true).unwrap()
    }

    #[test]
    fn commits_and_deletes_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, r) = open(dir.path());
        assert_eq!(r, Replayed::default());
        s.commit(
            "g",
            vec![("t".into(), 0, c(5, "m")), ("t".into(), 1, c(7, ""))],
        )
        .unwrap();
        s.commit("g", vec![("t".into(), 0, c(9, "é"))]).unwrap();
        s.commit("h", vec![("u".into(), 2, c(1, ""))]).unwrap();
        s.commit("gone", vec![("u".into(), 0, c(1, ""))]).unwrap();
        s.delete("g", vec![("t".into(), 1)]).unwrap();
        s.delete_group("gone").unwrap();
        let expect = s.read(AllOffsets::clone);
        assert_eq!(expect.len(), 2);
        assert_eq!(s.group("g").unwrap()[&("t".to_owned(), 0)], c(9, "é"));
        drop(s);
        let (s, r) = open(dir.path());
        assert_eq!(r.frames, 6);
        assert_eq!(s.read(AllOffsets::clone), expect);
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_came_before_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path());
        s.commit("g", vec![("t".into(), 0, c(5, "m"))]).unwrap();
        let whole = s.file_len();
        s.commit("g", vec![("t".into(), 0, c(6, "m"))]).unwrap();
        let end = s.file_len();
        drop(s);
        let path = dir.path().join(FILE_NAME);
        let full = std::fs::read(&path).unwrap();
        // Zeros, as a file extended by a crash may read, are torn too.
        let mut zeros = full[..whole as usize].to_vec();
        zeros.resize(end as usize, 0);
        for bytes in [
            &full[..whole as usize + 3],
            &full[..end as usize - 1],
            &zeros,
        ] {
            std::fs::write(&path, bytes).unwrap();
            let cut = bytes.len() as u64;
            let (s, r) = open(dir.path());
            assert_eq!(r.cut_bytes, cut - whole);
            assert_eq!(s.group("g").unwrap()[&("t".to_owned(), 0)].offset, 5);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        }
        // A flipped byte in the last frame is a torn tail too.
        let (s, _) = open(dir.path());
        s.commit("g", vec![("t".into(), 0, c(6, "m"))]).unwrap();
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (s, r) = open(dir.path());
        assert!(r.cut_bytes > 0);
        assert_eq!(s.group("g").unwrap()[&("t".to_owned(), 0)].offset, 5);
    }

    #[test]
    fn the_file_is_rewritten_to_its_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = OffsetStore::open(OsVfs::shared(), dir.path(), false).unwrap();
        let metadata = "x".repeat(1000);
        for i in 0..3000 {
            s.commit("g", vec![("t".into(), i % 3, c(i64::from(i), &metadata))])
                .unwrap();
            assert!(s.file_len() <= REWRITE_FLOOR + 2000, "{}", s.file_len());
        }
        drop(s);
        let (s, _) = open(dir.path());
        let g = s.group("g").unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[&("t".to_owned(), 2)].offset, 2999);
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"hello world").unwrap();
        let e = OffsetStore::open(OsVfs::shared(), dir.path(), true).unwrap_err();
        assert!(e.to_string().contains("SPGO"), "{e}");
    }

    #[test]
    fn frames_that_lie_about_their_counts_do_not_parse() {
        let mut body = Change::Commit("g".into(), vec![("t".into(), 0, c(1, ""))]).encode();
        assert!(Change::decode(&body).is_some());
        // The entry count, after kind (1) and the group (2 + 1).
        body[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Change::decode(&body).is_none());
        body.truncate(5);
        assert!(Change::decode(&body).is_none());
    }
}
