//! An in-process broker on 127.0.0.1:0 with a temp data dir, and a raw
//! protocol connection to drive it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool::broker::{Broker, Config, RunningBroker};
use spool::protocol::{
    Acks, ApiKey, ErrorCode, FetchedPartition, PartitionOffsets, ProducedPartition, Request,
    Response, ResponseBody,
};
use spool::storage::batch::{self, BatchBuilder, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct TestBroker {
    pub running: Option<RunningBroker>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

/// A config on an ephemeral port and a temp dir, edited by `edit`.
pub async fn start(edit: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().to_owned();
    edit(&mut config);
    let running = Broker::start(config.clone()).await.expect("broker starts");
    let addr = running.local_addr();
    TestBroker {
        running: Some(running),
        addr,
        dir,
        config,
    }
}

impl TestBroker {
    pub async fn connect(&self) -> Conn {
        Conn::connect(self.addr).await
    }

    /// Shuts down gracefully and starts again on the same directory (and a
    /// new port).
    pub async fn restart(mut self) -> TestBroker {
        self.running.take().unwrap().shutdown().await;
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.kafka.listen = "127.0.0.1:0".into();
        let running = Broker::start(config).await.expect("broker restarts");
        self.addr = running.local_addr();
        self.running = Some(running);
        self
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A raw protocol connection: frames, correlation ids, nothing else.
pub struct Conn {
    pub stream: TcpStream,
    next_id: u32,
    /// API of each request sent and not yet answered, in order.
    pending: std::collections::VecDeque<(u32, ApiKey)>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            next_id: 1,
            pending: Default::default(),
        }
    }

    /// Sends a request without waiting; returns its correlation id.
    pub async fn send(&mut self, request: &Request) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        request.encode(id, &mut buf);
        self.stream.write_all(&buf).await.unwrap();
        if !matches!(
            request,
            Request::Produce {
                acks: Acks::None,
                ..
            }
        ) {
            self.pending.push_back((id, request.api_key()));
        }
        id
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one response frame; `None` if the connection closed.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(PATIENCE, self.stream.read_exact(&mut len))
            .await
            .expect("response in time")
        {
            Ok(_) => {}
            Err(_) => return None,
        }
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        tokio::time::timeout(PATIENCE, self.stream.read_exact(&mut frame))
            .await
            .unwrap()
            .ok()?;
        Some(Bytes::from(frame))
    }

    /// The response to the oldest unanswered request.
    pub async fn recv(&mut self) -> Response {
        let (id, api) = self.pending.pop_front().expect("a request is pending");
        let frame = self.read_frame().await.expect("connection open");
        let response = Response::parse(api, frame).unwrap();
        assert_eq!(
            response.correlation_id, id,
            "responses come in request order"
        );
        response
    }

    pub async fn call(&mut self, request: Request) -> Response {
        self.send(&request).await;
        self.recv().await
    }

    /// Calls and expects success.
    pub async fn ok(&mut self, request: Request) -> ResponseBody {
        let r = self.call(request.clone()).await;
        r.body
            .unwrap_or_else(|e| panic!("{request:?} failed: {e:?}"))
    }

    /// The outcome of a one-partition PRODUCE.
    pub async fn produced(
        &mut self,
        request: Request,
    ) -> Result<ProducedPartition, spool::protocol::ErrorBody> {
        self.call(request).await.produced()
    }

    /// The outcome of a one-partition FETCH.
    pub async fn fetched(
        &mut self,
        request: Request,
    ) -> Result<FetchedPartition, spool::protocol::ErrorBody> {
        self.call(request).await.fetched()
    }

    /// The outcome of a one-partition LIST_OFFSETS.
    pub async fn offsets(
        &mut self,
        request: Request,
    ) -> Result<PartitionOffsets, spool::protocol::ErrorBody> {
        self.call(request).await.offsets()
    }

    /// Calls and expects this error code: the request's own, or for a
    /// PRODUCE, FETCH or LIST_OFFSETS of one partition, that partition's.
    pub async fn err(&mut self, request: Request, code: ErrorCode) -> spool::protocol::ErrorBody {
        let r = self.call(request.clone()).await;
        match single(r) {
            Err(e) if e.code == code => {
                assert!(!e.message.is_empty(), "every error carries a message");
                e
            }
            other => panic!("{request:?}: expected {code}, got {other:?}"),
        }
    }

    /// True once the broker has closed the connection (EOF or reset),
    /// within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a response to discard
            }
        }
    }

    pub async fn describe(&mut self, topic: &str) -> spool::protocol::TopicDescription {
        match self
            .ok(Request::DescribeTopic {
                topic: topic.into(),
            })
            .await
        {
            ResponseBody::Description(d) => d,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn produce(&mut self, topic: &str, values: &[&[u8]]) -> u64 {
        match self.produced(produce_request(topic, values)).await {
            Ok(p) => p.base_offset,
            Err(e) => panic!("produce to {topic} failed: {e:?}"),
        }
    }

    /// Fetches from `offset` (no waiting) and decodes the records at or after it.
    pub async fn fetch(&mut self, topic: &str, offset: u64) -> Vec<Record> {
        match self.fetched(fetch_request(topic, offset, 0)).await {
            Ok(f) => decode(&f.batches, offset),
            Err(e) => panic!("fetch from {topic} failed: {e:?}"),
        }
    }
}

/// A response's error: the request's own, or for a PRODUCE, FETCH or
/// LIST_OFFSETS of one partition, that partition's.
pub fn single(r: Response) -> Result<ResponseBody, spool::protocol::ErrorBody> {
    let first_error =
        |errors: Vec<Option<spool::protocol::ErrorBody>>| errors.into_iter().flatten().next();
    let body = r.body?;
    let error = match &body {
        ResponseBody::Produced(t) => first_error(
            t.iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.result.clone().err())
                .collect(),
        ),
        ResponseBody::Fetched(t) => first_error(
            t.iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.result.clone().err())
                .collect(),
        ),
        ResponseBody::Offsets(t) => first_error(
            t.iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.result.clone().err())
                .collect(),
        ),
        _ => None,
    };
    match error {
        Some(e) => Err(e),
        None => Ok(body),
    }
}

