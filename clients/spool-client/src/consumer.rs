//! The consumer: reads a topic's partitions from a starting point, each in
//! order, long-polling at their ends. While the caller handles one fetch's records, the
//! next fetch is already on its way (one request ahead), so a backlog drains
//! at the speed of the link rather than of round trips.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use spool::batch::{self, BatchIter, Record};
use spool::protocol::{ErrorCode, FetchPartition, FetchTopic, OffsetSpec, Request, ResponseBody};

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

/// A record, and the partition it was read from. It derefs to the
/// [`Record`], so `message.offset` and `message.value` read as a record's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub record: Record,
}

impl std::ops::Deref for Message {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.record
    }
}

/// Where the consumer stands in one partition.
#[derive(Debug, Clone)]
struct Part {
    id: u32,
    /// Where to start, until resolved to an offset.
    start: Option<StartAt>,
    /// The next offset to hand out.
    position: u64,
    /// The partition's end as of the last fetch.
    log_end: u64,
}

/// How often a consumer of every partition looks for new ones (a topic's
/// partitions can be raised while it reads).
const PARTITION_REFRESH: Duration = Duration::from_secs(10);

/// Reads a topic's partitions, each in offset order, long-polling at their
/// ends: every partition of the topic ([`Consumer::new`]) or the ones
/// named ([`Consumer::assign`]). One FETCH asks for all of them.
///
/// ```
/// use spool_client::{Client, Consumer, ConsumerConfig, OffsetReset, StartAt};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let dir = tempfile::tempdir().unwrap();
/// # let mut config = spool::broker::Config::default();
/// # config.server.listen = "127.0.0.1:0".parse().unwrap();
/// # config.kafka.listen = "127.0.0.1:0".into();
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
/// let message = consumer.next().await?; // long-polls while there is none
/// assert_eq!((message.partition, message.offset), (0, 0));
/// assert_eq!(message.value.as_deref(), Some(&b"first"[..]));
/// # broker.shutdown().await;
/// # Ok::<(), spool_client::ClientError>(())
/// # }).unwrap();
/// ```
pub struct Consumer {
    client: Client,
    topic: String,
    config: ConsumerConfig,
    /// `None`: every partition of the topic, found at the first fetch and
    /// looked for again every [`PARTITION_REFRESH`].
    assigned: Option<Vec<u32>>,
    /// Where partitions found later start.
    start: StartAt,
    parts: Vec<Part>,
    refreshed: Option<tokio::time::Instant>,
    buffer: VecDeque<Message>,
    /// A partition's failure met while others returned records, for the
    /// next poll.
    deferred: Option<ClientError>,
    /// Fetches so far: each names the partitions starting one further on,
    /// so that a busy partition cannot keep the others out of the
    /// responses' `max_bytes` (as Kafka's clients rotate them).
    fetches: usize,
    /// A fetch sent ahead: the positions it reads from, and its response.
    ahead: Option<(Vec<(u32, u64)>, ResponseFuture)>,
    /// Since when fetches have lost their connection, and the delay before
    /// the next try: a broker that keeps hanging up is retried with backoff,
    /// and given up on after `reconnect_for`.
    lost: Option<(tokio::time::Instant, Duration)>,
}

impl Consumer {
    /// A consumer of every partition of `topic`. Unless
    /// `config.share_connection`, it opens a connection of its own to
    /// `client`'s broker (on its first fetch).
    pub fn new(client: Client, topic: &str, start: StartAt, config: ConsumerConfig) -> Consumer {
        Consumer::with(client, topic, None, start, config)
    }

    /// A consumer of the partitions named, each from `start`.
    pub fn assign(
        client: Client,
        topic: &str,
        partitions: &[u32],
        start: StartAt,
        config: ConsumerConfig,
    ) -> Consumer {
        Consumer::with(client, topic, Some(partitions.to_vec()), start, config)
    }

