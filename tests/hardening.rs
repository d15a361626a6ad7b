//! Issue 9: defects a review of the broker found, each pinned by a test that
//! failed before its fix. Broker in process, on 127.0.0.1:0 and a temp dir.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::broker::*;
use spool::broker::Flush;
use spool::storage::batch::BatchBuilder;

fn one_record() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(0, None, b"v", &[]);
    b.finish()
}

// 4.1: the visible end was published after the log lock was released, so
// two producers could publish 20 and then 10, and a consumer that had read
// to 20 was told its offset was out of range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visible_end_never_moves_backwards() {
    let broker = start(|c| {
        c.defaults.flush = Some(Flush::Never);
    })
    .await;
    let topics = std::sync::Arc::clone(broker.running.as_ref().unwrap().topics());
    let topic = topics.create("t", &[]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (topic, done) = (Arc::clone(&topic), Arc::clone(&done));
        std::thread::spawn(move || {
            let (mut last, mut seen) = (0, 0u64);
            while !done.load(Ordering::Acquire) {
                let end = topic.visible_end();
                assert!(end >= last, "the visible end went from {last} back to {end}");
                last = end;
                seen += 1;
            }
            seen
        })
    };
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let topic = Arc::clone(&topic);
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let appended = topic.append(&mut one_record()).unwrap();
                    assert!(topic.visible_end() >= appended.next_offset);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(watcher.join().expect("no backwards step") > 0);
    assert_eq!(topic.visible_end(), 40_000);
    broker.stop().await;
}
