//! Groups whose partitions the broker assigns: the membership of Spool's
//! own protocol (GROUP_HEARTBEAT), shaped after Kafka's KIP-848. A member
//! sends its subscription and the partitions it holds in every heartbeat;
//! the broker keeps a target assignment for the group and answers each
//! member with the partitions it may consume now, so clients need no
//! assignor and no join/sync rounds.
//!
//! - A heartbeat with epoch 0 joins (a member id is handed out when none
//!   is given); epoch -1 leaves. Any other epoch must be the one the
//!   member was given, or the heartbeat is FENCED (the member was removed,
//!   or replaced): the client drops its partitions and joins again.
//! - A change of members, subscriptions or partition counts bumps the
//!   group epoch and recomputes the target: per topic, its subscribers
//!   each get `n / k` or `n / k + 1` partitions, keeping what they had
//!   where the quota allows (sticky), the rest handed out by member id.
//! - A partition moves safely: the broker grants it to its new owner only
//!   once no other member holds it (reported in the holder's heartbeats)
//!   or was granted it in its latest answer. The old owner learns from its
//!   next answer that the partition is gone, commits and stops, and says
//!   so in the heartbeat after. Until then the new owner's answer leaves
//!   the partition out, and tells it to heartbeat sooner.
//! - A member that does not heartbeat for its session timeout is removed;
//!   its partitions go to the others at once.
//!
//! Time is passed in (`now`, ms), as in [`super::groups`], so that the
//! unit tests run on a simulated clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::groups::{check_group_id, GroupError, GroupLimits, State};

/// A topic and a partition of it.
pub type TopicPartition = (String, u32);

/// Partitions by topic, as on the wire.
pub type Partitions = Vec<(String, Vec<u32>)>;

/// Most topics one member may subscribe to (bounds the target's work).
pub const MAX_SUBSCRIPTION: usize = 1_000;

/// A GROUP_HEARTBEAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// 0 to join, -1 to leave, otherwise the epoch the member was given.
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub subscription: Vec<String>,
    /// What the member holds now (it has stopped consuming the rest).
    pub owned: Partitions,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub member_id: String,
    pub member_epoch: i32,
    /// When to heartbeat next: sooner while partitions are on the move.
    pub heartbeat_interval_ms: u32,
    /// What the member may consume now; it lets go of anything else.
    pub assignment: Partitions,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    last_seen: u64,
    epoch: i32,
    subscription: BTreeSet<String>,
    target: BTreeSet<TopicPartition>,
    /// In the latest answer.
    granted: BTreeSet<TopicPartition>,
    /// As the member last reported (only ever what it was granted).
    held: BTreeSet<TopicPartition>,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    members: BTreeMap<String, Member>,
    /// The partition counts the target was computed with.
    counts: BTreeMap<String, u32>,
}

/// A member as DESCRIBE_GROUP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub subscription: Vec<String>,
    /// Granted in its latest answer.
    pub assignment: Partitions,
}

/// A group as DESCRIBE_GROUP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedView {
    pub state: State,
    pub epoch: i32,
    pub members: Vec<AssignedMember>,
}

/// Every broker-assigned group with members.
#[derive(Debug)]
pub struct Assigned {
    limits: GroupLimits,
    heartbeat_ms: u64,
    groups: HashMap<String, Group>,
    next_id: u64,
    run: u64,
}

/// While partitions move, members heartbeat at most this far apart.
const MOVING_HEARTBEAT_MS: u64 = 200;

fn grouped(set: &BTreeSet<TopicPartition>) -> Partitions {
    let mut out: Partitions = Vec::new();
    for (t, p) in set {
        match out.last_mut() {
            Some((last, ps)) if last == t => ps.push(*p),
            _ => out.push((t.clone(), vec![*p])),
        }
    }
    out
}

impl Assigned {
    /// `heartbeat_ms`: the interval members are told when nothing moves;
    /// `run` makes member ids differ between runs of the broker.
    pub fn new(limits: GroupLimits, heartbeat_ms: u64, run: u64) -> Assigned {
        Assigned {
            limits,
            heartbeat_ms,
            groups: HashMap::new(),
            next_id: 0,
            run,
        }
    }

