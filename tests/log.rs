//! The log's behaviour through its public API: proglog's cases in our terms,
//! then rolls, reads, retention, durability modes and concurrency.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spool::storage::batch::{self, BatchIter};
use spool::storage::{IoMode, Log, LogConfig, Retention, StorageError, SyncMode, TimestampType};

/// The length of an active store holding `data` bytes: with io = "direct"
/// (`SPOOL_IO=direct`) its last block is zero-padded on disk.
fn active_file_len(data: u64) -> u64 {
    match IoMode::default_mode() {
        IoMode::Direct => data.div_ceil(4096) * 4096,
        IoMode::Buffered => data,
    }
}

#[test]
fn append_then_read_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    assert_eq!((log.lowest_offset(), log.next_offset()), (0, 0));
    let bases = fill(&log, 10, 3, 50);
    assert_eq!(bases, (0..10).map(|b| b * 3).collect::<Vec<_>>());
    assert_eq!(log.next_offset(), 30);
    assert_readable(&log, 0, 30, 50);
}

#[test]
fn keys_headers_and_timestamps_survive() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut b = spool::storage::BatchBuilder::new();
    b.push(5, Some(b"k"), Some(b"v1"), &[("h", Some(b"x"))]);
    b.push(3, None, Some(b"v2"), &[]);
    let mut bytes = b.finish();
    let appended = log.append(&mut bytes).unwrap();
    assert_eq!((appended.base_offset, appended.next_offset), (0, 2));
    let first = log.read(0).unwrap();
    assert_eq!(first.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(first.timestamp, 5);
    assert_eq!(
        first.headers,
        vec![("h".to_string(), Some(bytes::Bytes::from_static(b"x")))]
    );
    let second = log.read(1).unwrap();
    assert_eq!((second.key, second.timestamp), (None, 3));
    // By default the batch keeps its producer's times, byte for byte.
    assert_eq!(appended.log_append_time, None);
    let read = log.read_batches(0, 1).unwrap();
    assert_eq!(&read.bytes[batch::CRC_START..], &bytes[batch::CRC_START..]);
    let header = batch::BatchHeader::parse(&read.bytes).unwrap();
    assert_eq!((header.base_timestamp, header.max_timestamp), (5, 5));
}

#[test]
fn a_log_append_time_log_stamps_its_clock_on_each_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppend,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let mut b = spool::storage::BatchBuilder::new();
    b.push(5, None, Some(b"a"), &[]);
    b.push(7, None, Some(b"b"), &[]);
    let appended = log.append(&mut b.finish()).unwrap();
    let stamped = appended.log_append_time.expect("a log append time");
    assert!(stamped > 1_600_000_000_000, "wall-clock ms, got {stamped}");
    for offset in 0..2 {
        assert_eq!(log.read(offset).unwrap().timestamp, stamped);
    }
    let read = log.read_batches(0, 1).unwrap();
    let header = batch::check(&read.bytes).expect("a valid CRC after the stamp");
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, stamped);
    // Seeks by time go by the stamp, not the producer's 5 and 7.
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(stamped + 1).unwrap(), None);
}

/// A batch whose `maxTimestamp` is not its largest record timestamp (as
/// librdkafka 2.12 writes it for records stamped -1, "no timestamp": 0) is
/// stored with the largest record timestamp and a recomputed CRC, as
/// Kafka's broker stores it, plain or compressed.
#[test]
fn a_wrong_max_timestamp_is_stored_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for (i, codec) in [batch::Codec::None, batch::Codec::Lz4]
        .into_iter()
        .enumerate()
    {
        let mut b = spool::storage::BatchBuilder::new();
        b.push(-1, None, Some(b"no time"), &[]);
        b.push(-1, None, Some(b"none either"), &[]);
        let mut bytes = b.finish_compressed(codec);
        bytes[35..43].copy_from_slice(&0i64.to_be_bytes());
        batch::reseal(&mut bytes);
        assert!(
            batch::validate(&bytes, usize::MAX).is_err(),
            "declared 0, records -1"
        );
        let appended = log.append(&mut bytes).unwrap();
        assert_eq!(appended.base_offset, 2 * i as u64);
        let read = log.read_batches(appended.base_offset, 1).unwrap();
        let header = batch::validate(&read.bytes, usize::MAX).expect("stored valid");
        assert_eq!(header.max_timestamp, -1, "{codec:?}");
        assert_eq!(
            log.read(appended.base_offset + 1).unwrap().value.as_deref(),
            Some(&b"none either"[..])
        );
    }
}

