//! Spool's wire protocol: framing, request and response messages, error
//! codes. Parsing is separate from I/O: every function here works on byte
//! slices, so it is unit-testable and never blocks. `docs/PROTOCOL.md` is the
//! full reference, with hex dumps; this is the summary.
//!
//! # Frames
//!
//! ```text
//! u32 length      bytes that follow (big-endian), at most the broker's max_frame_bytes
//! ...             the message
//! ```
//!
//! # Requests and responses
//!
//! ```text
//! request                          response
//! u16 api_key                      u32 correlation_id   (copied from the request)
//! u16 api_version                  u16 error_code       (0 = none)
//! u32 correlation_id               string error_message (empty when error_code is 0)
//! ... body of that API             ... body of that API, when error_code is 0;
//!                                      OFFSET_OUT_OF_RANGE: u64 log_start, u64 log_end;
//!                                      CORRUPT_DATA: u64 resume_at; other errors: nothing
//! ```
//!
//! Integers are big-endian. `string` is a u16 length then UTF-8 bytes;
//! `bytes` is a u32 length then the bytes; `[T]` is a u32 count then the
//! elements. A client may send many requests without waiting (pipelining);
//! responses come back in request order. A produce with `acks = 0` gets no
//! response at all.
//!
//! # APIs
//!
//! | key | v | API | request body | response body |
//! | --- | --- | --- | --- | --- |
//! | 0 | 0 | API_VERSIONS | — | `string server, [u16 key, u16 min, u16 max], u32 max_frame_bytes` |
//! | 1 | 0 | CREATE_TOPIC | `string topic, [string key, string value]` | — |
//! | 2 | 0 | DELETE_TOPIC | `string topic` | — |
//! | 3 | 0 | LIST_TOPICS | — | `[string topic]` |
//! | 4 | 1 | DESCRIBE_TOPIC | `string topic` | `[u32 partition, u64 log_start, u64 log_end, u64 size_bytes, u32 segments, u32 torn_files, u64 torn_bytes], [string key, string value] settings, [string key, string source]` |
//! | 5 | 1 | PRODUCE | `u8 acks, [string topic, [u32 partition, bytes batch]]` | `[string topic, [u32 partition, u16 error_code, string error_message, u64 base_offset, i64 log_append_time, u64 log_start]]` |
//! | 6 | 1 | FETCH | `u32 max_wait_ms, u32 min_bytes, u32 max_bytes, [string topic, [u32 partition, u64 offset, u32 partition_max_bytes]]` | `[string topic, [u32 partition, u16 error_code, string error_message, u64 log_start, u64 log_end, u64 next_offset, bytes batches]]` |
//! | 7 | 1 | LIST_OFFSETS | `[string topic, [u32 partition, i64 timestamp (-1 latest, -2 earliest)]]` | `[string topic, [u32 partition, u16 error_code, string error_message, u64 offset, u64 log_start, u64 log_end]]` |
//! | 8 | 0 | ALTER_TOPIC | `string topic, [string key, string value] set, [string key] reset` | — |
//! | 9 | 0 | GROUP_HEARTBEAT | `string group, string member_id, i32 member_epoch, u32 session_timeout_ms, string client_id, [string topic] subscription, [string topic, [u32 partition]] owned` | `string member_id, i32 member_epoch, u32 heartbeat_interval_ms, [string topic, [u32 partition]] assignment` |
//! | 10 | 0 | OFFSET_COMMIT | `string group, string member_id, i32 member_epoch, [string topic, [u32 partition, u64 offset, string metadata]]` | `[string topic, [u32 partition, u16 error_code, string error_message]]` |
//! | 11 | 0 | OFFSET_FETCH | `string group, [string topic, [u32 partition]]` | `[string topic, [u32 partition, u16 error_code, string error_message, i64 offset, string metadata]]` |
//! | 12 | 0 | LIST_GROUPS | — | `[string group, string state, string protocol_type]` |
//! | 13 | 0 | DESCRIBE_GROUP | `string group` | `string state, string protocol_type, string protocol, i32 epoch, [string member_id, string instance_id, string client_id, string client_host, [string topic, [u32 partition]] assignment]` |
//! | 14 | 0 | DELETE_GROUP | `string group` | — |
//!
//! PRODUCE, FETCH and LIST_OFFSETS answer each partition on its own: the
//! response's own error code is for the request as a whole (it could not
//! be parsed), a partition's for that partition. A batch is Kafka's
//! RecordBatch v2 ([`crate::batch`]).

