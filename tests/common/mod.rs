//! Helpers shared by the integration tests.
#![allow(dead_code)]

use spool::storage::{BatchBuilder, Log, LogConfig, SyncMode};

/// How many trials a randomised test runs: `fast` in the normal suite,
/// `soak` when `SPOOL_SOAK` is set (the soak tier, docs/RELIABILITY.md).
pub fn trials(fast: u64, soak: u64) -> u64 {
    if std::env::var_os("SPOOL_SOAK").is_some() {
        soak
    } else {
        fast
    }
}

/// Process-wide figures (resident memory, descriptors, mappings) are only
/// meaningful if the tests that measure them do not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one test on its own 2-thread runtime, holding a lock shared by the
/// test binary's other `serially` tests until the runtime (its threads,
/// descriptors and memory) is gone.
pub fn serially<F: std::future::Future>(test: F) -> F::Output {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test)
}

/// A config with tiny segments, so that tests roll often.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_bytes: 1024,
        segment_age: None,
        sync: SyncMode::Never,
        max_batch_bytes: 8 << 20,
        max_record_bytes: u32::MAX,
        ..LogConfig::default()
    }
}

/// A batch of `values`, timestamped now (the batch's time, which the time
/// index goes by), with no keys.
pub fn batch_of(values: &[Vec<u8>]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    let now = now_ms();
    for v in values {
        b.push(now, None, Some(v), &[]);
    }
    b.finish()
}

/// The value stored at `offset` by [`fill`]: recognisable and offset-specific.
pub fn value_for(offset: u64, len: usize) -> Vec<u8> {
    let mut v = format!("record-{offset}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (offset % 26) as u8);
    v
}

/// Appends `batches` batches of `per_batch` records of `len` bytes each;
/// returns the base offset of every batch.
pub fn fill(log: &Log, batches: usize, per_batch: usize, len: usize) -> Vec<u64> {
    let mut bases = Vec::new();
    for _ in 0..batches {
        let first = log.next_offset();
        let values: Vec<Vec<u8>> = (0..per_batch)
            .map(|i| value_for(first + i as u64, len))
            .collect();
        let mut batch = batch_of(&values);
        bases.push(log.append(&mut batch).expect("append").base_offset);
    }
    bases
}

/// Checks that every offset in `[from, to)` reads back the value [`fill`] wrote.
pub fn assert_readable(log: &Log, from: u64, to: u64, len: usize) {
    for offset in from..to {
        let record = log
            .read(offset)
            .unwrap_or_else(|e| panic!("read {offset}: {e}"));
        assert_eq!(record.offset, offset);
        assert_eq!(
            record.value.as_deref(),
            Some(&value_for(offset, len)[..]),
            "value at offset {offset}"
        );
    }
}

/// Copies every file of `from` into `to` (a fresh directory).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The segment file of `base` with extension `ext`.
pub fn segment_file(dir: &std::path::Path, base: u64, ext: &str) -> std::path::PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}
/// The wall clock in ms since the epoch: a broker's topics keep records by
/// their timestamps (retention, roll age), so tests that run a broker stamp
/// records with now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

pub mod broker;
pub mod checker;
pub mod clients;
pub mod process;
pub mod sim;
pub mod wrap;
