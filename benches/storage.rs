//! Storage-layer benchmarks: append throughput by record size, batch size and
//! sync mode; sequential and random reads; open and recovery time.
//!
//! `cargo bench --bench storage` runs them all; add a filter to pick some,
//! e.g. `cargo bench --bench storage -- append/never`. The data lives in a
//! temporary directory under `$TMPDIR` (default `/tmp`): point that at the
//! disk you want to measure.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spool::storage::{BatchBuilder, Log, LogConfig, SyncMode};

fn batch(records: usize, size: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(records * (size + 8));
    let value = vec![0x5au8; size];
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b.finish()
}

fn config(sync: SyncMode) -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        sync,
        ..LogConfig::default()
    }
}

fn append(c: &mut Criterion) {
    for (name, sync) in [("never", SyncMode::Never), ("always", SyncMode::Always)] {
        let mut group = c.benchmark_group(format!("append/{name}"));
        group
            .measurement_time(Duration::from_secs(4))
            .sample_size(20);
        for size in [100usize, 1024] {
            for records in [1usize, 100, 1000] {
                let mut bytes = batch(records, size);
                group.throughput(Throughput::Bytes(bytes.len() as u64));
                let id = BenchmarkId::new(format!("{size}B"), format!("x{records}"));
                group.bench_function(id, |b| {
                    let dir = tempfile::tempdir().unwrap();
                    let log = Log::open(dir.path(), config(sync)).unwrap();
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            // The same buffer is appended again: the log
                            // rewrites the offset and time, and updates the
                            // CRC for them.
                            let appended = log.append(&mut bytes).unwrap();
                            log.commit(appended.next_offset).unwrap();
                        }
                        let elapsed = start.elapsed();
                        // Free the disk outside the timed part.
                        log.truncate(log.next_offset()).unwrap();
                        elapsed
                    });
                });
            }
        }
        group.finish();
    }
}

/// Appends `bytes` worth of 1 KiB records in batches of 1,000.
fn prefill(dir: &Path, config: LogConfig, bytes: u64) -> Log {
    let log = Log::open(dir, config).unwrap();
    let mut b = batch(1000, 1024);
    while log.size_bytes() < bytes {
        log.append(&mut b).unwrap();
    }
    log
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = prefill(dir.path(), config(SyncMode::Never), 512 << 20);
    let end = log.next_offset();
    let mut group = c.benchmark_group("read");
    group
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    for max_bytes in [64u64 << 10, 1 << 20] {
        let chunk = log.read_batches(0, max_bytes).unwrap().bytes.len();
        group.throughput(Throughput::Bytes(chunk as u64));
        group.bench_function(
            BenchmarkId::new("sequential", format!("{}KiB", max_bytes >> 10)),
            |b| {
                let mut offset = 0;
                b.iter(|| {
                    let r = log.read_batches(offset, max_bytes).unwrap();
                    offset = if r.next_offset >= end {
                        0
                    } else {
                        r.next_offset
                    };
                    black_box(r.bytes.len())
                });
            },
        );
    }
    // A record read decodes the batch that holds it, after checking the
    // whole batch's CRC: its cost grows with the batch.
    group.throughput(Throughput::Elements(1));
    group.bench_function("random_record/1KiB_x1000", |b| random_reads(b, &log));
    drop(log);
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(SyncMode::Never)).unwrap();
    let mut single = batch(1, 1024);
    for _ in 0..100_000 {
        log.append(&mut single).unwrap();
    }
    group.bench_function("random_record/1KiB_x1", |b| random_reads(b, &log));
    group.finish();
}

fn random_reads(b: &mut criterion::Bencher<'_>, log: &Log) {
    let end = log.next_offset();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    b.iter(|| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        black_box(log.read(x % end).unwrap())
    });
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    // 1 GiB in 1,000 segments of 1 MiB, closed cleanly.
    let dir = tempfile::tempdir().unwrap();
    let segmented = LogConfig {
        segment_bytes: 1 << 20,
        ..config(SyncMode::Never)
    };
    drop(prefill(dir.path(), segmented.clone(), 1 << 30));
    group.bench_function("1GiB_1000_segments_clean", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let log = Log::open(dir.path(), segmented.clone()).unwrap();
                total += start.elapsed();
                assert!(log.segment_count() >= 1000);
            }
            total
        })
    });
    drop(dir);
    // 1 GiB in one segment whose index was lost: the worst case, a full scan
    // of the active segment with a CRC check of every batch.
    let dir = tempfile::tempdir().unwrap();
    let single = LogConfig {
        segment_bytes: 2 << 30,
        ..config(SyncMode::Never)
    };
    drop(prefill(dir.path(), single.clone(), 1 << 30));
    let index = dir.path().join(format!("{:020}.index", 0));
    group.bench_function("1GiB_active_segment_index_lost", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::fs::remove_file(&index).unwrap();
                let start = Instant::now();
                let log = Log::open(dir.path(), single.clone()).unwrap();
                total += start.elapsed();
                assert!(log.recovery()[0].1.index_rebuilt);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, append, read, open);
criterion_main!(benches);