pub fn produce_request(topic: &str, values: &[&[u8]]) -> Request {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(super::now_ms() + i as i64, None, Some(v), &[]);
    }
    Request::produce(topic, 0, Acks::Commit, BytesMut::from(&b.finish()[..]))
}

/// CREATE_TOPIC with settings given as `(key, value)`.
pub fn create_request(topic: &str, settings: &[(&str, &str)]) -> Request {
    Request::CreateTopic {
        topic: topic.into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn fetch_request(topic: &str, offset: u64, max_wait_ms: u32) -> Request {
    Request::fetch(topic, 0, offset, 1 << 20, max_wait_ms, 1)
}

/// Records in fetched batches at or after `from`.
pub fn decode(batches: &[Bytes], from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    for chunk in batches {
        for item in batch::BatchIter::new(chunk) {
            let (_, raw) = item.expect("fetched batches are whole and valid");
            out.extend(
                batch::decode_any(&chunk.slice_ref(raw), 64 << 20)
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.offset >= from),
            );
        }
    }
    out
}

/// Why a [`Caller`] call failed.
#[derive(Debug)]
pub enum CallError {
    /// The connection is gone (the broker closed it, or died).
    Gone(std::io::Error),
    /// No whole answer within the deadline.
    Timeout(Duration),
    /// An answer arrived but is malformed, or answers another request.
    Bad(String),
}

/// One request at a time, with a deadline, failures returned rather than
/// panicked: for clients that outlive a broker's death, or count failures.
pub struct Caller {
    pub stream: TcpStream,
    next_id: u32,
}

impl Caller {
    pub async fn connect(addr: SocketAddr) -> Caller {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Caller { stream, next_id: 1 }
    }

    pub async fn call(
        &mut self,
        request: &Request,
        deadline: Duration,
    ) -> Result<Response, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        request.encode(id, &mut buf);
        let exchange = async {
            self.stream.write_all(&buf).await?;
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await?;
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut frame).await?;
            std::io::Result::Ok(Bytes::from(frame))
        };
        let frame = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| CallError::Timeout(deadline))?
            .map_err(CallError::Gone)?;
        let response =
            Response::parse(request.api_key(), frame).map_err(|e| CallError::Bad(e.to_string()))?;
        if response.correlation_id != id {
            return Err(CallError::Bad(format!(
                "correlation id {} for {id}",
                response.correlation_id
            )));
        }
        Ok(response)
    }
}
