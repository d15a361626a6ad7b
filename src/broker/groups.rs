//! The group coordinator: Kafka's classic group protocol, in the broker
//! core, for every front end. Members join a group, one of them (the
//! leader) is given every member's subscription and computes the
//! assignment (the assignors run in the clients), and each member gets its
//! share back from SyncGroup; the broker only carries the bytes. Committed
//! offsets are kept apart, in [`crate::storage::offsets`].
//!
//! A group moves between four states, as in Kafka:
//!
//! ```text
//! Empty --join--> PreparingRebalance --all joined, or the rebalance
//!   ^                  ^    |            timeout--> CompletingRebalance
//!   |  last member     |    |                          | leader's sync
//!   |  leaves/expires  |    +--no member left--> Empty v
//!   +------------------+---- join, leave, expiry --- Stable
//! ```
//!
//! - A join with no member id (v4+ clients) is answered MEMBER_ID_REQUIRED
//!   with a new id, which the client sends back in a second join; older
//!   clients (and static members) get their id in the answer directly.
//! - A rebalance completes when every member has joined again, or when the
//!   longest rebalance timeout passes (members that did not rejoin are
//!   removed). From Empty, it waits `initial_rebalance_delay` first
//!   (extended by each join, up to the rebalance timeout) so that
//!   consumers started together form one generation.
//! - Each completed rebalance is a new generation; requests naming another
//!   generation are ILLEGAL_GENERATION, unknown members UNKNOWN_MEMBER_ID.
//! - Members that neither heartbeat nor wait in a join or sync for their
//!   session timeout are removed, and the group rebalances.
//! - Static members (`group.instance.id`) keep their place across
//!   restarts: a join with a known instance id replaces the old member id
//!   (which is fenced: FENCED_INSTANCE_ID) without a rebalance when the
//!   group is stable and the subscription is unchanged.
//!
//! Time is passed in (`now`, in ms), so the state machine runs on a
//! simulated clock in tests; [`Coordinator::tick`] applies deadlines.
//! Answers that wait (a join until the rebalance completes, a follower's
//! sync until the leader's) are delivered through oneshot channels.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Limits and timings of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups with members, at most (groups with only committed offsets
    /// are not counted).
    pub max_groups: usize,
    pub max_members: usize,
    /// Bytes of one member's protocol metadata (all its protocols) or of
    /// one assignment.
    pub max_metadata_bytes: usize,
    pub min_session_ms: u64,
    pub max_session_ms: u64,
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupLimits {
    fn default() -> Self {
        // Kafka's defaults (group.min/max.session.timeout.ms,
        // group.initial.rebalance.delay.ms); max_groups and metadata bytes
        // are Spool's bounds on memory.
        GroupLimits {
            max_groups: 10_000,
            max_members: 1_000,
            max_metadata_bytes: 1 << 20,
            min_session_ms: 6_000,
            max_session_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// Why a group request was refused, as Kafka names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("a member id is required: join again with {0}")]
    MemberIdRequired(String),
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("generation {0} is not the group's ({1})")]
    IllegalGeneration(i32, i32),
    #[error("the group is rebalancing: join again")]
    RebalanceInProgress,
    #[error("no protocol is shared with the group's members, or the protocol type differs")]
    InconsistentGroupProtocol,
    #[error("session timeout {0} ms outside {1}..={2} ms")]
    InvalidSessionTimeout(u64, u64, u64),
    #[error("the group has its maximum of {0} members")]
    GroupMaxSizeReached(usize),
    #[error("the broker coordinates its maximum of {0} groups")]
    TooManyGroups(usize),
    #[error("member epoch {0} is not the member's ({1}): join again")]
    FencedMemberEpoch(i32, i32),
    #[error("instance id {0} is now another member")]
    FencedInstanceId(String),
    #[error("the group has members")]
    NonEmptyGroup,
    #[error("no such group")]
    GroupIdNotFound,
    #[error("invalid group id: {0}")]
    InvalidGroupId(&'static str),
    #[error("{0} bytes of metadata, more than the limit of {1}")]
    MetadataTooLarge(usize, usize),
    /// The committed offsets could not be written.
    #[error("committed offsets: {0}")]
    Storage(String),
}

/// A group's state, as DescribeGroups names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// A broker-assigned group whose partitions are moving between members.
    Reconciling,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Reconciling => "Reconciling",
        }
    }
}

/// A JoinGroup.
#[derive(Debug, Clone)]
pub struct Join {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether a new member without an id is told MEMBER_ID_REQUIRED
    /// (Kafka's JoinGroup v4+) rather than joined at once.
    pub require_known_member_id: bool,
}

/// A completed join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member (id, instance id, metadata of the
    /// chosen protocol); empty for the others.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// An answer now, or one to wait for.
#[derive(Debug)]
pub enum Reply<T> {
    Now(Result<T, GroupError>),
    Later(oneshot::Receiver<Result<T, GroupError>>),
}

