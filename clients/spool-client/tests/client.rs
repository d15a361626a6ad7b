//! The client library against an in-process broker on 127.0.0.1:0.

use std::time::{Duration, Instant};

use spool::broker::{Broker, Config, RunningBroker};
use spool_client::{
    batch, BusyPoll, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Delivery,
    ErrorCode, OffsetReset, Producer, ProducerConfig, StartAt,
};

const PATIENCE: Duration = Duration::from_secs(20);

struct TestBroker {
    running: Option<RunningBroker>,
    config: Config,
    _dir: tempfile::TempDir,
}

async fn start(edit: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().to_owned();
    edit(&mut config);
    let running = Broker::start(config.clone()).await.unwrap();
    // Restarts reuse the port the OS picked, so a client can find it again.
    config.server.listen = running.local_addr();
    TestBroker {
        running: Some(running),
        config,
        _dir: dir,
    }
}

impl TestBroker {
    fn addr(&self) -> String {
        self.config.server.listen.to_string()
    }

    async fn client(&self) -> Client {
        Client::connect(&self.addr()).await.unwrap()
    }

    fn batches(&self, topic: &str) -> usize {
        let topics = self.running.as_ref().unwrap().topics();
        let log = topics.get(topic).unwrap();
        let read = log
            .partition(0)
            .unwrap()
            .log()
            .read_batches(0, u64::MAX)
            .unwrap();
        batch::BatchIter::new(&read.bytes).count()
    }
}

#[tokio::test]
async fn admin_calls() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    client
        .create_topic("a", &[("retention_ms", "1h")])
        .await
        .unwrap();
    client.create_topic("b", &[]).await.unwrap();
    assert_eq!(client.list_topics().await.unwrap(), vec!["a", "b"]);
    let d = client.describe_topic("a").await.unwrap();
    assert!(d
        .settings
        .contains(&("retention_ms".to_string(), "3600000".to_string())));
    let e = client.create_topic("a", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TopicAlreadyExists));
    assert!(e.to_string().contains("already exists"), "{e}");
    client.delete_topic("a").await.unwrap();
    assert_eq!(
        client.describe_topic("a").await.unwrap_err().code(),
        Some(ErrorCode::UnknownTopic)
    );
    let e = client
        .create_topic("x", &[("flush", "sometimes")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidConfig));
}

#[tokio::test]
async fn connect_fails_fast_when_nobody_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    match Client::connect(&addr).await {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn producer_batches_by_size() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let config = ProducerConfig {
        batch_bytes: 4096,
        linger: Duration::from_secs(60),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config);
    let mut deliveries = Vec::new();
    for i in 0..1000u32 {
        let value = format!("record-{i:05}-{}", "x".repeat(80));
        deliveries.push(producer.send("t", None, value.as_bytes()).await.unwrap());
    }
    producer.flush().await.unwrap();
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap(), i as u64, "offsets follow send order");
    }
    // ~95 KB of records in 4 KiB batches: about 24 batches, not 1000, not 1.
    let batches = broker.batches("t");
    assert!((20..=30).contains(&batches), "{batches} batches");
}

