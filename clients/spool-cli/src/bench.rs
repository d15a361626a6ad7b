//! `spool bench`: the load generator.
//!
//! Modes, in the manner of `kafka-producer-perf-test` and `iggy-bench`:
//! - `produce`: producers send batches as fast as acknowledgements allow
//!   (`--in-flight` batches pipelined per producer), or at `--rate`.
//! - `consume`: a backlog of `--messages` is produced first (untimed), then
//!   consumers drain it.
//! - `both`: producers and consumers at once; every message carries its send
//!   time, so consumers measure end-to-end latency.
//!
//! With `--kafka HOST:PORT`, producers send the same batches through the
//! broker's Kafka listener instead (Produce v9, acks all, pipelined alike;
//! topics are still made over Spool's protocol): the two front ends
//! measured with one client, whose own cost is the same either way.
//!
//! Each producer and consumer has its own connection. Producer `i` writes
//! topic `i % topics`; consumer `j` reads topic `j % topics` from its start.
//! Throughput counts message payload bytes (1 MB = 10^6 bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spool_client::batch::{self, BatchBuilder};
use spool_client::{Acks, Client, ClientError, Consumer, ConsumerConfig, ErrorCode, StartAt};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Produce,
    Consume,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Produce)]
    mode: Mode,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub(crate) message_size: usize,
    /// Messages per produce request.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch_size: usize,
    /// Messages to produce in all (default 1,000,000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Produce for this long instead of a message count ("30s", "2m").
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Flush mode of the topics the bench creates: always, interval or never.
    #[arg(long, default_value = "never")]
    flush: String,
    /// Produce requests in flight per producer (1: one at a time).
    #[arg(long, default_value_t = 8)]
    pub(crate) in_flight: usize,
    /// Partitions of each topic. Each producer sends its batches to the
    /// partitions in turn (producer i starts at partition i); each consumer
    /// reads every partition.
    #[arg(long, default_value_t = 1)]
    pub(crate) partitions: u32,
    /// Messages per second per producer (default: as fast as possible).
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// After each response, poll the socket this long before sleeping
    /// ("200us"; "0": never). By default the client polls adaptively, only
    /// while responses come back quickly; see docs/BENCHMARKS.md.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    busy_poll: Option<Duration>,
    /// Most bytes per fetch.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    fetch_bytes: u32,
    /// Topics are named PREFIX-0, PREFIX-1, ...; existing ones are recreated.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Keep the topics afterwards.
    #[arg(long)]
    keep: bool,
    /// Produce through the broker's Kafka listener at this address (Kafka's
    /// Produce v9) instead of Spool's protocol; --mode produce only.
    #[arg(long, value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Counters and latencies of one side (produce or consume).
#[derive(Default)]
pub(crate) struct Side {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Side {
    pub(crate) fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[derive(serde::Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    count: u64,
}

impl Latency {
    /// Percentiles in milliseconds of a histogram kept in microseconds.
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        })
    }
}

#[derive(serde::Serialize)]
struct Throughput {
    messages: u64,
    bytes: u64,
    seconds: f64,
    messages_per_sec: f64,
    mb_per_sec: f64,
}

impl Throughput {
    fn of(side: &Side, elapsed: Duration) -> Throughput {
        let messages = side.messages.load(Ordering::Relaxed);
        let bytes = side.bytes.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Throughput {
            messages,
            bytes,
            seconds,
            messages_per_sec: messages as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
        }
    }
}

#[derive(serde::Serialize)]
struct Report {
    mode: Mode,
    /// The protocol producers speak: "spool", or "kafka" (--kafka).
    protocol: &'static str,
    producers: usize,
    consumers: usize,
    topics: usize,
    message_size: usize,
    batch_size: usize,
    in_flight: usize,
    flush: String,
    rate: Option<u64>,
    /// The clients' `--busy-poll`, µs (0: off).
    busy_poll_us: u64,
    produce: Option<Throughput>,
    /// Send to acknowledgement of each produce request, ms.
    produce_latency_ms: Option<Latency>,
    consume: Option<Throughput>,
    /// Send to receipt by a consumer of each message, ms (mode `both`).
    end_to_end_latency_ms: Option<Latency>,
}

