//! Issue 12, first part: the Kafka listener against a real Kafka client,
//! `kcat` (librdkafka), and the real `spool-broker` binary on 127.0.0.1:0.
//! Records produced by kcat are read by Spool's client, and the other way
//! round, with keys, values, offsets and partitions.
//!
//! Needs `kcat` on the PATH (`.ci/run` installs Debian's package).

mod common;

use std::time::Duration;

use common::broker::Conn;
use common::clients::{client_script, kcat, values_from};
use common::process::spawn;
use spool::batch::{BatchHeader, Codec};

#[tokio::test(flavor = "multi_thread")]
async fn kcat_produces_and_consumes_and_spool_reads_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.expect("kafka listening on ADDR is printed");
    assert!(kafka.ip().is_loopback());

    // -L: one broker, at the listener's address.
    let listing = kcat(&broker, &["-L"], b"");
    assert!(listing.contains("1 brokers:"), "{listing}");
    assert!(
        listing.contains(&format!("broker 0 at {kafka}")),
        "{listing}"
    );

    // -P with keys: the topic is created by the producer's Metadata.
    kcat(
        &broker,
        &["-P", "-t", "demo", "-K", ":"],
        b"k1:one\nk2:two\nk3:three\n",
    );
    let printed = kcat(
        &broker,
        &["-C", "-t", "demo", "-e", "-f", "%p %o %k %s\\n"],
        b"",
    );
    assert_eq!(printed, "0 0 k1 one\n0 1 k2 two\n0 2 k3 three\n");
    // -o: an offset, the last N, the end.
    let from_one = kcat(
        &broker,
        &["-C", "-t", "demo", "-e", "-o", "1", "-f", "%s\\n"],
        b"",
    );
    assert_eq!(from_one, "two\nthree\n");
    let last = kcat(
        &broker,
        &["-C", "-t", "demo", "-e", "-o", "-1", "-f", "%s\\n"],
        b"",
    );
    assert_eq!(last, "three\n");
    let at_end = kcat(
        &broker,
        &["-C", "-t", "demo", "-e", "-o", "end", "-f", "%s\\n"],
        b"",
    );
    assert_eq!(at_end, "");

    // Spool's protocol reads what kcat wrote, keys and all.
    let mut c = Conn::connect(broker.addr).await;
    let records = c.fetch("demo", 0).await;
    let seen: Vec<(u64, Vec<u8>, Vec<u8>)> = records
        .into_iter()
        .map(|r| (r.offset, r.key.unwrap().to_vec(), r.value.unwrap().to_vec()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, b"k1".to_vec(), b"one".to_vec()),
            (1, b"k2".to_vec(), b"two".to_vec()),
            (2, b"k3".to_vec(), b"three".to_vec()),
        ]
    );
    // And kcat reads what Spool's protocol wrote.
    assert_eq!(c.produce("demo", &[b"native"]).await, 3);
    let tail = kcat(
        &broker,
        &["-C", "-t", "demo", "-e", "-o", "3", "-f", "%o %s\\n"],
        b"",
    );
    assert_eq!(tail, "3 native\n");

    // Partitions: a topic of three, each partition read on its own.
    c.ok(common::broker::create_request(
        "three",
        &[("partitions", "3")],
    ))
    .await;
    for p in 0..3 {
        kcat(
            &broker,
            &["-P", "-t", "three", "-p", &p.to_string()],
            format!("in {p}\n").as_bytes(),
        );
    }
    for p in 0..3 {
        let got = kcat(
            &broker,
            &[
                "-C",
                "-t",
                "three",
                "-p",
                &p.to_string(),
                "-e",
                "-f",
                "%p %s\\n",
            ],
            b"",
        );
        assert_eq!(got, format!("{p} in {p}\n"));
    }
    let listing = kcat(&broker, &["-L", "-t", "three"], b"");
    assert!(listing.contains("3 partitions:"), "{listing}");
    broker.kill9();
}

