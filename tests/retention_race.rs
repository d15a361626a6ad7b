//! Retention racing readers (issue 5, item 8).
//!
//! Small segments and a retention tick of a few tens of milliseconds, so
//! that segments are deleted continuously under one producer and several
//! consumers (some reading from the start, some jumping to seeded random
//! offsets, some of them below the log start or past its end). Proves:
//!
//! - no wrong bytes are served: every fetched batch passes its CRC, every
//!   record carries a valid checker message, records come back contiguous
//!   from the offset asked for, and each sits at the offset it was
//!   acknowledged at;
//! - the only error is OFFSET_OUT_OF_RANGE, its range really excludes the
//!   offset asked for, and a consumer resumes at the range's start;
//! - the log start each client sees never moves backwards;
//! - no file descriptor or mapping outlives the broker, and mappings of
//!   deleted segments do not pile up while it runs;
//! - with the real binary (`flush = "always"`) killed with SIGKILL while
//!   retention deletes (two trials in three inside a retention pass, seen
//!   through inotify: after a seeded deletion, or sooner if a client has
//!   been told a log start above a segment still on disk; the others at a
//!   seeded moment): the restarted broker leaves no orphan or temporary
//!   file, its log start is at least the one last seen before the kill, and
//!   every acknowledged record at or above it is present and intact (the
//!   queue checker).
//!
//! Each test prints one JSON line of figures to stderr. The soak tier runs
//! a 60 s load instead of 6 s, and 30 kill trials instead of 6:
//! `SPOOL_SOAK=1 cargo test --release --test retention_race -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::broker::{start, CallError, Caller, PATIENCE};
use common::checker::{self, Outcome, Report, Sent};
use common::process::spawn;
use common::sim::Rng;
use spool::broker::config::Limit;
use spool::broker::{Flush, TopicOverrides};
use spool::protocol::{Acks, ErrorCode, FetchedPartition, OffsetSpec, Request, Response};
use spool::storage::batch::{self, BatchBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "r";

/// The directory of the topic's one partition (0), which holds its log.
fn partition_dir(data: &Path) -> PathBuf {
    data.join("topics").join(TOPIC).join("0")
}
/// Produce requests in flight on the producer's connection.
const IN_FLIGHT: usize = 8;
/// Consumers reading forward from the log start, and jumping at random.
const FORWARD_CONSUMERS: u64 = 2;
const RANDOM_CONSUMERS: u64 = 3;

/// How long the in-process load runs.
fn load_duration() -> Duration {
    Duration::from_secs(common::trials(6, 60))
}

/// What every client shares: the acknowledgements so far (offset to
/// sequence number), and the highest log start anyone has seen.
#[derive(Default)]
struct Shared {
    acks: Mutex<HashMap<u64, u64>>,
    acked: AtomicU64,
    max_start: AtomicU64,
    stop: AtomicBool,
}

/// Reads one response frame. `None` if the connection is gone; a response
/// that takes longer than [`PATIENCE`] fails the test.
async fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    let got = tokio::time::timeout(PATIENCE, stream.read_exact(&mut len))
        .await
        .expect("a response in time");
    got.ok()?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut frame))
        .await
        .expect("a response in time")
        .ok()?;
    Some(Bytes::from(frame))
}

/// A connection that survives the broker dying under it (the kill test):
/// every call says `None` once the connection is gone; a late or malformed
/// answer fails the test.
struct Client(Caller);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(Caller::connect(addr).await)
    }

    async fn call(&mut self, request: &Request) -> Option<Response> {
        match self.0.call(request, PATIENCE).await {
            Ok(response) => Some(response),
            Err(CallError::Gone(_)) => None,
            Err(e) => panic!("{request:?}: {e:?}"),
        }
    }
}

/// Offsets a client has seen the log start at must never go down.
#[derive(Debug, Default)]
struct StartWatch {
    seen: u64,
    backwards: Vec<(u64, u64)>,
}

impl StartWatch {
    fn observe(&mut self, start: u64, shared: &Shared) {
        if start < self.seen {
            self.backwards.push((self.seen, start));
        }
        self.seen = self.seen.max(start);
        shared.max_start.fetch_max(start, Ordering::AcqRel);
    }
}

