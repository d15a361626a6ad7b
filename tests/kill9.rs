//! `kill -9` of the real broker during produce, for each flush mode: several
//! pipelining producers, SIGKILL at a seeded moment, restart on the same
//! directory, read everything back, and check with the queue checker. A
//! process crash loses nothing acknowledged in any mode (the data reached
//! the kernel before the acknowledgement). SIGTERM under the same load is a
//! graceful shutdown: exit 0, no torn tail for recovery to cut, nothing lost.
//!
//! One more trial runs on a topic of four partitions, a producer each: each
//! partition is checked on its own.
//!
//! `SPOOL_SOAK=1 cargo test --release --test kill9` runs 20 trials per mode
//! instead of 2.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::broker::*;
use common::checker::{self, Outcome, Report, Sent};
use common::process::spawn;
use common::sim::Rng;
use spool::protocol::{Acks, ApiKey, ErrorCode, FetchedPartition, OffsetSpec, Request, Response};
use spool::storage::batch::BatchBuilder;

const PRODUCERS: u32 = 4;
const IN_FLIGHT: usize = 16;

fn trials() -> u64 {
    common::trials(2, 20)
}

/// One producer: pipelines single-message batches until its connection
/// dies, recording how each send ended.
async fn produce(
    addr: std::net::SocketAddr,
    producer: u32,
    partition: u32,
    sent: Arc<Mutex<Vec<Sent>>>,
    acked: Arc<Mutex<u64>>,
) {
    let mut c = Conn::connect(addr).await;
    let mut window = VecDeque::new();
    let mut seq = 0u64;
    loop {
        while window.len() < IN_FLIGHT {
            let mut b = BatchBuilder::new();
            b.push(
                common::now_ms(),
                None,
                Some(&checker::message(producer, seq, 200)),
                &[],
            );
            let request = Request::produce(
                "k",
                partition,
                Acks::Commit,
                BytesMut::from(&b.finish()[..]),
            );
            let mut frame = BytesMut::new();
            request.encode(seq as u32, &mut frame);
            use tokio::io::AsyncWriteExt;
            if c.stream.write_all(&frame).await.is_err() {
                break;
            }
            window.push_back(seq);
            seq += 1;
        }
        let frame = match c.read_frame().await {
            Some(f) => f,
            None => break,
        };
        let Some(s) = window.pop_front() else { break };
        let outcome = match Response::parse(ApiKey::Produce, frame).map(Response::produced) {
            Ok(Ok(p)) => Outcome::Ok(p.base_offset),
            // A storage error leaves the outcome open; others are refusals.
            Ok(Err(e)) if e.code == ErrorCode::StorageError => Outcome::Unknown,
            Ok(Err(_)) => Outcome::Fail,
            _ => Outcome::Unknown,
        };
        if matches!(outcome, Outcome::Ok(_)) {
            *acked.lock().unwrap() += 1;
        }
        sent.lock().unwrap().push(Sent {
            producer,
            seq: s,
            outcome,
        });
    }
    // Whatever was in flight when the broker died: unknown.
    let mut sent = sent.lock().unwrap();
    for s in window {
        sent.push(Sent {
            producer,
            seq: s,
            outcome: Outcome::Unknown,
        });
    }
}

