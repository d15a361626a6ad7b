//! Regressions: each test pins down a defect a review of the log found
//! (fsyncgate, commits spinning after close or reset, reads trusting a
//! garbled index, stale index entries surviving a second crash, damage
//! mistaken for data, a full disk making the log unopenable, page-cache
//! contents taken for durable). Each assertion states the right behaviour.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::sim::{Fault, Op, Rng, SimFs};
use common::wrap::WrapFs;
use common::*;
use spool::storage::{
    batch, BatchBuilder, Log, LogConfig, Mapping, Open, StorageError, SyncMode, VFile,
};

fn cfg(sync: SyncMode) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        index_bytes: 1024,
        segment_age: None,
        sync,
        max_batch_bytes: 1 << 20,
        max_record_bytes: u32::MAX,
        ..LogConfig::default()
    }
}

fn one(value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(0, None, Some(value), &[]);
    b.finish()
}

/// Runs `f` on a thread; None if it did not finish within `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

// Guards against: a failed fdatasync is retried and the commit acknowledged (fsyncgate).
#[test]
fn a_failed_fsync_is_never_acknowledged() {
    let fs = SimFs::new();
    let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
    let a = log.append(&mut one(b"a")).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(Op::Sync),
        nth: 1,
        errno: libc::EIO,
        sticky: false,
    }));
    let r = log.commit(a.next_offset);
    assert!(
        r.is_err(),
        "commit returned Ok although the only fdatasync covering it failed (it was retried)"
    );
}

// Guards against: commit on a fenced or closed log never returns (busy loop).
#[test]
fn commit_on_a_closed_log_returns() {
    let fs = SimFs::new();
    let log = Arc::new(Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap());
    let a = log.append(&mut one(b"a")).unwrap();
    log.close().unwrap();
    // close synced the data, but the group-commit state does not know it.
    let l = Arc::clone(&log);
    let done = within(3, move || l.commit(a.next_offset).is_ok());
    assert!(done.is_some(), "commit after close spins forever");
}

#[test]
fn commit_on_a_write_fenced_log_returns() {
    let fs = SimFs::new();
    let log = Arc::new(Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap());
    let a = log.append(&mut one(b"a")).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(Op::Write),
        nth: 1,
        errno: libc::EIO,
        sticky: false,
    }));
    assert!(log.append(&mut one(b"b")).is_err());
    fs.set_fault(None);
    let l = Arc::clone(&log);
    let done = within(3, move || l.commit(a.next_offset));
    assert!(done.is_some(), "commit on a fenced log spins forever");
}

// Guards against: Interval mode acknowledges a batch that a failed fdatasync covered.
#[test]
fn interval_commits_after_a_failed_sync_fail() {
    let fs = SimFs::new();
    let log = Log::open_with(
        fs.shared(),
        "/t",
        cfg(SyncMode::Interval(Duration::from_secs(3600))),
    )
    .unwrap();
    let a = log.append(&mut one(b"a")).unwrap();
    let b = log.append(&mut one(b"b")).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(Op::Sync),
        nth: 1,
        errno: libc::EIO,
        sticky: true,
    }));
    // The first commit is due (no sync yet) and its sync fails; the second
    // is not due, and must not be acknowledged from the failed sync either.
    assert!(log.commit(a.next_offset).is_err());
    assert!(
        log.commit(b.next_offset).is_err(),
        "second commit Ok after the fdatasync that covered it failed"
    );
}

// Guards against: commit of an offset appended before a reset never returns.
#[test]
fn commit_of_an_offset_from_before_a_reset_returns() {
    let fs = SimFs::new();
    let log = Arc::new(Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap());
    let mut last = 0;
    for _ in 0..10 {
        last = log.append(&mut one(b"x")).unwrap().next_offset;
    }
    log.reset().unwrap();
    let l = Arc::clone(&log);
    let done = within(3, move || l.commit(last).is_ok());
    assert!(
        done.is_some(),
        "commit({last}) after reset loops forever fsyncing"
    );
}

// Guards against: a reset that fails midway leaves an empty segment list: reads panic.
#[test]
fn reads_after_a_failed_reset_do_not_panic() {
    let fs = SimFs::new();
    let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
    log.append(&mut one(b"x")).unwrap();
    log.append(&mut one(b"y")).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(Op::Remove),
        nth: 1,
        errno: libc::EIO,
        sticky: false,
    }));
    assert!(log.reset().is_err());
    fs.set_fault(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.read_batches(0, 100)));
    assert!(r.is_ok(), "read_batches panicked after a failed reset");
}