/// Produces checker messages (1 to 3 per batch, 100 to 1,200 bytes) with
/// `IN_FLIGHT` requests pipelined, until `stop` (then it drains what is in
/// flight) or the connection dies (then what is in flight is unknown).
async fn produce(addr: SocketAddr, seed: u64, shared: Arc<Shared>) -> (Vec<Sent>, StartWatch) {
    let mut rng = Rng::new(seed);
    let mut stream = Client::connect(addr).await.0.stream;
    let mut sent = Vec::new();
    let mut starts = StartWatch::default();
    // (first sequence number, record count) of each request in flight.
    let mut window = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let mut alive = true;
    while alive {
        while window.len() < IN_FLIGHT && !shared.stop.load(Ordering::Acquire) {
            let count = 1 + rng.below(3);
            let mut b = BatchBuilder::new();
            for i in 0..count {
                let size = 100 + rng.below(1100) as usize;
                b.push(
                    common::now_ms(),
                    None,
                    Some(&checker::message(0, seq + i, size)),
                    &[],
                );
            }
            let request = Request::produce(TOPIC, 0, Acks::Commit, BytesMut::from(&b.finish()[..]));
            let mut frame = BytesMut::new();
            request.encode(seq as u32, &mut frame);
            if stream.write_all(&frame).await.is_err() {
                alive = false;
                break;
            }
            window.push_back((seq, count));
            seq += count;
        }
        let Some(&(first, count)) = window.front() else {
            break; // stopped and drained
        };
        let Some(frame) = read_frame(&mut stream).await else {
            break;
        };
        window.pop_front();
        let response = Response::parse(spool::protocol::ApiKey::Produce, frame)
            .expect("a well-formed produce response");
        assert_eq!(response.correlation_id, first as u32);
        // Nothing here refuses a produce: any error is a failure.
        let base = match response.produced() {
            Ok(p) => {
                starts.observe(p.log_start, &shared);
                p.base_offset
            }
            Err(e) => panic!("produce failed: {e:?}"),
        };
        let mut acks = shared.acks.lock().unwrap();
        for i in 0..count {
            acks.insert(base + i, first + i);
            sent.push(Sent {
                producer: 0,
                seq: first + i,
                outcome: Outcome::Ok(base + i),
            });
        }
        drop(acks);
        shared.acked.fetch_add(count, Ordering::AcqRel);
    }
    for (first, count) in window {
        for i in 0..count {
            sent.push(Sent {
                producer: 0,
                seq: first + i,
                outcome: Outcome::Unknown,
            });
        }
    }
    (sent, starts)
}

/// What one consumer saw. Everything but the counts of work done must stay
/// zero (or empty).
#[derive(Debug, Default)]
struct Seen {
    fetches: u64,
    records: u64,
    out_of_range: u64,
    /// Fetches at the start an OFFSET_OUT_OF_RANGE named that succeeded.
    resumed: u64,
    /// A batch failing its CRC, or a record not carrying a valid message.
    corrupt: u64,
    /// A record at an offset acknowledged for another message.
    misplaced: u64,
    /// Records not contiguous from the offset asked for, or not ending at
    /// `next_offset`, or a range that does not exclude the offset refused.
    inconsistent: Vec<String>,
    /// Data served below a log start this consumer had already seen.
    below_start: u64,
    other_errors: Vec<String>,
    /// Records read before their acknowledgement arrived, checked at the end.
    deferred: Vec<(u64, u64)>,
    starts: StartWatch,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.fetches += o.fetches;
        self.records += o.records;
        self.out_of_range += o.out_of_range;
        self.resumed += o.resumed;
        self.corrupt += o.corrupt;
        self.misplaced += o.misplaced;
        self.inconsistent.extend(o.inconsistent);
        self.below_start += o.below_start;
        self.other_errors.extend(o.other_errors);
        self.deferred.extend(o.deferred);
        self.starts.backwards.extend(o.starts.backwards);
    }

    /// Checks one successful fetch from `offset`.
    fn fetched(&mut self, offset: u64, batches: &[Bytes], next_offset: u64, shared: &Shared) {
        self.fetches += 1;
        let mut expected = offset;
        for chunk in batches {
            for item in batch::BatchIter::new(chunk) {
                let Ok((_, raw)) = item else {
                    self.corrupt += 1;
                    continue;
                };
                let Ok(records) = batch::decode_records(&chunk.slice_ref(raw)) else {
                    self.corrupt += 1;
                    continue;
                };
                for r in records.into_iter().filter(|r| r.offset >= offset) {
                    if r.offset != expected {
                        self.inconsistent.push(format!(
                            "fetch from {offset}: {} after {expected}",
                            r.offset
                        ));
                    }
                    expected = r.offset + 1;
                    self.records += 1;
                    match checker::parse(r.value.as_deref().unwrap_or_default()) {
                        Some((0, seq)) => match shared.acks.lock().unwrap().get(&r.offset) {
                            Some(&acked) if acked == seq => {}
                            Some(_) => self.misplaced += 1,
                            None => self.deferred.push((r.offset, seq)),
                        },
                        _ => self.corrupt += 1,
                    }
                }
            }
        }
        if expected != next_offset {
            self.inconsistent.push(format!(
                "fetch from {offset}: records end at {expected}, next_offset {next_offset}"
            ));
        }
    }
}

