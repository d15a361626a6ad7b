//! The Kafka group APIs over the broker core's coordinator
//! ([`crate::broker::groups`]) and committed offsets: FindCoordinator 0-4,
//! JoinGroup 0-9, SyncGroup 0-5, Heartbeat 0-4, LeaveGroup 0-5,
//! OffsetCommit 2-8, OffsetFetch 1-9, ListGroups 0-4, DescribeGroups 0-5,
//! DeleteGroups 0-2, OffsetDelete 0. Fields are set only at the versions
//! that have them (the crate refuses to encode others). docs/GROUPS.md
//! says what each answers.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Front, NODE_ID};
use crate::broker::consumer_groups::{CommitPartition, CommitRefused};
use crate::broker::groups::{GroupError, Join};
use crate::storage::offsets::Committed;

/// Kafka's error code for a coordinator error.
fn code(e: &GroupError) -> i16 {
    match e {
        GroupError::MemberIdRequired(_) => 79,
        GroupError::UnknownMemberId => 25,
        GroupError::IllegalGeneration(..) => 22,
        GroupError::RebalanceInProgress => 27,
        GroupError::InconsistentGroupProtocol => 23,
        GroupError::InvalidSessionTimeout(..) => 26,
        GroupError::GroupMaxSizeReached(_) => 81,
        // Retriable: the client tries again, and gets in once groups end.
        GroupError::TooManyGroups(_) => 15,
        GroupError::FencedInstanceId(_) => 82,
        GroupError::FencedMemberEpoch(..) => 110,
        GroupError::NonEmptyGroup => 68,
        GroupError::GroupIdNotFound => 69,
        GroupError::InvalidGroupId(_) => 24,
        GroupError::MetadataTooLarge(..) => 42,
        // KAFKA_STORAGE_ERROR: retriable.
        GroupError::Storage(_) => 56,
    }
}

