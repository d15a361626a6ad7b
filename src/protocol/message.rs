//! Request and response messages: parse and encode, side by side.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::wire::{put_string, string_len, Reader};
use super::{ErrorCode, ProtocolError, FRAME_PREFIX_LEN};

/// `u16 api_key, u16 api_version, u32 correlation_id`.
pub const REQUEST_HEADER_LEN: usize = 8;

/// The APIs, numbered as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    CreateTopic = 1,
    DeleteTopic = 2,
    ListTopics = 3,
    DescribeTopic = 4,
    Produce = 5,
    Fetch = 6,
    ListOffsets = 7,
    AlterTopic = 8,
    GroupHeartbeat = 9,
    OffsetCommit = 10,
    OffsetFetch = 11,
    ListGroups = 12,
    DescribeGroup = 13,
    DeleteGroup = 14,
}

/// Every API with the versions the broker supports: `(key, min, max)`.
/// Version 1 of DESCRIBE_TOPIC, PRODUCE, FETCH and LIST_OFFSETS names
/// partitions (and carries RecordBatch v2); their version 0 is gone.
pub const API_VERSIONS: [(ApiKey, u16, u16); 15] = [
    (ApiKey::ApiVersions, 0, 0),
    (ApiKey::CreateTopic, 0, 0),
    (ApiKey::DeleteTopic, 0, 0),
    (ApiKey::ListTopics, 0, 0),
    (ApiKey::DescribeTopic, 1, 1),
    (ApiKey::Produce, 1, 1),
    (ApiKey::Fetch, 1, 1),
    (ApiKey::ListOffsets, 1, 1),
    (ApiKey::AlterTopic, 0, 0),
    (ApiKey::GroupHeartbeat, 0, 0),
    (ApiKey::OffsetCommit, 0, 0),
    (ApiKey::OffsetFetch, 0, 0),
    (ApiKey::ListGroups, 0, 0),
    (ApiKey::DescribeGroup, 0, 0),
    (ApiKey::DeleteGroup, 0, 0),
];

impl ApiKey {
    pub fn from_u16(key: u16) -> Option<ApiKey> {
        API_VERSIONS.get(key as usize).map(|(k, _, _)| *k)
    }

    /// The one version of this API the broker speaks (and clients send).
    pub fn version(self) -> u16 {
        API_VERSIONS[self as usize].2
    }

    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "API_VERSIONS",
            ApiKey::CreateTopic => "CREATE_TOPIC",
            ApiKey::DeleteTopic => "DELETE_TOPIC",
            ApiKey::ListTopics => "LIST_TOPICS",
            ApiKey::DescribeTopic => "DESCRIBE_TOPIC",
            ApiKey::Produce => "PRODUCE",
            ApiKey::Fetch => "FETCH",
            ApiKey::ListOffsets => "LIST_OFFSETS",
            ApiKey::AlterTopic => "ALTER_TOPIC",
            ApiKey::GroupHeartbeat => "GROUP_HEARTBEAT",
            ApiKey::OffsetCommit => "OFFSET_COMMIT",
            ApiKey::OffsetFetch => "OFFSET_FETCH",
            ApiKey::ListGroups => "LIST_GROUPS",
            ApiKey::DescribeGroup => "DESCRIBE_GROUP",
            ApiKey::DeleteGroup => "DELETE_GROUP",
        }
    }
}

/// The fixed start of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
}

impl RequestHeader {
    /// Parses the header at the start of a frame (without its length prefix).
    pub fn parse(frame: &[u8]) -> Result<RequestHeader, ProtocolError> {
        let mut r = Reader::new(frame);
        Ok(RequestHeader {
            api_key: r.u16("api_key")?,
            api_version: r.u16("api_version")?,
            correlation_id: r.u32("correlation_id")?,
        })
    }
}

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Never: fire and forget. The broker sends no response, even on error.
    None = 0,
    /// Once the batch is as durable as the topic's `flush` mode promises.
    Commit = 1,
}

/// Which offset LIST_OFFSETS looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored (timestamp -2 on the wire).
    Earliest,
    /// The offset the next record will get (timestamp -1).
    Latest,
    /// The first record whose timestamp is this time (ms since the epoch)
    /// or later; the latest offset if every record is older.
    Timestamp(i64),
    /// The record with the largest timestamp (timestamp -3); the latest
    /// offset in an empty partition.
    MaxTimestamp,
}

impl OffsetSpec {
    fn to_wire(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
            OffsetSpec::MaxTimestamp => -3,
        }
    }
}

/// A request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    ApiVersions,
    CreateTopic {
        topic: String,
        settings: Vec<(String, String)>,
    },
    DeleteTopic {
        topic: String,
    },
    ListTopics,
    DescribeTopic {
        topic: String,
    },
    /// Batches for one or more partitions of one or more topics, appended
    /// in request order; answered once every one is as durable as its
    /// topic's flush mode promises.
    Produce {
        acks: Acks,
        topics: Vec<ProduceTopic>,
    },
    /// Waits up to `max_wait_ms` until `min_bytes` are available over all
    /// the partitions named; returns at most `max_bytes` in all (but always
    /// the whole batch holding the first partition's offset).
    Fetch {
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
        topics: Vec<FetchTopic>,
    },
    ListOffsets {
        topics: Vec<OffsetsTopic>,
    },
    /// Changes a running topic's settings: `set` are `key = value` pairs as
    /// in CREATE_TOPIC, `reset` keys go back to the value below the topic's
    /// own (the file's `[defaults]`, or the built-in default).
    AlterTopic {
        topic: String,
        set: Vec<(String, String)>,
        reset: Vec<String>,
    },
    /// Joins (epoch 0), stays in (the epoch given) or leaves (-1) a group
    /// whose partitions the broker assigns; answered with the partitions
    /// the member may consume now.
    GroupHeartbeat(GroupHeartbeat),
    /// Commits the next offset to read of each partition named. A member
    /// commits with its id and epoch; a commit from outside the group
    /// (empty id, epoch -1) is taken only while the group has no members.
    OffsetCommit {
        group: String,
        member_id: String,
        member_epoch: i32,
        topics: Vec<CommitTopic>,
    },
    /// The group's commits of the partitions named; of every partition it
    /// committed when no topic is named.
    OffsetFetch {
        group: String,
        topics: Vec<(String, Vec<u32>)>,
    },
    ListGroups,
    DescribeGroup {
        group: String,
    },
    /// Forgets a group without members, and its commits.
    DeleteGroup {
        group: String,
    },
}

/// A GROUP_HEARTBEAT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeartbeat {
    pub group: String,
    /// Empty to join as a new member.
    pub member_id: String,
    /// 0 to join, -1 to leave, otherwise the epoch the broker gave.
    pub member_epoch: i32,
    pub session_timeout_ms: u32,
    pub client_id: String,
    /// The topics the member consumes.
    pub subscription: Vec<String>,
    /// The partitions it holds (it has let go of everything else).
    pub owned: Vec<(String, Vec<u32>)>,
}

/// One partition's commit: the next offset to read, and a string kept
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffset {
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitTopic {
    pub topic: String,
    pub partitions: Vec<CommitOffset>,
}

/// A GROUP_HEARTBEAT's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    /// What the member may consume now, by topic.
    pub assignment: Vec<(String, Vec<u32>)>,
}

/// A partition's commit as OFFSET_FETCH returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// None: the group has no commit for it (-1 on the wire).
    pub offset: Option<u64>,
    pub metadata: String,
}

/// A group as LIST_GROUPS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group: String,
    /// `Empty` (commits only), `Stable`, `Reconciling` (partitions on the
    /// move), or a Kafka group's `PreparingRebalance`, `CompletingRebalance`.
    pub state: String,
    /// "consumer" for consumer groups, empty for commits alone.
    pub protocol_type: String,
}

/// A member as DESCRIBE_GROUP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    /// A Kafka static member's `group.instance.id` (empty if none).
    pub instance_id: String,
    pub client_id: String,
    pub client_host: String,
    /// The partitions it consumes, by topic.
    pub assignment: Vec<(String, Vec<u32>)>,
}