impl<T> Reply<T> {
    /// Waits for the answer; a coordinator that went away before answering
    /// (the broker is stopping) is a rebalance to the client.
    pub async fn wait(self) -> Result<T, GroupError> {
        match self {
            Reply::Now(r) => r,
            Reply::Later(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }
}

type Waiter<T> = oneshot::Sender<Result<T, GroupError>>;

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Its session runs from here, unless it waits in a join or a sync.
    last_seen: u64,
    join: Option<Waiter<Joined>>,
    /// Joined in the rebalance under way.
    joined: bool,
    sync: Option<Waiter<Bytes>>,
}

impl Member {
    /// Its metadata for `protocol` (empty if it has none).
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, until their session ends.
    pending: HashMap<String, u64>,
    /// Instance id to member id.
    instances: HashMap<String, String>,
    /// When the rebalance under way started, and when it completes even if
    /// not all joined.
    rebalance_started: u64,
    rebalance_deadline: u64,
    /// In the initial delay of a rebalance from Empty: completes only at
    /// the deadline.
    initial: bool,
}

impl Group {
    fn new(now: u64) -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            rebalance_started: now,
            rebalance_deadline: 0,
            initial: false,
        }
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The metadata of the group's protocol (empty before one is chosen).
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<MemberView>,
}

/// Every group with members, and their rebalances.
#[derive(Debug)]
pub struct Coordinator {
    limits: GroupLimits,
    groups: HashMap<String, Group>,
    /// Makes member ids unique within this broker's run.
    next_id: u64,
    /// Distinguishes this run's member ids from an earlier run's.
    run: u64,
}

/// A group id Kafka would accept: not empty, at most 249 bytes (Spool's
/// bound; Kafka has none), no control characters.
pub fn check_group_id(group: &str) -> Result<(), GroupError> {
    if group.is_empty() {
        return Err(GroupError::InvalidGroupId("empty"));
    }
    if group.len() > 249 {
        return Err(GroupError::InvalidGroupId("longer than 249 bytes"));
    }
    if group.chars().any(char::is_control) {
        return Err(GroupError::InvalidGroupId("control characters"));
    }
    Ok(())
}

impl Coordinator {
    /// `run` makes member ids differ between runs of the broker (the start
    /// time will do).
    pub fn new(limits: GroupLimits, run: u64) -> Coordinator {
        Coordinator {
            limits,
            groups: HashMap::new(),
            next_id: 0,
            run,
        }
    }

    pub fn limits(&self) -> &GroupLimits {
        &self.limits
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_id += 1;
        // Kafka's shape: the client id, a dash, something unique.
        let prefix: String = client_id.chars().take(64).collect();
        format!("{prefix}-{:x}-{}", self.run, self.next_id)
    }

    /// JoinGroup.
    pub fn join(&mut self, now: u64, join: Join) -> Reply<Joined> {
        self.try_join(now, join)
            .unwrap_or_else(|e| Reply::Now(Err(e)))
    }

    fn try_join(&mut self, now: u64, j: Join) -> Result<Reply<Joined>, GroupError> {
        check_group_id(&j.group)?;
        let l = &self.limits;
        if j.session_timeout_ms < l.min_session_ms || j.session_timeout_ms > l.max_session_ms {
            return Err(GroupError::InvalidSessionTimeout(
                j.session_timeout_ms,
                l.min_session_ms,
                l.max_session_ms,
            ));
        }
        let metadata: usize = j.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if metadata > l.max_metadata_bytes {
            return Err(GroupError::MetadataTooLarge(metadata, l.max_metadata_bytes));
        }
        if j.protocol_type.is_empty() || j.protocols.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        if !self.groups.contains_key(&j.group) {
            let live = self.groups.len();
            if live >= self.limits.max_groups {
                return Err(GroupError::TooManyGroups(self.limits.max_groups));
            }
            self.groups.insert(j.group.clone(), Group::new(now));
        }
        let max_members = self.limits.max_members;
        let initial_delay = self.limits.initial_rebalance_delay_ms;
        let new_id = if j.member_id.is_empty() {
            Some(self.new_member_id(&j.client_id))
        } else {
            None
        };
        let group = self.groups.get_mut(&j.group).expect("inserted above");
        if !compatible(group, &j) {
            let g = j.group.clone();
            self.forget_if_unused(&g);
            return Err(GroupError::InconsistentGroupProtocol);
        }
        let member_id = match (new_id, &j.instance_id) {
            // A static member: a new id, taking the old one's place.
            (Some(id), Some(instance)) => {
                if let Some(old) = group.instances.get(instance).cloned() {
                    return Ok(replace_static(group, now, old, id, j));
                }
                group.instances.insert(instance.clone(), id.clone());
                id
            }
            (Some(id), None) => {
                if j.require_known_member_id {
                    group.pending.insert(id.clone(), now + j.session_timeout_ms);
                    return Err(GroupError::MemberIdRequired(id));
                }
                id
            }
            (None, instance) => {
                let id = j.member_id.clone();
                if let Some(instance) = instance {
                    if group.instances.get(instance) != Some(&id) {
                        return Err(GroupError::FencedInstanceId(instance.clone()));
                    }
                }
                if group.pending.remove(&id).is_none() && !group.members.contains_key(&id) {
                    return Err(GroupError::UnknownMemberId);
                }
                id
            }
        };
        if !group.members.contains_key(&member_id) && group.members.len() >= max_members {
            if let Some(instance) = &j.instance_id {
                group.instances.remove(instance);
            }
            return Err(GroupError::GroupMaxSizeReached(max_members));
        }
        let (tx, rx) = oneshot::channel();
        match group.members.get_mut(&member_id) {
            Some(m) => {
                let same = m.protocols == j.protocols;
                let is_leader = group.leader.as_deref() == Some(member_id.as_str());
                // A member that lost its answer asks again with nothing
                // changed: it gets the generation as it is.
                if same
                    && !is_leader
                    && matches!(group.state, State::Stable | State::CompletingRebalance)
                {
                    m.last_seen = now;
                    return Ok(Reply::Now(Ok(joined(group, &member_id, false))));
                }
                m.protocols = j.protocols;
                m.session_timeout_ms = j.session_timeout_ms;
                m.rebalance_timeout_ms = j.rebalance_timeout_ms;
                m.client_id = j.client_id;
                m.client_host = j.client_host;
                m.join = Some(tx);
                m.joined = true;
                m.last_seen = now;
            }
            None => {
                group.members.insert(
                    member_id.clone(),
                    Member {
                        instance_id: j.instance_id.clone(),
                        client_id: j.client_id,
                        client_host: j.client_host,
                        session_timeout_ms: j.session_timeout_ms,
                        rebalance_timeout_ms: j.rebalance_timeout_ms,
                        protocols: j.protocols,
                        assignment: Bytes::new(),
                        last_seen: now,
                        join: Some(tx),
                        joined: true,
                        sync: None,
                    },
                );
                if group.protocol_type.is_none() {
                    group.protocol_type = Some(j.protocol_type);
                }
            }
        }
        match group.state {
            State::PreparingRebalance => {
                // Each join in the initial delay extends it, within the
                // longest rebalance timeout from the start.
                if group.initial {
                    let limit = group.rebalance_started + longest_rebalance(group);
                    let extended = (now + initial_delay).min(limit);
                    group.rebalance_deadline = group.rebalance_deadline.max(extended);
                }
            }
            State::Empty => {
                prepare(group, now);
                if initial_delay > 0 {
                    group.initial = true;
                    group.rebalance_deadline = now + initial_delay;
                }
            }
            // Reconciling is a broker-assigned group's state, never a
            // classic group's: treated as Stable.
            State::CompletingRebalance | State::Stable | State::Reconciling => prepare(group, now),
        }
        try_complete(group, now);
        Ok(Reply::Later(rx))
    }

