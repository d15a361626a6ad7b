//! What the broker does for each request: the APIs of the protocol, mapped
//! onto topics and logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::Flush;
use super::topic::{Partition, Topic, TopicError, Topics};
use super::Broker;
use crate::batch::BatchError;
use crate::protocol::{
    Acks, ErrorBody, ErrorCode, FetchTopic, FetchedPartition, OffsetSpec, OffsetsTopic,
    PartitionDescription, PartitionOffsets, PartitionResult, ProduceTopic, ProducedPartition,
    Request, Response, ResponseBody, TopicDescription, TopicResults, API_VERSIONS,
};
use crate::storage::{StorageError, Wait};

/// The outcome of dispatching one request, in request order.
pub enum Reply {
    /// The response is ready.
    Now(Answer),
    /// The response comes when the task finishes (a long poll, a sync).
    Later(JoinHandle<Answer>),
    /// No response (a produce with `acks = 0`).
    Nothing,
}

/// A response, and the share of `max_response_bytes` its fetched batches
/// hold until it has been written.
pub struct Answer {
    pub response: Response,
    pub memory: Option<OwnedSemaphorePermit>,
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer {
            response,
            memory: None,
        }
    }
}

/// What one connection's requests share: whether its client is gone (its
/// waiting fetches then return at once, releasing what they hold).
#[derive(Clone)]
pub struct Peer {
    pub gone: watch::Receiver<bool>,
    /// The client's address, as group descriptions show it.
    pub addr: Option<std::net::SocketAddr>,
}

type Outcome = Result<ResponseBody, ErrorBody>;

/// Handles one parsed request. Requests that change state (produce, create,
/// delete) take effect before this returns, so that pipelined requests on
/// one connection apply in the order they were sent; waiting (for a sync or
/// for data) happens in a task.
pub async fn dispatch(
    broker: &Arc<Broker>,
    peer: &Peer,
    correlation_id: u32,
    request: Request,
) -> Reply {
    let now = |body: Outcome| {
        Reply::Now(
            Response {
                correlation_id,
                body,
            }
            .into(),
        )
    };
    match request {
        Request::ApiVersions => now(Ok(ResponseBody::ApiVersions {
            server: format!("spool {}", env!("CARGO_PKG_VERSION")),
            apis: API_VERSIONS
                .iter()
                .map(|(k, min, max)| (*k as u16, *min, *max))
                .collect(),
            max_frame_bytes: broker.config.server.max_frame_bytes as u32,
        })),
        Request::CreateTopic { topic, settings } => {
            let topics = Arc::clone(&broker.topics);
            now(blocking(move || {
                topics
                    .create(&topic, &settings)
                    .map(|_| ResponseBody::Empty)
            })
            .await)
        }
        Request::AlterTopic { topic, set, reset } => {
            let topics = Arc::clone(&broker.topics);
            now(blocking(move || {
                topics
                    .alter(&topic, &set, &reset)
                    .map(|_| ResponseBody::Empty)
            })
            .await)
        }
        Request::DeleteTopic { topic } => {
            let topics = Arc::clone(&broker.topics);
            now(blocking(move || topics.delete(&topic).map(|()| ResponseBody::Empty)).await)
        }
        Request::ListTopics => now(Ok(ResponseBody::Topics(broker.topics.names()))),
        Request::DescribeTopic { topic } => {
            now(known(&broker.topics, &topic).map(|t| describe(&t)))
        }
        Request::Produce { acks, topics } => produce(broker, correlation_id, acks, topics).await,
        Request::Fetch {
            max_wait_ms,
            min_bytes,
            max_bytes,
            topics,
        } => {
            let fetch = Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
            };
            fetch.dispatch(broker, peer, correlation_id, topics).await
        }
        Request::ListOffsets { topics } => now(list_offsets(broker, topics).await),
        Request::GroupHeartbeat(_)
        | Request::OffsetCommit { .. }
        | Request::OffsetFetch { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. }
        | Request::DeleteGroup { .. } => {
            now(super::group_handler::dispatch(broker, peer, request).await)
        }
    }
}