/// A group as DESCRIBE_GROUP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub state: String,
    pub protocol_type: String,
    /// "spool" when the broker assigns; else the Kafka clients' assignor.
    pub protocol: String,
    /// The group's epoch (broker-assigned) or generation (Kafka).
    pub epoch: i32,
    pub members: Vec<GroupMember>,
}

/// One topic's part of a PRODUCE: `(partition, batch)` pairs, each batch a
/// RecordBatch v2 still in the frame's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    pub topic: String,
    pub partitions: Vec<(u32, BytesMut)>,
}

/// Where a FETCH reads one partition from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPartition {
    pub partition: u32,
    pub offset: u64,
    /// At most this many bytes from this partition (a first batch larger
    /// than that still comes whole, if nothing came before it).
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopic {
    pub topic: String,
    pub partitions: Vec<FetchPartition>,
}

/// One topic's part of a LIST_OFFSETS: `(partition, what to look up)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsTopic {
    pub topic: String,
    pub partitions: Vec<(u32, OffsetSpec)>,
}

/// Most bytes a produce frame of one batch holds besides its records: the
/// request header, acks, the topic count, the longest topic name (249
/// bytes and its length), the partition count, the partition, the batch
/// length and the batch header. A record of `max_frame_bytes` minus this
/// always fits in one frame.
pub const MAX_PRODUCE_OVERHEAD: usize =
    REQUEST_HEADER_LEN + 1 + 4 + 2 + 249 + 4 + 4 + 4 + crate::batch::HEADER_LEN;

/// Smallest encodings of the repeated parts of PRODUCE, FETCH and
/// LIST_OFFSETS, which bound what a count can claim.
const MIN_TOPIC_LEN: usize = 2 + 4;
const MIN_PRODUCE_PARTITION_LEN: usize = 4 + 4;
const MIN_FETCH_PARTITION_LEN: usize = 4 + 8 + 4;
const MIN_OFFSETS_PARTITION_LEN: usize = 4 + 8;

/// Most partitions (over all topics, repeats counted) one PRODUCE, FETCH or
/// LIST_OFFSETS may name: a topic has at most this many, and without a cap
/// a frame of 16-byte fetch entries would make the broker hold (and a long
/// poll watch) a million.
pub const MAX_REQUEST_PARTITIONS: usize = 10_000;

/// `[string topic, [partition]]` of a request, each partition's fields
/// read by `partition` (at least `min_partition_len` bytes each), at most
/// [`MAX_REQUEST_PARTITIONS`] partitions in all; a topic of none counts as
/// one, so that empty topics cannot pile up either.
fn parse_topic_list<T>(
    r: &mut Reader<'_>,
    min_partition_len: usize,
    mut partition: impl FnMut(&mut Reader<'_>) -> Result<T, ProtocolError>,
) -> Result<Vec<(String, Vec<T>)>, ProtocolError> {
    let mut topics = Vec::new();
    let mut total = 0usize;
    for _ in 0..r.count("topics", MIN_TOPIC_LEN)? {
        let topic = r.string("topic")?;
        let count = r.count("partitions", min_partition_len)?;
        total += count.max(1);
        if total > MAX_REQUEST_PARTITIONS {
            return Err(ProtocolError::BadValue {
                field: "partitions",
                reason: format!("more than {MAX_REQUEST_PARTITIONS} partitions in one request"),
            });
        }
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            partitions.push(partition(r)?);
        }
        topics.push((topic, partitions));
    }
    Ok(topics)
}

/// Smallest encoding of a `(string, string)` pair: two empty strings.
const MIN_PAIR_LEN: usize = 4;
/// Most settings one CREATE_TOPIC may carry. There are ten topic settings;
/// the cap keeps what a frame makes the parser hold near the frame's size
/// (without it, 4-byte empty pairs each cost a 48-byte `(String, String)`).
pub const MAX_SETTINGS: usize = 64;
/// Longest setting key and value, in bytes.
pub const MAX_SETTING_KEY: usize = 64;
pub const MAX_SETTING_VALUE: usize = 256;

