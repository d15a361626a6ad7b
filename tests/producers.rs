//! Idempotent producers in the log: retries answered with their first
//! offsets and stored once, gaps and stale epochs refused, and the state
//! carried across a clean restart, `kill -9`, a power cut, a damaged
//! snapshot and retention (docs/STORAGE.md, *Producer state*).

mod common;

use std::path::Path;

use common::sim::{Rng, SimFs};
use common::*;
use spool::storage::{BatchBuilder, Log, LogConfig, StorageError, SyncMode};

const DIR: &str = "/topic";

/// A batch of `count` records from producer `pid` in `epoch`, starting at
/// sequence `seq`; the values name the sequence numbers.
fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.set_producer(pid, epoch, seq);
    for i in 0..count {
        let v = format!("p{pid} e{epoch} s{}", seq + i);
        b.push(now_ms(), None, Some(v.as_bytes()), &[]);
    }
    b.finish()
}

fn open(fs: &SimFs, config: &LogConfig) -> Log {
    Log::open_with(fs.shared(), DIR, config.clone()).unwrap()
}

/// Appends producer 1's batches of 3 records at sequences 0, 3, 6, ...
fn produce(log: &Log, batches: i32) -> Vec<(u64, u64)> {
    (0..batches)
        .map(|i| {
            let a = log.append(&mut batch(1, 0, i * 3, 3)).unwrap();
            assert!(!a.duplicate);
            (a.base_offset, a.next_offset)
        })
        .collect()
}

/// Every one of the last five batches, sent again, is answered with its
/// first offsets and stores nothing.
fn assert_retries_are_duplicates(log: &Log, stored: &[(u64, u64)]) {
    let end = log.next_offset();
    let n = stored.len();
    for (i, &(base, next)) in stored.iter().enumerate().skip(n.saturating_sub(5)) {
        let a = log.append(&mut batch(1, 0, i as i32 * 3, 3)).unwrap();
        assert!(a.duplicate, "batch {i} was stored again");
        assert_eq!((a.base_offset, a.next_offset), (base, next), "batch {i}");
    }
    assert_eq!(log.next_offset(), end);
    // And the producer goes on where it was.
    let a = log.append(&mut batch(1, 0, n as i32 * 3, 3)).unwrap();
    assert!(!a.duplicate);
    assert_eq!(a.base_offset, end);
}

#[test]
fn a_retried_batch_is_answered_with_its_offsets_and_stored_once() {
    let fs = SimFs::new();
    let log = open(&fs, &small_config(1 << 20));
    log.append(&mut batch_of(&[b"plain".to_vec()])).unwrap();
    let stored = produce(&log, 3);
    assert_eq!(stored[0], (1, 4));
    assert_retries_are_duplicates(&log, &stored);
    // Nothing twice in the log: each sequence number once.
    let mut values = Vec::new();
    for offset in 0..log.next_offset() {
        values.push(log.read(offset).unwrap().value.unwrap());
    }
    values.sort();
    values.dedup();
    assert_eq!(values.len() as u64, log.next_offset());
    // A batch without a producer id is never deduplicated.
    let a = log.append(&mut batch_of(&[b"plain".to_vec()])).unwrap();
    assert!(!a.duplicate);
}

#[test]
fn gaps_and_stale_epochs_are_refused_and_store_nothing() {
    let fs = SimFs::new();
    let log = open(&fs, &small_config(1 << 20));
    log.append(&mut batch(9, 2, 0, 2)).unwrap();
    let end = log.next_offset();
    match log.append(&mut batch(9, 2, 3, 1)) {
        Err(StorageError::OutOfOrderSequence {
            producer_id: 9,
            expected: 2,
            got: 3,
        }) => {}
        other => panic!("a gap: {other:?}"),
    }
    assert!(matches!(
        log.append(&mut batch(9, 1, 2, 1)),
        Err(StorageError::InvalidProducerEpoch {
            epoch: 1,
            current: 2,
            ..
        })
    ));
    // A new epoch starts at 0, and fences the old one.
    assert!(matches!(
        log.append(&mut batch(9, 3, 2, 1)),
        Err(StorageError::OutOfOrderSequence { expected: 0, .. })
    ));
    assert_eq!(log.next_offset(), end);
    log.append(&mut batch(9, 3, 0, 1)).unwrap();
    assert!(matches!(
        log.append(&mut batch(9, 2, 2, 1)),
        Err(StorageError::InvalidProducerEpoch { .. })
    ));
    // An unknown producer starts anywhere.
    log.append(&mut batch(10, 0, 500, 1)).unwrap();
}

/// Producer 2's one batch at offset 0, then enough plain batches that it
/// lies more than two segments back: only a snapshot remembers it.
fn bury_producer_2(log: &Log) {
    assert_eq!(log.append(&mut batch(2, 0, 0, 1)).unwrap().base_offset, 0);
    while log.segment_count() < 5 {
        log.append(&mut batch_of(&[vec![b'x'; 200]])).unwrap();
    }
}

fn assert_producer_2_remembered(log: &Log) {
    let a = log.append(&mut batch(2, 0, 0, 1)).unwrap();
    assert!(a.duplicate, "producer 2 forgotten");
    assert_eq!(a.base_offset, 0);
}

#[test]
fn the_state_survives_a_clean_restart_from_its_snapshot() {
    let fs = SimFs::new();
    let config = small_config(1024);
    let stored = {
        let log = open(&fs, &config);
        bury_producer_2(&log);
        let stored = produce(&log, 7);
        log.close().unwrap();
        stored
    };
    assert!(fs
        .read(&Path::new(DIR).join("producers.snapshot"))
        .is_some());
    let log = open(&fs, &config);
    assert_retries_are_duplicates(&log, &stored);
    assert_producer_2_remembered(&log);
}

