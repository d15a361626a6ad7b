//! `spool bench --kafka`: producers that send the bench's batches through
//! the broker's Kafka listener, Kafka's Produce v9 with acks all, encoded
//! and decoded by the `kafka-protocol` crate. Each batch is the one the
//! native producers send (RecordBatch v2 is both protocols' format), and
//! `--in-flight` requests are pipelined on the connection as natively, so
//! the difference between the two runs is the broker's front end.
//!
//! Frames on the wire: `i32 size`, then request header v2 (`api_key i16`,
//! `api_version i16`, `correlation_id i32`, `client_id` as an i16-length
//! string, an empty tagged-field count) and the body; responses come back
//! in request order, `i32 size`, header v1 (`correlation_id i32`, tagged
//! fields), body.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::bench::{histogram, stamp_send_time, template, Plan, Side};

const VERSION: i16 = 9;

pub async fn connect(addr: &str) -> Result<TcpStream, String> {
    let socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to the Kafka listener at {addr}: {e}"))?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(socket)
}

/// One Produce v9 request frame of `records` for `topic`'s `partition`.
fn request(topic: &TopicName, partition: i32, records: Bytes, correlation: i32) -> BytesMut {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = VERSION;
    header.correlation_id = correlation;
    header.client_id = Some(StrBytes::from_static_str("spool-bench"));
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = topic.clone();
    t.partition_data = vec![p];
    let mut body = ProduceRequest::default();
    body.acks = -1;
    body.timeout_ms = 30_000;
    body.topic_data = vec![t];
    let mut frame = BytesMut::with_capacity(body.compute_size(VERSION).unwrap_or(0) + 64);
    frame.put_i32(0);
    // Encoding fails only on a field the version lacks: none is set.
    header
        .encode(&mut frame, ApiKey::Produce.request_header_version(VERSION))
        .expect("a Produce v9 header");
    body.encode(&mut frame, VERSION).expect("a Produce v9 body");
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame
}

/// Reads one response and checks it answers `correlation` without error.
async fn answer(socket: &mut TcpStream, correlation: i32) -> Result<(), String> {
    let size = socket
        .read_i32()
        .await
        .map_err(|e| format!("reading an answer: {e}"))?;
    if !(4..=16 << 20).contains(&size) {
        return Err(format!("an answer of {size} bytes"));
    }
    let mut buf = vec![0; size as usize];
    socket
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("reading an answer: {e}"))?;
    let mut buf = Bytes::from(buf);
    let header = ResponseHeader::decode(&mut buf, ApiKey::Produce.response_header_version(VERSION))
        .map_err(|e| format!("an answer's header: {e}"))?;
    if header.correlation_id != correlation {
        return Err(format!(
            "answer {} where {correlation} was due",
            header.correlation_id
        ));
    }
    let body = ProduceResponse::decode(&mut buf, VERSION).map_err(|e| format!("an answer: {e}"))?;
    for t in &body.responses {
        for p in &t.partition_responses {
            if p.error_code != 0 {
                let message = p.error_message.as_deref().unwrap_or("");
                return Err(format!(
                    "produce failed: Kafka error {} {message}",
                    p.error_code
                ));
            }
        }
    }
    if buf.has_remaining() {
        return Err("bytes after an answer".into());
    }
    Ok(())
}

/// The Kafka counterpart of the bench's native producer: the same plan,
/// batches and counters.
pub async fn produce(
    mut socket: TcpStream,
    plan: Plan,
    side: Arc<Side>,
    epoch: Instant,
) -> Result<Histogram<u64>, String> {
    let (mut batch, starts) = template(plan.batch_size, plan.message_size);
    let stamp = plan.message_size >= 8;
    let topic = TopicName(StrBytes::from_string(plan.topic.clone()));
    let per_batch = plan.batch_size as u64;
    let mut latency = histogram();
    let mut waiting: VecDeque<(i32, Instant)> = VecDeque::new();
    let mut sent = 0u64;
    let mut correlation = 0i32;
    let record = |latency: &mut Histogram<u64>, since: Instant| {
        latency.saturating_record(since.elapsed().as_micros().max(1) as u64);
        side.add(per_batch, per_batch * plan.message_size as u64);
    };
    while sent < plan.quota && plan.deadline.is_none_or(|d| Instant::now() < d) {
        let now = Instant::now();
        if stamp {
            stamp_send_time(&mut batch, &starts, now - epoch);
        }
        let partition =
            (plan.first_partition as u64 + sent / per_batch) % u64::from(plan.partitions);
        correlation = correlation.wrapping_add(1);
        let records = Bytes::from(batch);
        let frame = request(&topic, partition as i32, records.clone(), correlation);
        batch = records
            .try_into_mut()
            .map(Vec::from)
            .unwrap_or_else(|b| b.to_vec());
        socket
            .write_all(&frame)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        waiting.push_back((correlation, now));
        sent += per_batch;
        while waiting.len() >= plan.in_flight {
            let (c, since) = waiting.pop_front().expect("non-empty");
            answer(&mut socket, c).await?;
            record(&mut latency, since);
        }
    }
    while let Some((c, since)) = waiting.pop_front() {
        answer(&mut socket, c).await?;
        record(&mut latency, since);
    }
    Ok(latency)
}
