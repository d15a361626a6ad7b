//! A simulated disk for the log ([`Vfs`]), in the manner of SQLite's crash
//! VFS: files live in memory, each with the image its last sync made durable,
//! the writes since, and its current image. A simulated power cut
//! ([`SimFs::crash`]) keeps, drops, tears (to a 512-byte-sector prefix) or
//! garbles (where it changed the bytes) each write that no sync covered; changes made through a memory
//! mapping (which the kernel writes back a page at a time, when it likes)
//! are kept, dropped or garbled sector by sector. Bytes a sync covered are
//! never touched. Each directory change no directory sync covered is undone
//! or kept. Any chosen operation can be made to fail with EIO or ENOSPC, once
//! or for good ([`Fault`]).
#![allow(dead_code)]

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use spool::storage::{Mapping, Open, VFile, Vfs};

/// Bytes a disk writes atomically.
pub const SECTOR: usize = 512;

/// A small deterministic generator (SplitMix64): tests are reproducible
/// from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Kinds of operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Open,
    Read,
    Write,
    Truncate,
    Allocate,
    Sync,
    SyncDir,
    Remove,
    Map,
    List,
    Rename,
}

/// Fail the `nth` operation (counting from 1) among those of kind `op`
/// (any kind if `None`) with `errno`; with `sticky`, every later operation
/// of that kind fails too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub op: Option<Op>,
    pub nth: u64,
    pub errno: i32,
    pub sticky: bool,
}

/// A change no sync has covered yet.
#[derive(Clone)]
enum Pending {
    Write { pos: usize, bytes: Vec<u8> },
    SetLen(usize),
}

#[derive(Default)]
struct Data {
    /// Current contents (what reads see).
    current: Vec<u8>,
    /// Contents as of the last successful sync.
    durable: Vec<u8>,
    /// Changes since then, in order.
    pending: Vec<Pending>,
    /// Live mappings: the buffer must not move while any exists.
    mapped: usize,
    /// Whether it was ever mapped writable (changes then bypass `pending`).
    mapped_writes: bool,
    /// Writes a failed sync dropped: Linux marks their pages clean after a
    /// writeback error, so no later sync writes them ("fsyncgate"). Reads
    /// still see them; the disk never will.
    dropped: Vec<(usize, usize)>,
}

/// One file. Shared by the directory entry, open handles and mappings.
#[derive(Default)]
pub struct SimFile {
    data: Mutex<Data>,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contents(&self) -> Vec<u8> {
        self.lock().current.clone()
    }
}

#[derive(Default)]
struct State {
    /// Directory entries now.
    entries: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Directory entries as of each directory's last sync.
    durable_entries: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Renames no directory sync covered yet, oldest first: a power cut
    /// keeps either the old name or the new one, never both or neither.
    renames: Vec<(PathBuf, PathBuf)>,
    /// Targets of unsynced renames that replaced a file: after a crash they
    /// hold the old file or the new one, never neither.
    replaced: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Operations counted so far, by kind and in all.
    counts: BTreeMap<Op, u64>,
    total: u64,
    fault: Option<Fault>,
    /// The fault fired (a sticky one keeps firing).
    fired: bool,
}