impl Request {
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::ApiVersions => ApiKey::ApiVersions,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::ListTopics => ApiKey::ListTopics,
            Request::DescribeTopic { .. } => ApiKey::DescribeTopic,
            Request::Produce { .. } => ApiKey::Produce,
            Request::Fetch { .. } => ApiKey::Fetch,
            Request::ListOffsets { .. } => ApiKey::ListOffsets,
            Request::AlterTopic { .. } => ApiKey::AlterTopic,
            Request::GroupHeartbeat(_) => ApiKey::GroupHeartbeat,
            Request::OffsetCommit { .. } => ApiKey::OffsetCommit,
            Request::OffsetFetch { .. } => ApiKey::OffsetFetch,
            Request::ListGroups => ApiKey::ListGroups,
            Request::DescribeGroup { .. } => ApiKey::DescribeGroup,
            Request::DeleteGroup { .. } => ApiKey::DeleteGroup,
        }
    }

    /// A PRODUCE of one batch to one partition.
    pub fn produce(topic: &str, partition: u32, acks: Acks, batch: BytesMut) -> Request {
        Request::Produce {
            acks,
            topics: vec![ProduceTopic {
                topic: topic.to_owned(),
                partitions: vec![(partition, batch)],
            }],
        }
    }

    /// A FETCH of one partition; `max_bytes` bounds both the partition and
    /// the response.
    pub fn fetch(
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        min_bytes: u32,
    ) -> Request {
        Request::Fetch {
            max_wait_ms,
            min_bytes,
            max_bytes,
            topics: vec![FetchTopic {
                topic: topic.to_owned(),
                partitions: vec![FetchPartition {
                    partition,
                    offset,
                    max_bytes,
                }],
            }],
        }
    }

    /// A LIST_OFFSETS of one partition.
    pub fn list_offsets(topic: &str, partition: u32, spec: OffsetSpec) -> Request {
        Request::ListOffsets {
            topics: vec![OffsetsTopic {
                topic: topic.to_owned(),
                partitions: vec![(partition, spec)],
            }],
        }
    }

    /// Parses a whole frame (without the length prefix). A produce's
    /// batches stay in `frame`'s buffer: no copy.
    pub fn parse(mut frame: BytesMut) -> Result<(RequestHeader, Request), ProtocolError> {
        let header = RequestHeader::parse(&frame)?;
        let api =
            ApiKey::from_u16(header.api_key).ok_or(ProtocolError::UnknownApi(header.api_key))?;
        if header.api_version != api.version() {
            return Err(ProtocolError::UnsupportedVersion {
                api: api.name(),
                version: header.api_version,
            });
        }
        let mut r = Reader::new(&frame);
        r.u64("header")?; // skip the header parsed above
        let request = match api {
            ApiKey::ApiVersions => Request::ApiVersions,
            ApiKey::CreateTopic => {
                let topic = r.string("topic")?;
                let settings = parse_settings(&mut r)?;
                Request::CreateTopic { topic, settings }
            }
            ApiKey::AlterTopic => {
                let topic = r.string("topic")?;
                let set = parse_settings(&mut r)?;
                // A key is at least its 2-byte length.
                let count = capped_count(&mut r, "reset", 2, "keys")?;
                let mut reset = Vec::with_capacity(count);
                for _ in 0..count {
                    reset.push(r.string_at_most("setting key", MAX_SETTING_KEY)?);
                }
                Request::AlterTopic { topic, set, reset }
            }
            ApiKey::DeleteTopic => Request::DeleteTopic {
                topic: r.string("topic")?,
            },
            ApiKey::ListTopics => Request::ListTopics,
            ApiKey::DescribeTopic => Request::DescribeTopic {
                topic: r.string("topic")?,
            },
            ApiKey::Produce => {
                let acks = match r.u8("acks")? {
                    0 => Acks::None,
                    1 => Acks::Commit,
                    other => {
                        return Err(ProtocolError::BadValue {
                            field: "acks",
                            reason: format!("{other} is not 0 or 1"),
                        })
                    }
                };
                // Names and batch positions first; then the batches are cut
                // out of the frame in order, without a copy.
                let shaped = parse_topic_list(&mut r, MIN_PRODUCE_PARTITION_LEN, |r| {
                    Ok((r.u32("partition")?, r.bytes_range("batch")?))
                })?;
                r.finish()?;
                let mut at = 0;
                let mut topics = Vec::with_capacity(shaped.len());
                for (topic, ranges) in shaped {
                    let mut partitions = Vec::with_capacity(ranges.len());
                    for (partition, range) in ranges {
                        frame.advance(range.start - at);
                        at = range.end;
                        partitions.push((partition, frame.split_to(range.len())));
                    }
                    topics.push(ProduceTopic { topic, partitions });
                }
                return Ok((header, Request::Produce { acks, topics }));
            }
            ApiKey::Fetch => {
                let max_wait_ms = r.u32("max_wait_ms")?;
                let min_bytes = r.u32("min_bytes")?;
                let max_bytes = r.u32("max_bytes")?;
                let topics = parse_topic_list(&mut r, MIN_FETCH_PARTITION_LEN, |r| {
                    Ok(FetchPartition {
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        max_bytes: r.u32("partition_max_bytes")?,
                    })
                })?
                .into_iter()
                .map(|(topic, partitions)| FetchTopic { topic, partitions })
                .collect();
                Request::Fetch {
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    topics,
                }
            }
            ApiKey::ListOffsets => {
                let topics = parse_topic_list(&mut r, MIN_OFFSETS_PARTITION_LEN, |r| {
                    let partition = r.u32("partition")?;
                    let spec = match r.i64("timestamp")? {
                        -2 => OffsetSpec::Earliest,
                        -1 => OffsetSpec::Latest,
                        -3 => OffsetSpec::MaxTimestamp,
                        t if t >= 0 => OffsetSpec::Timestamp(t),
                        t => {
                            return Err(ProtocolError::BadValue {
                                field: "timestamp",
                                reason: format!(
                                    "{t}: use -1 (latest), -2 (earliest), -3 (max timestamp) or a time in ms"
                                ),
                            })
                        }
                    };
                    Ok((partition, spec))
                })?
                .into_iter()
                .map(|(topic, partitions)| OffsetsTopic { topic, partitions })
                .collect();
                Request::ListOffsets { topics }
            }
            ApiKey::GroupHeartbeat => {
                // Bounded, as the broker keeps them for the member's life.
                let group = r.string_at_most("group", MAX_GROUP_ID)?;
                let member_id = r.string_at_most("member_id", MAX_MEMBER_ID)?;
                let member_epoch = r.i32("member_epoch")?;
                let session_timeout_ms = r.u32("session_timeout_ms")?;
                let client_id = r.string_at_most("client_id", MAX_MEMBER_ID)?;
                let count = r.count("subscription", 2)?;
                if count > MAX_SUBSCRIBED_TOPICS {
                    return Err(ProtocolError::BadValue {
                        field: "subscription",
                        reason: format!("{count} topics; at most {MAX_SUBSCRIBED_TOPICS}"),
                    });
                }
                let mut subscription = Vec::with_capacity(count);
                for _ in 0..count {
                    subscription.push(r.string_at_most("topic", MAX_TOPIC_NAME)?);
                }
                let owned = parse_topic_list(&mut r, 4, |r| r.u32("partition"))?;
                Request::GroupHeartbeat(GroupHeartbeat {
                    group,
                    member_id,
                    member_epoch,
                    session_timeout_ms,
                    client_id,
                    subscription,
                    owned,
                })
            }
            ApiKey::OffsetCommit => {
                let group = r.string("group")?;
                let member_id = r.string("member_id")?;
                let member_epoch = r.i32("member_epoch")?;
                let topics = parse_topic_list(&mut r, 4 + 8 + 2, |r| {
                    Ok(CommitOffset {
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        metadata: r.string("metadata")?,
                    })
                })?
                .into_iter()
                .map(|(topic, partitions)| CommitTopic { topic, partitions })
                .collect();
                Request::OffsetCommit {
                    group,
                    member_id,
                    member_epoch,
                    topics,
                }
            }
            ApiKey::OffsetFetch => Request::OffsetFetch {
                group: r.string("group")?,
                topics: parse_topic_list(&mut r, 4, |r| r.u32("partition"))?,
            },
            ApiKey::ListGroups => Request::ListGroups,
            ApiKey::DescribeGroup => Request::DescribeGroup {
                group: r.string("group")?,
            },
            ApiKey::DeleteGroup => Request::DeleteGroup {
                group: r.string("group")?,
            },
        };
        r.finish()?;
        Ok((header, request))
    }

    /// Appends the whole frame, length prefix included.
    pub fn encode(&self, correlation_id: u32, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0); // patched below
        out.put_u16(self.api_key() as u16);
        out.put_u16(self.api_key().version());
        out.put_u32(correlation_id);
        match self {
            Request::ApiVersions | Request::ListTopics | Request::ListGroups => {}
            Request::GroupHeartbeat(h) => {
                put_string(out, &h.group);
                put_string(out, &h.member_id);
                out.put_i32(h.member_epoch);
                out.put_u32(h.session_timeout_ms);
                put_string(out, &h.client_id);
                out.put_u32(h.subscription.len() as u32);
                for t in &h.subscription {
                    put_string(out, t);
                }
                put_partition_lists(out, &h.owned);
            }
            Request::OffsetCommit {
                group,
                member_id,
                member_epoch,
                topics,
            } => {
                put_string(out, group);
                put_string(out, member_id);
                out.put_i32(*member_epoch);
                out.put_u32(topics.len() as u32);
                for t in topics {
                    put_string(out, &t.topic);
                    out.put_u32(t.partitions.len() as u32);
                    for p in &t.partitions {
                        out.put_u32(p.partition);
                        out.put_u64(p.offset);
                        put_string(out, &p.metadata);
                    }
                }
            }
            Request::OffsetFetch { group, topics } => {
                put_string(out, group);
                put_partition_lists(out, topics);
            }
            Request::DescribeGroup { group } | Request::DeleteGroup { group } => {
                put_string(out, group)
            }
            Request::CreateTopic { topic, settings } => {
                put_string(out, topic);
                put_pairs(out, settings);
            }
            Request::AlterTopic { topic, set, reset } => {
                put_string(out, topic);
                put_pairs(out, set);
                out.put_u32(reset.len() as u32);
                for k in reset {
                    put_string(out, k);
                }
            }
            Request::DeleteTopic { topic } | Request::DescribeTopic { topic } => {
                put_string(out, topic)
            }
            Request::Produce { acks, topics } => {
                out.put_u8(*acks as u8);
                out.put_u32(topics.len() as u32);
                for t in topics {
                    put_string(out, &t.topic);
                    out.put_u32(t.partitions.len() as u32);
                    for (partition, batch) in &t.partitions {
                        out.put_u32(*partition);
                        out.put_u32(batch.len() as u32);
                        out.put_slice(batch);
                    }
                }
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                topics,
            } => {
                out.put_u32(*max_wait_ms);
                out.put_u32(*min_bytes);
                out.put_u32(*max_bytes);
                out.put_u32(topics.len() as u32);
                for t in topics {
                    put_string(out, &t.topic);
                    out.put_u32(t.partitions.len() as u32);
                    for p in &t.partitions {
                        out.put_u32(p.partition);
                        out.put_u64(p.offset);
                        out.put_u32(p.max_bytes);
                    }
                }
            }
            Request::ListOffsets { topics } => {
                out.put_u32(topics.len() as u32);
                for t in topics {
                    put_string(out, &t.topic);
                    out.put_u32(t.partitions.len() as u32);
                    for (partition, spec) in &t.partitions {
                        out.put_u32(*partition);
                        out.put_i64(spec.to_wire());
                    }
                }
            }
        }
        let len = (out.len() - start - FRAME_PREFIX_LEN) as u32;
        out[start..start + FRAME_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame of a one-batch produce request up to (not including) the
    /// batch bytes, so a client can send a batch it built elsewhere without
    /// copying it.
    pub fn produce_head(
        topic: &str,
        partition: u32,
        acks: Acks,
        batch_len: usize,
        correlation_id: u32,
    ) -> BytesMut {
        let len = REQUEST_HEADER_LEN + 1 + 4 + string_len(topic) + 4 + 4 + 4 + batch_len;
        let mut out = BytesMut::with_capacity(FRAME_PREFIX_LEN + len - batch_len);
        out.put_u32(len as u32);
        out.put_u16(ApiKey::Produce as u16);
        out.put_u16(ApiKey::Produce.version());
        out.put_u32(correlation_id);
        out.put_u8(acks as u8);
        out.put_u32(1);
        put_string(&mut out, topic);
        out.put_u32(1);
        out.put_u32(partition);
        out.put_u32(batch_len as u32);
        out
    }
}