/// The partition `id` of `topic`, or UNKNOWN_PARTITION.
fn partition_of(topic: &Topic, id: u32) -> Result<Arc<Partition>, ErrorBody> {
    topic.partition(id).ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::UnknownPartition,
            format!(
                "topic {:?} has no partition {id}: it has {} (numbered from 0)",
                topic.name(),
                topic.partition_count()
            ),
        )
    })
}

/// Appends each batch in request order; every partition answers on its
/// own. The answer waits until each appended batch is as durable as its
/// topic's flush mode promises.
async fn produce(
    broker: &Arc<Broker>,
    correlation_id: u32,
    acks: Acks,
    topics: Vec<ProduceTopic>,
) -> Reply {
    let mut results = Vec::with_capacity(topics.len());
    // (topic index, partition index, partition, offset to be durable below)
    let mut waits = Vec::new();
    let mut budget = REQUEST_DECOMPRESSION_BUDGET;
    for (ti, ProduceTopic { topic, partitions }) in topics.into_iter().enumerate() {
        let target = produce_target(broker, topic.clone()).await;
        let mut out = Vec::with_capacity(partitions.len());
        for (pi, (id, mut batch)) in partitions.into_iter().enumerate() {
            let appended = target
                .clone()
                .and_then(|t| partition_of(&t, id))
                .and_then(|p| {
                    append(&p, &mut batch, &mut budget)
                        .map(|a| (p, a))
                        .map_err(storage_error)
                });
            let result = appended.map(|(p, a)| {
                if acks == Acks::None {
                    // Nobody waits for it, but consumers of a flush =
                    // "always" topic see it only once it is synced.
                    p.request_sync();
                } else if p.flush() == Flush::Always {
                    // Each partition's sync starts now: the answer waits
                    // for the slowest, not for their sum.
                    p.request_sync();
                    waits.push((ti, pi, Arc::clone(&p), a.next_offset));
                }
                ProducedPartition {
                    base_offset: a.base_offset,
                    log_append_time: a.log_append_time.unwrap_or(-1),
                    log_start: p.log().lowest_offset(),
                }
            });
            if let (Err(e), Acks::None) = (&result, acks) {
                tracing::debug!(code = %e.code, message = %e.message, "fire-and-forget produce failed");
            }
            out.push(PartitionResult {
                partition: id,
                result,
            });
        }
        results.push(TopicResults {
            topic,
            partitions: out,
        });
    }
    if acks == Acks::None {
        return Reply::Nothing;
    }
    let answer = move |results| {
        Answer::from(Response {
            correlation_id,
            body: Ok(ResponseBody::Produced(results)),
        })
    };
    if waits.is_empty() {
        return Reply::Now(answer(results));
    }
    Reply::Later(tokio::spawn(async move {
        // Each partition's sync task runs on its own: waiting for them one
        // after another takes as long as the slowest.
        for (ti, pi, partition, next_offset) in waits {
            if let Err(e) = partition.committed(next_offset).await {
                results[ti].partitions[pi].result = Err(storage_error(e));
            }
        }
        answer(results)
    }))
}

/// Appends a batch without stalling the other tasks of this worker thread
/// on slow I/O. A roll's work (sealing, making the next segment, retention)
/// is done in the background, so an append is normally a copy into the
/// page cache, done right here: moving every append aside cost a sixth of
/// bulk throughput (docs/BENCHMARKS.md). Only while a roll would still find
/// that work undone (the background task has not caught up) does the
/// append run with the worker's other tasks moved to another thread
/// (`block_in_place`, multi-threaded runtime only).
///
/// A compressed batch is decompressed to check its records, which can take
/// long (a few KB of zstd can expand to many MB): it too runs with the
/// worker's other tasks moved away, within what is left of the request's
/// `budget` of decompressed bytes.
fn append(
    partition: &Partition,
    batch: &mut [u8],
    budget: &mut usize,
) -> Result<crate::storage::Appended, StorageError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let compressed = batch.len() > 22 && batch[22] & crate::batch::CODEC_MASK as u8 != 0;
    let limit = *budget;
    let appended = if (compressed || partition.log().append_may_block())
        && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(|| partition.append_within(batch, limit))
    } else {
        partition.append_within(batch, limit)
    }?;
    *budget = budget.saturating_sub(appended.decompressed);
    Ok(appended)
}