mod message;
mod wire;

pub use message::{
    Acks, ApiKey, CommitOffset, CommitTopic, CommittedOffset, ErrorBody, FetchPartition,
    FetchTopic, FetchedPartition, GroupDescription, GroupHeartbeat, GroupMember, HeartbeatAnswer,
    ListedGroup, OffsetSpec, OffsetsTopic, PartitionDescription, PartitionOffsets, PartitionResult,
    ProduceTopic, ProducedPartition, Request, RequestHeader, Response, ResponseBody,
    TopicDescription, TopicResults, API_VERSIONS, MAX_PRODUCE_OVERHEAD, MAX_REQUEST_PARTITIONS,
    MAX_SUBSCRIBED_TOPICS, REQUEST_HEADER_LEN,
};
pub use wire::{put_bytes, put_string, Reader};

use thiserror::Error;

/// Length of the frame prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Every error a response can carry. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    None = 0,
    /// A bug or an unexpected condition in the broker; the message says more.
    UnknownServerError = 1,
    /// The request could not be parsed (truncated, trailing bytes, bad UTF-8).
    InvalidRequest = 2,
    /// The API key is not one the broker knows.
    UnsupportedApi = 3,
    /// The API is known but not at that version.
    UnsupportedVersion = 4,
    /// No topic by that name (and produce did not create it).
    UnknownTopic = 5,
    TopicAlreadyExists = 6,
    /// The name is not 1 to 249 characters of `[A-Za-z0-9._-]`, or is `.` or `..`.
    InvalidTopicName = 7,
    /// A topic setting is unknown or its value is invalid.
    InvalidConfig = 8,
    /// The offset is outside the log; the body gives the valid range.
    OffsetOutOfRange = 9,
    /// The produced batch is malformed (CRC, lengths, counts).
    InvalidBatch = 10,
    /// A record or batch exceeds the topic's `max_record_bytes` or the frame limit.
    RecordTooLarge = 11,
    /// The topic's log failed an I/O operation (it refuses writes until the
    /// broker restarts), a topic's directory could not be created, moved or
    /// synced, or the topic could not be opened at start (the message says
    /// why).
    StorageError = 12,
    /// The disk is full; produce (or create) again once retention has freed
    /// space.
    DiskFull = 13,
    /// Stored data at this offset failed its checksum; the body gives the
    /// next readable offset.
    CorruptData = 14,
    /// Creating the topic (explicitly or by producing to it) would exceed
    /// the broker's `max_topics`.
    TooManyTopics = 15,
    /// A batch's producer timestamp is further in the future than the
    /// topic's `max_timestamp_ahead_ms` allows (check the producer's clock).
    InvalidTimestamp = 16,
    /// The topic has no partition by that number (partitions are numbered
    /// from 0; DESCRIBE_TOPIC lists them).
    UnknownPartition = 17,
    /// Creating the topic, or raising its partitions, would exceed the
    /// broker's `max_partitions`.
    TooManyPartitions = 18,
    /// An idempotent producer's batch skips sequence numbers: a batch
    /// before it was lost (the producer must start again).
    OutOfOrderSequence = 19,
    /// An idempotent producer's batch is from an epoch older than its
    /// producer id's current one: a newer instance has taken over.
    InvalidProducerEpoch = 20,
    /// No group by that name (no members, no commits).
    GroupNotFound = 21,
    /// The group has members: stop them first (reset, delete).
    GroupNotEmpty = 22,
    /// The member id is not one of the group's (its session ended, or it
    /// left): join again with epoch 0.
    UnknownMember = 23,
    /// The member epoch is not the one the broker gave: join again.
    FencedMember = 24,
    /// The group id (1 to 249 bytes, no control characters), the session
    /// timeout (within `[groups]` min/max_session_timeout) or the
    /// subscription is invalid.
    InvalidGroup = 25,
    /// `[groups]` max_groups or max_members_per_group is reached.
    GroupLimitReached = 26,
    /// The group id is in use by Kafka clients' group protocol (or, from
    /// a Kafka client, by Spool's).
    InconsistentGroupProtocol = 27,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::None,
        ErrorCode::UnknownServerError,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownTopic,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidTopicName,
        ErrorCode::InvalidConfig,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::InvalidBatch,
        ErrorCode::RecordTooLarge,
        ErrorCode::StorageError,
        ErrorCode::DiskFull,
        ErrorCode::CorruptData,
        ErrorCode::TooManyTopics,
        ErrorCode::InvalidTimestamp,
        ErrorCode::UnknownPartition,
        ErrorCode::TooManyPartitions,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::GroupNotFound,
        ErrorCode::GroupNotEmpty,
        ErrorCode::UnknownMember,
        ErrorCode::FencedMember,
        ErrorCode::InvalidGroup,
        ErrorCode::GroupLimitReached,
        ErrorCode::InconsistentGroupProtocol,
    ];

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.get(code as usize).copied()
    }

    /// The protocol name, as in `docs/PROTOCOL.md`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "NONE",
            ErrorCode::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UnsupportedApi => "UNSUPPORTED_API",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownTopic => "UNKNOWN_TOPIC",
            ErrorCode::TopicAlreadyExists => "TOPIC_ALREADY_EXISTS",
            ErrorCode::InvalidTopicName => "INVALID_TOPIC_NAME",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            ErrorCode::InvalidBatch => "INVALID_BATCH",
            ErrorCode::RecordTooLarge => "RECORD_TOO_LARGE",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::CorruptData => "CORRUPT_DATA",
            ErrorCode::TooManyTopics => "TOO_MANY_TOPICS",
            ErrorCode::InvalidTimestamp => "INVALID_TIMESTAMP",
            ErrorCode::UnknownPartition => "UNKNOWN_PARTITION",
            ErrorCode::TooManyPartitions => "TOO_MANY_PARTITIONS",
            ErrorCode::OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            ErrorCode::InvalidProducerEpoch => "INVALID_PRODUCER_EPOCH",
            ErrorCode::GroupNotFound => "GROUP_NOT_FOUND",
            ErrorCode::GroupNotEmpty => "GROUP_NOT_EMPTY",
            ErrorCode::UnknownMember => "UNKNOWN_MEMBER",
            ErrorCode::FencedMember => "FENCED_MEMBER",
            ErrorCode::InvalidGroup => "INVALID_GROUP",
            ErrorCode::GroupLimitReached => "GROUP_LIMIT_REACHED",
            ErrorCode::InconsistentGroupProtocol => "INCONSISTENT_GROUP_PROTOCOL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("{field}: needs {needed} bytes, {available} remain")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{field}: count {count} cannot fit in the {remaining} bytes that remain")]
    CountTooLarge {
        field: &'static str,
        count: u64,
        remaining: usize,
    },
    #[error("{field}: not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("unknown API key {0}")]
    UnknownApi(u16),
    #[error("API {api} does not support version {version}")]
    UnsupportedVersion { api: &'static str, version: u16 },
    #[error("invalid value for {field}: {reason}")]
    BadValue { field: &'static str, reason: String },
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
}

impl ProtocolError {
    /// The code a broker answers this parse failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnknownApi(_) => ErrorCode::UnsupportedApi,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::InvalidRequest,
        }
    }
}
