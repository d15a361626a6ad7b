//! Consumer groups: the admin calls (commit and fetch offsets, list,
//! describe and delete groups) and [`GroupConsumer`], a member of a group
//! whose partitions the broker assigns (GROUP_HEARTBEAT: no client-side
//! assignor, no join and sync rounds).
//!
//! A member heartbeats from a task of its own, so a slow handler does not
//! lose its place; the heartbeat carries the partitions the consumer holds,
//! and the broker hands a partition to a new owner only once its old owner
//! has let go of it. A partition let go of is committed first (with
//! automatic commits), so the next owner resumes after the last record
//! handed out: records are delivered at least once, and exactly once as
//! long as members stop cleanly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool::protocol::{
    CommitOffset, CommitTopic, ErrorCode, GroupDescription, GroupHeartbeat, ListedGroup, Request,
    ResponseBody,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{unexpected, Client};
use crate::consumer::{Consumer, ConsumerConfig, Message, StartAt};
use crate::error::{ClientError, Result};

/// A partition's commit as the group holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to read.
    pub offset: u64,
    pub metadata: String,
}

impl Client {
    /// Commits the next offset to read of each `(topic, partition)`, from
    /// outside any group's membership: taken only while the group has no
    /// members (GROUP_NOT_EMPTY otherwise), as a reset does.
    pub async fn commit_offsets(&self, group: &str, offsets: &[(&str, u32, u64)]) -> Result<()> {
        self.commit_as(group, "", -1, offsets).await
    }