    fn with(
        client: Client,
        topic: &str,
        assigned: Option<Vec<u32>>,
        start: StartAt,
        config: ConsumerConfig,
    ) -> Consumer {
        let client = if config.share_connection {
            client
        } else {
            client.with_own_connection()
        };
        let parts = assigned
            .iter()
            .flatten()
            .map(|&id| Part {
                id,
                start: Some(start),
                position: 0,
                log_end: 0,
            })
            .collect();
        Consumer {
            client,
            topic: topic.to_owned(),
            config,
            assigned,
            start,
            parts,
            refreshed: None,
            buffer: VecDeque::new(),
            fetches: 0,
            deferred: None,
            ahead: None,
            lost: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The offset of the next record [`Consumer::next`] returns from the
    /// first partition read: for a consumer of one partition.
    pub async fn position(&mut self) -> Result<u64> {
        Ok(self.positions().await?.first().map_or(0, |&(_, p)| p))
    }

    /// Each partition's next offset to hand out, `(partition, offset)`.
    pub async fn positions(&mut self) -> Result<Vec<(u32, u64)>> {
        self.resolve_start().await?;
        Ok(self
            .parts
            .iter()
            .map(|p| {
                let buffered = self.buffer.iter().find(|m| m.partition == p.id);
                (p.id, buffered.map_or(p.position, |m| m.offset))
            })
            .collect())
    }

    /// Each partition's end as of the last fetch, `(partition, end)`.
    pub fn log_ends(&self) -> Vec<(u32, u64)> {
        self.parts.iter().map(|p| (p.id, p.log_end)).collect()
    }

    /// The partitions' ends as of the last fetch, summed: for one
    /// partition, its end (a consumer at it is caught up).
    pub fn log_end(&self) -> u64 {
        self.parts.iter().map(|p| p.log_end).sum()
    }

    /// Whether the last fetch lost its connection and the consumer is
    /// retrying (with backoff, for up to `reconnect_for`): an empty
    /// [`Consumer::poll`] then does not mean caught up.
    pub fn is_retrying(&self) -> bool {
        self.lost.is_some()
    }

    /// Moves every partition to another starting point; records buffered
    /// are dropped.
    pub fn seek(&mut self, to: StartAt) {
        self.deferred = None;
        self.start = to;
        for p in &mut self.parts {
            p.start = Some(to);
        }
        self.buffer.clear();
        self.ahead = None;
    }

    /// Moves one partition to another starting point; its buffered records
    /// are dropped.
    pub fn seek_partition(&mut self, partition: u32, to: StartAt) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.id == partition) {
            p.start = Some(to);
        }
        self.buffer.retain(|m| m.partition != partition);
        self.ahead = None;
        self.deferred = None;
    }

    /// Learns the topic's partitions (for a consumer of all of them: at the
    /// start, then every [`PARTITION_REFRESH`]); new ones start where the
    /// consumer was told to, and a partition added after the first look
    /// from its beginning (nothing in it can be older than the look).
    async fn refresh_partitions(&mut self) -> Result<()> {
        if self.assigned.is_some()
            || self
                .refreshed
                .is_some_and(|at| at.elapsed() < PARTITION_REFRESH)
        {
            return Ok(());
        }
        let count = self.client.partition_count(&self.topic).await?;
        let start = if self.refreshed.is_none() {
            self.start
        } else {
            StartAt::Earliest
        };
        self.refreshed = Some(tokio::time::Instant::now());
        for id in self.parts.len() as u32..count {
            self.parts.push(Part {
                id,
                start: Some(start),
                position: 0,
                log_end: 0,
            });
        }
        Ok(())
    }