/// Most bytes one PRODUCE makes the broker decompress to check compressed
/// batches, over all its batches: a frame may carry thousands of small
/// batches, each of which could otherwise expand to `MAX_DECOMPRESSED`.
const REQUEST_DECOMPRESSION_BUDGET: usize = 256 << 20;

/// Runs blocking topic administration off the async threads.
async fn blocking(
    f: impl FnOnce() -> Result<ResponseBody, TopicError> + Send + 'static,
) -> Outcome {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(topic_error),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::UnknownServerError,
            format!("task failed: {e}"),
        )),
    }
}

fn known(topics: &Topics, name: &str) -> Result<Arc<Topic>, ErrorBody> {
    topics.lookup(name).map_err(topic_error)
}

async fn produce_target(broker: &Arc<Broker>, name: String) -> Result<Arc<Topic>, ErrorBody> {
    if let Some(topic) = broker.topics.get(&name) {
        return Ok(topic);
    }
    if !broker.config.server.auto_create_topics {
        return known(&broker.topics, &name);
    }
    let topics = Arc::clone(&broker.topics);
    match tokio::task::spawn_blocking(move || topics.get_or_create(&name)).await {
        Ok(result) => result.map_err(topic_error),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::UnknownServerError,
            format!("task failed: {e}"),
        )),
    }
}

fn describe(topic: &Topic) -> ResponseBody {
    let current = topic.current();
    let partitions = topic
        .partitions()
        .iter()
        .map(|p| {
            let log = p.log();
            let sidecars = log.sidecars();
            let end = p.visible_end();
            PartitionDescription {
                partition: p.id(),
                log_start: log.lowest_offset().min(end),
                log_end: end,
                size_bytes: log.size_bytes(),
                segments: log.segment_count() as u32,
                torn_files: sidecars.len() as u32,
                torn_bytes: sidecars.iter().map(|s| s.bytes).sum(),
            }
        })
        .collect();
    ResponseBody::Description(TopicDescription {
        partitions,
        settings: current.effective.to_pairs(),
        sources: current.sources,
    })
}

/// LIST_OFFSETS for every partition asked; a search by time reads batch
/// headers, perhaps from the device, so a request with one runs off the
/// async threads.
async fn list_offsets(broker: &Arc<Broker>, topics: Vec<OffsetsTopic>) -> Outcome {
    let registry = Arc::clone(&broker.topics);
    let by_time = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .any(|(_, spec)| matches!(spec, OffsetSpec::Timestamp(_) | OffsetSpec::MaxTimestamp));
    let work = move || {
        topics
            .into_iter()
            .map(|t| {
                let topic = known(&registry, &t.topic);
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|(id, spec)| PartitionResult {
                        partition: id,
                        result: topic
                            .clone()
                            .and_then(|topic| partition_of(&topic, id))
                            .and_then(|p| offsets_of(&p, spec)),
                    })
                    .collect();
                TopicResults {
                    topic: t.topic,
                    partitions,
                }
            })
            .collect::<Vec<_>>()
    };
    if !by_time {
        return Ok(ResponseBody::Offsets(work()));
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(results) => Ok(ResponseBody::Offsets(results)),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::UnknownServerError,
            format!("task failed: {e}"),
        )),
    }
}

fn offsets_of(partition: &Partition, spec: OffsetSpec) -> Result<PartitionOffsets, ErrorBody> {
    let log = partition.log();
    let end = partition.visible_end();
    let start = log.lowest_offset().min(end);
    let found = match spec {
        OffsetSpec::Earliest => return Ok(plain(start, start, end)),
        OffsetSpec::Latest => return Ok(plain(end, start, end)),
        OffsetSpec::Timestamp(t) => log.record_for_timestamp(t),
        OffsetSpec::MaxTimestamp => log.max_timestamp_record(),
    };
    // A record beyond what readers may see yet is not found.
    Ok(match found.map_err(storage_error)? {
        Some((offset, timestamp)) if offset < end => PartitionOffsets {
            offset,
            log_start: start,
            log_end: end,
            timestamp: Some(timestamp),
        },
        _ => plain(end, start, end),
    })
}

