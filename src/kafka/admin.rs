//! The Kafka listener's admin calls besides CreateTopics and DeleteTopics:
//! CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs
//! and DescribeCluster. Each goes through Spool's own requests
//! (DESCRIBE_TOPIC, ALTER_TOPIC), so both front ends see one set of
//! settings, with one set of checks.
//!
//! Kafka's topic configs and Spool's settings (`CONFIGS` in the parent
//! module): Kafka writes durations in milliseconds and sizes in bytes, with
//! -1 for "no limit", which Spool calls `unlimited`; its timestamp types
//! are `CreateTime` and `LogAppendTime`. Besides the mapped ones, describe
//! lists read-only configs that say how Spool behaves in Kafka's terms
//! (`cleanup.policy`, `compression.type`, `flush.messages`, `flush.ms`).

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{
    kafka_code, name, outcome, settings_of, settle, Front, CLUSTER_OPERATIONS, CONFIGS, NODE_ID,
};
use crate::broker::handler::{self, Peer};
use crate::protocol::{Request, ResponseBody, TopicDescription};

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;
const LIST: i8 = 7;

/// A Spool setting's value as Kafka writes it.
fn kafka_value(spool: &str, value: &str) -> String {
    match (spool, value) {
        (_, "unlimited") => "-1".to_owned(),
        ("timestamp_type", "create") => "CreateTime".to_owned(),
        ("timestamp_type", "log_append") => "LogAppendTime".to_owned(),
        _ => value.to_owned(),
    }
}

fn config_type(kafka: &str) -> i8 {
    match kafka {
        "segment.bytes" | "max.message.bytes" | "segment.index.bytes" => INT,
        "message.timestamp.type" | "compression.type" => STRING,
        "cleanup.policy" => LIST,
        _ => LONG,
    }
}

/// Kafka's source for where Spool says a setting comes from: given at
/// creation or by an alter is dynamic; the broker's file, static; built in,
/// the default.
fn source(spool_source: &str) -> i8 {
    match spool_source {
        "topic" => DYNAMIC_TOPIC_CONFIG,
        "default" => DEFAULT_CONFIG,
        _ => STATIC_BROKER_CONFIG,
    }
}

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// A topic's description by Spool's DESCRIBE_TOPIC, or Kafka's error code
/// and message.
async fn describe(
    front: &Front,
    peer: &Peer,
    id: i32,
    topic: &str,
) -> Result<TopicDescription, (i16, String)> {
    let request = Request::DescribeTopic {
        topic: topic.to_owned(),
    };
    let reply = handler::dispatch(&front.broker, peer, id as u32, request).await;
    match settle(reply).await.map(|(r, _)| r.body) {
        Some(Ok(ResponseBody::Description(d))) => Ok(d),
        Some(Err(e)) => Err((kafka_code(e.code), e.message)),
        _ => Err((-1, "no description".to_owned())),
    }
}

/// One config entry, at `version`.
fn entry(
    version: i16,
    synonyms: bool,
    kafka: &str,
    value: String,
    read_only: bool,
    source: i8,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = s(kafka);
    e.value = Some(s(value.clone()));
    e.read_only = read_only;
    e.config_source = source;
    if synonyms {
        let mut syn = DescribeConfigsSynonym::default();
        syn.name = s(kafka);
        syn.value = Some(s(value));
        syn.source = source;
        e.synonyms = vec![syn];
    }
    if version >= 3 {
        e.config_type = config_type(kafka);
    }
    e
}

