//! The consumer: reads a topic from a starting point, in order, long-polling
//! at the end of the log. While the caller handles one fetch's records, the
//! next fetch is already on its way (one request ahead), so a backlog drains
//! at the speed of the link rather than of round trips.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use spool::batch::{self, BatchIter, Record};
use spool::protocol::{ErrorCode, OffsetSpec, Request, ResponseBody};

use crate::client::{unexpected, Client};
use crate::connection::ResponseFuture;
use crate::error::{ClientError, Result};

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(u64),
    /// The oldest record still stored.
    Earliest,
    /// The next record to be produced.
    Latest,
    /// The first record appended at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// What to do when the position is outside the log (retention deleted it,
/// or it was never there): Kafka's `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Return the OFFSET_OUT_OF_RANGE error.
    #[default]
    Error,
    /// Jump to the oldest record still stored.
    Earliest,
    /// Jump to the end.
    Latest,
}

/// How the consumer fetches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most bytes one fetch returns (it always returns at least one batch).
    pub max_bytes: u32,
    /// How long a fetch at the end of the log waits for new records.
    pub max_wait: Duration,
    /// A fetch waits (up to `max_wait`) until this many bytes are available.
    pub min_bytes: u32,
    pub reset: OffsetReset,
    /// Fetch over the given client's connection instead of one of the
    /// consumer's own. Off by default: responses on one connection come back
    /// in order, so a long poll parked on a shared connection would hold
    /// back every answer behind it (a producer's acknowledgements, say) for
    /// up to `max_wait`.
    pub share_connection: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes: 4 << 20,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            reset: OffsetReset::Error,
            share_connection: false,
        }
    }
}

/// Reads one topic in offset order.
///
/// ```
/// use spool_client::{Client, Consumer, ConsumerConfig, OffsetReset, StartAt};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let dir = tempfile::tempdir().unwrap();
/// # let mut config = spool::broker::Config::default();
/// # config.server.listen = "127.0.0.1:0".parse().unwrap();
/// # config.server.data_dir = dir.path().to_owned();
/// # let broker = spool::broker::Broker::start(config).await.unwrap();
/// # let addr = broker.local_addr().to_string();
/// let client = Client::connect(&addr).await?;
/// # let producer = spool_client::Producer::new(client.clone(), Default::default());
/// # let first = producer.send("events", None, b"first").await?;
/// # producer.flush().await?;
/// # first.await?;
///
/// let config = ConsumerConfig {
///     reset: OffsetReset::Earliest, // fell behind retention: start over
///     ..ConsumerConfig::default()
/// };
/// let mut consumer = Consumer::new(client, "events", StartAt::Earliest, config);
/// let record = consumer.next().await?; // long-polls while there is none
/// assert_eq!((record.offset, record.value.as_deref()), (0, Some(&b"first"[..])));
/// # broker.shutdown().await;
/// # Ok::<(), spool_client::ClientError>(())
/// # }).unwrap();
/// ```
pub struct Consumer {
    client: Client,
    topic: String,
    config: ConsumerConfig,
    /// Where to start, until resolved to an offset.
    start: Option<StartAt>,
    /// The next offset to hand out.
    position: u64,
    buffer: VecDeque<Record>,
    /// A fetch sent ahead: the offset it reads from, and its response.
    ahead: Option<(u64, ResponseFuture)>,
    /// The log's end as of the last fetch.
    log_end: u64,
    /// Since when fetches have lost their connection, and the delay before
    /// the next try: a broker that keeps hanging up is retried with backoff,
    /// and given up on after `reconnect_for`.
    lost: Option<(tokio::time::Instant, Duration)>,
}