#[test]
fn a_producer_clock_too_far_ahead_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_timestamp_ahead: Some(Duration::from_secs(60)),
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let now = common::now_ms();
    let mut b = spool::storage::BatchBuilder::new();
    b.push(now + 3_600_000, None, Some(b"from the future"), &[]);
    let e = log.append(&mut b.finish()).unwrap_err();
    assert!(matches!(e, StorageError::TimestampAhead { .. }), "{e}");
    assert!(e.to_string().contains("ahead of the broker's clock"), "{e}");
    assert_eq!(log.next_offset(), 0, "nothing stored");
    let mut b = spool::storage::BatchBuilder::new();
    b.push(now + 30_000, None, Some(b"a little ahead"), &[]);
    assert_eq!(log.append(&mut b.finish()).unwrap().base_offset, 0);
}

#[test]
fn out_of_range_reads_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    assert!(matches!(
        log.read(0),
        Err(StorageError::OffsetOutOfRange {
            offset: 0,
            lowest: 0,
            next: 0
        })
    ));
    fill(&log, 1, 2, 10);
    match log.read(2) {
        Err(StorageError::OffsetOutOfRange {
            offset: 2,
            lowest: 0,
            next: 2,
        }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    assert!(matches!(
        log.read_batches(3, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // At the end a batch read is empty, not an error: a consumer waits there.
    let at_end = log.read_batches(2, 100).unwrap();
    assert!(at_end.bytes.is_empty());
    assert_eq!((at_end.next_offset, at_end.log_end), (2, 2));
}

#[test]
fn invalid_batches_are_refused_and_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    fill(&log, 1, 1, 10);
    let mut bad_crc = batch_of(&[b"x".to_vec()]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(matches!(
        log.append(&mut bad_crc),
        Err(StorageError::InvalidBatch(_))
    ));
    let mut short = batch_of(&[b"x".to_vec()]);
    short.truncate(30);
    assert!(matches!(
        log.append(&mut short),
        Err(StorageError::InvalidBatch(_))
    ));
    let mut too_big = batch_of(&[vec![0u8; 9 << 20]]);
    assert!(matches!(
        log.append(&mut too_big),
        Err(StorageError::BatchTooLarge { .. })
    ));
    assert_eq!(log.next_offset(), 1);
    assert_eq!(
        active_file_len(log.record_bytes()),
        std::fs::metadata(segment_file(dir.path(), 0, "store"))
            .unwrap()
            .len()
    );
    fill(&log, 1, 1, 10);
    assert_readable(&log, 0, 2, 10);
}

#[test]
fn reopen_keeps_records_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config(4096)).unwrap();
        fill(&log, 40, 2, 100);
        assert!(log.segment_count() > 1);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert!(
        log.recovery().is_empty(),
        "a clean close needs no repair: {:?}",
        log.recovery()
    );
    assert_eq!((log.lowest_offset(), log.next_offset()), (0, 80));
    assert_readable(&log, 0, 80, 100);
    fill(&log, 5, 2, 100);
    assert_readable(&log, 0, 90, 100);
}

#[test]
fn reopen_after_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config(4096)).unwrap();
        fill(&log, 10, 2, 100);
    }
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.next_offset(), 20);
    assert_readable(&log, 0, 20, 100);
}

#[test]
fn a_log_is_opened_once() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert!(matches!(
        Log::open(dir.path(), small_config(4096)),
        Err(StorageError::BadLayout { .. })
    ));
}

