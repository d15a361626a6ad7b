//! The RecordBatch v2 codec on the paths every batch takes: what the broker
//! does to each produced batch (full validation, decompressing a compressed
//! one's records), and what a consumer does to each fetched one (decode).
//! Before the log switched to v2 (issue 11), this bench held Spool's own
//! format beside it: v2 validated at 1.01 to 1.16 times its cost and
//! decoded in 0.71 to 0.94 times its time (docs/BENCHMARKS.md).
//!
//! `cargo bench --bench batch_formats`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spool::batch::{self, BatchBuilder, Codec};

fn build(records: usize, size: usize) -> BatchBuilder {
    let mut b = BatchBuilder::with_capacity(records * (size + 8));
    // Values that compress somewhat, as log lines do.
    let value: Vec<u8> = (0..size).map(|i| b"spool log line "[i % 15]).collect();
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b
}

fn codecs(c: &mut Criterion) {
    for (records, size) in [(1000usize, 100usize), (1000, 1024), (1, 1024)] {
        let name = format!("{size}B_x{records}");
        let mut group = c.benchmark_group(format!("validate/{name}"));
        group
            .measurement_time(Duration::from_secs(3))
            .sample_size(30);
        group.throughput(Throughput::Elements(records as u64));
        for (label, codec) in [
            ("none", Codec::None),
            ("lz4", Codec::Lz4),
            ("zstd", Codec::Zstd),
        ] {
            let bytes = build(records, size).finish_compressed(codec);
            group.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| batch::validate(black_box(&bytes), 1 << 20).unwrap())
            });
        }
        group.finish();

        let plain = Bytes::from(build(records, size).finish());
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group
            .measurement_time(Duration::from_secs(3))
            .sample_size(30);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(BenchmarkId::from_parameter("none"), |b| {
            b.iter(|| batch::decode_records(black_box(&plain)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