/// The configuration of the producers' and consumers' connections.
fn client_config(base: &spool_client::ClientConfig, args: &Args) -> spool_client::ClientConfig {
    spool_client::ClientConfig {
        busy_poll: args
            .busy_poll
            .map(spool_client::BusyPoll::fixed)
            .unwrap_or(base.busy_poll),
        ..base.clone()
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub async fn run(
    broker: &str,
    base: &spool_client::ClientConfig,
    args: Args,
) -> Result<(), String> {
    if args.producers == 0 && args.mode != Mode::Consume
        || args.topics == 0
        || args.batch_size == 0
        || args.in_flight == 0
    {
        return Err(
            "--producers, --topics, --batch-size and --in-flight must be at least 1".into(),
        );
    }
    if args.kafka.is_some() && (args.mode != Mode::Produce || args.rate.is_some()) {
        return Err("--kafka measures producers alone: --mode produce, without --rate".into());
    }
    if args.mode != Mode::Produce && args.consumers == 0 {
        return Err("--consumers must be at least 1 in this mode".into());
    }
    if args.mode == Mode::Both && args.message_size < 8 {
        return Err(
            "--mode both needs --message-size of at least 8 (the send time rides in the value)"
                .into(),
        );
    }
    let admin = crate::connect_with(broker, base.clone()).await?;
    let topics: Vec<String> = (0..args.topics)
        .map(|i| format!("{}-{i}", args.topic_prefix))
        .collect();
    // Whatever happens from here, the topics go afterwards (unless --keep):
    // a failed run must not leave its topics filling the broker's disk.
    let measured = async {
        for topic in &topics {
            match admin.delete_topic(topic).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {}
                Err(e) => return Err(format!("deleting {topic}: {e}")),
            }
            admin
                .create_topic(
                    topic,
                    &[
                        ("flush", &args.flush),
                        ("partitions", &args.partitions.to_string()),
                    ],
                )
                .await
                .map_err(|e| format!("creating {topic}: {e}"))?;
        }
        // Every task it spawns is stopped when it returns, failed or not, so
        // none can produce (and auto-create a topic) after the cleanup.
        let mut tasks = Tasks::default();
        measure(broker, base, &args, &admin, &topics, &mut tasks).await
    }
    .await;
    if !args.keep {
        for topic in &topics {
            match admin.delete_topic(topic).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {}
                Err(e) if measured.is_ok() => {
                    return Err(format!("deleting {topic} after the run: {e}"))
                }
                Err(_) => {}
            }
        }
    }
    print_report(&measured?, args.json)
}