fn plain(offset: u64, log_start: u64, log_end: u64) -> PartitionOffsets {
    PartitionOffsets {
        offset,
        log_start,
        log_end,
        timestamp: None,
    }
}

/// Batches read from one partition for a fetch.
struct Found {
    chunks: Vec<Bytes>,
    next_offset: u64,
    log_start: u64,
    log_end: u64,
}

impl Found {
    fn into_fetched(self) -> FetchedPartition {
        FetchedPartition {
            log_start: self.log_start,
            log_end: self.log_end,
            next_offset: self.next_offset,
            batches: self.chunks,
        }
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// Reads whole batches from `offset` up to `max_bytes` (with
/// `at_least_one`, at least one batch), crossing segments. With
/// [`Wait::No`] it never waits for the device: a first batch not in the
/// page cache is [`StorageError::WouldBlock`], and the response ends before
/// a later one that is not.
fn read(
    partition: &Partition,
    offset: u64,
    max_bytes: u64,
    end: u64,
    wait: Wait,
    at_least_one: bool,
) -> Result<Found, StorageError> {
    let log = partition.log();
    let first = log.read_batches_with(offset, max_bytes, end, at_least_one, wait)?;
    let mut found = Found {
        next_offset: first.next_offset,
        log_start: first.log_start,
        log_end: first.log_end,
        chunks: Vec::new(),
    };
    let mut total = first.bytes.len() as u64;
    if first.bytes.is_empty() {
        // Nothing is there, or (after an earlier partition filled the
        // response) nothing fitted: the next fetch starts here.
        return Ok(found);
    }
    found.chunks.push(first.bytes);
    // A read stops at a segment's end; go on while there is room. Errors
    // here end the response early: the next fetch starts at them and
    // reports them.
    while total < max_bytes && found.next_offset < found.log_end {
        let Ok(more) =
            log.read_batches_with(found.next_offset, max_bytes - total, end, false, wait)
        else {
            break;
        };
        if more.bytes.is_empty() {
            break;
        }
        total += more.bytes.len() as u64;
        found.next_offset = more.next_offset;
        found.chunks.push(more.bytes);
    }
    Ok(found)
}

/// The bytes a fetch will hold in memory: what it can return, at most
/// `max_bytes` but at least one whole batch (no larger than a frame).
fn need(server: &super::ServerConfig, max_bytes: u64, available: Option<u64>) -> u64 {
    let most = max_bytes
        .max(server.max_frame_bytes)
        .min(server.max_queued_bytes);
    available.map_or(most, |a| a.min(most))
}

/// Takes `bytes` of `max_response_bytes`, waiting for room.
async fn reserve(broker: &Broker, bytes: u64) -> Option<OwnedSemaphorePermit> {
    if bytes == 0 {
        return None;
    }
    // `need` keeps it within max_queued_bytes, a u32 (checked by the config).
    Arc::clone(&broker.responses)
        .acquire_many_owned(bytes as u32)
        .await
        .ok()
}

/// [`reserve`] without waiting: `None` when there is no room now.
fn try_reserve(broker: &Broker, bytes: u64) -> Option<Option<OwnedSemaphorePermit>> {
    if bytes == 0 {
        return Some(None);
    }
    Arc::clone(&broker.responses)
        .try_acquire_many_owned(bytes as u32)
        .ok()
        .map(Some)
}

/// A FETCH's limits.
#[derive(Clone, Copy)]
struct Fetch {
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
}

/// One partition a fetch reads, and where its answer goes.
struct Wanted {
    topic: usize,
    slot: usize,
    partition: Arc<Partition>,
    offset: u64,
    max_bytes: u64,
}

impl Fetch {
    /// Answers at once when enough is there (or an offset is out of range:
    /// the read reports it); long-polls in a task otherwise.
    async fn dispatch(
        self,
        broker: &Arc<Broker>,
        peer: &Peer,
        correlation_id: u32,
        topics: Vec<FetchTopic>,
    ) -> Reply {
        let server = &broker.config.server;
        // A response never holds more than a connection may queue.
        let max_bytes = u64::from(self.max_bytes).min(server.max_queued_bytes);
        let mut results = Vec::with_capacity(topics.len());
        let mut wanted = Vec::new();
        for (ti, t) in topics.into_iter().enumerate() {
            let topic = known(&broker.topics, &t.topic);
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for (slot, p) in t.partitions.into_iter().enumerate() {
                let result = match topic
                    .clone()
                    .and_then(|topic| partition_of(&topic, p.partition))
                {
                    Ok(partition) => {
                        wanted.push(Wanted {
                            topic: ti,
                            slot,
                            partition,
                            offset: p.offset,
                            max_bytes: u64::from(p.max_bytes),
                        });
                        // Filled in by the read.
                        Err(ErrorBody::new(ErrorCode::UnknownServerError, "not read"))
                    }
                    Err(e) => Err(e),
                };
                partitions.push(PartitionResult {
                    partition: p.partition,
                    result,
                });
            }
            results.push(TopicResults {
                topic: t.topic,
                partitions,
            });
        }
        let ends: Vec<u64> = wanted.iter().map(|w| w.partition.visible_end()).collect();
        let available = available(&wanted, &ends);
        if available.is_none_or(|a| a >= u64::from(self.min_bytes))
            || self.max_wait_ms == 0
            || wanted.is_empty()
        {
            let memory = reserve(broker, need(server, max_bytes, available)).await;
            let memory = read_all(&wanted, &ends, max_bytes, &mut results, memory).await;
            return Reply::Now(Answer {
                response: Response {
                    correlation_id,
                    body: Ok(ResponseBody::Fetched(results)),
                },
                memory,
            });
        }
        let wait = Duration::from_millis(u64::from(self.max_wait_ms)).min(server.max_fetch_wait);
        let poll = LongPoll {
            broker: Arc::clone(broker),
            wanted,
            max_bytes,
            min_bytes: u64::from(self.min_bytes),
            deadline: Instant::now() + wait,
            gone: peer.gone.clone(),
        };
        Reply::Later(tokio::spawn(async move {
            let memory = poll.run(&mut results).await;
            Answer {
                response: Response {
                    correlation_id,
                    body: Ok(ResponseBody::Fetched(results)),
                },
                memory,
            }
        }))
    }
}

/// Bytes the wanted partitions could return up to `ends`, counted from
/// index positions; `None` when an offset is out of range (the read says
/// so at once).
fn available(wanted: &[Wanted], ends: &[u64]) -> Option<u64> {
    let mut total = 0u64;
    for (w, &end) in wanted.iter().zip(ends) {
        total += w.partition.log().available_bytes(w.offset, end)?;
    }
    Some(total)
}

/// Reads each wanted partition in order under the memory reserved, at most
/// `max_bytes` in all (but the first batch found comes whole), and gives
/// back what the batches read did not need (the reservation assumed the
/// largest answer). Up to `ends`, not beyond: what arrived since would not
/// fit in the reservation. Cached data is read here; a read that would wait
/// for the device goes to the blocking pool, so that it never holds up this
/// worker's other tasks.
async fn read_all(
    wanted: &[Wanted],
    ends: &[u64],
    max_bytes: u64,
    results: &mut [TopicResults<FetchedPartition>],
    mut memory: Option<OwnedSemaphorePermit>,
) -> Option<OwnedSemaphorePermit> {
    let mut used = 0u64;
    for (w, &end) in wanted.iter().zip(ends) {
        if w.partition.is_closed() {
            // Deleted (or the broker stopping) while the fetch waited.
            results[w.topic].partitions[w.slot].result = Err(storage_error(StorageError::Closed));
            continue;
        }
        let room = w.max_bytes.min(max_bytes.saturating_sub(used));
        let first = used == 0;
        let (offset, partition) = (w.offset, Arc::clone(&w.partition));
        let found = match read(&partition, offset, room, end, Wait::No, first) {
            Err(StorageError::WouldBlock) => tokio::task::spawn_blocking(move || {
                read(&partition, offset, room, end, Wait::Yes, first)
            })
            .await
            .unwrap_or_else(|e| {
                Err(StorageError::Fenced {
                    reason: format!("read task failed: {e}"),
                })
            }),
            other => other,
        };
        results[w.topic].partitions[w.slot].result = match found {
            Ok(found) => {
                used += found.bytes() as u64;
                Ok(found.into_fetched())
            }
            Err(e) => Err(storage_error(e)),
        };
    }
    if let Some(permit) = memory.as_mut() {
        let spare = permit.num_permits().saturating_sub(used as usize);
        drop(permit.split(spare));
    }
    memory
}

/// A fetch waiting for data.
struct LongPoll {
    broker: Arc<Broker>,
    wanted: Vec<Wanted>,
    max_bytes: u64,
    min_bytes: u64,
    deadline: Instant,
    gone: watch::Receiver<bool>,
}

impl LongPoll {
    /// Waits for at least `min_bytes` over the partitions, the deadline,
    /// shutdown, a partition closing or the client leaving; then reads
    /// once. Each append only wakes it to count the bytes now available
    /// from index positions; nothing is read or checked until they suffice.
    async fn run(
        mut self,
        results: &mut [TopicResults<FetchedPartition>],
    ) -> Option<OwnedSemaphorePermit> {
        let mut shutdown = self.broker.shutdown.clone();
        let mut appended: Vec<watch::Receiver<u64>> = self
            .wanted
            .iter()
            .map(|w| w.partition.subscribe())
            .collect();
        let (available, ends) = loop {
            // Mark the current ends seen before counting, so an append
            // after the count wakes the wait below.
            let ends: Vec<u64> = appended
                .iter_mut()
                .map(|r| *r.borrow_and_update())
                .collect();
            let available = available(&self.wanted, &ends);
            if available.is_none_or(|a| a >= self.min_bytes)
                || Instant::now() >= self.deadline
                || *shutdown.borrow()
                || *self.gone.borrow()
                || self.wanted.iter().any(|w| w.partition.is_closed())
            {
                break (available, ends);
            }
            let wanted = &self.wanted;
            let any_change = any_of(
                appended
                    .iter_mut()
                    .map(|r| Box::pin(async move { r.changed().await.is_ok() }) as Waiting<'_>)
                    .chain(wanted.iter().map(|w| {
                        Box::pin(async move {
                            w.partition.closing().await;
                            true
                        }) as Waiting<'_>
                    }))
                    .collect(),
            );
            tokio::select! {
                open = any_change => if !open { break (available, ends) },
                _ = tokio::time::sleep_until(self.deadline) => {}
                // A dropped sender counts as the event it would have sent.
                r = shutdown.changed() => if r.is_err() { break (available, ends) },
                r = self.gone.changed() => if r.is_err() { break (available, ends) },
            }
        };
        let server = &self.broker.config.server;
        let bytes = need(server, self.max_bytes, available);
        // Never wait for room here: answers queued behind this one on its
        // connection may hold that room, and they are written only after
        // this one. Without room (or for a client that left), answer with
        // nothing; the consumer fetches again.
        match try_reserve(&self.broker, bytes) {
            Some(memory) if !*self.gone.borrow() => {
                read_all(&self.wanted, &ends, self.max_bytes, results, memory).await
            }
            _ => {
                for (w, &end) in self.wanted.iter().zip(&ends) {
                    let log = w.partition.log();
                    results[w.topic].partitions[w.slot].result = Ok(FetchedPartition {
                        log_start: log.lowest_offset().min(end),
                        log_end: end,
                        next_offset: w.offset,
                        batches: Vec::new(),
                    });
                }
                None
            }
        }
    }
}

/// A wait the long poll can be woken by; `false` when its source is gone.
type Waiting<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// Resolves when the first of `waits` does, with its output.
async fn any_of(mut waits: Vec<Waiting<'_>>) -> bool {
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if let std::task::Poll::Ready(open) = w.as_mut().poll(cx) {
                return std::task::Poll::Ready(open);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The protocol error for a storage failure.
pub fn storage_error(e: StorageError) -> ErrorBody {
    let message = e.to_string();
    if matches!(
        e,
        StorageError::Io { .. }
            | StorageError::BadLayout { .. }
            | StorageError::DiskFull { .. }
            | StorageError::Corrupt { .. }
    ) {
        warn_now_and_then(&message);
    }
    match e {
        StorageError::OffsetOutOfRange { lowest, next, .. } => {
            let mut body = ErrorBody::new(ErrorCode::OffsetOutOfRange, message);
            body.range = Some((lowest, next));
            body
        }
        StorageError::InvalidBatch(BatchError::RecordTooLarge { .. })
        | StorageError::BatchTooLarge { .. } => ErrorBody::new(ErrorCode::RecordTooLarge, message),
        StorageError::InvalidBatch(_) => ErrorBody::new(ErrorCode::InvalidBatch, message),
        StorageError::TimestampAhead { .. } => ErrorBody::new(ErrorCode::InvalidTimestamp, message),
        StorageError::OutOfOrderSequence { .. } => {
            ErrorBody::new(ErrorCode::OutOfOrderSequence, message)
        }
        StorageError::InvalidProducerEpoch { .. } => {
            ErrorBody::new(ErrorCode::InvalidProducerEpoch, message)
        }
        StorageError::DiskFull { .. } => ErrorBody::new(ErrorCode::DiskFull, message),
        StorageError::Corrupt { resume_at, .. } => {
            let mut body = ErrorBody::new(ErrorCode::CorruptData, message);
            body.resume_at = resume_at;
            body
        }
        StorageError::Closed => ErrorBody::new(
            ErrorCode::UnknownTopic,
            "the topic was deleted or the broker is stopping",
        ),
        StorageError::Fenced { .. }
        | StorageError::Io { .. }
        | StorageError::BadLayout { .. }
        | StorageError::OldFormat { .. }
        | StorageError::Reset
        | StorageError::WouldBlock => ErrorBody::new(ErrorCode::StorageError, message),
    }
}

/// Logs a storage failure a client was told of, at most once every ten
/// seconds (a full disk refuses every produce), counting the rest.
fn warn_now_and_then(message: &str) {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let now = super::topic::now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let unlogged = QUIET.swap(0, Ordering::Relaxed);
        tracing::warn!(error = %message, unlogged, "storage error answered to a client");
    } else {
        QUIET.fetch_add(1, Ordering::Relaxed);
    }
}

/// The protocol error for a topic operation's failure.
pub fn topic_error(e: TopicError) -> ErrorBody {
    let message = e.to_string();
    match e {
        TopicError::InvalidName { .. } => ErrorBody::new(ErrorCode::InvalidTopicName, message),
        TopicError::Unknown(_) => ErrorBody::new(ErrorCode::UnknownTopic, message),
        TopicError::AlreadyExists(_) => ErrorBody::new(ErrorCode::TopicAlreadyExists, message),
        TopicError::TooMany { .. } => ErrorBody::new(ErrorCode::TooManyTopics, message),
        TopicError::TooManyPartitions { .. } => {
            ErrorBody::new(ErrorCode::TooManyPartitions, message)
        }
        TopicError::InvalidConfig { .. } => ErrorBody::new(ErrorCode::InvalidConfig, message),
        TopicError::Storage { source, .. } => {
            let mut body = storage_error(source);
            body.message = message;
            body
        }
        TopicError::Io { .. } | TopicError::Broken { .. } => {
            ErrorBody::new(ErrorCode::StorageError, message)
        }
    }
}
