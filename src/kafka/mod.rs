//! The Kafka listener: Kafka's wire protocol in
//! front of the same broker core as Spool's own protocol, so that a record
//! produced by either is fetched by either. Messages are decoded and
//! encoded with the `kafka-protocol` crate; each request is translated to
//! Spool's request (`crate::protocol::Request`) and handled by the same
//! handler, whose answer is translated back. The batches are the same
//! bytes either way (RecordBatch v2).
//!
//! # Framing
//!
//! ```text
//! i32 size             bytes that follow, at most the broker's max_frame_bytes
//! request header       api_key i16, api_version i16, correlation_id i32,
//!                      client_id nullable string (v1+), tagged fields (v2)
//! body                 the API's, at that version
//! ```
//!
//! Responses are `i32 size, correlation_id i32, [tagged fields (header v1)],
//! body`, in request order; a PRODUCE with `acks = 0` gets none.
//! ApiVersions always answers with header v0, and a version above its
//! maximum gets a v0 body with UNSUPPORTED_VERSION (35) and the supported
//! ranges, so that the client retries lower.
//!
//! # APIs
//!
//! `SUPPORTED` below, and nothing else, is advertised, because clients
//! change behaviour on what ApiVersions lists: ApiVersions 0-4,
//! Metadata 0-9, Produce 0-9 (3+ taken), Fetch 4-11 (no fetch sessions),
//! ListOffsets 1-7, CreateTopics 2-4, DeleteTopics 1-3, InitProducerId 0-5
//! (idempotence; transactional ids refused), OffsetForLeaderEpoch 2-4
//! (every leader epoch is 0), CreatePartitions 0-3, DescribeConfigs 1-4,
//! AlterConfigs 0-2, IncrementalAlterConfigs 0-1 and DescribeCluster 0-1
//! (in `admin`); FindCoordinator 0-4 (this broker, for every group) and
//! the group APIs (in `groups`). docs/KAFKA.md says what each does and leaves out.

mod admin;
mod bounds;
mod fetch_response;
mod groups;
pub mod producer_ids;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    AlterConfigsRequest, CreatePartitionsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeGroupsRequest, FindCoordinatorRequest, HeartbeatRequest,
    InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, ProducerId,
    SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::handler::{self, Peer, Reply};
use crate::broker::Broker;
use crate::protocol::{
    Acks, ErrorCode, FetchPartition, FetchTopic, OffsetSpec, OffsetsTopic, ProduceTopic, Request,
    Response, ResponseBody,
};

/// The versions advertised: `(api, min, max)`.
pub const SUPPORTED: [(ApiKey, i16, i16); 25] = [
    // From 0, though only 3+ (RecordBatch v2) is taken: librdkafka up to
    // 2.11 (Debian's kcat has 2.0.2) sends gzip, snappy and lz4 only to a
    // broker whose Produce range starts at 0, and otherwise silently sends
    // uncompressed. v0-v2 requests are answered UNSUPPORTED_VERSION per
    // partition (Kafka 4.0 does the same).
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 11),
    // v7: the max timestamp (-3).
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 4),
    (ApiKey::DeleteTopics, 1, 3),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    // This broker coordinates every group. librdkafka takes LZ4 for
    // supported only when FindCoordinator is listed (it was new in the
    // broker that brought LZ4), and sends lz4 batches uncompressed
    // otherwise.
    (ApiKey::FindCoordinator, 0, 4),
    // The classic group protocol and committed offsets (src/kafka/groups.rs).
    // OffsetCommit from 2, the crate's floor; v9 and the newer group
    // protocol (ConsumerGroupHeartbeat, KIP-848) are not offered.
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

/// This broker's node id in Metadata.
const NODE_ID: i32 = 0;

/// The operations a client may perform, as Kafka reports them when asked
/// (Metadata v8+, DescribeCluster): one bit per ACL operation code (READ 3,
/// WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12). Spool has
/// no ACLs, so every client may do all of them, as on a Kafka broker
/// without an authorizer: for a topic, all but the cluster's own ones.
const TOPIC_OPERATIONS: i32 = bits(&[3, 4, 5, 6, 7, 8, 10, 11]);
/// For the cluster: ALTER, ALTER_CONFIGS, CLUSTER_ACTION, CREATE,
/// DESCRIBE, DESCRIBE_CONFIGS, IDEMPOTENT_WRITE.
const CLUSTER_OPERATIONS: i32 = bits(&[5, 7, 8, 9, 10, 11, 12]);

const fn bits(operations: &[i32]) -> i32 {
    let mut set = 0;
    let mut i = 0;
    while i < operations.len() {
        set |= 1 << operations[i];
        i += 1;
    }
    set
}

