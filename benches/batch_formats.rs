//! The two batch formats side by side (issue 11): what the broker does to
//! every produced batch (full validation) and what a consumer does to every
//! fetched one (decode), for Spool's current format (`spool::batch`) and
//! Kafka's RecordBatch v2 (`spool::record_batch`), on the same records.
//! Taken before the log switches formats, so the switch's cost is known.
//!
//! `cargo bench --bench batch_formats`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spool::{batch, record_batch};

fn current(records: usize, size: usize) -> Vec<u8> {
    let mut b = batch::BatchBuilder::with_capacity(records * (size + 8));
    let value = vec![0x5au8; size];
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, &value, &[]);
    }
    b.finish()
}

fn v2(records: usize, size: usize) -> Vec<u8> {
    let mut b = record_batch::BatchBuilder::with_capacity(records * (size + 8));
    let value = vec![0x5au8; size];
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b.finish()
}

fn formats(c: &mut Criterion) {
    for (records, size) in [(1000usize, 100usize), (1000, 1024), (1, 1024)] {
        let name = format!("{size}B_x{records}");
        let old = current(records, size);
        let new = v2(records, size);
        let mut group = c.benchmark_group(format!("validate/{name}"));
        group
            .measurement_time(Duration::from_secs(3))
            .sample_size(30);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(BenchmarkId::from_parameter("current"), |b| {
            b.iter(|| batch::validate_limited(black_box(&old), 1 << 20).unwrap())
        });
        group.bench_function(BenchmarkId::from_parameter("v2"), |b| {
            b.iter(|| record_batch::validate(black_box(&new), 1 << 20).unwrap())
        });
        group.finish();

        let (old, new) = (Bytes::from(old), Bytes::from(new));
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group
            .measurement_time(Duration::from_secs(3))
            .sample_size(30);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(BenchmarkId::from_parameter("current"), |b| {
            b.iter(|| batch::decode_records(black_box(&old)).unwrap())
        });
        group.bench_function(BenchmarkId::from_parameter("v2"), |b| {
            b.iter(|| record_batch::decode_records(black_box(&new)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, formats);
criterion_main!(benches);