#[test]
fn segments_roll_by_size_and_are_named_by_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    let bases = fill(&log, 30, 1, 300);
    assert!(
        log.segment_count() >= 5,
        "only {} segments",
        log.segment_count()
    );
    // A sync finishes the seal the last roll deferred (which, with io =
    // "direct", cuts its last block's padding).
    log.sync().unwrap();
    let mut stores: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".store"))
        .collect();
    stores.sort();
    assert_eq!(stores.len(), log.segment_count());
    assert_eq!(stores[0], "00000000000000000000.store");
    for name in &stores {
        let base: u64 = name[..20].parse().unwrap();
        assert!(bases.contains(&base), "{name} does not start at a batch");
        let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
        // Sealed stores end at their data; the active one may be padded.
        let most = if name == stores.last().unwrap() {
            active_file_len(2048)
        } else {
            2048
        };
        assert!(size <= most, "{name} is {size} bytes");
        for ext in ["index", "timeindex"] {
            assert!(segment_file(dir.path(), base, ext).exists());
        }
    }
    // Sealed index files are cut to their entries: 8 bytes per batch.
    let first_next: u64 = stores[1][..20].parse().unwrap();
    assert_eq!(
        std::fs::metadata(segment_file(dir.path(), 0, "index"))
            .unwrap()
            .len(),
        8 * first_next
    );
    assert_readable(&log, 0, 30, 300);
}

#[test]
fn a_full_index_rolls_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_bytes: 64,
        ..small_config(1 << 20)
    };
    let log = Log::open(dir.path(), config).unwrap();
    fill(&log, 20, 1, 10);
    // 64 bytes hold 8 entries: 20 batches need 3 segments.
    assert_eq!(log.segment_count(), 3);
    assert!(segment_file(dir.path(), 8, "store").exists());
    assert!(segment_file(dir.path(), 16, "store").exists());
    assert_readable(&log, 0, 20, 10);
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 1, 1, 100);
    fill(&log, 1, 1, 5000);
    fill(&log, 1, 1, 100);
    assert_eq!(log.segment_count(), 3);
    assert_eq!(
        log.read(1).unwrap().value.clone().unwrap_or_default().len(),
        5000
    );
}

#[test]
fn read_batches_returns_whole_batches_within_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    fill(&log, 10, 4, 100);
    let one = log.read_batches(0, 1).unwrap();
    let batch_len = one.bytes.len() as u64;
    assert_eq!(
        (one.first_offset, one.next_offset),
        (0, 4),
        "at least one whole batch"
    );
    // Offset 6 sits in the batch [4, 8): that batch comes back whole.
    let read = log.read_batches(6, batch_len * 3 + 10).unwrap();
    assert_eq!((read.first_offset, read.next_offset), (4, 16));
    assert_eq!(read.bytes.len() as u64, batch_len * 3);
    let batches: Vec<_> = BatchIter::new(&read.bytes)
        .map(|b| b.unwrap().0.base_offset)
        .collect();
    assert_eq!(batches, vec![4, 8, 12]);
    assert_eq!((read.log_start, read.log_end), (0, 40));
    // Reading to the end, chunk by chunk, gives every batch once.
    let mut offset = 0;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let r = log.read_batches(offset, batch_len * 2).unwrap();
        if r.bytes.is_empty() {
            break;
        }
        seen.extend(BatchIter::new(&r.bytes).map(|b| b.unwrap().0.base_offset));
        offset = r.next_offset;
    }
    assert_eq!(seen, (0..10).map(|b| b * 4).collect::<Vec<_>>());
}

#[test]
fn the_reader_streams_every_stored_byte_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 25, 2, 100);
    let mut all = Vec::new();
    log.reader().read_to_end(&mut all).unwrap();
    let mut expected = Vec::new();
    let mut offset = 0;
    while offset < log.next_offset() {
        let r = log.read_batches(offset, u64::MAX).unwrap();
        expected.extend_from_slice(&r.bytes);
        offset = r.next_offset;
    }
    assert_eq!(all, expected);
    let mut next = 0;
    for item in BatchIter::new(&all) {
        let (header, _) = item.unwrap();
        assert_eq!(header.base_offset, next);
        next = header.next_offset();
    }
    assert_eq!(next, 50);
}

