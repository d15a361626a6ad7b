//! The Kafka listener at the wire, with the `kafka-protocol` crate as the
//! client: what real clients only do on a bad day (a retried batch after a
//! lost answer, a gap in sequences, a stale epoch, a broker killed between
//! two sends), driven exactly, against the real `spool-broker` binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::process::spawn;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use spool::storage::BatchBuilder;

/// A blocking Kafka connection.
struct Kafka {
    socket: TcpStream,
    correlation: i32,
}

impl Kafka {
    fn connect(addr: SocketAddr) -> Kafka {
        let socket = TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Kafka {
            socket,
            correlation: 0,
        }
    }

    fn call<Q: Encodable, R: Decodable>(&mut self, api: ApiKey, version: i16, request: &Q) -> R {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("kafka_wire"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.socket.write_all(&frame).unwrap();
        let mut size = [0; 4];
        self.socket.read_exact(&mut size).unwrap();
        let mut answer = vec![0; i32::from_be_bytes(size) as usize];
        self.socket.read_exact(&mut answer).unwrap();
        let mut answer = Bytes::from(answer);
        let header =
            ResponseHeader::decode(&mut answer, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation);
        let response = R::decode(&mut answer, version).unwrap();
        assert!(!answer.has_remaining(), "bytes after the response");
        response
    }

    fn init_producer_id(&mut self, transactional: Option<&str>) -> InitProducerIdResponse {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id =
            transactional.map(|t| TransactionalId(StrBytes::from_string(t.to_owned())));
        request.transaction_timeout_ms = 60_000;
        self.call(ApiKey::InitProducerId, 4, &request)
    }

    /// Produces `batch` to partition 0 of `topic` with acks=all; returns
    /// (error code, base offset).
    fn produce(&mut self, topic: &str, batch: &[u8]) -> (i16, i64) {
        let mut partition = PartitionProduceData::default();
        partition.index = 0;
        partition.records = Some(Bytes::copy_from_slice(batch));
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partition_data = vec![partition];
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.timeout_ms = 10_000;
        request.topic_data = vec![t];
        let response: ProduceResponse = self.call(ApiKey::Produce, 9, &request);
        let p = &response.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }
}

fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.set_producer(pid, epoch, seq);
    for i in 0..count {
        b.push(
            common::now_ms(),
            Some(b"k"),
            Some(format!("seq {}", seq + i).as_bytes()),
            &[],
        );
    }
    b.finish()
}

#[test]
fn idempotent_produce_deduplicates_retries_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let mut k = Kafka::connect(broker.kafka.unwrap());
    let init = k.init_producer_id(None);
    assert_eq!(init.error_code, 0);
    assert_eq!(init.producer_epoch, 0);
    let pid = init.producer_id.0;
    assert!(pid >= 0);
    // Each new producer gets its own id.
    assert_ne!(k.init_producer_id(None).producer_id.0, pid);
    // Transactions are not supported: refused, not half done.
    assert_eq!(k.init_producer_id(Some("tx-1")).error_code, 42);

    assert_eq!(k.produce("idem", &batch(pid, 0, 0, 3)), (0, 0));
    assert_eq!(k.produce("idem", &batch(pid, 0, 3, 2)), (0, 3));
    // The answer was lost, the client sends it again: the first offsets.
    assert_eq!(k.produce("idem", &batch(pid, 0, 0, 3)), (0, 0));
    assert_eq!(k.produce("idem", &batch(pid, 0, 3, 2)), (0, 3));
    // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER, nothing stored.
    assert_eq!(k.produce("idem", &batch(pid, 0, 9, 1)).0, 45);
    // A stale epoch, once a newer one has written: INVALID_PRODUCER_EPOCH.
    assert_eq!(k.produce("idem", &batch(pid, 1, 0, 1)), (0, 5));
    assert_eq!(k.produce("idem", &batch(pid, 0, 5, 1)).0, 47);
    assert_eq!(k.produce("idem", &batch(pid, 1, 1, 1)), (0, 6));

    // kill -9: the state is rebuilt from the log.
    broker.kill9();
    let broker = spawn(dir.path(), &[]);
    let mut k = Kafka::connect(broker.kafka.unwrap());
    assert_eq!(k.produce("idem", &batch(pid, 1, 1, 1)), (0, 6));
    assert_eq!(k.produce("idem", &batch(pid, 1, 0, 1)), (0, 5));
    assert_eq!(k.produce("idem", &batch(pid, 1, 5, 1)).0, 45);
    assert_eq!(k.produce("idem", &batch(pid, 1, 2, 1)), (0, 7));
    // Producer ids are not handed out twice across the restart.
    let after = k.init_producer_id(None).producer_id.0;
    assert!(after > pid + 1, "{after} after {pid}");
    broker.kill9();
}