/// How one fetch ended.
struct Step {
    /// Where to read next: after the records served, or where the refusal
    /// said the log starts (or ends).
    next: u64,
    /// The log's range as the response gave it.
    range: (u64, u64),
    refused: bool,
}

/// One fetch and its checks; `None` when the connection is gone.
async fn fetch_once(
    c: &mut Client,
    offset: u64,
    rng: &mut Rng,
    wait_ms: u32,
    seen: &mut Seen,
    shared: &Shared,
) -> Option<Step> {
    // From 1 byte (a fetch still returns one whole batch) to several segments.
    let max_bytes = match rng.below(4) {
        0 => 1 + rng.below(1024) as u32,
        1 => 4096,
        _ => 1 + rng.below(160 * 1024) as u32,
    };
    let request = Request::fetch(TOPIC, 0, offset, max_bytes, wait_ms, 1);
    let known_start = seen.starts.seen;
    let response = c.call(&request).await?;
    match response.fetched() {
        Ok(FetchedPartition {
            log_start,
            log_end,
            next_offset,
            batches,
        }) => {
            seen.starts.observe(log_start, shared);
            // The log start never moves back, so an offset below one already
            // seen must be refused, never served from a deleted segment.
            if offset < known_start {
                seen.below_start += 1;
            }
            if offset < log_start || offset > log_end {
                seen.inconsistent.push(format!(
                    "fetch from {offset} served with range [{log_start}, {log_end}]"
                ));
            }
            // Inside the range a fetch returns at least one batch.
            if batches.is_empty() && offset < log_end {
                seen.inconsistent.push(format!(
                    "fetch from {offset} returned nothing, log end {log_end}"
                ));
            }
            seen.fetched(offset, &batches, next_offset, shared);
            Some(Step {
                next: next_offset,
                range: (log_start, log_end),
                refused: false,
            })
        }
        Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
            seen.out_of_range += 1;
            let Some((lo, hi)) = e.range else {
                seen.inconsistent
                    .push(format!("OFFSET_OUT_OF_RANGE for {offset} without a range"));
                return Some(Step {
                    next: offset,
                    range: (known_start, known_start),
                    refused: true,
                });
            };
            seen.starts.observe(lo, shared);
            if (lo..=hi).contains(&offset) {
                seen.inconsistent.push(format!(
                    "OFFSET_OUT_OF_RANGE for {offset} inside its range [{lo}, {hi}]"
                ));
            }
            Some(Step {
                next: if offset < lo { lo } else { hi },
                range: (lo, hi),
                refused: true,
            })
        }
        Err(e) => {
            seen.other_errors.push(format!("{}: {}", e.code, e.message));
            Some(Step {
                next: offset,
                range: (known_start, known_start),
                refused: true,
            })
        }
    }
}

/// Reads forward from the log start, long-polling at the end, resuming at
/// the start an OFFSET_OUT_OF_RANGE names whenever retention overtakes it.
async fn consume_forward(addr: SocketAddr, seed: u64, shared: Arc<Shared>) -> Seen {
    let mut rng = Rng::new(seed);
    let mut c = Client::connect(addr).await;
    let mut seen = Seen::default();
    let Some(mut offset) = list_start(&mut c, &mut seen, &shared).await else {
        return seen;
    };
    let mut after_refusal = false;
    while !shared.stop.load(Ordering::Acquire) {
        let Some(step) = fetch_once(&mut c, offset, &mut rng, 20, &mut seen, &shared).await else {
            break;
        };
        if after_refusal && !step.refused {
            seen.resumed += 1;
        }
        after_refusal = step.refused;
        offset = step.next;
    }
    seen
}

/// Jumps to seeded random offsets: inside the range, below the log start
/// (which must be refused), at the end and past it; reads a few fetches
/// forward from each.
async fn consume_random(addr: SocketAddr, seed: u64, shared: Arc<Shared>) -> Seen {
    let mut rng = Rng::new(seed);
    let mut c = Client::connect(addr).await;
    let mut seen = Seen::default();
    let Some(start) = list_start(&mut c, &mut seen, &shared).await else {
        return seen;
    };
    let (mut lo, mut hi) = (start, start);
    while !shared.stop.load(Ordering::Acquire) {
        let mut offset = match rng.below(10) {
            0..=3 => lo + rng.below(hi - lo + 1),
            4..=6 if lo > 0 => rng.below(lo),
            7 => hi,
            8 => hi + 1 + rng.below(10),
            _ => lo,
        };
        let mut after_refusal = false;
        for _ in 0..2 + rng.below(4) {
            let Some(step) = fetch_once(&mut c, offset, &mut rng, 0, &mut seen, &shared).await
            else {
                return seen;
            };
            if after_refusal && !step.refused {
                seen.resumed += 1;
            }
            after_refusal = step.refused;
            (lo, hi) = (lo.max(step.range.0), hi.max(step.range.1));
            offset = step.next;
        }
    }
    seen
}