/// Most topics one GROUP_HEARTBEAT may subscribe to.
pub const MAX_SUBSCRIBED_TOPICS: usize = 1_000;
/// Longest group id, member id or client id, and topic name, in a
/// GROUP_HEARTBEAT (what the broker keeps for each member).
pub const MAX_GROUP_ID: usize = 249;
pub const MAX_MEMBER_ID: usize = 255;
pub const MAX_TOPIC_NAME: usize = 249;

/// `[string topic, [u32 partition]]`.
fn put_partition_lists(out: &mut BytesMut, topics: &[(String, Vec<u32>)]) {
    out.put_u32(topics.len() as u32);
    for (t, ps) in topics {
        put_string(out, t);
        out.put_u32(ps.len() as u32);
        for p in ps {
            out.put_u32(*p);
        }
    }
}

/// `[string topic, [u32 partition]]` in a response.
fn parse_partition_lists(r: &mut Reader<'_>) -> Result<Vec<(String, Vec<u32>)>, ProtocolError> {
    let mut topics = Vec::new();
    for _ in 0..r.count("topics", MIN_TOPIC_LEN)? {
        let topic = r.string("topic")?;
        let count = r.count("partitions", 4)?;
        let mut ps = Vec::with_capacity(count);
        for _ in 0..count {
            ps.push(r.u32("partition")?);
        }
        topics.push((topic, ps));
    }
    Ok(topics)
}

/// `[string key, string value]`, as CREATE_TOPIC and ALTER_TOPIC carry
/// them: at most [`MAX_SETTINGS`], each key and value of bounded length.
fn parse_settings(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, ProtocolError> {
    let count = capped_count(r, "settings", MIN_PAIR_LEN, "settings")?;
    let mut settings = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.string_at_most("setting key", MAX_SETTING_KEY)?;
        let value = r.string_at_most("setting value", MAX_SETTING_VALUE)?;
        settings.push((key, value));
    }
    Ok(settings)
}

/// `[string, string]` in a response (whose size the client bounds).
fn parse_pairs(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Vec<(String, String)>, ProtocolError> {
    let count = r.count(field, MIN_PAIR_LEN)?;
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        pairs.push((r.string("key")?, r.string("value")?));
    }
    Ok(pairs)
}

/// A count of `field`'s elements (each at least `min_len` bytes), at most
/// [`MAX_SETTINGS`]: what a frame makes the parser hold stays near its size.
fn capped_count(
    r: &mut Reader<'_>,
    field: &'static str,
    min_len: usize,
    what: &str,
) -> Result<usize, ProtocolError> {
    let count = r.count(field, min_len)?;
    if count > MAX_SETTINGS {
        return Err(ProtocolError::BadValue {
            field,
            reason: format!("{count} {what}; at most {MAX_SETTINGS} are allowed"),
        });
    }
    Ok(count)
}

fn put_pairs(out: &mut BytesMut, pairs: &[(String, String)]) {
    out.put_u32(pairs.len() as u32);
    for (k, v) in pairs {
        put_string(out, k);
        put_string(out, v);
    }
}

/// One partition of a topic, as DESCRIBE_TOPIC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: u32,
    pub log_start: u64,
    pub log_end: u64,
    pub size_bytes: u64,
    pub segments: u32,
    /// Sidecar files holding bytes recovery cut off torn tails, and their
    /// bytes (counted in `size_bytes` too).
    pub torn_files: u32,
    pub torn_bytes: u64,
}

/// A topic as DESCRIBE_TOPIC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Every partition, in order from 0.
    pub partitions: Vec<PartitionDescription>,
    /// Effective settings, as `key = value` strings.
    pub settings: Vec<(String, String)>,
    /// Where each setting's value comes from, `(key, source)`: `default`,
    /// `file [defaults]`, `topic` (given at creation or by ALTER_TOPIC) or
    /// `file [topics.NAME]`.
    pub sources: Vec<(String, String)>,
}

impl TopicDescription {
    /// Records stored over all partitions.
    pub fn records(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.log_end - p.log_start)
            .sum()
    }

    pub fn size_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.size_bytes).sum()
    }
}

/// What a PRODUCE did for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedPartition {
    /// Offset of the batch's first record; record *i* got `base_offset + i`.
    pub base_offset: u64,
    /// The time the broker stamped on the batch for a topic with
    /// `timestamp_type = "log_append"`; -1 when it keeps the producer's.
    pub log_append_time: i64,
    pub log_start: u64,
}

/// What a FETCH read from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    pub log_start: u64,
    pub log_end: u64,
    /// Where to fetch from next.
    pub next_offset: u64,
    /// Stored batches, back to back, sent as they are.
    pub batches: Vec<Bytes>,
}

/// What LIST_OFFSETS found in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub offset: u64,
    pub log_start: u64,
    pub log_end: u64,
    /// The timestamp of the record found by a search by time or for the
    /// max timestamp; `None` otherwise, and when no record was found. Not
    /// on Spool's wire (LIST_OFFSETS v1 answers the offset alone): the
    /// Kafka front end answers it, as Kafka's ListOffsets does.
    pub timestamp: Option<i64>,
}

/// One partition's outcome in a PRODUCE, FETCH or LIST_OFFSETS response:
/// each partition succeeds or fails on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResult<T> {
    pub partition: u32,
    pub result: Result<T, ErrorBody>,
}

/// One topic's partitions in a response, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResults<T> {
    pub topic: String,
    pub partitions: Vec<PartitionResult<T>>,
}

/// The body of a successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    ApiVersions {
        server: String,
        apis: Vec<(u16, u16, u16)>,
        /// The largest frame the broker reads (its `max_frame_bytes`).
        max_frame_bytes: u32,
    },
    /// CREATE_TOPIC, DELETE_TOPIC and ALTER_TOPIC.
    Empty,
    Topics(Vec<String>),
    Description(TopicDescription),
    Produced(Vec<TopicResults<ProducedPartition>>),
    Fetched(Vec<TopicResults<FetchedPartition>>),
    Offsets(Vec<TopicResults<PartitionOffsets>>),
    Heartbeat(HeartbeatAnswer),
    /// OFFSET_COMMIT: each partition's outcome.
    Committed(Vec<TopicResults<()>>),
    /// OFFSET_FETCH.
    CommittedOffsets(Vec<TopicResults<CommittedOffset>>),
    Groups(Vec<ListedGroup>),
    Group(GroupDescription),
}

/// The first partition's result of a response's topics: for requests that
/// name one partition.
fn first<T>(topics: Vec<TopicResults<T>>) -> Result<T, ErrorBody> {
    topics
        .into_iter()
        .next()
        .and_then(|t| t.partitions.into_iter().next())
        .map_or_else(
            || {
                Err(ErrorBody::new(
                    ErrorCode::UnknownServerError,
                    "the response holds no partition",
                ))
            },
            |p| p.result,
        )
}

fn unexpected(body: &ResponseBody) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::UnknownServerError,
        format!("unexpected response body {body:?}"),
    )
}

impl Response {
    /// The outcome of a PRODUCE of one partition (a request-level error, or
    /// the partition's own).
    pub fn produced(self) -> Result<ProducedPartition, ErrorBody> {
        match self.body? {
            ResponseBody::Produced(topics) => first(topics),
            other => Err(unexpected(&other)),
        }
    }

