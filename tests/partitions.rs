//! Partitions over the protocol: each its own log, with its own offsets;
//! PRODUCE, FETCH and LIST_OFFSETS naming several partitions (and topics)
//! in one request, each answered on its own; raising a topic's partitions;
//! the limit on them; a restart; the producer's partitioner.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::broker::*;
use spool::protocol::{
    Acks, ErrorCode, FetchPartition, FetchTopic, FetchedPartition, OffsetSpec, OffsetsTopic,
    ProduceTopic, Request, ResponseBody, TopicResults,
};
use spool::storage::batch::BatchBuilder;

fn batch(values: &[&str]) -> BytesMut {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(common::now_ms(), None, Some(v.as_bytes()), &[]);
    }
    BytesMut::from(&b.finish()[..])
}

async fn produce_to(c: &mut Conn, topic: &str, partition: u32, values: &[&str]) -> u64 {
    c.produced(Request::produce(
        topic,
        partition,
        Acks::Commit,
        batch(values),
    ))
    .await
    .unwrap_or_else(|e| panic!("produce to {topic}/{partition}: {e:?}"))
    .base_offset
}

async fn values_of(c: &mut Conn, topic: &str, partition: u32, offset: u64) -> Vec<String> {
    let fetched = c
        .fetched(Request::fetch(topic, partition, offset, 1 << 20, 0, 1))
        .await
        .unwrap_or_else(|e| panic!("fetch {topic}/{partition}: {e:?}"));
    decode(&fetched.batches, offset)
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

/// Every partition's result of a FETCH, in response order.
fn fetched(body: ResponseBody) -> Vec<(String, u32, Result<FetchedPartition, ErrorCode>)> {
    let ResponseBody::Fetched(topics) = body else {
        panic!("not a FETCH response: {body:?}");
    };
    flatten(topics)
}

fn flatten<T>(topics: Vec<TopicResults<T>>) -> Vec<(String, u32, Result<T, ErrorCode>)> {
    topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions
                .into_iter()
                .map(move |p| (topic.clone(), p.partition, p.result.map_err(|e| e.code)))
        })
        .collect()
}