/// The simulated file system. Clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimFs")
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    pub fn shared(&self) -> Arc<dyn Vfs> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a fault (and resets the operation counts).
    pub fn set_fault(&self, fault: Option<Fault>) {
        let mut s = self.lock();
        s.fault = fault;
        s.fired = false;
        s.counts.clear();
        s.total = 0;
    }

    pub fn fault_fired(&self) -> bool {
        self.lock().fired
    }

    /// Operations counted since the fault was last set.
    pub fn operations(&self) -> u64 {
        self.lock().total
    }

    /// Counts an operation and fails it if the armed fault says so.
    fn op(&self, op: Op) -> io::Result<()> {
        let mut s = self.lock();
        s.total += 1;
        let total = s.total;
        let n = {
            let c = s.counts.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let Some(fault) = s.fault else { return Ok(()) };
        if fault.op.is_some_and(|o| o != op) {
            return Ok(());
        }
        let index = if fault.op.is_some() { n } else { total };
        if index == fault.nth || (fault.sticky && s.fired) {
            s.fired = true;
            return Err(io::Error::from_raw_os_error(fault.errno));
        }
        Ok(())
    }

    /// A file's current contents, if it exists.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().entries.get(path).map(|f| f.contents())
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().entries.keys().cloned().collect()
    }

    /// The disk after a power cut now: a new, independent file system.
    pub fn crash(&self, rng: &mut Rng) -> SimFs {
        let s = self.lock();
        let mut next = State {
            dirs: s.dirs.clone(),
            ..State::default()
        };
        let names: BTreeSet<&PathBuf> = s.entries.keys().chain(s.durable_entries.keys()).collect();
        // Each unsynced rename (of a file, or of a directory and all under
        // it) happened or did not, as one: everything under the new name (as
        // now) or under the old one (as of the last sync), never both.
        let mut chosen: BTreeMap<PathBuf, Option<&Arc<SimFile>>> = BTreeMap::new();
        let mut undone: Vec<&PathBuf> = Vec::new();
        for (from, to) in &s.renames {
            let now_under_to: Vec<(&PathBuf, &Arc<SimFile>)> = s
                .entries
                .iter()
                .filter(|(p, _)| p.starts_with(to))
                .collect();
            let then_under_from: Vec<(&PathBuf, &Arc<SimFile>)> = s
                .durable_entries
                .iter()
                .filter(|(p, _)| p.starts_with(from))
                .collect();
            if rng.chance(50) {
                for (path, file) in now_under_to {
                    let old = moved_path(path, to, from);
                    let was_durable = s
                        .durable_entries
                        .get(&old)
                        .is_some_and(|d| Arc::ptr_eq(d, file));
                    // Created since the last sync: an unsynced creation
                    // (unless it replaced a file: then the rename and the
                    // creation are one).
                    let kept = was_durable || s.replaced.contains(path) || rng.chance(50);
                    chosen.insert(path.clone(), kept.then_some(file));
                }
                for (path, _) in then_under_from {
                    // Gone from the old name; a file made there since is an
                    // unsynced creation of its own.
                    let newer = s.entries.get(path).filter(|_| rng.chance(50));
                    chosen.insert(path.clone(), newer);
                }
            } else {
                undone.push(to);
                for (path, _) in now_under_to {
                    chosen.insert(path.clone(), s.durable_entries.get(path));
                }
                for (path, file) in then_under_from {
                    chosen.insert(path.clone(), Some(file));
                }
            }
        }
        for name in names {
            let now = s.entries.get(name);
            let then = s.durable_entries.get(name);
            // A directory change no sync covered may or may not have happened.
            let file = match (chosen.get(name.as_path()), now, then) {
                (Some(choice), _, _) => *choice,
                (None, Some(a), Some(b)) if Arc::ptr_eq(a, b) => Some(a),
                (None, Some(a), Some(b)) => Some(if rng.chance(50) { a } else { b }),
                (None, Some(a), None) => rng.chance(50).then_some(a),
                (None, None, Some(b)) => rng.chance(50).then_some(b),
                (None, None, None) => None,
            };
            if let Some(file) = file {
                let image = Arc::new(SimFile::default());
                let survived = power_cut(&file.lock(), rng);
                {
                    let mut d = image.lock();
                    d.current = survived.clone();
                    d.durable = survived;
                }
                next.entries.insert(name.clone(), Arc::clone(&image));
                next.durable_entries.insert(name.clone(), image);
            }
        }
        // A directory renamed by a rename that did not happen after all is
        // under its old name, with its files.
        next.dirs
            .retain(|d| !undone.iter().any(|to| d.starts_with(to)));
        let parents: Vec<PathBuf> = next
            .entries
            .keys()
            .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
            .collect();
        next.dirs.extend(parents);
        SimFs {
            state: Arc::new(Mutex::new(next)),
        }
    }

    /// The disk as a process crash (`kill -9`) leaves it: everything written
    /// stays. A new, independent file system.
    pub fn snapshot(&self) -> SimFs {
        let s = self.lock();
        let mut next = State {
            dirs: s.dirs.clone(),
            renames: s.renames.clone(),
            replaced: s.replaced.clone(),
            ..State::default()
        };
        for (name, file) in &s.entries {
            let copy = Arc::new(SimFile::default());
            {
                let d = file.lock();
                let mut c = copy.lock();
                c.current = d.current.clone();
                c.durable = d.durable.clone();
                c.pending = d.pending.clone();
                c.mapped_writes = d.mapped_writes;
            }
            next.entries.insert(name.clone(), Arc::clone(&copy));
            if s.durable_entries
                .get(name)
                .is_some_and(|f| Arc::ptr_eq(f, file))
            {
                next.durable_entries.insert(name.clone(), copy);
            }
        }
        SimFs {
            state: Arc::new(Mutex::new(next)),
        }
    }
}

