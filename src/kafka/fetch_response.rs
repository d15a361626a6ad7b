//! Fetch's answer, written by hand: the one hot path where the
//! `kafka-protocol` crate would copy, since it encodes a response into one
//! buffer, stored batches and all. Here the fields are encoded into small
//! buffers and the batches, views of the segments' maps, sit between them
//! as they are; the connection writes the pieces in order.
//!
//! Fetch v4-v11 (non-flexible), after the response header v0:
//!
//! ```text
//! i32 size                     of all that follows
//! i32 correlation_id
//! i32 throttle_time_ms         0
//! i16 error_code               v7+: the whole request's
//! i32 session_id               v7+: 0 (no fetch sessions)
//! i32 topic count, per topic:
//!   i16 name length, name
//!   i32 partition count, per partition:
//!     i32 partition_index
//!     i16 error_code
//!     i64 high_watermark       the log's end (-1 on error without a range)
//!     i64 last_stable_offset   the same (no transactions)
//!     i64 log_start_offset     v5+
//!     i32 aborted_transactions 0: an empty array
//!     i32 preferred_read_replica  v11+: -1
//!     i32 records length, then the batches back to back
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::kafka_code;
use crate::protocol::{Response, ResponseBody};

/// Appends a Kafka string (i16 length). Topic names are at most 249 bytes
/// (Spool checks them), well inside an i16.
fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.extend_from_slice(s.as_bytes());
}