#[tokio::test]
async fn each_partition_is_a_log_of_its_own() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create_request("t", &[("partitions", "3")])).await;
    let d = c.describe("t").await;
    assert_eq!(
        d.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(d.settings.contains(&("partitions".into(), "3".into())));
    for p in 0..3 {
        assert!(
            broker.dir.path().join(format!("topics/t/{p}")).is_dir(),
            "partition {p} has its own directory"
        );
    }
    // Offsets count per partition, from 0 in each.
    assert_eq!(produce_to(&mut c, "t", 2, &["a", "b"]).await, 0);
    assert_eq!(produce_to(&mut c, "t", 0, &["c"]).await, 0);
    assert_eq!(produce_to(&mut c, "t", 2, &["d"]).await, 2);
    assert_eq!(values_of(&mut c, "t", 2, 0).await, ["a", "b", "d"]);
    assert_eq!(values_of(&mut c, "t", 0, 0).await, ["c"]);
    assert!(values_of(&mut c, "t", 1, 0).await.is_empty());
    let d = c.describe("t").await;
    let ends: Vec<u64> = d.partitions.iter().map(|p| p.log_end).collect();
    assert_eq!(ends, [1, 0, 3]);
    assert_eq!(d.records(), 4);
    // A partition the topic does not have is named in the error.
    let e = c
        .err(
            Request::produce("t", 3, Acks::Commit, batch(&["x"])),
            ErrorCode::UnknownPartition,
        )
        .await;
    assert!(e.message.contains("no partition 3"), "{}", e.message);
    c.err(
        Request::fetch("t", 7, 0, 1 << 20, 0, 1),
        ErrorCode::UnknownPartition,
    )
    .await;
    c.err(
        Request::list_offsets("t", 9, OffsetSpec::Latest),
        ErrorCode::UnknownPartition,
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn one_request_carries_several_partitions_of_several_topics() {
    let broker = start(|c| c.server.auto_create_topics = false).await;
    let mut c = broker.connect().await;
    c.ok(create_request("a", &[("partitions", "2")])).await;
    c.ok(create_request("b", &[])).await;
    // Each partition answers on its own: a missing topic or partition
    // fails alone, the others are stored.
    let request = Request::Produce {
        acks: Acks::Commit,
        topics: vec![
            ProduceTopic {
                topic: "a".into(),
                partitions: vec![
                    (1, batch(&["a1-x", "a1-y"])),
                    (0, batch(&["a0-x"])),
                    (5, batch(&["nowhere"])),
                    (1, batch(&["a1-z"])),
                ],
            },
            ProduceTopic {
                topic: "missing".into(),
                partitions: vec![(0, batch(&["lost"]))],
            },
            ProduceTopic {
                topic: "b".into(),
                partitions: vec![(0, batch(&["b0-x"]))],
            },
        ],
    };
    let ResponseBody::Produced(topics) = c.ok(request).await else {
        panic!("not a PRODUCE response");
    };
    let outcome: Vec<(String, u32, Result<u64, ErrorCode>)> = flatten(topics)
        .into_iter()
        .map(|(t, p, r)| (t, p, r.map(|p| p.base_offset)))
        .collect();
    assert_eq!(
        outcome,
        [
            ("a".to_string(), 1, Ok(0)),
            ("a".to_string(), 0, Ok(0)),
            ("a".to_string(), 5, Err(ErrorCode::UnknownPartition)),
            ("a".to_string(), 1, Ok(2)),
            ("missing".to_string(), 0, Err(ErrorCode::UnknownTopic)),
            ("b".to_string(), 0, Ok(0)),
        ]
    );
    // One FETCH of all of them, and of a partition that is not there.
    let part = |partition, offset| FetchPartition {
        partition,
        offset,
        max_bytes: 1 << 20,
    };
    let request = Request::Fetch {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![
            FetchTopic {
                topic: "a".into(),
                partitions: vec![part(0, 0), part(1, 1), part(4, 0)],
            },
            FetchTopic {
                topic: "b".into(),
                partitions: vec![part(0, 0)],
            },
        ],
    };
    let results = fetched(c.ok(request).await);
    let values: Vec<(String, u32, Result<Vec<String>, ErrorCode>)> = results
        .into_iter()
        .map(|(t, p, r)| {
            let offset = if (t.as_str(), p) == ("a", 1) { 1 } else { 0 };
            let r = r.map(|f| {
                decode(&f.batches, offset)
                    .into_iter()
                    .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
                    .collect()
            });
            (t, p, r)
        })
        .collect();
    let strings = |v: &[&str]| Ok(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        values,
        [
            ("a".to_string(), 0, strings(&["a0-x"])),
            ("a".to_string(), 1, strings(&["a1-y", "a1-z"])),
            ("a".to_string(), 4, Err(ErrorCode::UnknownPartition)),
            ("b".to_string(), 0, strings(&["b0-x"])),
        ]
    );
    // LIST_OFFSETS of several partitions.
    let request = Request::ListOffsets {
        topics: vec![OffsetsTopic {
            topic: "a".into(),
            partitions: vec![(1, OffsetSpec::Latest), (0, OffsetSpec::Earliest)],
        }],
    };
    let ResponseBody::Offsets(topics) = c.ok(request).await else {
        panic!("not a LIST_OFFSETS response");
    };
    let offsets: Vec<(u32, u64)> = flatten(topics)
        .into_iter()
        .map(|(_, p, r)| (p, r.unwrap().offset))
        .collect();
    assert_eq!(offsets, [(1, 3), (0, 0)]);
    broker.stop().await;
}

#[tokio::test]
async fn a_fetch_of_several_partitions_keeps_to_max_bytes_but_returns_a_first_batch_whole() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create_request("t", &[("partitions", "3")])).await;
    let big = "x".repeat(3000);
    for p in 0..3 {
        for _ in 0..3 {
            produce_to(&mut c, "t", p, &[&big]).await;
        }
    }
    let request = |max_bytes| Request::Fetch {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes,
        topics: vec![FetchTopic {
            topic: "t".into(),
            partitions: (0..3)
                .map(|partition| FetchPartition {
                    partition,
                    offset: 0,
                    max_bytes: 1 << 20,
                })
                .collect(),
        }],
    };
    let sizes = |results: Vec<(String, u32, Result<FetchedPartition, ErrorCode>)>| {
        results
            .into_iter()
            .map(|(_, _, r)| {
                let f = r.unwrap();
                (decode(&f.batches, 0).len(), f.next_offset)
            })
            .collect::<Vec<_>>()
    };
    // 100 bytes: the first partition's first batch, whole; nothing else.
    assert_eq!(
        sizes(fetched(c.ok(request(100)).await)),
        [(1, 1), (0, 0), (0, 0)]
    );
    // Room for about four batches: three from the first partition, one
    // from the second, none from the third.
    let one = 3000 + 61 + 16;
    assert_eq!(
        sizes(fetched(c.ok(request(4 * one as u32 + 10)).await)),
        [(3, 3), (1, 1), (0, 0)]
    );
    assert_eq!(
        sizes(fetched(c.ok(request(1 << 20)).await)),
        [(3, 3), (3, 3), (3, 3)]
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_long_poll_over_several_partitions_wakes_for_any_of_them() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let mut producer = broker.connect().await;
    c.ok(create_request("t", &[("partitions", "4")])).await;
    let request = Request::Fetch {
        max_wait_ms: 20_000,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "t".into(),
            partitions: (0..4)
                .map(|partition| FetchPartition {
                    partition,
                    offset: 0,
                    max_bytes: 1 << 20,
                })
                .collect(),
        }],
    };
    let started = Instant::now();
    c.send(&request).await;
    // Give the fetch a moment to park (it answers at once if the produce
    // came first, which proves nothing but fails nothing either).
    tokio::time::sleep(Duration::from_millis(100)).await;
    produce_to(&mut producer, "t", 3, &["late"]).await;
    let response = c.recv().await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the fetch waited out its max_wait_ms"
    );
    let results = fetched(response.body.unwrap());
    let counts: Vec<usize> = results
        .into_iter()
        .map(|(_, _, r)| decode(&r.unwrap().batches, 0).len())
        .collect();
    assert_eq!(counts, [0, 0, 0, 1]);
    broker.stop().await;
}