// Guards against: reset racing an in-flight group-commit fsync: a later commit of the new
// log returns Ok without any fsync.

#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    state: Mutex<(bool, bool)>, // (entered, released)
    cv: Condvar,
    syncs: AtomicU64,
}

struct GateHolder(Gate);
impl std::fmt::Debug for GateHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("gate")
    }
}

struct GateFile {
    inner: Arc<dyn VFile>,
    gate: Arc<GateHolder>,
}

impl VFile for GateFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(pos, len)
    }
    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(pos, data)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        let g = &self.gate.0;
        g.syncs.fetch_add(1, Ordering::SeqCst);
        if g.armed.swap(false, Ordering::SeqCst) {
            let mut s = g.state.lock().unwrap();
            s.0 = true;
            g.cv.notify_all();
            while !s.1 {
                s = g.cv.wait(s).unwrap();
            }
        }
        self.inner.sync_data()
    }
    fn map(&self, len: usize, writable: bool) -> io::Result<Box<dyn Mapping>> {
        self.inner.map(len, writable)
    }
}

#[test]
fn a_sync_in_flight_across_a_reset_acknowledges_nothing_of_the_new_log() {
    let sim = SimFs::new();
    let gate = Arc::new(GateHolder(Gate::default()));
    let vfs = {
        let gate = Arc::clone(&gate);
        WrapFs::shared(sim.shared(), move |_, inner| {
            Arc::new(GateFile {
                inner,
                gate: Arc::clone(&gate),
            })
        })
    };
    let log = Arc::new(Log::open_with(vfs, "/t", cfg(SyncMode::Always)).unwrap());
    let mut last = 0;
    for i in 0..10 {
        last = log
            .append(&mut one(format!("old {i}").as_bytes()))
            .unwrap()
            .next_offset;
    }
    gate.0.armed.store(true, Ordering::SeqCst);
    let l = Arc::clone(&log);
    let committer = std::thread::spawn(move || l.commit(last));
    {
        let g = &gate.0;
        let mut s = g.state.lock().unwrap();
        while !s.0 {
            s = g.cv.wait(s).unwrap();
        }
    }
    // The old log's fsync is in flight: reset now.
    log.reset().unwrap();
    {
        let g = &gate.0;
        g.state.lock().unwrap().1 = true;
        g.cv.notify_all();
    }
    // What the committer appended is gone with the reset: not acknowledged.
    assert!(matches!(
        committer.join().unwrap(),
        Err(StorageError::Reset)
    ));
    // The fresh log: 5 batches, commit.
    let before = gate.0.syncs.load(Ordering::SeqCst);
    let mut next = 0;
    for i in 0..5 {
        next = log
            .append(&mut one(format!("new {i}").as_bytes()))
            .unwrap()
            .next_offset;
    }
    log.commit(next).unwrap();
    let after = gate.0.syncs.load(Ordering::SeqCst);
    // Power cut now: does the acknowledged data survive?
    let mut lost_runs = 0;
    for seed in 0..20 {
        let image = sim.crash(&mut Rng::new(seed));
        let reopened = Log::open_with(image.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        if reopened.next_offset() < next {
            lost_runs += 1;
        }
    }
    eprintln!(
        "fdatasyncs for the post-reset commit: {}; power cuts losing acked data: {lost_runs}/20",
        after - before
    );
    assert!(
        after > before,
        "commit({next}) returned Ok with no fdatasync: an in-flight pre-reset sync raised `synced`"
    );
    assert_eq!(lost_runs, 0);
}

// Guards against: a garbled middle entry of a sealed index: read allocates ~4 GiB and
// fails with Io (not Corrupt).
#[test]
fn a_garbled_sealed_index_entry_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_bytes: 64,
        ..small_config(1 << 20)
    };
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        fill(&log, 12, 1, 40);
        log.close().unwrap();
    }
    let path = segment_file(dir.path(), 0, "index");
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 64);
    // Entry 3's position -> 0xFFFF0000 (entries 6 and 7 untouched).
    bytes[3 * 8 + 4..3 * 8 + 8].copy_from_slice(&0xFFFF_0000u32.to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    assert!(log.recovery().is_empty());
    let r = log.read(2);
    eprintln!("read(2) -> {r:?}");
    assert!(
        matches!(r, Err(StorageError::Corrupt { .. })),
        "expected Corrupt, got {r:?}"
    );
}