/// What survives of one file's unsynced changes.
fn power_cut(d: &Data, rng: &mut Rng) -> Vec<u8> {
    let mut image = d.durable.clone();
    for change in &d.pending {
        match change {
            Pending::SetLen(len) => {
                // The size is metadata: the change made it or it did not.
                if rng.chance(50) {
                    image.resize(*len, 0);
                }
            }
            Pending::Write { pos, bytes } => {
                let (pos, end) = (*pos, pos + bytes.len());
                let kept = match rng.below(100) {
                    0..=39 => bytes.clone(),
                    40..=69 => continue,
                    // Torn: a prefix of whole sectors made it.
                    70..=84 => {
                        let boundaries: Vec<usize> =
                            (pos + 1..end).filter(|b| b % SECTOR == 0).collect();
                        if boundaries.is_empty() {
                            continue;
                        }
                        let cut = boundaries[rng.below(boundaries.len() as u64) as usize];
                        bytes[..cut - pos].to_vec()
                    }
                    // Garbled mid-write: garbage wherever it changed the
                    // bytes. A rewrite of bytes already there (a direct
                    // writer's last block, written again whole) leaves them
                    // as they were, old and new being the same.
                    _ => bytes
                        .iter()
                        .enumerate()
                        .map(|(k, &b)| match image.get(pos + k) {
                            Some(&old) if old == b => b,
                            _ => rng.next() as u8,
                        })
                        .collect(),
                };
                if image.len() < pos + kept.len() {
                    image.resize(pos + kept.len(), 0);
                }
                image[pos..pos + kept.len()].copy_from_slice(&kept);
            }
        }
    }
    if d.mapped_writes {
        // What still differs was written through a mapping: the kernel
        // writes such pages back when it likes, so each sector is old, new,
        // or (torn mid-write) garbage where it changed.
        let len = image.len().min(d.current.len());
        for start in (0..len).step_by(SECTOR) {
            let end = (start + SECTOR).min(len);
            if image[start..end] == d.current[start..end] {
                continue;
            }
            match rng.below(100) {
                0..=39 => image[start..end].copy_from_slice(&d.current[start..end]),
                40..=84 => {}
                _ => {
                    for (byte, now) in image[start..end].iter_mut().zip(&d.current[start..end]) {
                        if byte != now {
                            *byte = rng.next() as u8;
                        }
                    }
                }
            }
        }
    }
    image
}

