//! The batching producer: records accumulate per topic into a batch, which
//! is sent when it reaches `batch_bytes` or has waited `linger` (Kafka's
//! `batch.size` and `linger.ms`). Sends are pipelined on the connection.
//! Each send resolves to its record's offset once the broker has
//! acknowledged the batch (as durably as the topic's `flush` mode says).
//!
//! Ordering is per topic: a topic's batches go out in the order their
//! records were sent, so its offsets follow send order (sends to one topic
//! from several tasks count in the order they reach it). Topics do not wait
//! for each other: while a topic's batch waits to be sent (for room in
//! `max_in_flight_bytes`, for a reconnection, for the socket), later sends
//! to that topic wait behind it, and sends to other topics go on. What the
//! topics share still applies to all: when the window is full or the
//! connection down, every topic's next batch waits for it.
//!
//! A batch whose connection breaks in flight fails with
//! [`ClientError::Disconnected`]: it may or may not have been stored. The
//! producer does not resend it (that could store it twice).
//!
//! Dropping the last clone of a producer without [`Producer::flush`] still
//! sends its open batches, from a task on the runtime; their deliveries
//! resolve as usual. Flush (or await the deliveries) to know they were
//! stored before the program exits.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spool::batch::{BatchBuilder, Codec};
use spool::protocol::{Acks, REQUEST_HEADER_LEN};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::partitioner::Partitioner;

/// How the producer batches.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Send a topic's batch once it holds this many bytes.
    pub batch_bytes: usize,
    /// Send a batch once its first record has waited this long.
    pub linger: Duration,
    /// Bytes of batches sent and not yet acknowledged; `send` waits beyond it.
    pub max_in_flight_bytes: usize,
    /// How each batch's records are compressed (Kafka's
    /// `compression.type`); the broker stores them as sent. A batch that
    /// would not shrink is sent uncompressed.
    pub compression: Codec,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight_bytes: 64 << 20,
            compression: Codec::None,
        }
    }
}

type Outcome = Option<Result<u64>>;

/// A batch being filled.
struct Open {
    builder: BatchBuilder,
    result: watch::Sender<Outcome>,
    started: Instant,
}

/// A partition's open batch, if it has one, behind the partition's own
/// lock. The lock is held across a send of the partition's batch (the waits
/// for the window, the connection and the socket), so the partition's
/// batches leave in order without holding back other partitions.
type Slot = Arc<tokio::sync::Mutex<Option<Open>>>;

/// A topic and one of its partitions.
type Key = (Arc<str>, u32);

/// What the producer knows of a topic: its partition count (looked up
/// again after [`METADATA_AGE`]) and where its keyless records go.
struct TopicMeta {
    partitions: u32,
    learnt: Instant,
    partitioner: Arc<Partitioner>,
}

/// How long a topic's partition count is trusted before it is looked up
/// again (Kafka's `metadata.max.age.ms` is 5 minutes; partitions are added
/// rarely, and a producer that misses them only spreads less).
const METADATA_AGE: Duration = Duration::from_secs(30);
/// How soon a failed lookup is tried again.
const METADATA_RETRY: Duration = Duration::from_secs(1);

struct Shared {
    client: Client,
    /// For partition counts: a connection of its own, so that a lookup
    /// never waits behind produces the broker has not answered yet.
    admin: Client,
    config: ProducerConfig,
    /// Every partition sent to. The lock is held only to look a slot up,
    /// never across a wait. Slots stay once made: one removed while a send
    /// waits on its lock would give the partition a second lock, and
    /// batches under the two could leave out of order. (Names are `Arc`s:
    /// the linger timer lists every slot each tick.)
    topics: std::sync::Mutex<HashMap<Key, Slot>>,
    meta: std::sync::Mutex<HashMap<Arc<str>, TopicMeta>>,
    in_flight: Arc<Semaphore>,
    /// Batches sent and not yet answered.
    outstanding: watch::Sender<usize>,
    /// The broker's `max_frame_bytes`, learnt on the first send (0: not
    /// yet): a batch is sent before a record would take it past a frame.
    max_frame: AtomicU32,
    /// Set by [`Producer::discard`]: batches not yet written are dropped,
    /// even one a send or the linger timer is about to write.
    discarded: AtomicBool,
}