    /// SyncGroup: the leader's assignment (member id, bytes) is taken and
    /// each member gets its own.
    pub fn sync(
        &mut self,
        now: u64,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Reply<Bytes> {
        let max = self.limits.max_metadata_bytes;
        let Some(g) = self.groups.get_mut(group) else {
            return Reply::Now(Err(GroupError::UnknownMemberId));
        };
        if let Err(e) = check_member(g, member_id, instance_id, generation) {
            return Reply::Now(Err(e));
        }
        if let Some((_, a)) = assignments.iter().find(|(_, a)| a.len() > max) {
            return Reply::Now(Err(GroupError::MetadataTooLarge(a.len(), max)));
        }
        match g.state {
            State::PreparingRebalance => Reply::Now(Err(GroupError::RebalanceInProgress)),
            State::Stable | State::Reconciling => {
                let m = g.members.get_mut(member_id).expect("checked");
                m.last_seen = now;
                Reply::Now(Ok(m.assignment.clone()))
            }
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = g.members.get_mut(member_id).expect("checked");
                m.sync = Some(tx);
                m.last_seen = now;
                if g.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = given.remove(id).unwrap_or_default();
                        if let Some(tx) = m.sync.take() {
                            let _ = tx.send(Ok(m.assignment.clone()));
                        }
                        m.last_seen = now;
                    }
                    g.state = State::Stable;
                }
                Reply::Later(rx)
            }
            State::Empty => Reply::Now(Err(GroupError::UnknownMemberId)),
        }
    }

    /// Heartbeat: keeps the member's session; tells it to rejoin while the
    /// group rebalances.
    pub fn heartbeat(
        &mut self,
        now: u64,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let Some(g) = self.groups.get_mut(group) else {
            return Err(GroupError::UnknownMemberId);
        };
        check_member(g, member_id, instance_id, generation)?;
        g.members.get_mut(member_id).expect("checked").last_seen = now;
        match g.state {
            State::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup, for each (member id, instance id): its own answer. A
    /// static member may leave by instance id alone (empty member id).
    pub fn leave(
        &mut self,
        now: u64,
        group: &str,
        leaving: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        let Some(g) = self.groups.get_mut(group) else {
            return leaving
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect();
        };
        let mut results = Vec::with_capacity(leaving.len());
        let mut left = false;
        for (member_id, instance_id) in leaving {
            let id = match instance_id {
                Some(instance) => match g.instances.get(instance) {
                    Some(current) if member_id.is_empty() || current == member_id => {
                        current.clone()
                    }
                    Some(_) => {
                        results.push(Err(GroupError::FencedInstanceId(instance.clone())));
                        continue;
                    }
                    None => {
                        results.push(Err(GroupError::UnknownMemberId));
                        continue;
                    }
                },
                None => member_id.clone(),
            };
            if g.pending.remove(&id).is_some() {
                results.push(Ok(()));
                continue;
            }
            if remove_member(g, &id) {
                left = true;
                results.push(Ok(()));
            } else {
                results.push(Err(GroupError::UnknownMemberId));
            }
        }
        if left {
            after_removal(g, now);
        }
        let name = group.to_owned();
        self.forget_if_unused(&name);
        results
    }

    /// Applies deadlines: completes rebalances whose time is up, removes
    /// members whose session ended and forgets pending member ids.
    pub fn tick(&mut self, now: u64) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.groups.get_mut(&name).expect("listed");
            g.pending.retain(|_, deadline| *deadline > now);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join.is_none()
                        && m.sync.is_none()
                        && m.last_seen + m.session_timeout_ms <= now
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut removed = false;
            for id in expired {
                removed |= remove_member(g, &id);
            }
            if removed {
                after_removal(g, now);
            }
            if g.state == State::PreparingRebalance && g.rebalance_deadline <= now {
                // Members that did not rejoin in time are out.
                let late: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| !m.joined)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in late {
                    remove_member(g, &id);
                }
                g.initial = false;
                complete(g, now);
            }
            self.forget_if_unused(&name);
        }
    }

    /// The earliest deadline of any group, if there is one: when
    /// [`Coordinator::tick`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .values()
            .flat_map(|g| {
                let rebalance =
                    (g.state == State::PreparingRebalance).then_some(g.rebalance_deadline);
                let sessions = g
                    .members
                    .values()
                    .filter(|m| m.join.is_none() && m.sync.is_none())
                    .map(|m| m.last_seen + m.session_timeout_ms);
                let pending = g.pending.values().copied();
                rebalance.into_iter().chain(sessions).chain(pending)
            })
            .min()
    }

    /// The group's state and members; None for a group with no members
    /// and no rebalance (Empty, or never seen).
    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let g = self.groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            generation: g.generation,
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Groups with members, and their state and protocol type.
    pub fn list(&self) -> Vec<(String, State, String)> {
        let mut all: Vec<_> = self
            .groups
            .iter()
            .map(|(n, g)| {
                (
                    n.clone(),
                    g.state,
                    g.protocol_type.clone().unwrap_or_default(),
                )
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Groups with members (or a rebalance under way).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether the group has members (or a rebalance under way).
    pub fn is_active(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Checks a commit's member and generation, as Kafka's OffsetCommit
    /// does: generation -1 with no member is a commit from outside any
    /// group (allowed while the group has no members); a member's commit
    /// must name the current generation, and refreshes its session.
    pub fn check_commit(
        &mut self,
        now: u64,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        check_group_id(group)?;
        let Some(g) = self.groups.get_mut(group) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration(generation, 0))
            };
        };
        if generation < 0 && g.members.is_empty() {
            return Ok(());
        }
        if g.state == State::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        check_member(g, member_id, instance_id, generation)?;
        g.members.get_mut(member_id).expect("checked").last_seen = now;
        Ok(())
    }

    fn forget_if_unused(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(|g| {
            g.members.is_empty() && g.pending.is_empty() && g.state == State::Empty
        }) {
            self.groups.remove(group);
        }
    }
}