/// `path`, which is `from` or under it, with `from` replaced by `to`.
fn moved_path(path: &Path, from: &Path, to: &Path) -> PathBuf {
    match path.strip_prefix(from) {
        Ok(rest) if rest.as_os_str().is_empty() => to.to_owned(),
        Ok(rest) => to.join(rest),
        Err(_) => path.to_owned(),
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Vfs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().dirs.insert(dir.to_owned());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.op(Op::List)?;
        let s = self.lock();
        Ok(s.entries
            .keys()
            .chain(s.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().entries.contains_key(path)
    }

    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn VFile>> {
        self.op(Op::Open)?;
        let mut s = self.lock();
        let file = match (how, s.entries.get(path)) {
            (Open::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ))
            }
            (Open::CreateNew, None) => {
                let f = Arc::new(SimFile::default());
                s.entries.insert(path.to_owned(), Arc::clone(&f));
                f
            }
            (_, Some(f)) => Arc::clone(f),
            (_, None) => return Err(not_found(path)),
        };
        Ok(Arc::new(SimHandle {
            fs: self.clone(),
            file,
            writable: how != Open::ReadOnly,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.op(Op::Remove)?;
        self.lock()
            .entries
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(Op::Rename)?;
        let mut s = self.lock();
        if s.entries.contains_key(to) || s.dirs.contains(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                to.display().to_string(),
            ));
        }
        if s.dirs.contains(from) {
            if !s.dirs.contains(to.parent().unwrap_or(Path::new("/"))) {
                return Err(not_found(to));
            }
            let moved: Vec<PathBuf> = s
                .entries
                .keys()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
            for path in moved {
                let file = s.entries.remove(&path).expect("listed");
                s.entries.insert(moved_path(&path, from, to), file);
            }
            let dirs: Vec<PathBuf> = s
                .dirs
                .iter()
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for dir in dirs {
                s.dirs.remove(&dir);
                s.dirs.insert(moved_path(&dir, from, to));
            }
        } else {
            let file = s.entries.remove(from).ok_or_else(|| not_found(from))?;
            s.entries.insert(to.to_owned(), file);
        }
        // Until the new name's directory is synced, a power cut keeps the old
        // name or the new one: `crash` picks one of the two (see there).
        s.renames.push((from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(Op::Rename)?;
        let mut s = self.lock();
        if s.dirs.contains(to) || s.dirs.contains(from) {
            return Err(io::Error::other("replace renames files only"));
        }
        let file = s.entries.remove(from).ok_or_else(|| not_found(from))?;
        s.entries.insert(to.to_owned(), file);
        s.renames.push((from.to_owned(), to.to_owned()));
        s.replaced.insert(to.to_owned());
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.op(Op::Remove)?;
        let mut s = self.lock();
        s.entries.retain(|p, _| !p.starts_with(dir));
        s.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.op(Op::SyncDir)?;
        let mut s = self.lock();
        let entries: Vec<(PathBuf, Arc<SimFile>)> = s
            .entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| (p.clone(), Arc::clone(f)))
            .collect();
        s.durable_entries.retain(|p, _| p.parent() != Some(dir));
        s.durable_entries.extend(entries);
        // Renames into this directory are durable now; for a directory, what
        // was durable under its old name is durable under the new one.
        let done: Vec<(PathBuf, PathBuf)> = s
            .renames
            .iter()
            .filter(|(_, to)| to.parent() == Some(dir))
            .cloned()
            .collect();
        for (from, to) in &done {
            let rekeyed: Vec<PathBuf> = s
                .durable_entries
                .keys()
                .filter(|p| p.starts_with(from) && p.as_path() != from.as_path())
                .cloned()
                .collect();
            for path in rekeyed {
                let file = s.durable_entries.remove(&path).expect("listed");
                s.durable_entries.insert(moved_path(&path, from, to), file);
            }
        }
        s.renames.retain(|(_, to)| to.parent() != Some(dir));
        s.replaced.retain(|to| to.parent() != Some(dir));
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let mut s = self.lock();
        if !s.locks.insert(path.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Box::new(LockGuard {
            fs: self.clone(),
            path: path.to_owned(),
        })))
    }
}

struct LockGuard {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.fs.lock().locks.remove(&self.path);
    }
}

struct SimHandle {
    fs: SimFs,
    file: Arc<SimFile>,
    writable: bool,
}

impl SimHandle {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }
}