// Guards against: stale index entries after crash -> recovery -> appends -> power cut.
// Records intact in the store become unreadable (Corrupt).
#[test]
fn no_stale_index_entry_survives_a_second_crash() {
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_bytes: 64 << 10,
        segment_age: None,
        sync: SyncMode::Always,
        max_batch_bytes: 1 << 20,
        max_record_bytes: u32::MAX,
        ..LogConfig::default()
    };
    let d1 = tempfile::tempdir().unwrap();
    {
        let log = Log::open(d1.path(), config.clone()).unwrap();
        fill(&log, 600, 1, 10);
        std::mem::forget(log); // crash: no close, no trim
    }
    let run1_index = std::fs::read(segment_file(d1.path(), 0, "index")).unwrap();
    let entry = |b: &[u8], k: usize| {
        (
            u32::from_be_bytes(b[k * 8..k * 8 + 4].try_into().unwrap()),
            u32::from_be_bytes(b[k * 8 + 4..k * 8 + 8].try_into().unwrap()),
        )
    };
    // Power cut 1: the index reached the disk, the store only up to inside
    // batch 101.
    let d2 = tempfile::tempdir().unwrap();
    copy_dir(d1.path(), d2.path());
    let cut = u64::from(entry(&run1_index, 101).1) + 10;
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment_file(d2.path(), 0, "store"))
        .unwrap()
        .set_len(cut)
        .unwrap();
    {
        let log = Log::open(d2.path(), config.clone()).unwrap();
        assert_eq!(log.next_offset(), 101);
        // Recovery cut the index to the entries it kept, durably: no entry
        // of run 1 past them is left for a later crash to expose.
        let cut = std::fs::read(segment_file(d2.path(), 0, "index")).unwrap();
        assert!(cut[101 * 8..].iter().all(|&b| b == 0), "stale entries kept");
        assert_eq!(&cut[..101 * 8], &run1_index[..101 * 8]);
        // Bigger records this time: positions differ from run 1's.
        fill(&log, 600, 1, 40);
        for o in 0..701 {
            assert!(log.read(o).is_ok());
        }
        std::mem::forget(log);
    }
    let run2_index = std::fs::read(segment_file(d2.path(), 0, "index")).unwrap();
    // Power cut 2: the store was synced (flush=always) but index page 0
    // (slots 0..512) was not written back again: the disk still holds page
    // 0 as recovery's synced cut left it (run 1's first 101 entries, then
    // zeros). Page 1 (slots 512..) reached the disk.
    let d3 = tempfile::tempdir().unwrap();
    copy_dir(d2.path(), d3.path());
    let mut image = run2_index.clone();
    image[..4096].fill(0);
    image[..101 * 8].copy_from_slice(&run1_index[..101 * 8]);
    eprintln!(
        "slot 511 (run 1) {:?}, slot 512 (run 2) {:?}",
        entry(&image, 511),
        entry(&image, 512)
    );
    std::fs::write(segment_file(d3.path(), 0, "index"), image).unwrap();
    let log = Log::open(d3.path(), config).unwrap();
    eprintln!("recovery: {:?}, next {}", log.recovery(), log.next_offset());
    let mut bad = Vec::new();
    for o in 0..log.next_offset() {
        if log.read(o).is_err() {
            bad.push(o);
        }
    }
    eprintln!(
        "{} offsets unreadable: {:?}..",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        bad.is_empty(),
        "intact records unreadable after the second crash"
    );
}

