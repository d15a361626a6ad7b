//! Crash and damage: what reopening a log keeps after torn writes, lost or
//! garbled index files and flipped bits.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use common::sim::SimFs;
use common::*;
use spool::storage::{Log, LogConfig, Open, OsVfs, StorageError, Vfs};

/// Rolls every 8 batches (the index holds 8 entries).
fn config() -> LogConfig {
    LogConfig {
        index_bytes: 64,
        ..small_config(1 << 20)
    }
}

/// [`pristine_on`] the real file system.
fn pristine(dir: &Path) -> Vec<(u64, u64, u64)> {
    pristine_on(OsVfs::shared(), dir)
}

/// A closed log with a sealed segment of 8 batches (offsets 0..16) and an
/// active one of four batches: 3 small records, 2 medium, one of 64 KiB and
/// one small. Returns each active batch's (base offset, store start, end).
fn pristine_on(vfs: Arc<dyn Vfs>, dir: &Path) -> Vec<(u64, u64, u64)> {
    let log = Log::open_with(vfs, dir, config()).unwrap();
    fill(&log, 8, 2, 40);
    let mut spans = Vec::new();
    let mut pos = 0;
    for (count, len) in [(3, 30), (2, 700), (1, 64 << 10), (1, 20)] {
        let base = fill(&log, 1, count, len)[0];
        let size = log.read_batches(base, 1).unwrap().bytes.len() as u64;
        spans.push((base, pos, pos + size));
        pos += size;
    }
    assert_eq!(log.segment_count(), 2);
    log.close().unwrap();
    spans
}

/// What a crash leaves of an index file: its entries, then zeros up to the
/// pre-allocated size (the trim on close never happened).
fn untrim(path: &Path, to: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    if f.metadata().unwrap().len() < to {
        f.set_len(to).unwrap();
    }
}

fn record_len(offset: u64) -> usize {
    match offset {
        0..=15 => 40,
        16..=18 => 30,
        19..=20 => 700,
        21 => 64 << 10,
        _ => 20,
    }
}

fn assert_all_readable(log: &Log, to: u64) {
    for offset in log.lowest_offset()..to {
        let r = log
            .read(offset)
            .unwrap_or_else(|e| panic!("offset {offset}: {e}"));
        assert_eq!(
            r.value.as_deref(),
            Some(&value_for(offset, record_len(offset))[..]),
            "offset {offset}"
        );
    }
}