#[test]
fn truncate_removes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 30, 1, 300);
    let segments = log.segment_count();
    let removed = log.truncate(10).unwrap();
    assert!(removed.segments > 0 && removed.bytes > 0);
    assert_eq!(log.segment_count(), segments - removed.segments);
    let lowest = log.lowest_offset();
    assert!(lowest <= 10 && lowest > 0, "lowest {lowest}");
    assert!(!segment_file(dir.path(), 0, "store").exists());
    assert!(matches!(
        log.read(lowest - 1),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_readable(&log, lowest, 30, 300);
    // The active segment always stays, even when asked to drop everything.
    log.truncate(u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(log.lowest_offset() <= 29);
    assert_readable(&log, log.lowest_offset(), 30, 300);
    // The range survives a reopen.
    let lowest = log.lowest_offset();
    drop(log);
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    assert_eq!((log.lowest_offset(), log.next_offset()), (lowest, 30));
}

#[test]
fn retention_by_bytes_keeps_the_log_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 40, 1, 300);
    let before = log.size_bytes();
    let policy = Retention {
        max_bytes: Some(4096),
        max_age: None,
    };
    let removed = log.apply_retention(policy, 0).unwrap();
    assert!(removed.segments > 0);
    assert_eq!(log.size_bytes(), before - removed.bytes);
    assert!(log.size_bytes() <= 4096, "{} bytes left", log.size_bytes());
    // One segment fewer would have been enough to fit? Then it kept too little.
    assert!(log.size_bytes() + 2048 > 4096, "deleted more than needed");
    assert_readable(&log, log.lowest_offset(), 40, 300);
    assert_eq!(
        log.apply_retention(policy, 0).unwrap().segments,
        0,
        "idempotent"
    );
}

#[test]
fn retention_by_age_uses_batch_times() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 30, 1, 300);
    let newest = log.read_batches(29, 1).unwrap();
    let newest_time = batch::BatchHeader::parse(&newest.bytes)
        .unwrap()
        .max_timestamp;
    let policy = Retention {
        max_bytes: None,
        max_age: Some(Duration::from_secs(60)),
    };
    // Nothing is a minute old yet.
    assert_eq!(
        log.apply_retention(policy, newest_time).unwrap().segments,
        0
    );
    // An hour later everything is, but the active segment stays.
    let removed = log
        .apply_retention(policy, newest_time + 3_600_000)
        .unwrap();
    assert!(removed.segments > 0);
    assert_eq!(log.segment_count(), 1);
    assert_readable(&log, log.lowest_offset(), 30, 300);
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    let mut times = Vec::new();
    for _ in 0..12 {
        let before = log.next_offset();
        fill(&log, 1, 2, 300);
        times.push((
            before,
            log.read_batches(before, 1)
                .map(|r| batch::BatchHeader::parse(&r.bytes).unwrap().max_timestamp)
                .unwrap(),
        ));
        std::thread::sleep(Duration::from_millis(3));
    }
    for &(offset, time) in &times {
        let found = log.offset_for_timestamp(time).unwrap().unwrap();
        // The first batch appended at or after `time` (earlier batches in the
        // same millisecond count too).
        let first_same = times.iter().find(|(_, t)| *t >= time).unwrap().0;
        assert_eq!(found, first_same, "time {time} (batch {offset})");
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(
        log.offset_for_timestamp(times.last().unwrap().1 + 1)
            .unwrap(),
        None
    );
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_age: Some(Duration::from_millis(1)),
        ..small_config(1 << 20)
    };
    let log = Log::open(dir.path(), config).unwrap();
    fill(&log, 1, 1, 10);
    std::thread::sleep(Duration::from_millis(5));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(log.roll_if_due(now).unwrap());
    assert_eq!(log.segment_count(), 2);
    // An empty active segment never rolls.
    assert!(!log.roll_if_due(now + 10_000).unwrap());
    fill(&log, 1, 1, 10);
    assert_readable(&log, 0, 2, 10);
}

#[test]
fn reset_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic");
    let log = Log::open(&path, small_config(2048)).unwrap();
    fill(&log, 20, 1, 300);
    log.reset().unwrap();
    assert_eq!(
        (log.lowest_offset(), log.next_offset(), log.segment_count()),
        (0, 0, 1)
    );
    assert!(matches!(
        log.read(0),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    fill(&log, 3, 1, 30);
    assert_readable(&log, 0, 3, 30);
    log.remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn appends_after_close_fail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 2, 1, 10);
    log.close().unwrap();
    let mut batch = batch_of(&[b"late".to_vec()]);
    assert!(matches!(log.append(&mut batch), Err(StorageError::Closed)));
    // Reads still work on a closed log.
    assert_readable(&log, 0, 2, 10);
}