/// A batching, pipelining producer. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use spool_client::{Client, Producer, ProducerConfig};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let dir = tempfile::tempdir().unwrap();
/// # let mut config = spool::broker::Config::default();
/// # config.server.listen = "127.0.0.1:0".parse().unwrap();
/// # config.kafka.listen = "127.0.0.1:0".into();
/// # config.server.data_dir = dir.path().to_owned();
/// # let broker = spool::broker::Broker::start(config).await.unwrap();
/// # let addr = broker.local_addr().to_string();
/// let client = Client::connect(&addr).await?;
/// let producer = Producer::new(
///     client,
///     ProducerConfig {
///         batch_bytes: 64 * 1024,             // Kafka's batch.size
///         linger: Duration::from_millis(2),   // and linger.ms
///         ..ProducerConfig::default()
///     },
/// );
/// let mut deliveries = Vec::new();
/// for i in 0..100 {
///     let value = format!("reading {i}");
///     deliveries.push(producer.send("sensors", Some(b"probe-7"), value.as_bytes()).await?);
/// }
/// producer.flush().await?; // everything sent has been answered
/// for (i, delivery) in deliveries.into_iter().enumerate() {
///     assert_eq!(delivery.await?, i as u64); // each record's offset
/// }
/// # broker.shutdown().await;
/// # Ok::<(), spool_client::ClientError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

/// The offset a sent record will get. Await it (it is a future), or drop
/// it if the offset does not matter.
#[derive(Debug)]
pub struct Delivery {
    result: watch::Receiver<Outcome>,
    index: u64,
    partition: u32,
}

impl Delivery {
    /// The partition the record was sent to (its offset is in that
    /// partition).
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The outcome if it is known already, without waiting. Cheap while it
    /// is not: one atomic load, no lock.
    pub fn outcome_now(&self) -> Option<Result<u64>> {
        if matches!(self.result.has_changed(), Ok(false)) {
            return None;
        }
        match self.result.borrow().as_ref()? {
            Ok(base) => Some(Ok(base + self.index)),
            Err(e) => Some(Err(e.clone())),
        }
    }
}

