//! Broker benchmarks over a real loopback socket: produce throughput (one
//! connection, pipelined) by flush mode, and draining a backlog with fetch.
//! The broker runs in-process on the same two-core runtime as the client,
//! so these are a floor; `spool bench` measures separate processes.
//!
//! `cargo bench --bench broker`

use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spool::broker::{Broker, Config, Flush, RunningBroker};
use spool::protocol::{Acks, Request};
use spool::storage::batch::BatchBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// In-flight produce requests on the connection.
const WINDOW: usize = 8;
/// The one topic, of one partition (0), that both benchmarks use.
const TOPIC: &str = "bench";
/// Where the one partition's error code sits in a PRODUCE or FETCH
/// response of one topic and one partition: after the correlation id, the
/// response's own code and (empty) message, the topic count, the topic,
/// the partition count and the partition id.
const PARTITION_CODE_AT: usize = 4 + 2 + 2 + 4 + 2 + TOPIC.len() + 4 + 4;
/// Where a FETCH's next_offset sits: after the partition's code, its
/// (empty) message, log_start and log_end.
const NEXT_OFFSET_AT: usize = PARTITION_CODE_AT + 2 + 2 + 8 + 8;

fn batch(records: usize, size: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(records * (size + 8));
    let value = vec![0x5au8; size];
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b.finish()
}

async fn start(dir: &std::path::Path, flush: Flush) -> RunningBroker {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.to_owned();
    config.defaults.flush = Some(flush);
    config.defaults.segment_bytes = Some(256 << 20);
    // The batches carry fixed 2023 timestamps: by time, retention would
    // delete the fetch backlog's sealed segments as soon as they roll.
    config.defaults.retention_ms = Some(spool::broker::config::Limit::Unlimited);
    Broker::start(config).await.unwrap()
}

async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let len = stream.read_u32().await.unwrap() as usize;
    buf.resize(len, 0);
    stream.read_exact(buf).await.unwrap();
    assert_eq!(&buf[4..6], &[0, 0], "error response");
    let code = &buf[PARTITION_CODE_AT..PARTITION_CODE_AT + 2];
    if code != [0, 0] {
        let at = PARTITION_CODE_AT + 2;
        let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
        let message = String::from_utf8_lossy(&buf[at + 2..at + 2 + len]);
        panic!("partition error {code:?}: {message}");
    }
}

fn produce(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, flush) in [("never", Flush::Never), ("always", Flush::Always)] {
        let mut group = c.benchmark_group(format!("broker_produce/{name}"));
        group
            .measurement_time(Duration::from_secs(5))
            .sample_size(10);
        for (records, size) in [(1000usize, 1024usize), (1000, 100)] {
            let dir = tempfile::tempdir().unwrap();
            let broker = rt.block_on(start(dir.path(), flush));
            let addr = broker.local_addr();
            let mut frame = BytesMut::new();
            let b = batch(records, size);
            Request::produce(TOPIC, 0, Acks::Commit, BytesMut::from(&b[..])).encode(1, &mut frame);
            group.throughput(Throughput::Bytes(b.len() as u64));
            group.bench_function(
                BenchmarkId::new(format!("{size}B"), format!("x{records}")),
                |bench| {
                    bench.iter_custom(|iters| {
                        rt.block_on(async {
                            let mut stream = TcpStream::connect(addr).await.unwrap();
                            stream.set_nodelay(true).unwrap();
                            let (mut sent, mut done) = (0u64, 0u64);
                            let mut buf = Vec::new();
                            let start = Instant::now();
                            while done < iters {
                                while sent < iters && sent - done < WINDOW as u64 {
                                    stream.write_all(&frame).await.unwrap();
                                    sent += 1;
                                }
                                read_frame(&mut stream, &mut buf).await;
                                done += 1;
                            }
                            start.elapsed()
                        })
                    });
                },
            );
            // Free the disk for the next case.
            rt.block_on(broker.shutdown());
        }
        group.finish();
    }
}

fn fetch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = rt.block_on(start(dir.path(), Flush::Never));
    let addr = broker.local_addr();
    let b = batch(1000, 1024);
    let backlog = 512u64 << 20;
    let end = rt.block_on(async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut frame = BytesMut::new();
        Request::produce(TOPIC, 0, Acks::Commit, BytesMut::from(&b[..])).encode(1, &mut frame);
        let mut buf = Vec::new();
        let n = backlog / b.len() as u64;
        for _ in 0..n {
            stream.write_all(&frame).await.unwrap();
            read_frame(&mut stream, &mut buf).await;
        }
        n * 1000
    });
    let mut group = c.benchmark_group("broker_fetch");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    let max_bytes = 4u32 << 20;
    group.throughput(Throughput::Bytes(u64::from(max_bytes)));
    group.bench_function("backlog_1KiB_x1000_max4MiB", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let mut offset = 0u64;
                let mut bytes = 0u64;
                let start = Instant::now();
                for i in 0..iters {
                    let mut frame = BytesMut::new();
                    Request::fetch(TOPIC, 0, offset, max_bytes, 0, 1).encode(i as u32, &mut frame);
                    stream.write_all(&frame).await.unwrap();
                    read_frame(&mut stream, &mut buf).await;
                    bytes += buf.len() as u64;
                    let next = u64::from_be_bytes(
                        buf[NEXT_OFFSET_AT..NEXT_OFFSET_AT + 8].try_into().unwrap(),
                    );
                    assert!(
                        offset < next && next <= end,
                        "fetch from {offset} of [0, {end}) gave next_offset {next}"
                    );
                    offset = next;
                    if offset >= end {
                        offset = 0;
                    }
                }
                let elapsed = start.elapsed();
                // Report per max_bytes; scale when a response was short.
                elapsed.mul_f64((iters * u64::from(max_bytes)) as f64 / bytes as f64)
            })
        });
    });
    group.finish();
    rt.block_on(broker.shutdown());
}

criterion_group!(benches, produce, fetch);
criterion_main!(benches);