    /// The outcome of a FETCH of one partition.
    pub fn fetched(self) -> Result<FetchedPartition, ErrorBody> {
        match self.body? {
            ResponseBody::Fetched(topics) => first(topics),
            other => Err(unexpected(&other)),
        }
    }

    /// The outcome of a LIST_OFFSETS of one partition.
    pub fn offsets(self) -> Result<PartitionOffsets, ErrorBody> {
        match self.body? {
            ResponseBody::Offsets(topics) => first(topics),
            other => Err(unexpected(&other)),
        }
    }
}

/// A failed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// `(log_start, log_end)`, sent with OFFSET_OUT_OF_RANGE.
    pub range: Option<(u64, u64)>,
    /// Next readable offset, sent with CORRUPT_DATA (`u64::MAX` on the wire
    /// when unknown).
    pub resume_at: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            range: None,
            resume_at: None,
        }
    }
}

/// A response, for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub correlation_id: u32,
    pub body: Result<ResponseBody, ErrorBody>,
}

/// `u16 error_code, string error_message` of a partition (0 and empty for
/// a success).
fn put_partition_code<T>(out: &mut BytesMut, result: &Result<T, ErrorBody>) {
    match result {
        Ok(_) => {
            out.put_u16(ErrorCode::None as u16);
            out.put_u16(0);
        }
        Err(e) => {
            out.put_u16(e.code as u16);
            put_string(out, &e.message);
        }
    }
}

/// A partition's error code and message: `Ok(())` for none.
fn parse_partition_code(r: &mut Reader<'_>) -> Result<Result<(), ErrorBody>, ProtocolError> {
    let raw = r.u16("error_code")?;
    let code = ErrorCode::from_u16(raw).ok_or(ProtocolError::UnknownErrorCode(raw))?;
    let message = r.string("error_message")?;
    Ok(if code == ErrorCode::None {
        Ok(())
    } else {
        Err(ErrorBody::new(code, message))
    })
}

