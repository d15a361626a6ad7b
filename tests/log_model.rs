//! Random sequences of appends, reads, reopens, truncations and retention
//! (by size and by age), checked against an in-memory model of the log.

mod common;

use std::path::Path;

use proptest::prelude::*;
use spool::storage::{BatchBuilder, Log, LogConfig, Retention, StorageError, SyncMode};

#[derive(Debug, Clone)]
enum Op {
    /// A batch of records, each (key?, value length, value seed).
    Append(Vec<(bool, usize, u8)>),
    Read(prop::sample::Index),
    ReadBatches(prop::sample::Index, u64),
    Reopen,
    Truncate(prop::sample::Index),
    Retention(u64),
    /// Retention by age: `now` this many ms after the newest append, and
    /// the maximum age in ms.
    RetentionAge(u64, u64),
}

fn value_len() -> impl Strategy<Value = usize> {
    // Mostly small values, sometimes up to 64 KiB.
    prop_oneof![8 => 0usize..200, 1 => 200usize..(64 << 10), 1 => Just(64 << 10)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((any::<bool>(), value_len(), any::<u8>()), 1..100).prop_map(Op::Append),
        4 => any::<prop::sample::Index>().prop_map(Op::Read),
        2 => (any::<prop::sample::Index>(), 1u64..100_000).prop_map(|(i, m)| Op::ReadBatches(i, m)),
        1 => Just(Op::Reopen),
        1 => any::<prop::sample::Index>().prop_map(Op::Truncate),
        1 => (0u64..400_000).prop_map(Op::Retention),
        1 => (0u64..3_000, 0u64..3_000).prop_map(|(ahead, age)| Op::RetentionAge(ahead, age)),
    ]
}

fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// The model: every record ever appended, by offset, and where the log starts.
struct Model {
    records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    /// Each record's append time (its batch's).
    times: Vec<i64>,
    lowest: u64,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 128 << 10,
        index_bytes: 128,
        segment_age: None,
        sync: SyncMode::Never,
        max_batch_bytes: 16 << 20,
        max_record_bytes: u32::MAX,
        ..LogConfig::default()
    }
}

fn check_record(log: &Log, model: &Model, offset: u64) -> Result<(), TestCaseError> {
    let next = model.records.len() as u64;
    match log.read(offset) {
        Ok(r) => {
            prop_assert!(
                offset >= model.lowest && offset < next,
                "read {offset} outside [{}, {next})",
                model.lowest
            );
            let (key, value) = &model.records[offset as usize];
            prop_assert_eq!(r.offset, offset);
            prop_assert_eq!(r.key.as_deref(), key.as_deref());
            prop_assert_eq!(r.value.as_deref().unwrap(), &value[..]);
        }
        Err(StorageError::OffsetOutOfRange {
            lowest, next: n, ..
        }) => {
            prop_assert!(
                offset < model.lowest || offset >= next,
                "offset {offset} should be readable"
            );
            prop_assert_eq!((lowest, n), (model.lowest, next));
        }
        Err(e) => return Err(TestCaseError::fail(format!("read {offset}: {e}"))),
    }
    Ok(())
}