#[tokio::test]
async fn producer_sends_a_lingering_batch_on_time() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let linger = Duration::from_millis(100);
    let config = ProducerConfig {
        batch_bytes: 1 << 20,
        linger,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let started = Instant::now();
    let a = producer.send("t", Some(b"k"), b"a").await.unwrap();
    let b = producer.send("t", None, b"b").await.unwrap();
    // No flush: the linger timer sends them, in one batch.
    assert_eq!(tokio::time::timeout(PATIENCE, a).await.unwrap().unwrap(), 0);
    assert_eq!(b.await.unwrap(), 1);
    let waited = started.elapsed();
    assert!(waited >= linger, "sent before the linger time: {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(broker.batches("t"), 1);
}

#[tokio::test]
async fn producer_applies_back_pressure_without_losing_records() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let config = ProducerConfig {
        batch_bytes: 1024,
        linger: Duration::from_millis(1),
        max_in_flight_bytes: 4096,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config);
    let mut last = None;
    for i in 0..5000u32 {
        last = Some(
            producer
                .send("bp", None, format!("{i:0200}").as_bytes())
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    assert_eq!(last.unwrap().await.unwrap(), 4999);
    assert_eq!(
        client.describe_topic("bp").await.unwrap().partitions[0].log_end,
        5000
    );
}

#[tokio::test]
async fn consumer_reads_from_every_kind_of_start() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..10u32 {
        producer
            .send("c", None, format!("early-{i}").as_bytes())
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..5u32 {
        producer
            .send("c", None, format!("late-{i}").as_bytes())
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    let config = ConsumerConfig {
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut from_start = Consumer::new(client.clone(), "c", StartAt::Earliest, config.clone());
    for i in 0..15u64 {
        assert_eq!(from_start.next().await.unwrap().offset, i);
    }
    let mut at = Consumer::new(client.clone(), "c", StartAt::Offset(7), config.clone());
    assert_eq!(
        at.next().await.unwrap().value.as_deref().unwrap(),
        b"early-7"
    );
    let mut by_time = Consumer::new(client.clone(), "c", StartAt::Timestamp(cut), config.clone());
    let r = by_time.next().await.unwrap();
    assert_eq!(
        (r.offset, r.value.as_deref().unwrap()),
        (10, &b"late-0"[..])
    );

    // From the end: nothing until something new arrives, then exactly that.
    let mut tail = Consumer::new(client.clone(), "c", StartAt::Latest, config.clone());
    assert!(tail.poll().await.unwrap().is_empty());
    let waiting = tokio::spawn(async move { tail.next().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let d = producer.send("c", None, b"new").await.unwrap();
    producer.flush().await.unwrap();
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.offset, got.value.as_deref().unwrap()),
        (d.await.unwrap(), &b"new"[..])
    );
}

#[tokio::test]
async fn consumer_offset_reset_policies() {
    let broker = start(|c| {
        c.defaults.segment_bytes = Some(4096);
        c.defaults.retention_bytes = Some(spool::broker::config::Limit::At(8192));
        c.server.retention_check_interval = Duration::from_millis(50);
    })
    .await;
    let client = broker.client().await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 1,
            ..ProducerConfig::default()
        },
    );
    for i in 0..40u32 {
        producer
            .send("r", None, format!("{i:01000}").as_bytes())
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    // Wait (bounded) for retention to move the start.
    let mut start = 0;
    for _ in 0..200 {
        start = client.describe_topic("r").await.unwrap().partitions[0].log_start;
        if start > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(start > 0, "retention never ran");
    let config = |reset| ConsumerConfig {
        reset,
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };

    let mut strict = Consumer::new(
        client.clone(),
        "r",
        StartAt::Offset(0),
        config(OffsetReset::Error),
    );
    // Retention may still be deleting: the start only moves forward.
    let start = match strict.next().await {
        Err(ClientError::OutOfRange {
            partition: 0,
            offset: 0,
            log_start: s,
            log_end: 40,
            ..
        }) if s >= start => s,
        other => panic!("{other:?}"),
    };
    let mut earliest = Consumer::new(
        client.clone(),
        "r",
        StartAt::Offset(0),
        config(OffsetReset::Earliest),
    );
    let first = earliest.next().await.unwrap().offset;
    assert!(first >= start && first < 40, "{first}");
    let mut latest = Consumer::new(
        client.clone(),
        "r",
        StartAt::Offset(0),
        config(OffsetReset::Latest),
    );
    assert!(latest.poll().await.unwrap().is_empty());
    assert_eq!(latest.position().await.unwrap(), 40);
}

#[tokio::test]
async fn the_client_reconnects_after_the_broker_restarts() {
    let mut broker = start(|_| {}).await;
    let config = ClientConfig {
        backoff_initial: Duration::from_millis(20),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&broker.addr(), config).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    producer.send("rc", None, b"before").await.unwrap();
    producer.flush().await.unwrap();

    broker.running.take().unwrap().shutdown().await;
    // While the broker is down, calls fail (after retrying) rather than hang.
    let down = ClientConfig {
        reconnect_for: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let impatient = Client::connect_with(&broker.addr(), down).await;
    assert!(impatient.is_err());

    let restart = {
        let config = broker.config.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Broker::start(config).await.unwrap()
        })
    };
    // The first call after the restart reconnects with backoff and succeeds.
    assert_eq!(client.list_topics().await.unwrap(), vec!["rc"]);
    broker.running = Some(restart.await.unwrap());
    let d = producer.send("rc", None, b"after").await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(d.await.unwrap(), 1);
    let mut consumer = Consumer::new(client, "rc", StartAt::Earliest, ConsumerConfig::default());
    assert_eq!(
        consumer.next().await.unwrap().value.as_deref().unwrap(),
        b"before"
    );
    assert_eq!(
        consumer.next().await.unwrap().value.as_deref().unwrap(),
        b"after"
    );
}

/// A peer that answers the handshake on every connection and then never
/// reads again; counts connections.
async fn deaf_broker() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    handshaking_peer(false).await
}

/// A peer that answers the handshake on every connection, then either
/// holds it without reading (`hang_up` false) or reads one more frame and
/// closes the connection; counts connections.
async fn handshaking_peer(
    hang_up: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use spool::protocol::{RequestHeader, Response, ResponseBody};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let len = socket.read_u32().await.unwrap() as usize;
                let mut frame = vec![0u8; len];
                socket.read_exact(&mut frame).await.unwrap();
                let header = RequestHeader::parse(&frame).unwrap();
                let handshake = Response {
                    correlation_id: header.correlation_id,
                    body: Ok(ResponseBody::ApiVersions {
                        server: "deaf".into(),
                        apis: vec![],
                        max_frame_bytes: u32::MAX,
                    }),
                };
                socket.write_all(&handshake.encode_to_vec()).await.unwrap();
                if hang_up {
                    let _ = socket.read_u32().await;
                    return;
                }
                // Hold the socket open, reading nothing.
                std::future::pending::<()>().await;
                drop(socket);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_request_cut_off_mid_frame_is_never_followed_on_that_connection() {
    let (addr, accepted) = deaf_broker().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&addr, config).await.unwrap();
    // Far more than the socket buffers hold: the write stalls mid-frame
    // and the timeout abandons it there.
    let mut b = batch::BatchBuilder::new();
    b.push(now_ms(), None, Some(&vec![7u8; 32 << 20]), &[]);
    let big = bytes::Bytes::from(b.finish());
    let r = tokio::time::timeout(PATIENCE, client.produce("t", 0, &big)).await;
    assert!(matches!(r, Ok(Err(ClientError::Timeout(_)))), "{r:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The next request goes to a new connection, never after half a frame.
    let r = tokio::time::timeout(PATIENCE, client.list_topics()).await;
    assert!(r.is_ok(), "the second call returns");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reconnection_does_the_handshake() {
    // Something that is not a Spool broker takes over the address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            // An HTTP server's answer to anything.
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let r = Client::connect(&addr).await;
    assert!(matches!(r, Err(ClientError::Connect { .. })), "{r:?}");
}

#[tokio::test]
async fn a_consumer_is_also_a_stream() {
    use futures_core::Stream;
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..10 {
        producer
            .send("s", None, format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let consumer = Consumer::new(client, "s", StartAt::Earliest, ConsumerConfig::default());
    let mut stream = std::pin::pin!(consumer.into_stream());
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let next = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx));
        let record = tokio::time::timeout(PATIENCE, next)
            .await
            .expect("a record in time")
            .expect("the stream never ends")
            .unwrap();
        seen.push((
            record.offset,
            record.value.as_deref().unwrap_or_default().to_vec(),
        ));
    }
    let want: Vec<(u64, Vec<u8>)> = (0..10).map(|i| (i, format!("v{i}").into_bytes())).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_polling_client_gets_every_answer_and_notices_the_broker_leaving() {
    let mut broker =
        start(|c| c.server.busy_poll = BusyPoll::Fixed(Duration::from_millis(5))).await;
    let config = ClientConfig {
        busy_poll: BusyPoll::Fixed(Duration::from_millis(5)),
        reconnect_for: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&broker.addr(), config).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    // One at a time: each send waits for its acknowledgement.
    for i in 0..200u64 {
        let delivery = producer
            .send("bp", None, i.to_string().as_bytes())
            .await
            .unwrap();
        producer.flush().await.unwrap();
        assert_eq!(delivery.await.unwrap(), i);
    }
    let mut consumer = Consumer::new(
        client.clone(),
        "bp",
        StartAt::Earliest,
        ConsumerConfig::default(),
    );
    for i in 0..200u64 {
        let record = consumer.next().await.unwrap();
        assert_eq!(record.offset, i);
        assert_eq!(record.value.as_deref(), Some(i.to_string().as_bytes()));
    }
    // The broker goes away while the client's connection polls: the next
    // call fails (after its bounded reconnection attempts) instead of hanging.
    broker.running.take().unwrap().shutdown().await;
    let gone = tokio::time::timeout(PATIENCE, client.list_topics()).await;
    assert!(matches!(gone, Ok(Err(_))), "{gone:?}");
}

/// A broker stand-in that does the handshake, then holds every produce
/// unanswered until `release` is notified; after that it answers each
/// (offsets counted per record, per topic) at once. `received` counts
/// produce requests.
async fn holding_broker(
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<tokio::sync::Notify>,
) -> String {
    use spool::protocol::{Request, Response, ResponseBody};
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Every connection (the producer looks partitions up on one of its
    // own), each answered in order.
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (received, release) = (Arc::clone(&received), Arc::clone(&release));
            tokio::spawn(async move {
                let (mut rd, mut wr) = socket.into_split();
                // (correlation id, the produce's topic and record count)
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
                    u32,
                    Option<(String, u32)>,
                    spool::protocol::ApiKey,
                )>();
                // Writer: answers in order; produces wait for the release.
                tokio::spawn(async move {
                    let mut released = false;
                    let mut next_offset: HashMap<String, u64> = HashMap::new();
                    while let Some((id, produce, api)) = rx.recv().await {
                        let body = match produce {
                            // The producer asks how many partitions a topic has.
                            None if api == spool::protocol::ApiKey::DescribeTopic => {
                                ResponseBody::Description(spool::protocol::TopicDescription {
                                    partitions: vec![spool::protocol::PartitionDescription {
                                        partition: 0,
                                        log_start: 0,
                                        log_end: 0,
                                        size_bytes: 0,
                                        segments: 1,
                                        torn_files: 0,
                                        torn_bytes: 0,
                                    }],
                                    settings: vec![],
                                    sources: vec![],
                                })
                            }
                            None => ResponseBody::ApiVersions {
                                server: "holding".into(),
                                apis: vec![],
                                max_frame_bytes: u32::MAX,
                            },
                            Some((topic, n)) => {
                                if !released {
                                    release.notified().await;
                                    released = true;
                                }
                                let topic_name = topic.clone();
                                let next = next_offset.entry(topic).or_default();
                                let base_offset = *next;
                                *next += u64::from(n);
                                ResponseBody::Produced(vec![spool::protocol::TopicResults {
                                    topic: topic_name,
                                    partitions: vec![spool::protocol::PartitionResult {
                                        partition: 0,
                                        result: Ok(spool::protocol::ProducedPartition {
                                            base_offset,
                                            log_append_time: -1,
                                            log_start: 0,
                                        }),
                                    }],
                                }])
                            }
                        };
                        let response = Response {
                            correlation_id: id,
                            body: Ok(body),
                        };
                        wr.write_all(&response.encode_to_vec()).await.unwrap();
                    }
                });
                loop {
                    let Ok(len) = rd.read_u32().await else { return };
                    let mut frame = bytes::BytesMut::zeroed(len as usize);
                    rd.read_exact(&mut frame).await.unwrap();
                    let (header, request) = Request::parse(frame).unwrap();
                    let api = request.api_key();
                    let produce = match request {
                        Request::Produce { mut topics, .. } => {
                            received.fetch_add(1, Ordering::SeqCst);
                            let t = topics.remove(0);
                            let header =
                                spool::batch::BatchHeader::parse(&t.partitions[0].1).unwrap();
                            Some((t.topic, header.records_count as u32))
                        }
                        _ => None,
                    };
                    tx.send((header.correlation_id, produce, api)).unwrap();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn send_waits_while_max_in_flight_bytes_are_unanswered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let received = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let addr = holding_broker(Arc::clone(&received), Arc::clone(&release)).await;
    let client = Client::connect(&addr).await.unwrap();
    // Every send fills a batch (one ~1 KB record) and dispatches it; four
    // KiB in flight hold at most four of them.
    let producer = Producer::new(
        client,
        ProducerConfig {
            batch_bytes: 1,
            linger: Duration::from_millis(1),
            max_in_flight_bytes: 4096,
            ..ProducerConfig::default()
        },
    );
    let window = 4096 / 1000;
    let returned = Arc::new(AtomicUsize::new(0));
    let sender = {
        let returned = Arc::clone(&returned);
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..20u32 {
                let value = format!("{i:01000}");
                deliveries.push(producer.send("held", None, value.as_bytes()).await.unwrap());
                returned.fetch_add(1, Ordering::SeqCst);
            }
            producer.flush().await.unwrap();
            let mut offsets = Vec::new();
            for d in deliveries {
                offsets.push(d.await.unwrap());
            }
            offsets
        })
    };
    // Bounded wait for the window to fill: nothing is answered yet.
    for _ in 0..1000 {
        if received.load(Ordering::SeqCst) >= window - 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        received.load(Ordering::SeqCst) >= window - 1,
        "the window never filled"
    );
    // A producer without back-pressure would now race through all 20; give
    // it the time to, then check that it stopped at the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = received.load(Ordering::SeqCst);
    assert!(
        in_flight <= window,
        "{in_flight} batches in flight beyond {window}"
    );
    assert!(
        returned.load(Ordering::SeqCst) <= window,
        "send kept returning with the window full"
    );
    assert!(!sender.is_finished());
    // Answers free the window: every send completes, in order.
    release.notify_one();
    let offsets = tokio::time::timeout(PATIENCE, sender)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
    assert_eq!(received.load(Ordering::SeqCst), 20);
}

// Issue 10, item 15: the producer held one lock over every topic's open
// batch across the network waits of a send, so a send to one topic waited
// for another topic's batch to find room in the in-flight window (or for a
// reconnection, or a socket write). Ordering is per topic now: a send to
// topic b does not wait for topic a's batch.
#[tokio::test]
async fn a_send_to_one_topic_does_not_wait_for_another_topics_full_batch() {
    a_send_to_b_while_a_waits_for_the_window(ALeaves::Full).await;
}

#[tokio::test]
async fn a_send_to_one_topic_does_not_wait_for_a_flush_of_another_topic() {
    a_send_to_b_while_a_waits_for_the_window(ALeaves::Flush).await;
}

/// What sends topic a's second batch.
enum ALeaves {
    /// The send whose record fills it.
    Full,
    /// `flush()`.
    Flush,
}

/// Topic a's first batch takes the whole in-flight window and the broker
/// holds it unanswered; a's second batch then waits for room, mid-send.
/// Meanwhile a send to topic b (which only appends to b's batch) returns.
/// b's batch itself leaves only once the window has room (it is shared by
/// all topics, and so is `flush`, which waits for every topic's answers).
async fn a_send_to_b_while_a_waits_for_the_window(leaves: ALeaves) {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Poll;

    let received = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let addr = holding_broker(Arc::clone(&received), Arc::clone(&release)).await;
    let client = Client::connect(&addr).await.unwrap();
    let window = 4096;
    let producer = Producer::new(
        client,
        ProducerConfig {
            batch_bytes: window,
            // Nothing leaves by time while the test runs.
            linger: Duration::from_secs(3600),
            max_in_flight_bytes: window,
            ..ProducerConfig::default()
        },
    );
    let full = vec![b'a'; window];
    let first = producer.send("a", None, &full).await.unwrap();
    let mut second: std::pin::Pin<Box<dyn Future<Output = Delivery> + '_>> = match leaves {
        ALeaves::Full => Box::pin(async { producer.send("a", None, &full).await.unwrap() }),
        ALeaves::Flush => {
            let delivery = producer.send("a", None, b"small").await.unwrap();
            Box::pin(async {
                producer.flush().await.unwrap();
                delivery
            })
        }
    };
    // Polled once, the second batch's send gets as far as it can: to the
    // wait for room in the window, which only an answer makes. (A
    // current-thread runtime: no other task runs, or holds a lock, meanwhile.)
    let polled = std::future::poll_fn(|cx| Poll::Ready(second.as_mut().poll(cx))).await;
    assert!(polled.is_pending(), "a's second batch found room");

    let to_b = tokio::time::timeout(PATIENCE, producer.send("b", None, b"b"))
        .await
        .expect("a send to b waited for a's batch to find room in the window")
        .unwrap();

    // The answers free the window: a's second batch leaves after its first,
    // and b's with the flush.
    release.notify_one();
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("a's second batch was sent");
    tokio::time::timeout(PATIENCE, producer.flush())
        .await
        .expect("flush returns")
        .unwrap();
    assert_eq!(first.await.unwrap(), 0);
    assert_eq!(second.await.unwrap(), 1);
    assert_eq!(to_b.await.unwrap(), 0);
    assert_eq!(received.load(Ordering::SeqCst), 3);
}

// Issue 10, item 14: a consumer and a producer built from one Client shared
// its connection, so a long poll parked on it held back the producer's
// acknowledgements until the poll ended. Each consumer has its own now.
#[tokio::test]
async fn a_parked_long_poll_does_not_hold_back_a_producer_on_the_same_client() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    client.create_topic("idle", &[]).await.unwrap();
    let config = ConsumerConfig {
        max_wait: Duration::from_secs(20),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), "idle", StartAt::Latest, config.clone());
    // The poll is in flight (and parked at the end of the log) before the
    // produce is sent.
    assert_eq!(consumer.position().await.unwrap(), 0);
    let poll = consumer.poll();
    tokio::pin!(poll);
    // Polled once, the fetch is sent; it parks for its 20 s.
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut poll)
        .await
        .is_err());
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let acked = async {
        let delivery = producer.send("busy", None, b"now").await.unwrap();
        producer.flush().await.unwrap();
        delivery.await.unwrap()
    };
    // Half the poll's wait: an acknowledgement queued behind the poll on a
    // shared connection would come only when the poll ends, at 20 s.
    let offset = tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("the produce waited for a poll on another topic to end");
    assert_eq!(offset, 0);
    // Sharing on purpose still works.
    let shared = ConsumerConfig {
        share_connection: true,
        max_wait: Duration::from_millis(50),
        ..config
    };
    let mut consumer = Consumer::new(client.clone(), "busy", StartAt::Earliest, shared);
    assert_eq!(
        consumer.next().await.unwrap().value.as_deref().unwrap(),
        b"now"
    );
}