    /// Groups with members.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn is_active(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// GROUP_HEARTBEAT. `counts` gives a topic's partitions (0 for a topic
    /// that does not exist: its subscribers get nothing of it yet).
    pub fn heartbeat(
        &mut self,
        now: u64,
        hb: Heartbeat,
        counts: &dyn Fn(&str) -> u32,
    ) -> Result<Beat, GroupError> {
        check_group_id(&hb.group)?;
        let l = &self.limits;
        if hb.member_epoch != -1
            && (hb.session_timeout_ms < l.min_session_ms
                || hb.session_timeout_ms > l.max_session_ms)
        {
            return Err(GroupError::InvalidSessionTimeout(
                hb.session_timeout_ms,
                l.min_session_ms,
                l.max_session_ms,
            ));
        }
        if hb.subscription.len() > MAX_SUBSCRIPTION {
            return Err(GroupError::MetadataTooLarge(
                hb.subscription.len(),
                MAX_SUBSCRIPTION,
            ));
        }
        let subscription: BTreeSet<String> = hb.subscription.iter().cloned().collect();
        let mut changed = false;
        let member_id = match hb.member_epoch {
            -1 => {
                let g = self
                    .groups
                    .get_mut(&hb.group)
                    .ok_or(GroupError::UnknownMemberId)?;
                g.members
                    .remove(&hb.member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                retarget(g, counts_of(g, counts));
                if g.members.is_empty() {
                    self.groups.remove(&hb.group);
                }
                return Ok(Beat {
                    member_id: hb.member_id,
                    member_epoch: -1,
                    heartbeat_interval_ms: 0,
                    assignment: Vec::new(),
                });
            }
            0 => {
                let id = if hb.member_id.is_empty() {
                    self.next_id += 1;
                    let prefix: String = hb.client_id.chars().take(64).collect();
                    format!("{prefix}-{:x}-{}", self.run, self.next_id)
                } else {
                    hb.member_id.clone()
                };
                let max = self.limits.max_members;
                let g = self.groups.entry(hb.group.clone()).or_default();
                if !g.members.contains_key(&id) && g.members.len() >= max {
                    if g.members.is_empty() {
                        self.groups.remove(&hb.group);
                    }
                    return Err(GroupError::GroupMaxSizeReached(max));
                }
                // A known id joining again starts over: it holds nothing.
                g.members.insert(
                    id.clone(),
                    Member {
                        client_id: hb.client_id.clone(),
                        client_host: hb.client_host.clone(),
                        session_timeout_ms: hb.session_timeout_ms,
                        last_seen: now,
                        epoch: 0,
                        subscription: subscription.clone(),
                        target: BTreeSet::new(),
                        granted: BTreeSet::new(),
                        held: BTreeSet::new(),
                    },
                );
                changed = true;
                id
            }
            epoch => {
                let g = self
                    .groups
                    .get_mut(&hb.group)
                    .ok_or(GroupError::UnknownMemberId)?;
                let m = g
                    .members
                    .get_mut(&hb.member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                if epoch != m.epoch {
                    return Err(GroupError::FencedMemberEpoch(epoch, m.epoch));
                }
                m.last_seen = now;
                m.session_timeout_ms = hb.session_timeout_ms;
                // A member can only hold what it was given.
                let allowed: BTreeSet<TopicPartition> = m.granted.union(&m.held).cloned().collect();
                m.held = hb
                    .owned
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                    .filter(|tp| allowed.contains(tp))
                    .collect();
                if m.subscription != subscription {
                    m.subscription = subscription.clone();
                    changed = true;
                }
                hb.member_id.clone()
            }
        };
        let g = self.groups.get_mut(&hb.group).expect("present");
        let counts_now = counts_of(g, counts);
        if changed || counts_now != g.counts {
            retarget(g, counts_now);
        }
        if hb.member_epoch == 0 {
            let epoch = g.epoch;
            g.members.get_mut(&member_id).expect("joined").epoch = epoch;
        }
        let busy: BTreeSet<TopicPartition> = g
            .members
            .iter()
            .filter(|(id, _)| **id != member_id)
            .flat_map(|(_, o)| o.held.iter().chain(o.granted.iter()))
            .cloned()
            .collect();
        let m = g.members.get_mut(&member_id).expect("present");
        m.granted = m.target.difference(&busy).cloned().collect();
        let settled = m.granted == m.target && m.held == m.granted;
        let interval = if settled {
            self.heartbeat_ms
        } else {
            self.heartbeat_ms.min(MOVING_HEARTBEAT_MS)
        };
        Ok(Beat {
            member_id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval as u32,
            assignment: grouped(&m.granted),
        })
    }

    /// Removes members whose session ended; their partitions go to the
    /// others (at their next heartbeats).
    pub fn tick(&mut self, now: u64, counts: &dyn Fn(&str) -> u32) {
        self.groups.retain(|_, g| {
            let before = g.members.len();
            g.members
                .retain(|_, m| m.last_seen + m.session_timeout_ms > now);
            if g.members.len() != before {
                retarget(g, counts_of(g, counts));
            }
            !g.members.is_empty()
        });
    }

    /// When the next session ends, if any member has one.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .values()
            .flat_map(|g| g.members.values())
            .map(|m| m.last_seen + m.session_timeout_ms)
            .min()
    }

    /// Checks a member's commit: it must be a member, at its epoch.
    pub fn check_commit(
        &mut self,
        now: u64,
        group: &str,
        epoch: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        let m = self
            .groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(member_id))
            .ok_or(GroupError::UnknownMemberId)?;
        if m.epoch != epoch {
            return Err(GroupError::FencedMemberEpoch(epoch, m.epoch));
        }
        m.last_seen = now;
        Ok(())
    }