/// A topic's configs in Kafka's terms, from its Spool description.
fn topic_configs(
    version: i16,
    synonyms: bool,
    d: &TopicDescription,
) -> Vec<DescribeConfigsResourceResult> {
    let value = |key: &str| {
        d.settings
            .iter()
            .find(|(k, _)| k == key)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let from = |key: &str| {
        d.sources
            .iter()
            .find(|(k, _)| k == key)
            .map_or(DEFAULT_CONFIG, |(_, v)| source(v))
    };
    let mut out: Vec<_> = CONFIGS
        .iter()
        .map(|(kafka, spool)| {
            let source = from(spool);
            // A value from the file's [topics.NAME] wins over any alter.
            let read_only = source == STATIC_BROKER_CONFIG
                && d.sources
                    .iter()
                    .any(|(k, v)| k == spool && v.starts_with("file [topics."));
            let v = kafka_value(spool, &value(spool));
            entry(version, synonyms, kafka, v, read_only, source)
        })
        .collect();
    let flush = value("flush");
    let (messages, ms) = match flush.as_str() {
        "always" => ("1".to_owned(), "0".to_owned()),
        "interval" => (i64::MAX.to_string(), value("flush_interval_ms")),
        _ => (i64::MAX.to_string(), i64::MAX.to_string()),
    };
    let fixed = [
        ("cleanup.policy", "delete".to_owned(), DEFAULT_CONFIG),
        ("compression.type", "producer".to_owned(), DEFAULT_CONFIG),
        ("flush.messages", messages, from("flush")),
        ("flush.ms", ms, from("flush")),
    ];
    for (kafka, v, source) in fixed {
        out.push(entry(version, synonyms, kafka, v, true, source));
    }
    out
}

/// The broker's configs: what a topic created now would get, under
/// Kafka's broker names, read-only (the broker's file sets them).
fn broker_configs(
    front: &Front,
    version: i16,
    synonyms: bool,
) -> Vec<DescribeConfigsResourceResult> {
    let config = front.broker.config();
    let none = crate::broker::config::TopicOverrides::default();
    let pairs = config
        .topic_settings("", &none)
        .map(|t| t.to_pairs())
        .unwrap_or_default();
    let sources = config.setting_sources("", &none);
    let d = TopicDescription {
        partitions: Vec::new(),
        settings: pairs,
        sources,
    };
    let names = [
        ("retention.ms", "log.retention.ms"),
        ("retention.bytes", "log.retention.bytes"),
        ("segment.bytes", "log.segment.bytes"),
        ("segment.ms", "log.roll.ms"),
        ("max.message.bytes", "message.max.bytes"),
        ("message.timestamp.type", "log.message.timestamp.type"),
        (
            "message.timestamp.after.max.ms",
            "log.message.timestamp.after.max.ms",
        ),
        ("segment.index.bytes", "log.index.size.max.bytes"),
        ("cleanup.policy", "log.cleanup.policy"),
        ("compression.type", "compression.type"),
        ("flush.messages", "log.flush.interval.messages"),
        ("flush.ms", "log.flush.interval.ms"),
    ];
    let mut out: Vec<_> = topic_configs(version, synonyms, &d)
        .into_iter()
        .filter_map(|mut e| {
            let (_, broker) = names.iter().find(|(t, _)| *t == &*e.name)?;
            e.name = s(*broker);
            for syn in &mut e.synonyms {
                syn.name = s(*broker);
            }
            e.read_only = true;
            Some(e)
        })
        .collect();
    let partitions = d
        .settings
        .iter()
        .find(|(k, _)| k == "partitions")
        .map_or("1".to_owned(), |(_, v)| v.clone());
    let auto = config.server.auto_create_topics.to_string();
    for (kafka, v, t) in [
        ("num.partitions", partitions, INT),
        ("auto.create.topics.enable", auto, 1),
        ("default.replication.factor", "1".to_owned(), INT),
        ("min.insync.replicas", "1".to_owned(), INT),
    ] {
        let mut e = entry(version, synonyms, kafka, v, true, STATIC_BROKER_CONFIG);
        if version >= 3 {
            e.config_type = t;
        }
        out.push(e);
    }
    out
}

/// DescribeConfigs: topics (every config, or the keys asked for) and this
/// broker (node 0).
pub async fn describe_configs(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut body = DescribeConfigsResponse::default();
    for r in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = r.resource_type;
        result.resource_name = r.resource_name.clone();
        let configs = match r.resource_type {
            TOPIC => describe(front, peer, id, &r.resource_name)
                .await
                .map(|d| topic_configs(version, request.include_synonyms, &d)),
            BROKER if r.resource_name.is_empty() || *r.resource_name == *NODE_ID.to_string() => {
                Ok(broker_configs(front, version, request.include_synonyms))
            }
            BROKER => Err((
                42,
                format!("no broker {}: this is broker {NODE_ID}", r.resource_name),
            )),
            other => Err((
                42,
                format!("resource type {other} is not supported (2: topic, 4: broker)"),
            )),
        };
        match configs {
            Ok(mut configs) => {
                if let Some(keys) = &r.configuration_keys {
                    configs.retain(|c| keys.contains(&c.name));
                }
                result.configs = configs;
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(s(message));
            }
        }
        body.results.push(result);
    }
    body
}