// Issue 10, item 17: the consumer took a lost connection for "no records,
// try again" at once, so a broker that hangs up on every fetch was hammered
// in a busy loop. It backs off, and reports the error after reconnect_for.
#[tokio::test]
async fn a_consumer_backs_off_from_a_broker_that_hangs_up_and_then_says_so() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = handshaking_peer(true).await;
    let config = ClientConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        reconnect_for: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&addr, config).await.unwrap();
    let mut consumer = Consumer::new(client, "t", StartAt::Offset(0), ConsumerConfig::default());
    let started = Instant::now();
    let outcome = tokio::time::timeout(PATIENCE, consumer.next()).await;
    let e = outcome
        .expect("the consumer never gave up")
        .expect_err("a broker that hangs up served a record");
    assert!(matches!(e, ClientError::Disconnected(_)), "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "gave up before reconnect_for"
    );
    // Within a second of 20 ms doubling to 200 ms: about ten tries, not
    // thousands.
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        connections <= 40,
        "{connections} connections in a busy loop"
    );
}

// Issue 10, item 16: dropping a Producer without flush() silently discarded
// its open batches. They are sent, and their deliveries resolve.
#[tokio::test]
async fn a_producer_dropped_without_flush_still_sends_its_open_batches() {
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            // Nothing leaves by size or by time while the test runs.
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..3u32 {
        let value = format!("unflushed {i}");
        deliveries.push(producer.send("d", None, value.as_bytes()).await.unwrap());
    }
    drop(producer);
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let offset = tokio::time::timeout(PATIENCE, delivery)
            .await
            .expect("delivery resolves")
            .expect("the records were sent");
        assert_eq!(offset, i as u64);
    }
    assert_eq!(broker.batches("d"), 1);
}