/// `[string topic, [u32 partition, ...]]` in a response, each partition's
/// fields read by `partition`.
fn parse_results<T>(
    r: &mut Reader<'_>,
    min_partition_len: usize,
    mut partition: impl FnMut(&mut Reader<'_>) -> Result<Result<T, ErrorBody>, ProtocolError>,
) -> Result<Vec<TopicResults<T>>, ProtocolError> {
    let mut topics = Vec::new();
    for _ in 0..r.count("topics", MIN_TOPIC_LEN)? {
        let topic = r.string("topic")?;
        let mut partitions = Vec::new();
        for _ in 0..r.count("partitions", min_partition_len)? {
            let id = r.u32("partition")?;
            partitions.push(PartitionResult {
                partition: id,
                result: partition(r)?,
            });
        }
        topics.push(TopicResults { topic, partitions });
    }
    Ok(topics)
}

/// `[string topic, [u32 partition, ...]]`, each partition's fields written
/// by `partition`.
fn put_results<T>(
    out: &mut BytesMut,
    topics: &[TopicResults<T>],
    mut partition: impl FnMut(&mut BytesMut, &PartitionResult<T>),
) {
    out.put_u32(topics.len() as u32);
    for t in topics {
        put_string(out, &t.topic);
        out.put_u32(t.partitions.len() as u32);
        for p in &t.partitions {
            out.put_u32(p.partition);
            put_partition_code(out, &p.result);
            partition(out, p);
        }
    }
}

/// The fixed part of a partition in a response: u32 partition, u16 code,
/// u16 empty message, then three u64 fields.
const MIN_RESULT_LEN: usize = 4 + 2 + 2 + 24;

impl Response {
    /// Encodes the frame as parts to send back to back: the first holds
    /// the length prefix. A fetch's stored batches are parts of their own,
    /// so they go out without being copied.
    pub fn encode(&self) -> Vec<Bytes> {
        let mut parts = Vec::new();
        let mut out = BytesMut::with_capacity(64);
        out.put_u32(0); // patched below
        out.put_u32(self.correlation_id);
        match &self.body {
            Err(e) => {
                out.put_u16(e.code as u16);
                put_string(&mut out, &e.message);
                match e.code {
                    ErrorCode::OffsetOutOfRange => {
                        let (start, end) = e.range.unwrap_or((0, 0));
                        out.put_u64(start);
                        out.put_u64(end);
                    }
                    ErrorCode::CorruptData => out.put_u64(e.resume_at.unwrap_or(u64::MAX)),
                    _ => {}
                }
            }
            Ok(body) => {
                out.put_u16(ErrorCode::None as u16);
                out.put_u16(0); // empty message
                match body {
                    ResponseBody::ApiVersions {
                        server,
                        apis,
                        max_frame_bytes,
                    } => {
                        put_string(&mut out, server);
                        out.put_u32(apis.len() as u32);
                        for (k, min, max) in apis {
                            out.put_u16(*k);
                            out.put_u16(*min);
                            out.put_u16(*max);
                        }
                        out.put_u32(*max_frame_bytes);
                    }
                    ResponseBody::Empty => {}
                    ResponseBody::Topics(names) => {
                        out.put_u32(names.len() as u32);
                        for n in names {
                            put_string(&mut out, n);
                        }
                    }
                    ResponseBody::Description(d) => {
                        out.put_u32(d.partitions.len() as u32);
                        for p in &d.partitions {
                            out.put_u32(p.partition);
                            out.put_u64(p.log_start);
                            out.put_u64(p.log_end);
                            out.put_u64(p.size_bytes);
                            out.put_u32(p.segments);
                            out.put_u32(p.torn_files);
                            out.put_u64(p.torn_bytes);
                        }
                        put_pairs(&mut out, &d.settings);
                        put_pairs(&mut out, &d.sources);
                    }
                    ResponseBody::Produced(topics) => put_results(&mut out, topics, |out, p| {
                        let d = p.result.as_ref().ok();
                        out.put_u64(d.map_or(0, |d| d.base_offset));
                        out.put_i64(d.map_or(-1, |d| d.log_append_time));
                        out.put_u64(d.map_or(0, |d| d.log_start));
                    }),
                    ResponseBody::Fetched(topics) => {
                        put_results(&mut out, topics, |out, p| match &p.result {
                            Ok(f) => {
                                out.put_u64(f.log_start);
                                out.put_u64(f.log_end);
                                out.put_u64(f.next_offset);
                                out.put_u32(f.batches.iter().map(|b| b.len()).sum::<usize>() as u32);
                                if !f.batches.is_empty() {
                                    // The head so far, then the batches as
                                    // they are; the next fields start anew.
                                    parts.push(out.split().freeze());
                                    parts.extend(f.batches.iter().cloned());
                                }
                            }
                            Err(e) => {
                                let (start, end) = e.range.unwrap_or((0, 0));
                                out.put_u64(start);
                                out.put_u64(end);
                                out.put_u64(e.resume_at.unwrap_or(u64::MAX));
                                out.put_u32(0);
                            }
                        })
                    }
                    ResponseBody::Offsets(topics) => put_results(&mut out, topics, |out, p| {
                        let d = p.result.as_ref().ok();
                        out.put_u64(d.map_or(0, |d| d.offset));
                        out.put_u64(d.map_or(0, |d| d.log_start));
                        out.put_u64(d.map_or(0, |d| d.log_end));
                    }),
                    ResponseBody::Heartbeat(h) => {
                        put_string(&mut out, &h.member_id);
                        out.put_i32(h.member_epoch);
                        out.put_u32(h.heartbeat_interval_ms);
                        put_partition_lists(&mut out, &h.assignment);
                    }
                    ResponseBody::Committed(topics) => put_results(&mut out, topics, |_, _| {}),
                    ResponseBody::CommittedOffsets(topics) => {
                        put_results(&mut out, topics, |out, p| {
                            let c = p.result.as_ref().ok();
                            let offset = c.and_then(|c| c.offset);
                            out.put_i64(offset.map_or(-1, |o| o as i64));
                            put_string(out, c.map_or("", |c| &c.metadata));
                        })
                    }
                    ResponseBody::Groups(groups) => {
                        out.put_u32(groups.len() as u32);
                        for g in groups {
                            put_string(&mut out, &g.group);
                            put_string(&mut out, &g.state);
                            put_string(&mut out, &g.protocol_type);
                        }
                    }
                    ResponseBody::Group(g) => {
                        put_string(&mut out, &g.state);
                        put_string(&mut out, &g.protocol_type);
                        put_string(&mut out, &g.protocol);
                        out.put_i32(g.epoch);
                        out.put_u32(g.members.len() as u32);
                        for m in &g.members {
                            put_string(&mut out, &m.member_id);
                            put_string(&mut out, &m.instance_id);
                            put_string(&mut out, &m.client_id);
                            put_string(&mut out, &m.client_host);
                            put_partition_lists(&mut out, &m.assignment);
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            parts.push(out.freeze());
        }
        let len = parts.iter().map(|p| p.len()).sum::<usize>() - FRAME_PREFIX_LEN;
        // The first part always holds the prefix (it is at least 12 bytes).
        let mut first = BytesMut::from(&parts[0][..]);
        first[..FRAME_PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        parts[0] = first.freeze();
        parts
    }

    /// The whole frame, length prefix included, in one buffer: for tests
    /// and tools. The broker sends [`Response::encode`]'s parts instead, so
    /// that fetched batches are not copied.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        self.encode().concat()
    }

    /// Parses a response frame (without the length prefix) to a request of
    /// `api`. Fetched batches are slices of `frame`: no copy.
    pub fn parse(api: ApiKey, frame: Bytes) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(&frame);
        let correlation_id = r.u32("correlation_id")?;
        let raw_code = r.u16("error_code")?;
        let code =
            ErrorCode::from_u16(raw_code).ok_or(ProtocolError::UnknownErrorCode(raw_code))?;
        let message = r.string("error_message")?;
        if code != ErrorCode::None {
            let mut e = ErrorBody::new(code, message);
            match code {
                ErrorCode::OffsetOutOfRange => {
                    e.range = Some((r.u64("log_start")?, r.u64("log_end")?))
                }
                ErrorCode::CorruptData => {
                    e.resume_at = Some(r.u64("resume_at")?).filter(|&o| o != u64::MAX)
                }
                _ => {}
            }
            r.finish()?;
            return Ok(Response {
                correlation_id,
                body: Err(e),
            });
        }
        let body = match api {
            ApiKey::ApiVersions => {
                let server = r.string("server")?;
                let count = r.count("apis", 6)?;
                let mut apis = Vec::with_capacity(count);
                for _ in 0..count {
                    apis.push((
                        r.u16("api_key")?,
                        r.u16("min_version")?,
                        r.u16("max_version")?,
                    ));
                }
                ResponseBody::ApiVersions {
                    server,
                    apis,
                    max_frame_bytes: r.u32("max_frame_bytes")?,
                }
            }
            ApiKey::CreateTopic | ApiKey::DeleteTopic | ApiKey::AlterTopic => ResponseBody::Empty,
            ApiKey::ListTopics => {
                let count = r.count("topics", 2)?;
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    names.push(r.string("topic")?);
                }
                ResponseBody::Topics(names)
            }
            ApiKey::DescribeTopic => {
                let count = r.count("partitions", 4 + 8 * 3 + 4 + 4 + 8)?;
                let mut partitions = Vec::with_capacity(count);
                for _ in 0..count {
                    partitions.push(PartitionDescription {
                        partition: r.u32("partition")?,
                        log_start: r.u64("log_start")?,
                        log_end: r.u64("log_end")?,
                        size_bytes: r.u64("size_bytes")?,
                        segments: r.u32("segments")?,
                        torn_files: r.u32("torn_files")?,
                        torn_bytes: r.u64("torn_bytes")?,
                    });
                }
                let settings = parse_pairs(&mut r, "settings")?;
                ResponseBody::Description(TopicDescription {
                    partitions,
                    settings,
                    sources: parse_pairs(&mut r, "sources")?,
                })
            }
            ApiKey::Produce => {
                ResponseBody::Produced(parse_results(&mut r, MIN_RESULT_LEN, |r| {
                    let code = parse_partition_code(r)?;
                    let produced = ProducedPartition {
                        base_offset: r.u64("base_offset")?,
                        log_append_time: r.i64("log_append_time")?,
                        log_start: r.u64("log_start")?,
                    };
                    Ok(code.map(|()| produced))
                })?)
            }
            ApiKey::Fetch => {
                ResponseBody::Fetched(parse_results(&mut r, MIN_RESULT_LEN + 4, |r| {
                    let code = parse_partition_code(r)?;
                    let log_start = r.u64("log_start")?;
                    let log_end = r.u64("log_end")?;
                    let next_offset = r.u64("next_offset")?;
                    let range = r.bytes_range("batches")?;
                    Ok(match code {
                        Ok(()) => Ok(FetchedPartition {
                            log_start,
                            log_end,
                            next_offset,
                            batches: if range.is_empty() {
                                Vec::new()
                            } else {
                                vec![frame.slice(range)]
                            },
                        }),
                        Err(mut e) => {
                            match e.code {
                                ErrorCode::OffsetOutOfRange => e.range = Some((log_start, log_end)),
                                ErrorCode::CorruptData => {
                                    e.resume_at = Some(next_offset).filter(|&o| o != u64::MAX)
                                }
                                _ => {}
                            }
                            Err(e)
                        }
                    })
                })?)
            }
            ApiKey::ListOffsets => {
                ResponseBody::Offsets(parse_results(&mut r, MIN_RESULT_LEN, |r| {
                    let code = parse_partition_code(r)?;
                    let offsets = PartitionOffsets {
                        offset: r.u64("offset")?,
                        log_start: r.u64("log_start")?,
                        log_end: r.u64("log_end")?,
                        timestamp: None,
                    };
                    Ok(code.map(|()| offsets))
                })?)
            }
            ApiKey::GroupHeartbeat => ResponseBody::Heartbeat(HeartbeatAnswer {
                member_id: r.string("member_id")?,
                member_epoch: r.i32("member_epoch")?,
                heartbeat_interval_ms: r.u32("heartbeat_interval_ms")?,
                assignment: parse_partition_lists(&mut r)?,
            }),
            ApiKey::OffsetCommit => {
                ResponseBody::Committed(parse_results(&mut r, 4 + 2 + 2, parse_partition_code)?)
            }
            ApiKey::OffsetFetch => {
                ResponseBody::CommittedOffsets(parse_results(&mut r, 4 + 2 + 2 + 8 + 2, |r| {
                    let code = parse_partition_code(r)?;
                    let offset = r.i64("offset")?;
                    let metadata = r.string("metadata")?;
                    Ok(code.map(|()| CommittedOffset {
                        offset: u64::try_from(offset).ok(),
                        metadata,
                    }))
                })?)
            }
            ApiKey::ListGroups => {
                let count = r.count("groups", 6)?;
                let mut groups = Vec::with_capacity(count);
                for _ in 0..count {
                    groups.push(ListedGroup {
                        group: r.string("group")?,
                        state: r.string("state")?,
                        protocol_type: r.string("protocol_type")?,
                    });
                }
                ResponseBody::Groups(groups)
            }
            ApiKey::DescribeGroup => {
                let state = r.string("state")?;
                let protocol_type = r.string("protocol_type")?;
                let protocol = r.string("protocol")?;
                let epoch = r.i32("epoch")?;
                let count = r.count("members", 12)?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(GroupMember {
                        member_id: r.string("member_id")?,
                        instance_id: r.string("instance_id")?,
                        client_id: r.string("client_id")?,
                        client_host: r.string("client_host")?,
                        assignment: parse_partition_lists(&mut r)?,
                    });
                }
                ResponseBody::Group(GroupDescription {
                    state,
                    protocol_type,
                    protocol,
                    epoch,
                    members,
                })
            }
            ApiKey::DeleteGroup => ResponseBody::Empty,
        };
        r.finish()?;
        Ok(Response {
            correlation_id,
            body: Ok(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(request: Request) {
        let mut buf = BytesMut::new();
        request.encode(77, &mut buf);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let (header, parsed) = Request::parse(buf.split_off(4)).unwrap();
        assert_eq!(header.correlation_id, 77);
        assert_eq!(header.api_key, request.api_key() as u16);
        assert_eq!(parsed, request);
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::ApiVersions);
        round_trip(Request::CreateTopic {
            topic: "orders".into(),
            settings: vec![
                ("retention_ms".into(), "7d".into()),
                ("flush".into(), "never".into()),
            ],
        });
        round_trip(Request::DeleteTopic { topic: "t".into() });
        round_trip(Request::AlterTopic {
            topic: "t".into(),
            set: vec![("retention_ms".into(), "1h".into())],
            reset: vec!["segment_bytes".into()],
        });
        round_trip(Request::ListTopics);
        round_trip(Request::DescribeTopic { topic: "t".into() });
        round_trip(Request::produce(
            "t",
            0,
            Acks::Commit,
            BytesMut::from(&b"batch"[..]),
        ));
        round_trip(Request::produce("t", 3, Acks::None, BytesMut::new()));
        round_trip(Request::Produce {
            acks: Acks::Commit,
            topics: vec![
                ProduceTopic {
                    topic: "a".into(),
                    partitions: vec![
                        (0, BytesMut::from(&b"one"[..])),
                        (2, BytesMut::from(&b"two"[..])),
                    ],
                },
                ProduceTopic {
                    topic: "b".into(),
                    partitions: vec![(1, BytesMut::from(&b"three"[..]))],
                },
            ],
        });
        round_trip(Request::Produce {
            acks: Acks::Commit,
            topics: vec![],
        });
        round_trip(Request::fetch("t", 0, 5, 1 << 20, 500, 1));
        round_trip(Request::Fetch {
            max_wait_ms: 100,
            min_bytes: 10,
            max_bytes: 1000,
            topics: vec![FetchTopic {
                topic: "t".into(),
                partitions: vec![
                    FetchPartition {
                        partition: 0,
                        offset: 1,
                        max_bytes: 10,
                    },
                    FetchPartition {
                        partition: 7,
                        offset: 9,
                        max_bytes: 20,
                    },
                ],
            }],
        });
        for spec in [
            OffsetSpec::Earliest,
            OffsetSpec::Latest,
            OffsetSpec::Timestamp(1_700_000_000_000),
        ] {
            round_trip(Request::list_offsets("t", 1, spec));
        }
        round_trip(Request::GroupHeartbeat(GroupHeartbeat {
            group: "g".into(),
            member_id: "m-1".into(),
            member_epoch: 3,
            session_timeout_ms: 10_000,
            client_id: "c".into(),
            subscription: vec!["a".into(), "b".into()],
            owned: vec![("a".into(), vec![0, 2]), ("b".into(), vec![1])],
        }));
        round_trip(Request::OffsetCommit {
            group: "g".into(),
            member_id: String::new(),
            member_epoch: -1,
            topics: vec![CommitTopic {
                topic: "t".into(),
                partitions: vec![CommitOffset {
                    partition: 1,
                    offset: 42,
                    metadata: "m".into(),
                }],
            }],
        });
        round_trip(Request::OffsetFetch {
            group: "g".into(),
            topics: vec![("t".into(), vec![0, 1])],
        });
        round_trip(Request::OffsetFetch {
            group: "g".into(),
            topics: vec![],
        });
        round_trip(Request::ListGroups);
        round_trip(Request::DescribeGroup { group: "g".into() });
        round_trip(Request::DeleteGroup { group: "g".into() });
    }

    /// The frame fuzz target's seeds are requests, every API among them,
    /// that parse and re-encode to their own bytes.
    #[test]
    fn the_frame_fuzz_seeds_parse_and_cover_every_api() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/frame");
        let mut seen = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let (header, request) = Request::parse(BytesMut::from(&data[..]))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut out = BytesMut::new();
            request.encode(header.correlation_id, &mut out);
            assert_eq!(&out[4..], &data[..], "{}", path.display());
            seen.insert(header.api_key);
        }
        for (api, _, _) in API_VERSIONS {
            assert!(seen.contains(&(api as u16)), "no seed for {}", api.name());
        }
    }

    #[test]
    fn every_group_response_round_trips() {
        response_round_trip(
            ApiKey::GroupHeartbeat,
            Ok(ResponseBody::Heartbeat(HeartbeatAnswer {
                member_id: "m".into(),
                member_epoch: 2,
                heartbeat_interval_ms: 200,
                assignment: vec![("t".into(), vec![3])],
            })),
        );
        response_round_trip(
            ApiKey::OffsetCommit,
            Ok(ResponseBody::Committed(vec![TopicResults {
                topic: "t".into(),
                partitions: vec![
                    PartitionResult {
                        partition: 0,
                        result: Ok(()),
                    },
                    PartitionResult {
                        partition: 9,
                        result: Err(ErrorBody::new(ErrorCode::UnknownPartition, "no")),
                    },
                ],
            }])),
        );
        response_round_trip(
            ApiKey::OffsetFetch,
            Ok(ResponseBody::CommittedOffsets(vec![TopicResults {
                topic: "t".into(),
                partitions: vec![
                    PartitionResult {
                        partition: 0,
                        result: Ok(CommittedOffset {
                            offset: Some(7),
                            metadata: "x".into(),
                        }),
                    },
                    PartitionResult {
                        partition: 1,
                        result: Ok(CommittedOffset {
                            offset: None,
                            metadata: String::new(),
                        }),
                    },
                ],
            }])),
        );
        response_round_trip(
            ApiKey::ListGroups,
            Ok(ResponseBody::Groups(vec![ListedGroup {
                group: "g".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
            }])),
        );
        response_round_trip(
            ApiKey::DescribeGroup,
            Ok(ResponseBody::Group(GroupDescription {
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                protocol: "spool".into(),
                epoch: 4,
                members: vec![GroupMember {
                    member_id: "m".into(),
                    instance_id: String::new(),
                    client_id: "c".into(),
                    client_host: "127.0.0.1".into(),
                    assignment: vec![("t".into(), vec![0, 1])],
                }],
            })),
        );
        response_round_trip(ApiKey::DeleteGroup, Ok(ResponseBody::Empty));
    }

    /// Issue 9, 4.2: a frame of empty pairs made the parser hold about 12
    /// times its size; the count and the lengths are capped now.
    #[test]
    fn create_topic_settings_are_capped_in_count_and_length() {
        let create = |settings: Vec<(String, String)>| {
            let mut buf = BytesMut::new();
            Request::CreateTopic {
                topic: "t".into(),
                settings,
            }
            .encode(1, &mut buf);
            Request::parse(buf.split_off(4))
        };
        let pairs = |n: usize| vec![(String::new(), String::new()); n];
        assert!(create(pairs(MAX_SETTINGS)).is_ok());
        for n in [MAX_SETTINGS + 1, 100_000] {
            assert!(matches!(
                create(pairs(n)),
                Err(ProtocolError::BadValue {
                    field: "settings",
                    ..
                })
            ));
        }
        let long = |n: usize| "x".repeat(n);
        assert!(create(vec![(long(MAX_SETTING_KEY), long(MAX_SETTING_VALUE))]).is_ok());
        assert!(matches!(
            create(vec![(long(MAX_SETTING_KEY + 1), "v".into())]),
            Err(ProtocolError::BadValue {
                field: "setting key",
                ..
            })
        ));
        assert!(matches!(
            create(vec![("k".into(), long(MAX_SETTING_VALUE + 1))]),
            Err(ProtocolError::BadValue {
                field: "setting value",
                ..
            })
        ));
    }

    /// A request names at most MAX_REQUEST_PARTITIONS partitions (empty
    /// topics counted as one each), however small its entries.
    #[test]
    fn requests_name_a_bounded_number_of_partitions() {
        let fetch = |topics: usize, partitions: u32| {
            let mut buf = BytesMut::new();
            Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1,
                topics: (0..topics)
                    .map(|_| FetchTopic {
                        topic: String::new(),
                        partitions: (0..partitions)
                            .map(|partition| FetchPartition {
                                partition,
                                offset: 0,
                                max_bytes: 1,
                            })
                            .collect(),
                    })
                    .collect(),
            }
            .encode(1, &mut buf);
            Request::parse(buf.split_off(4))
        };
        assert!(fetch(1, MAX_REQUEST_PARTITIONS as u32).is_ok());
        for (topics, partitions) in [
            (1, MAX_REQUEST_PARTITIONS as u32 + 1),
            (MAX_REQUEST_PARTITIONS + 1, 0),
            (2, 6000),
        ] {
            assert!(matches!(
                fetch(topics, partitions),
                Err(ProtocolError::BadValue {
                    field: "partitions",
                    ..
                })
            ));
        }
    }

    #[test]
    fn produce_head_matches_encode() {
        let batch = BytesMut::from(&b"0123456789"[..]);
        let mut full = BytesMut::new();
        Request::produce("topic", 4, Acks::Commit, batch.clone()).encode(9, &mut full);
        let mut head = Request::produce_head("topic", 4, Acks::Commit, batch.len(), 9);
        head.extend_from_slice(&batch);
        assert_eq!(head, full);
    }

    fn response_round_trip(api: ApiKey, body: Result<ResponseBody, ErrorBody>) {
        let response = Response {
            correlation_id: 3,
            body,
        };
        let frame = response.encode_to_vec();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let parsed = Response::parse(api, Bytes::from(frame).slice(4..)).unwrap();
        assert_eq!(parsed, response);
    }

    #[test]
    fn every_response_round_trips() {
        response_round_trip(
            ApiKey::ApiVersions,
            Ok(ResponseBody::ApiVersions {
                server: "spool 0.1".into(),
                apis: vec![(0, 0, 0), (5, 0, 0)],
                max_frame_bytes: 16 << 20,
            }),
        );
        response_round_trip(ApiKey::CreateTopic, Ok(ResponseBody::Empty));
        response_round_trip(
            ApiKey::ListTopics,
            Ok(ResponseBody::Topics(vec!["a".into(), "b".into()])),
        );
        response_round_trip(
            ApiKey::DescribeTopic,
            Ok(ResponseBody::Description(TopicDescription {
                partitions: vec![
                    PartitionDescription {
                        partition: 0,
                        log_start: 1,
                        log_end: 9,
                        size_bytes: 100,
                        segments: 2,
                        torn_files: 1,
                        torn_bytes: 77,
                    },
                    PartitionDescription {
                        partition: 1,
                        log_start: 0,
                        log_end: 0,
                        size_bytes: 0,
                        segments: 1,
                        torn_files: 0,
                        torn_bytes: 0,
                    },
                ],
                settings: vec![("flush".into(), "always".into())],
                sources: vec![("flush".into(), "file [topics.t]".into())],
            })),
        );
        fn one<T>(topic: &str, partitions: Vec<PartitionResult<T>>) -> Vec<TopicResults<T>> {
            vec![TopicResults {
                topic: topic.to_owned(),
                partitions,
            }]
        }
        let mut too_large = ErrorBody::new(ErrorCode::RecordTooLarge, "too large");
        too_large.range = None;
        response_round_trip(
            ApiKey::Produce,
            Ok(ResponseBody::Produced(one(
                "t",
                vec![
                    PartitionResult {
                        partition: 0,
                        result: Ok(ProducedPartition {
                            base_offset: 4,
                            log_append_time: 1_700_000_000_000,
                            log_start: 0,
                        }),
                    },
                    PartitionResult {
                        partition: 1,
                        result: Err(too_large),
                    },
                ],
            ))),
        );
        let mut out_of_range = ErrorBody::new(ErrorCode::OffsetOutOfRange, "offset 1 is below 5");
        out_of_range.range = Some((5, 9));
        let mut corrupt = ErrorBody::new(ErrorCode::CorruptData, "bad crc");
        corrupt.resume_at = Some(12);
        let fetched = |batches: Vec<Bytes>| FetchedPartition {
            log_start: 0,
            log_end: 10,
            next_offset: 10,
            batches,
        };
        response_round_trip(
            ApiKey::Fetch,
            Ok(ResponseBody::Fetched(one(
                "t",
                vec![
                    PartitionResult {
                        partition: 0,
                        result: Ok(fetched(vec![Bytes::from_static(b"stored-batches")])),
                    },
                    PartitionResult {
                        partition: 1,
                        result: Ok(fetched(vec![])),
                    },
                    PartitionResult {
                        partition: 2,
                        result: Err(out_of_range.clone()),
                    },
                    PartitionResult {
                        partition: 3,
                        result: Err(corrupt.clone()),
                    },
                    PartitionResult {
                        partition: 4,
                        result: Ok(fetched(vec![Bytes::from_static(b"more")])),
                    },
                ],
            ))),
        );
        response_round_trip(
            ApiKey::ListOffsets,
            Ok(ResponseBody::Offsets(one(
                "t",
                vec![PartitionResult {
                    partition: 2,
                    result: Ok(PartitionOffsets {
                        offset: 3,
                        log_start: 0,
                        log_end: 4,
                        timestamp: None,
                    }),
                }],
            ))),
        );
        response_round_trip(ApiKey::Fetch, Err(out_of_range));
        response_round_trip(ApiKey::Fetch, Err(corrupt));
        response_round_trip(
            ApiKey::Produce,
            Err(ErrorBody::new(ErrorCode::DiskFull, "disk full")),
        );
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let parse = |bytes: &[u8]| Request::parse(BytesMut::from(bytes));
        assert!(matches!(
            parse(&[0, 0, 0]),
            Err(ProtocolError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&[0, 99, 0, 0, 0, 0, 0, 1]),
            Err(ProtocolError::UnknownApi(99))
        ));
        assert!(matches!(
            parse(&[0, 0, 0, 1, 0, 0, 0, 1]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            parse(&[0, 0, 0, 0, 0, 0, 0, 1, 9]),
            Err(ProtocolError::TrailingBytes(1))
        ));
        // CREATE_TOPIC claiming 2^32 - 1 settings in a few bytes.
        let mut frame = vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        frame.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse(&frame),
            Err(ProtocolError::CountTooLarge { .. })
        ));
        // PRODUCE v0 is gone.
        assert!(matches!(
            parse(&[0, 5, 0, 0, 0, 0, 0, 1]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        // PRODUCE whose batch length claims 4 GiB.
        let frame = [
            0, 5, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff,
            0xff, 0xff, 1, 2, 3,
        ];
        assert!(matches!(
            parse(&frame),
            Err(ProtocolError::Truncated { field: "batch", .. })
        ));
        let frame = [0, 5, 0, 1, 0, 0, 0, 1, 7, 0, 0, 0, 0];
        assert!(matches!(
            parse(&frame),
            Err(ProtocolError::BadValue { field: "acks", .. })
        ));
        // A partition count no frame could hold.
        let frame = [
            0, 6, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't',
            0xff, 0xff, 0xff, 0xff,
        ];
        assert!(matches!(
            parse(&frame),
            Err(ProtocolError::CountTooLarge {
                field: "partitions",
                ..
            })
        ));
        let mut frame = vec![
            0, 7, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        frame.extend_from_slice(&(-5i64).to_be_bytes());
        assert!(matches!(
            parse(&frame),
            Err(ProtocolError::BadValue {
                field: "timestamp",
                ..
            })
        ));
        assert_eq!(
            ProtocolError::UnknownApi(9).code(),
            ErrorCode::UnsupportedApi
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), key in 0u16..10) {
            let mut frame = bytes.clone();
            if frame.len() >= 4 {
                frame[..2].copy_from_slice(&key.to_be_bytes());
                let version = ApiKey::from_u16(key).map_or(0, ApiKey::version);
                frame[2..4].copy_from_slice(&version.to_be_bytes());
            }
            let _ = Request::parse(BytesMut::from(&frame[..]));
            for api in API_VERSIONS.iter().map(|a| a.0) {
                let _ = Response::parse(api, Bytes::from(bytes.clone()));
            }
        }
    }
}