/// The run's producer and consumer tasks, aborted when dropped.
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn watch<T>(&mut self, task: &tokio::task::JoinHandle<T>) {
        self.0.push(task.abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The run itself, once the topics exist.
async fn measure(
    broker: &str,
    base: &spool_client::ClientConfig,
    args: &Args,
    admin: &Client,
    topics: &[String],
    tasks: &mut Tasks,
) -> Result<Report, String> {
    let total = args.messages.unwrap_or(if args.duration.is_some() {
        u64::MAX
    } else {
        1_000_000
    });
    let epoch = Instant::now();

    // Consume mode drains a backlog written first, untimed: `--messages` of
    // it, or as much as the producers write in `--duration`.
    let mut backlog = None;
    if args.mode == Mode::Consume {
        let fill = Arc::new(Side::default());
        let producers =
            spawn_producers(broker, base, args, topics, total, &fill, epoch, tasks).await?;
        join_producers(producers).await?;
        backlog = Some(log_ends(admin, topics).await?);
    }

    let produced = Arc::new(Side::default());
    let consumed = Arc::new(Side::default());
    let progress = match &backlog {
        Some(ends) => progress_bar(args, ends.iter().sum(), false),
        None => progress_bar(args, total, args.duration.is_some()),
    };
    let started = Instant::now();
    let producers = if args.mode == Mode::Consume {
        Vec::new()
    } else {
        spawn_producers(broker, base, args, topics, total, &produced, epoch, tasks).await?
    };
    // Consumers stop at what the producers wrote to their topic: known up
    // front with a message count, told when the producers finish otherwise.
    let per_topic = backlog.unwrap_or_else(|| share(total, args.producers.max(1), args.topics));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<Vec<u64>>);
    let mut consumers = Vec::new();
    if args.mode != Mode::Produce {
        for j in 0..args.consumers {
            let client = crate::connect_with(broker, client_config(base, args)).await?;
            let topic = topics[j % topics.len()].clone();
            let expected = if args.mode == Mode::Consume || args.duration.is_none() {
                Some(per_topic[j % topics.len()])
            } else {
                None
            };
            let side = Arc::clone(&consumed);
            let done = done_rx.clone();
            let config = ConsumerConfig {
                max_bytes: args.fetch_bytes,
                max_wait: Duration::from_millis(100),
                ..ConsumerConfig::default()
            };
            let e2e = args.mode == Mode::Both;
            let task = tokio::spawn(consume(
                client,
                topic,
                j % topics.len(),
                config,
                expected,
                done,
                side,
                e2e,
                epoch,
            ));
            tasks.watch(&task);
            consumers.push(task);
        }
    }
    // Stopped and cleared however the run ends.
    let _ticker = Ticker {
        task: tokio::spawn(tick_progress(
            progress.clone(),
            Arc::clone(&produced),
            Arc::clone(&consumed),
            args.mode,
        )),
        bar: progress,
    };
    let produce_latency = join_producers(producers).await?;
    let produce_elapsed = started.elapsed();
    if args.mode == Mode::Both && args.duration.is_some() {
        // Consumers read up to each topic's end now.
        let _ = done_tx.send(Some(log_ends(admin, topics).await?));
    }
    let mut e2e = histogram();
    for c in consumers {
        let h = c
            .await
            .map_err(|e| format!("consumer task failed: {e}"))??;
        e2e.add(h).map_err(|e| e.to_string())?;
    }
    let consume_elapsed = started.elapsed();
    Ok(Report {
        mode: args.mode,
        protocol: if args.kafka.is_some() {
            "kafka"
        } else {
            "spool"
        },
        producers: if args.mode == Mode::Consume {
            0
        } else {
            args.producers
        },
        consumers: if args.mode == Mode::Produce {
            0
        } else {
            args.consumers
        },
        topics: args.topics,
        message_size: args.message_size,
        batch_size: args.batch_size,
        in_flight: args.in_flight,
        flush: args.flush.clone(),
        rate: args.rate,
        busy_poll_us: args.busy_poll.unwrap_or_default().as_micros() as u64,
        produce: (args.mode != Mode::Consume).then(|| Throughput::of(&produced, produce_elapsed)),
        produce_latency_ms: Latency::of(&produce_latency),
        consume: (args.mode != Mode::Produce).then(|| Throughput::of(&consumed, consume_elapsed)),
        end_to_end_latency_ms: Latency::of(&e2e),
    })
}

/// Splits `total` messages over producers, then sums per topic (an
/// unbounded total, u64::MAX, stays unbounded).
fn share(total: u64, producers: usize, topics: usize) -> Vec<u64> {
    let mut per_topic = vec![0u64; topics];
    for i in 0..producers {
        let t = &mut per_topic[i % topics];
        *t = t.saturating_add(quota(total, producers, i));
    }
    per_topic
}

/// Each topic's record count (the topics are fresh: the sum of its
/// partitions' ends).
async fn log_ends(admin: &Client, topics: &[String]) -> Result<Vec<u64>, String> {
    let mut ends = Vec::with_capacity(topics.len());
    for topic in topics {
        let d = admin
            .describe_topic(topic)
            .await
            .map_err(|e| format!("describing {topic}: {e}"))?;
        ends.push(d.records());
    }
    Ok(ends)
}

fn quota(total: u64, producers: usize, i: usize) -> u64 {
    if total == u64::MAX {
        return u64::MAX;
    }
    total / producers as u64 + u64::from((i as u64) < total % producers as u64)
}

type ProducerTask = tokio::task::JoinHandle<Result<Histogram<u64>, String>>;

#[allow(clippy::too_many_arguments)]
async fn spawn_producers(
    broker: &str,
    base: &spool_client::ClientConfig,
    args: &Args,
    topics: &[String],
    total: u64,
    side: &Arc<Side>,
    epoch: Instant,
    running: &mut Tasks,
) -> Result<Vec<ProducerTask>, String> {
    let mut tasks = Vec::new();
    for i in 0..args.producers {
        let plan = Plan {
            topic: topics[i % topics.len()].clone(),
            quota: quota(total, args.producers, i),
            deadline: args.duration.map(|d| Instant::now() + d),
            batch_size: args.batch_size,
            message_size: args.message_size,
            in_flight: args.in_flight,
            rate: args.rate,
            partitions: args.partitions.max(1),
            first_partition: (i / topics.len()) as u32,
        };
        let task = match &args.kafka {
            Some(addr) => {
                let socket = crate::kafka_bench::connect(addr).await?;
                tokio::spawn(crate::kafka_bench::produce(
                    socket,
                    plan,
                    Arc::clone(side),
                    epoch,
                ))
            }
            None => {
                let client = crate::connect_with(broker, client_config(base, args)).await?;
                tokio::spawn(produce(client, plan, Arc::clone(side), epoch))
            }
        };
        running.watch(&task);
        tasks.push(task);
    }
    Ok(tasks)
}

async fn join_producers(tasks: Vec<ProducerTask>) -> Result<Histogram<u64>, String> {
    let mut all = histogram();
    for t in tasks {
        let h = t
            .await
            .map_err(|e| format!("producer task failed: {e}"))??;
        all.add(h).map_err(|e| e.to_string())?;
    }
    Ok(all)
}

pub(crate) struct Plan {
    pub(crate) topic: String,
    pub(crate) quota: u64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) batch_size: usize,
    pub(crate) message_size: usize,
    pub(crate) in_flight: usize,
    pub(crate) rate: Option<u64>,
    /// The topic's partitions; batch k goes to `(first_partition + k) %
    /// partitions`.
    pub(crate) partitions: u32,
    pub(crate) first_partition: u32,
}