/// Issue 10, item 7: a request larger than the broker's frame limit (learnt
/// from the handshake) is refused before a byte is sent, saying why, and the
/// connection stays usable. Before, the broker closed the connection on it
/// and the caller saw a broken pipe.
#[tokio::test]
async fn a_batch_over_the_frame_limit_is_refused_before_it_is_sent() {
    let broker = start(|c| c.server.max_frame_bytes = 64 * 1024).await;
    let client = broker.client().await;
    assert_eq!(client.max_frame_bytes().await.unwrap(), 64 * 1024);
    client.create_topic("t", &[]).await.unwrap();
    let mut b = batch::BatchBuilder::new();
    for _ in 0..10 {
        b.push(now_ms(), None, Some(&[1u8; 10_000]), &[]);
    }
    let big = bytes::Bytes::from(b.finish());
    match client.produce("t", 0, &big).await {
        Err(e @ ClientError::TooLarge { max: 65536, .. }) => {
            assert!(e.to_string().contains("max_frame_bytes of 65536"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let mut small = batch::BatchBuilder::new();
    small.push(now_ms(), None, Some(b"fits"), &[]);
    let produced = client
        .produce("t", 0, &bytes::Bytes::from(small.finish()))
        .await
        .unwrap();
    assert_eq!(produced.base_offset, 0, "nothing of the big batch stored");
}

/// A broker that stops reading mid-produce: the producer's write gives up at
/// the request timeout (the delivery says so) instead of holding the topic,
/// and the flush behind it, forever.
#[tokio::test]
async fn a_producer_write_to_a_broker_that_stops_reading_times_out() {
    let (addr, _) = deaf_broker().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&addr, config).await.unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            batch_bytes: 1,
            ..ProducerConfig::default()
        },
    );
    // Far more than the socket buffers hold: the write stalls mid-frame.
    let delivery = tokio::time::timeout(PATIENCE, producer.send("t", None, &vec![7u8; 32 << 20]))
        .await
        .expect("the send gives up")
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, delivery).await.unwrap();
    assert!(
        matches!(outcome, Err(ClientError::Timeout(_))),
        "{outcome:?}"
    );
    let flushed = tokio::time::timeout(PATIENCE, producer.flush()).await;
    assert!(flushed.is_ok(), "the flush returns");
}