fn commit_code(e: &CommitRefused) -> i16 {
    match e {
        CommitRefused::UnknownTopicOrPartition => 3,
        CommitRefused::MetadataTooLarge(..) => 12,
        CommitRefused::Storage(_) => 56,
    }
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn opt(v: &Option<StrBytes>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

/// A client's host as Kafka's DescribeGroups shows it.
pub(super) fn client_host(peer: Option<std::net::SocketAddr>) -> String {
    peer.map(|a| format!("/{}", a.ip())).unwrap_or_default()
}

/// FindCoordinator: this broker for a group; transactions have no
/// coordinator (COORDINATOR_NOT_AVAILABLE, 15, as a broker without one
/// answers); another key type is INVALID_REQUEST. v4+ asks for many keys.
pub(super) fn find_coordinator(
    front: &Front,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let (host, port) = (&front.advertised.0, front.advertised.1);
    let answer = |key: StrBytes| {
        let mut c = Coordinator::default();
        c.key = key;
        match request.key_type {
            0 => {
                c.node_id = BrokerId(NODE_ID);
                c.host = StrBytes::from_string(host.clone());
                c.port = port;
            }
            1 => {
                c.error_code = 15;
                c.error_message = Some(StrBytes::from_static_str(
                    "transactions are not supported by Spool",
                ));
            }
            other => {
                c.error_code = 42;
                c.error_message = Some(StrBytes::from_string(format!(
                    "key type {other} (0: group, 1: transaction)"
                )));
            }
        }
        c.node_id = if c.error_code == 0 {
            c.node_id
        } else {
            BrokerId(-1)
        };
        c
    };
    let mut body = FindCoordinatorResponse::default();
    if version >= 4 {
        body.coordinators = request
            .coordinator_keys
            .iter()
            .cloned()
            .map(answer)
            .collect();
    } else {
        let c = answer(request.key.clone());
        body.error_code = c.error_code;
        body.node_id = c.node_id;
        body.host = c.host;
        body.port = c.port;
        if version >= 1 {
            body.error_message = c.error_message;
        }
    }
    body
}

/// JoinGroup: answered when the rebalance completes (or at once with
/// MEMBER_ID_REQUIRED for a v4+ member without an id).
pub(super) async fn join_group(
    front: &Front,
    client_id: &str,
    host: &str,
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let join = Join {
        group: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        instance_id: opt(&request.group_instance_id),
        client_id: client_id.to_owned(),
        client_host: host.to_owned(),
        session_timeout_ms: request.session_timeout_ms.max(0) as u64,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms.max(0) as u64
        } else {
            request.session_timeout_ms.max(0) as u64
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let mut body = JoinGroupResponse::default();
    body.protocol_name = Some(StrBytes::default());
    match front.broker.groups().join(join).await {
        Ok(j) => {
            body.generation_id = j.generation;
            if version >= 7 {
                body.protocol_type = Some(s(j.protocol_type));
            }
            body.protocol_name = Some(s(j.protocol));
            body.leader = s(j.leader);
            body.member_id = s(j.member_id);
            body.members = j
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = s(id);
                    if version >= 5 {
                        m.group_instance_id = instance.map(s);
                    }
                    m.metadata = metadata;
                    m
                })
                .collect();
        }
        Err(e) => {
            body.error_code = code(&e);
            body.generation_id = -1;
            if let GroupError::MemberIdRequired(id) = e {
                body.member_id = s(id);
            } else {
                body.member_id = request.member_id;
            }
        }
    }
    body
}

/// SyncGroup: the member's assignment once the leader has sent it.
pub(super) async fn sync_group(
    front: &Front,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let mut body = SyncGroupResponse::default();
    let group = request.group_id.to_string();
    let groups = front.broker.groups();
    // v5 names the protocol the member thinks it is in, and is told the
    // group's. A sync succeeds only in the generation whose protocol this
    // is (it waits for that generation's leader), so it is read once.
    if version >= 5 {
        if let Some(v) = groups.describe(&group) {
            let differs = |given: &Option<StrBytes>, have: &str| {
                given.as_ref().is_some_and(|g| g.as_str() != have)
            };
            if differs(&request.protocol_type, &v.protocol_type)
                || differs(&request.protocol_name, &v.protocol)
            {
                body.error_code = 23;
                return body;
            }
            body.protocol_type = Some(s(v.protocol_type));
            body.protocol_name = Some(s(v.protocol));
        } else {
            body.protocol_type = request.protocol_type.clone();
            body.protocol_name = request.protocol_name.clone();
        }
    }
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    match groups
        .sync(
            &group,
            request.generation_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            assignments,
        )
        .await
    {
        Ok(assignment) => body.assignment = assignment,
        Err(e) => body.error_code = code(&e),
    }
    body
}

pub(super) fn heartbeat(front: &Front, request: HeartbeatRequest) -> HeartbeatResponse {
    let mut body = HeartbeatResponse::default();
    if let Err(e) = front.broker.groups().heartbeat(
        &request.group_id,
        request.generation_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
    ) {
        body.error_code = code(&e);
    }
    body
}

/// LeaveGroup: one member (v0-2) or many, each answered (v3+).
pub(super) fn leave_group(
    front: &Front,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let mut body = LeaveGroupResponse::default();
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let results = front.broker.groups().leave(&request.group_id, &leaving);
    if version >= 3 {
        body.members = leaving
            .into_iter()
            .zip(&results)
            .map(|((id, instance), r)| {
                let mut m = MemberResponse::default();
                m.member_id = s(id);
                m.group_instance_id = instance.map(s);
                m.error_code = r.as_ref().err().map_or(0, code);
                m
            })
            .collect();
    } else if let Some(Err(e)) = results.first() {
        body.error_code = code(e);
    }
    body
}

/// OffsetCommit: the group's membership is checked for the whole request,
/// then each partition is answered on its own.
pub(super) async fn offset_commit(
    front: &Front,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let partitions: Vec<CommitPartition> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| CommitPartition {
                topic: t.name.to_string(),
                partition: u32::try_from(p.partition_index).unwrap_or(u32::MAX),
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: opt(&p.committed_metadata).unwrap_or_default(),
            })
        })
        .collect();
    let results = front
        .broker
        .groups()
        .commit(
            &request.group_id,
            request.generation_id_or_member_epoch,
            &request.member_id,
            request.group_instance_id.as_deref(),
            partitions,
        )
        .await;
    let mut codes = match &results {
        Ok(each) => each
            .iter()
            .map(|r| r.as_ref().err().map_or(0, commit_code))
            .collect::<Vec<_>>()
            .into_iter(),
        Err(e) => {
            vec![code(e); request.topics.iter().map(|t| t.partitions.len()).sum()].into_iter()
        }
    };
    let mut body = OffsetCommitResponse::default();
    body.topics = request
        .topics
        .into_iter()
        .map(|t| {
            let mut topic = OffsetCommitResponseTopic::default();
            topic.name = t.name;
            topic.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = codes.next().unwrap_or(0);
                    r
                })
                .collect();
            topic
        })
        .collect();
    body
}