/// One batch of `count` messages of `size` bytes, and where each value
/// starts in it (the send time is stamped there before each send).
pub(crate) fn template(count: usize, size: usize) -> (Vec<u8>, Vec<usize>) {
    let mut b = BatchBuilder::with_capacity(count * (size + 8));
    let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    // Now, not a fixed time: the topic's retention and roll age go by the
    // batches' timestamps.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for _ in 0..count {
        b.push(now, None, Some(&value), &[]);
    }
    let bytes = b.finish();
    let base = bytes.as_ptr() as usize;
    let starts = batch::RecordIter::new(&bytes)
        .expect("a batch we just built")
        .map(|r| {
            let value = r.expect("a batch we just built").value.unwrap_or_default();
            value.as_ptr() as usize - base
        })
        .collect();
    (bytes, starts)
}

/// Writes the send time (ns since the run's start) into each value of a
/// [`template`] batch, and seals the batch again.
pub(crate) fn stamp_send_time(batch: &mut [u8], starts: &[usize], since_start: Duration) {
    let ns = since_start.as_nanos() as u64;
    for &s in starts {
        batch[s..s + 8].copy_from_slice(&ns.to_be_bytes());
    }
    batch::reseal(batch);
}

/// A produce request's acknowledgement (or failure), and how long after its
/// send it came.
type Acked = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Result<spool_client::Produced, ClientError>, Duration)>
            + Send,
    >,
