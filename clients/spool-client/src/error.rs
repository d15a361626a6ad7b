//! The client's error type.

use spool::protocol::{ErrorBody, ErrorCode, ProtocolError};
use thiserror::Error;

/// What a client call can fail with.
#[derive(Debug, Error, Clone)]
pub enum ClientError {
    /// Could not reach the broker (after the configured retries).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The connection broke with the request in flight: it may or may not
    /// have taken effect (a produce may have been stored).
    #[error("connection to the broker was lost: {0}")]
    Disconnected(String),
    /// The broker did not answer in time.
    #[error("no response from the broker within {0:?}")]
    Timeout(std::time::Duration),
    /// The broker answered with an error.
    #[error("{code}: {message}")]
    Broker {
        code: ErrorCode,
        message: String,
        /// `(log_start, log_end)` with OFFSET_OUT_OF_RANGE.
        range: Option<(u64, u64)>,
        /// Next readable offset with CORRUPT_DATA.
        resume_at: Option<u64>,
    },
    /// A consumer's position in a partition lies outside the partition's
    /// log (retention deleted it, or it was never there), and its
    /// `OffsetReset` is `Error`.
    #[error("{code}: partition {partition}: {message}", code = ErrorCode::OffsetOutOfRange)]
    OutOfRange {
        partition: u32,
        offset: u64,
        log_start: u64,
        log_end: u64,
        message: String,
    },
    /// The broker sent something this client cannot parse.
    #[error("bad response from the broker: {0}")]
    Protocol(#[from] ProtocolError),
    /// A fetched batch failed its checks (CRC, framing).
    #[error("corrupt batch received: {0}")]
    CorruptBatch(String),
    /// The response did not have the shape the request calls for.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// A request larger than the broker reads: refused before sending.
    #[error("a {what} request of {size} bytes exceeds the broker's max_frame_bytes of {max}; it was not sent")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: u32,
    },
    /// The call was given invalid arguments.
    #[error("{0}")]
    Invalid(String),
    /// The record was never sent (the producer dropped it on request).
    #[error("not sent: {0}")]
    Unsent(String),
    /// The producer was closed.
    #[error("producer is closed")]
    Closed,
}

impl ClientError {
    /// The broker's error code, if the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::OutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            _ => None,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(e: ErrorBody) -> Self {
        ClientError::Broker {
            code: e.code,
            message: e.message,
            range: e.range,
            resume_at: e.resume_at,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