/// Review of issue 10, item 7: a batch is sent before a record would take
/// it past the broker's frame, whatever `batch_bytes` says, so records that
/// each fit are all stored.
#[tokio::test]
async fn batches_never_outgrow_the_frame() {
    let broker = start(|c| c.server.max_frame_bytes = 64 * 1024).await;
    let client = broker.client().await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 1 << 20,
            linger: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..40u8 {
        deliveries.push(producer.send("t", None, &[i; 10_000]).await.unwrap());
    }
    producer.flush().await.unwrap();
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap(), i as u64);
    }
    assert!(broker.batches("t") >= 7, "{} batches", broker.batches("t"));
}

/// Issue 11: keyed records go where Kafka's partitioner puts their key,
/// keyless ones fill one partition's batch and then the next's; a consumer
/// of the topic reads every partition, each in order.
#[tokio::test]
async fn the_producer_partitions_as_kafka_does_and_the_consumer_reads_them_all() {
    use spool_client::partitioner::partition_for_key;
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    client
        .create_topic("p", &[("partitions", "4")])
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 200,
            ..ProducerConfig::default()
        },
    );
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let key = format!("user-{}", i % 25);
        let d = producer
            .send("p", Some(key.as_bytes()), i.to_string().as_bytes())
            .await
            .unwrap();
        assert_eq!(d.partition(), partition_for_key(key.as_bytes(), 4));
        sent.push((d.partition(), i));
    }
    let mut keyless = Vec::new();
    for i in 0..100u32 {
        let d = producer.send("p", None, b"no key").await.unwrap();
        keyless.push((d.partition(), i));
    }
    producer.flush().await.unwrap();
    // Sticky: runs of one partition (a batch each), more than one in all.
    let used: std::collections::BTreeSet<u32> = keyless.iter().map(|(p, _)| *p).collect();
    assert!(used.len() > 1, "keyless records all went to {used:?}");
    let switches = keyless.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        switches < 50,
        "a partition per record, not per batch: {switches}"
    );

    let mut consumer = Consumer::new(client, "p", StartAt::Earliest, ConsumerConfig::default());
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 4];
    let mut read = 0;
    while read < 300 {
        for m in consumer.poll().await.unwrap() {
            assert_eq!(m.offset, seen[m.partition as usize].len() as u64);
            let value = m.value.as_deref().unwrap();
            let number = std::str::from_utf8(value)
                .unwrap()
                .parse()
                .unwrap_or(u32::MAX);
            seen[m.partition as usize].push(number);
            read += 1;
        }
    }
    // Every keyed record in its key's partition, in the order sent there.
    for p in 0..4u32 {
        let keyed: Vec<u32> = sent
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .collect();
        let got: Vec<u32> = seen[p as usize]
            .iter()
            .copied()
            .filter(|&n| n != u32::MAX)
            .collect();
        assert_eq!(got, keyed, "partition {p}");
    }
    let positions = consumer.positions().await.unwrap();
    assert_eq!(
        positions.iter().map(|(_, o)| o).sum::<u64>(),
        300,
        "{positions:?}"
    );
    let mut broker = broker;
    broker.running.take().unwrap().shutdown().await;
}