fn cut_points(spans: &[(u64, u64, u64)]) -> Vec<u64> {
    let mut cuts = Vec::new();
    for &(_, start, end) in &spans[1..] {
        let step = if end - start > 4096 { 61 } else { 1 };
        cuts.extend((start..end).step_by(step));
        cuts.extend([
            end - 1,
            end - 2,
            start + 1,
            start + 47,
            start + 48,
            start + 49,
        ]);
    }
    cuts.push(spans.last().unwrap().2);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Cuts the active store of the pristine log on `vfs` at `cut` (with the
/// index files left at their pre-sized length, as a crash leaves them),
/// reopens, and checks that exactly the batches ending before the cut
/// survive, the cut bytes are in a sidecar, and appends resume.
fn check_cut(vfs: Arc<dyn Vfs>, dir: &Path, spans: &[(u64, u64, u64)], store: &[u8], cut: u64) {
    let store_path = segment_file(dir, 16, "store");
    vfs.open(&store_path, Open::ReadWrite)
        .unwrap()
        .set_len(cut)
        .unwrap();
    for (ext, len) in [("index", 64), ("timeindex", 96)] {
        let file = vfs
            .open(&segment_file(dir, 16, ext), Open::ReadWrite)
            .unwrap();
        if file.size().unwrap() < len {
            file.set_len(len).unwrap();
        }
    }
    let counts = [3, 2, 1, 1];
    let complete = spans.iter().enumerate().rfind(|(_, s)| s.2 <= cut);
    let expected_next = complete.map_or(16, |(i, s)| s.0 + counts[i]);
    let good_end = complete.map_or(0, |(_, s)| s.2);

    let log = Log::open_with(Arc::clone(&vfs), dir, config()).unwrap();
    assert_eq!(log.next_offset(), expected_next, "cut at {cut}");
    assert_all_readable(&log, expected_next);
    let size = vfs
        .open(&store_path, Open::ReadOnly)
        .unwrap()
        .size()
        .unwrap();
    assert_eq!(size, good_end, "cut at {cut}");
    let torn: Vec<String> = vfs
        .list(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".torn"))
        .collect();
    if cut == good_end {
        assert!(torn.is_empty(), "nothing to cut at {cut}");
    } else {
        assert_eq!(torn.len(), 1);
        let sidecar = vfs.open(&dir.join(&torn[0]), Open::ReadOnly).unwrap();
        let kept = sidecar
            .read_at(0, sidecar.size().unwrap() as usize)
            .unwrap();
        assert_eq!(
            kept,
            store[good_end as usize..cut as usize],
            "sidecar at {cut}"
        );
        assert_eq!(log.recovery()[0].1.truncated_bytes, cut - good_end);
    }
    // Appending after recovery works and reads back, also after a reopen.
    let appended = fill(&log, 1, 1, 20)[0];
    assert_eq!(appended, expected_next);
    assert_eq!(
        log.read(appended).unwrap().value.as_deref().unwrap(),
        value_for(appended, 20)
    );
    drop(log);
    let log = Log::open_with(vfs, dir, config()).unwrap();
    assert!(
        log.recovery().is_empty(),
        "second open at cut {cut}: {:?}",
        log.recovery()
    );
    assert_eq!(log.next_offset(), expected_next + 1);
    assert_eq!(
        log.read(appended).unwrap().value.as_deref().unwrap(),
        value_for(appended, 20)
    );
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_and_appends_resume() {
    // On the simulated disk: fast enough for every byte of the last batches.
    let disk = SimFs::new();
    let dir = Path::new("/log");
    let spans = pristine_on(disk.shared(), dir);
    let store = disk.read(&segment_file(dir, 16, "store")).unwrap();
    let cuts = cut_points(&spans);
    assert!(cuts.len() > 2000, "{} cut points", cuts.len());
    for cut in cuts {
        check_cut(disk.snapshot().shared(), dir, &spans, &store, cut);
    }
}

#[test]
fn a_torn_tail_on_a_real_file_system() {
    // The same on the real file system, at every 97th cut point.
    let pristine_dir = tempfile::tempdir().unwrap();
    let spans = pristine(pristine_dir.path());
    let store = std::fs::read(segment_file(pristine_dir.path(), 16, "store")).unwrap();
    for cut in cut_points(&spans).into_iter().step_by(97) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine_dir.path(), dir.path());
        check_cut(OsVfs::shared(), dir.path(), &spans, &store, cut);
    }
}

/// Opens a copy of the pristine log after `damage`, and checks that every
/// record is still there.
fn survives(damage: impl Fn(&Path)) -> (tempfile::TempDir, Log) {
    let (dir, log) = damaged_copy(damage);
    assert_eq!(log.next_offset(), 23);
    assert_all_readable(&log, 23);
    // offset_for_timestamp still answers from a rebuilt time index.
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    (dir, log)
}

#[test]
fn a_zero_filled_index_tail_is_not_read_as_entries() {
    let (_dir, log) = survives(|dir| {
        untrim(&segment_file(dir, 16, "index"), 64);
        untrim(&segment_file(dir, 16, "timeindex"), 96);
    });
    // Dropping the zero entries is a repair, but nothing is cut or fenced.
    for (_, report) in log.recovery() {
        assert_eq!(
            (report.truncated_bytes, report.damaged.len()),
            (0, 0),
            "{report:?}"
        );
    }
    // The sealed segment's index, left untrimmed by a crash mid-roll.
    let (_dir, log) = survives(|dir| {
        let path = segment_file(dir, 0, "index");
        untrim(&path, 128);
    });
    assert!(log
        .recovery()
        .iter()
        .any(|(base, r)| *base == 0 && r.index_rebuilt));
}

#[test]
fn a_garbled_index_tail_is_rebuilt() {
    for (base, entries) in [(16u64, 4u64), (0, 8)] {
        for seed in 0..20u64 {
            survives(|dir| {
                let path = segment_file(dir, base, "index");
                let mut bytes = std::fs::read(&path).unwrap();
                let n = bytes.len();
                // Garble the last two entries with seeded noise.
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for b in &mut bytes[n - 16..] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                assert_eq!(n as u64, entries * 8);
                std::fs::write(&path, bytes).unwrap();
            });
        }
    }
}

