//! Hostile input and the broker's limits. After each attack, a well-behaved
//! client must still be served.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::broker::*;
use spool::protocol::{ErrorCode, Request, ResponseBody, REQUEST_HEADER_LEN};

/// A producer and a consumer on fresh connections still work.
async fn still_serves(broker: &TestBroker) {
    let mut c = broker.connect().await;
    let offset = c.produce("health", &[b"ok"]).await;
    let records = c.fetch("health", offset).await;
    assert_eq!(records[0].value.as_deref().unwrap(), &b"ok"[..]);
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn an_oversized_frame_is_refused_with_an_answer_then_closed() {
    let broker = start(|c| c.server.max_frame_bytes = 64 * 1024).await;
    let mut c = broker.connect().await;
    let mut head = BytesMut::new();
    head.put_u32(64 * 1024 + 1);
    head.put_u16(5);
    head.put_u16(1);
    head.put_u32(42);
    c.send_raw(&head).await;
    let frame = c.read_frame().await.expect("an answer before the close");
    let response =
        spool::protocol::Response::parse(spool::protocol::ApiKey::Produce, frame).unwrap();
    assert_eq!(response.correlation_id, 42);
    assert_eq!(response.body.unwrap_err().code, ErrorCode::RecordTooLarge);
    assert!(c.closed_within(Duration::from_secs(2)).await);
    still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn garbage_greetings_are_closed_promptly() {
    let broker = start(|_| {}).await;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut random = Vec::new();
    for _ in 0..64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        random.push(seed as u8);
    }
    let greetings: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff],                  // a 4 GiB length prefix
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // HTTP
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01], // TLS ClientHello
        frame(&[1, 2, 3]),                             // too short for a header
        random,
    ];
    for greeting in greetings {
        let mut c = broker.connect().await;
        c.send_raw(&greeting).await;
        let started = Instant::now();
        // Answered or closed within a second (the random bytes may also just
        // be waiting for more of a frame; the frame deadline closes those).
        let closed = c.closed_within(Duration::from_secs(1)).await;
        assert!(closed || greeting.len() == 64, "{greeting:?} left open");
        assert!(started.elapsed() < Duration::from_secs(2));
        still_serves(&broker).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_truncated_frame_then_close_is_harmless() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 5, 0, 1, 0, 0, 0, 1, 0]);
    c.send_raw(&bytes).await;
    drop(c);
    still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn bad_requests_get_error_responses_and_the_connection_lives_on() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        // Unknown API 99.
        (vec![0, 99, 0, 0, 0, 0, 0, 7], ErrorCode::UnsupportedApi),
        // PRODUCE at version 3.
        (vec![0, 5, 0, 3, 0, 0, 0, 7], ErrorCode::UnsupportedVersion),
        // CREATE_TOPIC claiming 2^32 - 1 settings.
        (
            [
                &[0, 1, 0, 0, 0, 0, 0, 7, 0, 1, b't'][..],
                &[0xff; 4],
                &[0; 16],
            ]
            .concat(),
            ErrorCode::InvalidRequest,
        ),
        // PRODUCE at version 0, which named no partitions and is gone.
        (
            vec![0, 5, 0, 0, 0, 0, 0, 7, 1],
            ErrorCode::UnsupportedVersion,
        ),
        // PRODUCE (acks 1, one topic "t", one partition 0) whose batch
        // claims 2 GiB inside a tiny frame.
        (
            [
                &[0, 5, 0, 1, 0, 0, 0, 7, 1, 0, 0, 0, 1, 0, 1, b't'][..],
                &[0, 0, 0, 1, 0, 0, 0, 0],
                &[0x7f, 0xff, 0xff, 0xff],
                &[0; 8],
            ]
            .concat(),
            ErrorCode::InvalidRequest,
        ),
        // A topic name that claims 65,535 bytes.
        (
            vec![0, 4, 0, 1, 0, 0, 0, 7, 0xff, 0xff, b'x'],
            ErrorCode::InvalidRequest,
        ),
        // Trailing garbage after LIST_TOPICS.
        (
            vec![0, 3, 0, 0, 0, 0, 0, 7, 1, 2, 3],
            ErrorCode::InvalidRequest,
        ),
        // A topic name that is not UTF-8.
        (
            vec![0, 4, 0, 1, 0, 0, 0, 7, 0, 2, 0xc3, 0x28],
            ErrorCode::InvalidRequest,
        ),
    ];
    for (payload, code) in cases {
        assert!(payload.len() >= REQUEST_HEADER_LEN);
        c.send_raw(&frame(&payload)).await;
        let response = c.read_frame().await.expect("an answer, not a close");
        // Parse as a CREATE_TOPIC response: errors have the same shape for every API.
        let response =
            spool::protocol::Response::parse(spool::protocol::ApiKey::CreateTopic, response)
                .unwrap();
        assert_eq!(response.correlation_id, 7);
        let e = response.body.unwrap_err();
        assert_eq!(e.code, code, "{payload:?}: {}", e.message);
        assert!(!e.message.is_empty());
    }
    // Same connection, still fine.
    assert!(matches!(
        c.ok(Request::ListTopics).await,
        ResponseBody::Topics(_)
    ));
    still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused() {
    let broker = start(|c| c.server.max_connections = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = broker.connect().await;
        c.ok(Request::ListTopics).await; // accepted and served
        held.push(c);
    }
    let mut extra = broker.connect().await;
    assert!(
        extra.closed_within(Duration::from_secs(2)).await,
        "the fifth connection must be closed"
    );
    // Freeing a slot lets a new client in.
    held.pop();
    let mut ok = None;
    for _ in 0..50 {
        let mut c = broker.connect().await;
        c.send(&Request::ListTopics).await;
        if let Some(frame) = c.read_frame().await {
            ok = Some(frame);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok.is_some(),
        "a slot freed by a closed connection is reused"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_stalled_frame_is_closed_at_the_frame_deadline() {
    let broker = start(|c| c.server.frame_timeout = Duration::from_millis(300)).await;
    let mut c = broker.connect().await;
    let mut bytes = 1000u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 3, 0, 0, 0, 0, 0, 1]);
    c.send_raw(&bytes).await;
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed before the deadline: {elapsed:?}"
    );
    // A slow but steady sender within the deadline is fine.
    let mut slow = broker.connect().await;
    let mut request = BytesMut::new();
    Request::ListTopics.encode(1, &mut request);
    for byte in request.iter() {
        slow.send_raw(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(slow.read_frame().await.is_some());
    still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let broker = start(|c| c.server.idle_timeout = Duration::from_millis(300)).await;
    let mut idle = broker.connect().await;
    let mut busy = broker.connect().await;
    let started = Instant::now();
    // The busy one sends a request every 100 ms and outlives the idle one.
    let mut closed_at = None;
    while started.elapsed() < Duration::from_secs(2) {
        busy.ok(Request::ListTopics).await;
        if closed_at.is_none() && idle.closed_within(Duration::from_millis(100)).await {
            closed_at = Some(started.elapsed());
        }
    }
    let closed_at = closed_at.expect("idle connection closed");
    assert!(closed_at >= Duration::from_millis(250), "{closed_at:?}");
    busy.ok(Request::ListTopics).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_at_the_write_deadline() {
    let broker = start(|c| {
        c.server.write_timeout = Duration::from_millis(500);
        c.server.max_queued_bytes = 1 << 20;
        c.server.max_frame_bytes = 1 << 20;
    })
    .await;
    let mut producer = broker.connect().await;
    let value = vec![3u8; 500 * 1024];
    for _ in 0..4 {
        producer.produce("big", &[&value]).await;
    }
    // Ask for megabytes again and again, and never read a byte.
    let greedy = broker.connect().await;
    let std_stream = greedy.stream.into_std().unwrap();
    std_stream.set_nonblocking(false).unwrap();
    let mut request = BytesMut::new();
    for i in 0..200 {
        Request::fetch("big", 0, 0, 1 << 20, 0, 1).encode(i, &mut request);
    }
    let started = Instant::now();
    // Send the requests, read nothing for well past the write deadline, then
    // read what arrived: the broker must have cut the connection (EOF or
    // reset), long before sending everything asked for.
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std_stream;
        let _ = s.write_all(&request);
        std::thread::sleep(Duration::from_secs(3));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match s.read(&mut sink) {
                Ok(0) => return Ok(total),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("still open after {total} bytes"))
                }
                Err(_) => return Ok(total),
                Ok(n) => total += n,
            }
        }
    });
    // Meanwhile others are served.
    still_serves(&broker).await;
    let total = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap()
        .expect("cut off");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        total < 200 * (1 << 20),
        "received everything ({total} bytes): nothing was cut"
    );
    still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_inflight_budget_holds_requests_until_room_is_freed() {
    let frame_timeout = Duration::from_millis(800);
    let broker = start(|c| {
        c.server.max_frame_bytes = 64 * 1024;
        c.server.max_inflight_bytes = 64 * 1024;
        c.server.max_queued_bytes = 64 * 1024;
        c.server.frame_timeout = frame_timeout;
    })
    .await;
    // One connection claims the whole budget with a frame it never finishes.
    let mut hog = broker.connect().await;
    let mut head = (64 * 1024u32).to_be_bytes().to_vec();
    head.extend_from_slice(&[0, 3, 0, 0, 0, 0, 0, 1]);
    hog.send_raw(&head).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another client's request waits for budget, and is served once the
    // frame deadline frees it.
    let started = Instant::now();
    let mut c = broker.connect().await;
    c.ok(Request::ListTopics).await;
    let waited = started.elapsed();
    assert!(
        waited >= frame_timeout / 2,
        "served without waiting for budget: {waited:?}"
    );
    assert!(hog.closed_within(Duration::from_secs(2)).await);
    broker.stop().await;
}