/// kcat's headers (`-H`, `%h`), each compression codec (`-z`, checked in
/// the batches Spool stored), create timestamps (`%T`) and `-o s@TS`, the
/// start at the first record at or after a timestamp; then `-o -N` past
/// the start of a partition.
#[tokio::test(flavor = "multi_thread")]
async fn kcat_headers_codecs_and_timestamps_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);

    kcat(
        &broker,
        &["-P", "-t", "hdr", "-K", ":", "-H", "trace=abc", "-H", "n=1"],
        b"k:with headers\n",
    );
    let printed = kcat(
        &broker,
        &["-C", "-t", "hdr", "-e", "-f", "%k|%s|%h\\n"],
        b"",
    );
    assert_eq!(printed, "k|with headers|trace=abc,n=1\n");
    let mut c = Conn::connect(broker.addr).await;
    let native = c.fetch("hdr", 0).await;
    assert_eq!(native.len(), 1);
    let headers: Vec<(String, Option<Vec<u8>>)> = native[0]
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("trace".to_owned(), Some(b"abc".to_vec())),
            ("n".to_owned(), Some(b"1".to_vec())),
        ]
    );

    // Each codec: 50 compressible records in one batch, stored as sent.
    let input: String = (0..50)
        .map(|i| format!("{i:04} {}\n", "z".repeat(200)))
        .collect();
    for (codec, expect) in [
        ("gzip", Codec::Gzip),
        ("snappy", Codec::Snappy),
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
    ] {
        let topic = format!("codec-{codec}");
        kcat(
            &broker,
            &["-P", "-t", &topic, "-z", codec, "-X", "linger.ms=100"],
            input.as_bytes(),
        );
        let fetched = c
            .fetched(common::broker::fetch_request(&topic, 0, 0))
            .await
            .unwrap();
        let mut codecs = Vec::new();
        for b in &fetched.batches {
            codecs.push(BatchHeader::parse(b).unwrap().codec().unwrap());
        }
        assert!(!codecs.is_empty());
        assert!(codecs.iter().all(|c| *c == expect), "{codec}: {codecs:?}");
        let back = kcat(&broker, &["-C", "-t", &topic, "-e", "-f", "%s\\n"], b"");
        assert_eq!(back, input, "{codec}");
    }

    // Timestamps: three produces, a few milliseconds apart at least.
    for word in ["first", "second", "third"] {
        kcat(
            &broker,
            &["-P", "-t", "times"],
            format!("{word}\n").as_bytes(),
        );
    }
    let stamped = kcat(
        &broker,
        &["-C", "-t", "times", "-e", "-f", "%o %T %s\\n"],
        b"",
    );
    let rows: Vec<(u64, i64, String)> = stamped
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{stamped}");
    let now = common::now_ms();
    for (_, ts, word) in &rows {
        assert!(
            (now - 60_000..=now).contains(ts),
            "{word} at {ts}, now {now}"
        );
    }
    for (_, ts, _) in &rows {
        // The first record at or after `ts`, whatever ties there are.
        let expect: String = rows
            .iter()
            .skip_while(|(_, t, _)| t < ts)
            .map(|(_, _, w)| format!("{w}\n"))
            .collect();
        let from = values_from(&broker, "times", &format!("s@{ts}"));
        assert_eq!(from, expect, "-o s@{ts}");
    }
    // Past the last timestamp: nothing; -N beyond the partition's start:
    // from the start.
    let after = rows[2].1 + 1;
    let none = values_from(&broker, "times", &format!("s@{after}"));
    assert_eq!(none, "");
    let last_two = values_from(&broker, "times", "-2");
    assert_eq!(last_two, "second\nthird\n");
    let all = values_from(&broker, "times", "-10");
    assert_eq!(all, "first\nsecond\nthird\n");
    broker.kill9();
}

/// `[kafka] enabled = false` turns the listener off: one ready line.
#[test]
fn the_kafka_listener_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spool.toml");
    std::fs::write(&config, "[kafka]\nenabled = false\n").unwrap();
    let broker = spawn(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(broker.kafka, None);
    broker.kill9();
}

/// Hostile bytes on the Kafka port: a frame past max_frame_bytes, an
/// unknown API, a truncated body, random bytes, an ApiVersions above its
/// maximum (answered at v0 with UNSUPPORTED_VERSION, as clients expect).
/// Nothing panics the broker, and kcat is served afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_bytes_on_the_kafka_port_close_the_connection_and_nothing_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.unwrap();
    let frame = |body: &[u8]| [&(body.len() as i32).to_be_bytes()[..], body].concat();
    let mut rng = common::sim::Rng::new(7);
    let mut hostile: Vec<Vec<u8>> = vec![
        i32::MAX.to_be_bytes().to_vec(),
        (-5i32).to_be_bytes().to_vec(),
        frame(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1]),
        // PRODUCE v9 cut short after its header.
        frame(&[0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0]),
        // METADATA v9 with a topic count of 2^31 - 1.
        frame(&[
            0, 3, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0x7f, 0xff, 0xff, 0xff,
        ]),
    ];
    // Headers the broker accepts (every API it advertises, at each of its
    // versions), then bodies of random bytes.
    let apis = spool::kafka::SUPPORTED;
    for _ in 0..4000 {
        let (key, min, max) = apis[rng.below(apis.len() as u64) as usize];
        let key = key as i16;
        let version = min + rng.below((max - min + 1) as u64) as i16;
        let mut body = [key.to_be_bytes(), version.to_be_bytes()].concat();
        body.extend_from_slice(&[0, 0, 0, 1, 0xff, 0xff]);
        // A tagged-field count of 0 for flexible headers, then mostly
        // small values (counts that fit) and some large ones.
        body.push(0);
        let len = rng.below(80) as usize;
        body.extend((0..len).map(|_| match rng.below(4) {
            0 => 0xff,
            1 => rng.below(256) as u8,
            _ => rng.below(4) as u8,
        }));
        hostile.push(frame(&body));
    }
    for _ in 0..50 {
        let len = rng.below(64) as usize + 8;
        hostile.push(frame(
            &(0..len).map(|_| rng.below(256) as u8).collect::<Vec<u8>>(),
        ));
    }
    for bytes in &hostile {
        let mut s = tokio::net::TcpStream::connect(kafka).await.unwrap();
        let _ = s.write_all(bytes).await;
        // An answer (some requests' extra bytes are ignored, as Kafka's
        // decoders ignore them) or a closed connection, in time.
        let mut some = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut some)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the broker neither answered nor closed: {bytes:02x?}"
        );
    }
    // ApiVersions v99: a v0 body with error 35 and the supported ranges.
    let mut s = tokio::net::TcpStream::connect(kafka).await.unwrap();
    s.write_all(&frame(&[0, 18, 0, 99, 0, 0, 0, 42, 0xff, 0xff]))
        .await
        .unwrap();
    let len = s.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..4], &42i32.to_be_bytes(), "correlation id");
    assert_eq!(&body[4..6], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    assert!(body.len() > 10, "with the supported ranges");
    // Still serving.
    let listing = kcat(&broker, &["-L"], b"");
    assert!(listing.contains("1 brokers:"), "{listing}");
    broker.kill9();
}

