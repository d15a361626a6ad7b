//! `server.busy_poll`: a connection that polls its socket between requests
//! must behave exactly like one that sleeps. It answers every request, in
//! order, whether requests come one at a time, pipelined or a byte at a time,
//! and it still closes when idle, when the client leaves or at shutdown.
//! What the polling buys (latency) is measured by `spool bench`, not here.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::broker::*;
use spool::net::BusyPoll;
use spool::protocol::Request;

/// The longest window the broker allows: the most time a poll can hold
/// back anything that only happens after it.
const WINDOW_LEN: Duration = Duration::from_millis(10);
const WINDOW: BusyPoll = BusyPoll::Fixed(WINDOW_LEN);

#[tokio::test]
async fn a_polling_connection_answers_one_at_a_time_and_pipelined() {
    // Fixed, and adaptive (the default) with the longest limit, whose
    // polls start, stop after empty ones, and start again.
    for mode in [WINDOW, BusyPoll::Adaptive(WINDOW_LEN)] {
        one_at_a_time_and_pipelined(mode).await;
    }
}

async fn one_at_a_time_and_pipelined(mode: BusyPoll) {
    let broker = start(|c| c.server.busy_poll = mode).await;
    let mut a = broker.connect().await;
    let mut b = broker.connect().await;
    // Two clients taking turns, one request at a time each: each polling
    // connection leaves room for the other.
    for i in 0..100u64 {
        let value = format!("a{i}");
        assert_eq!(a.produce("t", &[value.as_bytes()]).await, 2 * i);
        let value = format!("b{i}");
        assert_eq!(b.produce("t", &[value.as_bytes()]).await, 2 * i + 1);
    }
    // A pause (empty polls, then sleep), and a burst again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 100..110u64 {
        let value = format!("a{i}");
        assert_eq!(a.produce("q", &[value.as_bytes()]).await, i - 100);
    }
    let records = a.fetch("t", 0).await;
    assert_eq!(records.len(), 200);
    assert_eq!(records[199].value.as_deref().unwrap(), &b"b99"[..]);
    // Pipelined: 100 requests out before any answer is read.
    for i in 0..100u64 {
        b.send(&produce_request("p", &[i.to_string().as_bytes()]))
            .await;
    }
    for i in 0..100u64 {
        match b.recv().await.produced() {
            Ok(p) => assert_eq!(p.base_offset, i),
            other => panic!("{other:?}"),
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_request_trickling_in_during_a_poll_is_read_whole() {
    let broker = start(|c| c.server.busy_poll = WINDOW).await;
    let mut c = broker.connect().await;
    c.ok(Request::ListTopics).await;
    // The first byte ends the poll; the rest arrives over several windows.
    let mut request = BytesMut::new();
    produce_request("slow", &[b"trickled"]).encode(1, &mut request);
    for chunk in request.chunks(7) {
        c.send_raw(chunk).await;
        tokio::time::sleep(WINDOW_LEN / 2).await;
    }
    let frame = c.read_frame().await.expect("an answer to the whole frame");
    assert!(frame.len() >= 8);
    let mut fresh = broker.connect().await;
    assert_eq!(
        fresh.fetch("slow", 0).await[0].value.as_deref().unwrap(),
        &b"trickled"[..]
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_polling_connection_still_closes_when_idle() {
    let broker = start(|c| {
        c.server.busy_poll = WINDOW;
        c.server.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = broker.connect().await;
    c.ok(Request::ListTopics).await;
    assert!(
        c.closed_within(Duration::from_secs(10)).await,
        "an idle polling connection must still time out"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_during_a_poll_frees_its_slot() {
    let broker = start(|c| {
        c.server.busy_poll = WINDOW;
        c.server.max_connections = 1;
    })
    .await;
    for round in 0..5 {
        // The slot is released once the broker sees the end of the stream,
        // which a poll must not hide: retry (bounded) until it is.
        let mut served = false;
        for _ in 0..100 {
            let mut c = broker.connect().await;
            c.send(&Request::ListTopics).await;
            if c.read_frame().await.is_some() {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            served,
            "round {round}: the previous client's slot was not freed"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_polling_connections() {
    let broker = start(|c| c.server.busy_poll = WINDOW).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = broker.connect().await;
        c.ok(Request::ListTopics).await;
        held.push(c);
    }
    broker.stop().await;
    for mut c in held {
        assert!(c.closed_within(Duration::from_secs(10)).await);
    }
}