/// The log start by LIST_OFFSETS (earliest).
async fn list_start(c: &mut Client, seen: &mut Seen, shared: &Shared) -> Option<u64> {
    let response = c
        .call(&Request::list_offsets(TOPIC, 0, OffsetSpec::Earliest))
        .await?;
    match response.offsets() {
        Ok(o) => {
            seen.starts.observe(o.log_start, shared);
            Some(o.log_start)
        }
        other => panic!("list offsets: {other:?}"),
    }
}

/// Entries of this process's descriptor table.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's mappings of files under `dir`: (all, deleted ones).
fn mappings_under(dir: &Path) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    let lines: Vec<&str> = maps.lines().filter(|l| l.contains(dir)).collect();
    let deleted = lines.iter().filter(|l| l.ends_with("(deleted)")).count();
    (lines.len(), deleted)
}

/// Creates the topic (with the broker's default settings), then starts the
/// producer and the consumers against `addr`.
async fn start_load(
    addr: SocketAddr,
    seed: u64,
    shared: &Arc<Shared>,
) -> (
    tokio::task::JoinHandle<(Vec<Sent>, StartWatch)>,
    Vec<tokio::task::JoinHandle<Seen>>,
) {
    let mut c = Client::connect(addr).await;
    let created = c
        .call(&Request::CreateTopic {
            topic: TOPIC.into(),
            settings: vec![],
        })
        .await
        .expect("broker answers");
    assert!(created.body.is_ok(), "create topic: {:?}", created.body);
    let producer = tokio::spawn(produce(addr, seed, Arc::clone(shared)));
    let mut consumers = Vec::new();
    for i in 0..FORWARD_CONSUMERS {
        consumers.push(tokio::spawn(consume_forward(
            addr,
            seed * 100 + i,
            Arc::clone(shared),
        )));
    }
    for i in 0..RANDOM_CONSUMERS {
        consumers.push(tokio::spawn(consume_random(
            addr,
            seed * 100 + 50 + i,
            Arc::clone(shared),
        )));
    }
    (producer, consumers)
}

/// Waits for the load's tasks; returns what they sent and saw, with the
/// deferred records checked against the final acknowledgements.
async fn finish_load(
    producer: tokio::task::JoinHandle<(Vec<Sent>, StartWatch)>,
    consumers: Vec<tokio::task::JoinHandle<Seen>>,
    shared: &Shared,
) -> (Vec<Sent>, Seen) {
    let (sent, producer_starts) = tokio::time::timeout(PATIENCE, producer)
        .await
        .expect("producer ends")
        .expect("producer task");
    let mut total = Seen::default();
    total.starts.backwards.extend(producer_starts.backwards);
    for c in consumers {
        let seen = tokio::time::timeout(PATIENCE, c)
            .await
            .expect("consumer ends")
            .expect("consumer task");
        total.add(seen);
    }
    // Records read before their acknowledgement arrived: now every
    // acknowledgement is in. A record nobody acknowledged must at least have
    // been sent (an unknown outcome of the kill test).
    let acks = shared.acks.lock().unwrap();
    let unknown: std::collections::HashSet<u64> = sent
        .iter()
        .filter(|s| s.outcome == Outcome::Unknown)
        .map(|s| s.seq)
        .collect();
    for &(offset, seq) in &total.deferred {
        match acks.get(&offset) {
            Some(&acked) if acked == seq => {}
            Some(_) => total.misplaced += 1,
            None if unknown.contains(&seq) => {}
            None => total.inconsistent.push(format!(
                "offset {offset} served message {seq}, which was never sent or was refused"
            )),
        }
    }
    drop(acks);
    (sent, total)
}

fn assert_clean(seen: &Seen, context: &str) {
    assert_eq!(seen.corrupt, 0, "{context}: corrupt records served");
    assert_eq!(seen.misplaced, 0, "{context}: records at the wrong offset");
    assert!(
        seen.inconsistent.is_empty(),
        "{context}: {:?}",
        &seen.inconsistent[..seen.inconsistent.len().min(10)]
    );
    assert_eq!(seen.below_start, 0, "{context}: served below a seen start");
    assert!(
        seen.other_errors.is_empty(),
        "{context}: errors other than OFFSET_OUT_OF_RANGE: {:?}",
        &seen.other_errors[..seen.other_errors.len().min(10)]
    );
    assert!(
        seen.starts.backwards.is_empty(),
        "{context}: log start moved backwards (seen, then): {:?}",
        seen.starts.backwards
    );
}