type PartitionCommits = Vec<(i32, Option<Committed>)>;

/// The committed offsets asked for (`None`: all of the group's), with -1
/// for partitions without a commit, as (topic, [(partition, commit)]).
fn committed(
    front: &Front,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Vec<(TopicName, PartitionCommits)> {
    // `as` both ways: a negative index (never a partition: none is numbered
    // past 2^31) finds no commit and comes back as it was asked.
    let asked = topics.map(|ts| {
        ts.iter()
            .map(|(t, ps)| (t.to_string(), ps.iter().map(|&p| p as u32).collect()))
            .collect()
    });
    front
        .broker
        .groups()
        .committed(group, asked)
        .into_iter()
        .map(|(t, ps)| {
            let ps = ps.into_iter().map(|(p, c)| (p as i32, c)).collect();
            (TopicName(s(t)), ps)
        })
        .collect()
}

/// OffsetFetch: each partition's commit (offset, leader epoch, metadata as
/// given), -1 without one; one group (v1-7) or many (v8-9).
pub(super) fn offset_fetch(
    front: &Front,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut body = OffsetFetchResponse::default();
    macro_rules! partition {
        ($ty:ty, $p:expr, $c:expr) => {{
            let mut r = <$ty>::default();
            r.partition_index = $p;
            match $c {
                Some(c) => {
                    r.committed_offset = c.offset;
                    if version >= 5 {
                        r.committed_leader_epoch = c.leader_epoch;
                    }
                    r.metadata = Some(s(c.metadata));
                }
                None => r.committed_offset = -1,
            }
            r
        }};
    }
    if version >= 8 {
        body.groups = request
            .groups
            .into_iter()
            .map(|g| {
                let asked = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let mut group = OffsetFetchResponseGroup::default();
                group.topics = committed(front, &g.group_id, asked)
                    .into_iter()
                    .map(|(name, ps)| {
                        let mut topic = OffsetFetchResponseTopics::default();
                        topic.name = name;
                        topic.partitions = ps
                            .into_iter()
                            .map(|(p, c)| partition!(OffsetFetchResponsePartitions, p, c))
                            .collect();
                        topic
                    })
                    .collect();
                group.group_id = g.group_id;
                group
            })
            .collect();
    } else {
        let asked = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        body.topics = committed(front, &request.group_id, asked)
            .into_iter()
            .map(|(name, ps)| {
                let mut topic = OffsetFetchResponseTopic::default();
                topic.name = name;
                topic.partitions = ps
                    .into_iter()
                    .map(|(p, c)| partition!(OffsetFetchResponsePartition, p, c))
                    .collect();
                topic
            })
            .collect();
    }
    body
}

/// ListGroups: every group, or (v4+) those in the states asked for.
pub(super) fn list_groups(front: &Front, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut body = ListGroupsResponse::default();
    body.groups = front
        .broker
        .groups()
        .list()
        .into_iter()
        .filter(|(_, state, _)| {
            states.is_empty() || states.contains(&state.name().to_ascii_lowercase())
        })
        .map(|(name, state, protocol_type)| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(s(name));
            g.protocol_type = s(protocol_type);
            g.group_state = s(state.name());
            g
        })
        .collect();
    body
}