    async fn commit_as(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &[(&str, u32, u64)],
    ) -> Result<()> {
        let mut topics: Vec<CommitTopic> = Vec::new();
        for &(topic, partition, offset) in offsets {
            let p = CommitOffset {
                partition,
                offset,
                metadata: String::new(),
            };
            match topics.iter_mut().find(|t| t.topic == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(CommitTopic {
                    topic: topic.to_owned(),
                    partitions: vec![p],
                }),
            }
        }
        let request = Request::OffsetCommit {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            member_epoch,
            topics,
        };
        match self.call(request).await? {
            ResponseBody::Committed(topics) => {
                for t in topics {
                    for p in t.partitions {
                        p.result.map_err(|mut e| {
                            e.message =
                                format!("{} partition {}: {}", t.topic, p.partition, e.message);
                            ClientError::from(e)
                        })?;
                    }
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// The group's commits, `(topic, partition, commit)`: of the partitions
    /// of `topic` named (all of the group's commits when `topic` is None).
    /// A partition without a commit is left out.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: Option<(&str, &[u32])>,
    ) -> Result<Vec<(String, u32, Committed)>> {
        let topics = topic
            .map(|(t, ps)| vec![(t.to_owned(), ps.to_vec())])
            .unwrap_or_default();
        let request = Request::OffsetFetch {
            group: group.to_owned(),
            topics,
        };
        match self.call(request).await? {
            ResponseBody::CommittedOffsets(topics) => {
                let mut out = Vec::new();
                for t in topics {
                    for p in t.partitions {
                        let c = p.result.map_err(ClientError::from)?;
                        if let Some(offset) = c.offset {
                            out.push((
                                t.topic.clone(),
                                p.partition,
                                Committed {
                                    offset,
                                    metadata: c.metadata,
                                },
                            ));
                        }
                    }
                }
                Ok(out)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Every group the broker knows: with members (of either protocol), or
    /// with commits only.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        match self.call(Request::ListGroups).await? {
            ResponseBody::Groups(groups) => Ok(groups),
            other => Err(unexpected(other)),
        }
    }

    /// A group's state and members (GROUP_NOT_FOUND for an unknown group).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let request = Request::DescribeGroup {
            group: group.to_owned(),
        };
        match self.call(request).await? {
            ResponseBody::Group(g) => Ok(g),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets a group without members and its commits.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let request = Request::DeleteGroup {
            group: group.to_owned(),
        };
        match self.call(request).await? {
            ResponseBody::Empty => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// A change of a [`GroupConsumer`]'s partitions, given to its rebalance
/// callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// Now consumed by this member, each from its commit (or the start).
    Assigned(Vec<u32>),
    /// Given up to another member (committed first, with automatic
    /// commits).
    Revoked(Vec<u32>),
    /// Taken away without a handover: the member's session ended (it did
    /// not heartbeat in time) and the broker gave them to others. Records
    /// handed out since the last commit may be consumed again there.
    Lost(Vec<u32>),
}

/// How a [`GroupConsumer`] takes part in its group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Shown in group descriptions, and the start of the member id.
    pub client_id: String,
    /// The broker removes the member when it has not heartbeated for this
    /// long (within the broker's `[groups]` min/max_session_timeout).
    pub session_timeout: Duration,
    /// Commit what was handed out at this interval (and before a partition
    /// is given up, and at close); None for commits only by
    /// [`GroupConsumer::commit`].
    pub auto_commit: Option<Duration>,
    /// Where a partition the group has no commit for starts.
    pub start: StartAt,
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            client_id: "spool-client".into(),
            session_timeout: Duration::from_secs(10),
            auto_commit: Some(Duration::from_secs(5)),
            start: StartAt::Latest,
            // Behind retention, start at what is left.
            consumer: ConsumerConfig {
                reset: crate::consumer::OffsetReset::Earliest,
                ..ConsumerConfig::default()
            },
        }
    }
}

/// A rebalance callback.
type Listener = Box<dyn FnMut(&Rebalance) + Send>;

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    epoch: i32,
    /// What the consumer may be reading (sent in each heartbeat): what it
    /// took up, and what was granted since.
    owned: Vec<u32>,
    /// The assignment the consumer last took up.
    applied: Vec<u32>,
    /// An assignment not yet taken up by the consumer, and whether it
    /// replaces partitions that were lost.
    pending: Option<(Vec<u32>, bool)>,
    /// An error that ends the membership (reported by the next poll).
    failed: Option<String>,
}

struct Shared {
    state: Mutex<Membership>,
    /// Wakes the heartbeat task: the consumer let go of partitions.
    beat_now: Notify,
    /// Wakes a consumer that waits for partitions.
    changed: Notify,
}

fn lock(m: &Mutex<Membership>) -> std::sync::MutexGuard<'_, Membership> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member of a consumer group over one topic: the broker shares the
/// topic's partitions among the group's members; each is read from the
/// group's commit.
///
/// ```
/// use spool_client::{Client, GroupConfig, GroupConsumer, StartAt};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let dir = tempfile::tempdir().unwrap();
/// # let mut config = spool::broker::Config::default();
/// # config.server.listen = "127.0.0.1:0".parse().unwrap();
/// # config.kafka.listen = "127.0.0.1:0".into();
/// # config.server.data_dir = dir.path().to_owned();
/// # let broker = spool::broker::Broker::start(config).await.unwrap();
/// # let addr = broker.local_addr().to_string();
/// let client = Client::connect(&addr).await?;
/// # client.create_topic("jobs", &[]).await?;
/// # let producer = spool_client::Producer::new(client.clone(), Default::default());
/// # let sent = producer.send("jobs", None, b"job 1").await?;
/// # producer.flush().await?;
/// # sent.await?;
/// let config = GroupConfig {
///     start: StartAt::Earliest, // a partition the group never committed
///     ..GroupConfig::default()
/// };
/// let mut worker = GroupConsumer::new(client, "workers", "jobs", config)
///     .on_rebalance(|change| println!("{change:?}"));
/// let job = worker.next().await?;
/// assert_eq!(job.value.as_deref(), Some(&b"job 1"[..]));
/// worker.close().await?; // commits, then leaves: the others take over at once
/// # broker.shutdown().await;
/// # Ok::<(), spool_client::ClientError>(())
/// # }).unwrap();
/// ```
pub struct GroupConsumer {
    client: Client,
    /// The long polls' own connection (heartbeats and commits go on
    /// `client`'s, so they never wait behind a poll).
    fetch_client: Client,
    group: String,
    topic: String,
    config: GroupConfig,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    consumer: Option<Consumer>,
    held: Vec<u32>,
    /// The next offset to hand out, of partitions with a known one.
    positions: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    last_commit: Instant,
    listener: Option<Listener>,
    buffer: std::collections::VecDeque<Message>,
}

impl GroupConsumer {
    /// Joins `group` for `topic`; the heartbeats start at once.
    pub fn new(client: Client, group: &str, topic: &str, config: GroupConfig) -> GroupConsumer {
        let shared = Arc::new(Shared {
            state: Mutex::new(Membership::default()),
            beat_now: Notify::new(),
            changed: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(heartbeats(
            client.clone(),
            group.to_owned(),
            topic.to_owned(),
            config.clone(),
            Arc::clone(&shared),
            stopped,
        ));
        GroupConsumer {
            fetch_client: client.with_own_connection(),
            client,
            group: group.to_owned(),
            topic: topic.to_owned(),
            config,
            shared,
            stop,
            task: Some(task),
            consumer: None,
            held: Vec::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_commit: Instant::now(),
            listener: None,
            buffer: std::collections::VecDeque::new(),
        }
    }

    /// Calls `f` on each change of the partitions consumed, before records
    /// of the new ones are returned.
    pub fn on_rebalance(mut self, f: impl FnMut(&Rebalance) + Send + 'static) -> GroupConsumer {
        self.listener = Some(Box::new(f));
        self
    }

    /// The partitions consumed now.
    pub fn assignment(&self) -> &[u32] {
        &self.held
    }

    /// The member id the broker gave (empty until the first heartbeat).
    pub fn member_id(&self) -> String {
        lock(&self.shared.state).member_id.clone()
    }

    /// Takes up a new assignment, if the heartbeats brought one: commits
    /// and lets go of what is gone, starts what is new from its commit.
    async fn rebalance(&mut self) -> Result<()> {
        let pending = {
            let mut m = lock(&self.shared.state);
            if let Some(e) = m.failed.take() {
                return Err(ClientError::Invalid(e));
            }
            m.pending.take()
        };
        let Some((target, lost)) = pending else {
            return Ok(());
        };
        let gone: Vec<u32> = self
            .held
            .iter()
            .copied()
            .filter(|p| !target.contains(p))
            .collect();
        let added: Vec<u32> = target
            .iter()
            .copied()
            .filter(|p| !self.held.contains(p))
            .collect();
        if !gone.is_empty() {
            if !lost && self.config.auto_commit.is_some() {
                if let Err(e) = self.commit_partitions(&gone).await {
                    tracing::warn!(group = self.group, error = %e, "commit before giving up partitions failed");
                }
            }
            self.buffer.retain(|m| !gone.contains(&m.partition));
            for p in &gone {
                self.positions.remove(p);
                self.committed.remove(p);
            }
            let change = if lost {
                Rebalance::Lost(gone)
            } else {
                Rebalance::Revoked(gone)
            };
            if let Some(f) = self.listener.as_mut() {
                f(&change);
            }
        }
        if !added.is_empty() {
            let commits = self
                .client
                .committed_offsets(&self.group, Some((&self.topic, &added)))
                .await?;
            for (_, p, c) in commits {
                self.positions.insert(p, c.offset);
                self.committed.insert(p, c.offset);
            }
        }
        // Records buffered but not handed out are fetched again by the new
        // consumer, from the first of them.
        for m in &self.buffer {
            self.positions.entry(m.partition).or_insert(m.offset);
        }
        self.buffer.clear();
        // Where the old consumer stood in partitions kept but not yet read
        // from (started at `start`): kept, not resolved again.
        if let Some(mut old) = self.consumer.take() {
            if let Ok(at) = old.positions().await {
                for (p, o) in at {
                    if target.contains(&p) {
                        self.positions.entry(p).or_insert(o);
                    }
                }
            }
        }
        self.held = target;
        self.consumer = if self.held.is_empty() {
            None
        } else {
            let mut config = self.config.consumer.clone();
            config.share_connection = true;
            let mut c = Consumer::assign(
                self.fetch_client.clone(),
                &self.topic,
                &self.held,
                self.config.start,
                config,
            );
            for (&p, &o) in &self.positions {
                c.seek_partition(p, StartAt::Offset(o));
            }
            // Partitions without a commit start at `start`, resolved now:
            // that is committed too, so whoever takes one over later
            // resumes there rather than at its own `start`.
            for (p, o) in c.positions().await? {
                self.positions.entry(p).or_insert(o);
            }
            Some(c)
        };
        if !added.is_empty() {
            if let Some(f) = self.listener.as_mut() {
                f(&Rebalance::Assigned(added));
            }
        }
        {
            // Let go of what is gone; an assignment that came meanwhile is
            // reported held already (it may be consumed any moment now).
            let mut m = lock(&self.shared.state);
            let mut owned = self.held.clone();
            if let Some((next, _)) = &m.pending {
                owned.extend(next.iter().filter(|p| !self.held.contains(p)));
            }
            m.owned = owned;
            m.applied = self.held.clone();
        }
        self.shared.beat_now.notify_one();
        Ok(())
    }

    /// Takes up a rebalance, commits if due, and fetches records into the
    /// buffer if it is empty (or waits for partitions, holding none).
    async fn fill(&mut self) -> Result<()> {
        self.rebalance().await?;
        if let Some(every) = self.config.auto_commit {
            if self.last_commit.elapsed() >= every {
                self.commit().await?;
            }
        }
        if !self.buffer.is_empty() {
            return Ok(());
        }
        match self.consumer.as_mut() {
            // A long poll lasts at most max_wait: a rebalance waits no
            // longer than that to be taken up.
            Some(consumer) => self.buffer.extend(consumer.poll().await?),
            None => {
                let wait = self
                    .config
                    .consumer
                    .max_wait
                    .max(Duration::from_millis(100));
                let _ = tokio::time::timeout(wait, self.shared.changed.notified()).await;
            }
        }
        Ok(())
    }

    /// One fetch's worth of records from the partitions held: waits at most
    /// about the consumer's `max_wait`, and may return none.
    pub async fn poll(&mut self) -> Result<Vec<Message>> {
        self.poll_max(usize::MAX).await
    }

    /// As [`GroupConsumer::poll`], at most `n` records: the rest stay for
    /// the next call (a commit covers only what was returned).
    pub async fn poll_max(&mut self, n: usize) -> Result<Vec<Message>> {
        self.fill().await?;
        Ok(self.take(n))
    }

    /// The offset of the next record to hand out from `partition`, once
    /// known (from the group's commit, or from a record handed out).
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.buffer
            .iter()
            .find(|m| m.partition == partition)
            .map(|m| m.offset)
            .or_else(|| self.positions.get(&partition).copied())
    }

    /// The next record, waiting as long as it takes.
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            self.fill().await?;
            if let Some(m) = self.take(1).pop() {
                return Ok(m);
            }
        }
    }