#[test]
fn retention_racing_readers_serves_no_wrong_bytes_and_leaks_nothing() {
    common::serially(async {
        let fds_before = open_fds();
        let broker = start(|c| {
            c.server.retention_check_interval = Duration::from_millis(25);
            c.defaults = TopicOverrides {
                segment_bytes: Some(32 * 1024),
                retention_bytes: Some(Limit::At(128 * 1024)),
                index_bytes: Some(4096),
                flush: Some(Flush::Always),
                ..TopicOverrides::default()
            };
        })
        .await;
        let data_dir = broker.dir.path().canonicalize().unwrap();
        let shared = Arc::new(Shared::default());
        let (producer, consumers) = start_load(broker.addr, 1, &shared).await;
        // Pace the run and sample the mappings of deleted segments meanwhile.
        let started = Instant::now();
        let mut max_deleted_maps = 0;
        let mut samples = 0u64;
        while started.elapsed() < load_duration() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            max_deleted_maps = max_deleted_maps.max(mappings_under(&data_dir).1);
            samples += 1;
        }
        shared.stop.store(true, Ordering::Release);
        let seconds = started.elapsed().as_secs_f64();
        let (sent, seen) = finish_load(producer, consumers, &shared).await;
        // Every client is gone: nothing may still hold a deleted segment. A
        // retention pass that began before may still be unlinking, so give it
        // a moment (it has nothing new to delete).
        let (maps_at_end, deleted_at_end) = mappings_under(&data_dir);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut deleted_settled = deleted_at_end;
        while deleted_settled > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            deleted_settled = mappings_under(&data_dir).1;
        }
        let (log_start, log_end, segments) = {
            let topic = broker
                .running
                .as_ref()
                .unwrap()
                .topics()
                .get(TOPIC)
                .unwrap();
            let partition = topic.partition(0).unwrap();
            let log = partition.log();
            (log.lowest_offset(), log.next_offset(), log.segment_count())
        };
        broker.stop().await;
        // The broker's tasks end asynchronously (a topic's sync task drops its
        // handle on the log once it sees the close): wait, bounded, for the
        // descriptor table to settle.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut fds_after = open_fds();
        while fds_after > fds_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            fds_after = open_fds();
        }
        let (maps_after, _) = mappings_under(&data_dir);
        let acked = sent
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
            .count();
        eprintln!(
            "{{\"test\":\"retention_race\",\"seconds\":{seconds:.1},\"sent\":{},\"acked\":{acked},\"log_start\":{log_start},\"log_end\":{log_end},\"segments_left\":{segments},\"fetches\":{},\"records_checked\":{},\"out_of_range\":{},\"resumed\":{},\"deferred_checks\":{},\"corrupt\":{},\"misplaced\":{},\"inconsistent\":{},\"below_start\":{},\"other_errors\":{},\"start_backwards\":{},\"map_samples\":{samples},\"max_deleted_maps\":{max_deleted_maps},\"maps_at_end\":{maps_at_end},\"deleted_maps_at_end\":{deleted_at_end},\"deleted_maps_settled\":{deleted_settled},\"maps_after_stop\":{maps_after},\"fds_before\":{fds_before},\"fds_after\":{fds_after}}}",
            sent.len(),
            seen.fetches,
            seen.records,
            seen.out_of_range,
            seen.resumed,
            seen.deferred.len(),
            seen.corrupt,
            seen.misplaced,
            seen.inconsistent.len(),
            seen.below_start,
            seen.other_errors.len(),
            seen.starts.backwards.len(),
        );
        assert_clean(&seen, "in-process");
        assert_eq!(acked, sent.len(), "every produce is acknowledged");
        // The race really ran: retention deleted while consumers were refused.
        assert!(log_start > 0, "retention never deleted a segment");
        assert!(seen.out_of_range > 0, "no consumer was overtaken");
        assert!(seen.resumed > 0, "no consumer resumed after a refusal");
        assert!(seen.records > 0);
        // Each of the 6 clients' in-flight reads pins at most the snapshot it
        // took; with a segment deleted about every retention tick, a few
        // segments (2 mappings each) per client is the most that can be
        // pending. Beyond that, deleted segments are accumulating.
        let bound = 2 * 4 * (FORWARD_CONSUMERS + RANDOM_CONSUMERS + 1) as usize;
        assert!(
            max_deleted_maps <= bound,
            "{max_deleted_maps} mappings of deleted files (bound {bound})"
        );
        assert_eq!(
            deleted_settled, 0,
            "mappings of deleted segments outlive every reader"
        );
        assert_eq!(maps_after, 0, "mappings of the data dir outlive the broker");
        // No slack: the runtime existed before the first count, the clients are
        // closed, and the broker opens nothing that outlives it.
        assert!(
            fds_after <= fds_before,
            "file descriptors leaked: {fds_before} before, {fds_after} after"
        );
    })
}

