//! Bit rot and mid-log damage on the real file system: a flipped bit, a
//! zeroed 4 KiB chunk, and a 4 KiB chunk rolled back to what the file held
//! earlier, in sealed and in active segments. Every damaged record must be
//! detected (a `Corrupt` error, or gone with a torn tail), none served with
//! wrong bytes, and every record outside the damage still readable.
//!
//! `SPOOL_SOAK=1 cargo test --release --test damage` runs 25 times more.

mod common;

use std::collections::BTreeMap;

use common::sim::Rng;
use common::*;
use spool::storage::batch::{BatchBuilder, BatchIter};
use spool::storage::{Log, LogConfig, StorageError};

fn trials() -> u64 {
    common::trials(20, 500)
}

fn config() -> LogConfig {
    LogConfig {
        index_bytes: 1024,
        ..small_config(16 * 1024)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    FlipBit,
    Zero4k,
    Rollback4k,
}

#[derive(Debug, Default)]
struct Figures {
    trials: u64,
    records: u64,
    damaged: u64,
    detected: u64,
    served_wrong: u64,
    valid_lost: u64,
}

/// Where each batch of a segment lies: (base offset, next offset, start, end).
fn batches_of(store: &[u8]) -> Vec<(u64, u64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for item in BatchIter::new(store) {
        let (h, raw) = item.unwrap();
        out.push((
            h.base_offset as u64,
            h.next_offset() as u64,
            pos,
            pos + raw.len(),
        ));
        pos += raw.len();
    }
    out
}

fn trial(seed: u64, damage: Damage, sealed: bool, f: &mut Figures) {
    let mut rng = Rng::new(seed * 7 + damage as u64 * 1000 + u64::from(sealed) * 100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut written: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // Snapshots of segment files taken along the way: "older bytes".
    let mut history: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    {
        let log = Log::open(dir.path(), config()).unwrap();
        for _ in 0..60 + rng.below(40) {
            let first = log.next_offset();
            let mut b = BatchBuilder::new();
            for i in 0..1 + rng.below(5) {
                let v = value_for(first + i, 20 + rng.below(1500) as usize);
                b.push(0, None, Some(&v), &[]);
                written.insert(first + i, v);
            }
            log.append(&mut b.finish()).unwrap();
            if rng.chance(30) {
                for name in std::fs::read_dir(dir.path()).unwrap() {
                    let path = name.unwrap().path();
                    if path.extension().is_some_and(|e| e == "store") {
                        let base: u64 =
                            path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                        // The earliest version of each segment: the most "older" bytes.
                        history
                            .entry(base)
                            .or_insert_with(|| std::fs::read(&path).unwrap());
                    }
                }
            }
        }
        assert!(log.segment_count() >= 3);
        log.close().unwrap();
    }
    let mut bases: Vec<u64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "store")
                .then(|| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    let base = if sealed {
        bases[rng.below(bases.len() as u64 - 1) as usize]
    } else {
        *bases.last().unwrap()
    };
    let path = segment_file(dir.path(), base, "store");
    let mut bytes = std::fs::read(&path).unwrap();
    let batches = batches_of(&bytes);
    // The damaged byte range.
    let (start, end) = match damage {
        Damage::FlipBit => {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            (at, at + 1)
        }
        Damage::Zero4k | Damage::Rollback4k => {
            let at = rng.below(bytes.len() as u64) as usize;
            let end = (at + 4096).min(bytes.len());
            let old = history.get(&base).cloned().unwrap_or_default();
            for (i, b) in bytes[at..end].iter_mut().enumerate() {
                let older = if damage == Damage::Rollback4k {
                    old.get(at + i).copied().unwrap_or(0)
                } else {
                    0
                };
                *b = older;
            }
            (at, end)
        }
    };
    let before = std::fs::read(&path).unwrap();
    if bytes == before {
        return; // the "older" bytes were the same bytes: no damage
    }
    std::fs::write(&path, &bytes).unwrap();
    // Records whose batch overlaps a byte that actually changed.
    let changed: Vec<usize> = (start..end).filter(|&i| bytes[i] != before[i]).collect();
    let damaged: Vec<(u64, u64)> = batches
        .iter()
        .filter(|(_, _, s, e)| changed.iter().any(|&i| i >= *s && i < *e))
        .map(|(b, n, _, _)| (*b, *n))
        .collect();
    let is_damaged = |o: u64| damaged.iter().any(|(b, n)| o >= *b && o < *n);

    let log = Log::open(dir.path(), config())
        .unwrap_or_else(|e| panic!("seed {seed} {damage:?}: open failed: {e}"));
    f.trials += 1;
    for (&offset, value) in &written {
        f.records += 1;
        let hit = is_damaged(offset);
        f.damaged += u64::from(hit);
        match log.read(offset) {
            Ok(r) if r.value.clone().unwrap_or_default() == value[..] => {}
            Ok(_) => f.served_wrong += 1,
            Err(StorageError::Corrupt { .. }) | Err(StorageError::OffsetOutOfRange { .. })
                if hit =>
            {
                f.detected += 1
            }
            Err(e) => {
                eprintln!(
                    "seed {seed} {damage:?} sealed {sealed}: valid offset {offset} unreadable: {e}"
                );
                f.valid_lost += 1;
            }
        }
    }
}

#[test]
fn damage_is_detected_and_nothing_else_is_lost() {
    let mut all = Figures::default();
    for damage in [Damage::FlipBit, Damage::Zero4k, Damage::Rollback4k] {
        for sealed in [true, false] {
            let mut f = Figures::default();
            for seed in 0..trials() {
                trial(seed, damage, sealed, &mut f);
            }
            let place = if sealed { "sealed" } else { "active" };
            eprintln!(
                "{{\"test\":\"damage\",\"damage\":\"{damage:?}\",\"segment\":\"{place}\",\"trials\":{},\"records\":{},\"damaged\":{},\"detected\":{},\"served_wrong\":{},\"valid_lost\":{}}}",
                f.trials, f.records, f.damaged, f.detected, f.served_wrong, f.valid_lost
            );
            assert!(
                f.damaged > 0,
                "{damage:?} {place}: the damage never hit a record"
            );
            assert_eq!(f.detected, f.damaged, "{damage:?} {place}: {f:?}");
            all.served_wrong += f.served_wrong;
            all.valid_lost += f.valid_lost;
        }
    }
    assert_eq!((all.served_wrong, all.valid_lost), (0, 0));
}