/// confluent-kafka 2.16 (librdkafka 2.16): a producer of every codec with
/// keys and headers, then a consumer with manual assignment and seek;
/// Spool's protocol reads what it wrote.
#[tokio::test(flavor = "multi_thread")]
async fn confluent_kafka_produces_every_codec_and_consumes_with_seek() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.unwrap().to_string();
    client_script("confluent_roundtrip.py", &[&kafka, "py"]);
    // Compressed batches as the client sent them, read by Spool's client.
    let mut c = Conn::connect(broker.addr).await;
    let records = c.fetch("py", 0).await;
    assert!(records.len() >= 50, "{} records", records.len());
    let first = &records[0];
    assert_eq!(first.key.as_deref(), Some(&b"none-key-0"[..]));
    assert_eq!(
        first.headers,
        vec![(
            "codec".to_string(),
            Some(bytes::Bytes::from_static(b"none"))
        )]
    );
    broker.kill9();
}

/// confluent-kafka's AdminClient: CreateTopics with partitions and mapped
/// configs, refusals of an unsupported config, a replication factor above
/// 1 and a second create, validate_only; DescribeConfigs of a topic and of
/// the broker, IncrementalAlterConfigs (SET, DELETE, a bad value, APPEND
/// refused), AlterConfigs, CreatePartitions (up, and down refused),
/// DescribeCluster, DeleteTopics.
#[test]
fn confluent_kafka_admin_creates_describes_alters_and_deletes_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.unwrap().to_string();
    client_script("confluent_admin.py", &[&kafka]);
    broker.kill9();
}

/// kafka-python 3.0's KafkaAdminClient: the same calls by its own code
/// paths (its config filters, its whole-set alter that fills in the other
/// modified keys, its reset by DELETE).
#[test]
fn kafka_python_admin_creates_describes_alters_and_deletes_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.unwrap().to_string();
    client_script("kafka_python_admin.py", &[&kafka]);
    broker.kill9();
}

/// kafka-python 3.0: producers of every codec with acks 0, 1 and all
/// (idempotent, its default, with acks=all), small and large batches, to a
/// topic of two partitions; a consumer with manual assignment and seek.
/// Spool's protocol then reads kafka-python's keys, headers and timestamps.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_python_produces_idempotently_and_consumes_with_seek() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let kafka = broker.kafka.unwrap().to_string();
    let mut c = Conn::connect(broker.addr).await;
    c.ok(spool::protocol::Request::CreateTopic {
        topic: "kp".into(),
        settings: vec![("partitions".into(), "2".into())],
    })
    .await;
    tokio::task::spawn_blocking(move || {
        client_script("kafka_python_roundtrip.py", &[&kafka, "kp"])
    })
    .await
    .unwrap();
    let records = c.fetch("kp", 0).await;
    assert!(records.len() >= 30, "{} records", records.len());
    let first = &records[0];
    assert_eq!(first.key.as_deref(), Some(&b"0-none-0"[..]));
    assert_eq!(first.timestamp, 1_700_000_000_000);
    assert_eq!(
        first.headers,
        vec![
            ("run".to_string(), Some(bytes::Bytes::from_static(b"0"))),
            ("empty".to_string(), Some(bytes::Bytes::new())),
        ]
    );
    broker.kill9();
}
