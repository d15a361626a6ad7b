//! I/O errors: a fixed workload on the simulated disk, with its N-th file
//! operation failing (EIO or ENOSPC, once or for good), for every N. The log
//! must never panic, never acknowledge what a failed write or sync may have
//! lost, never acknowledge anything after a failed sync, and keep every
//! acknowledged record across a restart and across a power cut.

mod common;

use std::collections::BTreeMap;

use common::sim::{Fault, Rng, SimFs};
use spool::storage::{BatchBuilder, IoMode, Log, LogConfig, Retention, StorageError, SyncMode};

fn config(io: IoMode) -> LogConfig {
    LogConfig {
        io,
        segment_bytes: 1024,
        index_bytes: 64,
        segment_age: None,
        sync: SyncMode::Always,
        max_batch_bytes: 1 << 20,
        max_record_bytes: u32::MAX,
        ..LogConfig::default()
    }
}

/// What one run acknowledged, and whether it broke a rule while running.
#[derive(Default)]
struct Outcome {
    acked: BTreeMap<u64, Vec<u8>>,
    /// The log's start when the workload ended: retention deleted what is
    /// below it, on purpose.
    start: u64,
    errors: u64,
    /// A commit returned Ok after an earlier commit's sync had failed.
    acked_after_failed_sync: u64,
}

/// The workload: 40 two-record batches, each committed, with retention once.
fn workload(fs: &SimFs, io: IoMode) -> Outcome {
    let mut out = Outcome::default();
    let log = match Log::open_with(fs.shared(), "/t", config(io)) {
        Ok(log) => log,
        Err(_) => {
            out.errors += 1;
            return out;
        }
    };
    let mut sync_failed = false;
    // Appended, not yet covered by a successful commit.
    let mut written = BTreeMap::new();
    for i in 0..40u32 {
        let retention = Retention {
            max_bytes: Some(2048),
            max_age: None,
        };
        if i == 25 && log.apply_retention(retention, 0).is_err() {
            out.errors += 1;
        }
        let values = [
            format!("batch {i} first"),
            format!("batch {i} second {}", "x".repeat(80)),
        ];
        let mut b = BatchBuilder::new();
        for v in &values {
            b.push(i64::from(i), None, Some(v.as_bytes()), &[]);
        }
        let appended = match log.append(&mut b.finish()) {
            Ok(a) => a,
            Err(_) => {
                out.errors += 1;
                continue;
            }
        };
        for (k, v) in values.iter().enumerate() {
            written.insert(appended.base_offset + k as u64, v.clone().into_bytes());
        }
        match log.commit(appended.next_offset) {
            // A commit covers every offset below it, this batch's and any
            // earlier one whose own commit failed.
            Ok(()) => {
                if sync_failed {
                    out.acked_after_failed_sync += 1;
                }
                out.acked.append(&mut written);
            }
            Err(e) => {
                out.errors += 1;
                if matches!(e, StorageError::Fenced { .. } | StorageError::Io { .. }) {
                    sync_failed = true;
                }
            }
        }
    }
    out.start = log.lowest_offset();
    // Errors only; the outcome of close is not an acknowledgement.
    let _ = log.close();
    out
}

/// Acknowledged records missing from (or wrong in) the log on `fs`.
fn lost(fs: &SimFs, out: &Outcome, what: &str, n: u64, io: IoMode) -> u64 {
    let (acked, start) = (&out.acked, out.start);
    let log = Log::open_with(fs.shared(), "/t", config(io))
        .unwrap_or_else(|e| panic!("fault at op {n}: reopen ({what}) failed: {e}"));
    assert!(
        log.lowest_offset() <= start,
        "fault at op {n}: records missing at the start ({what})"
    );
    let mut lost = 0;
    for (offset, value) in acked.range(start..) {
        match log.read(*offset) {
            Ok(r) if r.value.clone().unwrap_or_default() == value[..] => {}
            other => {
                if std::env::var_os("SPOOL_DEBUG").is_some() {
                    eprintln!("fault at op {n}: acked offset {offset} lost ({what}): {other:?}; recovery {:?}", log.recovery());
                }
                lost += 1
            }
        }
    }
    // Whatever is readable is what was written: values name their batch.
    for offset in log.lowest_offset()..log.next_offset() {
        if let Ok(r) = log.read(offset) {
            assert!(
                r.value.clone().unwrap_or_default().starts_with(b"batch "),
                "fault at op {n}: garbage served at {offset} ({what})"
            );
        }
    }
    lost
}