#[test]
fn every_sync_mode_appends_and_commits() {
    for sync in [
        SyncMode::Always,
        SyncMode::Interval(Duration::from_millis(5)),
        SyncMode::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogConfig {
                sync,
                ..small_config(4096)
            },
        )
        .unwrap();
        for _ in 0..20 {
            let mut batch = batch_of(&[value_for(log.next_offset(), 100)]);
            let appended = log.append(&mut batch).unwrap();
            log.commit(appended.next_offset).unwrap();
        }
        log.sync().unwrap();
        assert_readable(&log, 0, 20, 100);
    }
}

#[test]
fn concurrent_appenders_share_syncs_and_get_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                sync: SyncMode::Always,
                ..small_config(64 << 10)
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..50 {
                    let value = format!("t{t}-{i}").into_bytes();
                    let mut batch = batch_of(std::slice::from_ref(&value));
                    let appended = log.append(&mut batch).unwrap();
                    log.commit(appended.next_offset).unwrap();
                    mine.push((appended.base_offset, value));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all.len(), 200);
    for (i, (offset, value)) in all.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(
            log.read(*offset).unwrap().value.as_deref().unwrap(),
            &value[..]
        );
    }
}

#[test]
fn readers_run_while_appends_roll_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small_config(4096)).unwrap());
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || fill(&log, 300, 2, 200))
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut offset = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while offset < 600 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "reader stuck at {offset}"
                    );
                    let r = log.read_batches(offset, 4096).unwrap();
                    for item in BatchIter::new(&r.bytes) {
                        let (_, bytes) = item.unwrap();
                        let records = batch::decode_records(&r.bytes.slice_ref(bytes)).unwrap();
                        for rec in records {
                            if rec.offset >= offset {
                                assert_eq!(
                                    rec.value.as_deref().unwrap(),
                                    value_for(rec.offset, 200)
                                );
                                assert_eq!(
                                    rec.offset, offset,
                                    "records arrive in order without gaps"
                                );
                                offset += 1;
                            }
                        }
                    }
                    if r.bytes.is_empty() {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn a_reader_keeps_reading_a_segment_that_retention_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(2048)).unwrap();
    fill(&log, 30, 1, 300);
    let mut reader = log.reader();
    let mut first = vec![0u8; 100];
    reader.read_exact(&mut first).unwrap();
    log.truncate(u64::MAX).unwrap();
    assert!(!segment_file(dir.path(), 0, "store").exists());
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    let mut next = 0;
    first.extend_from_slice(&rest);
    for item in BatchIter::new(&first) {
        let (h, _) = item.unwrap();
        assert_eq!(h.base_offset, next);
        next = h.next_offset();
    }
    assert_eq!(next, 30);
}

#[test]
fn read_batches_up_to_never_exceeds_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    fill(&log, 4, 4, 100);
    let batch_len = log.read_batches(0, 1).unwrap().bytes.len() as u64;
    let none = log.read_batches_up_to(0, batch_len - 1).unwrap();
    assert!(none.bytes.is_empty());
    assert_eq!(none.next_offset, 0);
    let two = log.read_batches_up_to(5, batch_len * 2 + 5).unwrap();
    assert_eq!(
        (two.first_offset, two.next_offset, two.bytes.len() as u64),
        (4, 12, batch_len * 2)
    );
}

/// A batch as Spool 0.1 stored it: a 48-byte header (magic 1 at byte 24,
/// the check at 20..24 over everything else) and one record.
fn old_format_batch() -> Vec<u8> {
    let record = [6u8, 0, 0, 2, b'h', b'i', 0];
    let mut b = vec![0u8; 48];
    b.extend_from_slice(&record);
    let len = b.len() as u32;
    b[8..16].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b[24] = 1;
    b[28..32].copy_from_slice(&1u32.to_be_bytes());
    b[32..40].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b[40..48].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    let crc = crc32c::crc32c(&b[..20]) ^ crc32c::crc32c(&b[24..]);
    b[20..24].copy_from_slice(&crc.to_be_bytes());
    b
}