impl IntoFuture for Delivery {
    type Output = Result<u64>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<u64>> + Send>>;

    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            let outcome = self
                .result
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ClientError::Closed)?;
            match outcome.as_ref().expect("waited for Some") {
                Ok(base) => Ok(base + self.index),
                Err(e) => Err(e.clone()),
            }
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_bytes.max(1))),
            admin: client.with_own_connection(),
            client,
            config,
            topics: std::sync::Mutex::new(HashMap::new()),
            meta: std::sync::Mutex::new(HashMap::new()),
            outstanding: watch::Sender::new(0),
            max_frame: AtomicU32::new(0),
            discarded: AtomicBool::new(false),
        });
        tokio::spawn(linger(Arc::downgrade(&shared)));
        Producer { shared }
    }

    /// Adds a record to its partition's batch and returns its [`Delivery`].
    /// The partition is Kafka's default partitioner's choice: murmur2 of the
    /// key modulo the topic's partitions, or for a keyless record the
    /// topic's sticky partition, which moves on each time a batch of it is
    /// sent ([`crate::partitioner`]). Returns at once unless the record
    /// fills the batch, which is then sent: that waits for room in
    /// `max_in_flight_bytes` (and for the connection). A send also waits for
    /// an earlier send to the same partition that is still sending, never
    /// for one to another.
    pub async fn send(&self, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<Delivery> {
        self.send_with_headers(topic, key, value, &[]).await
    }

    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Delivery> {
        self.send_record(topic, key, value, headers, None).await
    }

    /// [`Producer::send_with_headers`] with the record's timestamp (ms since
    /// the epoch) given, instead of the time of the send.
    pub async fn send_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp: Option<i64>,
    ) -> Result<Delivery> {
        let shared = &self.shared;
        let (partitions, partitioner) = shared.topic_meta(topic).await;
        let partition = partitioner.partition(key, partitions);
        let headers: Vec<(&str, Option<&[u8]>)> =
            headers.iter().map(|&(name, v)| (name, Some(v))).collect();
        self.send_to(topic, partition, key, Some(value), &headers, timestamp)
            .await
    }

    /// [`Producer::send_to`] to the partition the partitioner picks.
    pub async fn send_any(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: Option<i64>,
    ) -> Result<Delivery> {
        let (partitions, partitioner) = self.shared.topic_meta(topic).await;
        let partition = partitioner.partition(key, partitions);
        self.send_to(topic, partition, key, value, headers, timestamp)
            .await
    }

    /// Adds a record to the batch of a partition chosen by the caller. A
    /// value of `None` is a record without one (Kafka's tombstone), and so
    /// is a header's: the batch format has room for both, and Kafka's
    /// clients send them.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: Option<i64>,
    ) -> Result<Delivery> {
        let shared = &self.shared;
        let key_of = (Arc::<str>::from(topic), partition);
        let slot = shared.slot(&key_of);
        let room = shared.frame_room(topic).await;
        // tokio's Mutex is fair: sends to the topic append in the order they
        // asked for its lock.
        let mut open = slot.lock().await;
        // A record that would take the open batch past what one frame holds
        // starts a new batch (sending the open one), so that every batch can
        // be sent; only a record too large on its own fails.
        // The largest the record can encode to, whatever its deltas.
        let size = BatchBuilder::record_size(i64::MAX, i32::MAX, key, value, headers);
        if open
            .as_ref()
            .is_some_and(|b| !b.builder.is_empty() && b.builder.size() + size > room)
        {
            let full = open.take().expect("checked");
            shared.dispatch(&key_of, full).await;
        }
        let batch = open.get_or_insert_with(|| Open {
            builder: BatchBuilder::with_capacity(shared.config.batch_bytes),
            result: watch::Sender::new(None),
            started: Instant::now(),
        });
        batch
            .builder
            .push(timestamp.unwrap_or_else(now_ms), key, value, headers);
        let delivery = Delivery {
            result: batch.result.subscribe(),
            index: batch.builder.len() as u64 - 1,
            partition,
        };
        if batch.builder.size() >= shared.config.batch_bytes {
            let full = open.take().expect("just used");
            shared.dispatch(&key_of, full).await;
        }
        Ok(delivery)
    }

    /// Tells the producer how many partitions `topic` has, as a caller
    /// that has just described it knows: the producer looks it up itself
    /// otherwise (on the first send, and every 30 seconds).
    pub fn set_partition_count(&self, topic: &str, partitions: u32) {
        self.shared.learn(topic, partitions.max(1), Instant::now());
    }

    /// Sends every open batch and waits until all sent batches are answered.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.shared;
        // Taking a topic's lock waits out its send in progress, whose batch
        // may hold records sent before this flush: it is then counted in
        // `outstanding`. One topic at a time, as a topic waits here only for
        // what all share (the window, the connection).
        for (key, slot) in shared.slots() {
            let mut open = slot.lock().await;
            if let Some(batch) = open.take() {
                shared.dispatch(&key, batch).await;
            }
        }
        let mut outstanding = shared.outstanding.subscribe();
        outstanding
            .wait_for(|n| *n == 0)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(())
    }
}

impl Producer {
    /// Drops every batch not yet sent: their deliveries fail with
    /// [`ClientError::Unsent`], and nothing of them reaches the broker.
    /// Batches already sent are not affected. For a caller that must not
    /// write anything after a failure it has seen.
    pub async fn discard(&self) {
        self.shared.discarded.store(true, Ordering::Release);
        for (_, slot) in self.shared.slots() {
            if let Some(batch) = slot.lock().await.take() {
                batch.result.send_replace(Some(Err(ClientError::Unsent(
                    "discarded before it was sent".into(),
                ))));
            }
        }
    }
}

impl Shared {
    /// The partition's slot, made on its first send.
    fn slot(&self, key: &Key) -> Slot {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = topics.get(key) {
            return Arc::clone(slot);
        }
        Arc::clone(topics.entry(key.clone()).or_default())
    }