    pub fn describe(&self, group: &str) -> Option<AssignedView> {
        let g = self.groups.get(group)?;
        let settled = g
            .members
            .values()
            .all(|m| m.granted == m.target && m.held == m.granted);
        Some(AssignedView {
            state: if settled {
                State::Stable
            } else {
                State::Reconciling
            },
            epoch: g.epoch,
            members: g
                .members
                .iter()
                .map(|(id, m)| AssignedMember {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscription: m.subscription.iter().cloned().collect(),
                    assignment: grouped(&m.granted),
                })
                .collect(),
        })
    }

    /// Groups with members, by name.
    pub fn names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }
}

/// The partition count of every topic the group's members subscribe to.
fn counts_of(g: &Group, counts: &dyn Fn(&str) -> u32) -> BTreeMap<String, u32> {
    g.members
        .values()
        .flat_map(|m| m.subscription.iter())
        .map(|t| (t.clone(), counts(t)))
        .collect()
}

/// Recomputes the group's target for partition counts `counts` (from
/// [`counts_of`]) and bumps its epoch if it changed.
fn retarget(g: &mut Group, counts: BTreeMap<String, u32>) {
    g.counts = counts;
    let mut next: BTreeMap<String, BTreeSet<TopicPartition>> = g
        .members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    for (topic, &n) in &g.counts {
        let subscribers: Vec<&String> = g
            .members
            .iter()
            .filter(|(_, m)| m.subscription.contains(topic))
            .map(|(id, _)| id)
            .collect();
        let k = subscribers.len() as u32;
        if k == 0 || n == 0 {
            continue;
        }
        let had = |id: &String| -> Vec<u32> {
            g.members[id]
                .target
                .iter()
                .filter(|(t, p)| t == topic && *p < n)
                .map(|(_, p)| *p)
                .collect()
        };
        // Those holding the most keep the larger quotas: fewer moves.
        let mut by_holding = subscribers.clone();
        by_holding.sort_by_key(|id| std::cmp::Reverse(had(id).len()));
        let (base, extra) = (n / k, n % k);
        let quota: HashMap<&String, u32> = by_holding
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, base + u32::from((i as u32) < extra)))
            .collect();
        let mut taken = BTreeSet::new();
        for id in &subscribers {
            for p in had(id).into_iter().take(quota[id] as usize) {
                taken.insert(p);
                next.get_mut(*id)
                    .expect("member")
                    .insert((topic.clone(), p));
            }
        }
        let mut free = (0..n).filter(|p| !taken.contains(p));
        for id in &subscribers {
            let mine = next.get_mut(*id).expect("member");
            let has = mine.iter().filter(|(t, _)| t == topic).count() as u32;
            for _ in has..quota[id] {
                if let Some(p) = free.next() {
                    mine.insert((topic.clone(), p));
                }
            }
        }
    }
    let mut moved = false;
    for (id, target) in next {
        let m = g.members.get_mut(&id).expect("member");
        if m.target != target {
            m.target = target;
            moved = true;
        }
    }
    if moved || g.epoch == 0 {
        // 0 and -1 mean join and leave on the wire: after i32::MAX, 1.
        g.epoch = if g.epoch >= i32::MAX - 1 {
            1
        } else {
            g.epoch + 1
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 10_000;

    fn four(t: &str) -> u32 {
        if t == "t" {
            4
        } else {
            0
        }
    }

    fn hb(member: &str, epoch: i32, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout_ms: SESSION,
            subscription: vec!["t".into()],
            owned: if owned.is_empty() {
                Vec::new()
            } else {
                vec![("t".into(), owned.to_vec())]
            },
        }
    }

    fn parts(beat: &Beat) -> Vec<u32> {
        beat.assignment
            .iter()
            .flat_map(|(_, ps)| ps.iter().copied())
            .collect()
    }

    fn coordinator() -> Assigned {
        Assigned::new(GroupLimits::default(), 1_000, 1)
    }

    /// A heartbeat that reports holding what it was granted.
    fn settle(a: &mut Assigned, now: u64, beat: &Beat) -> Beat {
        let mut h = hb(&beat.member_id, beat.member_epoch, &parts(beat));
        h.owned = beat.assignment.clone();
        a.heartbeat(now, h, &four).unwrap()
    }

    #[test]
    fn a_lone_member_gets_every_partition() {
        let mut a = coordinator();
        let b = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        assert!(!b.member_id.is_empty());
        assert_eq!(parts(&b), [0, 1, 2, 3]);
        assert!(b.member_epoch > 0);
        let b = settle(&mut a, 10, &b);
        assert_eq!(b.heartbeat_interval_ms, 1_000);
        assert_eq!(a.describe("g").unwrap().state, State::Stable);
    }

    #[test]
    fn a_partition_moves_only_once_its_holder_lets_go() {
        let mut a = coordinator();
        let first = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let first = settle(&mut a, 1, &first);
        let second = a.heartbeat(2, hb("", 0, &[]), &four).unwrap();
        // The first still holds everything: the second must wait.
        assert!(parts(&second).is_empty());
        assert_eq!(second.heartbeat_interval_ms, MOVING_HEARTBEAT_MS as u32);
        assert_eq!(a.describe("g").unwrap().state, State::Reconciling);
        // The first is told to keep half; it still reports holding all.
        let h = hb(&first.member_id, first.member_epoch, &[0, 1, 2, 3]);
        let kept = a.heartbeat(3, h, &four).unwrap();
        assert_eq!(parts(&kept).len(), 2);
        let s = hb(&second.member_id, second.member_epoch, &[]);
        assert!(parts(&a.heartbeat(4, s, &four).unwrap()).is_empty());
        // It lets go of the rest: now the second gets them.
        let released = settle(&mut a, 5, &kept);
        assert_eq!(parts(&released), parts(&kept));
        let s = hb(&second.member_id, second.member_epoch, &[]);
        let got = a.heartbeat(6, s, &four).unwrap();
        let mut all = [parts(&got), parts(&kept)].concat();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3]);
        settle(&mut a, 7, &got);
        assert_eq!(a.describe("g").unwrap().state, State::Stable);
    }

    #[test]
    fn an_expired_member_s_partitions_go_to_the_others_at_once() {
        let mut a = coordinator();
        let one = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let one = settle(&mut a, 0, &one);
        let two = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let one = settle(&mut a, 1, &one);
        let one = settle(&mut a, 2, &one);
        let two = settle(&mut a, 3, &two);
        assert_eq!(parts(&one).len() + parts(&two).len(), 4);
        // Only the second keeps heartbeating.
        let two = settle(&mut a, SESSION - 1, &two);
        assert_eq!(a.next_deadline(), Some(2 + SESSION));
        a.tick(SESSION + 2, &four);
        let two = settle(&mut a, SESSION + 3, &two);
        assert_eq!(parts(&two), [0, 1, 2, 3]);
        let h = hb(&one.member_id, one.member_epoch, &parts(&one));
        assert_eq!(
            a.heartbeat(SESSION + 4, h, &four),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn leaving_hands_partitions_over_and_the_last_leaves_nothing() {
        let mut a = coordinator();
        let mut one = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let mut two = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        // The first was given everything before the second came: the
        // handover takes a round of heartbeats.
        for _ in 0..3 {
            one = settle(&mut a, 1, &one);
            two = settle(&mut a, 1, &two);
        }
        assert_eq!(parts(&one).len(), 2);
        assert_eq!(parts(&two).len(), 2);
        let leave = a.heartbeat(2, hb(&one.member_id, -1, &[]), &four).unwrap();
        assert_eq!(leave.member_epoch, -1);
        let two = settle(&mut a, 3, &two);
        assert_eq!(parts(&two), [0, 1, 2, 3]);
        a.heartbeat(4, hb(&two.member_id, -1, &[]), &four).unwrap();
        assert!(!a.is_active("g"));
        assert_eq!(a.describe("g"), None);
    }

    #[test]
    fn a_wrong_epoch_is_fenced_and_a_rejoin_starts_over() {
        let mut a = coordinator();
        let one = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let h = hb(&one.member_id, one.member_epoch + 7, &[]);
        assert!(matches!(
            a.heartbeat(1, h, &four),
            Err(GroupError::FencedMemberEpoch(..))
        ));
        assert!(matches!(
            a.check_commit(1, "g", one.member_epoch + 7, &one.member_id),
            Err(GroupError::FencedMemberEpoch(..))
        ));
        a.check_commit(1, "g", one.member_epoch, &one.member_id)
            .unwrap();
        let again = a.heartbeat(2, hb(&one.member_id, 0, &[]), &four).unwrap();
        assert_eq!(again.member_id, one.member_id);
        assert_eq!(parts(&again), [0, 1, 2, 3]);
    }

    #[test]
    fn claims_beyond_the_grant_are_ignored() {
        let mut a = coordinator();
        let one = a.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        let one = settle(&mut a, 1, &one);
        let two = a.heartbeat(2, hb("", 0, &[]), &four).unwrap();
        // The second claims partitions it was never given.
        let h = hb(&two.member_id, two.member_epoch, &[0, 1, 2, 3]);
        a.heartbeat(3, h, &four).unwrap();
        let kept = settle(&mut a, 4, &one);
        let kept = settle(&mut a, 5, &kept);
        let h = hb(&two.member_id, two.member_epoch, &[]);
        let got = a.heartbeat(6, h, &four).unwrap();
        assert_eq!(parts(&got).len() + parts(&kept).len(), 4);
    }

    #[test]
    fn new_partitions_are_spread_and_assignments_stick() {
        let mut a = coordinator();
        let count = std::cell::Cell::new(2);
        let counts = |_: &str| count.get();
        let one = a.heartbeat(0, hb("", 0, &[]), &counts).unwrap();
        let two = a.heartbeat(0, hb("", 0, &[]), &counts).unwrap();
        let h = |b: &Beat| {
            let mut h = hb(&b.member_id, b.member_epoch, &[]);
            h.owned = b.assignment.clone();
            h
        };
        let (mut one, mut two) = (one, two);
        for _ in 0..3 {
            one = a.heartbeat(1, h(&one), &counts).unwrap();
            two = a.heartbeat(1, h(&two), &counts).unwrap();
        }
        let (p1, p2) = (parts(&one), parts(&two));
        assert_eq!((p1.len(), p2.len()), (1, 1));
        count.set(6);
        for _ in 0..2 {
            one = a.heartbeat(2, h(&one), &counts).unwrap();
            two = a.heartbeat(2, h(&two), &counts).unwrap();
        }
        assert_eq!(parts(&one).len(), 3);
        assert_eq!(parts(&two).len(), 3);
        // Sticky: each kept what it had.
        assert!(p1.iter().all(|p| parts(&one).contains(p)));
        assert!(p2.iter().all(|p| parts(&two).contains(p)));
    }

    #[test]
    fn bad_heartbeats_are_refused() {
        let mut a = coordinator();
        let mut h = hb("", 0, &[]);
        h.session_timeout_ms = 10;
        assert!(matches!(
            a.heartbeat(0, h, &four),
            Err(GroupError::InvalidSessionTimeout(..))
        ));
        let mut h = hb("", 0, &[]);
        h.group = String::new();
        assert!(matches!(
            a.heartbeat(0, h, &four),
            Err(GroupError::InvalidGroupId(_))
        ));
        assert_eq!(
            a.heartbeat(0, hb("nobody", 3, &[]), &four),
            Err(GroupError::UnknownMemberId)
        );
        let mut small = Assigned::new(
            GroupLimits {
                max_members: 1,
                ..GroupLimits::default()
            },
            1_000,
            1,
        );
        small.heartbeat(0, hb("", 0, &[]), &four).unwrap();
        assert_eq!(
            small.heartbeat(0, hb("", 0, &[]), &four),
            Err(GroupError::GroupMaxSizeReached(1))
        );
    }
}