fn run(dir: &Path, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = Log::open(dir, config()).unwrap();
    let mut model = Model {
        records: Vec::new(),
        times: Vec::new(),
        lowest: 0,
    };
    for op in ops {
        match op {
            Op::Append(spec) => {
                let mut b = BatchBuilder::new();
                let mut expected = Vec::new();
                // The batch's time (its largest timestamp) is what
                // retention goes by: the clock's, as a producer's would be.
                let now = common::now_ms();
                for (i, (keyed, len, seed)) in spec.into_iter().enumerate() {
                    let v = value(len, seed);
                    let key = keyed.then(|| vec![seed; 3]);
                    b.push(now - i as i64, key.as_deref(), Some(&v), &[]);
                    expected.push((key, v));
                }
                let mut bytes = b.finish();
                let appended = log.append(&mut bytes).unwrap();
                prop_assert_eq!(appended.base_offset, model.records.len() as u64);
                prop_assert_eq!(appended.log_append_time, None);
                model.times.extend(std::iter::repeat_n(now, expected.len()));
                model.records.extend(expected);
                prop_assert_eq!(appended.next_offset, model.records.len() as u64);
            }
            Op::Read(i) => {
                // Cover below the start, the whole range and one past the end.
                let offset = i.index(model.records.len() + 2) as u64;
                check_record(&log, &model, offset)?;
            }
            Op::ReadBatches(i, max_bytes) => {
                let next = model.records.len() as u64;
                if model.lowest == next {
                    continue;
                }
                let offset = model.lowest + i.index((next - model.lowest) as usize) as u64;
                let r = log.read_batches(offset, max_bytes).unwrap();
                prop_assert!(r.first_offset <= offset && offset < r.next_offset);
                prop_assert!(
                    r.bytes.len() as u64 <= max_bytes
                        || r.bytes.len()
                            == spool::storage::batch::BatchHeader::parse(&r.bytes)
                                .unwrap()
                                .size()
                );
                let mut at = r.first_offset;
                for item in spool::storage::batch::BatchIter::new(&r.bytes) {
                    let (h, raw) = item.unwrap();
                    prop_assert_eq!(h.base_offset as u64, at);
                    for rec in
                        spool::storage::batch::decode_records(&r.bytes.slice_ref(raw)).unwrap()
                    {
                        prop_assert_eq!(
                            rec.value.as_deref().unwrap(),
                            &model.records[rec.offset as usize].1[..]
                        );
                    }
                    at = h.next_offset() as u64;
                }
                prop_assert_eq!(at, r.next_offset);
            }
            Op::Reopen => {
                drop(log);
                log = Log::open(dir, config()).unwrap();
                prop_assert!(
                    log.recovery().is_empty(),
                    "clean reopen repaired: {:?}",
                    log.recovery()
                );
            }
            Op::Truncate(i) => {
                let target = i.index(model.records.len() + 1) as u64;
                log.truncate(target).unwrap();
                let lowest = log.lowest_offset();
                // Only whole segments go, never past the target, never back.
                prop_assert!(lowest >= model.lowest);
                prop_assert!(lowest <= target.max(model.lowest) || lowest == model.lowest);
                model.lowest = lowest;
            }
            Op::Retention(max_bytes) => {
                let before = log.size_bytes();
                let removed = log
                    .apply_retention(
                        Retention {
                            max_bytes: Some(max_bytes),
                            max_age: None,
                        },
                        0,
                    )
                    .unwrap();
                prop_assert_eq!(log.size_bytes(), before - removed.bytes);
                prop_assert!(log.size_bytes() <= max_bytes || log.segment_count() == 1);
                prop_assert!(log.lowest_offset() >= model.lowest);
                model.lowest = log.lowest_offset();
            }
            Op::RetentionAge(ahead, age) => {
                let now = model.times.last().copied().unwrap_or(0) + ahead as i64;
                log.apply_retention(
                    Retention {
                        max_bytes: None,
                        max_age: Some(std::time::Duration::from_millis(age)),
                    },
                    now,
                )
                .unwrap();
                let lowest = log.lowest_offset();
                prop_assert!(lowest >= model.lowest);
                // Only records older than the age may go: the first young
                // one is still there (and so is the newest, in the active
                // segment).
                let cutoff = now - age as i64;
                if let Some(young) = model.times.iter().position(|&t| t >= cutoff) {
                    prop_assert!(lowest <= (young as u64).max(model.lowest));
                }
                prop_assert!(model.records.is_empty() || lowest < model.records.len() as u64);
                model.lowest = lowest;
            }
        }
        prop_assert_eq!(log.next_offset(), model.records.len() as u64);
        prop_assert_eq!(log.lowest_offset(), model.lowest);
    }
    // Finally every offset, and the edges.
    for offset in model.lowest.saturating_sub(1)..=model.records.len() as u64 {
        check_record(&log, &model, offset)?;
    }
    Ok(())
}

proptest! {
    // 48 cases in the normal suite, 1,000 in the soak tier.
    #![proptest_config(ProptestConfig {
        cases: common::trials(48, 1000) as u32,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), ops)?;
    }
}