>;

async fn produce(
    client: Client,
    plan: Plan,
    side: Arc<Side>,
    epoch: Instant,
) -> Result<Histogram<u64>, String> {
    let (mut batch, starts) = template(plan.batch_size, plan.message_size);
    let stamp = plan.message_size >= 8;
    let mut latency = histogram();
    let mut waiting = std::collections::VecDeque::new();
    let mut sent = 0u64;
    let per_batch = plan.batch_size as u64;
    let pace = plan
        .rate
        .map(|r| Duration::from_secs_f64(per_batch as f64 / r.max(1) as f64));
    let mut next_send = Instant::now();
    let record = |latency: &mut Histogram<u64>, took: Duration, side: &Side| {
        latency.saturating_record(took.as_micros().max(1) as u64);
        side.add(per_batch, per_batch * plan.message_size as u64);
    };
    while sent < plan.quota && plan.deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(pace) = pace {
            tokio::time::sleep_until(next_send).await;
            next_send += pace;
        }
        let now = Instant::now();
        if stamp {
            stamp_send_time(&mut batch, &starts, now - epoch);
        }
        let bytes = Bytes::from(batch);
        let partition =
            (plan.first_partition as u64 + sent / per_batch) % u64::from(plan.partitions);
        let pending = client
            .send_batch(&plan.topic, partition as u32, &bytes, Acks::Commit)
            .await
            .map_err(|e| e.to_string())?;
        // Written: the buffer is ours again.
        batch = bytes
            .try_into_mut()
            .map(Vec::from)
            .unwrap_or_else(|b| b.to_vec());
        let acked = async move {
            let outcome = pending.wait().await;
            (outcome, now.elapsed())
        };
        let acked: Acked = if pace.is_some() {
            // Under --rate the loop sleeps between sends, and would see an
            // acknowledgement only at its next send: a task of its own
            // takes the time as it arrives, so the latency is the
            // request's, not the rate limiter's.
            let task = tokio::spawn(acked);
            Box::pin(async move {
                task.await.unwrap_or_else(|e| {
                    (
                        Err(ClientError::Unexpected(format!("task failed: {e}"))),
                        Duration::ZERO,
                    )
                })
            })
        } else {
            // Acknowledgements come in send order: the wait for the oldest
            // ends as its answer arrives.
            Box::pin(acked)
        };
        waiting.push_back(acked);
        sent += per_batch;
        while waiting.len() >= plan.in_flight {
            let acked = waiting.pop_front().expect("non-empty");
            let (outcome, took) = acked.await;
            if let Err(e) = outcome {
                return Err(failed(e, waiting).await);
            }
            record(&mut latency, took, &side);
        }
    }
    while let Some(acked) = waiting.pop_front() {
        let (outcome, took) = acked.await;
        if let Err(e) = outcome {
            return Err(failed(e, waiting).await);
        }
        record(&mut latency, took, &side);
    }
    Ok(latency)
}

