//! Issue 9, 4.8: topic creation and deletion on the simulated disk
//! (tests/common/sim.rs), cut by a power loss at every operation in turn,
//! or failing one operation in turn. A created topic must come back whole
//! with its settings, a deleted one must stay gone, and a topic caught
//! midway is either whole or absent: never half a topic that fails to open.
//! A failed operation leaves the topics as they were, and usable.

mod common;

use std::sync::Arc;

use common::sim::{Fault, Rng, SimFs};
use spool::broker::{Config, Topics};
use spool::storage::BatchBuilder;

fn config() -> Arc<Config> {
    let mut config = Config::default();
    config.server.data_dir = "/data".into();
    Arc::new(config)
}

fn settings() -> Vec<(String, String)> {
    vec![("retention_ms".into(), "3d".into())]
}

/// A disk as `setup` left it, as a restarted broker finds it (the setup's
/// sync tasks may still hold its logs open).
fn prepared(setup: &dyn Fn(&SimFs)) -> SimFs {
    let fs = SimFs::new();
    setup(&fs);
    fs.snapshot()
}

/// Operations a fault-free run of `work` makes on a fresh disk prepared by
/// `setup`.
fn operations(setup: &dyn Fn(&SimFs), work: &dyn Fn(&Topics) -> bool) -> u64 {
    let fs = prepared(setup);
    let topics = Topics::load_with(config(), fs.shared()).unwrap();
    fs.set_fault(None);
    assert!(work(&topics), "the fault-free run fails");
    let n = fs.operations();
    topics.close_all();
    n
}

/// Loads what a power cut left and checks that every topic is whole.
fn reload(fs: &SimFs) -> Topics {
    let topics = Topics::load_with(config(), fs.shared()).expect("the broker starts");
    assert_eq!(topics.broken(), vec![], "half a topic was left");
    topics
}

fn crash_at(
    n: u64,
    seed: u64,
    setup: &dyn Fn(&SimFs),
    work: &dyn Fn(&Topics) -> bool,
) -> (bool, Topics) {
    let fs = prepared(setup);
    let topics = Topics::load_with(config(), fs.shared()).unwrap();
    fs.set_fault(Some(Fault {
        op: None,
        nth: n,
        errno: libc::EIO,
        sticky: true,
    }));
    let done = work(&topics);
    let crashed = fs.crash(&mut Rng::new(seed));
    topics.close_all();
    (done, reload(&crashed))
}

#[tokio::test]
async fn a_power_cut_during_topic_creation_leaves_it_whole_or_absent() {
    let setup = |_: &SimFs| {};
    let create = |t: &Topics| t.create("t", &settings()).is_ok();
    let ops = operations(&setup, &create);
    let (mut whole, mut absent) = (0, 0);
    for n in 1..=ops + 1 {
        for seed in 0..common::trials(8, 64) {
            let (created, topics) = crash_at(n, seed, &setup, &create);
            match topics.get("t") {
                Some(topic) => {
                    whole += 1;
                    let retention = topic.settings().retention_ms;
                    assert_eq!(
                        retention,
                        Some(std::time::Duration::from_secs(3 * 86400)),
                        "op {n}, seed {seed}: the topic came back without its settings"
                    );
                }
                None => {
                    assert!(
                        !created,
                        "op {n}, seed {seed}: an acknowledged creation was lost"
                    );
                    absent += 1;
                }
            }
            topics.close_all();
        }
    }
    assert!(whole > 0 && absent > 0, "whole {whole}, absent {absent}");
}

#[tokio::test]
async fn a_power_cut_during_topic_deletion_leaves_it_whole_or_gone() {
    // A topic with synced records, then a delete.
    let setup = |fs: &SimFs| {
        let topics = Topics::load_with(config(), fs.shared()).unwrap();
        let topic = topics.create("t", &settings()).unwrap();
        let partition = topic.partition(0).unwrap();
        let mut b = BatchBuilder::new();
        b.push(common::now_ms(), None, Some(b"kept"), &[]);
        partition.append(&mut b.finish()).unwrap();
        partition.log().sync().unwrap();
        topics.close_all();
    };
    let delete = |t: &Topics| t.delete("t").is_ok();
    let ops = operations(&setup, &delete);
    let (mut kept, mut gone) = (0, 0);
    for n in 1..=ops + 1 {
        for seed in 0..common::trials(8, 64) {
            let (deleted, topics) = crash_at(n, seed, &setup, &delete);
            match topics.get("t") {
                Some(topic) => {
                    assert!(!deleted, "op {n}, seed {seed}: a deleted topic came back");
                    kept += 1;
                    let read = topic
                        .partition(0)
                        .expect("its partition 0 is there")
                        .log()
                        .read(0)
                        .expect("its records are whole");
                    assert_eq!(read.value.as_deref().unwrap(), b"kept");
                }
                None => gone += 1,
            }
            topics.close_all();
        }
    }
    assert!(kept > 0 && gone > 0, "kept {kept}, gone {gone}");
}