#[tokio::test]
async fn partitions_are_raised_never_lowered_and_survive_a_restart() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create_request("t", &[])).await;
    assert_eq!(c.describe("t").await.partitions.len(), 1);
    produce_to(&mut c, "t", 0, &["kept"]).await;
    c.ok(Request::AlterTopic {
        topic: "t".into(),
        set: vec![("partitions".into(), "4".into())],
        reset: vec![],
    })
    .await;
    assert_eq!(c.describe("t").await.partitions.len(), 4);
    assert_eq!(produce_to(&mut c, "t", 3, &["new"]).await, 0);
    let e = c
        .err(
            Request::AlterTopic {
                topic: "t".into(),
                set: vec![("partitions".into(), "2".into())],
                reset: vec![],
            },
            ErrorCode::InvalidConfig,
        )
        .await;
    assert!(e.message.contains("cannot be lowered"), "{}", e.message);
    // Resetting to the default (1) would lower it too.
    c.err(
        Request::AlterTopic {
            topic: "t".into(),
            set: vec![],
            reset: vec!["partitions".into()],
        },
        ErrorCode::InvalidConfig,
    )
    .await;
    let broker = broker.restart().await;
    let mut c = broker.connect().await;
    let d = c.describe("t").await;
    assert_eq!(d.partitions.len(), 4);
    assert_eq!(values_of(&mut c, "t", 0, 0).await, ["kept"]);
    assert_eq!(values_of(&mut c, "t", 3, 0).await, ["new"]);
    broker.stop().await;
}

#[tokio::test]
async fn max_partitions_bounds_creates_and_raises() {
    let broker = start(|c| c.server.max_partitions = 5).await;
    let mut c = broker.connect().await;
    c.ok(create_request("a", &[("partitions", "3")])).await;
    let e = c
        .err(
            create_request("b", &[("partitions", "3")]),
            ErrorCode::TooManyPartitions,
        )
        .await;
    assert!(e.message.contains("max_partitions"), "{}", e.message);
    c.ok(create_request("b", &[("partitions", "2")])).await;
    c.err(
        Request::AlterTopic {
            topic: "a".into(),
            set: vec![("partitions".into(), "4".into())],
            reset: vec![],
        },
        ErrorCode::TooManyPartitions,
    )
    .await;
    assert_eq!(c.describe("a").await.partitions.len(), 3);
    // Bad counts are refused before anything is made.
    for bad in ["0", "-1", "many", "10001"] {
        c.err(
            create_request("c", &[("partitions", bad)]),
            ErrorCode::InvalidConfig,
        )
        .await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn the_partition_count_comes_from_the_defaults_and_the_file() {
    let broker = start(|c| {
        c.defaults.partitions = Some(2);
        c.topics.insert(
            "pinned".into(),
            spool::broker::config::TopicOverrides {
                partitions: Some(5),
                ..Default::default()
            },
        );
    })
    .await;
    let mut c = broker.connect().await;
    // A produce creates the topic with the default count.
    produce_to(&mut c, "auto", 1, &["v"]).await;
    assert_eq!(c.describe("auto").await.partitions.len(), 2);
    let d = c.describe("pinned").await;
    assert_eq!(d.partitions.len(), 5);
    assert!(d
        .sources
        .contains(&("partitions".into(), "file [topics.pinned]".into())));
    broker.stop().await;
}

#[tokio::test]
async fn a_topic_in_the_old_layout_is_refused_by_name_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("topics/old");
    std::fs::create_dir_all(&old).unwrap();
    let store = old.join("00000000000000000000.store");
    std::fs::write(&store, b"segments sat here in Spool 0.1").unwrap();
    let broker = start(|c| c.server.data_dir = dir.path().to_owned()).await;
    let mut c = broker.connect().await;
    let e = c
        .err(
            Request::DescribeTopic {
                topic: "old".into(),
            },
            ErrorCode::StorageError,
        )
        .await;
    assert!(e.message.contains("0.1"), "{}", e.message);
    assert_eq!(
        std::fs::read(&store).unwrap(),
        b"segments sat here in Spool 0.1"
    );
    assert!(!old.join("0").exists(), "nothing was made in it");
    broker.stop().await;
}

/// A file that names fewer partitions than a topic has drops none, and
/// does not make every later alter of the topic fail as a lowering.
#[tokio::test]
async fn a_file_naming_fewer_partitions_drops_none() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create_request("t", &[("partitions", "3")])).await;
    produce_to(&mut c, "t", 2, &["kept"]).await;
    let mut broker = broker;
    broker.config.topics.insert(
        "t".into(),
        spool::broker::config::TopicOverrides {
            partitions: Some(1),
            ..Default::default()
        },
    );
    let broker = broker.restart().await;
    let mut c = broker.connect().await;
    let d = c.describe("t").await;
    assert_eq!(d.partitions.len(), 3);
    assert!(d.settings.contains(&("partitions".into(), "3".into())));
    assert_eq!(values_of(&mut c, "t", 2, 0).await, ["kept"]);
    // An alter of something else goes through.
    c.ok(Request::AlterTopic {
        topic: "t".into(),
        set: vec![("retention_ms".into(), "1h".into())],
        reset: vec![],
    })
    .await;
    assert_eq!(c.describe("t").await.partitions.len(), 3);
    broker.stop().await;
}