    /// Every partition's slot, at this moment.
    fn slots(&self) -> Vec<(Key, Slot)> {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .iter()
            .map(|(key, slot)| (key.clone(), Arc::clone(slot)))
            .collect()
    }

    /// The topic's partition count and partitioner, looked up on the first
    /// send and again once [`METADATA_AGE`] old. A topic that does not
    /// exist yet counts one partition: a produce creates it (when the broker
    /// auto-creates topics) with at least that one.
    async fn topic_meta(&self, topic: &str) -> (u32, Arc<Partitioner>) {
        let known = {
            let meta = self.meta.lock().unwrap_or_else(PoisonError::into_inner);
            meta.get(topic)
                .map(|m| (m.partitions, Arc::clone(&m.partitioner), m.learnt))
        };
        if let Some((partitions, partitioner, learnt)) = known {
            if learnt.elapsed() < METADATA_AGE {
                return (partitions, partitioner);
            }
        }
        let (partitions, learnt) = match self.admin.partition_count(topic).await {
            Ok(n) => (n.max(1), Instant::now()),
            // Tried again soon; meanwhile partition 0, which every topic has.
            Err(_) => (1, Instant::now() - METADATA_AGE + METADATA_RETRY),
        };
        (partitions, self.learn(topic, partitions, learnt))
    }

    /// Records `topic`'s partition count, as of `learnt`; returns its
    /// partitioner (made on the first record of the topic).
    fn learn(&self, topic: &str, partitions: u32, learnt: Instant) -> Arc<Partitioner> {
        let mut meta = self.meta.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = meta.entry(topic.into()).or_insert_with(|| TopicMeta {
            partitions,
            learnt,
            partitioner: Arc::new(Partitioner::new()),
        });
        entry.partitions = partitions;
        entry.learnt = learnt;
        Arc::clone(&entry.partitioner)
    }

    /// A batch of `key`'s partition is leaving: if keyless records were
    /// going there, the next ones go to the next partition (sticky
    /// batching).
    fn batch_closed(&self, key: &Key) {
        let meta = self.meta.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = meta.get(&key.0) {
            if m.partitioner.partition(None, m.partitions) == key.1 {
                m.partitioner.batch_closed();
            }
        }
    }

    /// Sends a finished batch (called with its topic's lock held, which
    /// keeps the topic's batches in send order) and resolves its deliveries
    /// when answered.
    /// Bytes a batch to `topic` may take: the broker's frame limit less the
    /// produce request around the batch.
    async fn frame_room(&self, topic: &str) -> usize {
        let mut max = self.max_frame.load(Ordering::Relaxed);
        if max == 0 {
            // Unknown until connected; if that fails, the send fails anyway.
            max = self.client.max_frame_bytes().await.unwrap_or(u32::MAX);
            self.max_frame.store(max, Ordering::Relaxed);
        }
        // Header, acks, topic count, topic, partition count, partition,
        // batch length.
        (max as usize).saturating_sub(REQUEST_HEADER_LEN + 1 + 4 + 2 + topic.len() + 4 + 4 + 4)
    }