/// One kill trial's figures.
#[derive(Debug, Default)]
struct KillTrial {
    report: Report,
    start_seen: u64,
    start_after: u64,
    /// Index files without their store before the restart: a deletion the
    /// kill interrupted.
    interrupted_deletions: u64,
    torn_files: u64,
    segments_after: u64,
    /// The deletion that set off the kill, for trials that kill inside a
    /// retention pass.
    killed_at_deletion: Option<Trigger>,
    tick_ms: u64,
    /// The topic directory as the kill left it, for a failure's message.
    before_restart: Vec<String>,
}

/// Checks the data directory after a restart: the topic's directory holds
/// its settings and its one partition; every segment of the partition
/// whole (store, index and time index together), nothing temporary,
/// nothing unknown. Returns (segments, torn sidecars).
fn check_directory(data: &Path) -> (u64, u64) {
    let mut in_topic: Vec<String> = std::fs::read_dir(data.join("topics").join(TOPIC))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    in_topic.sort();
    assert_eq!(in_topic, ["0", "topic.toml"], "the topic's directory");
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut torn = 0;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(partition_dir(data)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        names.push(name.clone());
        // The next segment's files, made ahead of its roll.
        // The idempotent producers' state, rewritten at each roll.
        if name == ".lock" || name.starts_with(".spare-") || name == "producers.snapshot" {
            continue;
        }
        let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
        if ext.ends_with("torn") {
            torn += 1;
            continue;
        }
        assert!(
            stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()),
            "unexpected file {name} in {names:?}"
        );
        assert!(
            matches!(ext, "store" | "index" | "timeindex"),
            "unexpected file {name} in {names:?}"
        );
        kinds
            .entry(stem.to_owned())
            .or_default()
            .push(ext.to_owned());
    }
    for (base, mut exts) in kinds.clone() {
        exts.sort();
        assert_eq!(
            exts,
            ["index", "store", "timeindex"],
            "segment {base} is not whole: {names:?}"
        );
    }
    // Nothing half-deleted or temporary anywhere in the data dir.
    let mut stack = vec![data.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            assert!(
                !name.ends_with(".tmp"),
                "temporary file {} left",
                entry.path().display()
            );
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let trash: Vec<PathBuf> = std::fs::read_dir(data.join("deleted"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(trash.is_empty(), "deleted topics left: {trash:?}");
    (kinds.len() as u64, torn)
}

/// Index files whose store is gone.
fn orphan_tables(data: &Path) -> u64 {
    let names: Vec<String> = match std::fs::read_dir(partition_dir(data)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => return 0,
    };
    names
        .iter()
        .filter(|n| n.ends_with(".index") || n.ends_with(".timeindex"))
        .filter(|n| {
            let stem = n.split_once('.').unwrap().0;
            !names.contains(&format!("{stem}.store"))
        })
        .count() as u64
}

/// Reads the whole topic from its start: (log start, records).
async fn read_all(addr: SocketAddr) -> (u64, Vec<(u64, Vec<u8>)>) {
    let mut c = Client::connect(addr).await;
    let response = c
        .call(&Request::list_offsets(TOPIC, 0, OffsetSpec::Earliest))
        .await
        .expect("restarted broker answers");
    let (start, end) = match response.offsets() {
        Ok(o) => (o.log_start, o.log_end),
        other => panic!("{other:?}"),
    };
    let mut records = Vec::new();
    let mut offset = start;
    while offset < end {
        let request = Request::fetch(TOPIC, 0, offset, 1 << 20, 0, 1);
        let response = c.call(&request).await.expect("restarted broker answers");
        match response.fetched() {
            Ok(FetchedPartition {
                batches,
                next_offset,
                ..
            }) => {
                for chunk in &batches {
                    for item in batch::BatchIter::new(chunk) {
                        let (_, raw) = item.expect("stored batches pass their CRC");
                        let batch_records = batch::decode_records(&chunk.slice_ref(raw))
                            .expect("stored records decode");
                        records.extend(
                            batch_records
                                .into_iter()
                                .filter(|r| r.offset >= offset)
                                .map(|r| {
                                    (r.offset, r.value.as_deref().unwrap_or_default().to_vec())
                                }),
                        );
                    }
                }
                assert!(next_offset > offset, "no progress at {offset}");
                offset = next_offset;
            }
            other => panic!("reading back from {offset}: {other:?}"),
        }
    }
    (start, records)
}

/// A watch on a directory's deletions (inotify), to kill the broker in the
/// middle of a retention pass rather than at a moment chosen blind.
struct DeletionWatch {
    fd: libc::c_int,
}

impl DeletionWatch {
    fn new(dir: &Path) -> DeletionWatch {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls on a descriptor this struct owns; the path
        // is a NUL-terminated copy.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            assert!(fd >= 0, "inotify_init1");
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            assert!(libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_DELETE) >= 0);
            DeletionWatch { fd }
        }
    }

    /// SIGKILLs `pid` inside a retention pass: right after the
    /// `in_pass`-th file deletion of a pass, skipping the first `skip`
    /// passes; or earlier, at any deletion, if a client has already been
    /// told a log start above a segment still whole on disk (the moment a
    /// crash would bring that segment back). Deletions closer than `gap` to
    /// the previous one belong to the same pass (a pass's unlinks are
    /// separated only by directory fsyncs; passes by a retention tick).
    /// After 40 passes too short for `in_pass`, the next deletion will do.
    /// Gives up at `deadline`.
    #[allow(clippy::too_many_arguments)]
    fn kill_in_pass(
        &self,
        dir: &Path,
        shared: &Shared,
        skip: u64,
        in_pass: u64,
        gap: Duration,
        pid: u32,
        deadline: Instant,
    ) -> Option<Trigger> {
        let (mut passes, mut count, mut last) = (0u64, 0u64, None::<Instant>);
        // Retention also runs at each roll, so under load deletions come as
        // one stream rather than passes a tick apart: then kill at a seeded
        // place in the stream (after any of a segment's three unlinks).
        let mut total = 0u64;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let mut poll = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, owned above; read into a buffer we own.
            let n = unsafe {
                if libc::poll(&mut poll, 1, 100) <= 0 {
                    continue;
                }
                libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len())
            };
            let now = Instant::now();
            if last.is_none_or(|t| now - t > gap) {
                passes += 1;
                count = 0;
            }
            last = Some(now);
            let mut at = 0usize;
            let mut name = String::new();
            while n > 0 && at + 16 <= n as usize {
                // struct inotify_event: wd, mask, cookie, len, then the name.
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let raw = &buf[at + 16..(at + 16 + len).min(n as usize)];
                name = String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_owned();
                at += 16 + len;
                count += 1;
                total += 1;
            }
            let wanted = if passes > skip + 40 { 1 } else { in_pass };
            let exposed = store_below(dir, shared.max_start.load(Ordering::Acquire));
            let in_stream = total >= 3 * (skip + 1) + in_pass;
            if exposed || (passes > skip && count >= wanted) || in_stream {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                return Some(Trigger {
                    file: name,
                    position: count,
                    exposed,
                });
            }
        }
        None
    }
}