impl Consumer {
    /// A consumer of `topic`. Unless `config.share_connection`, it opens a
    /// connection of its own to `client`'s broker (on its first fetch).
    pub fn new(client: Client, topic: &str, start: StartAt, config: ConsumerConfig) -> Consumer {
        let client = if config.share_connection {
            client
        } else {
            client.with_own_connection()
        };
        Consumer {
            client,
            topic: topic.to_owned(),
            config,
            start: Some(start),
            position: 0,
            buffer: VecDeque::new(),
            ahead: None,
            log_end: 0,
            lost: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The offset of the next record [`Consumer::next`] returns.
    pub async fn position(&mut self) -> Result<u64> {
        self.resolve_start().await?;
        Ok(self.buffer.front().map_or(self.position, |r| r.offset))
    }

    /// The topic's end as of the last fetch: a consumer at it is caught up.
    pub fn log_end(&self) -> u64 {
        self.log_end
    }

    /// Whether the last fetch lost its connection and the consumer is
    /// retrying (with backoff, for up to `reconnect_for`): an empty
    /// [`Consumer::poll`] then does not mean caught up.
    pub fn is_retrying(&self) -> bool {
        self.lost.is_some()
    }

    /// Moves to another starting point; records buffered are dropped.
    pub fn seek(&mut self, to: StartAt) {
        self.start = Some(to);
        self.buffer.clear();
        self.ahead = None;
    }

    async fn resolve_start(&mut self) -> Result<()> {
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        let spec = match start {
            StartAt::Offset(o) => {
                self.position = o;
                return Ok(());
            }
            StartAt::Earliest => OffsetSpec::Earliest,
            StartAt::Latest => OffsetSpec::Latest,
            StartAt::Timestamp(t) => OffsetSpec::Timestamp(t),
        };
        match self.client.list_offsets(&self.topic, spec).await {
            Ok(o) => {
                self.position = o.offset;
                self.log_end = o.log_end;
                Ok(())
            }
            Err(e) => {
                self.start = Some(start);
                Err(e)
            }
        }
    }

    /// The records as a [`futures_core::Stream`], for stream combinators.
    /// It never ends; an error is yielded as an item, and polling again
    /// retries.
    pub fn into_stream(self) -> RecordStream {
        RecordStream {
            consumer: Some(self),
            pending: None,
        }
    }

    /// The next record, waiting (long-polling) as long as it takes.
    pub async fn next(&mut self) -> Result<Record> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                return Ok(r);
            }
            let records = self.poll().await?;
            self.buffer.extend(records);
        }
    }

    /// One fetch's worth of records: waits at most about `max_wait`, and may
    /// return none (the consumer is caught up).
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        if !self.buffer.is_empty() {
            return Ok(self.buffer.drain(..).collect());
        }
        self.resolve_start().await?;
        let from = self.position;
        let response = match self.ahead.take() {
            Some((offset, rx)) if offset == from => rx,
            _ => self.send_fetch(from).await?,
        };
        let limit = self.client.config().request_timeout + self.config.max_wait;
        let body = match tokio::time::timeout(limit, response).await {
            Err(_) => Err(ClientError::Timeout(limit)),
            Ok(Err(_)) => Err(ClientError::Disconnected("connection closed".into())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(r))) => r.body.map_err(ClientError::from),
        };
        match body {
            Ok(ResponseBody::Fetched {
                batches,
                next_offset,
                log_end,
                ..
            }) => {
                self.lost = None;
                self.log_end = log_end;
                // Ask for the next batches before decoding these.
                if next_offset < log_end {
                    if let Ok(rx) = self.send_fetch(next_offset).await {
                        self.ahead = Some((next_offset, rx));
                    }
                }
                let records = decode(&batches, from)?;
                self.position = self.position.max(next_offset);
                Ok(records)
            }
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Broker {
                code: ErrorCode::OffsetOutOfRange,
                range: Some((start, end)),
                message,
                resume_at,
            }) => match self.config.reset {
                OffsetReset::Error => Err(ClientError::Broker {
                    code: ErrorCode::OffsetOutOfRange,
                    range: Some((start, end)),
                    message,
                    resume_at,
                }),
                OffsetReset::Earliest => {
                    tracing::info!(topic = %self.topic, from, to = start, "offset out of range; resetting to the earliest");
                    self.position = start;
                    Ok(Vec::new())
                }
                OffsetReset::Latest => {
                    tracing::info!(topic = %self.topic, from, to = end, "offset out of range; resetting to the latest");
                    self.position = end;
                    Ok(Vec::new())
                }
            },
            // A broken connection: the next poll reconnects and fetches again
            // (fetching is idempotent), after a backoff, so that a broker
            // that hangs up on every fetch is not hammered; past
            // `reconnect_for` of nothing but that, the error is reported.
            Err(e @ ClientError::Disconnected(_)) => {
                self.ahead = None;
                let config = self.client.config();
                let now = tokio::time::Instant::now();
                let (since, delay) = *self.lost.get_or_insert((now, config.backoff_initial));
                if now.duration_since(since) >= config.reconnect_for {
                    self.lost = None;
                    return Err(e);
                }
                tracing::debug!(topic = %self.topic, error = %e, ?delay, "fetch lost its connection; retrying");
                self.lost = Some((since, (delay * 2).min(config.backoff_max)));
                tokio::time::sleep(delay).await;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    async fn send_fetch(&self, offset: u64) -> Result<ResponseFuture> {
        let conn = self.client.connection().await?;
        let request = Request::Fetch {
            topic: self.topic.clone(),
            offset,
            max_bytes: self.config.max_bytes,
            max_wait_ms: self.config.max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            min_bytes: self.config.min_bytes,
        };
        conn.send(&request).await
    }
}

type NextRecord = Pin<Box<dyn Future<Output = (Consumer, Result<Record>)> + Send>>;

/// A [`Consumer`] as a stream of records (see [`Consumer::into_stream`]).
pub struct RecordStream {
    /// The consumer, while no fetch is in progress.
    consumer: Option<Consumer>,
    /// A fetch in progress, which owns the consumer until it completes.
    pending: Option<NextRecord>,
}

impl futures_core::Stream for RecordStream {
    type Item = Result<Record>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(consumer) = this.consumer.as_mut() {
            // Buffered records need no future (and no allocation).
            if let Some(record) = consumer.buffer.pop_front() {
                return Poll::Ready(Some(Ok(record)));
            }
        }
        if this.pending.is_none() {
            let Some(mut consumer) = this.consumer.take() else {
                return Poll::Ready(None);
            };
            this.pending = Some(Box::pin(async move {
                let next = consumer.next().await;
                (consumer, next)
            }));
        }
        let pending = this.pending.as_mut().expect("set above");
        match pending.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((consumer, next)) => {
                this.pending = None;
                this.consumer = Some(consumer);
                Poll::Ready(Some(next))
            }
        }
    }
}

/// Most bytes one fetched batch's records may decompress to: the broker
/// checked them against its record limits, so more is a bad batch.
const MAX_DECOMPRESSED: usize = batch::MAX_DECOMPRESSED;

/// The records at or after `from` in fetched batches (compressed or not),
/// each batch's CRC checked first.
pub fn decode(batches: &[Bytes], from: u64) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for chunk in batches {
        for item in BatchIter::new(chunk) {
            let (header, raw) = item.map_err(|e| ClientError::CorruptBatch(e.to_string()))?;
            if header.next_offset() as u64 <= from {
                continue;
            }
            let records = batch::decode_any(&chunk.slice_ref(raw), MAX_DECOMPRESSED)
                .map_err(|e| ClientError::CorruptBatch(e.to_string()))?;
            out.extend(records.into_iter().filter(|r| r.offset >= from));
        }
    }
    Ok(out)
}