#[test]
fn a_deleted_index_is_rebuilt() {
    for base in [0u64, 16] {
        for ext in ["index", "timeindex"] {
            let (_dir, log) =
                survives(|dir| std::fs::remove_file(segment_file(dir, base, ext)).unwrap());
            assert!(!log.recovery().is_empty(), "{base}.{ext}");
        }
    }
    // Both files of both segments at once.
    survives(|dir| {
        for base in [0u64, 16] {
            for ext in ["index", "timeindex"] {
                std::fs::remove_file(segment_file(dir, base, ext)).unwrap();
            }
        }
    });
}

#[test]
fn a_truncated_index_is_extended_from_the_store() {
    for base in [0u64, 16] {
        survives(|dir| {
            let path = segment_file(dir, base, "index");
            let len = std::fs::metadata(&path).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len - 13)
                .unwrap();
        });
    }
}

#[test]
fn an_index_pointing_past_its_store_is_repaired() {
    for base in [0u64, 16] {
        survives(|dir| {
            let path = segment_file(dir, base, "index");
            let mut bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            bytes[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
            std::fs::write(&path, bytes).unwrap();
        });
    }
}

/// Flips one bit at `pos` of a segment's store.
fn flip(dir: &Path, base: u64, pos: u64) {
    let path = segment_file(dir, base, "store");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[pos as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}

fn damaged_copy(damage: impl Fn(&Path)) -> (tempfile::TempDir, Log) {
    let pristine_dir = tempfile::tempdir().unwrap();
    pristine(pristine_dir.path());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pristine_dir.path(), dir.path());
    damage(dir.path());
    let log = Log::open(dir.path(), config()).unwrap();
    (dir, log)
}

/// Batches of the sealed segment are 2 records of 40 bytes: find batch `k`'s
/// store position from a clean read.
fn sealed_batch_pos(k: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    pristine(dir.path());
    let log = Log::open(dir.path(), config()).unwrap();
    let first = log.read_batches(0, 1).unwrap().bytes.len() as u64;
    k * first
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_fenced_not_truncated() {
    let pos = sealed_batch_pos(3);
    let (dir, log) = damaged_copy(|dir| flip(dir, 0, pos + 60));
    // Opening did not scan the sealed segment, and cut nothing.
    assert!(log.recovery().is_empty());
    assert_eq!(log.next_offset(), 23);
    for offset in [6, 7] {
        match log.read(offset) {
            Err(StorageError::Corrupt {
                segment: 0,
                position,
                resume_at: Some(8),
                ..
            }) => assert_eq!(position, pos),
            other => panic!("offset {offset}: expected corruption, got {other:?}"),
        }
    }
    for offset in (0..6).chain(8..23) {
        assert_eq!(
            log.read(offset).unwrap().value.as_deref(),
            Some(&value_for(offset, record_len(offset))[..])
        );
    }
    // A read that starts before the damage stops before it.
    let r = log.read_batches(2, u64::MAX).unwrap();
    assert_eq!(r.next_offset, 6);
    // Appends carry on.
    assert_eq!(fill(&log, 1, 1, 20)[0], 23);
    assert_eq!(
        std::fs::metadata(segment_file(dir.path(), 0, "store"))
            .unwrap()
            .len(),
        sealed_batch_pos(8)
    );
}

#[test]
fn a_flipped_bit_in_the_active_segment_is_fenced() {
    let (_dir, log) = damaged_copy(|dir| flip(dir, 16, 200));
    assert_eq!(log.next_offset(), 23);
    // The second active batch holds offsets 19 and 20.
    for offset in [19, 20] {
        assert!(
            matches!(
                log.read(offset),
                Err(StorageError::Corrupt {
                    segment: 16,
                    resume_at: Some(21),
                    ..
                })
            ),
            "offset {offset}"
        );
    }
    for offset in (0..19).chain(21..23) {
        assert_eq!(
            log.read(offset).unwrap().value.as_deref(),
            Some(&value_for(offset, record_len(offset))[..])
        );
    }
}

#[test]
fn damage_found_by_a_scan_is_kept_and_fenced_not_cut() {
    // Without its index the active segment is scanned from the start; a
    // zeroed chunk in its second batch must not cut the valid ones after it.
    let (dir, log) = damaged_copy(|dir| {
        std::fs::remove_file(segment_file(dir, 16, "index")).unwrap();
        let path = segment_file(dir, 16, "store");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[210..300].fill(0); // inside the second batch only
        std::fs::write(&path, bytes).unwrap();
    });
    let report = &log.recovery().iter().find(|(b, _)| *b == 16).unwrap().1;
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(log.next_offset(), 23);
    assert!(matches!(
        log.read(19),
        Err(StorageError::Corrupt { segment: 16, .. })
    ));
    for offset in (0..19).chain(21..23) {
        assert_eq!(
            log.read(offset).unwrap().value.as_deref(),
            Some(&value_for(offset, record_len(offset))[..])
        );
    }
    let torn = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "torn")
        })
        .count();
    assert_eq!(torn, 0);
}