/// Kafka's error codes, for Spool's.
fn kafka_code(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::None => 0,
        ErrorCode::OffsetOutOfRange => 1,
        ErrorCode::InvalidBatch | ErrorCode::CorruptData => 2,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => 3,
        ErrorCode::RecordTooLarge => 10,
        ErrorCode::InvalidTopicName => 17,
        ErrorCode::InvalidTimestamp => 32,
        ErrorCode::UnsupportedVersion => 35,
        ErrorCode::TopicAlreadyExists => 36,
        ErrorCode::InvalidConfig => 40,
        ErrorCode::InvalidRequest => 42,
        ErrorCode::TooManyTopics | ErrorCode::TooManyPartitions => 44,
        ErrorCode::StorageError | ErrorCode::DiskFull => 56,
        ErrorCode::OutOfOrderSequence => 45,
        ErrorCode::InvalidProducerEpoch => 47,
        ErrorCode::GroupNotFound => 69,
        ErrorCode::GroupNotEmpty => 68,
        ErrorCode::UnknownMember => 25,
        ErrorCode::FencedMember => 110,
        ErrorCode::InvalidGroup => 24,
        ErrorCode::GroupLimitReached => 81,
        ErrorCode::InconsistentGroupProtocol => 23,
        ErrorCode::UnsupportedApi | ErrorCode::UnknownServerError => -1,
    }
}

/// The cluster id Metadata reports, kept in `<data_dir>/cluster.id` so that
/// it stays the same across restarts (made at the first start).
pub fn cluster_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("cluster.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // 16 bytes from the clock and the process, base64url as Kafka's are.
    use std::hash::{BuildHasher, Hasher};
    let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
    seed.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    seed.write_u32(std::process::id());
    let a = seed.finish();
    seed.write_u64(a);
    let b = seed.finish();
    let raw = [a.to_be_bytes(), b.to_be_bytes()].concat();
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = String::new();
    for chunk in raw.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            id.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    producer_ids::write_durably(data_dir, "cluster.id", id.as_bytes())?;
    Ok(id)
}

/// What every Kafka connection shares.
pub struct Front {
    pub broker: Arc<Broker>,
    /// `host:port` Metadata advertises.
    pub advertised: (String, i32),
    pub cluster_id: String,
    pub producer_ids: Arc<producer_ids::ProducerIds>,
}

/// Accepts Kafka connections until shutdown, then waits for them (the
/// broker's accept loop, with its connection limit).
pub async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let max = front.broker.config().server.max_connections;
    crate::broker::accept_loop(
        "kafka",
        listener,
        max,
        shutdown,
        move |socket, peer, shutdown| {
            let front = Arc::clone(&front);
            async move {
                if let Err(e) = serve(&front, socket, shutdown).await {
                    tracing::debug!(%peer, error = %e, "kafka connection ended");
                }
            }
        },
    )
    .await
}