/// A batch of one partition that fails its checks does not make the
/// consumer skip another partition's records fetched with it: those are
/// delivered, the failure comes on the next poll, and the failing
/// partition stays where it was.
#[tokio::test]
async fn a_corrupt_partition_does_not_cost_another_partitions_records() {
    use spool::protocol::{
        FetchedPartition, PartitionResult, Request, RequestHeader, Response, ResponseBody,
        TopicResults,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let good = {
        let mut b = spool::batch::BatchBuilder::new();
        b.push(now_ms(), None, Some(b"kept"), &[]);
        bytes::Bytes::from(b.finish())
    };
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1; // under the CRC
    let bad = bytes::Bytes::from(bad);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fetches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&fetches);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (good, bad, seen) = (good.clone(), bad.clone(), std::sync::Arc::clone(&seen));
            tokio::spawn(async move {
                loop {
                    let Ok(len) = socket.read_u32().await else {
                        return;
                    };
                    let mut frame = vec![0u8; len as usize];
                    socket.read_exact(&mut frame).await.unwrap();
                    let header = RequestHeader::parse(&frame).unwrap();
                    let body = match Request::parse(bytes::BytesMut::from(&frame[..])).unwrap().1 {
                        Request::Fetch { topics, .. } => {
                            let asked: Vec<(u32, u64)> = topics[0]
                                .partitions
                                .iter()
                                .map(|p| (p.partition, p.offset))
                                .collect();
                            seen.lock().unwrap().push(asked.clone());
                            let partitions = asked
                                .iter()
                                .map(|&(partition, offset)| PartitionResult {
                                    partition,
                                    result: Ok(FetchedPartition {
                                        log_start: 0,
                                        log_end: 1,
                                        next_offset: if offset == 0 { 1 } else { offset },
                                        batches: match (partition, offset) {
                                            (0, 0) => vec![good.clone()],
                                            (1, 0) => vec![bad.clone()],
                                            _ => vec![],
                                        },
                                    }),
                                })
                                .collect();
                            ResponseBody::Fetched(vec![TopicResults {
                                topic: "t".into(),
                                partitions,
                            }])
                        }
                        _ => ResponseBody::ApiVersions {
                            server: "fake".into(),
                            apis: vec![],
                            max_frame_bytes: u32::MAX,
                        },
                    };
                    let response = Response {
                        correlation_id: header.correlation_id,
                        body: Ok(body),
                    };
                    if socket.write_all(&response.encode_to_vec()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let client = Client::connect(&addr).await.unwrap();
    let mut consumer = Consumer::assign(
        client,
        "t",
        &[0, 1],
        StartAt::Offset(0),
        ConsumerConfig {
            max_wait: Duration::ZERO,
            ..ConsumerConfig::default()
        },
    );
    let first = consumer.poll().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].partition, first[0].offset), (0, 0));
    let e = consumer.poll().await.unwrap_err();
    assert!(matches!(e, ClientError::CorruptBatch(_)), "{e}");
    let positions = consumer.positions().await.unwrap();
    assert_eq!(positions, vec![(0, 1), (1, 0)], "partition 1 did not move");
}

/// Now, in ms: the broker keeps records by their timestamps.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// Issue 13: two GroupConsumers share a topic's partitions (the broker
/// assigns them), their callbacks see each change, a member that closes
/// hands its partitions over with its commits, and a manual commit is
/// where a later member of the group resumes.
#[tokio::test]
async fn group_consumers_share_partitions_hand_them_over_and_resume_from_commits() {
    use spool_client::{GroupConfig, GroupConsumer, Rebalance};
    use std::sync::{Arc, Mutex};
    let broker = start(|_| {}).await;
    let client = broker.client().await;
    client
        .create_topic("jobs", &[("partitions", "4")])
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let send = |from: u32, to: u32| {
        let producer = producer.clone();
        async move {
            let mut sent = Vec::new();
            for i in from..to {
                let (key, value) = (format!("k{i}"), format!("{i}"));
                let delivery = producer.send("jobs", Some(key.as_bytes()), value.as_bytes());
                sent.push(delivery.await.unwrap());
            }
            producer.flush().await.unwrap();
            for s in sent {
                s.await.unwrap();
            }
        }
    };
    let config = GroupConfig {
        start: StartAt::Earliest,
        session_timeout: Duration::from_secs(6),
        auto_commit: None,
        consumer: ConsumerConfig {
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
        ..GroupConfig::default()
    };
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let mut one = GroupConsumer::new(client.clone(), "g", "jobs", config.clone())
        .on_rebalance(move |c| seen.lock().unwrap().push(("one", c.clone())));
    let mut two = GroupConsumer::new(client.clone(), "g", "jobs", config.clone());
    // Both poll until each holds two partitions (bounded).
    let deadline = Instant::now() + PATIENCE;
    while one.assignment().len() != 2 || two.assignment().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            one.assignment(),
            two.assignment()
        );
        one.poll().await.unwrap();
        two.poll().await.unwrap();
    }
    let mut all: Vec<u32> = [one.assignment(), two.assignment()].concat();
    all.sort();
    assert_eq!(all, [0, 1, 2, 3]);
    send(0, 40).await;
    let (mut got_one, mut got_two) = (Vec::new(), Vec::new());
    while got_one.len() + got_two.len() < 40 {
        assert!(
            Instant::now() < deadline,
            "{} + {}",
            got_one.len(),
            got_two.len()
        );
        got_one.extend(one.poll().await.unwrap());
        got_two.extend(two.poll().await.unwrap());
    }
    assert!(got_one
        .iter()
        .all(|m| one.assignment().contains(&m.partition)));
    assert!(got_two
        .iter()
        .all(|m| two.assignment().contains(&m.partition)));
    // The first commits by hand, the second leaves without committing.
    one.commit().await.unwrap();
    let two_had = two.assignment().to_vec();
    two.close().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while one.assignment().len() != 4 {
        assert!(Instant::now() < deadline, "{:?}", one.assignment());
        // What it re-reads of the partitions it takes over was never
        // committed: they start from the beginning.
        got_one.extend(one.poll().await.unwrap());
    }
    {
        let changes = changes.lock().unwrap();
        assert!(
            matches!(&changes[0], ("one", Rebalance::Assigned(_))),
            "{changes:?}"
        );
        let last = changes.last().unwrap().1.clone();
        let mut taken = match last {
            Rebalance::Assigned(ps) => ps,
            other => panic!("{other:?}"),
        };
        taken.sort();
        assert_eq!(taken, two_had);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut values: Vec<String> = Vec::new();
    while values.len() < 40 {
        assert!(Instant::now() < deadline);
        got_one.extend(one.poll().await.unwrap());
        values = got_one
            .iter()
            .map(|m| String::from_utf8(m.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        values.sort();
        values.dedup();
    }
    one.commit().await.unwrap();
    let committed = client.committed_offsets("g", None).await.unwrap();
    assert_eq!(committed.len(), 4, "{committed:?}");
    for (_, p, c) in &committed {
        let end = client
            .list_offsets("jobs", *p, spool_client::OffsetSpec::Latest)
            .await
            .unwrap()
            .offset;
        assert_eq!(c.offset, end, "partition {p}");
    }
    one.close().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    // A new member resumes after the commits: only what comes next.
    send(40, 44).await;
    let mut three = GroupConsumer::new(client.clone(), "g", "jobs", config);
    let mut later = Vec::new();
    while later.len() < 4 {
        assert!(Instant::now() < deadline, "{later:?}");
        later.extend(three.poll().await.unwrap());
    }
    let mut values: Vec<String> = later
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    values.sort();
    assert_eq!(values, ["40", "41", "42", "43"]);
    three.close().await.unwrap();
}