/// What an alter of a topic's configs asks: settings to set and Spool
/// keys to reset.
struct Alter {
    set: Vec<(String, String)>,
    reset: Vec<String>,
}

/// Runs an alter (or, with `validate_only`, checks it), answering Kafka's
/// code and message; a request already refused is answered as such.
async fn alter_topic(
    front: &Front,
    peer: &Peer,
    id: i32,
    topic: &str,
    alter: Result<Alter, (i16, String)>,
    validate_only: bool,
) -> (i16, Option<String>) {
    let alter = match alter {
        Ok(alter) => alter,
        Err((code, message)) => return (code, Some(message)),
    };
    if validate_only {
        if front.broker.topics().get(topic).is_none() {
            return (3, Some(format!("no topic {topic:?}")));
        }
        let checked = crate::broker::config::TopicOverrides::from_pairs(&alter.set)
            .and_then(|o| front.broker.config().topic_settings(topic, &o).map(|_| ()));
        return match checked {
            Ok(()) => (0, None),
            Err(e) => (40, Some(e)),
        };
    }
    let request = Request::AlterTopic {
        topic: topic.to_owned(),
        set: alter.set,
        reset: alter.reset,
    };
    outcome(handler::dispatch(&front.broker, peer, id as u32, request).await).await
}

fn alter_result(
    resource_type: i8,
    resource_name: StrBytes,
    (code, message): (i16, Option<String>),
) -> AlterConfigsResourceResponse {
    let mut r = AlterConfigsResourceResponse::default();
    r.resource_type = resource_type;
    r.resource_name = resource_name;
    r.error_code = code;
    r.error_message = message.map(s);
    r
}

/// The refusal of an alter of anything but a topic.
fn not_a_topic(resource_type: i8) -> (i16, Option<String>) {
    let message = if resource_type == BROKER {
        "broker configs are read-only: they come from the broker's config file".to_owned()
    } else {
        format!("resource type {resource_type} cannot be altered (2: topic)")
    };
    (if resource_type == BROKER { 40 } else { 42 }, Some(message))
}

/// AlterConfigs: the topic's configs become exactly those given (Kafka's
/// rule: every mapped config not listed goes back to its default).
pub async fn alter_configs(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut body = AlterConfigsResponse::default();
    for r in request.resources {
        let result = if r.resource_type != TOPIC {
            not_a_topic(r.resource_type)
        } else {
            let configs: Vec<(String, Option<String>)> = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect();
            let alter = settings_of(-1, &configs).map(|set| {
                let reset = CONFIGS
                    .iter()
                    .map(|(_, spool)| (*spool).to_owned())
                    .filter(|spool| !set.iter().any(|(k, _)| k == spool))
                    .collect();
                Alter { set, reset }
            });
            let topic = &r.resource_name;
            alter_topic(front, peer, id, topic, alter, request.validate_only).await
        };
        body.responses
            .push(alter_result(r.resource_type, r.resource_name, result));
    }
    body
}

