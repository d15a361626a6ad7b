//! Simulated power loss: the log on a simulated disk (tests/common/sim.rs)
//! that, at a random moment, loses, tears or garbles every write no sync
//! covered. Thousands of seeded runs with small segments, rolls and
//! retention. With sync `always`, nothing committed may be lost and nothing
//! never written may be served; with `never`, the test must see loss (proof
//! that it can).
//!
//! `SPOOL_SOAK=1 cargo test --release --test power_loss` runs 100,000 trials
//! per mode instead of 2,000.

mod common;

use std::collections::BTreeMap;

use common::sim::{Fault, Op, Rng, SimFs};
use spool::storage::{BatchBuilder, IoMode, Log, LogConfig, Retention, StorageError, SyncMode};

fn trials() -> u64 {
    common::trials(2_000, 100_000)
}

#[derive(Debug, Default)]
struct Figures {
    trials: u64,
    committed: u64,
    lost: u64,
    /// A record served that was never written at that offset.
    garbage: u64,
    /// Uncommitted records fenced as damaged (allowed: never acknowledged).
    fenced_uncommitted: u64,
    /// Committed records fenced as damaged (counted as lost too).
    fenced_committed: u64,
}

fn config(rng: &mut Rng, sync: SyncMode) -> LogConfig {
    LogConfig {
        segment_bytes: 1024 + rng.below(3072),
        index_bytes: 8 * (8 + rng.below(8)),
        segment_age: None,
        sync,
        max_batch_bytes: 1 << 20,
        max_record_bytes: u32::MAX,
        // Both write paths, half the trials each.
        io: if rng.below(2) == 0 {
            IoMode::Buffered
        } else {
            IoMode::Direct
        },
        ..LogConfig::default()
    }
}

/// One trial: a random workload, a power cut, a reopen, the checks.
fn trial(seed: u64, sync: SyncMode, figures: &mut Figures) {
    let mut rng = Rng::new(seed);
    let fs = SimFs::new();
    let config = config(&mut rng, sync);
    let log = Log::open_with(fs.shared(), "/topic", config.clone()).unwrap();
    let mut written: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut committed = 0u64; // every offset below this is committed
    for step in 0..5 + rng.below(60) {
        if rng.chance(8) {
            let max_bytes = rng.below(8192);
            log.apply_retention(
                Retention {
                    max_bytes: Some(max_bytes),
                    max_age: None,
                },
                0,
            )
            .unwrap();
            continue;
        }
        let mut batch = BatchBuilder::new();
        let count = 1 + rng.below(5);
        let first = log.next_offset();
        for i in 0..count {
            let mut value = format!("seed {seed} step {step} offset {}", first + i).into_bytes();
            value.resize(value.len() + rng.below(300) as usize, b'.');
            batch.push(i as i64, None, Some(&value), &[]);
            written.insert(first + i, value);
        }
        let mut bytes = batch.finish();
        let appended = log.append(&mut bytes).unwrap();
        if rng.chance(70) {
            log.commit(appended.next_offset).unwrap();
            committed = appended.next_offset;
        }
    }
    let start_before = log.lowest_offset();
    // The power cut: whatever no sync covered is up to chance.
    let image = fs.crash(&mut rng);
    drop(log);
    let log = Log::open_with(image.shared(), "/topic", config)
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after power cut failed: {e}"));
    figures.trials += 1;
    let start = log.lowest_offset();
    let end = log.next_offset();
    assert!(
        start <= start_before.max(committed),
        "seed {seed}: log start {start} jumped"
    );
    for offset in start_before..committed {
        figures.committed += 1;
        match log.read(offset) {
            Ok(r) if r.value.clone().unwrap_or_default() == written[&offset][..] => {}
            Ok(_) => {
                figures.lost += 1;
                figures.garbage += 1;
            }
            Err(StorageError::Corrupt { .. }) => {
                figures.lost += 1;
                figures.fenced_committed += 1;
            }
            Err(e) => {
                if std::env::var_os("SPOOL_DEBUG").is_some() {
                    eprintln!("seed {seed}: committed offset {offset} lost: {e} (log [{start}, {end}), committed {committed}, start before {start_before})");
                    eprintln!("  recovery: {:?}", log.recovery());
                    for p in image.paths() {
                        eprintln!("  {} {} bytes", p.display(), image.read(&p).unwrap().len());
                    }
                    for p in fs.paths() {
                        eprintln!(
                            "  before: {} {} bytes",
                            p.display(),
                            fs.read(&p).unwrap().len()
                        );
                    }
                }
                figures.lost += 1
            }
        }
    }
    for offset in start..end {
        match log.read(offset) {
            Ok(r) => {
                if written
                    .get(&offset)
                    .is_none_or(|v| r.value.clone().unwrap_or_default() != v[..])
                {
                    figures.garbage += 1;
                }
            }
            Err(StorageError::Corrupt { .. }) if offset >= committed => {
                figures.fenced_uncommitted += 1
            }
            Err(StorageError::Corrupt { .. }) => {}
            Err(e) => panic!("seed {seed}: offset {offset} in [{start}, {end}): {e}"),
        }
    }
    // The log takes appends again, and they read back.
    let mut batch = BatchBuilder::new();
    batch.push(0, None, Some(b"after the power cut"), &[]);
    let appended = log.append(&mut batch.finish()).unwrap();
    log.commit(appended.next_offset).unwrap();
    assert_eq!(
        log.read(appended.base_offset)
            .unwrap()
            .value
            .as_deref()
            .unwrap(),
        b"after the power cut"
    );
}