impl VFile for SimHandle {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.lock().current.len() as u64)
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.fs.op(Op::Read)?;
        let d = self.file.lock();
        let end = pos as usize + len;
        if end > d.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        Ok(d.current[pos as usize..end].to_vec())
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        let result = self.fs.op(Op::Write);
        let mut d = self.file.lock();
        let end = pos as usize + data.len();
        if let Err(e) = result {
            // A failed write may still have written a part: a short write.
            let part = data.len() / 2;
            if part > 0 && d.mapped == 0 {
                write(&mut d, pos as usize, &data[..part]);
            }
            return Err(e);
        }
        assert!(
            d.mapped == 0 || end <= d.current.len(),
            "write would move a mapped buffer"
        );
        write(&mut d, pos as usize, data);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.fs.op(Op::Truncate)?;
        let mut d = self.file.lock();
        if d.mapped > 0 {
            // Keep the buffer where the mapping points; the file's length is
            // the visible prefix.
            assert!(len as usize <= d.current.capacity(), "grow a mapped file");
        }
        d.current.resize(len as usize, 0);
        d.pending.push(Pending::SetLen(len as usize));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.fs.op(Op::Allocate)?;
        let mut d = self.file.lock();
        if d.current.len() < len as usize {
            // A mapped buffer must not move: growing within its capacity is fine.
            assert!(
                d.mapped == 0 || len as usize <= d.current.capacity(),
                "allocate moves a mapped file"
            );
            d.current.resize(len as usize, 0);
            d.pending.push(Pending::SetLen(len as usize));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let result = self.fs.op(Op::Sync);
        let mut d = self.file.lock();
        if let Err(e) = result {
            let lost: Vec<(usize, usize)> = d
                .pending
                .iter()
                .filter_map(|p| match p {
                    Pending::Write { pos, bytes } => Some((*pos, pos + bytes.len())),
                    Pending::SetLen(_) => None,
                })
                .collect();
            d.dropped.extend(lost);
            d.pending.clear();
            return Err(e);
        }
        let mut durable = d.current.clone();
        for &(start, end) in &d.dropped {
            let end = end.min(durable.len());
            for (i, byte) in durable[start.min(end)..end].iter_mut().enumerate() {
                *byte = d.durable.get(start + i).copied().unwrap_or(0);
            }
        }
        d.durable = durable;
        d.pending.clear();
        Ok(())
    }

    fn map(&self, len: usize, writable: bool) -> io::Result<Box<dyn Mapping>> {
        self.fs.op(Op::Map)?;
        let mut d = self.file.lock();
        // Like mmap(2), a mapping may span past the end of the file (an
        // index grows into it); only bytes inside the file may be touched.
        // The buffer must not move while mapped: reserve the whole span.
        if len > d.current.capacity() {
            assert!(d.mapped == 0, "a second mapping would move the first");
            let more = len - d.current.len();
            d.current.reserve_exact(more);
        }
        d.mapped += 1;
        d.mapped_writes |= writable;
        let ptr = d.current.as_mut_ptr();
        Ok(Box::new(SimMapping {
            file: Arc::clone(&self.file),
            ptr,
            len,
        }))
    }
}

fn write(d: &mut Data, pos: usize, bytes: &[u8]) {
    if d.current.len() < pos + bytes.len() {
        d.current.resize(pos + bytes.len(), 0);
    }
    d.current[pos..pos + bytes.len()].copy_from_slice(bytes);
    d.pending.push(Pending::Write {
        pos,
        bytes: bytes.to_vec(),
    });
}

struct SimMapping {
    file: Arc<SimFile>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer targets the file's buffer, which the Arc keeps alive
// and which does not move while `mapped > 0` (asserted by the handle).
unsafe impl Send for SimMapping {}
unsafe impl Sync for SimMapping {}

impl Mapping for SimMapping {
    fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn size(&self) -> usize {
        self.len
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        self.file.lock().mapped -= 1;
    }
}