    async fn resolve_start(&mut self) -> Result<()> {
        self.refresh_partitions().await?;
        let mut asks = Vec::new();
        for p in &mut self.parts {
            match p.start {
                Some(StartAt::Offset(o)) => {
                    p.position = o;
                    p.start = None;
                }
                Some(StartAt::Earliest) => asks.push((p.id, OffsetSpec::Earliest)),
                Some(StartAt::Latest) => asks.push((p.id, OffsetSpec::Latest)),
                Some(StartAt::Timestamp(t)) => asks.push((p.id, OffsetSpec::Timestamp(t))),
                None => {}
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        for (id, found) in self.client.list_offsets_of(&self.topic, &asks).await? {
            let found = found?;
            if let Some(p) = self.parts.iter_mut().find(|p| p.id == id) {
                p.position = found.offset;
                p.log_end = found.log_end;
                p.start = None;
            }
        }
        Ok(())
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
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.buffer.pop_front() {
                return Ok(m);
            }
            let messages = self.poll().await?;
            self.buffer.extend(messages);
        }
    }

    /// One fetch's worth of records, partition after partition: waits at
    /// most about `max_wait`, and may return none (the consumer is caught
    /// up).
    pub async fn poll(&mut self) -> Result<Vec<Message>> {
        if !self.buffer.is_empty() {
            return Ok(self.buffer.drain(..).collect());
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        match self.resolve_start().await {
            Err(e @ ClientError::Disconnected(_)) => return self.lost_connection(e).await,
            other => other?,
        }
        let from: Vec<(u32, u64)> = self.parts.iter().map(|p| (p.id, p.position)).collect();
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let response = match self.ahead.take() {
            Some((at, rx)) if at == from => rx,
            _ => self.send_fetch(&from).await?,
        };
        let limit = self.client.config().request_timeout + self.config.max_wait;
        let body = match tokio::time::timeout(limit, response).await {
            Err(_) => Err(ClientError::Timeout(limit)),
            Ok(Err(_)) => Err(ClientError::Disconnected("connection closed".into())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(r))) => r.body.map_err(ClientError::from),
        };
        let topics = match body {
            Ok(ResponseBody::Fetched(topics)) => topics,
            Ok(other) => return Err(unexpected(other)),
            // A broken connection: the next poll reconnects and fetches
            // again (fetching is idempotent), after a backoff, so that a
            // broker that hangs up on every fetch is not hammered; past
            // `reconnect_for` of nothing but that, the error is reported.
            Err(e @ ClientError::Disconnected(_)) => return self.lost_connection(e).await,
            Err(e) => return Err(e),
        };
        self.lost = None;
        let results: Vec<_> = topics.into_iter().flat_map(|t| t.partitions).collect();
        // Where each partition goes next is known before anything is
        // decoded: the next fetch leaves first, so the broker reads while
        // this one is decoded (a backlog drains at the speed of the link,
        // not of round trips). A partition whose batches then fail their
        // checks stays put, and the fetch sent ahead no longer matches.
        let mut next: Vec<(u32, u64)> = self.parts.iter().map(|p| (p.id, p.position)).collect();
        let mut more = false;
        for r in &results {
            let (Ok(fetched), Some(i)) = (
                &r.result,
                self.parts.iter().position(|p| p.id == r.partition),
            ) else {
                continue;
            };
            self.parts[i].log_end = fetched.log_end;
            next[i].1 = next[i].1.max(fetched.next_offset);
        }
        for (p, (_, at)) in self.parts.iter().zip(&next) {
            more |= *at < p.log_end;
        }
        let all_ok = results.iter().all(|r| r.result.is_ok());
        if more && all_ok {
            if let Ok(rx) = self.send_fetch(&next).await {
                self.ahead = Some((next, rx));
            }
        }
        let mut messages = Vec::new();
        let mut failure = None;
        for result in results {
            let Some(part) = self.parts.iter_mut().find(|p| p.id == result.partition) else {
                continue;
            };
            match result.result {
                Ok(fetched) => {
                    // A batch that fails its checks: this partition stays
                    // where it is (the next fetch meets it again), the
                    // others' records are delivered.
                    let records = match decode(&fetched.batches, part.position) {
                        Ok(records) => records,
                        Err(e) => {
                            failure.get_or_insert(e);
                            continue;
                        }
                    };
                    part.position = part.position.max(fetched.next_offset);
                    messages.extend(records.into_iter().map(|record| Message {
                        partition: part.id,
                        record,
                    }));
                }
                Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                    let (start, end) = e.range.unwrap_or((0, 0));
                    let from = part.position;
                    match self.config.reset {
                        OffsetReset::Error => {
                            failure.get_or_insert(ClientError::OutOfRange {
                                partition: part.id,
                                offset: from,
                                log_start: start,
                                log_end: end,
                                message: e.message,
                            });
                        }
                        OffsetReset::Earliest => {
                            tracing::info!(topic = %self.topic, partition = part.id, from, to = start, "offset out of range; resetting to the earliest");
                            part.position = start;
                        }
                        OffsetReset::Latest => {
                            tracing::info!(topic = %self.topic, partition = part.id, from, to = end, "offset out of range; resetting to the latest");
                            part.position = end;
                        }
                    }
                }
                Err(e) => {
                    failure.get_or_insert(ClientError::from(e));
                }
            }
        }
        // Records first; the failure comes with the next poll, so that a
        // partition that keeps failing is heard of even while others are
        // busy (its position has not moved: it fails again if it is not
        // handled).
        match (failure, messages.is_empty()) {
            (Some(e), true) => return Err(e),
            (Some(e), false) => self.deferred = Some(e),
            (None, _) => {}
        }
        Ok(messages)
    }

    /// After a lost connection, waits out the backoff and returns no
    /// records: the next poll reconnects. Past `reconnect_for` of nothing
    /// but that, the error.
    async fn lost_connection(&mut self, e: ClientError) -> Result<Vec<Message>> {
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

    async fn send_fetch(&mut self, from: &[(u32, u64)]) -> Result<ResponseFuture> {
        let conn = self.client.connection().await?;
        let mut from = from.to_vec();
        if !from.is_empty() {
            let by = self.fetches % from.len();
            from.rotate_left(by);
        }
        self.fetches = self.fetches.wrapping_add(1);
        let request = Request::Fetch {
            max_wait_ms: self.config.max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            topics: vec![FetchTopic {
                topic: self.topic.clone(),
                partitions: from
                    .iter()
                    .map(|&(partition, offset)| FetchPartition {
                        partition,
                        offset,
                        max_bytes: self.config.max_bytes,
                    })
                    .collect(),
            }],
        };
        conn.send(&request).await
    }
}

type NextRecord = Pin<Box<dyn Future<Output = (Consumer, Result<Message>)> + Send>>;

/// A [`Consumer`] as a stream of records (see [`Consumer::into_stream`]).
pub struct RecordStream {
    /// The consumer, while no fetch is in progress.
    consumer: Option<Consumer>,
    /// A fetch in progress, which owns the consumer until it completes.
    pending: Option<NextRecord>,
}

impl futures_core::Stream for RecordStream {
    type Item = Result<Message>;

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
