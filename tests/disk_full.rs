//! A disk that really fills up: the broker's data directory on a 24 MiB
//! tmpfs (the test mounts one, so it needs root; without root it says it
//! skipped). Produce until the disk is full while a consumer reads: produces
//! are refused with DISK_FULL, fetches keep working, nothing acknowledged is
//! lost, and producing resumes by itself once retention frees space.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::broker::*;
use common::checker::{self, Outcome, Sent};
use spool::protocol::{Acks, ErrorCode, Request};
use spool::storage::batch::BatchBuilder;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_produces_keeps_fetches_and_recovers() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{{\"test\":\"disk_full\",\"skipped\":\"needs root to mount a tmpfs\"}}");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&outer.path().join("data"), "24m") else {
        eprintln!("{{\"test\":\"disk_full\",\"skipped\":\"mount failed\"}}");
        return;
    };
    let data = fs.0.clone();
    let broker = start(|c| {
        c.server.data_dir = data.clone();
        c.server.retention_check_interval = Duration::from_millis(200);
        c.defaults.segment_bytes = Some(1 << 20);
        c.defaults.index_bytes = Some(64 << 10);
        // Age, not size, frees the space: a size limit under the disk's
        // would keep the disk from ever filling.
        c.defaults.retention_ms = Some(spool::broker::config::Limit::At(Duration::from_secs(2)));
    })
    .await;
    let mut producer = broker.connect().await;
    let mut consumer = broker.connect().await;
    producer
        .ok(Request::CreateTopic {
            topic: "k".into(),
            settings: vec![],
        })
        .await;

    let mut sent = Vec::new();
    let (mut full, mut acked_after_full, mut fetches) = (0u64, 0u64, 0u64);
    let mut consumed_to = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0u64;
    // Until the disk has been full and producing has resumed for a while.
    while acked_after_full < 200 {
        assert!(
            Instant::now() < deadline,
            "never filled up or never recovered: {full} refusals, {acked_after_full} acks after"
        );
        let mut b = BatchBuilder::new();
        for _ in 0..16 {
            b.push(
                common::now_ms(),
                None,
                Some(&checker::message(0, seq, 4000)),
                &[],
            );
            seq += 1;
        }
        let first = seq - 16;
        let request = Request::produce("k", 0, Acks::Commit, BytesMut::from(&b.finish()[..]));
        let outcomes: Vec<Outcome> = match producer.produced(request).await {
            Ok(p) => {
                if full > 0 {
                    acked_after_full += 1;
                }
                (0..16).map(|i| Outcome::Ok(p.base_offset + i)).collect()
            }
            Err(e) if e.code == ErrorCode::DiskFull => {
                full += 1;
                // Give retention a moment; a client would back off too.
                tokio::time::sleep(Duration::from_millis(20)).await;
                vec![Outcome::Fail; 16]
            }
            Err(e) => panic!("unexpected produce error: {e:?}"),
        };
        sent.extend(outcomes.into_iter().enumerate().map(|(i, outcome)| Sent {
            producer: 0,
            seq: first + i as u64,
            outcome,
        }));
        // The consumer keeps reading throughout, disk full or not.
        match consumer.fetched(fetch_request("k", consumed_to, 0)).await {
            Ok(f) => consumed_to = f.next_offset,
            Err(e) if e.code == ErrorCode::OffsetOutOfRange => consumed_to = e.range.unwrap().0,
            other => panic!("fetch failed while the disk was full: {other:?}"),
        }
        fetches += 1;
    }
    assert!(full > 0, "the disk never filled up");
    // Read everything back and check.
    let (start, end) = match producer
        .offsets(Request::list_offsets(
            "k",
            0,
            spool::protocol::OffsetSpec::Earliest,
        ))
        .await
    {
        Ok(o) => (o.log_start, o.log_end),
        Err(e) => panic!("{e:?}"),
    };
    // Retention (by age) goes on while this reads: when the start passes
    // the read, what is below the new start no longer counts.
    let mut records = std::collections::BTreeMap::new();
    let (mut start, mut offset) = (start, start);
    let mut fetches_left = 100_000;
    while offset < end {
        fetches_left -= 1;
        assert!(fetches_left > 0, "the read-back makes no progress");
        match consumer.fetched(fetch_request("k", offset, 0)).await {
            Ok(f) => {
                let batch = decode(&f.batches, offset);
                offset = batch.last().unwrap().offset + 1;
                records.extend(
                    batch
                        .into_iter()
                        .map(|r| (r.offset, r.value.as_deref().unwrap_or_default().to_vec())),
                );
            }
            Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                let (now_start, _) = e.range.unwrap();
                assert!(now_start > start, "the log start moved backwards");
                start = now_start;
                offset = offset.max(start);
                records = records.split_off(&start);
            }
            other => panic!("read-back failed: {other:?}"),
        }
    }
    let records: Vec<(u64, Vec<u8>)> = records.into_iter().collect();
    let report = checker::check(&sent, &records, start);
    eprintln!(
        "{{\"test\":\"disk_full\",\"refused\":{full},\"acked_after_full\":{acked_after_full},\"fetches\":{fetches},\"checker\":{}}}",
        report.json("disk_full", "always", 1)
    );
    assert!(report.is_clean(), "{report:?}");
    broker.stop().await;
}