#[tokio::test]
async fn a_failed_operation_leaves_topic_creation_and_deletion_usable() {
    let create = |t: &Topics| t.create("t", &settings()).is_ok();
    let ops = operations(&|_| {}, &create);
    for n in 1..=ops {
        let fs = SimFs::new();
        let topics = Topics::load_with(config(), fs.shared()).unwrap();
        fs.set_fault(Some(Fault {
            op: None,
            nth: n,
            errno: libc::EIO,
            sticky: false,
        }));
        match topics.create("t", &settings()) {
            Ok(topic) => {
                let mut b = BatchBuilder::new();
                b.push(common::now_ms(), None, Some(b"v"), &[]);
                topic.partition(0).unwrap().append(&mut b.finish()).unwrap();
            }
            Err(e) => {
                assert!(
                    topics.get("t").is_none(),
                    "op {n}: a failed creation is served"
                );
                assert!(!e.to_string().is_empty());
                // Nothing left in the way: creating again works.
                topics
                    .create("t", &settings())
                    .unwrap_or_else(|e| panic!("op {n}: cannot create after a failure: {e}"));
            }
        }
        // Deleting, with op n of the deletion failing.
        fs.set_fault(Some(Fault {
            op: None,
            nth: n,
            errno: libc::EIO,
            sticky: false,
        }));
        if topics.delete("t").is_err() {
            fs.set_fault(None);
            if topics.get("t").is_some() {
                topics
                    .delete("t")
                    .unwrap_or_else(|e| panic!("op {n}: cannot delete after a failure: {e}"));
            }
        }
        assert!(topics.get("t").is_none());
        topics.close_all();
        let topics = reload(&fs.snapshot());
        assert!(
            topics.get("t").is_none(),
            "op {n}: a deleted topic came back"
        );
        topics.close_all();
    }
}

/// Issue 10, item 3: a power cut during an alter leaves the old settings or
/// the new ones, and an acknowledged alter's settings are there after it.
#[tokio::test]
async fn a_power_cut_during_an_alter_leaves_the_old_settings_or_the_new() {
    let setup = |fs: &SimFs| {
        let topics = Topics::load_with(config(), fs.shared()).unwrap();
        topics.create("t", &settings()).unwrap();
        topics.close_all();
    };
    let alter = |t: &Topics| {
        t.alter("t", &[("retention_ms".into(), "1h".into())], &[])
            .is_ok()
    };
    let ops = operations(&setup, &alter);
    let (mut old, mut new) = (0, 0);
    for n in 1..=ops + 1 {
        for seed in 0..common::trials(8, 64) {
            let (altered, topics) = crash_at(n, seed, &setup, &alter);
            let topic = topics
                .get("t")
                .unwrap_or_else(|| panic!("op {n}, seed {seed}: the topic is gone"));
            let hours = topic.settings().retention_ms.map(|d| d.as_secs() / 3600);
            match hours {
                Some(72) => {
                    assert!(
                        !altered,
                        "op {n}, seed {seed}: an acknowledged alter was lost"
                    );
                    old += 1;
                }
                Some(1) => new += 1,
                other => panic!("op {n}, seed {seed}: retention_ms came back as {other:?} hours"),
            }
            topics.close_all();
        }
    }
    assert!(old > 0 && new > 0, "old {old}, new {new}");
}

/// Issue 11: a power cut while a topic's partitions are raised leaves the
/// old count or the new one, every partition whole and its records there;
/// an acknowledged raise has all its partitions after it. The same for a
/// topic created with several partitions: whole with all of them, or absent.
#[tokio::test]
async fn a_power_cut_while_partitions_are_added_leaves_them_all_or_none() {
    let setup = |fs: &SimFs| {
        let topics = Topics::load_with(config(), fs.shared()).unwrap();
        let topic = topics
            .create("t", &[("partitions".into(), "2".into())])
            .unwrap();
        for p in 0..2 {
            let partition = topic.partition(p).unwrap();
            let mut b = BatchBuilder::new();
            b.push(
                common::now_ms(),
                None,
                Some(format!("in {p}").as_bytes()),
                &[],
            );
            partition.append(&mut b.finish()).unwrap();
            partition.log().sync().unwrap();
        }
        topics.close_all();
    };
    let raise = |t: &Topics| {
        t.alter("t", &[("partitions".into(), "5".into())], &[])
            .is_ok()
    };
    let ops = operations(&setup, &raise);
    let (mut two, mut five) = (0, 0);
    for n in 1..=ops + 1 {
        for seed in 0..common::trials(8, 64) {
            let (raised, topics) = crash_at(n, seed, &setup, &raise);
            let topic = topics
                .get("t")
                .unwrap_or_else(|| panic!("op {n}, seed {seed}: the topic is gone"));
            match topic.partition_count() {
                2 => {
                    assert!(
                        !raised,
                        "op {n}, seed {seed}: an acknowledged raise was lost"
                    );
                    two += 1;
                }
                5 => five += 1,
                other => panic!("op {n}, seed {seed}: {other} partitions"),
            }
            for p in 0..2 {
                let read = topic.partition(p).unwrap().log().read(0);
                let value =
                    read.unwrap_or_else(|e| panic!("op {n}, seed {seed}, partition {p}: {e}"));
                assert_eq!(value.value.as_deref(), Some(format!("in {p}").as_bytes()));
            }
            topics.close_all();
        }
    }
    assert!(two > 0 && five > 0, "two {two}, five {five}");

    let create = |t: &Topics| t.create("c", &[("partitions".into(), "3".into())]).is_ok();
    let nothing = |_: &SimFs| {};
    let ops = operations(&nothing, &create);
    for n in 1..=ops + 1 {
        for seed in 0..common::trials(4, 32) {
            let (created, topics) = crash_at(n, seed, &nothing, &create);
            match topics.get("c") {
                Some(topic) => assert_eq!(topic.partition_count(), 3, "op {n}, seed {seed}"),
                None => assert!(
                    !created,
                    "op {n}, seed {seed}: an acknowledged creation was lost"
                ),
            }
            topics.close_all();
        }
    }
}