    /// Hands out up to `n` buffered records, moving the positions past them.
    fn take(&mut self, n: usize) -> Vec<Message> {
        let n = n.min(self.buffer.len());
        let out: Vec<Message> = self.buffer.drain(..n).collect();
        for m in &out {
            self.positions.insert(m.partition, m.offset + 1);
        }
        out
    }

    /// Commits, for each partition held, the offset after the last record
    /// handed out (only what moved since the last commit).
    pub async fn commit(&mut self) -> Result<()> {
        let held = self.held.clone();
        self.commit_partitions(&held).await?;
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn commit_partitions(&mut self, partitions: &[u32]) -> Result<()> {
        let due: Vec<(u32, u64)> = partitions
            .iter()
            .filter_map(|p| self.positions.get(p).map(|o| (*p, *o)))
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let (member_id, epoch) = {
            let m = lock(&self.shared.state);
            (m.member_id.clone(), m.epoch)
        };
        let offsets: Vec<(&str, u32, u64)> = due
            .iter()
            .map(|&(p, o)| (self.topic.as_str(), p, o))
            .collect();
        self.client
            .commit_as(&self.group, &member_id, epoch, &offsets)
            .await?;
        self.committed.extend(due);
        Ok(())
    }

    /// Commits (with automatic commits) and leaves the group: its
    /// partitions go to the other members at once.
    pub async fn close(mut self) -> Result<()> {
        let committed = if self.config.auto_commit.is_some() {
            self.commit().await
        } else {
            Ok(())
        };
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Dropped without close: no leave; the session runs out.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The membership is gone: the consumer drops every partition (Lost), and
/// the member joins again after that.
fn lose(shared: &Shared) {
    let mut m = lock(&shared.state);
    m.epoch = 0;
    m.pending = Some((Vec::new(), true));
    drop(m);
    shared.changed.notify_one();
}

/// The member's heartbeats until told to stop; then it leaves.
async fn heartbeats(
    client: Client,
    group: String,
    topic: String,
    config: GroupConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let session_ms = config.session_timeout.as_millis().min(u32::MAX as u128) as u32;
    let retry = Duration::from_millis(500);
    let mut last_ok = Instant::now();
    loop {
        // After losing its membership, the member joins again only once
        // the consumer has let go of everything: a join frees what it
        // held, and no one else may read a partition it still reads.
        let letting_go = {
            let m = lock(&shared.state);
            m.epoch == 0 && (m.pending.is_some() || !m.owned.is_empty())
        };
        if letting_go {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shared.beat_now.notified() => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        let request = {
            let m = lock(&shared.state);
            GroupHeartbeat {
                group: group.clone(),
                member_id: m.member_id.clone(),
                member_epoch: m.epoch,
                session_timeout_ms: session_ms,
                client_id: config.client_id.clone(),
                subscription: vec![topic.clone()],
                owned: if m.owned.is_empty() {
                    Vec::new()
                } else {
                    vec![(topic.clone(), m.owned.clone())]
                },
            }
        };
        let wait = match client.call(Request::GroupHeartbeat(request)).await {
            Ok(ResponseBody::Heartbeat(beat)) => {
                let assignment: Vec<u32> = beat
                    .assignment
                    .into_iter()
                    .filter(|(t, _)| *t == topic)
                    .flat_map(|(_, ps)| ps)
                    .collect();
                last_ok = Instant::now();
                let mut m = lock(&shared.state);
                m.member_id = beat.member_id;
                m.epoch = beat.member_epoch;
                // Granted partitions count as held from now on: the
                // consumer may start on them before it says so.
                for p in &assignment {
                    if !m.owned.contains(p) {
                        m.owned.push(*p);
                    }
                }
                let current = m.pending.as_ref().map_or(&m.applied, |(p, _)| p);
                if *current != assignment {
                    let lost = m.pending.as_ref().is_some_and(|(_, l)| *l);
                    m.pending = Some((assignment, lost));
                    drop(m);
                    shared.changed.notify_one();
                }
                Duration::from_millis(u64::from(beat.heartbeat_interval_ms).max(10))
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to a heartbeat");
                retry
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMember) | Some(ErrorCode::FencedMember)
                ) =>
            {
                // Removed (the session ran out): what was held is lost;
                // join again once the consumer has let go of it.
                tracing::warn!(group, error = %e, "left the group; joining again");
                lose(&shared);
                Duration::ZERO
            }
            Err(e) if e.code() == Some(ErrorCode::GroupLimitReached) => {
                // The broker's limits may free up: try again, slowly.
                tracing::warn!(group, error = %e, "group limit reached; retrying");
                retry * 4
            }
            Err(e) if e.code().is_some() => {
                // Refused for good (a bad group id, limits, a Kafka group
                // of that name): the consumer's next poll says so.
                lock(&shared.state).failed = Some(e.to_string());
                shared.changed.notify_one();
                return;
            }
            Err(e) => {
                tracing::debug!(group, error = %e, "heartbeat failed; retrying");
                // Unheard for a whole session, the broker has given the
                // partitions away: stop reading them.
                let held = !lock(&shared.state).owned.is_empty();
                if held && last_ok.elapsed() >= config.session_timeout {
                    tracing::warn!(
                        group,
                        "no heartbeat answered for a session; partitions lost"
                    );
                    lose(&shared);
                }
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.beat_now.notified() => {}
            _ = stop.changed() => break,
        }
    }
    let (member_id, epoch) = {
        let m = lock(&shared.state);
        (m.member_id.clone(), m.epoch)
    };
    if epoch > 0 {
        let leave = GroupHeartbeat {
            group,
            member_id,
            member_epoch: -1,
            session_timeout_ms: session_ms,
            client_id: config.client_id,
            subscription: Vec::new(),
            owned: Vec::new(),
        };
        let _ = client.call(Request::GroupHeartbeat(leave)).await;
    }
}