/// A group's operations when asked (READ 3, DELETE 6, DESCRIBE 8): all,
/// Spool having no ACLs.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// DescribeGroups: state, protocol and members of each group; a group the
/// broker does not know is "Dead", as Kafka answers up to v5.
pub(super) fn describe_groups(
    front: &Front,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut body = DescribeGroupsResponse::default();
    body.groups = request
        .groups
        .into_iter()
        .map(|name| {
            let mut g = DescribedGroup::default();
            match front.broker.groups().describe(&name) {
                Some(view) => {
                    g.group_state = s(view.state.name());
                    g.protocol_type = s(view.protocol_type);
                    g.protocol_data = s(view.protocol);
                    g.members = view
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut d = DescribedGroupMember::default();
                            d.member_id = s(m.member_id);
                            if version >= 4 {
                                d.group_instance_id = m.instance_id.map(s);
                            }
                            d.client_id = s(m.client_id);
                            d.client_host = s(m.client_host);
                            d.member_metadata = m.metadata;
                            d.member_assignment = m.assignment;
                            d
                        })
                        .collect();
                }
                None => g.group_state = s("Dead"),
            }
            if version >= 3 {
                g.authorized_operations = if request.include_authorized_operations {
                    GROUP_OPERATIONS
                } else {
                    i32::MIN
                };
            }
            g.group_id = name;
            g
        })
        .collect();
    body
}

/// DeleteGroups: a group's committed offsets go; a group with members is
/// NON_EMPTY_GROUP, an unknown one GROUP_ID_NOT_FOUND.
pub(super) async fn delete_groups(
    front: &Front,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut body = DeleteGroupsResponse::default();
    for name in request.groups_names {
        let mut r = DeletableGroupResult::default();
        if let Err(e) = front.broker.groups().delete_group(&name).await {
            r.error_code = code(&e);
        }
        r.group_id = name;
        body.results.push(r);
    }
    body
}

/// OffsetDelete: forgets commits of partitions no member of the group
/// consumes (GROUP_SUBSCRIBED_TO_TOPIC, 86, for those of a topic a
/// member's subscription names; a group with members of another protocol
/// than "consumer" is NON_EMPTY_GROUP).
pub(super) async fn offset_delete(
    front: &Front,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let groups = front.broker.groups();
    let mut body = OffsetDeleteResponse::default();
    let view = groups.describe(&request.group_id);
    let subscribed: Vec<String> = match &view {
        Some(v) if !v.members.is_empty() => {
            if v.protocol_type != "consumer" {
                body.error_code = 68;
                return body;
            }
            v.members
                .iter()
                .flat_map(|m| subscription_topics(&m.metadata))
                .collect()
        }
        _ => Vec::new(),
    };
    if view.is_none() {
        body.error_code = 69;
        return body;
    }
    let mut forget = Vec::new();
    body.topics = request
        .topics
        .iter()
        .map(|t| {
            let busy = subscribed.iter().any(|s| s.as_str() == t.name.as_str());
            let mut topic = OffsetDeleteResponseTopic::default();
            topic.name = t.name.clone();
            topic.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetDeleteResponsePartition::default();
                    r.partition_index = p.partition_index;
                    if busy {
                        r.error_code = 86;
                    } else if let Ok(index) = u32::try_from(p.partition_index) {
                        forget.push((t.name.to_string(), index));
                    }
                    r
                })
                .collect();
            topic
        })
        .collect();
    if let Err(e) = groups.delete_offsets(&request.group_id, forget).await {
        body.error_code = code(&e);
    }
    body
}

/// The topics a "consumer" protocol subscription names (its version i16,
/// then an array of strings); none if it does not parse. Read by hand and
/// bounded: the crate's decoder reserves room from the array's count.
fn subscription_topics(metadata: &[u8]) -> Vec<String> {
    let mut topics = Vec::new();
    let Some(rest) = metadata.get(2..) else {
        return topics;
    };
    let Some(count) = rest.get(..4) else {
        return topics;
    };
    let count = i32::from_be_bytes([count[0], count[1], count[2], count[3]]).max(0) as usize;
    let mut at = &rest[4..];
    for _ in 0..count.min(at.len() / 2) {
        let Some(len) = at.get(..2) else { break };
        let len = i16::from_be_bytes([len[0], len[1]]).max(0) as usize;
        let Some(name) = at.get(2..2 + len) else {
            break;
        };
        topics.push(String::from_utf8_lossy(name).into_owned());
        at = &at[2 + len..];
    }
    topics
}
