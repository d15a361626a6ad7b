//! Consumer groups as the broker core offers them to both front ends: the
//! coordinator's state machine ([`super::groups`]) on the broker's clock,
//! committed offsets in [`crate::storage::offsets`] (durable as the
//! broker's default `flush` says), a task that applies the coordinator's
//! deadlines, and the expiry of offsets of groups without members.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::sync::{watch, Notify};

use super::assigned::{Assigned, Beat, Heartbeat, Partitions};
use super::config::{Config, Flush};
use super::groups::{Coordinator, GroupError, GroupView, Join, Joined, MemberView, State};
use super::Topics;
use crate::storage::offsets::{Committed, OffsetStore, Replayed};
use crate::storage::{StorageError, Vfs};

/// One partition of an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// Why one partition's commit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefused {
    #[error("no such topic or partition")]
    UnknownTopicOrPartition,
    #[error("{0} bytes of commit metadata, more than the limit of {1}")]
    MetadataTooLarge(usize, usize),
    #[error("committed offsets could not be stored: {0}")]
    Storage(String),
}

/// A topic's partitions and their commits (None: no commit).
pub type TopicCommits = (String, Vec<(u32, Option<Committed>)>);

/// A group as ListGroups shows it: name, state, protocol type.
pub type Listed = (String, State, String);

/// Both kinds of group, under one lock so that a group id is only ever
/// one kind: a Kafka client's group (the classic protocol, assigned by
/// its leader) or a group the broker assigns (Spool's own protocol).
struct Coordinators {
    classic: Coordinator,
    assigned: Assigned,
}

impl Coordinators {
    fn is_active(&self, group: &str) -> bool {
        self.classic.is_active(group) || self.assigned.is_active(group)
    }

    /// Whether a new group may start: `max` counts both kinds.
    fn room_for(&self, group: &str, max: usize) -> Result<(), GroupError> {
        if !self.is_active(group) && self.classic.len() + self.assigned.len() >= max {
            return Err(GroupError::TooManyGroups(max));
        }
        Ok(())
    }
}

/// The broker's consumer groups.
pub struct Groups {
    coordinator: Mutex<Coordinators>,
    /// Written on blocking threads only; read anywhere, since a read never
    /// waits for a write's sync.
    store: OffsetStore,
    topics: Arc<Topics>,
    config: Arc<Config>,
    started: Instant,
    /// Woken when a join may have brought a deadline nearer.
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The protocol DescribeGroups names for a group the broker assigns.
pub const ASSIGNED_BY_BROKER: &str = "spool";

/// Kafka's consumer-protocol subscription (version 0) of `topics`, so that
/// Kafka tools describe a broker-assigned group as any other.
fn encode_subscription(topics: &[String]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    let mut s = ConsumerProtocolSubscription::default();
    s.topics = topics
        .iter()
        .map(|t| StrBytes::from_string(t.clone()))
        .collect();
    versioned(&s)
}

/// Kafka's consumer-protocol assignment (version 0) of `partitions`.
fn encode_assignment(partitions: &Partitions) -> Bytes {
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = partitions
        .iter()
        .map(|(t, ps)| {
            let mut tp = TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(t.clone()));
            tp.partitions = ps.iter().map(|&p| p as i32).collect();
            tp
        })
        .collect();
    versioned(&a)
}

/// `i16 version 0`, then the message at version 0.
fn versioned(m: &impl Encodable) -> Bytes {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    // Version 0 of both messages has nothing that can fail to encode.
    let _ = m.encode(&mut out, 0);
    out.freeze()
}