/// Whether a joining member can be in this group: the same protocol type
/// and, once the group has members, a protocol every member supports.
fn compatible(g: &Group, j: &Join) -> bool {
    if g.members.is_empty() {
        return true;
    }
    if g.protocol_type
        .as_deref()
        .is_some_and(|t| t != j.protocol_type)
    {
        return false;
    }
    j.protocols.iter().any(|(name, _)| {
        g.members
            .iter()
            .filter(|(id, _)| **id != j.member_id)
            .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
    })
}

fn check_member(
    g: &Group,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
) -> Result<(), GroupError> {
    if let Some(instance) = instance_id {
        match g.instances.get(instance) {
            Some(current) if current != member_id => {
                return Err(GroupError::FencedInstanceId(instance.to_owned()))
            }
            _ => {}
        }
    }
    if !g.members.contains_key(member_id) {
        return Err(GroupError::UnknownMemberId);
    }
    if generation != g.generation {
        return Err(GroupError::IllegalGeneration(generation, g.generation));
    }
    Ok(())
}

fn longest_rebalance(g: &Group) -> u64 {
    g.members
        .values()
        .map(|m| m.rebalance_timeout_ms)
        .max()
        .unwrap_or(0)
}

/// Starts a rebalance: every member must join again; waiting syncs are
/// told to rejoin.
fn prepare(g: &mut Group, now: u64) {
    if g.state == State::PreparingRebalance {
        return;
    }
    for m in g.members.values_mut() {
        if let Some(tx) = m.sync.take() {
            let _ = tx.send(Err(GroupError::RebalanceInProgress));
        }
        // The join that starts the rebalance has set its own flag already.
        if m.join.is_none() {
            m.joined = false;
        }
    }
    tracing::debug!(
        generation = g.generation,
        members = g.members.len(),
        "group rebalancing"
    );
    g.state = State::PreparingRebalance;
    g.initial = false;
    g.rebalance_started = now;
    g.rebalance_deadline = now + longest_rebalance(g);
}

/// Completes the rebalance if every member has joined (and the initial
/// delay is not running).
fn try_complete(g: &mut Group, now: u64) {
    if g.state == State::PreparingRebalance && !g.initial && g.members.values().all(|m| m.joined) {
        complete(g, now);
    }
}