/// Whether a store below offset `start` is in `dir`.
fn store_below(dir: &Path, start: u64) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.strip_suffix(".store")
            .and_then(|stem| stem.parse::<u64>().ok())
            .is_some_and(|base| base < start)
    })
}

/// The deletion that set off a kill.
#[derive(Debug, Clone)]
struct Trigger {
    file: String,
    /// Its place among its pass's deletions.
    position: u64,
    /// Set off because a client had been told a log start above a segment
    /// still on disk.
    exposed: bool,
}

impl Drop for DeletionWatch {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

async fn kill_trial(seed: u64) -> KillTrial {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two trials in three kill inside a retention pass; those use the
    // smallest segments and a long tick, so that a pass deletes several
    // segments (oldest first, a directory fsync after each).
    let in_pass = !seed.is_multiple_of(3);
    let segment_bytes = if in_pass {
        16 * 1024 + rng.below(8 * 1024)
    } else {
        16 * 1024 + rng.below(48 * 1024)
    };
    let retention_bytes = 2 * segment_bytes + rng.below(4 * segment_bytes);
    let tick_ms = if in_pass {
        40 + rng.below(11)
    } else {
        20 + rng.below(31)
    };
    let racing = dir.path().join("racing.toml");
    std::fs::write(
        &racing,
        format!(
            "[server]\nretention_check_interval = \"{tick_ms}ms\"\n\
             [defaults]\nflush = \"always\"\nsegment_bytes = {segment_bytes}\n\
             retention_bytes = {retention_bytes}\nindex_bytes = 4096\n"
        ),
    )
    .unwrap();
    // After the restart retention is off, so that the directory and the log
    // start are what recovery made of the crash, with nothing deleting
    // while the test looks.
    let still = dir.path().join("still.toml");
    std::fs::write(
        &still,
        format!(
            "[server]\nretention_check_interval = \"1h\"\n\
             [defaults]\nflush = \"always\"\nsegment_bytes = {segment_bytes}\n\
             retention_bytes = \"unlimited\"\nindex_bytes = 4096\n"
        ),
    )
    .unwrap();
    let broker = spawn(&data, &["--config", racing.to_str().unwrap()]);
    let shared = Arc::new(Shared::default());
    let (producer, consumers) = start_load(broker.addr, seed + 1000, &shared).await;
    let mut killed_at_deletion = None;
    if in_pass {
        // Right after the deletion of the second segment's store in a pass
        // (its 4th unlink), when later segments of the pass may be gone
        // from what clients are told but not yet from the disk.
        let watch = DeletionWatch::new(&partition_dir(&data));
        let skip = rng.below(5);
        let nth = 4;
        let gap = Duration::from_millis(tick_ms / 2);
        let pid = broker.child.id();
        let deadline = Instant::now() + PATIENCE;
        let (topic_dir, watching) = (partition_dir(&data), Arc::clone(&shared));
        killed_at_deletion = tokio::task::spawn_blocking(move || {
            watch.kill_in_pass(&topic_dir, &watching, skip, nth, gap, pid, deadline)
        })
        .await
        .unwrap();
        assert!(
            killed_at_deletion.is_some(),
            "seed {seed}: no deletion seen"
        );
    } else {
        // The others: once retention has deleted something and after some
        // hundreds to a couple of thousand acknowledgements, then a seeded
        // fraction of a retention tick.
        let kill_after = 300 + rng.below(2000);
        let deadline = Instant::now() + PATIENCE;
        while shared.acked.load(Ordering::Acquire) < kill_after
            || shared.max_start.load(Ordering::Acquire) == 0
        {
            assert!(Instant::now() < deadline, "producer too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
    }
    broker.kill9();
    let start_seen = shared.max_start.load(Ordering::Acquire);
    let (sent, seen) = finish_load(producer, consumers, &shared).await;
    assert_clean(&seen, &format!("seed {seed}, before the kill"));
    let interrupted_deletions = orphan_tables(&data);
    let mut before_restart: Vec<String> = std::fs::read_dir(partition_dir(&data))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".store") || n.ends_with(".index"))
        .collect();
    before_restart.sort();
    let broker = spawn(&data, &["--config", still.to_str().unwrap()]);
    let (segments_after, torn_files) = check_directory(&data);
    let (start_after, records) = read_all(broker.addr).await;
    drop(broker);
    let report = checker::check(&sent, &records, start_after);
    KillTrial {
        report,
        start_seen,
        start_after,
        interrupted_deletions,
        torn_files,
        segments_after,
        killed_at_deletion,
        tick_ms,
        before_restart,
    }
}

#[test]
fn kill_9_while_retention_deletes_leaves_no_orphans_and_loses_nothing_acknowledged() {
    common::serially(async {
        let trials = common::trials(6, 30);
        let mut total = Report::default();
        let (mut interrupted, mut torn, mut regressions) = (0, 0, 0);
        let mut at_deletion = Vec::new();
        let mut starts = Vec::new();
        let mut failures = Vec::new();
        // Every trial runs and counts before anything is asserted, so that
        // the figures show how often each thing went wrong.
        for seed in 0..trials {
            let t = kill_trial(seed).await;
            if t.start_after < t.start_seen {
                regressions += 1;
                failures.push(format!(
                    "seed {seed}: log start {} after the restart, below {} seen before the \
                     kill (killed after deleting {:?}, tick {} ms; on disk at the kill: {:?})",
                    t.start_after, t.start_seen, t.killed_at_deletion, t.tick_ms, t.before_restart
                ));
            }
            if !t.report.is_clean() || t.report.acked == 0 {
                failures.push(format!("seed {seed}: {:?}", t.report));
            }
            // Retention ran: clients saw the start move, or a deletion set
            // off the kill.
            if t.start_seen == 0 && t.killed_at_deletion.is_none() {
                failures.push(format!("seed {seed}: retention never ran"));
            }
            total.add(&t.report);
            interrupted += t.interrupted_deletions;
            torn += t.torn_files;
            at_deletion.extend(
                t.killed_at_deletion
                    .clone()
                    .map(|t| format!("[\"{}\",{},{}]", t.file, t.position, t.exposed)),
            );
            starts.push(format!(
                "[{},{},{}]",
                t.start_seen, t.start_after, t.segments_after
            ));
        }
        let json = total.json("retention_race_kill9", "always", trials);
        eprintln!(
            "{},\"start_regressions\":{regressions},\"interrupted_deletions\":{interrupted},\"torn_files\":{torn},\"killed_after_deleting\":[{}],\"start_seen_after_segments\":[{}]}}",
            json.trim_end_matches('}'),
            at_deletion.join(","),
            starts.join(",")
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
}
