//! What the broker does for each request: the APIs of the protocol, mapped
//! onto topics and logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::topic::{Topic, TopicError, Topics};
use super::Broker;
use crate::batch::BatchError;
use crate::protocol::{
    Acks, ErrorBody, ErrorCode, OffsetSpec, Request, Response, ResponseBody, TopicDescription,
    API_VERSIONS,
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
        Request::Produce {
            topic,
            acks,
            mut batch,
        } => {
            let topic = match produce_target(broker, topic).await {
                Ok(t) => t,
                Err(e) if acks == Acks::None => return nothing(e),
                Err(e) => return now(Err(e)),
            };
            let appended = match append(&topic, &mut batch) {
                Ok(a) => a,
                Err(e) if acks == Acks::None => return nothing(storage_error(e)),
                Err(e) => return now(Err(storage_error(e))),
            };
            if acks == Acks::None {
                // Nobody waits for it, but consumers of a flush = "always"
                // topic see it only once it is synced: ask for the sync.
                topic.request_sync();
                return Reply::Nothing;
            }
            let body = ResponseBody::Produced {
                base_offset: appended.base_offset,
                log_append_time: appended.log_append_time.unwrap_or(-1),
                log_start: topic.log().lowest_offset(),
            };
            if topic.flush() != super::config::Flush::Always {
                return now(Ok(body));
            }
            Reply::Later(tokio::spawn(async move {
                let result = topic.committed(appended.next_offset).await;
                Response {
                    correlation_id,
                    body: result.map(|()| body).map_err(storage_error),
                }
                .into()
            }))
        }
        Request::Fetch {
            topic,
            offset,
            max_bytes,
            max_wait_ms,
            min_bytes,
        } => {
            let topic = match known(&broker.topics, &topic) {
                Ok(t) => t,
                Err(e) => return now(Err(e)),
            };
            let server = &broker.config.server;
            // A response never holds more than a connection may queue.
            let max_bytes = u64::from(max_bytes).min(server.max_queued_bytes);
            let wanted = u64::from(min_bytes);
            let end = topic.visible_end();
            let available = topic.log().available_bytes(offset, end);
            // Serve at once when the data is there (or the offset is out of
            // range: the read reports it); long-poll in a task otherwise.
            if available.is_none_or(|a| a >= wanted) || max_wait_ms == 0 {
                let memory = reserve(broker, need(server, max_bytes, available)).await;
                let (body, memory) = read_within(&topic, offset, max_bytes, end, memory).await;
                return Reply::Now(Answer {
                    response: Response {
                        correlation_id,
                        body,
                    },
                    memory,
                });
            }
            let wait = Duration::from_millis(u64::from(max_wait_ms)).min(server.max_fetch_wait);
            let poll = LongPoll {
                broker: Arc::clone(broker),
                topic,
                offset,
                max_bytes,
                wanted,
                deadline: Instant::now() + wait,
                gone: peer.gone.clone(),
            };
            Reply::Later(tokio::spawn(async move {
                let (body, memory) = poll.run().await;
                Answer {
                    response: Response {
                        correlation_id,
                        body,
                    },
                    memory,
                }
            }))
        }
        Request::ListOffsets { topic, spec } => {
            let topic = match known(&broker.topics, &topic) {
                Ok(t) => t,
                Err(e) => return now(Err(e)),
            };
            if !matches!(spec, OffsetSpec::Timestamp(_)) {
                return now(list_offsets(&topic, spec));
            }
            // A search by time reads batch headers, perhaps from the device.
            let found = tokio::task::spawn_blocking(move || list_offsets(&topic, spec)).await;
            now(found.unwrap_or_else(|e| {
                Err(ErrorBody::new(
                    ErrorCode::UnknownServerError,
                    format!("task failed: {e}"),
                ))
            }))
        }
    }
}

/// Appends a batch without stalling the other tasks of this worker thread
/// on slow I/O. A roll's work (sealing, making the next segment, retention)
/// is done in the background, so an append is normally a copy into the
/// page cache, done right here: moving every append aside cost a sixth of
/// bulk throughput (docs/BENCHMARKS.md). Only while a roll would still find
/// that work undone (the background task has not caught up) does the
/// append run with the worker's other tasks moved to another thread
/// (`block_in_place`, multi-threaded runtime only).
fn append(topic: &Topic, batch: &mut [u8]) -> Result<crate::storage::Appended, StorageError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if topic.log().append_may_block()
        && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(|| topic.append(batch))
    } else {
        topic.append(batch)
    }
}

/// A produce with `acks = 0` that failed: nobody hears of it but the log.
fn nothing(e: ErrorBody) -> Reply {
    tracing::debug!(code = %e.code, message = %e.message, "fire-and-forget produce failed");
    Reply::Nothing
}

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
    let log = topic.log();
    let sidecars = log.sidecars();
    let current = topic.current();
    ResponseBody::Description(TopicDescription {
        log_start: log.lowest_offset(),
        log_end: topic.visible_end(),
        size_bytes: log.size_bytes(),
        segments: log.segment_count() as u32,
        settings: current.effective.to_pairs(),
        torn_files: sidecars.len() as u32,
        torn_bytes: sidecars.iter().map(|s| s.bytes).sum(),
        sources: current.sources,
    })
}

