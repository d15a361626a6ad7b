//! Spool's own group APIs (GROUP_HEARTBEAT, OFFSET_COMMIT, OFFSET_FETCH,
//! LIST_GROUPS, DESCRIBE_GROUP, DELETE_GROUP) over the broker's groups,
//! the same ones the Kafka front end serves: a group's commits are one
//! set, whichever protocol wrote them.

use std::sync::Arc;

use super::assigned::Heartbeat;
use super::consumer_groups::{assignment_partitions, CommitPartition, CommitRefused};
use super::groups::{check_group_id, GroupError};
use super::handler::Peer;
use super::Broker;
use crate::protocol::{
    CommittedOffset, ErrorBody, ErrorCode, GroupDescription, GroupMember, HeartbeatAnswer,
    ListedGroup, PartitionResult, Request, ResponseBody, TopicResults,
};

type Outcome = Result<ResponseBody, ErrorBody>;

/// Spool's error for a coordinator's refusal; the message is the reason.
fn group_error(e: GroupError) -> ErrorBody {
    let code = match &e {
        GroupError::UnknownMemberId => ErrorCode::UnknownMember,
        GroupError::IllegalGeneration(..)
        | GroupError::FencedMemberEpoch(..)
        | GroupError::FencedInstanceId(_)
        | GroupError::RebalanceInProgress => ErrorCode::FencedMember,
        GroupError::InconsistentGroupProtocol => ErrorCode::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout(..)
        | GroupError::InvalidGroupId(_)
        | GroupError::MetadataTooLarge(..) => ErrorCode::InvalidGroup,
        GroupError::GroupMaxSizeReached(_) | GroupError::TooManyGroups(_) => {
            ErrorCode::GroupLimitReached
        }
        GroupError::NonEmptyGroup => ErrorCode::GroupNotEmpty,
        GroupError::GroupIdNotFound => ErrorCode::GroupNotFound,
        GroupError::Storage(_) => ErrorCode::StorageError,
        // Only Kafka's JoinGroup v4+ asks for it.
        GroupError::MemberIdRequired(_) => ErrorCode::UnknownServerError,
    };
    ErrorBody::new(code, e.to_string())
}

fn commit_error(e: CommitRefused) -> ErrorBody {
    let code = match &e {
        CommitRefused::UnknownTopicOrPartition => ErrorCode::UnknownPartition,
        CommitRefused::MetadataTooLarge(..) => ErrorCode::InvalidRequest,
        CommitRefused::Storage(_) => ErrorCode::StorageError,
    };
    ErrorBody::new(code, e.to_string())
}

pub(super) async fn dispatch(broker: &Arc<Broker>, peer: &Peer, request: Request) -> Outcome {
    let groups = broker.groups();
    match request {
        Request::GroupHeartbeat(h) => {
            let hb = Heartbeat {
                group: h.group,
                member_id: h.member_id,
                member_epoch: h.member_epoch,
                client_id: h.client_id,
                client_host: peer.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                session_timeout_ms: u64::from(h.session_timeout_ms),
                subscription: h.subscription,
                owned: h.owned,
            };
            let beat = groups.heartbeat_assigned(hb).map_err(group_error)?;
            Ok(ResponseBody::Heartbeat(HeartbeatAnswer {
                member_id: beat.member_id,
                member_epoch: beat.member_epoch,
                heartbeat_interval_ms: beat.heartbeat_interval_ms,
                assignment: beat.assignment,
            }))
        }
        Request::OffsetCommit {
            group,
            member_id,
            member_epoch,
            topics,
        } => {
            check_group_id(&group).map_err(group_error)?;
            if member_id.is_empty() && groups.is_active(&group) {
                return Err(ErrorBody::new(
                    ErrorCode::GroupNotEmpty,
                    format!("group {group} has members: only they commit while they run"),
                ));
            }
            let mut partitions = Vec::new();
            let mut shape = Vec::with_capacity(topics.len());
            for t in topics {
                let mut ids = Vec::with_capacity(t.partitions.len());
                for p in t.partitions {
                    ids.push(p.partition);
                    partitions.push(CommitPartition {
                        topic: t.topic.clone(),
                        partition: p.partition,
                        // Beyond i64 no log reaches: stored as "no offset".
                        offset: i64::try_from(p.offset).unwrap_or(-1),
                        leader_epoch: -1,
                        metadata: p.metadata,
                    });
                }
                shape.push((t.topic, ids));
            }
            // Without members the commit is from outside the group.
            let epoch = if member_id.is_empty() {
                -1
            } else {
                member_epoch
            };
            let mut results = groups
                .commit(&group, epoch, &member_id, None, partitions)
                .await
                .map_err(group_error)?
                .into_iter();
            Ok(ResponseBody::Committed(
                shape
                    .into_iter()
                    .map(|(topic, ids)| TopicResults {
                        topic,
                        partitions: ids
                            .into_iter()
                            .map(|partition| PartitionResult {
                                partition,
                                result: results
                                    .next()
                                    .unwrap_or(Err(CommitRefused::Storage("no result".into())))
                                    .map_err(commit_error),
                            })
                            .collect(),
                    })
                    .collect(),
            ))
        }
        Request::OffsetFetch { group, topics } => {
            check_group_id(&group).map_err(group_error)?;
            let asked = (!topics.is_empty()).then_some(topics);
            let got = groups.committed(&group, asked);
            Ok(ResponseBody::CommittedOffsets(
                got.into_iter()
                    .map(|(topic, ps)| TopicResults {
                        topic,
                        partitions: ps
                            .into_iter()
                            .map(|(partition, c)| PartitionResult {
                                partition,
                                result: Ok(CommittedOffset {
                                    offset: c.as_ref().and_then(|c| u64::try_from(c.offset).ok()),
                                    metadata: c.map(|c| c.metadata).unwrap_or_default(),
                                }),
                            })
                            .collect(),
                    })
                    .collect(),
            ))
        }
        Request::ListGroups => Ok(ResponseBody::Groups(
            groups
                .list()
                .into_iter()
                .map(|(group, state, protocol_type)| ListedGroup {
                    group,
                    state: state.name().to_owned(),
                    protocol_type,
                })
                .collect(),
        )),
        Request::DescribeGroup { group } => {
            check_group_id(&group).map_err(group_error)?;
            let view = groups.describe(&group).ok_or_else(|| {
                ErrorBody::new(ErrorCode::GroupNotFound, format!("no group {group}"))
            })?;
            let consumer = view.protocol_type == "consumer";
            Ok(ResponseBody::Group(GroupDescription {
                state: view.state.name().to_owned(),
                protocol_type: view.protocol_type,
                protocol: view.protocol,
                epoch: view.generation,
                members: view
                    .members
                    .into_iter()
                    .map(|m| GroupMember {
                        assignment: if consumer {
                            assignment_partitions(&m.assignment)
                        } else {
                            Vec::new()
                        },
                        member_id: m.member_id,
                        instance_id: m.instance_id.unwrap_or_default(),
                        client_id: m.client_id,
                        client_host: m.client_host,
                    })
                    .collect(),
            }))
        }
        Request::DeleteGroup { group } => {
            check_group_id(&group).map_err(group_error)?;
            groups
                .delete_group(&group)
                .await
                .map(|()| ResponseBody::Empty)
                .map_err(group_error)
        }
        other => Err(ErrorBody::new(
            ErrorCode::UnknownServerError,
            format!("{} is not a group request", other.api_key().name()),
        )),
    }
}