fn run(sync: SyncMode, name: &str) -> Figures {
    let mut figures = Figures::default();
    for seed in 0..trials() {
        trial(seed, sync, &mut figures);
    }
    eprintln!(
        "{{\"test\":\"power_loss\",\"mode\":\"{name}\",\"trials\":{},\"committed\":{},\"lost\":{},\"garbage_served\":{},\"fenced_committed\":{},\"fenced_uncommitted\":{}}}",
        figures.trials, figures.committed, figures.lost, figures.garbage, figures.fenced_committed, figures.fenced_uncommitted
    );
    figures
}

#[test]
fn sync_always_loses_nothing_committed_and_serves_no_garbage() {
    let f = run(SyncMode::Always, "always");
    assert!(
        f.committed > 10 * f.trials,
        "the workload commits too little to prove anything"
    );
    assert_eq!(f.lost, 0, "{f:?}");
    assert_eq!(f.garbage, 0, "{f:?}");
}

#[test]
fn sync_never_shows_loss_but_still_serves_no_garbage() {
    let f = run(SyncMode::Never, "never");
    // "Committed" means nothing in this mode: losing some of it on a power
    // cut is expected, and proves the simulation loses what is not synced.
    assert!(
        f.lost > 0,
        "a power cut never lost unsynced data: the simulation has no teeth {f:?}"
    );
    assert_eq!(f.garbage, 0, "{f:?}");
}

/// Consumer groups' committed offsets (`spool::storage::offsets`) on the
/// simulated disk, cut at a random moment: seeded runs of commits, offset
/// deletes and group deletes, with metadata large enough that the file is
/// rewritten now and then, and sometimes a fault (a failed write, sync,
/// rename or directory sync) on the last change, which then counts as in
/// flight. Returns (trials, changes acknowledged, acknowledged changes
/// lost). Everything acknowledged must be there when the store syncs; the
/// change in flight is all there or not at all; nothing else appears.
fn offsets_run(sync: bool, trials: u64) -> (u64, u64, u64) {
    use spool::storage::offsets::{Committed, GroupOffsets, OffsetStore};
    type State = BTreeMap<String, GroupOffsets>;
    let dir = std::path::Path::new("/data");
    let (mut acknowledged, mut lost) = (0, 0);
    for seed in 0..trials {
        let mut rng = Rng::new(seed ^ 0x6f66_6673);
        let fs = SimFs::new();
        let (store, _) = OffsetStore::open(fs.shared(), dir, sync).unwrap();
        let mut state = State::new();
        let mut in_flight: Option<State> = None;
        let steps = 10 + rng.below(200);
        let big = rng.chance(50);
        for step in 0..steps {
            let last = step + 1 == steps;
            if last && rng.chance(50) {
                let ops = [Op::Write, Op::Sync, Op::Rename, Op::SyncDir];
                fs.set_fault(Some(Fault {
                    op: Some(ops[rng.below(4) as usize]),
                    nth: 1,
                    errno: libc::EIO,
                    sticky: true,
                }));
            }
            let group = format!("g{}", rng.below(4));
            let mut next = state.clone();
            let result = match rng.below(10) {
                0 => {
                    next.remove(&group);
                    store.delete_group(&group)
                }
                1 => {
                    let key = ("t".to_owned(), rng.below(3) as u32);
                    if let Some(o) = next.get_mut(&group) {
                        o.remove(&key);
                        if o.is_empty() {
                            next.remove(&group);
                        }
                    }
                    store.delete(&group, vec![key])
                }
                _ => {
                    let entries: Vec<(String, u32, Committed)> = (0..1 + rng.below(3))
                        .map(|p| {
                            let metadata = "m".repeat(if big {
                                8_000 + rng.below(8_000) as usize
                            } else {
                                rng.below(50) as usize
                            });
                            let c = Committed {
                                offset: (seed * 1000 + step) as i64,
                                leader_epoch: rng.below(3) as i32 - 1,
                                metadata,
                                commit_ms: step as i64,
                            };
                            ("t".to_owned(), p as u32, c)
                        })
                        .collect();
                    let offsets = next.entry(group.clone()).or_default();
                    for (t, p, c) in &entries {
                        offsets.insert((t.clone(), *p), c.clone());
                    }
                    store.commit(&group, entries)
                }
            };
            match result {
                Ok(()) => {
                    acknowledged += 1;
                    state = next;
                }
                Err(_) => {
                    in_flight = Some(next);
                    break;
                }
            }
        }
        let image = fs.crash(&mut rng);
        drop(store);
        let (store, _) = OffsetStore::open(image.shared(), dir, sync)
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after power cut failed: {e}"));
        let got: State = store.read(State::clone);
        if got != state && Some(&got) != in_flight.as_ref() {
            assert!(!sync, "seed {seed}: after the cut {got:?}\nacknowledged {state:?}\nin flight {in_flight:?}");
            lost += 1;
        }
    }
    (trials, acknowledged, lost)
}

#[test]
fn committed_offsets_acknowledged_survive_a_power_cut() {
    let (trials, acknowledged, lost) = offsets_run(true, common::trials(300, 20_000));
    assert_eq!(lost, 0);
    assert!(
        acknowledged > trials * 10,
        "{acknowledged} changes in {trials} trials"
    );
}

#[test]
fn committed_offsets_without_sync_show_loss() {
    // Proof that the cut can lose what no sync covered.
    let (_, _, lost) = offsets_run(false, common::trials(300, 20_000));
    assert!(lost > 0);
}