// Guards against: a torn tail containing a valid embedded batch (a record value that is a
// stored batch): recovery promotes it to real records at its own offsets.
#[test]
fn a_batch_inside_a_torn_value_is_not_taken_for_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(1 << 20);
    let store_end;
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        fill(&log, 1, 1, 20); // offset 0
                              // The inner batch: what a mirror would carry, offsets assigned.
        let mut inner = BatchBuilder::new();
        inner.push(0, None, Some(b"NOT A REAL RECORD OF THIS LOG"), &[]);
        let mut inner = inner.finish();
        batch::assign(&mut inner, 5000);
        let mut outer = BatchBuilder::new();
        let mut value = vec![b'.'; 7];
        value.extend_from_slice(&inner);
        value.extend_from_slice(&[b'.'; 200]);
        outer.push(0, None, Some(&value), &[]);
        log.append(&mut outer.finish()).unwrap(); // offset 1
        store_end = log.record_bytes();
        log.close().unwrap();
    }
    // Torn write: the outer batch lost its last 100 bytes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment_file(dir.path(), 0, "store"))
        .unwrap()
        .set_len(store_end - 100)
        .unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    eprintln!("recovery {:?}; next {}", log.recovery(), log.next_offset());
    if let Ok(r) = log.read(5000) {
        eprintln!(
            "read(5000) = {:?}",
            String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
        );
    }
    assert_eq!(log.next_offset(), 1, "only offset 0 was complete");
}

// Guards against: a cleanly closed log cannot be reopened on a full disk (the trimmed
// index files must be fallocated again), so not even reads work.
#[test]
fn a_log_reopens_on_a_full_disk() {
    let fs = SimFs::new();
    {
        let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        log.append(&mut one(b"x")).unwrap();
        log.close().unwrap();
    }
    fs.set_fault(Some(Fault {
        op: Some(Op::Allocate),
        nth: 1,
        errno: libc::ENOSPC,
        sticky: true,
    }));
    let r = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always));
    eprintln!("reopen on a full disk: {:?}", r.as_ref().map(|_| ()));
    assert!(r.is_ok(), "a full disk makes the log unopenable (no reads)");
}

// Guards against: close() of a fenced log returns Ok without syncing anything.
#[test]
fn close_of_a_fenced_log_reports_the_failure() {
    let fs = SimFs::new();
    let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
    let _a = log.append(&mut one(b"never synced")).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(Op::Write),
        nth: 1,
        errno: libc::EIO,
        sticky: false,
    }));
    assert!(log.append(&mut one(b"b")).is_err());
    fs.set_fault(None);
    let r = log.close();
    eprintln!("close of a fenced log: {r:?}");
    assert!(
        r.is_err(),
        "close() says Ok (\"flushed and synced\") for unsynced data"
    );
}