#[tokio::test]
async fn a_long_poll_is_not_idleness() {
    let broker = start(|c| c.server.idle_timeout = Duration::from_millis(200)).await;
    let mut c = broker.connect().await;
    c.produce("t", &[b"x"]).await;
    // A fetch that waits longer than the idle timeout still gets its answer.
    let started = Instant::now();
    let fetched = c.fetched(fetch_request("t", 1, 800)).await.unwrap();
    assert!(fetched.batches.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(800));
    // Then, truly idle, the connection is closed.
    assert!(c.closed_within(Duration::from_secs(5)).await);
    broker.stop().await;
}

#[tokio::test]
async fn topics_beyond_max_topics_are_refused_and_nothing_is_created() {
    let broker = start(|c| c.server.max_topics = 2).await;
    let mut c = broker.connect().await;
    for name in ["one", "two"] {
        c.ok(Request::CreateTopic {
            topic: name.into(),
            settings: vec![],
        })
        .await;
    }
    let e = c
        .err(
            Request::CreateTopic {
                topic: "three".into(),
                settings: vec![],
            },
            ErrorCode::TooManyTopics,
        )
        .await;
    assert!(e.message.contains("max_topics"), "{}", e.message);
    // Auto-creation by produce meets the same limit.
    c.err(produce_request("four", &[b"x"]), ErrorCode::TooManyTopics)
        .await;
    for refused in ["three", "four"] {
        assert!(!broker.dir.path().join("topics").join(refused).exists());
    }
    // The existing topics keep working, and a deletion makes room.
    let offset = c.produce("one", &[b"still here"]).await;
    assert_eq!(
        c.fetch("one", offset).await[0].value.as_deref().unwrap(),
        &b"still here"[..]
    );
    c.ok(Request::DeleteTopic {
        topic: "two".into(),
    })
    .await;
    c.produce("four", &[b"now there is room"]).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_broker_started_from_code_checks_its_config_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = spool::broker::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().to_owned();
    config.server.retention_check_interval = Duration::ZERO;
    let e = match spool::broker::Broker::start(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a zero retention_check_interval was accepted"),
    };
    assert!(e.contains("retention_check_interval"), "{e}");
    assert!(
        !dir.path().join("topics").exists(),
        "nothing is touched on disk"
    );
}