#[test]
fn a_store_in_the_old_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = segment_file(dir.path(), 0, "store");
    let old = [old_format_batch(), old_format_batch()].concat();
    std::fs::write(&store, &old).unwrap();
    let e = Log::open(dir.path(), LogConfig::default()).unwrap_err();
    assert!(matches!(e, StorageError::OldFormat { .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("0.1"), "{message}");
    // Nothing was written: not the store, not an index, not a lock file.
    assert_eq!(std::fs::read(&store).unwrap(), old);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_damaged_store_that_looks_old_is_recovered_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
        fill(&log, 3, 2, 40);
    }
    // Garbage in the first batch that puts a 1 where 0.1 kept its magic:
    // without 0.1's checksum it is damage, which recovery handles.
    let store = segment_file(dir.path(), 0, "store");
    let mut bytes = std::fs::read(&store).unwrap();
    bytes[24] = 1;
    bytes[16] = 7;
    std::fs::write(&store, &bytes).unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    assert_eq!(log.next_offset(), 6);
    assert!(matches!(log.read(0), Err(StorageError::Corrupt { .. })));
    assert_readable(&log, 2, 6, 40);
}

/// A batch of records at these timestamps, each value `size` bytes.
fn timed_batch(times: &[i64], size: usize, codec: Option<batch::Codec>) -> Vec<u8> {
    let mut b = spool::storage::BatchBuilder::new();
    for &t in times {
        b.push(t, None, Some(&vec![b'x'; size]), &[]);
    }
    match codec {
        Some(c) => b.finish_compressed(c),
        None => b.finish(),
    }
}

// Kafka's ListOffsets by time names a record, not a batch: records of a
// batch need not be in time order, so it is the first record of the first
// batch reaching the time whose own timestamp does.
#[test]
fn record_for_timestamp_names_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    for (i, codec) in [None, Some(batch::Codec::Lz4)].into_iter().enumerate() {
        // Later for each codec: the earlier batches are all older.
        let t0 = now_ms() - 1_000_000 + 100 * i as i64;
        let base = log.next_offset();
        log.append(&mut timed_batch(
            &[t0 + 5, t0 + 1, t0 + 9, t0 + 7],
            10,
            codec,
        ))
        .unwrap();
        log.append(&mut timed_batch(&[t0 + 3, t0 + 12], 10, codec))
            .unwrap();
        let ask = |t: i64| log.record_for_timestamp(t).unwrap();
        // Records from `base` on: t0+5, +1, +9, +7 | +3, +12.
        assert_eq!(ask(t0 + 5), Some((base, t0 + 5)), "{codec:?}");
        assert_eq!(ask(t0 + 6), Some((base + 2, t0 + 9)), "{codec:?}");
        assert_eq!(ask(t0 + 10), Some((base + 5, t0 + 12)), "{codec:?}");
        assert_eq!(ask(t0 + 13), None, "{codec:?}");
    }
}

// Kafka's ListOffsets "max timestamp" (-3): the record with the largest
// timestamp, wherever its segment, the first of equals.
#[test]
fn max_timestamp_record_is_found_in_whichever_segment_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(1024)).unwrap();
    assert_eq!(log.max_timestamp_record().unwrap(), None, "an empty log");
    let t0 = now_ms() - 1_000_000;
    // Each batch over 1 KiB: a segment each.
    log.append(&mut timed_batch(&[t0 + 1, t0 + 4], 600, None))
        .unwrap();
    log.append(&mut timed_batch(
        &[t0 + 3, t0 + 50, t0 + 2, t0 + 50],
        300,
        None,
    ))
    .unwrap();
    log.append(&mut timed_batch(&[t0 + 30, t0 + 20], 600, None))
        .unwrap();
    log.append(&mut timed_batch(&[t0 + 50], 600, None)).unwrap();
    assert!(log.segment_count() >= 4, "{} segments", log.segment_count());
    assert_eq!(log.max_timestamp_record().unwrap(), Some((3, t0 + 50)));
    // After a restart, from the rebuilt indexes.
    drop(log);
    let log = Log::open(dir.path(), small_config(1024)).unwrap();
    assert_eq!(log.max_timestamp_record().unwrap(), Some((3, t0 + 50)));
}