/// The whole frame of Fetch's answer at `version` to `correlation_id`, as
/// pieces to write in order: encoded fields, and the batches between them.
pub fn encode(response: Response, version: i16, correlation_id: i32) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(0); // the size, filled in at the end
    head.put_i32(correlation_id);
    head.put_i32(0);
    let (error, topics) = match response.body {
        Ok(ResponseBody::Fetched(topics)) => (0, topics),
        Ok(_) => (0, Vec::new()),
        Err(e) => (kafka_code(e.code), Vec::new()),
    };
    if version >= 7 {
        head.put_i16(error);
        head.put_i32(0);
    }
    head.put_i32(topics.len() as i32);
    for t in topics {
        put_string(&mut head, &t.topic);
        head.put_i32(t.partitions.len() as i32);
        for p in t.partitions {
            head.put_i32(p.partition as i32);
            let (code, high, start, batches) = match p.result {
                Ok(f) => (0, f.log_end as i64, f.log_start as i64, f.batches),
                Err(e) => {
                    let (start, end) = e.range.map_or((-1, -1), |(s, e)| (s as i64, e as i64));
                    (kafka_code(e.code), end, start, Vec::new())
                }
            };
            head.put_i16(code);
            head.put_i64(high);
            head.put_i64(high);
            if version >= 5 {
                head.put_i64(start);
            }
            head.put_i32(0);
            if version >= 11 {
                head.put_i32(-1);
            }
            let records: usize = batches.iter().map(Bytes::len).sum();
            head.put_i32(records as i32);
            if !batches.is_empty() {
                pieces.push(head.split().freeze());
                pieces.extend(batches.into_iter().filter(|b| !b.is_empty()));
            }
        }
    }
    pieces.push(head.freeze());
    let size = pieces.iter().map(Bytes::len).sum::<usize>() - 4;
    let mut first = BytesMut::from(&pieces[0][..]);
    first[..4].copy_from_slice(&(size as i32).to_be_bytes());
    pieces[0] = first.freeze();
    pieces
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{BrokerId, FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::super::kafka_code;
    use crate::protocol::{
        ErrorBody, ErrorCode, FetchedPartition, PartitionResult, Response, ResponseBody,
        TopicResults,
    };

    /// Fetch's answer by the crate: the reference the encoder above is
    /// checked against, byte for byte.
    fn fetched(response: Response, version: i16) -> FetchResponse {
        let mut body = FetchResponse::default();
        let topics = match response.body {
            Ok(ResponseBody::Fetched(topics)) => topics,
            Ok(_) => Vec::new(),
            Err(e) => {
                body.error_code = kafka_code(e.code);
                Vec::new()
            }
        };
        body.responses = topics
            .into_iter()
            .map(|t| {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = TopicName(StrBytes::from_string(t.topic));
                tr.partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let mut pd = PartitionData::default();
                        pd.partition_index = p.partition as i32;
                        pd.preferred_read_replica = BrokerId(-1);
                        match p.result {
                            Ok(f) => {
                                pd.high_watermark = f.log_end as i64;
                                pd.last_stable_offset = f.log_end as i64;
                                if version >= 5 {
                                    pd.log_start_offset = f.log_start as i64;
                                }
                                let records: Bytes = match f.batches.len() {
                                    0 => Bytes::new(),
                                    1 => f.batches[0].clone(),
                                    _ => Bytes::from(f.batches.concat()),
                                };
                                pd.records = Some(records);
                            }
                            Err(e) => {
                                pd.error_code = kafka_code(e.code);
                                pd.high_watermark = -1;
                                pd.last_stable_offset = -1;
                                if let Some((start, end)) = e.range {
                                    pd.high_watermark = end as i64;
                                    pd.last_stable_offset = end as i64;
                                    if version >= 5 {
                                        pd.log_start_offset = start as i64;
                                    }
                                }
                                pd.records = Some(Bytes::new());
                            }
                        }
                        pd
                    })
                    .collect();
                tr
            })
            .collect();
        body
    }

    fn responses() -> Vec<Response> {
        let batch = |n: u8, len: usize| Bytes::from(vec![n; len]);
        let ok = |partition, batches: Vec<Bytes>| PartitionResult {
            partition,
            result: Ok(FetchedPartition {
                log_start: 3,
                log_end: 90,
                next_offset: 40,
                batches,
            }),
        };
        let failed = |partition, code, range| PartitionResult::<FetchedPartition> {
            partition,
            result: Err(ErrorBody {
                code,
                message: "no".into(),
                range,
                resume_at: None,
            }),
        };
        vec![
            Response {
                correlation_id: 1,
                body: Ok(ResponseBody::Fetched(vec![
                    TopicResults {
                        topic: "orders".into(),
                        partitions: vec![
                            ok(0, vec![batch(1, 70), batch(2, 5), batch(3, 300)]),
                            ok(1, vec![]),
                            failed(2, ErrorCode::OffsetOutOfRange, Some((5, 9))),
                            failed(3, ErrorCode::UnknownTopic, None),
                            ok(4, vec![batch(4, 61)]),
                        ],
                    },
                    TopicResults {
                        topic: "t".into(),
                        partitions: vec![ok(7, vec![batch(9, 1)])],
                    },
                ])),
            },
            Response {
                correlation_id: 2,
                body: Ok(ResponseBody::Fetched(Vec::new())),
            },
            Response {
                correlation_id: 3,
                body: Err(ErrorBody {
                    code: ErrorCode::InvalidRequest,
                    message: "bad".into(),
                    range: None,
                    resume_at: None,
                }),
            },
        ]
    }

    // Every advertised version, byte for byte what the crate would write.
    #[test]
    fn the_pieces_are_the_crates_encoding() {
        for version in 4..=11 {
            for response in responses() {
                let mut expect = BytesMut::new();
                expect.extend_from_slice(&[0; 4]);
                let mut header = ResponseHeader::default();
                header.correlation_id = 42;
                header.encode(&mut expect, 0).unwrap();
                fetched(response.clone(), version)
                    .encode(&mut expect, version)
                    .unwrap();
                let size = (expect.len() - 4) as i32;
                expect[..4].copy_from_slice(&size.to_be_bytes());
                let pieces = super::encode(response, version, 42);
                assert_eq!(pieces.concat(), expect.to_vec(), "v{version}");
            }
        }
    }
}