// Guards against: after a process crash, reopen treats everything recovered from the page
// cache as synced: commit/sync return Ok without an fdatasync, and a power cut
// then loses records the log (and the broker's visible end) already exposed.
#[test]
fn reopen_syncs_what_the_page_cache_held() {
    let fs = SimFs::new();
    {
        let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        for i in 0..5 {
            log.append(&mut one(format!("v{i}").as_bytes())).unwrap();
        }
        let killed = fs.snapshot(); // kill -9: written, not synced
        std::mem::forget(log);
        let fs2 = killed;
        let log = Log::open_with(fs2.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        assert_eq!(log.next_offset(), 5);
        log.sync().unwrap(); // "everything appended so far is durable"
        let mut lost = 0;
        for seed in 0..20 {
            let image = fs2.crash(&mut Rng::new(seed));
            let l = Log::open_with(image.shared(), "/t", cfg(SyncMode::Always)).unwrap();
            if l.next_offset() < 5 {
                lost += 1;
            }
        }
        eprintln!("power cuts after a successful sync() that lost records: {lost}/20");
        assert_eq!(lost, 0);
    }
}

// Guards against (issue 9, 4.5): an age too long for i64 milliseconds wrapped
// negative, so every sealed segment looked expired and retention deleted it.
#[test]
fn an_age_beyond_i64_milliseconds_means_forever() {
    let dir = tempfile::tempdir().unwrap();
    let forever = Duration::from_secs(u64::MAX);
    let config = LogConfig {
        segment_bytes: 1024,
        segment_age: Some(forever),
        ..cfg(SyncMode::Never)
    };
    let log = Log::open(dir.path(), config).unwrap();
    for _ in 0..20 {
        log.append(&mut one(&[7u8; 200])).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 2, "the test needs sealed segments");
    let now = i64::MAX / 2;
    assert!(!log.roll_if_due(now).unwrap(), "rolled by a wrapped age");
    let removed = log
        .apply_retention(
            spool::storage::Retention {
                max_bytes: None,
                max_age: Some(forever),
            },
            now,
        )
        .unwrap();
    assert_eq!(
        removed.segments, 0,
        "retention by a wrapped age deleted data"
    );
    assert_eq!(log.segment_count(), segments);
}

// Guards against (issue 9, 4.6): recovery scanned the active store through a
// memory map, so an I/O error at start-up was a SIGBUS (a crash loop), and
// read errors of the index check were taken for bad batches and ignored.
// Every failed read while opening is an error now, whichever read fails.
#[test]
fn an_unreadable_store_fails_the_open_with_an_io_error() {
    let fs = SimFs::new();
    {
        let log = Log::open_with(fs.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        for i in 0..50u8 {
            log.append(&mut one(&[i; 100])).unwrap();
        }
        // A crash: the index lost its tail, so the store must be scanned.
    }
    let crashed = fs.snapshot();
    let index = std::path::Path::new("/t/00000000000000000000.index");
    let image = crashed.read(index).unwrap();
    {
        let f = crashed.shared().open(index, Open::ReadWrite).unwrap();
        f.set_len(8 * 10).unwrap();
    }
    assert!(image.len() > 80);
    let reads = {
        let probe = crashed.snapshot();
        probe.set_fault(None);
        let log = Log::open_with(probe.shared(), "/t", cfg(SyncMode::Always)).unwrap();
        assert_eq!(log.next_offset(), 50, "the scan recovers every batch");
        drop(log);
        // Count the reads one open makes.
        let probe = crashed.snapshot();
        probe.set_fault(Some(Fault {
            op: Some(Op::Read),
            nth: u64::MAX,
            errno: libc::EIO,
            sticky: false,
        }));
        let _ = Log::open_with(probe.shared(), "/t", cfg(SyncMode::Always));
        probe.operations()
    };
    assert!(reads > 0);
    let mut failed_opens = 0;
    for nth in 1..=reads {
        let disk = crashed.snapshot();
        disk.set_fault(Some(Fault {
            op: Some(Op::Read),
            nth,
            errno: libc::EIO,
            // Once: a read error swallowed would go unnoticed otherwise,
            // as the next read would fail too.
            sticky: false,
        }));
        match Log::open_with(disk.shared(), "/t", cfg(SyncMode::Always)) {
            Err(StorageError::Io { .. }) => failed_opens += 1,
            Err(e) => panic!("read {nth} failing gave {e}"),
            Ok(log) => {
                assert!(
                    !disk.fault_fired(),
                    "read {nth} failed and the open went on as if the bytes were bad: next offset {}",
                    log.next_offset()
                );
            }
        }
    }
    assert!(failed_opens > 0, "no read was made while opening");
}

// Guards against (review of issue 9): a roll defers its predecessor's
// fdatasync; a process crash before it was done, then a reopen that synced
// only the active segment, counted the predecessor's unsynced tail as
// durable. A power cut after the reopen must lose nothing below the
// reopened log's synced offset.
#[test]
fn a_reopen_after_a_crash_syncs_the_segment_whose_seal_was_deferred() {
    for seed in 0..50u64 {
        let fs = SimFs::new();
        let config = LogConfig {
            segment_bytes: 1024,
            ..cfg(SyncMode::Never)
        };
        {
            let log = Log::open_with(fs.shared(), "/t", config.clone()).unwrap();
            // Rolls, with nothing syncing what they left (no prepare, no
            // commit): the last roll's predecessor is unsynced.
            for i in 0..12u8 {
                log.append(&mut one(&[i; 300])).unwrap();
            }
            assert!(log.segment_count() >= 3);
            std::mem::forget(log); // a kill -9: no close
        }
        let restarted = fs.snapshot();
        let log = Log::open_with(restarted.shared(), "/t", config.clone()).unwrap();
        let synced = log.synced_offset();
        assert_eq!(
            synced, 12,
            "seed {seed}: the reopened log counts all as synced"
        );
        std::mem::forget(log); // the power cut comes before any close
        let after_power_cut = restarted.crash(&mut Rng::new(seed));
        let log = Log::open_with(after_power_cut.shared(), "/t", config.clone()).unwrap();
        for offset in 0..synced {
            let record = log.read(offset).unwrap_or_else(|e| {
                panic!("seed {seed}: offset {offset} lost after it was counted as synced: {e}")
            });
            assert_eq!(record.value.as_deref().unwrap(), &[offset as u8; 300][..]);
        }
    }
}