#[test]
fn a_sealed_segment_missing_its_tail_is_reported_not_hidden() {
    let cut = sealed_batch_pos(7) + 10;
    let (_dir, log) = damaged_copy(|dir| {
        let path = segment_file(dir, 0, "store");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
    });
    assert!(log
        .recovery()
        .iter()
        .any(|(b, r)| *b == 0 && r.index_rebuilt && !r.damaged.is_empty()));
    assert_eq!(log.next_offset(), 23);
    for offset in 0..14 {
        assert_eq!(
            log.read(offset).unwrap().value.as_deref().unwrap(),
            value_for(offset, 40)
        );
    }
    assert!(matches!(
        log.read(14),
        Err(StorageError::Corrupt { segment: 0, .. })
    ));
    assert!(matches!(
        log.read(15),
        Err(StorageError::Corrupt { segment: 0, .. })
    ));
    assert_eq!(
        log.read(16).unwrap().value.as_deref().unwrap(),
        value_for(16, 30)
    );
}

#[test]
fn opening_many_segments_does_not_read_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_bytes: 64,
        ..small_config(1024)
    };
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        // ~600-byte batches: one per segment.
        fill(&log, 1000, 1, 550);
        assert_eq!(log.segment_count(), 1000);
        log.close().unwrap();
    }
    // Damage the payload of a sealed segment's only batch. Opening checks a
    // sealed segment's last header, not its records, so it notices nothing;
    // the read does.
    {
        let path = segment_file(dir.path(), 500, "store");
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(300)).unwrap();
        f.write_all(b"garbage").unwrap();
    }
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.segment_count(), 1000);
    assert!(log.recovery().is_empty(), "{:?}", log.recovery());
    assert!(matches!(
        log.read(500),
        Err(StorageError::Corrupt { segment: 500, .. })
    ));
    assert_eq!(
        log.read(999).unwrap().value.as_deref().unwrap(),
        value_for(999, 550)
    );
}

#[test]
fn a_zeroed_time_index_is_not_taken_for_append_times() {
    // The time index of the active segment zeroed (its pages never reached
    // the disk): an entry (time 0, offset 0) looks in order but is false, and
    // would make the segment look 55 years old.
    let (dir, log) = survives(|dir| {
        let path = segment_file(dir, 16, "timeindex");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::write(&path, vec![0u8; len as usize + 96]).unwrap();
    });
    let report = &log.recovery().iter().find(|(b, _)| *b == 16).unwrap().1;
    assert!(report.index_rebuilt);
    drop(log);
    // With a one-day segment age, the next append must not roll.
    let aged = LogConfig {
        segment_age: Some(std::time::Duration::from_secs(86_400)),
        ..config()
    };
    let log = Log::open(dir.path(), aged).unwrap();
    fill(&log, 1, 1, 20);
    assert_eq!(
        log.segment_count(),
        2,
        "the active segment was taken for ancient"
    );
}

#[test]
fn a_crash_with_an_empty_active_segment_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    {
        let _log = Log::open(dir.path(), config()).unwrap();
    }
    // What a crash leaves: the index files at their full pre-sized length.
    untrim(&segment_file(dir.path(), 0, "index"), 64);
    untrim(&segment_file(dir.path(), 0, "timeindex"), 96);
    let log = Log::open(dir.path(), config()).unwrap();
    assert!(log.recovery().is_empty(), "{:?}", log.recovery());
    assert_eq!(log.next_offset(), 0);
}