/// Reads every record of partition `partition` of topic `k` from its start.
async fn read_all(c: &mut Conn, partition: u32) -> (u64, Vec<(u64, Vec<u8>)>) {
    let (start, end) = match c
        .offsets(Request::list_offsets("k", partition, OffsetSpec::Earliest))
        .await
    {
        Ok(o) => (o.log_start, o.log_end),
        Err(e) => panic!("{e:?}"),
    };
    let mut records = Vec::new();
    let mut offset = start;
    while offset < end {
        match c
            .fetched(Request::fetch("k", partition, offset, 1 << 20, 0, 1))
            .await
        {
            Ok(FetchedPartition {
                batches,
                next_offset,
                ..
            }) => {
                records.extend(
                    decode(&batches, offset)
                        .into_iter()
                        .map(|r| (r.offset, r.value.as_deref().unwrap_or_default().to_vec())),
                );
                assert!(next_offset > offset, "no progress at {offset}");
                offset = next_offset;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    (start, records)
}

/// How the broker is stopped mid-produce.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill9,
    /// SIGTERM: a graceful shutdown, which must exit 0 and leave nothing
    /// for recovery to repair.
    Term,
}

async fn trial(mode: &str, seed: u64, stop: Stop, partitions: u32) -> Report {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spool.toml");
    let segment_bytes = 64 * 1024 + rng.below(256 * 1024);
    std::fs::write(
        &config,
        format!("[defaults]\nflush = \"{mode}\"\nflush_interval_ms = \"20ms\"\nsegment_bytes = {segment_bytes}\npartitions = {partitions}\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let broker = spawn(&data, &["--config", config.to_str().unwrap()]);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(0u64));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            tokio::spawn(produce(
                broker.addr,
                p,
                p % partitions,
                Arc::clone(&sent),
                Arc::clone(&acked),
            ))
        })
        .collect();
    // Kill at a seeded moment: after some hundreds to thousands of acks.
    let kill_after = 200 + rng.below(3000);
    let deadline = Instant::now() + PATIENCE;
    while *acked.lock().unwrap() < kill_after {
        assert!(Instant::now() < deadline, "producers too slow");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    match stop {
        Stop::Kill9 => broker.kill9(),
        Stop::Term => {
            let mut broker = broker;
            broker.signal(libc::SIGTERM);
            assert!(broker.wait().success(), "graceful shutdown exits 0");
        }
    }
    for p in producers {
        tokio::time::timeout(PATIENCE, p)
            .await
            .expect("producer ends")
            .unwrap();
    }
    if stop == Stop::Term {
        for p in 0..partitions {
            let torn: Vec<_> = std::fs::read_dir(data.join("topics/k").join(p.to_string()))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".torn"))
                .collect();
            assert!(
                torn.is_empty(),
                "a clean shutdown left torn tails: {torn:?}"
            );
        }
    }
    let broker = spawn(&data, &["--config", config.to_str().unwrap()]);
    let mut c = Conn::connect(broker.addr).await;
    let sent = sent.lock().unwrap().clone();
    // Each partition is a log of its own, holding its producers' records.
    let mut report = Report::default();
    for p in 0..partitions {
        let (start, records) = read_all(&mut c, p).await;
        let theirs: Vec<Sent> = sent
            .iter()
            .filter(|s| s.producer % partitions == p)
            .cloned()
            .collect();
        report.add(&checker::check(&theirs, &records, start));
    }
    report
}

async fn run(mode: &str, stop: Stop) {
    run_on(mode, stop, 1).await
}

async fn run_on(mode: &str, stop: Stop, partitions: u32) {
    let mut total = Report::default();
    for seed in 0..trials() {
        let r = trial(mode, seed, stop, partitions).await;
        assert!(r.is_clean(), "mode {mode} seed {seed}: {r:?}");
        assert!(r.acked > 0);
        total.add(&r);
    }
    let name = match stop {
        Stop::Kill9 => "kill9",
        Stop::Term => "sigterm",
    };
    eprintln!("{}", total.json(name, mode, trials()));
}

#[test]
fn the_checker_counts_what_it_should() {
    checker::self_test();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_flush_always_loses_nothing_acknowledged() {
    run("always", Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_flush_interval_loses_nothing_acknowledged() {
    run("interval", Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_flush_never_loses_nothing_acknowledged() {
    run("never", Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_drains_cleanly_and_loses_nothing_acknowledged() {
    run("always", Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_four_partition_topic_loses_nothing_acknowledged_in_any_partition() {
    run_on("always", Stop::Kill9, 4).await;
}