/// A produce failed: waits for the answers to the requests still in flight
/// (each ends, answered or with the connection) before reporting it, so
/// that none is left in the broker's queue to auto-create a topic the run
/// deletes afterwards.
async fn failed(e: ClientError, waiting: std::collections::VecDeque<Acked>) -> String {
    for acked in waiting {
        let _ = acked.await;
    }
    format!("produce failed: {e}")
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    client: Client,
    topic: String,
    topic_index: usize,
    config: ConsumerConfig,
    expected: Option<u64>,
    mut done: tokio::sync::watch::Receiver<Option<Vec<u64>>>,
    side: Arc<Side>,
    e2e: bool,
    epoch: Instant,
) -> Result<Histogram<u64>, String> {
    let mut consumer = Consumer::new(client, &topic, StartAt::Offset(0), config);
    let mut latency = histogram();
    let mut read = 0u64;
    loop {
        let target = match expected {
            Some(n) => Some(n),
            None => done
                .borrow_and_update()
                .as_ref()
                .map(|ends| ends[topic_index]),
        };
        if target.is_some_and(|t| read >= t) {
            return Ok(latency);
        }
        let records = match consumer.poll().await {
            Ok(r) => r,
            Err(ClientError::Disconnected(e)) => {
                return Err(format!("consumer lost its connection: {e}"))
            }
            Err(e) => return Err(format!("consume failed: {e}")),
        };
        let now_ns = (Instant::now() - epoch).as_nanos() as u64;
        let mut bytes = 0u64;
        for r in &records {
            let value = r.value.as_deref().unwrap_or_default();
            bytes += value.len() as u64;
            if e2e && value.len() >= 8 {
                let sent = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                latency.saturating_record((now_ns.saturating_sub(sent) / 1000).max(1));
            }
        }
        read += records.len() as u64;
        side.messages
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        side.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn progress_bar(args: &Args, total: u64, timed: bool) -> ProgressBar {
    let bar = if timed {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(total)
    };
    bar.set_draw_target(if args.json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} msgs {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The progress line's updater: on drop, stops and clears the line.
struct Ticker {
    task: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

async fn tick_progress(bar: ProgressBar, produced: Arc<Side>, consumed: Arc<Side>, mode: Mode) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let side = if mode == Mode::Consume {
            &consumed
        } else {
            &produced
        };
        let n = side.messages.load(Ordering::Relaxed);
        let mb = side.bytes.load(Ordering::Relaxed) as f64
            / 1e6
            / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(n);
        bar.set_message(format!("{mb:.0} MB/s"));
    }
}

fn print_report(r: &Report, json: bool) -> Result<(), String> {
    use std::fmt::Write as _;
    if json {
        return crate::print_line(serde_json::to_string(r).unwrap_or_default());
    }
    let mode = match r.mode {
        Mode::Produce => "produce",
        Mode::Consume => "consume",
        Mode::Both => "both",
    };
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "spool bench: mode {mode}, {} protocol, {} producer(s), {} consumer(s), {} topic(s), {} B messages, batches of {}, {} in flight, flush {}{}{}",
        r.protocol,
        r.producers,
        r.consumers,
        r.topics,
        r.message_size,
        r.batch_size,
        r.in_flight,
        r.flush,
        r.rate.map(|x| format!(", {x} msgs/s per producer")).unwrap_or_default(),
        if r.busy_poll_us > 0 {
            format!(", busy poll {} us", r.busy_poll_us)
        } else {
            String::new()
        }
    );
    let line = |out: &mut String, name: &str, t: &Throughput| {
        let _ = write!(
            out,
            "\n{name:<8} {} msgs in {:.2} s: {:.0} msgs/s, {:.1} MB/s",
            t.messages, t.seconds, t.messages_per_sec, t.mb_per_sec
        );
    };
    let lat = |out: &mut String, name: &str, l: &Latency| {
        let _ = write!(
            out,
            "\n{name:<8} latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
            l.p50, l.p99, l.p999, l.max, l.count
        );
    };
    if let Some(t) = &r.produce {
        line(&mut out, "produce", t);
    }
    if let Some(l) = &r.produce_latency_ms {
        lat(&mut out, "ack", l);
    }
    if let Some(t) = &r.consume {
        line(&mut out, "consume", t);
    }
    if let Some(l) = &r.end_to_end_latency_ms {
        lat(&mut out, "e2e", l);
    }
    crate::print_line(out)
}