/// The partitions of a consumer-protocol assignment (what a Kafka group's
/// leader gave a member, or a broker-assigned member's grant); nothing for
/// bytes that are not one (another protocol type's assignment).
pub fn assignment_partitions(assignment: &[u8]) -> Partitions {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    let mut buf = Bytes::copy_from_slice(assignment);
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = buf.split_to(2);
    // Later versions start with version 0's fields: read what is known.
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .into_iter()
            .map(|tp| {
                let ps = tp
                    .partitions
                    .into_iter()
                    .filter_map(|p| u32::try_from(p).ok());
                (tp.topic.0.to_string(), ps.collect())
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Groups {
    /// Opens the committed offsets in the data directory.
    pub fn open(
        config: Arc<Config>,
        topics: Arc<Topics>,
        vfs: Arc<dyn Vfs>,
    ) -> Result<(Groups, Replayed), StorageError> {
        let flush = config
            .topic_defaults()
            .map(|d| d.flush)
            .unwrap_or(Flush::Always);
        let dir = config.server.data_dir.clone();
        let (store, replayed) = OffsetStore::open(vfs, &dir, flush == Flush::Always)?;
        let groups = Groups {
            coordinator: Mutex::new(Coordinators {
                classic: Coordinator::new(config.groups.limits(), wall_ms() as u64),
                assigned: Assigned::new(
                    config.groups.limits(),
                    config.groups.heartbeat_interval.as_millis() as u64,
                    wall_ms() as u64,
                ),
            }),
            store,
            topics,
            config,
            started: Instant::now(),
            wake: Notify::new(),
        };
        Ok((groups, replayed))
    }

    /// Applies `change` to the store on a blocking thread.
    async fn write(
        self: &Arc<Self>,
        change: impl FnOnce(&OffsetStore) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), String> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || change(&this.store))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The coordinator's clock: ms since the broker started.
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A topic's partitions; 0 for a topic that does not exist.
    fn partition_count(&self, topic: &str) -> u32 {
        self.topics.get(topic).map_or(0, |t| t.partition_count())
    }

    /// JoinGroup: answered once the rebalance completes.
    pub async fn join(&self, join: Join) -> Result<Joined, GroupError> {
        let reply = {
            let mut c = lock(&self.coordinator);
            if c.assigned.is_active(&join.group) {
                return Err(GroupError::InconsistentGroupProtocol);
            }
            c.room_for(&join.group, self.config.groups.max_groups)?;
            c.classic.join(self.now(), join)
        };
        self.wake.notify_one();
        reply.wait().await
    }

    /// SyncGroup: the member's assignment, once the leader has given it.
    pub async fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, GroupError> {
        let reply = lock(&self.coordinator).classic.sync(
            self.now(),
            group,
            generation,
            member_id,
            instance_id,
            assignments,
        );
        reply.wait().await
    }

    pub fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        lock(&self.coordinator).classic.heartbeat(
            self.now(),
            group,
            generation,
            member_id,
            instance_id,
        )
    }

    /// GROUP_HEARTBEAT of Spool's own protocol: the broker assigns.
    pub fn heartbeat_assigned(&self, hb: Heartbeat) -> Result<Beat, GroupError> {
        let now = self.now();
        let counts = |t: &str| self.partition_count(t);
        let beat = {
            let mut c = lock(&self.coordinator);
            if c.classic.is_active(&hb.group) {
                return Err(GroupError::InconsistentGroupProtocol);
            }
            if hb.member_epoch == 0 {
                c.room_for(&hb.group, self.config.groups.max_groups)?;
            }
            c.assigned.heartbeat(now, hb, &counts)
        };
        self.wake.notify_one();
        beat
    }

    pub fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        lock(&self.coordinator)
            .classic
            .leave(self.now(), group, members)
    }

    /// OffsetCommit: the membership check for the whole request, then each
    /// partition's own result. What is taken is durable when this returns.
    pub async fn commit(
        self: &Arc<Self>,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        partitions: Vec<CommitPartition>,
    ) -> Result<Vec<Result<(), CommitRefused>>, GroupError> {
        {
            let mut c = lock(&self.coordinator);
            if c.assigned.is_active(group) {
                c.assigned
                    .check_commit(self.now(), group, generation, member_id)?;
            } else {
                c.classic
                    .check_commit(self.now(), group, generation, member_id, instance_id)?;
            }
        }
        let max = self.config.groups.max_metadata_bytes as usize;
        let now = wall_ms();
        let mut results = Vec::with_capacity(partitions.len());
        // The indexes in `results` of the partitions taken, and what is stored.
        let (mut taken, mut entries) = (Vec::new(), Vec::new());
        for p in partitions {
            let known = self
                .topics
                .get(&p.topic)
                .is_some_and(|t| p.partition < t.partition_count());
            results.push(if !known {
                Err(CommitRefused::UnknownTopicOrPartition)
            } else if p.metadata.len() > max {
                Err(CommitRefused::MetadataTooLarge(p.metadata.len(), max))
            } else {
                taken.push(results.len());
                let c = Committed {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: p.metadata,
                    commit_ms: now,
                };
                entries.push((p.topic, p.partition, c));
                Ok(())
            });
        }
        if taken.is_empty() {
            return Ok(results);
        }
        let name = group.to_owned();
        let stored = self.write(move |store| store.commit(&name, entries)).await;
        if let Err(e) = stored {
            tracing::warn!(group, error = %e, "committed offsets not stored");
            for i in taken {
                results[i] = Err(CommitRefused::Storage(e.clone()));
            }
        }
        Ok(results)
    }

    /// The committed offsets of `group`: of the partitions asked, or of
    /// every partition it committed (None). None for a partition without a
    /// commit.
    pub fn committed(
        &self,
        group: &str,
        partitions: Option<Vec<(String, Vec<u32>)>>,
    ) -> Vec<TopicCommits> {
        self.store.read(|all| {
            let offsets = all.get(group);
            match partitions {
                Some(asked) => asked
                    .into_iter()
                    .map(|(topic, ps)| {
                        let got = ps
                            .into_iter()
                            .map(|p| {
                                let c = offsets.and_then(|o| o.get(&(topic.clone(), p)).cloned());
                                (p, c)
                            })
                            .collect();
                        (topic, got)
                    })
                    .collect(),
                None => {
                    let mut listed: Vec<TopicCommits> = Vec::new();
                    for ((topic, p), c) in offsets.into_iter().flatten() {
                        match listed.last_mut() {
                            Some((t, ps)) if t == topic => ps.push((*p, Some(c.clone()))),
                            _ => listed.push((topic.clone(), vec![(*p, Some(c.clone()))])),
                        }
                    }
                    listed
                }
            }
        })
    }

    /// Every group: those with members, and those with only committed
    /// offsets (Empty, no protocol type), by name.
    pub fn list(&self) -> Vec<Listed> {
        let mut all = {
            let c = lock(&self.coordinator);
            let mut all = c.classic.list();
            for name in c.assigned.names() {
                let state = c.assigned.describe(&name).map_or(State::Empty, |v| v.state);
                all.push((name, state, "consumer".to_owned()));
            }
            all
        };
        self.store.read(|offsets| {
            for name in offsets.keys() {
                if !all.iter().any(|(n, _, _)| n == name) {
                    all.push((name.to_owned(), State::Empty, String::new()));
                }
            }
        });
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A group's state and members; `None` for a group the broker does
    /// not know (Kafka's "Dead").
    pub fn describe(&self, group: &str) -> Option<GroupView> {
        {
            let c = lock(&self.coordinator);
            if let Some(view) = c.classic.describe(group) {
                return Some(view);
            }
            if let Some(view) = c.assigned.describe(group) {
                return Some(GroupView {
                    state: view.state,
                    protocol_type: "consumer".into(),
                    protocol: ASSIGNED_BY_BROKER.into(),
                    generation: view.epoch,
                    members: view
                        .members
                        .into_iter()
                        .map(|m| MemberView {
                            metadata: encode_subscription(&m.subscription),
                            assignment: encode_assignment(&m.assignment),
                            member_id: m.member_id,
                            instance_id: None,
                            client_id: m.client_id,
                            client_host: m.client_host,
                        })
                        .collect(),
                });
            }
        }
        let committed = self.store.read(|all| all.contains_key(group));
        committed.then(|| GroupView {
            state: State::Empty,
            protocol_type: String::new(),
            protocol: String::new(),
            generation: 0,
            members: Vec::new(),
        })
    }

    /// Whether the group has members (or a rebalance under way).
    pub fn is_active(&self, group: &str) -> bool {
        lock(&self.coordinator).is_active(group)
    }

    /// DeleteGroups: a group with members cannot be deleted.
    pub async fn delete_group(self: &Arc<Self>, group: &str) -> Result<(), GroupError> {
        if lock(&self.coordinator).is_active(group) {
            return Err(GroupError::NonEmptyGroup);
        }
        if !self.store.read(|all| all.contains_key(group)) {
            return Err(GroupError::GroupIdNotFound);
        }
        let name = group.to_owned();
        self.write(move |store| store.delete_group(&name))
            .await
            .map_err(GroupError::Storage)
    }

    /// OffsetDelete: forgets the partitions' commits (the caller checks
    /// that no member consumes them).
    pub async fn delete_offsets(
        self: &Arc<Self>,
        group: &str,
        partitions: Vec<(String, u32)>,
    ) -> Result<(), GroupError> {
        let known = self.store.read(|all| all.contains_key(group));
        if !known && !lock(&self.coordinator).is_active(group) {
            return Err(GroupError::GroupIdNotFound);
        }
        let name = group.to_owned();
        self.write(move |store| store.delete(&name, partitions))
            .await
            .map_err(GroupError::Storage)
    }

    /// Forgets the offsets of groups without members whose latest commit
    /// is older than `offsets_retention`; returns the groups forgotten.
    /// Blocking: it writes the store.
    pub fn expire_offsets(&self, now_ms: i64) -> Vec<String> {
        let retention = self.config.groups.offsets_retention.as_millis() as i64;
        let expired: Vec<String> = {
            let coordinator = lock(&self.coordinator);
            self.store.read(|all| {
                all.iter()
                    .filter(|(name, offsets)| {
                        let latest = offsets.values().map(|c| c.commit_ms).max().unwrap_or(0);
                        !coordinator.is_active(name) && now_ms.saturating_sub(latest) >= retention
                    })
                    .map(|(name, _)| name.to_owned())
                    .collect()
            })
        };
        expired
            .into_iter()
            .filter(|g| match self.store.delete_group(g) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(group = g, error = %e, "expired offsets not removed");
                    false
                }
            })
            .collect()
    }

    /// Syncs the committed offsets (for a broker whose flush is not
    /// `always`, where commits are written but not synced one by one).
    pub fn sync_offsets(&self) -> Result<(), StorageError> {
        self.store.sync()
    }

    /// Applies the coordinator's deadlines until shutdown, expires offsets
    /// every minute and, with `flush = "interval"`, syncs the offsets at
    /// that interval.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let flush = self.config.topic_defaults().ok();
        let sync_every = match &flush {
            Some(d) if d.flush == Flush::Interval => Some(d.flush_interval),
            _ => None,
        };
        let mut last_expiry = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let now = self.now();
            let next = {
                let counts = |t: &str| self.partition_count(t);
                let mut c = lock(&self.coordinator);
                c.classic.tick(now);
                c.assigned.tick(now, &counts);
                [c.classic.next_deadline(), c.assigned.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
            };
            let mut wait = Duration::from_secs(1);
            if let Some(at) = next {
                wait = wait.min(Duration::from_millis(at.saturating_sub(now).max(1)));
            }
            if last_expiry.elapsed() >= Duration::from_secs(60) {
                last_expiry = Instant::now();
                let this = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || {
                    for g in this.expire_offsets(wall_ms()) {
                        tracing::info!(group = g, "committed offsets expired");
                    }
                })
                .await;
            }
            if let Some(every) = sync_every {
                if last_sync.elapsed() >= every {
                    last_sync = Instant::now();
                    let this = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || this.sync_offsets()).await;
                }
                wait = wait.min(every);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        let _ = tokio::task::spawn_blocking(move || self.sync_offsets()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::groups::Join;
    use crate::storage::OsVfs;

    fn groups(dir: &std::path::Path) -> Arc<Groups> {
        let mut config = Config::default();
        config.server.data_dir = dir.to_owned();
        config.groups.initial_rebalance_delay = Duration::ZERO;
        let config = Arc::new(config);
        let topics = Arc::new(Topics::load_with(Arc::clone(&config), OsVfs::shared()).unwrap());
        topics.get_or_create("t").unwrap();
        let (groups, _) = Groups::open(config, topics, OsVfs::shared()).unwrap();
        Arc::new(groups)
    }

    fn at(offset: i64) -> Vec<CommitPartition> {
        vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }]
    }

    /// Offsets of a group without members go once their latest commit is
    /// older than `offsets_retention`; a group with members keeps them.
    #[tokio::test]
    async fn offsets_of_groups_without_members_expire() {
        let dir = tempfile::tempdir().unwrap();
        let g = groups(dir.path());
        let week = g.config.groups.offsets_retention.as_millis() as i64;
        assert_eq!(
            g.commit("idle", -1, "", None, at(5)).await.unwrap(),
            [Ok(())]
        );
        let joined = g
            .join(Join {
                group: "busy".into(),
                member_id: String::new(),
                instance_id: None,
                client_id: "c".into(),
                client_host: String::new(),
                session_timeout_ms: 60_000,
                rebalance_timeout_ms: 60_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::new())],
                require_known_member_id: false,
            })
            .await
            .unwrap();
        let (generation, member) = (joined.generation, joined.member_id.as_str());
        // Commits wait for the generation's assignment.
        let early = g.commit("busy", generation, member, None, at(7)).await;
        assert_eq!(early, Err(GroupError::RebalanceInProgress));
        g.sync("busy", generation, member, None, vec![])
            .await
            .unwrap();
        let commit = g.commit("busy", generation, member, None, at(7));
        assert_eq!(commit.await.unwrap(), [Ok(())]);
        let now = wall_ms();
        assert!(g.expire_offsets(now + week - 60_000).is_empty());
        assert_eq!(g.expire_offsets(now + week + 60_000), ["idle"]);
        assert!(g.committed("idle", None).is_empty());
        assert_eq!(
            g.committed("busy", None)[0].1[0].1.as_ref().unwrap().offset,
            7
        );
        // Gone from the file too.
        let (store, _) = OffsetStore::open(OsVfs::shared(), dir.path(), true).unwrap();
        let kept: Vec<String> = store.read(|all| all.keys().cloned().collect());
        assert_eq!(kept, ["busy"]);
    }
}