/// Serves one connection: a request at a time, answered in order.
async fn serve(
    front: &Front,
    socket: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let _ = socket.set_nodelay(true);
    let host = groups::client_host(socket.peer_addr().ok());
    let server = &front.broker.config().server;
    let (rd, wr) = socket.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let (_gone_tx, gone) = watch::channel(false);
    let peer = Peer { gone, addr: None };
    let mut poller = crate::net::Poller::new(server.busy_poll);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let waited = rd.buffer().is_empty();
        if waited {
            // Nothing more to answer before the next request comes: what is
            // queued goes out (whichever way the last request ended), then
            // the connection polls a while if its requests come quickly.
            flush(&mut wr, server.write_timeout).await?;
            poller.before_wait(rd.get_ref().as_ref()).await;
        }
        let size = tokio::select! {
            s = tokio::time::timeout(server.idle_timeout, rd.read_i32()) => match s {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => return Ok(()),
                Err(_) => return Err("idle".into()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        if waited {
            poller.arrived();
        }
        poller.message(size.max(0) as usize);
        // Checked before anything is allocated for it, and charged to the
        // broker's in-flight budget as Spool's listener charges it.
        if size < 8 || size as u64 > server.max_frame_bytes {
            return Err(format!("frame of {size} bytes"));
        }
        let _budget = tokio::select! {
            p = Arc::clone(front.broker.budget()).acquire_many_owned(size as u32) => p.ok(),
            _ = shutdown.changed() => return Ok(()),
        };
        let mut frame = BytesMut::zeroed(size as usize);
        tokio::time::timeout(server.frame_timeout, rd.read_exact(&mut frame))
            .await
            .map_err(|_| "frame deadline".to_string())?
            .map_err(|e| e.to_string())?;
        let mut frame = frame.freeze();
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let Ok(api) = ApiKey::try_from(key) else {
            return Err(format!("unknown api key {key}"));
        };
        if api == ApiKey::ApiVersions {
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let supported = range(api).is_some_and(|(min, max)| (min..=max).contains(&version));
            if !supported {
                // A v0 answer the client can read whatever it asked with.
                let body = api_versions(35);
                write(&mut wr, server.write_timeout, correlation_id, 0, |b| {
                    body.encode(b, 0)
                })
                .await?;
                flush(&mut wr, server.write_timeout).await?;
                continue;
            }
        }
        let (header, decoded) = decode(&mut frame)?;
        let id = header.correlation_id;
        let hv = api.response_header_version(version);
        macro_rules! respond {
            ($body:expr) => {{
                let body = $body;
                write(&mut wr, server.write_timeout, id, hv, |b| {
                    body.encode(b, version)
                })
                .await?;
            }};
        }
        if matches!(
            decoded,
            Decoded::Fetch(_) | Decoded::JoinGroup(_) | Decoded::SyncGroup(_)
        ) {
            // These may wait (a long poll, the rest of the group): answers
            // queued behind them go out first. A member whose heartbeat's
            // answer sat here would miss its session while its group waits.
            flush(&mut wr, server.write_timeout).await?;
        }
        match decoded {
            Decoded::ApiVersions => respond!(api_versions(0)),
            Decoded::CreateTopics(r) => respond!(create_topics(front, &peer, id, r).await),
            Decoded::DeleteTopics(r) => respond!(delete_topics(front, &peer, id, r).await),
            Decoded::Metadata(r) => respond!(metadata(front, r, version).await),
            Decoded::InitProducerId(r) => respond!(init_producer_id(front, r).await),
            Decoded::OffsetForLeaderEpoch(r) => {
                respond!(offset_for_leader_epoch(front, &peer, id, r).await)
            }
            Decoded::CreatePartitions(r) => {
                respond!(admin::create_partitions(front, &peer, id, r).await)
            }
            Decoded::DescribeConfigs(r) => {
                respond!(admin::describe_configs(front, &peer, id, r, version).await)
            }
            Decoded::AlterConfigs(r) => respond!(admin::alter_configs(front, &peer, id, r).await),
            Decoded::IncrementalAlterConfigs(r) => {
                respond!(admin::incremental_alter_configs(front, &peer, id, r).await)
            }
            Decoded::DescribeCluster(r) => respond!(admin::describe_cluster(front, r, version)),
            Decoded::FindCoordinator(r) => respond!(groups::find_coordinator(front, r, version)),
            Decoded::OffsetFetch(r) => respond!(groups::offset_fetch(front, r, version)),
            // Joins and syncs wait for the rest of the group; shutdown
            // does not wait for them.
            Decoded::JoinGroup(r) => {
                let client_id = header.client_id.as_deref().unwrap_or("");
                let body = tokio::select! {
                    b = groups::join_group(front, client_id, &host, r, version) => b,
                    _ = shutdown.changed() => return Ok(()),
                };
                respond!(body)
            }
            Decoded::SyncGroup(r) => {
                let body = tokio::select! {
                    b = groups::sync_group(front, r, version) => b,
                    _ = shutdown.changed() => return Ok(()),
                };
                respond!(body)
            }
            Decoded::Heartbeat(r) => respond!(groups::heartbeat(front, r)),
            Decoded::LeaveGroup(r) => respond!(groups::leave_group(front, r, version)),
            Decoded::OffsetCommit(r) => respond!(groups::offset_commit(front, r).await),
            Decoded::ListGroups(r) => respond!(groups::list_groups(front, r)),
            Decoded::DescribeGroups(r) => respond!(groups::describe_groups(front, r, version)),
            Decoded::DeleteGroups(r) => respond!(groups::delete_groups(front, r).await),
            Decoded::OffsetDelete(r) => respond!(groups::offset_delete(front, r).await),
            Decoded::LegacyProduce(request) => {
                if request.acks != 0 {
                    let body = legacy_produce_refused(request, version);
                    write(&mut wr, server.write_timeout, id, hv, |b| {
                        b.extend_from_slice(&body);
                        Ok::<(), String>(())
                    })
                    .await?;
                }
            }
            Decoded::Produce(request) => {
                // The batches are views of the frame: with the frame gone, a
                // batch that is the only view left is patched where it lies.
                drop(frame);
                let acks = request.acks;
                let reply =
                    handler::dispatch(&front.broker, &peer, id as u32, produce(request)).await;
                if acks == 0 {
                    // Answered never, even on error.
                    if let Reply::Later(task) = reply {
                        drop(task);
                    }
                    continue;
                }
                if let Reply::Later(_) = reply {
                    // It waits (for a sync): what is queued goes out first.
                    flush(&mut wr, server.write_timeout).await?;
                }
                let Some((response, _memory)) = settle(reply).await else {
                    continue;
                };
                let body = produced(response, version);
                respond!(body);
            }
            Decoded::Fetch(request) => {
                let reply =
                    handler::dispatch(&front.broker, &peer, id as u32, fetch(request)).await;
                let Some((response, memory)) = settle(reply).await else {
                    continue;
                };
                // The stored batches go out as they are, between the
                // encoded fields, never copied into one buffer.
                let pieces = fetch_response::encode(response, version, id);
                for piece in &pieces {
                    tokio::time::timeout(server.write_timeout, wr.write_all(piece))
                        .await
                        .map_err(|_| "write deadline".to_string())?
                        .map_err(|e| e.to_string())?;
                }
                // The batches are in the socket's buffer or the kernel's now.
                flush(&mut wr, server.write_timeout).await?;
                drop(memory);
            }
            Decoded::ListOffsets(request) => {
                let searched = searches(&request);
                let reply =
                    handler::dispatch(&front.broker, &peer, id as u32, list_offsets(request)).await;
                let Some((response, _memory)) = settle(reply).await else {
                    continue;
                };
                let body = offsets(response, version, &searched);
                respond!(body);
            }
        }
    }
}

/// Flushes what is queued, within the broker's `write_timeout`: a client
/// that stops reading is cut off, as on Spool's listener.
async fn flush<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    limit: Duration,
) -> Result<(), String> {
    tokio::time::timeout(limit, wr.flush())
        .await
        .map_err(|_| "write deadline".to_string())?
        .map_err(|e| e.to_string())
}

/// A request of an advertised API, decoded.
pub enum Decoded {
    ApiVersions,
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    /// Produce v0-v2, answered with a refusal.
    LegacyProduce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    FindCoordinator(FindCoordinatorRequest),
    OffsetFetch(OffsetFetchRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
}

/// The request frame the `kafka_request` fuzz target (and its seeds'
/// test) makes of arbitrary bytes: the first two pick an advertised API
/// from [`SUPPORTED`] and a version in its range; a valid header follows
/// (correlation id 7, no client id, and the tagged-field count of a
/// flexible header), then the rest as the body. `None` for fewer than two
/// bytes.
pub fn fuzz_frame(data: &[u8]) -> Option<(ApiKey, i16, Bytes)> {
    let [a, v, rest @ ..] = data else {
        return None;
    };
    let (api, min, max) = SUPPORTED[*a as usize % SUPPORTED.len()];
    let version = min + (*v as i16).rem_euclid(max - min + 1);
    let mut frame = BytesMut::with_capacity(11 + rest.len());
    frame.put_i16(api as i16);
    frame.put_i16(version);
    frame.put_i32(7);
    frame.put_i16(-1);
    if api.request_header_version(version) >= 2 {
        frame.put_u8(0);
    }
    frame.extend_from_slice(rest);
    Some((api, version, frame.freeze()))
}

/// Decodes a frame (after its size) of an advertised API and version: the
/// header, then the body once [`bounds::check`] has passed it, so that no
/// frame makes the crate reserve more than the frame's size. What is left
/// in `frame` afterwards is ignored, as Kafka's decoders ignore it. The
/// `kafka_request` fuzz target runs this on arbitrary bytes.
pub fn decode(frame: &mut Bytes) -> Result<(RequestHeader, Decoded), String> {
    if frame.len() < 8 {
        return Err(format!("a request header of {} bytes", frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("unknown api key {key}"))?;
    let Some((min, max)) = range(api) else {
        return Err(format!("{api:?} is not supported"));
    };
    if !(min..=max).contains(&version) {
        return Err(format!("{api:?} version {version} is not supported"));
    }
    let header = RequestHeader::decode(frame, api.request_header_version(version))
        .map_err(|e| e.to_string())?;
    bounds::check(api, version, frame).map_err(|e| format!("{api:?} v{version}: {e}"))?;
    fn fail(e: impl std::fmt::Display) -> String {
        e.to_string()
    }
    let decoded = match api {
        ApiKey::ApiVersions => {
            ApiVersionsRequest::decode(frame, version).map_err(fail)?;
            Decoded::ApiVersions
        }
        ApiKey::Metadata => {
            Decoded::Metadata(MetadataRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::CreateTopics => {
            Decoded::CreateTopics(CreateTopicsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::DeleteTopics => {
            Decoded::DeleteTopics(DeleteTopicsRequest::decode(frame, version).map_err(fail)?)
        }
        // The crate knows v3+ only; v0-v2 are v3 without its first field,
        // a transactional id (null here).
        ApiKey::Produce if version < 3 => {
            let mut v3 = BytesMut::with_capacity(frame.len() + 2);
            v3.put_i16(-1);
            v3.extend_from_slice(frame);
            let request = ProduceRequest::decode(&mut v3.freeze(), 3).map_err(fail)?;
            Decoded::LegacyProduce(request)
        }
        ApiKey::Produce => Decoded::Produce(ProduceRequest::decode(frame, version).map_err(fail)?),
        ApiKey::Fetch => Decoded::Fetch(FetchRequest::decode(frame, version).map_err(fail)?),
        ApiKey::ListOffsets => {
            Decoded::ListOffsets(ListOffsetsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::InitProducerId => {
            Decoded::InitProducerId(InitProducerIdRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::OffsetForLeaderEpoch => Decoded::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::decode(frame, version).map_err(fail)?,
        ),
        ApiKey::CreatePartitions => Decoded::CreatePartitions(
            CreatePartitionsRequest::decode(frame, version).map_err(fail)?,
        ),
        ApiKey::DescribeConfigs => {
            Decoded::DescribeConfigs(DescribeConfigsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::AlterConfigs => {
            Decoded::AlterConfigs(AlterConfigsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::IncrementalAlterConfigs => Decoded::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::decode(frame, version).map_err(fail)?,
        ),
        ApiKey::DescribeCluster => {
            Decoded::DescribeCluster(DescribeClusterRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::FindCoordinator => {
            Decoded::FindCoordinator(FindCoordinatorRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::OffsetFetch => {
            Decoded::OffsetFetch(OffsetFetchRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::JoinGroup => {
            Decoded::JoinGroup(JoinGroupRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::SyncGroup => {
            Decoded::SyncGroup(SyncGroupRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::Heartbeat => {
            Decoded::Heartbeat(HeartbeatRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::LeaveGroup => {
            Decoded::LeaveGroup(LeaveGroupRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::OffsetCommit => {
            Decoded::OffsetCommit(OffsetCommitRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::ListGroups => {
            Decoded::ListGroups(ListGroupsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::DescribeGroups => {
            Decoded::DescribeGroups(DescribeGroupsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::DeleteGroups => {
            Decoded::DeleteGroups(DeleteGroupsRequest::decode(frame, version).map_err(fail)?)
        }
        ApiKey::OffsetDelete => {
            Decoded::OffsetDelete(OffsetDeleteRequest::decode(frame, version).map_err(fail)?)
        }
        _ => return Err(format!("{api:?} is not supported")),
    };
    Ok((header, decoded))
}

fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut body = ApiVersionsResponse::default();
    body.error_code = error_code;
    body.api_keys = SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = api as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    body
}

/// Writes one response: size, header (v0 or v1), body.
async fn write<W: tokio::io::AsyncWrite + Unpin, E: std::fmt::Display>(
    wr: &mut W,
    limit: Duration,
    correlation_id: i32,
    header_version: i16,
    body: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body(&mut buf).map_err(|e| e.to_string())?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    tokio::time::timeout(limit, wr.write_all(&buf))
        .await
        .map_err(|_| "write deadline".to_string())?
        .map_err(|e| e.to_string())
}

/// The response a handler's reply comes to (none for a produce nobody
/// waits for), with the share of `max_response_bytes` its fetched batches
/// hold: kept until the response is written.
async fn settle(reply: Reply) -> Option<(Response, Option<tokio::sync::OwnedSemaphorePermit>)> {
    match reply {
        Reply::Now(answer) => Some((answer.response, answer.memory)),
        Reply::Later(task) => task.await.ok().map(|a| (a.response, a.memory)),
        Reply::Nothing => None,
    }
}

fn name(topic: &TopicName) -> String {
    topic.0.to_string()
}

fn produce(request: ProduceRequest) -> Request {
    let acks = if request.acks == 0 {
        Acks::None
    } else {
        Acks::Commit
    };
    // Names (views of the frame, like the batches) are copied out and
    // dropped first: then a batch that is the only view left of the frame's
    // buffer is taken over without a copy (one batch per request, as kcat
    // sends), and patched where it lies.
    let mut shaped = Vec::with_capacity(request.topic_data.len());
    for t in request.topic_data {
        let topic = name(&t.name);
        drop(t.name);
        shaped.push((topic, t.partition_data));
    }
    drop(request.transactional_id);
    let topics = shaped
        .into_iter()
        .map(|(topic, partition_data)| ProduceTopic {
            topic,
            partitions: partition_data
                .into_iter()
                .map(|p| {
                    let batch = p
                        .records
                        .map(|r| r.try_into_mut().unwrap_or_else(|r| BytesMut::from(&r[..])))
                        .unwrap_or_default();
                    (p.index as u32, batch)
                })
                .collect(),
        })
        .collect();
    Request::Produce { acks, topics }
}

/// The answer to a Produce v0-v2, whose message sets (magic 0 and 1) Spool
/// does not take: UNSUPPORTED_VERSION (35) for every partition, nothing
/// stored. The crate does not encode these versions, so it is written here:
///
/// ```text
/// [topic name string; [partition i32; error_code i16; base_offset i64;
///  v2: log_append_time_ms i64]]; v1+: throttle_time_ms i32
/// ```
fn legacy_produce_refused(request: ProduceRequest, version: i16) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i32(request.topic_data.len() as i32);
    for t in &request.topic_data {
        // Names fit an i16: the decoder read them with one.
        b.put_i16(t.name.len() as i16);
        b.extend_from_slice(t.name.as_bytes());
        b.put_i32(t.partition_data.len() as i32);
        for p in &t.partition_data {
            b.put_i32(p.index);
            b.put_i16(35);
            b.put_i64(-1);
            if version >= 2 {
                b.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        b.put_i32(0);
    }
    b
}

/// The crate refuses to encode a field the version lacks: those are set
/// only from the version that has them (log_start_offset from 5,
/// error_message from 8).
fn produced(response: Response, version: i16) -> ProduceResponse {
    let mut body = ProduceResponse::default();
    let ResponseBody::Produced(topics) = response.body.unwrap_or(ResponseBody::Empty) else {
        return body;
    };
    body.responses = topics
        .into_iter()
        .map(|t| {
            let mut tr = TopicProduceResponse::default();
            tr.name = TopicName(StrBytes::from_string(t.topic));
            tr.partition_responses = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut pr = PartitionProduceResponse::default();
                    pr.index = p.partition as i32;
                    match p.result {
                        Ok(r) => {
                            pr.base_offset = r.base_offset as i64;
                            pr.log_append_time_ms = r.log_append_time;
                            if version >= 5 {
                                pr.log_start_offset = r.log_start as i64;
                            }
                        }
                        Err(e) => {
                            pr.error_code = kafka_code(e.code);
                            pr.base_offset = -1;
                            pr.log_append_time_ms = -1;
                            if version >= 8 {
                                pr.error_message = Some(StrBytes::from_string(e.message));
                            }
                        }
                    }
                    pr
                })
                .collect();
            tr
        })
        .collect();
    body
}

fn fetch(request: FetchRequest) -> Request {
    let clamp = |n: i32| n.max(0) as u32;
    Request::Fetch {
        max_wait_ms: clamp(request.max_wait_ms),
        min_bytes: clamp(request.min_bytes),
        max_bytes: clamp(request.max_bytes),
        topics: request
            .topics
            .into_iter()
            .map(|t| FetchTopic {
                topic: name(&t.topic),
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| FetchPartition {
                        partition: p.partition as u32,
                        offset: p.fetch_offset.max(0) as u64,
                        max_bytes: clamp(p.partition_max_bytes),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// log_start_offset from version 5 on (see [`produced`]).
fn list_offsets(request: ListOffsetsRequest) -> Request {
    Request::ListOffsets {
        topics: request
            .topics
            .into_iter()
            .map(|t| OffsetsTopic {
                topic: name(&t.name),
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let spec = match p.timestamp {
                            -2 => OffsetSpec::Earliest,
                            -3 => OffsetSpec::MaxTimestamp,
                            t if t < 0 => OffsetSpec::Latest,
                            t => OffsetSpec::Timestamp(t),
                        };
                        (p.partition_index as u32, spec)
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The partitions of a ListOffsets that search for a record (by time, or
/// the max timestamp): one not found is answered offset -1, timestamp -1,
/// as Kafka answers it, where Spool's listener gives the log's end.
fn searches(request: &ListOffsetsRequest) -> std::collections::HashSet<(String, i32)> {
    request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.timestamp >= 0 || p.timestamp == -3)
                .map(|p| (name(&t.name), p.partition_index))
        })
        .collect()
}

/// leader_epoch from version 4 on (see [`produced`]); the timestamp of
/// the record found, -1 when none was looked for.
fn offsets(
    response: Response,
    version: i16,
    searched: &std::collections::HashSet<(String, i32)>,
) -> ListOffsetsResponse {
    let mut body = ListOffsetsResponse::default();
    let Ok(ResponseBody::Offsets(topics)) = response.body else {
        return body;
    };
    body.topics = topics
        .into_iter()
        .map(|t| {
            let mut tr = ListOffsetsTopicResponse::default();
            let topic = t.topic;
            tr.partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = p.partition as i32;
                    pr.timestamp = -1;
                    match p.result {
                        Ok(o) => {
                            let search = searched.contains(&(topic.clone(), pr.partition_index));
                            match o.timestamp {
                                Some(ts) => {
                                    pr.offset = o.offset as i64;
                                    pr.timestamp = ts;
                                }
                                None if search => pr.offset = -1,
                                None => pr.offset = o.offset as i64,
                            }
                            if version >= 4 && pr.offset >= 0 {
                                pr.leader_epoch = 0;
                            }
                        }
                        Err(e) => {
                            pr.error_code = kafka_code(e.code);
                            pr.offset = -1;
                        }
                    }
                    pr
                })
                .collect();
            tr.name = TopicName(StrBytes::from_string(topic));
            tr
        })
        .collect();
    body
}

/// Kafka's topic configs that map to Spool's settings: `(Kafka's name,
/// Spool's name)`. Values are taken as Kafka writes them (milliseconds,
/// bytes, -1 for none).
const CONFIGS: [(&str, &str); 8] = [
    ("retention.ms", "retention_ms"),
    ("retention.bytes", "retention_bytes"),
    ("segment.bytes", "segment_bytes"),
    ("segment.ms", "segment_ms"),
    ("max.message.bytes", "max_record_bytes"),
    ("message.timestamp.type", "timestamp_type"),
    ("message.timestamp.after.max.ms", "max_timestamp_ahead_ms"),
    ("segment.index.bytes", "index_bytes"),
];

/// Spool's settings for a topic's Kafka configs, or the error code and
/// message for the first one that cannot be taken.
fn settings_of(
    num_partitions: i32,
    configs: &[(String, Option<String>)],
) -> Result<Vec<(String, String)>, (i16, String)> {
    let mut settings = Vec::new();
    if num_partitions != -1 {
        settings.push(("partitions".to_owned(), num_partitions.to_string()));
    }
    for (name, value) in configs {
        let value = value.clone().unwrap_or_default();
        if name == "cleanup.policy" {
            if value != "delete" {
                return Err((
                    40,
                    format!("cleanup.policy={value} is not supported: Spool deletes by retention only (cleanup.policy=delete)"),
                ));
            }
            continue;
        }
        // Batches are stored as their producers sent them: Kafka's
        // `producer`, the one value that describes that.
        if name == "compression.type" {
            if value != "producer" {
                return Err((
                    40,
                    format!("compression.type={value} is not supported: Spool stores batches as producers compress them (compression.type=producer)"),
                ));
            }
            continue;
        }
        let Some((_, spool)) = CONFIGS.iter().find(|(k, _)| k == name) else {
            let known: Vec<&str> = CONFIGS.iter().map(|(k, _)| *k).collect();
            return Err((
                40,
                format!(
                    "config {name} is not supported; the supported ones are {}, cleanup.policy=delete and compression.type=producer",
                    known.join(", ")
                ),
            ));
        };
        let value = match (*spool, value.as_str()) {
            (
                "retention_ms" | "retention_bytes" | "segment_ms" | "max_timestamp_ahead_ms",
                "-1",
            ) => "unlimited".to_owned(),
            ("timestamp_type", "CreateTime") => "create".to_owned(),
            ("timestamp_type", "LogAppendTime") => "log_append".to_owned(),
            _ => value,
        };
        settings.push(((*spool).to_owned(), value));
    }
    Ok(settings)
}

/// The code and message of a handler's answer to an admin request.
async fn outcome(reply: Reply) -> (i16, Option<String>) {
    match settle(reply).await.map(|(r, _)| r.body) {
        Some(Ok(_)) => (0, None),
        Some(Err(e)) => (kafka_code(e.code), Some(e.message)),
        None => (-1, Some("no answer".into())),
    }
}

/// CreateTopics: each topic made as Spool's CREATE_TOPIC makes it, its
/// configs mapped to Spool's settings; one broker, so a replication factor
/// of 1 (or -1, the default) and no replica assignment.
async fn create_topics(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut body = CreateTopicsResponse::default();
    for t in request.topics {
        let mut result = CreatableTopicResult::default();
        let topic = name(&t.name);
        result.name = t.name.clone();
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let partitions = if t.assignments.is_empty() {
            if matches!(t.replication_factor, -1 | 1) {
                Ok(t.num_partitions)
            } else {
                Err((
                    38,
                    format!(
                        "replication factor {}: Spool is one broker, so 1",
                        t.replication_factor
                    ),
                ))
            }
        } else {
            assigned_partitions(&t)
        };
        let (code, message) = match partitions {
            Err((code, message)) => (code, Some(message)),
            Ok(partitions) => match settings_of(partitions, &configs) {
                Err((code, message)) => (code, Some(message)),
                Ok(settings) if request.validate_only => match validate(front, &topic, &settings) {
                    Ok(()) => (0, None),
                    Err((code, message)) => (code, Some(message)),
                },
                Ok(settings) => {
                    let create = Request::CreateTopic {
                        topic: topic.clone(),
                        settings,
                    };
                    outcome(handler::dispatch(&front.broker, peer, id as u32, create).await).await
                }
            },
        };
        result.error_code = code;
        result.error_message = message.map(StrBytes::from_string);
        body.topics.push(result);
    }
    body
}

/// The partition count that CreateTopics' replica assignments give, when
/// one broker can honour them: as Kafka requires, no count or replication
/// factor beside them (INVALID_REQUEST), and partitions 0 to n-1 each once
/// (INVALID_REPLICA_ASSIGNMENT); here each must name this broker alone.
fn assigned_partitions(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<i32, (i16, String)> {
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err((
            42,
            "a partition count or replication factor beside replica assignments: give one or the other".to_owned(),
        ));
    }
    let mut seen = vec![false; topic.assignments.len()];
    for a in &topic.assignments {
        let index = usize::try_from(a.partition_index).ok();
        match index.and_then(|i| seen.get_mut(i)) {
            Some(seen) if !*seen => *seen = true,
            _ => {
                return Err((
                    39,
                    format!(
                    "partition {} in the assignments: they must name partitions 0 to {} once each",
                    a.partition_index,
                    topic.assignments.len() - 1
                ),
                ))
            }
        }
        if a.broker_ids != [BrokerId(NODE_ID)] {
            return Err((
                39,
                format!(
                    "partition {} assigned to brokers {:?}: Spool is one broker, so each partition's one replica is broker {NODE_ID}",
                    a.partition_index,
                    a.broker_ids.iter().map(|b| b.0).collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(topic.assignments.len() as i32)
}

/// What a create of `topic` with `settings` would answer, without making
/// it (CreateTopics' validate_only).
fn validate(
    front: &Front,
    topic: &str,
    settings: &[(String, String)],
) -> Result<(), (i16, String)> {
    if let Err(reason) = crate::broker::topic::check_name(topic) {
        return Err((17, format!("invalid topic name {topic:?}: {reason}")));
    }
    if front.broker.topics().get(topic).is_some() {
        return Err((36, format!("topic {topic:?} already exists")));
    }
    let overrides =
        crate::broker::config::TopicOverrides::from_pairs(settings).map_err(|e| (40, e))?;
    front
        .broker
        .config()
        .topic_settings(topic, &overrides)
        .map(|_| ())
        .map_err(|e| (40, e))
}

/// DeleteTopics: each topic deleted as Spool's DELETE_TOPIC deletes it.
async fn delete_topics(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut body = DeleteTopicsResponse::default();
    for t in request.topic_names {
        let mut result = DeletableTopicResult::default();
        let delete = Request::DeleteTopic { topic: name(&t) };
        result.name = Some(t);
        let (code, _) =
            outcome(handler::dispatch(&front.broker, peer, id as u32, delete).await).await;
        result.error_code = code;
        body.responses.push(result);
    }
    body
}

/// Metadata: this broker, and the topics asked for (every topic for a null
/// list, or an empty one before v1), created first when the client allows
/// it and `auto_create_topics` is on.
async fn metadata(front: &Front, request: MetadataRequest, version: i16) -> MetadataResponse {
    let topics = Arc::clone(front.broker.topics());
    let auto = front.broker.config().server.auto_create_topics
        && (version < 4 || request.allow_auto_topic_creation);
    let topic_operations = if version >= 8 && request.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        i32::MIN
    };
    let cluster_operations =
        if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        };
    let names: Option<Vec<String>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(
            list.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let found = tokio::task::spawn_blocking(move || {
        let names = names.unwrap_or_else(|| topics.names());
        names
            .into_iter()
            .map(|n| {
                let got = if auto {
                    topics.get_or_create(&n)
                } else {
                    topics.lookup(&n)
                };
                let result = got
                    .map(|t| t.partition_count())
                    .map_err(|e| kafka_code(handler::topic_error(e).code));
                (n, result)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut body = MetadataResponse::default();
    body.cluster_authorized_operations = cluster_operations;
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(NODE_ID);
    broker.host = StrBytes::from_string(front.advertised.0.clone());
    broker.port = front.advertised.1;
    body.brokers = vec![broker];
    body.cluster_id = Some(StrBytes::from_string(front.cluster_id.clone()));
    body.controller_id = BrokerId(NODE_ID);
    body.topics = found
        .into_iter()
        .map(|(n, result)| {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(TopicName(StrBytes::from_string(n)));
            match result {
                Ok(count) => {
                    t.topic_authorized_operations = topic_operations;
                    t.partitions = (0..count as i32)
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = p;
                            mp.leader_id = BrokerId(NODE_ID);
                            if version >= 7 {
                                mp.leader_epoch = 0;
                            }
                            mp.replica_nodes = vec![BrokerId(NODE_ID)];
                            mp.isr_nodes = vec![BrokerId(NODE_ID)];
                            mp
                        })
                        .collect();
                }
                Err(code) => t.error_code = code,
            }
            t
        })
        .collect();
    body
}

/// OffsetForLeaderEpoch: one broker whose leader epoch is always 0, so the
/// end offset of epoch 0 is the partition's end (what consumers may read),
/// and a later epoch is unknown (-1, -1), as Kafka answers for an epoch
/// past its latest. A client that believes in a newer leader epoch than 0
/// gets UNKNOWN_LEADER_EPOCH (76).
async fn offset_for_leader_epoch(
    front: &Front,
    peer: &Peer,
    id: i32,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let lookup = Request::ListOffsets {
        topics: request
            .topics
            .iter()
            .map(|t| OffsetsTopic {
                topic: name(&t.topic),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| (p.partition as u32, OffsetSpec::Latest))
                    .collect(),
            })
            .collect(),
    };
    let reply = handler::dispatch(&front.broker, peer, id as u32, lookup).await;
    let answered = settle(reply).await.map(|(r, _)| r.body);
    let mut ends = std::collections::HashMap::new();
    let mut whole_error = None;
    match answered {
        Some(Ok(ResponseBody::Offsets(topics))) => {
            for t in topics {
                for p in t.partitions {
                    let end = p
                        .result
                        .map(|o| o.offset as i64)
                        .map_err(|e| kafka_code(e.code));
                    ends.insert((t.topic.clone(), p.partition), end);
                }
            }
        }
        Some(Err(e)) => whole_error = Some(kafka_code(e.code)),
        _ => whole_error = Some(-1),
    }
    let mut body = OffsetForLeaderEpochResponse::default();
    body.topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = name(&t.topic);
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = t.topic;
            tr.partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut e = EpochEndOffset::default();
                    e.partition = p.partition;
                    e.leader_epoch = -1;
                    e.end_offset = -1;
                    let end = whole_error.map_or_else(
                        || {
                            ends.get(&(topic.clone(), p.partition as u32))
                                .copied()
                                .unwrap_or(Err(3))
                        },
                        Err,
                    );
                    match end {
                        Err(code) => e.error_code = code,
                        // A client that has seen a later leader epoch than ours (always 0):
                        // UNKNOWN_LEADER_EPOCH, as Kafka answers it.
                        Ok(_) if p.current_leader_epoch > 0 => e.error_code = 75,
                        Ok(end) if p.leader_epoch == 0 => {
                            e.leader_epoch = 0;
                            e.end_offset = end;
                        }
                        Ok(_) => {}
                    }
                    e
                })
                .collect();
            tr
        })
        .collect();
    body
}

/// InitProducerId: a new producer id at epoch 0 for an idempotent
/// producer, whatever id and epoch it names (Kafka does the same without a
/// transactional id). Transactions are not supported: a transactional id
/// is refused with INVALID_REQUEST, which clients treat as fatal.
async fn init_producer_id(front: &Front, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut body = InitProducerIdResponse::default();
    body.producer_id = ProducerId(-1);
    body.producer_epoch = -1;
    if request.transactional_id.is_some() {
        body.error_code = 42;
        return body;
    }
    let ids = Arc::clone(&front.producer_ids);
    let issued = tokio::task::spawn_blocking(move || ids.next())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match issued {
        Ok(id) => {
            body.producer_id = ProducerId(id);
            body.producer_epoch = 0;
        }
        Err(e) => {
            tracing::warn!(error = %e, "no producer id could be reserved");
            body.error_code = -1;
        }
    }
    body
}

/// The host and port Metadata advertises: the configured address, or the
/// one listened on.
pub fn advertised(config: &crate::broker::config::KafkaConfig, bound: SocketAddr) -> (String, i32) {
    if let Some(a) = &config.advertised_address {
        if let Some((host, port)) = a.rsplit_once(':') {
            if let Ok(port) = port.parse() {
                return (host.trim_matches(['[', ']']).to_owned(), port);
            }
        }
    }
    (bound.ip().to_string(), i32::from(bound.port()))
}
