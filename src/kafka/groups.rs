//! The Kafka group APIs: where a group's coordinator is, and what it has
//! committed. Consumer groups (membership and commits) are not built yet,
//! so no group has a committed offset: OffsetFetch answers -1, with no
//! error and empty metadata, for every partition asked, as Kafka answers
//! for a group that never committed.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, OffsetFetchRequest,
    OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{Front, NODE_ID};

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

/// OffsetFetch: -1 for every partition asked (see the module's doc). A
/// request for all of a group's topics (null topics, v2+) gets none.
pub(super) fn offset_fetch(request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let mut body = OffsetFetchResponse::default();
    if version >= 8 {
        body.groups = request
            .groups
            .into_iter()
            .map(|g| {
                let mut group = OffsetFetchResponseGroup::default();
                group.group_id = g.group_id;
                group.topics = g
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let mut topic = OffsetFetchResponseTopics::default();
                        topic.name = t.name;
                        topic.partitions = t
                            .partition_indexes
                            .into_iter()
                            .map(|p| {
                                let mut partition = OffsetFetchResponsePartitions::default();
                                partition.partition_index = p;
                                partition.committed_offset = -1;
                                partition
                            })
                            .collect();
                        topic
                    })
                    .collect();
                group
            })
            .collect();
    } else {
        body.topics = request
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let mut topic = OffsetFetchResponseTopic::default();
                topic.name = t.name;
                topic.partitions = t
                    .partition_indexes
                    .into_iter()
                    .map(|p| {
                        let mut partition = OffsetFetchResponsePartition::default();
                        partition.partition_index = p;
                        partition.committed_offset = -1;
                        partition
                    })
                    .collect();
                topic
            })
            .collect();
    }
    body
}