fn list_offsets(topic: &Topic, spec: OffsetSpec) -> Outcome {
    let log = topic.log();
    let end = topic.visible_end();
    let start = log.lowest_offset().min(end);
    let offset = match spec {
        OffsetSpec::Earliest => start,
        OffsetSpec::Latest => end,
        OffsetSpec::Timestamp(t) => log
            .offset_for_timestamp(t)
            .map_err(storage_error)?
            .unwrap_or(end)
            .min(end),
    };
    Ok(ResponseBody::Offsets {
        offset,
        log_start: start,
        log_end: end,
    })
}

/// Batches read for one fetch.
struct Found {
    chunks: Vec<Bytes>,
    next_offset: u64,
    log_start: u64,
    log_end: u64,
}

impl Found {
    fn into_body(self) -> ResponseBody {
        ResponseBody::Fetched {
            log_start: self.log_start,
            log_end: self.log_end,
            next_offset: self.next_offset,
            batches: self.chunks,
        }
    }
}

/// Reads whole batches from `offset` up to `max_bytes` (at least one batch),
/// crossing segments. With [`Wait::No`] it never waits for the device: a
/// first batch not in the page cache is [`StorageError::WouldBlock`], and
/// the response ends before a later one that is not.
fn read(
    topic: &Topic,
    offset: u64,
    max_bytes: u64,
    end: u64,
    wait: Wait,
) -> Result<Found, StorageError> {
    let log = topic.log();
    let first = log.read_batches_with(offset, max_bytes, end, true, wait)?;
    let mut found = Found {
        next_offset: first.next_offset,
        log_start: first.log_start,
        log_end: first.log_end,
        chunks: Vec::new(),
    };
    let mut total = first.bytes.len() as u64;
    if !first.bytes.is_empty() {
        found.chunks.push(first.bytes);
    }
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

/// Reads for a fetch under the memory it reserved, then gives back what the
/// batches read did not need (the reservation assumed the largest answer).
/// Cached data is read here; a read that would wait for the device goes to
/// the blocking pool, so that it never holds up this worker's other tasks.
async fn read_within(
    topic: &Arc<Topic>,
    offset: u64,
    max_bytes: u64,
    end: u64,
    mut memory: Option<OwnedSemaphorePermit>,
) -> (Outcome, Option<OwnedSemaphorePermit>) {
    // Up to the end the reservation was counted against, not beyond: what
    // arrived since would not fit in it.
    let found = match read(topic, offset, max_bytes, end, Wait::No) {
        Err(StorageError::WouldBlock) => {
            let topic = Arc::clone(topic);
            tokio::task::spawn_blocking(move || read(&topic, offset, max_bytes, end, Wait::Yes))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Fenced {
                        reason: format!("read task failed: {e}"),
                    })
                })
        }
        other => other,
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => return (Err(storage_error(e)), None),
    };
    let used: usize = found.chunks.iter().map(|c| c.len()).sum();
    if let Some(permit) = memory.as_mut() {
        let spare = permit.num_permits().saturating_sub(used);
        drop(permit.split(spare));
    }
    (Ok(found.into_body()), memory)
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

/// A fetch waiting for data.
struct LongPoll {
    broker: Arc<Broker>,
    topic: Arc<Topic>,
    offset: u64,
    max_bytes: u64,
    wanted: u64,
    deadline: Instant,
    gone: watch::Receiver<bool>,
}

impl LongPoll {
    /// Waits for at least `wanted` bytes past `offset`, the deadline,
    /// shutdown, the topic closing or the client leaving; then reads once.
    /// Each append only wakes it to count the bytes now available from
    /// index positions; nothing is read or checked until they suffice.
    async fn run(mut self) -> (Outcome, Option<OwnedSemaphorePermit>) {
        let mut shutdown = self.broker.shutdown.clone();
        let mut appended = self.topic.subscribe();
        let (available, end) = loop {
            // Mark the current end seen before counting, so an append after
            // the count wakes the wait below.
            let end = *appended.borrow_and_update();
            let available = self.topic.log().available_bytes(self.offset, end);
            if available.is_none_or(|a| a >= self.wanted)
                || Instant::now() >= self.deadline
                || *shutdown.borrow()
                || *self.gone.borrow()
                || self.topic.is_closed()
            {
                break (available, end);
            }
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { break (available, end) },
                _ = tokio::time::sleep_until(self.deadline) => {}
                // A dropped sender counts as the event it would have sent.
                r = shutdown.changed() => if r.is_err() { break (available, end) },
                r = self.gone.changed() => if r.is_err() { break (available, end) },
                _ = self.topic.closing() => {}
            }
        };
        let server = &self.broker.config.server;
        let bytes = need(server, self.max_bytes, available);
        // Never wait for room here: answers queued behind this one on its
        // connection may hold that room, and they are written only after
        // this one. Without room (or for a client that left), answer with
        // nothing; the consumer fetches again.
        let memory = match try_reserve(&self.broker, bytes) {
            Some(memory) if !*self.gone.borrow() => memory,
            _ => {
                let log = self.topic.log();
                let body = ResponseBody::Fetched {
                    log_start: log.lowest_offset().min(end),
                    log_end: end,
                    next_offset: self.offset,
                    batches: Vec::new(),
                };
                return (Ok(body), None);
            }
        };
        read_within(&self.topic, self.offset, self.max_bytes, end, memory).await
    }
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