/// One PRODUCE makes the broker decompress at most 256 MiB to check its
/// compressed batches: a frame of small zstd batches that each expand to a
/// megabyte is refused past that, batch by batch, and the connection and
/// the topic go on.
#[tokio::test(flavor = "multi_thread")]
async fn one_produce_decompresses_a_bounded_amount() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let zeros = vec![0u8; 1 << 20];
    let mut b = BatchBuilder::new();
    b.push(common::now_ms(), None, Some(&zeros[..(1 << 20) - 64]), &[]);
    let bomb = b.finish_compressed(spool::storage::batch::Codec::Zstd);
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    let request = Request::Produce {
        acks: Acks::Commit,
        topics: vec![ProduceTopic {
            topic: "z".into(),
            partitions: (0..300).map(|_| (0, BytesMut::from(&bomb[..]))).collect(),
        }],
    };
    let ResponseBody::Produced(topics) = c.ok(request).await else {
        panic!("not a PRODUCE response");
    };
    let outcomes: Vec<Result<u64, ErrorCode>> = flatten(topics)
        .into_iter()
        .map(|(_, _, r)| r.map(|p| p.base_offset))
        .collect();
    let stored = outcomes.iter().take_while(|r| r.is_ok()).count();
    assert!((200..=256).contains(&stored), "{stored} stored");
    assert!(
        outcomes[stored..]
            .iter()
            .all(|r| *r == Err(ErrorCode::InvalidBatch)),
        "{:?}",
        &outcomes[stored..]
    );
    // The next request has a budget of its own.
    assert_eq!(
        c.produced(Request::produce(
            "z",
            0,
            Acks::Commit,
            BytesMut::from(&bomb[..])
        ))
        .await
        .unwrap()
        .base_offset,
        stored as u64
    );
    broker.stop().await;
}

/// At start only partition directories named as the broker names them
/// count: a stray file or "03" makes no partition, and a directory numbered
/// past what a topic may have makes the topic broken, not 20,000 logs.
#[tokio::test]
async fn only_partition_directories_count_at_start() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    c.ok(create_request("t", &[("partitions", "2")])).await;
    c.ok(create_request("u", &[])).await;
    let topics = broker.dir.path().join("topics");
    std::fs::write(topics.join("t/5"), b"not a partition").unwrap();
    std::fs::create_dir(topics.join("t/03")).unwrap();
    std::fs::create_dir(topics.join("u/20000")).unwrap();
    let broker = broker.restart().await;
    let mut c = broker.connect().await;
    assert_eq!(c.describe("t").await.partitions.len(), 2);
    assert!(!topics.join("t/3").exists() && !topics.join("t/4").exists());
    let e = c
        .err(
            Request::DescribeTopic { topic: "u".into() },
            ErrorCode::StorageError,
        )
        .await;
    assert!(e.message.contains("20000"), "{}", e.message);
    assert!(!topics.join("u/1").exists(), "no partition was made");
    broker.stop().await;
}
