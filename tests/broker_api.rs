//! Every API of the broker, over TCP, against an in-process broker.

mod common;

use std::time::Duration;

use common::broker::*;
use spool::protocol::{ErrorCode, OffsetSpec, Request, ResponseBody};

#[tokio::test]
async fn produce_then_fetch_round_trip() {
    let broker = start(|_| {}).await;
    let mut c = broker.connect().await;
    assert_eq!(c.produce("t", &[b"a", b"b"]).await, 0);
    assert_eq!(c.produce("t", &[b"c"]).await, 2);
    let records = c.fetch("t", 0).await;
    let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
    assert_eq!(values, vec![&b"a"[..], b"b", b"c"]);
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    broker.stop().await;
}