    async fn dispatch(self: &Arc<Self>, key: &Key, batch: Open) {
        self.batch_closed(key);
        let (topic, partition) = (&*key.0, key.1);
        if self.discarded.load(Ordering::Acquire) {
            batch.result.send_replace(Some(Err(ClientError::Unsent(
                "discarded before it was sent".into(),
            ))));
            return;
        }
        let bytes = Bytes::from(finish(batch.builder, self.config.compression));
        let permits = bytes.len().min(self.config.max_in_flight_bytes.max(1)) as u32;
        let permit: OwnedSemaphorePermit = match Arc::clone(&self.in_flight)
            .acquire_many_owned(permits)
            .await
        {
            Ok(p) => p,
            Err(_) => {
                batch.result.send_replace(Some(Err(ClientError::Closed)));
                return;
            }
        };
        let limit = self.client.config().request_timeout;
        let connected = self.client.connection().await;
        if self.discarded.load(Ordering::Acquire) {
            // Discarded while this batch waited for room or a connection.
            batch.result.send_replace(Some(Err(ClientError::Unsent(
                "discarded before it was sent".into(),
            ))));
            return;
        }
        let sent = match connected {
            // A broker that stops reading must not hold the topic (and the
            // connection's writer) forever; a write cut off here marks the
            // connection broken, so nothing follows half a frame.
            Ok(conn) => tokio::time::timeout(
                limit,
                conn.send_produce(topic, partition, Acks::Commit, &bytes),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout(limit))),
            Err(e) => Err(e),
        };
        let response = match sent {
            Ok(rx) => rx,
            Err(e) => {
                batch.result.send_replace(Some(Err(e)));
                return;
            }
        };
        self.outstanding.send_modify(|n| *n += 1);
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(limit, response).await {
                Err(_) => Err(ClientError::Timeout(limit)),
                Ok(Err(_)) => Err(ClientError::Disconnected("connection closed".into())),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Ok(Ok(r))) => r
                    .produced()
                    .map(|p| p.base_offset)
                    .map_err(ClientError::from),
            };
            batch.result.send_replace(Some(outcome));
            drop(permit);
            shared.outstanding.send_modify(|n| *n -= 1);
        });
    }
}

/// A producer dropped without [`Producer::flush`] still sends its open
/// batches: from a task on the current runtime, whose deliveries resolve as
/// usual (await them, or flush before dropping, to know they were stored).
/// Outside a runtime they cannot be sent; that loss is logged as an error.
impl Drop for Shared {
    fn drop(&mut self) {
        let topics = self
            .topics
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let open: Vec<(Key, Open)> = topics
            .drain()
            .filter_map(|(key, slot)| {
                // Whoever holds a slot's lock holds the producer too: all are free.
                let batch = slot.try_lock().ok()?.take()?;
                Some((key, batch))
            })
            .collect();
        if open.is_empty() {
            return;
        }
        let records: usize = open.iter().map(|(_, b)| b.builder.len()).sum();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                records,
                "producer dropped outside a runtime with unsent records: they are lost"
            );
            return;
        };
        tracing::warn!(
            records,
            "producer dropped without flush(); sending its open batches"
        );
        let heir = Arc::new(Shared {
            client: self.client.clone(),
            admin: self.admin.clone(),
            config: self.config.clone(),
            topics: std::sync::Mutex::new(HashMap::new()),
            meta: std::sync::Mutex::new(HashMap::new()),
            in_flight: Arc::clone(&self.in_flight),
            outstanding: watch::Sender::new(0),
            max_frame: AtomicU32::new(self.max_frame.load(Ordering::Relaxed)),
            // A discarded producer has no open batches left to hand on.
            discarded: AtomicBool::new(false),
        });
        runtime.spawn(async move {
            for (key, batch) in open {
                heir.dispatch(&key, batch).await;
            }
        });
    }
}

/// Sends batches that have waited `linger`, until the producer is dropped.
async fn linger(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => (s.config.linger / 2).max(Duration::from_millis(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for (key, slot) in shared.slots() {
            // A partition whose lock is taken is skipped: its holder is sending
            // (so there is no open batch) or appending, and the next tick
            // looks again.
            let Ok(mut open) = slot.try_lock_owned() else {
                continue;
            };
            let Some(batch) = open.take_if(|b| b.started.elapsed() >= shared.config.linger) else {
                continue;
            };
            // In a task of its own, with the partition's lock: a wait to
            // send one partition's batch holds back no other's.
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                shared.dispatch(&key, batch).await;
                drop(open);
            });
        }
    }
}

/// The finished batch, compressed with `codec` when that makes it smaller
/// (so a batch sized to fit a frame uncompressed still fits).
fn finish(builder: BatchBuilder, codec: Codec) -> Vec<u8> {
    if codec == Codec::None {
        return builder.finish();
    }
    let plain = builder.clone().finish();
    let packed = builder.finish_compressed(codec);
    if packed.len() < plain.len() {
        packed
    } else {
        plain
    }
}
