//! Every API of the broker, over TCP, against an in-process broker on
//! 127.0.0.1:0 with a temp data directory.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::broker::*;
use spool::protocol::{
    Acks, ApiKey, ErrorCode, FetchedPartition, OffsetSpec, PartitionOffsets, Request, ResponseBody,
    TopicDescription,
};
use spool::storage::batch::BatchBuilder;

fn create(topic: &str, settings: &[(&str, &str)]) -> Request {
    create_request(topic, settings)
}

fn setting<'a>(d: &'a TopicDescription, key: &str) -> &'a str {
    &d.settings
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

#[tokio::test]
async fn produce_then_fetch_round_trip() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    assert_eq!(c.produce("t", &[b"a", b"b"]).await, 0);
    assert_eq!(c.produce("t", &[b"c"]).await, 2);
    let records = c.fetch("t", 0).await;
    let values: Vec<&[u8]> = records
        .iter()
        .map(|r| r.value.as_deref().unwrap())
        .collect();
    assert_eq!(values, vec![&b"a"[..], b"b", b"c"]);
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // A fetch from the middle of a batch returns the whole batch; the client
    // skips what it did not ask for.
    assert_eq!(
        c.fetch("t", 1)
            .await
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    broker.stop().await;
}

#[tokio::test]
async fn many_topics_from_many_concurrent_connections() {
    let broker = start(|_| {}).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await;
            let topic = format!("topic-{}", t % 4);
            let mut mine = Vec::new();
            for i in 0..50 {
                let value = format!("conn{t}-msg{i}");
                let offset = c.produce(&topic, &[value.as_bytes()]).await;
                mine.push((topic.clone(), offset, value));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut c = broker.connect().await;
    for t in 0..4 {
        let topic = format!("topic-{t}");
        let mut stored = Vec::new();
        let mut offset = 0;
        while offset < 100 {
            let records = c.fetch(&topic, offset).await;
            offset = records.last().unwrap().offset + 1;
            stored.extend(records);
        }
        assert_eq!(stored.len(), 100);
        for (i, r) in stored.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
        }
        for (_, offset, value) in all.iter().filter(|(tp, _, _)| *tp == topic) {
            assert_eq!(
                stored[*offset as usize].value.as_deref(),
                Some(value.as_bytes()),
                "{topic}@{offset}"
            );
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    // Sent without waiting: an error, produces with list requests between
    // them, then a fetch that long-polls. State changes apply in order.
    c.send(&fetch_request("p", 0, 0)).await; // the topic does not exist yet
    let mut expected = Vec::new(); // Some(offset) for a produce, None for a list
    for i in 0..200u64 {
        c.send(&produce_request("p", &[format!("m{i}").as_bytes()]))
            .await;
        expected.push(Some(i));
        if i % 50 == 0 {
            c.send(&Request::ListTopics).await;
            expected.push(None);
        }
    }
    c.send(&fetch_request("p", 0, 5000)).await;
    assert_eq!(
        c.recv().await.fetched().unwrap_err().code,
        ErrorCode::UnknownTopic
    );
    for want in expected {
        let response = c.recv().await;
        match want {
            Some(offset) => assert_eq!(response.produced().unwrap().base_offset, offset),
            None => assert_eq!(
                response.body.unwrap(),
                ResponseBody::Topics(vec!["p".to_string()])
            ),
        }
    }
    let FetchedPartition {
        batches, log_end, ..
    } = c.recv().await.fetched().unwrap();
    // The fetch was answered from what was synced when it ran: some of the
    // 200, at least the first.
    assert!((1..=200).contains(&log_end), "{log_end}");
    assert_eq!(decode(&batches, 0)[0].value.as_deref().unwrap(), &b"m0"[..]);
    broker.stop().await;
}

#[tokio::test]
async fn admin_apis_and_their_errors() {
    let broker = start(|c| {
        c.server.auto_create_topics = false;
        c.server.max_frame_bytes = 3 << 20;
    })
    .await;
    let mut c = broker.connect().await;
    match c.ok(Request::ApiVersions).await {
        ResponseBody::ApiVersions {
            server,
            apis,
            max_frame_bytes,
        } => {
            assert!(server.starts_with("spool "));
            assert_eq!(apis.len(), 15);
            // Issue 10, item 7: the broker advertises its frame limit.
            assert_eq!(max_frame_bytes, 3 << 20);
            // DESCRIBE_TOPIC, PRODUCE, FETCH and LIST_OFFSETS are at
            // version 1 only (they name partitions), the others at 0.
            for (key, min, max) in &apis {
                let api = ApiKey::from_u16(*key).unwrap_or_else(|| panic!("api {key}"));
                let version = match api {
                    ApiKey::DescribeTopic
                    | ApiKey::Produce
                    | ApiKey::Fetch
                    | ApiKey::ListOffsets => 1,
                    _ => 0,
                };
                assert_eq!((*min, *max), (version, version), "{}", api.name());
            }
            let mut keys: Vec<u16> = apis.iter().map(|a| a.0).collect();
            keys.sort();
            assert_eq!(keys, (0..15).collect::<Vec<u16>>());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.ok(Request::ListTopics).await,
        ResponseBody::Topics(vec![])
    );
    c.ok(create(
        "orders",
        &[
            ("retention_ms", "1d"),
            ("flush", "never"),
            ("segment_bytes", "1MiB"),
        ],
    ))
    .await;
    c.ok(create("audit", &[])).await;
    c.err(create("orders", &[]), ErrorCode::TopicAlreadyExists)
        .await;
    c.err(
        create("bad", &[("retention", "1d")]),
        ErrorCode::InvalidConfig,
    )
    .await;
    c.err(
        create("bad", &[("flush", "sometimes")]),
        ErrorCode::InvalidConfig,
    )
    .await;
    c.err(
        create("bad", &[("segment_bytes", "10")]),
        ErrorCode::InvalidConfig,
    )
    .await;
    let long = "x".repeat(250);
    for name in ["..", ".", "a/b", "", long.as_str(), "a b", "../../etc"] {
        c.err(create(name, &[]), ErrorCode::InvalidTopicName).await;
        c.err(
            Request::DescribeTopic { topic: name.into() },
            ErrorCode::InvalidTopicName,
        )
        .await;
        c.err(produce_request(name, &[b"x"]), ErrorCode::InvalidTopicName)
            .await;
    }
    // Nothing touched the disk for the bad names.
    let listed: Vec<_> = std::fs::read_dir(broker.dir.path().join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        c.ok(Request::ListTopics).await,
        ResponseBody::Topics(vec!["audit".into(), "orders".into()])
    );

    let d = c.describe("orders").await;
    assert_eq!(d.partitions.len(), 1);
    let p = &d.partitions[0];
    assert_eq!((p.log_start, p.log_end, p.segments), (0, 0, 1));
    assert_eq!(setting(&d, "retention_ms"), "86400000");
    assert_eq!(setting(&d, "flush"), "never");
    assert_eq!(setting(&d, "segment_bytes"), "1048576");
    assert_eq!(setting(&d, "retention_bytes"), "unlimited");
    c.produce("orders", &[b"1", b"2"]).await;
    let d = c.describe("orders").await;
    let p = &d.partitions[0];
    assert_eq!((p.log_start, p.log_end), (0, 2));
    assert!(d.size_bytes() > 0);

    // Without auto-create, producing to an unknown topic fails.
    c.err(produce_request("nope", &[b"x"]), ErrorCode::UnknownTopic)
        .await;
    c.err(
        Request::DescribeTopic {
            topic: "nope".into(),
        },
        ErrorCode::UnknownTopic,
    )
    .await;
    c.err(fetch_request("nope", 0, 0), ErrorCode::UnknownTopic)
        .await;
    c.err(
        Request::list_offsets("nope", 0, OffsetSpec::Latest),
        ErrorCode::UnknownTopic,
    )
    .await;
    c.err(
        Request::DeleteTopic {
            topic: "nope".into(),
        },
        ErrorCode::UnknownTopic,
    )
    .await;

    c.ok(Request::DeleteTopic {
        topic: "orders".into(),
    })
    .await;
    assert_eq!(
        c.ok(Request::ListTopics).await,
        ResponseBody::Topics(vec!["audit".into()])
    );
    assert!(!broker.dir.path().join("topics/orders").exists());
    c.err(fetch_request("orders", 0, 0), ErrorCode::UnknownTopic)
        .await;
    // A new topic of the same name starts empty.
    c.ok(create("orders", &[])).await;
    assert_eq!(c.describe("orders").await.partitions[0].log_end, 0);
    broker.stop().await;
}

#[tokio::test]
async fn produce_errors() {
    let broker = start(|c| c.defaults.max_record_bytes = Some(1000)).await;
    let mut c = broker.connect().await;
    c.produce("t", &[b"fine"]).await;
    // A batch whose CRC does not match.
    let mut b = BatchBuilder::new();
    b.push(common::now_ms(), None, Some(b"payload"), &[]);
    let mut bytes = b.finish();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let bad = Request::produce("t", 0, Acks::Commit, BytesMut::from(&bytes[..]));
    c.err(bad, ErrorCode::InvalidBatch).await;
    // Not a batch at all.
    let junk = Request::produce("t", 0, Acks::Commit, BytesMut::from(&b"junk"[..]));
    c.err(junk, ErrorCode::InvalidBatch).await;
    // A record over max_record_bytes.
    let big = vec![7u8; 2000];
    c.err(produce_request("t", &[&big]), ErrorCode::RecordTooLarge)
        .await;
    // Nothing of them was stored; the next offset is 1.
    assert_eq!(c.produce("t", &[b"next"]).await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn fire_and_forget_produces_get_no_response() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let mut b = BatchBuilder::new();
    b.push(common::now_ms(), None, Some(b"quiet"), &[]);
    let quiet = Request::produce("f", 0, Acks::None, BytesMut::from(&b.finish()[..]));
    for _ in 0..10 {
        c.send(&quiet).await;
    }
    // Even a bad one is silent.
    let bad = Request::produce("f", 0, Acks::None, BytesMut::from(&b"junk"[..]));
    c.send(&bad).await;
    // The next answered request's response is the next frame on the wire.
    assert_eq!(c.produce("f", &[b"loud"]).await, 10);
    broker.stop().await;
}

#[tokio::test]
async fn fetch_errors_and_ranges() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.produce("t", &[b"a", b"b", b"c"]).await;
    let e = c
        .err(fetch_request("t", 4, 0), ErrorCode::OffsetOutOfRange)
        .await;
    assert_eq!(e.range, Some((0, 3)));
    // At the end: empty, not an error.
    let FetchedPartition {
        batches,
        next_offset,
        log_start,
        log_end,
    } = c.fetched(fetch_request("t", 3, 0)).await.unwrap();
    assert!(batches.is_empty());
    assert_eq!((next_offset, log_start, log_end), (3, 0, 3));
    broker.stop().await;
}

#[tokio::test]
async fn fetch_max_bytes_spans_segments_and_keeps_whole_batches() {
    let broker = start(|c| c.defaults.segment_bytes = Some(4096)).await;
    let mut c = broker.connect().await;
    let value = vec![1u8; 1000];
    for _ in 0..20 {
        c.produce("t", &[&value]).await;
    }
    let d = c.describe("t").await;
    assert!(d.partitions[0].segments >= 5);
    let fetch = |max_bytes| Request::fetch("t", 0, 0, max_bytes, 0, 1);
    // Tiny max_bytes: still one whole batch.
    let FetchedPartition {
        batches,
        next_offset,
        ..
    } = c.fetched(fetch(1)).await.unwrap();
    assert_eq!(decode(&batches, 0).len(), 1);
    assert_eq!(next_offset, 1);
    // 10 KiB: about ten batches, across segment boundaries, never over.
    let FetchedPartition {
        batches,
        next_offset,
        ..
    } = c.fetched(fetch(10 * 1024)).await.unwrap();
    let total: usize = batches.iter().map(|b| b.len()).sum();
    assert!(total <= 10 * 1024);
    let records = decode(&batches, 0);
    assert!(records.len() >= 9, "{} records", records.len());
    assert_eq!(next_offset, records.len() as u64);
    broker.stop().await;
}

#[tokio::test]
async fn list_offsets() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let offsets = |spec| Request::list_offsets("t", 0, spec);
    c.produce("t", &[b"a"]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let base = c.produce("t", &[b"b"]).await;
    assert_eq!(
        c.offsets(offsets(OffsetSpec::Earliest)).await,
        Ok(PartitionOffsets {
            offset: 0,
            log_start: 0,
            log_end: 2,
            timestamp: None,
        })
    );
    assert_eq!(
        c.offsets(offsets(OffsetSpec::Latest)).await,
        Ok(PartitionOffsets {
            offset: 2,
            log_start: 0,
            log_end: 2,
            timestamp: None,
        })
    );
    assert_eq!(
        c.offsets(offsets(OffsetSpec::Timestamp(0))).await,
        Ok(PartitionOffsets {
            offset: 0,
            log_start: 0,
            log_end: 2,
            timestamp: None,
        })
    );
    assert_eq!(
        c.offsets(offsets(OffsetSpec::Timestamp(before + 1))).await,
        Ok(PartitionOffsets {
            offset: base,
            log_start: 0,
            log_end: 2,
            timestamp: None,
        })
    );
    // The max timestamp (-3): the later record.
    assert_eq!(
        c.offsets(offsets(OffsetSpec::MaxTimestamp))
            .await
            .unwrap()
            .offset,
        base
    );
    // Later than everything: the end.
    assert_eq!(
        c.offsets(offsets(OffsetSpec::Timestamp(i64::MAX))).await,
        Ok(PartitionOffsets {
            offset: 2,
            log_start: 0,
            log_end: 2,
            timestamp: None,
        })
    );
    broker.stop().await;
}

#[tokio::test]
async fn long_poll_returns_when_data_arrives() {
    let broker = start(|_| {}).await;
    let mut consumer = broker.connect().await;
    let mut producer = broker.connect().await;
    producer.produce("t", &[b"first"]).await;
    let started = Instant::now();
    consumer.send(&fetch_request("t", 1, 30_000)).await;
    // The fetch is parked; it must not answer yet. Produce, then it must.
    tokio::time::sleep(Duration::from_millis(100)).await;
    producer.produce("t", &[b"second"]).await;
    let response = consumer.recv().await;
    let elapsed = started.elapsed();
    let batches = response.fetched().unwrap().batches;
    assert_eq!(
        decode(&batches, 1)[0].value.as_deref().unwrap(),
        &b"second"[..]
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "woken by the append, not the deadline: {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(100),
        "answered before the data existed"
    );
    broker.stop().await;
}

#[tokio::test]
async fn long_poll_returns_empty_at_its_deadline() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.produce("t", &[b"only"]).await;
    let started = Instant::now();
    let FetchedPartition {
        batches,
        next_offset,
        ..
    } = c.fetched(fetch_request("t", 1, 300)).await.unwrap();
    assert!(batches.is_empty());
    assert_eq!(next_offset, 1);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "returned early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "overslept: {elapsed:?}");
    broker.stop().await;
}

#[tokio::test]
async fn min_bytes_waits_for_enough_data() {
    let broker = start(|_| {}).await;
    let mut consumer = broker.connect().await;
    let mut producer = broker.connect().await;
    producer.produce("t", &[b"x"]).await;
    let wait_for_more = Request::fetch("t", 0, 0, 1 << 20, 30_000, 2000);
    consumer.send(&wait_for_more).await;
    producer.produce("t", &[&[0u8; 1000]]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    producer.produce("t", &[&[0u8; 1000]]).await;
    let batches = consumer.recv().await.fetched().unwrap().batches;
    assert!(batches.iter().map(|b| b.len()).sum::<usize>() >= 2000);
    assert_eq!(decode(&batches, 0).len(), 3);
    broker.stop().await;
}

#[tokio::test]
async fn restart_keeps_records_offsets_and_settings() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create(
        "kept",
        &[
            ("retention_bytes", "10MiB"),
            ("flush", "interval"),
            ("flush_interval_ms", "50ms"),
        ],
    ))
    .await;
    for i in 0..10u32 {
        c.produce("kept", &[format!("v{i}").as_bytes()]).await;
    }
    c.produce("auto", &[b"created by produce"]).await;
    drop(c);
    let broker = broker.restart().await;
    let mut c = broker.connect().await;
    assert_eq!(
        c.ok(Request::ListTopics).await,
        ResponseBody::Topics(vec!["auto".into(), "kept".into()])
    );
    let d = c.describe("kept").await;
    assert_eq!(d.partitions[0].log_end, 10);
    assert_eq!(setting(&d, "retention_bytes"), "10485760");
    assert_eq!(setting(&d, "flush"), "interval");
    assert_eq!(setting(&d, "flush_interval_ms"), "50");
    let records = c.fetch("kept", 0).await;
    assert_eq!(records.len(), 10);
    assert_eq!(records[9].value.as_deref().unwrap(), &b"v9"[..]);
    assert_eq!(c.produce("kept", &[b"after"]).await, 10);
    assert_eq!(
        c.fetch("auto", 0).await[0].value.as_deref(),
        Some(&b"created by produce"[..])
    );
    broker.stop().await;
}

#[tokio::test]
async fn retention_frees_whole_segments_within_a_check_interval() {
    let interval = Duration::from_millis(200);
    let broker = start(|c| {
        c.server.retention_check_interval = interval;
        c.defaults.segment_bytes = Some(4096);
        c.defaults.retention_bytes = Some(spool::broker::config::Limit::At(8192));
    })
    .await;
    let mut c = broker.connect().await;
    let value = vec![2u8; 1000];
    for _ in 0..30 {
        c.produce("r", &[&value]).await;
    }
    let written = Instant::now();
    let bound = 8192 + 4096;
    let mut d = c.describe("r").await;
    // Bounded wait: the retention task runs every 200 ms. It publishes each
    // removed segment as it goes, so a describe can land mid-pass: wait for
    // the end state rather than the first sign of a pass.
    for _ in 0..100 {
        if d.size_bytes() <= bound {
            break;
        }
        tokio::time::sleep(interval / 4).await;
        d = c.describe("r").await;
    }
    assert!(d.size_bytes() <= bound, "{} bytes left", d.size_bytes());
    let log_start = d.partitions[0].log_start;
    assert!(log_start > 0, "retention never moved the log start");
    assert!(
        written.elapsed() < interval * 10,
        "took {:?}",
        written.elapsed()
    );
    let e = c
        .err(fetch_request("r", 0, 0), ErrorCode::OffsetOutOfRange)
        .await;
    assert_eq!(e.range, Some((log_start, 30)));
    assert_eq!(c.fetch("r", log_start).await[0].offset, log_start);
    broker.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_parked_fetches_and_syncs() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.produce("t", &[b"x"]).await;
    c.send(&fetch_request("t", 1, 60_000)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let dir = broker.dir.path().to_owned();
    let TestBroker {
        running,
        dir: _keep,
        ..
    } = broker;
    let stopping = tokio::spawn(running.unwrap().shutdown());
    // The parked fetch is answered (empty) rather than cut off.
    assert!(c.recv().await.fetched().unwrap().batches.is_empty());
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    // Closed cleanly: the active index is trimmed to its one entry.
    let index = std::fs::metadata(dir.join("topics/t/0/00000000000000000000.index"))
        .unwrap()
        .len();
    assert_eq!(index, 8);
}

#[tokio::test]
async fn damaged_stored_data_is_reported_not_served() {
    let broker = start(|c| c.defaults.segment_bytes = Some(4096)).await;
    let mut c = broker.connect().await;
    for i in 0..12u32 {
        c.produce("d", &[format!("{i:0900}").as_bytes()]).await;
    }
    drop(c);
    let dir = broker.dir.path().to_owned();
    let broker = {
        let TestBroker {
            running,
            dir: keep,
            config,
            ..
        } = broker;
        running.unwrap().shutdown().await;
        // Flip a byte inside the value of offset 1, in the first (sealed) segment.
        let store = dir.join("topics/d/0/00000000000000000000.store");
        let mut bytes = std::fs::read(&store).unwrap();
        let second_batch = bytes.len() / 4; // four ~1 KB batches per 4 KiB segment
        bytes[second_batch + 500] ^= 0x40;
        std::fs::write(&store, bytes).unwrap();
        let mut config = config;
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.kafka.listen = "127.0.0.1:0".into();
        let running = spool::broker::Broker::start(config.clone()).await.unwrap();
        TestBroker {
            addr: running.local_addr(),
            running: Some(running),
            dir: keep,
            config,
        }
    };
    let mut c = broker.connect().await;
    let e = c
        .err(fetch_request("d", 1, 0), ErrorCode::CorruptData)
        .await;
    assert_eq!(e.resume_at, Some(2), "{}", e.message);
    assert!(e.message.contains("segment"), "{}", e.message);
    // A fetch from before the damage stops before it; after it, all is served.
    let FetchedPartition {
        batches,
        next_offset,
        ..
    } = c.fetched(fetch_request("d", 0, 0)).await.unwrap();
    assert_eq!(decode(&batches, 0).len(), 1);
    assert_eq!(next_offset, 1);
    assert_eq!(c.fetch("d", 2).await[0].offset, 2);
    broker.stop().await;
}

#[tokio::test]
async fn fire_and_forget_records_become_visible_on_an_always_topic() {
    // Consumers of a flush = "always" topic see only synced records; a
    // fire-and-forget produce must still get synced, and then seen.
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(Request::CreateTopic {
        topic: "a".into(),
        settings: vec![("flush".into(), "always".into())],
    })
    .await;
    let mut b = BatchBuilder::new();
    b.push(common::now_ms(), None, Some(b"quiet"), &[]);
    c.send(&Request::produce(
        "a",
        0,
        Acks::None,
        BytesMut::from(&b.finish()[..]),
    ))
    .await;
    let FetchedPartition {
        batches, log_end, ..
    } = c.fetched(fetch_request("a", 0, 10_000)).await.unwrap();
    assert_eq!(
        decode(&batches, 0)[0].value.as_deref().unwrap(),
        &b"quiet"[..]
    );
    assert_eq!(log_end, 1);
    broker.stop().await;
}