#[test]
fn every_failed_operation_is_survived() {
    // Both write paths: through the page cache, and the direct writer's
    // aligned blocks (the last one written again, whole, each time).
    for io in [IoMode::Buffered, IoMode::Direct] {
        every_failed_operation_is_survived_with(io);
    }
}

fn every_failed_operation_is_survived_with(io: IoMode) {
    let dry = SimFs::new();
    dry.set_fault(None);
    let clean = workload(&dry, io);
    assert_eq!(clean.errors, 0);
    let operations = dry.operations();
    assert!(
        operations > 150,
        "the workload is too small: {operations} operations"
    );

    let (mut runs, mut fired, mut acked, mut lost_total, mut after_failed_sync) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for errno in [libc::EIO, libc::ENOSPC] {
        for sticky in [false, true] {
            for n in 1..=operations {
                let fs = SimFs::new();
                fs.set_fault(Some(Fault {
                    op: None,
                    nth: n,
                    errno,
                    sticky,
                }));
                if std::env::var_os("SPOOL_DEBUG").is_some() {
                    eprintln!("run: errno {errno} sticky {sticky} op {n}");
                }
                // On a thread with a deadline: a commit that retries a
                // failed sync forever must fail the test, not hang it.
                let (done, result) = std::sync::mpsc::channel();
                let sim = fs.clone();
                std::thread::spawn(move || {
                    let _ = done.send(std::panic::catch_unwind(|| workload(&sim, io)));
                });
                let out = match result.recv_timeout(std::time::Duration::from_secs(30)) {
                    Ok(Ok(out)) => out,
                    Ok(Err(_)) => panic!("panic with errno {errno} at op {n} (sticky {sticky})"),
                    Err(_) => panic!("hung with errno {errno} at op {n} (sticky {sticky})"),
                };
                runs += 1;
                fired += u64::from(fs.fault_fired());
                acked += out.acked.len() as u64;
                after_failed_sync += out.acked_after_failed_sync;
                fs.set_fault(None);
                // A restart of the process: everything written is there.
                lost_total += lost(&fs.snapshot(), &out, "restart", n, io);
                // A power cut right after: only what was synced is.
                let mut rng = Rng::new(n);
                lost_total += lost(&fs.crash(&mut rng), &out, "power cut", n, io);
            }
        }
    }
    eprintln!(
        "{{\"test\":\"io_faults\",\"io\":\"{}\",\"operations\":{operations},\"runs\":{runs},\"faults_fired\":{fired},\"acked\":{acked},\"lost\":{lost_total},\"acked_after_failed_sync\":{after_failed_sync},\"panics\":0}}",
        io.as_str()
    );
    assert_eq!(lost_total, 0);
    assert_eq!(after_failed_sync, 0);
    assert_eq!(fired, runs, "every run's fault fired");
}

#[test]
fn a_full_disk_refuses_appends_then_recovers_by_itself() {
    // ENOSPC on every write for a while: appends fail with DiskFull, reads
    // go on, and once space is back appends succeed without a restart.
    let fs = SimFs::new();
    let log = Log::open_with(fs.shared(), "/t", config(IoMode::default())).unwrap();
    let mut b = BatchBuilder::new();
    b.push(0, None, Some(b"before"), &[]);
    let first = log.append(&mut b.finish()).unwrap();
    log.commit(first.next_offset).unwrap();
    fs.set_fault(Some(Fault {
        op: Some(common::sim::Op::Write),
        nth: 1,
        errno: libc::ENOSPC,
        sticky: true,
    }));
    for _ in 0..5 {
        let mut b = BatchBuilder::new();
        b.push(0, None, Some(b"refused"), &[]);
        assert!(matches!(
            log.append(&mut b.finish()),
            Err(StorageError::DiskFull { .. })
        ));
        assert_eq!(
            log.read(0).unwrap().value.as_deref().unwrap(),
            b"before",
            "reads go on"
        );
    }
    fs.set_fault(None);
    let mut b = BatchBuilder::new();
    b.push(0, None, Some(b"after"), &[]);
    let after = log.append(&mut b.finish()).unwrap();
    log.commit(after.next_offset).unwrap();
    assert_eq!(
        after.base_offset, 1,
        "nothing of the refused appends was kept"
    );
    assert_eq!(log.read(1).unwrap().value.as_deref().unwrap(), b"after");
}