/// A new generation from the members that joined.
fn complete(g: &mut Group, now: u64) {
    g.generation += 1;
    tracing::debug!(
        generation = g.generation,
        members = g.members.len(),
        "group rebalanced"
    );
    if g.members.is_empty() {
        g.state = State::Empty;
        g.protocol = None;
        g.protocol_type = None;
        g.leader = None;
        return;
    }
    // The protocol most members prefer among those all of them support.
    let first = g.members.values().next().expect("not empty");
    let shared: Vec<&String> = first
        .protocols
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            g.members
                .values()
                .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
        })
        .collect();
    let mut votes = vec![0usize; shared.len()];
    for m in g.members.values() {
        if let Some(i) = m
            .protocols
            .iter()
            .find_map(|(n, _)| shared.iter().position(|s| *s == n))
        {
            votes[i] += 1;
        }
    }
    // Most votes; on a tie, the first member's preference (max_by_key
    // keeps the last of equals, so the indexes go backwards).
    let chosen = (0..shared.len())
        .rev()
        .max_by_key(|&i| votes[i])
        .map(|i| shared[i].clone());
    let Some(protocol) = chosen else {
        // Cannot happen: joins are refused unless a protocol is shared.
        for m in g.members.values_mut() {
            if let Some(tx) = m.join.take() {
                let _ = tx.send(Err(GroupError::InconsistentGroupProtocol));
            }
        }
        g.members.clear();
        g.state = State::Empty;
        return;
    };
    g.protocol = Some(protocol);
    if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
        g.leader = g.members.keys().next().cloned();
    }
    g.state = State::CompletingRebalance;
    let ids: Vec<String> = g.members.keys().cloned().collect();
    for id in ids {
        let is_leader = g.leader.as_deref() == Some(id.as_str());
        let answer = joined(g, &id, is_leader);
        let m = g.members.get_mut(&id).expect("listed");
        m.joined = false;
        m.last_seen = now;
        m.assignment = Bytes::new();
        if let Some(tx) = m.join.take() {
            let _ = tx.send(Ok(answer));
        }
    }
}