/// IncrementalAlterConfigs: SET (0) and DELETE (1, back to the default)
/// per config; APPEND and SUBTRACT apply to list configs, and the one list
/// config, `cleanup.policy`, only takes `delete`.
pub async fn incremental_alter_configs(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut body = IncrementalAlterConfigsResponse::default();
    for r in request.resources {
        let result = if r.resource_type != TOPIC {
            not_a_topic(r.resource_type)
        } else {
            let mut set_configs = Vec::new();
            let mut reset = Vec::new();
            let mut refused = None;
            for c in &r.configs {
                let name = c.name.to_string();
                match c.config_operation {
                    0 => set_configs.push((name, c.value.as_ref().map(|v| v.to_string()))),
                    1 if name == "cleanup.policy" || name == "compression.type" => {}
                    1 => match CONFIGS.iter().find(|(k, _)| *k == name) {
                        Some((_, spool)) => reset.push((*spool).to_owned()),
                        None => {
                            refused = Some((40, format!("config {name} is not supported")));
                            break;
                        }
                    },
                    op => {
                        refused = Some((
                            40,
                            format!("operation {op} on {name}: only SET (0) and DELETE (1) apply to Spool's configs"),
                        ));
                        break;
                    }
                }
            }
            let alter = match refused {
                Some(refusal) => Err(refusal),
                None => settings_of(-1, &set_configs).map(|set| Alter { set, reset }),
            };
            let topic = &r.resource_name;
            alter_topic(front, peer, id, topic, alter, request.validate_only).await
        };
        let (code, message) = result;
        let mut response = IncrementalResult::default();
        response.resource_type = r.resource_type;
        response.resource_name = r.resource_name;
        response.error_code = code;
        response.error_message = message.map(s);
        body.responses.push(response);
    }
    body
}

/// CreatePartitions: raises a topic's partition count as ALTER_TOPIC does.
/// Kafka's errors: INVALID_PARTITIONS (37) for a count not above the
/// current one, INVALID_REPLICA_ASSIGNMENT (39) for assignments.
pub async fn create_partitions(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut body = CreatePartitionsResponse::default();
    for t in request.topics {
        let topic = name(&t.name);
        // The count is read and the map's guard dropped before the alter,
        // which takes the map's lock itself.
        let current = front
            .broker
            .topics()
            .get(&topic)
            .map(|t| t.partition_count());
        let (code, message) = match current {
            None => (3, Some(format!("no topic {topic:?}"))),
            Some(count) if t.count <= count as i32 => (
                37,
                Some(format!(
                    "topic {topic:?} has {count} partitions; the count can only grow"
                )),
            ),
            Some(count) if !assignable(t.assignments.as_deref(), t.count - count as i32) => (
                39,
                Some(format!(
                    "the assignments must give each of the {} new partitions the one replica, broker {NODE_ID}",
                    t.count - count as i32
                )),
            ),
            Some(_) => {
                let alter = Ok(Alter {
                    set: vec![("partitions".to_owned(), t.count.to_string())],
                    reset: Vec::new(),
                });
                alter_topic(front, peer, id, &topic, alter, request.validate_only).await
            }
        };
        let mut result = CreatePartitionsTopicResult::default();
        result.name = t.name;
        result.error_code = code;
        result.error_message = message.map(s);
        body.results.push(result);
    }
    body
}

/// Whether CreatePartitions' replica assignments can be honoured on one
/// broker: none (null, or the empty list some clients send for it), or one
/// per new partition, each naming only this broker, once.
fn assignable(
    assignments: Option<
        &[kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment],
    >,
    new: i32,
) -> bool {
    match assignments {
        None | Some([]) => true,
        Some(list) => {
            list.len() as i64 == new as i64
                && list.iter().all(|a| a.broker_ids == [BrokerId(NODE_ID)])
        }
    }
}

/// DescribeCluster: this one broker, which is also the controller.
pub fn describe_cluster(
    front: &Front,
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let mut body = DescribeClusterResponse::default();
    if version >= 1 {
        // Brokers (1) or controllers (2): this broker is both.
        body.endpoint_type = request.endpoint_type;
    }
    body.cluster_id = s(front.cluster_id.clone());
    body.controller_id = BrokerId(NODE_ID);
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = BrokerId(NODE_ID);
    broker.host = s(front.advertised.0.clone());
    broker.port = front.advertised.1;
    body.brokers = vec![broker];
    body.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        i32::MIN
    };
    body
}