#[test]
fn the_state_survives_kill_9_across_rolls() {
    // Small segments: several rolls, each leaving a snapshot, then batches
    // after the last one that only the log's headers tell of.
    let fs = SimFs::new();
    let config = small_config(1024);
    let log = open(&fs, &config);
    bury_producer_2(&log);
    let stored = produce(&log, 40);
    assert!(log.segment_count() > 8);
    log.prepare().unwrap();
    let more = produce_from(&log, 40, 3);
    let image = fs.snapshot();
    drop(log);
    let log = open(&image, &config);
    let all: Vec<_> = stored.into_iter().chain(more).collect();
    assert_retries_are_duplicates(&log, &all);
    assert_producer_2_remembered(&log);
}

fn produce_from(log: &Log, first: i32, batches: i32) -> Vec<(u64, u64)> {
    (first..first + batches)
        .map(|i| {
            let a = log.append(&mut batch(1, 0, i * 3, 3)).unwrap();
            (a.base_offset, a.next_offset)
        })
        .collect()
}

#[test]
fn a_damaged_snapshot_is_rebuilt_from_the_log() {
    let fs = SimFs::new();
    let config = small_config(1024);
    {
        let log = open(&fs, &config);
        produce(&log, 20);
        log.close().unwrap();
    }
    let path = Path::new(DIR).join("producers.snapshot");
    let mut bytes = fs.read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    {
        use spool::storage::Open;
        let vfs = fs.shared();
        let f = vfs.open(&path, Open::ReadWrite).unwrap();
        f.write_at(0, &bytes).unwrap();
    }
    let log = open(&fs, &config);
    let stored: Vec<_> = (0..20).map(|i| (i * 3, i * 3 + 3)).collect();
    assert_retries_are_duplicates(&log, &stored);
}

#[test]
fn acknowledged_batches_stay_deduplicated_after_a_power_cut() {
    let config = LogConfig {
        sync: SyncMode::Always,
        ..small_config(1024)
    };
    for seed in 0..trials(20, 500) {
        let mut rng = Rng::new(seed);
        let fs = SimFs::new();
        let log = open(&fs, &config);
        let n = 1 + rng.below(30) as i32;
        let stored = produce(&log, n);
        log.commit(log.next_offset()).unwrap();
        // Some more, not committed: they may or may not survive.
        produce_from(&log, n, rng.below(3) as i32);
        if rng.chance(50) {
            log.prepare().unwrap();
        }
        let image = fs.crash(&mut rng);
        drop(log);
        let log = open(&image, &config);
        let end = log.next_offset();
        assert!(end >= stored.last().unwrap().1, "seed {seed}");
        // Every committed batch among the last five is a duplicate; those
        // past the commit that survived count too.
        for (i, &(base, next)) in stored
            .iter()
            .enumerate()
            .skip(stored.len().saturating_sub(5))
        {
            if end - next >= 5 * 3 {
                continue; // more than five batches survived after it
            }
            let a = log.append(&mut batch(1, 0, i as i32 * 3, 3)).unwrap();
            assert!(a.duplicate, "seed {seed}: batch {i} stored twice");
            assert_eq!((a.base_offset, a.next_offset), (base, next), "seed {seed}");
        }
        let a = log
            .append(&mut batch(1, 0, (end / 3) as i32 * 3, 3))
            .unwrap();
        assert!(!a.duplicate, "seed {seed}");
    }
}

#[test]
fn retention_forgets_producers_whose_batches_it_removed() {
    let fs = SimFs::new();
    let log = open(&fs, &small_config(1024));
    log.append(&mut batch(5, 0, 0, 1)).unwrap();
    for _ in 0..30 {
        log.append(&mut batch_of(&[vec![b'x'; 100]])).unwrap();
    }
    log.truncate(log.next_offset() - 1).unwrap();
    assert!(log.lowest_offset() > 0);
    // Producer 5 is forgotten: any sequence is accepted.
    let a = log.append(&mut batch(5, 0, 7, 1)).unwrap();
    assert!(!a.duplicate);
    // A reset forgets everyone.
    log.append(&mut batch(6, 0, 0, 1)).unwrap();
    log.reset().unwrap();
    assert!(!log.append(&mut batch(6, 0, 0, 1)).unwrap().duplicate);
    assert!(log.append(&mut batch(6, 0, 2, 1)).is_err());
}

// A kill in the middle of a snapshot's write leaves its temporary file: the
// next open removes it and keeps the state.
#[test]
fn a_snapshot_torn_by_a_kill_is_cleared_at_open() {
    let fs = SimFs::new();
    let config = small_config(1024);
    {
        let log = open(&fs, &config);
        produce(&log, 20);
        log.close().unwrap();
    }
    let tmp = Path::new(DIR).join("producers.snapshot.tmp");
    {
        use spool::storage::Open;
        let vfs = fs.shared();
        let f = vfs.open(&tmp, Open::CreateNew).unwrap();
        f.write_at(0, b"SPPS half").unwrap();
    }
    let log = open(&fs, &config);
    assert!(fs.read(&tmp).is_none(), "the torn snapshot is still there");
    let stored: Vec<_> = (0..20).map(|i| (i * 3, i * 3 + 3)).collect();
    assert_retries_are_duplicates(&log, &stored);
}