fn joined(g: &Group, member_id: &str, with_members: bool) -> Joined {
    let protocol = g.protocol.clone().unwrap_or_default();
    Joined {
        generation: g.generation,
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        protocol: protocol.clone(),
        leader: g.leader.clone().unwrap_or_default(),
        member_id: member_id.to_owned(),
        members: if with_members {
            g.members
                .iter()
                .map(|(id, m)| (id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Removes a member; its waiting join or sync is told it is unknown.
fn remove_member(g: &mut Group, id: &str) -> bool {
    let Some(mut m) = g.members.remove(id) else {
        return false;
    };
    if let Some(tx) = m.join.take() {
        let _ = tx.send(Err(GroupError::UnknownMemberId));
    }
    if let Some(tx) = m.sync.take() {
        let _ = tx.send(Err(GroupError::UnknownMemberId));
    }
    if let Some(instance) = &m.instance_id {
        if g.instances.get(instance).map(String::as_str) == Some(id) {
            g.instances.remove(instance);
        }
    }
    if g.leader.as_deref() == Some(id) {
        g.leader = None;
    }
    true
}

/// After members left: a rebalance, or completion of the one under way
/// (the members that remain may all have joined).
fn after_removal(g: &mut Group, now: u64) {
    if g.state == State::Empty {
        return;
    }
    if g.members.is_empty() {
        // A new generation with nobody: the group is Empty.
        g.initial = false;
        complete(g, now);
    } else if g.state == State::PreparingRebalance {
        try_complete(g, now);
    } else {
        prepare(g, now);
    }
}

/// A static member rejoining with a new member id: it takes the old id's
/// place, and the old id is fenced. In a stable group with the same
/// subscription nothing else changes; otherwise the group rebalances.
fn replace_static(g: &mut Group, now: u64, old: String, new: String, j: Join) -> Reply<Joined> {
    let instance = j.instance_id.clone().expect("static");
    let Some(mut m) = g.members.remove(&old) else {
        // Known instance without a member (cannot happen: both go together).
        g.instances.remove(&instance);
        return Reply::Now(Err(GroupError::UnknownMemberId));
    };
    if let Some(tx) = m.join.take() {
        let _ = tx.send(Err(GroupError::FencedInstanceId(instance.clone())));
    }
    if let Some(tx) = m.sync.take() {
        let _ = tx.send(Err(GroupError::FencedInstanceId(instance.clone())));
    }
    let same = m.protocols == j.protocols;
    m.client_id = j.client_id;
    m.client_host = j.client_host;
    m.session_timeout_ms = j.session_timeout_ms;
    m.rebalance_timeout_ms = j.rebalance_timeout_ms;
    m.last_seen = now;
    if g.leader.as_deref() == Some(old.as_str()) {
        g.leader = Some(new.clone());
    }
    g.instances.insert(instance, new.clone());
    if same && g.state == State::Stable {
        g.members.insert(new.clone(), m);
        let is_leader = g.leader.as_deref() == Some(new.as_str());
        return Reply::Now(Ok(joined(g, &new, is_leader)));
    }
    let (tx, rx) = oneshot::channel();
    m.protocols = j.protocols;
    m.join = Some(tx);
    m.joined = true;
    g.members.insert(new, m);
    prepare(g, now);
    try_complete(g, now);
    Reply::Later(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    const SESSION: u64 = 10_000;
    const REBALANCE: u64 = 30_000;

    fn coordinator(initial_delay: u64) -> Coordinator {
        Coordinator::new(
            GroupLimits {
                initial_rebalance_delay_ms: initial_delay,
                max_members: 3,
                ..GroupLimits::default()
            },
            1,
        )
    }

    fn request(member: &str, protocols: &[&str]) -> Join {
        Join {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION,
            rebalance_timeout_ms: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{p}:{member}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn now<T: std::fmt::Debug>(r: Reply<T>) -> Result<T, GroupError> {
        match r {
            Reply::Now(r) => r,
            Reply::Later(_) => panic!("expected an answer now"),
        }
    }

    fn later<T: std::fmt::Debug>(r: Reply<T>) -> oneshot::Receiver<Result<T, GroupError>> {
        match r {
            Reply::Later(rx) => rx,
            Reply::Now(r) => panic!("expected to wait, got {r:?}"),
        }
    }

    fn answered<T>(rx: &mut oneshot::Receiver<Result<T, GroupError>>) -> Result<T, GroupError> {
        rx.try_recv().expect("answered")
    }

    fn waiting<T>(rx: &mut oneshot::Receiver<Result<T, GroupError>>) {
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    /// A new member's id, from the MEMBER_ID_REQUIRED round.
    fn member_id(c: &mut Coordinator, t: u64) -> String {
        match now(c.join(t, request("", &["range"]))) {
            Err(GroupError::MemberIdRequired(id)) => id,
            other => panic!("{other:?}"),
        }
    }

    /// Two members in a stable generation 1: (leader, follower).
    fn stable_pair(c: &mut Coordinator) -> (String, String) {
        let a = member_id(c, 0);
        let b = member_id(c, 0);
        let mut ja = later(c.join(0, request(&a, &["range"])));
        let mut jb = later(c.join(1, request(&b, &["range"])));
        c.tick(3_001);
        let (ra, rb) = (answered(&mut ja).unwrap(), answered(&mut jb).unwrap());
        let (leader, follower) = if ra.leader == a { (a, b) } else { (b, a) };
        let mut sf = later(c.sync(3_002, "g", 1, &follower, None, vec![]));
        let mut sl = later(c.sync(
            3_003,
            "g",
            1,
            &leader,
            None,
            vec![
                (leader.clone(), Bytes::from_static(b"L")),
                (follower.clone(), Bytes::from_static(b"F")),
            ],
        ));
        assert_eq!(answered(&mut sf).unwrap(), Bytes::from_static(b"F"));
        assert_eq!(answered(&mut sl).unwrap(), Bytes::from_static(b"L"));
        assert_eq!(rb.generation, 1);
        (leader, follower)
    }

    #[test]
    fn a_new_member_needs_an_id_then_leads_generation_1() {
        let mut c = coordinator(0);
        let id = member_id(&mut c, 0);
        let mut rx = later(c.join(0, request(&id, &["range"])));
        let joined = answered(&mut rx).unwrap();
        assert_eq!(joined.generation, 1);
        assert_eq!(joined.leader, id);
        assert_eq!(joined.protocol, "range");
        assert_eq!(joined.members.len(), 1);
        assert_eq!(joined.members[0].2, Bytes::from(format!("range:{id}")));
        assert_eq!(c.describe("g").unwrap().state, State::CompletingRebalance);
        // An id never handed out.
        assert_eq!(
            now(c.join(0, request("forged", &["range"]))).unwrap_err(),
            GroupError::UnknownMemberId
        );
        // Older clients join without the extra round.
        let mut old = request("", &["range"]);
        old.require_known_member_id = false;
        later(c.join(1, old));
        assert_eq!(c.describe("g").unwrap().state, State::PreparingRebalance);
    }

    #[test]
    fn the_initial_delay_gathers_members_into_one_generation() {
        let mut c = coordinator(3_000);
        let (leader, follower) = stable_pair(&mut c);
        let view = c.describe("g").unwrap();
        assert_eq!(view.state, State::Stable);
        assert_eq!(view.generation, 1);
        assert_eq!(view.members.len(), 2);
        let l = view.members.iter().find(|m| m.member_id == leader).unwrap();
        assert_eq!(l.assignment, Bytes::from_static(b"L"));
        // A stable member's sync is answered at once.
        assert_eq!(
            now(c.sync(4_000, "g", 1, &follower, None, vec![])).unwrap(),
            Bytes::from_static(b"F")
        );
    }

    #[test]
    fn the_initial_delay_is_extended_by_joins_up_to_the_rebalance_timeout() {
        let mut c = coordinator(3_000);
        let a = member_id(&mut c, 0);
        let mut ja = later(c.join(0, request(&a, &["range"])));
        let b = member_id(&mut c, 2_000);
        let mut jb = later(c.join(2_000, request(&b, &["range"])));
        c.tick(3_000);
        waiting(&mut ja);
        c.tick(5_000);
        assert_eq!(answered(&mut ja).unwrap().generation, 1);
        assert_eq!(answered(&mut jb).unwrap().generation, 1);
    }

    #[test]
    fn heartbeats_check_member_and_generation_and_signal_rebalances() {
        let mut c = coordinator(3_000);
        let (leader, follower) = stable_pair(&mut c);
        assert_eq!(c.heartbeat(4_000, "g", 1, &follower, None), Ok(()));
        assert_eq!(
            c.heartbeat(4_000, "g", 0, &follower, None),
            Err(GroupError::IllegalGeneration(0, 1))
        );
        assert_eq!(
            c.heartbeat(4_000, "g", 1, "nobody", None),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            c.heartbeat(4_000, "other", 1, &follower, None),
            Err(GroupError::UnknownMemberId)
        );
        // A third member: the others are told to rejoin.
        let third = member_id(&mut c, 5_000);
        let mut j3 = later(c.join(5_000, request(&third, &["range"])));
        assert_eq!(
            c.heartbeat(5_001, "g", 1, &leader, None),
            Err(GroupError::RebalanceInProgress)
        );
        assert_eq!(
            now(c.sync(5_001, "g", 1, &leader, None, vec![])).unwrap_err(),
            GroupError::RebalanceInProgress
        );
        let mut jl = later(c.join(5_002, request(&leader, &["range"])));
        waiting(&mut j3);
        let mut jf = later(c.join(5_003, request(&follower, &["range"])));
        // All three joined: generation 2 at once, the same leader.
        for rx in [&mut j3, &mut jl, &mut jf] {
            let r = answered(rx).unwrap();
            assert_eq!((r.generation, r.leader.as_str()), (2, leader.as_str()));
            assert_eq!(r.members.len(), if r.member_id == leader { 3 } else { 0 });
        }
        assert_eq!(c.heartbeat(5_004, "g", 2, &follower, None), Ok(()));
    }

    #[test]
    fn members_that_do_not_rejoin_in_time_are_removed() {
        let mut c = coordinator(3_000);
        let (leader, follower) = stable_pair(&mut c);
        let mut jl = later(c.join(4_000, request(&leader, &["range"])));
        // The follower keeps its session but never rejoins.
        for t in (5_000..=30_000).step_by(5_000) {
            assert_eq!(
                c.heartbeat(t, "g", 1, &follower, None),
                Err(GroupError::RebalanceInProgress)
            );
            c.tick(t);
        }
        c.tick(4_000 + REBALANCE - 1);
        waiting(&mut jl);
        c.tick(4_000 + REBALANCE);
        let r = answered(&mut jl).unwrap();
        assert_eq!((r.generation, r.members.len()), (2, 1));
        assert_eq!(
            c.heartbeat(4_000 + REBALANCE, "g", 2, &follower, None),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_and_the_group_rebalances() {
        let mut c = coordinator(3_000);
        let (leader, follower) = stable_pair(&mut c);
        for t in (4_000..=12_000).step_by(2_000) {
            assert_eq!(c.heartbeat(t, "g", 1, &leader, None), Ok(()));
        }
        // The follower was last seen when the leader's sync answered it.
        c.tick(3_003 + SESSION - 1);
        assert_eq!(c.describe("g").unwrap().state, State::Stable);
        assert_eq!(c.next_deadline(), Some(3_003 + SESSION));
        c.tick(3_003 + SESSION);
        assert_eq!(c.describe("g").unwrap().state, State::PreparingRebalance);
        assert_eq!(
            c.heartbeat(13_100, "g", 1, &follower, None),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            c.heartbeat(13_100, "g", 1, &leader, None),
            Err(GroupError::RebalanceInProgress)
        );
        let mut jl = later(c.join(13_200, request(&leader, &["range"])));
        assert_eq!(answered(&mut jl).unwrap().generation, 2);
    }

    #[test]
    fn leaving_rebalances_and_the_last_to_leave_empties_the_group() {
        let mut c = coordinator(3_000);
        let (leader, follower) = stable_pair(&mut c);
        let r = c.leave(
            4_000,
            "g",
            &[(follower.clone(), None), ("nobody".into(), None)],
        );
        assert_eq!(r, [Ok(()), Err(GroupError::UnknownMemberId)]);
        assert_eq!(c.describe("g").unwrap().state, State::PreparingRebalance);
        let mut jl = later(c.join(4_001, request(&leader, &["range"])));
        assert_eq!(answered(&mut jl).unwrap().generation, 2);
        assert_eq!(c.leave(4_002, "g", &[(leader, None)]), [Ok(())]);
        assert!(c.describe("g").is_none());
        assert!(!c.is_active("g"));
    }

    #[test]
    fn a_waiting_follower_is_released_when_the_leader_leaves() {
        let mut c = coordinator(0);
        let a = member_id(&mut c, 0);
        let mut ja = later(c.join(0, request(&a, &["range"])));
        answered(&mut ja).unwrap();
        let b = member_id(&mut c, 1);
        let mut jb = later(c.join(1, request(&b, &["range"])));
        let mut ja = later(c.join(2, request(&a, &["range"])));
        let (ra, rb) = (answered(&mut ja).unwrap(), answered(&mut jb).unwrap());
        assert_eq!(
            (ra.generation, rb.generation, ra.leader.as_str()),
            (2, 2, a.as_str())
        );
        let mut sb = later(c.sync(3, "g", 2, &b, None, vec![]));
        c.leave(4, "g", &[(a, None)]);
        assert_eq!(
            answered(&mut sb).unwrap_err(),
            GroupError::RebalanceInProgress
        );
        let mut jb = later(c.join(5, request(&b, &["range"])));
        let r = answered(&mut jb).unwrap();
        assert_eq!((r.generation, r.leader), (3, b));
    }

    #[test]
    fn a_static_member_rejoins_in_place_and_fences_its_old_id() {
        let mut c = coordinator(0);
        let mut s = request("", &["range"]);
        s.instance_id = Some("i1".into());
        // Static members get their id without the extra round.
        let mut rx = later(c.join(0, s.clone()));
        let first = answered(&mut rx).unwrap();
        assert_eq!(first.generation, 1);
        let mut sync = later(c.sync(
            1,
            "g",
            1,
            &first.member_id,
            Some("i1"),
            vec![(first.member_id.clone(), Bytes::from_static(b"A"))],
        ));
        assert_eq!(answered(&mut sync).unwrap(), Bytes::from_static(b"A"));
        // Restarted: same instance, no member id; no rebalance.
        let again = now(c.join(100, s.clone())).unwrap();
        assert_ne!(again.member_id, first.member_id);
        assert_eq!(
            (again.generation, again.leader.as_str()),
            (1, again.member_id.as_str())
        );
        assert_eq!(c.describe("g").unwrap().state, State::Stable);
        assert_eq!(
            now(c.sync(101, "g", 1, &again.member_id, Some("i1"), vec![])).unwrap(),
            Bytes::from_static(b"A")
        );
        assert_eq!(
            c.heartbeat(102, "g", 1, &first.member_id, Some("i1")),
            Err(GroupError::FencedInstanceId("i1".into()))
        );
        // Leaving by instance id alone.
        assert_eq!(
            c.leave(103, "g", &[(String::new(), Some("i1".into()))]),
            [Ok(())]
        );
        assert!(c.describe("g").is_none());
    }

    #[test]
    fn protocols_must_be_shared_and_the_most_preferred_wins() {
        let mut c = coordinator(3_000);
        let a = member_id(&mut c, 0);
        let mut ja = later(c.join(0, request(&a, &["range", "roundrobin"])));
        let b = member_id(&mut c, 0);
        let mut jb = later(c.join(0, request(&b, &["roundrobin", "range"])));
        let d = member_id(&mut c, 0);
        let mut jd = later(c.join(0, request(&d, &["roundrobin"])));
        // Checked before an id is handed out.
        assert_eq!(
            now(c.join(0, request("", &["sticky"]))).unwrap_err(),
            GroupError::InconsistentGroupProtocol
        );
        let mut other_type = request("", &["roundrobin"]);
        other_type.protocol_type = "connect".into();
        assert_eq!(
            now(c.join(0, other_type)).unwrap_err(),
            GroupError::InconsistentGroupProtocol
        );
        c.tick(3_000);
        for rx in [&mut ja, &mut jb, &mut jd] {
            assert_eq!(answered(rx).unwrap().protocol, "roundrobin");
        }
        let view = c.describe("g").unwrap();
        assert!(view
            .members
            .iter()
            .all(|m| m.metadata.starts_with(b"roundrobin:")));
    }

    #[test]
    fn limits_are_errors() {
        let mut c = coordinator(3_000);
        let mut short = request("", &["range"]);
        short.session_timeout_ms = 1_000;
        assert_eq!(
            now(c.join(0, short)).unwrap_err(),
            GroupError::InvalidSessionTimeout(1_000, 6_000, 1_800_000)
        );
        let mut big = request("", &["range"]);
        big.protocols[0].1 = Bytes::from(vec![0; (1 << 20) + 1]);
        assert!(matches!(
            now(c.join(0, big)),
            Err(GroupError::MetadataTooLarge(..))
        ));
        let mut nameless = request("", &["range"]);
        nameless.group = String::new();
        assert_eq!(
            now(c.join(0, nameless)).unwrap_err(),
            GroupError::InvalidGroupId("empty")
        );
        for _ in 0..3 {
            let id = member_id(&mut c, 0);
            later(c.join(0, request(&id, &["range"])));
        }
        let id = member_id(&mut c, 0);
        assert_eq!(
            now(c.join(0, request(&id, &["range"]))).unwrap_err(),
            GroupError::GroupMaxSizeReached(3)
        );
    }

    #[test]
    fn commits_follow_kafkas_membership_rules() {
        let mut c = coordinator(3_000);
        // No group: a commit from outside any group only.
        assert_eq!(c.check_commit(0, "g", -1, "", None), Ok(()));
        assert_eq!(
            c.check_commit(0, "g", 1, "m", None),
            Err(GroupError::IllegalGeneration(1, 0))
        );
        let (leader, follower) = stable_pair(&mut c);
        assert_eq!(c.check_commit(4_000, "g", 1, &follower, None), Ok(()));
        assert_eq!(
            c.check_commit(4_000, "g", -1, "", None),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            c.check_commit(4_000, "g", 0, &leader, None),
            Err(GroupError::IllegalGeneration(0, 1))
        );
        // The commit kept the follower's session alive; the leader's
        // refused one did not.
        c.tick(3_003 + SESSION);
        let members: Vec<String> = c
            .describe("g")
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        assert_eq!(members, [follower]);
    }
}
