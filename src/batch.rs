//! Kafka's record batch, format v2 (magic 2): the one batch format. The
//! same bytes are what a producer sends (on Spool's wire or Kafka's), what
//! the log stores and what a fetch returns, so the broker moves batches
//! without re-encoding them. This module is the codec: [`check`] and
//! [`validate`] (what the broker checks on append), [`check_stored`]
//! (what a read from the log checks), [`assign`] and
//! [`set_log_append_time`] (what the broker patches), [`BatchBuilder`] and
//! the record decoders, and with feature `compression` the four codecs
//! ([`codec`]). `tests/batch.rs` checks it against the
//! `kafka-protocol` crate: the same bytes for the same records, and each
//! side reads what the other writes, compressed or not.
//!
//! # Layout
//!
//! All integers are big-endian. A batch is a 61-byte header and then its
//! records. For compressed batches, the records are compressed as a whole.
//!
//! ```text
//! offset size field
//!  0     8    baseOffset            i64  offset of the first record; set by the broker
//!  8     4    batchLength           i32  bytes after this field: the batch is 12 + batchLength
//! 12     4    partitionLeaderEpoch  i32  set by the broker (Spool: always 0)
//! 16     1    magic                 i8   2
//! 17     4    crc                   u32  CRC-32C of bytes [21, end)
//! 21     2    attributes            i16  bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd),
//!                                        bit 3 timestamp type (1: LogAppendTime),
//!                                        bit 4 transactional, bit 5 control, bit 6 delete horizon
//! 23     4    lastOffsetDelta       i32  offset delta of the last record: recordsCount - 1
//! 27     8    baseTimestamp         i64  timestamp of the first record, ms
//! 35     8    maxTimestamp          i64  largest timestamp in the batch (the broker's
//!                                        append time for LogAppendTime), ms
//! 43     8    producerId            i64  -1 without idempotence
//! 51     2    producerEpoch         i16  -1 without idempotence
//! 53     4    baseSequence          i32  -1 without idempotence
//! 57     4    recordsCount          i32  at least 1
//! 61     ...  records
//! ```
//!
//! A record:
//!
//! ```text
//! varint   length          bytes of the record after this varint
//! i8       attributes      0
//! varlong  timestampDelta  timestamp - baseTimestamp
//! varint   offsetDelta     offset - baseOffset: the record's index in the batch
//! varint   keyLength       -1 for no key
//! bytes    key
//! varint   valueLength     -1 for no value (a tombstone)
//! bytes    value
//! varint   headerCount
//!   varint keyLength, bytes key (UTF-8); varint valueLength (-1: none), bytes value
//! ```
//!
//! `varint` and `varlong` are zigzag-encoded LEB128 (7 bits a byte, low
//! group first; `n` is stored as `(n << 1) ^ (n >> 63)`), at most 5 bytes
//! for a varint (an i32) and 10 for a varlong.
//!
//! The CRC covers neither the first 21 bytes nor itself: the broker's
//! fields (`baseOffset`, `partitionLeaderEpoch`) can be set without hashing
//! the records again. The log guards those bytes another way (the index
//! knows each batch's offset and position; see `docs/STORAGE.md`).
//!
//! Decoding never trusts a length: every count and length is checked
//! against the bytes that remain before anything is read or reserved.

use bytes::{BufMut, Bytes};
use thiserror::Error;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s count starts: the batch is this plus it.
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const LENGTH_AT: usize = 8;
const EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers `[CRC_START, end)`.
pub const CRC_START: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_DELTA_AT: usize = 23;
const BASE_TS_AT: usize = 27;
const MAX_TS_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const COUNT_AT: usize = 57;

/// Attribute bits.
pub const CODEC_MASK: i16 = 0b111;
pub const LOG_APPEND_TIME: i16 = 1 << 3;
pub const TRANSACTIONAL: i16 = 1 << 4;
pub const CONTROL: i16 = 1 << 5;
pub const DELETE_HORIZON: i16 = 1 << 6;
/// Bits with no meaning in magic 2.
const UNKNOWN_ATTRIBUTES: i16 = !0b111_1111;

/// Smallest record: length, attributes, and five one-byte varints.
const MIN_RECORD_LEN: usize = 7;

/// How the records of a batch are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn from_attributes(attributes: i16) -> Result<Codec, BatchError> {
        Ok(match attributes & CODEC_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => return Err(BatchError::UnknownCodec(other as u8)),
        })
    }
}

/// Why a byte string is not a valid batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batchLength is {0}: a batch needs at least {min}", min = HEADER_LEN - LOG_OVERHEAD)]
    LengthTooSmall(i32),
    #[error("record batch magic {0} is not 2 (only RecordBatch v2 is supported)")]
    BadMagic(i8),
    #[error("CRC mismatch: the header says {expected:#010x}, the bytes hash to {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("unknown batch attribute bits {0:#06x}")]
    UnknownAttributes(i16),
    #[error("control batches are written by the broker, not sent by clients")]
    Control,
    #[error("batch declares {0} records; a batch holds at least one")]
    Empty(i32),
    #[error("lastOffsetDelta is {last_offset_delta} but the batch holds {count} records")]
    BadLastOffsetDelta { last_offset_delta: i32, count: i32 },
    #[error("batch offsets overflow: base offset {base_offset} + {count} records")]
    OffsetOverflow { base_offset: i64, count: i32 },
    #[error("producer id {producer_id} with base sequence {base_sequence}: a producer's sequence starts at 0")]
    BadSequence {
        producer_id: i64,
        base_sequence: i32,
    },
    #[error("batch declares {declared} records but {found} fit in its bytes")]
    CountMismatch { declared: i32, found: i32 },
    #[error("record {index}: {reason}")]
    BadRecord { index: i32, reason: &'static str },
    #[error("batch holds {0} bytes after its last record")]
    TrailingBytes(usize),
    #[error("record {index} is {size} bytes, more than the limit of {max}")]
    RecordTooLarge { index: i32, size: usize, max: usize },
    #[error("maxTimestamp is {declared} but the largest record timestamp is {actual}")]
    BadMaxTimestamp { declared: i64, actual: i64 },
    #[error("batch attribute refused: {0}")]
    ReservedAttribute(&'static str),
    #[error("compressed records: {0}")]
    Compressed(String),
}

/// The fixed header of one batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `bytes`; checks only that it is
    /// complete and that `batchLength` can hold a header.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_i64(bytes, BASE_OFFSET_AT),
            batch_length: be_i32(bytes, LENGTH_AT),
            partition_leader_epoch: be_i32(bytes, EPOCH_AT),
            magic: bytes[MAGIC_AT] as i8,
            crc: be_i32(bytes, CRC_AT) as u32,
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, LAST_DELTA_AT),
            base_timestamp: be_i64(bytes, BASE_TS_AT),
            max_timestamp: be_i64(bytes, MAX_TS_AT),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            records_count: be_i32(bytes, COUNT_AT),
        };
        if header.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::LengthTooSmall(header.batch_length));
        }
        Ok(header)
    }

    /// Bytes of the whole batch, `baseOffset` and `batchLength` included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn codec(&self) -> Result<Codec, BatchError> {
        Codec::from_attributes(self.attributes)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME != 0
    }

    /// The offset one past this batch's last record.
    pub fn next_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
            .saturating_add(1)
    }
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"))
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"))
}

/// The CRC a header should carry for `batch` (exactly one batch's bytes).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Stores a freshly computed CRC, after bytes under it were changed.
pub fn reseal(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Sets the fields outside the CRC that the broker owns: the base offset,
/// and the leader epoch (0: one broker, never a new leader). The CRC stays
/// valid. Like [`set_log_append_time`] and [`reseal`], for a batch that
/// passed [`check`] (it panics on fewer than [`HEADER_LEN`] bytes).
pub fn assign(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&0i32.to_be_bytes());
}

/// Marks the batch as timestamped by the broker: sets the LogAppendTime bit
/// and `maxTimestamp` to `time`, and recomputes the CRC (both lie under it).
pub fn set_log_append_time(batch: &mut [u8], time: i64) {
    let attributes = be_i16(batch, ATTRIBUTES_AT) | LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TS_AT..MAX_TS_AT + 8].copy_from_slice(&time.to_be_bytes());
    reseal(batch);
}

/// Checks the header and the CRC of one complete batch (`bytes` holds
/// exactly the batch) without walking its records: magic, length, CRC,
/// known codec and attribute bits, at least one record, and offsets that do
/// not overflow.
pub fn check(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.size() != bytes.len() {
        return Err(BatchError::Truncated {
            needed: header.size(),
            available: bytes.len(),
        });
    }
    if header.magic != MAGIC {
        return Err(BatchError::BadMagic(header.magic));
    }
    let actual = compute_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    if header.attributes & UNKNOWN_ATTRIBUTES != 0 {
        return Err(BatchError::UnknownAttributes(
            header.attributes & UNKNOWN_ATTRIBUTES,
        ));
    }
    header.codec()?;
    if header.records_count < 1 {
        return Err(BatchError::Empty(header.records_count));
    }
    if header.base_offset < 0
        || header
            .base_offset
            .checked_add(i64::from(header.records_count))
            .is_none()
    {
        return Err(BatchError::OffsetOverflow {
            base_offset: header.base_offset,
            count: header.records_count,
        });
    }
    Ok(header)
}

/// Checks a batch read back from a log, where the index says which offset
/// starts it and how long it is (the distance to the next entry, or to the
/// store's end). Kafka's CRC leaves the first 21 bytes uncovered; the log
/// knows what each of them must be (the offset and length from the index,
/// leader epoch 0, magic 2), so with [`check`] a flipped bit anywhere in
/// the batch is caught.
pub fn check_stored(
    bytes: &[u8],
    expected_offset: i64,
    expected_len: usize,
) -> Result<BatchHeader, StoredError> {
    if bytes.len() != expected_len {
        return Err(StoredError::Length {
            expected: expected_len,
            found: bytes.len(),
        });
    }
    let header = check(bytes).map_err(StoredError::Batch)?;
    if header.base_offset != expected_offset {
        return Err(StoredError::Offset {
            expected: expected_offset,
            found: header.base_offset,
        });
    }
    if header.partition_leader_epoch != 0 {
        return Err(StoredError::Epoch(header.partition_leader_epoch));
    }
    Ok(header)
}

/// Why a stored batch does not match what its log expects.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoredError {
    #[error("the index expects a batch of {expected} bytes here, found {found}")]
    Length { expected: usize, found: usize },
    #[error("the index expects offset {expected} here, the batch says {found}")]
    Offset { expected: i64, found: i64 },
    #[error("stored leader epoch is {0}; the broker writes 0")]
    Epoch(i32),
    #[error(transparent)]
    Batch(BatchError),
}

/// Validates a batch from a producer, as Kafka's broker does before it
/// appends one: [`check`], then no control batch, no bit only the broker
/// sets (LogAppendTime, delete horizon) and none that needs transactions,
/// `lastOffsetDelta` equal to the count less one, a sequence from 0 when a
/// producer id is set, and every record's framing, offset delta, size (at
/// most `max_record` bytes, its length varint included), header keys
/// (UTF-8) and `maxTimestamp` (the largest record timestamp). A compressed
/// batch's records are decompressed for this (feature `compression`; at
/// most to its count times `max_record` bytes, and [`MAX_DECOMPRESSED`]),
/// and the batch is stored as sent. The batch's own size limit is the
/// caller's to check.
pub fn validate(bytes: &[u8], max_record: usize) -> Result<BatchHeader, BatchError> {
    let v = validate_within(bytes, max_record, MAX_DECOMPRESSED)?;
    if v.max_timestamp != v.header.max_timestamp {
        return Err(BatchError::BadMaxTimestamp {
            declared: v.header.max_timestamp,
            actual: v.max_timestamp,
        });
    }
    Ok(v.header)
}

/// What [`validate_within`] found.
#[derive(Debug, Clone)]
pub struct Validated {
    pub header: BatchHeader,
    /// Bytes decompressed to check the records (0 for a plain batch).
    pub decompressed: usize,
    /// The largest record timestamp. A producer may declare another
    /// `maxTimestamp` (librdkafka 2.12 writes 0 for records stamped -1);
    /// Kafka's broker then stores the batch with this one, and so does
    /// the log ([`set_max_timestamp`]).
    pub max_timestamp: i64,
}

/// Sets `maxTimestamp` and recomputes the CRC (it lies under it).
pub fn set_max_timestamp(batch: &mut [u8], time: i64) {
    batch[MAX_TS_AT..MAX_TS_AT + 8].copy_from_slice(&time.to_be_bytes());
    reseal(batch);
}

/// [`validate`], decompressing a compressed batch's records to at most
/// `max_decompressed` bytes (and its count times `max_record`, and
/// [`MAX_DECOMPRESSED`]), so that a caller can bound what one request
/// makes it decompress; a `maxTimestamp` other than the records' largest
/// is not refused here but reported ([`Validated::max_timestamp`]).
pub fn validate_within(
    bytes: &[u8],
    max_record: usize,
    max_decompressed: usize,
) -> Result<Validated, BatchError> {
    let header = check(bytes)?;
    if header.is_control() {
        return Err(BatchError::Control);
    }
    if header.last_offset_delta != header.records_count - 1 {
        return Err(BatchError::BadLastOffsetDelta {
            last_offset_delta: header.last_offset_delta,
            count: header.records_count,
        });
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::BadSequence {
            producer_id: header.producer_id,
            base_sequence: header.base_sequence,
        });
    }
    // Bits only the broker sets, or that need a transaction coordinator.
    for (bit, what) in [
        (
            LOG_APPEND_TIME,
            "the LogAppendTime timestamp type is the broker's to set",
        ),
        (
            DELETE_HORIZON,
            "the delete horizon is set by log compaction",
        ),
        (TRANSACTIONAL, "transactions are not supported"),
    ] {
        if header.attributes & bit != 0 {
            return Err(BatchError::ReservedAttribute(what));
        }
    }
    let (max_timestamp, decompressed) = match header.codec()? {
        Codec::None => (
            validate_records(&header, &bytes[HEADER_LEN..], max_record)?,
            0,
        ),
        #[cfg(feature = "compression")]
        codec => {
            // Kafka's broker reads a compressed batch's records too. No
            // valid batch decompresses to more than its count of records of
            // at most `max_record` bytes (nor to more than the caps).
            let limit = (header.records_count.max(0) as usize)
                .saturating_mul(max_record)
                .min(MAX_DECOMPRESSED)
                .min(max_decompressed);
            let body = codec::decompress(codec, &bytes[HEADER_LEN..], limit)
                .map_err(|e| BatchError::Compressed(e.to_string()))?;
            (validate_records(&header, &body, max_record)?, body.len())
        }
        #[cfg(not(feature = "compression"))]
        codec => {
            return Err(BatchError::Compressed(format!(
                "{codec:?} needs the `compression` feature"
            )))
        }
    };
    Ok(Validated {
        header,
        decompressed,
        max_timestamp,
    })
}

/// Most bytes [`validate`] decompresses one batch's records to.
pub const MAX_DECOMPRESSED: usize = 256 << 20;

/// The per-record checks of [`validate`], on the records' bytes
/// (decompressed, for a compressed batch).
fn validate_records(
    header: &BatchHeader,
    body: &[u8],
    max_record: usize,
) -> Result<i64, BatchError> {
    // A count that cannot fit is refused before any work proportional to it.
    let fits = (body.len() / MIN_RECORD_LEN) as i32;
    if header.records_count > fits {
        return Err(BatchError::CountMismatch {
            declared: header.records_count,
            found: fits,
        });
    }
    let mut records = RecordIter::over(body, header);
    let mut max_ts = i64::MIN;
    for index in 0..header.records_count {
        let before = records.cursor.len();
        let record = records
            .next()
            .expect("count checked above")
            .map_err(|reason| BatchError::BadRecord { index, reason })?;
        let size = before - records.cursor.len();
        if size > max_record {
            return Err(BatchError::RecordTooLarge {
                index,
                size,
                max: max_record,
            });
        }
        if record.offset_delta != index {
            return Err(BatchError::BadRecord {
                index,
                reason: "offsetDelta is not the record's index in the batch",
            });
        }
        for h in record.headers {
            let (name, _) = h.map_err(|reason| BatchError::BadRecord { index, reason })?;
            if std::str::from_utf8(name).is_err() {
                return Err(BatchError::BadRecord {
                    index,
                    reason: "header key is not UTF-8",
                });
            }
        }
        max_ts = max_ts.max(record.timestamp);
    }
    if !records.cursor.is_empty() {
        return Err(BatchError::TrailingBytes(records.cursor.len()));
    }
    Ok(max_ts)
}

/// One record of an uncompressed batch, borrowing the batch's bytes.
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    /// `baseTimestamp + timestampDelta` (for a LogAppendTime batch, a reader
    /// should use the batch's `maxTimestamp` instead).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: HeaderIter<'a>,
}

/// The headers of one record: `(key, value)`, a value of `None` for -1.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    remaining: i32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], Option<&'a [u8]>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let mut read = || -> Result<(&'a [u8], Option<&'a [u8]>), &'static str> {
            let key = take_bytes(&mut self.bytes, "header key")?.ok_or("header key is null")?;
            let value = take_bytes(&mut self.bytes, "header value")?;
            Ok((key, value))
        };
        let item = read();
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

/// The records of one uncompressed batch, in order.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    cursor: &'a [u8],
    base_timestamp: i64,
    remaining: i32,
}

impl<'a> RecordIter<'a> {
    /// The records of `batch` (exactly one batch's bytes, header included).
    /// Refuses a compressed batch: its records must be decompressed first.
    pub fn new(batch: &'a [u8]) -> Result<RecordIter<'a>, BatchError> {
        let header = BatchHeader::parse(batch)?;
        if header.codec()? != Codec::None {
            return Err(BatchError::BadRecord {
                index: 0,
                reason: "the records are compressed",
            });
        }
        let end = header.size().min(batch.len());
        Ok(RecordIter::over(&batch[HEADER_LEN..end], &header))
    }

    /// Records in `body`, the bytes after a header (decompressed, for a
    /// compressed batch).
    pub fn over(body: &'a [u8], header: &BatchHeader) -> RecordIter<'a> {
        RecordIter {
            cursor: body,
            base_timestamp: header.base_timestamp,
            remaining: header.records_count.max(0),
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let item = next_record(&mut self.cursor, self.base_timestamp);
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

fn next_record<'a>(
    cursor: &mut &'a [u8],
    base_timestamp: i64,
) -> Result<RecordView<'a>, &'static str> {
    let length = varint(cursor, "record length")?;
    let length = usize::try_from(length).map_err(|_| "record length is negative")?;
    if length > cursor.len() {
        return Err("record length runs past the batch");
    }
    let (mut body, rest) = cursor.split_at(length);
    *cursor = rest;
    let attributes = *body.first().ok_or("record cut short")?;
    body = &body[1..];
    if attributes != 0 {
        return Err("record attributes are not 0");
    }
    let delta = varlong(&mut body, "timestampDelta")?;
    let offset_delta = varint(&mut body, "offsetDelta")?;
    let key = take_bytes(&mut body, "key")?;
    let value = take_bytes(&mut body, "value")?;
    let count = varint(&mut body, "header count")?;
    if count < 0 {
        return Err("header count is negative");
    }
    // Each header takes at least two bytes: a count beyond that is a lie.
    if count as usize > body.len() / 2 {
        return Err("header count runs past the record");
    }
    let headers = HeaderIter {
        bytes: body,
        remaining: count,
    };
    // The headers must end exactly at the record's end.
    let mut walk = headers.clone();
    for h in walk.by_ref() {
        h?;
    }
    if !walk.bytes.is_empty() {
        return Err("bytes after the record's last header");
    }
    Ok(RecordView {
        offset_delta,
        timestamp: base_timestamp.wrapping_add(delta),
        key,
        value,
        headers,
    })
}

/// A length-prefixed byte string: `None` for length -1.
fn take_bytes<'a>(
    cursor: &mut &'a [u8],
    what: &'static str,
) -> Result<Option<&'a [u8]>, &'static str> {
    let len = varint(cursor, what)?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "a length below -1")?;
    if len > cursor.len() {
        return Err("a length runs past the record");
    }
    let (bytes, rest) = cursor.split_at(len);
    *cursor = rest;
    Ok(Some(bytes))
}

fn varint(cursor: &mut &[u8], what: &'static str) -> Result<i32, &'static str> {
    let raw = leb128(cursor, 5, what)?;
    let raw = u32::try_from(raw).map_err(|_| "a varint does not fit 32 bits")?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

fn varlong(cursor: &mut &[u8], what: &'static str) -> Result<i64, &'static str> {
    let raw = leb128(cursor, 10, what)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn leb128(cursor: &mut &[u8], max_len: usize, _what: &'static str) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for i in 0..max_len {
        let byte = *cursor.get(i).ok_or("a varint runs past the record")?;
        if i == 9 && byte > 1 {
            return Err("a varint does not fit 64 bits");
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *cursor = &cursor[i + 1..];
            return Ok(value);
        }
    }
    Err("a varint is too long")
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn put_uvarint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_varlong(out: &mut impl BufMut, n: i64) {
    put_uvarint(out, zigzag(n));
}

fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn varlong_len(n: i64) -> usize {
    uvarint_len(zigzag(n))
}

/// Compression of a batch's records (feature `compression`), as Kafka's
/// clients write it: gzip; snappy in the xerial framing of Kafka's Java
/// client (raw snappy is read too, as librdkafka writes it when asked to);
/// LZ4 frames; zstd frames.
#[cfg(feature = "compression")]
pub mod codec {
    use std::io::{Read, Write};

    use super::Codec;

    /// Why compressed records could not be read or written.
    #[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
    pub enum CodecError {
        #[error("{codec:?} records do not decompress: {reason}")]
        Corrupt { codec: Codec, reason: String },
        #[error("{codec:?} records decompress to more than {limit} bytes")]
        TooLarge { codec: Codec, limit: usize },
    }

    /// The largest zstd window accepted whatever the limit: what Kafka's
    /// zstd-jni writes at most.
    const ZSTD_MAX_WINDOW: usize = 8 << 20;

    /// The window a zstd frame needs (its content size, for a
    /// single-segment frame), from its header (RFC 8878, 3.1.1.1).
    fn zstd_window(data: &[u8]) -> Result<u64, &'static str> {
        if data.get(..4) != Some(&[0x28, 0xb5, 0x2f, 0xfd][..]) {
            return Err("not a zstd frame");
        }
        let descriptor = *data.get(4).ok_or("zstd frame header cut short")?;
        let single_segment = descriptor & 0x20 != 0;
        if !single_segment {
            let w = *data.get(5).ok_or("zstd frame header cut short")?;
            let base = 1u64 << (10 + (w >> 3));
            return Ok(base + base / 8 * u64::from(w & 7));
        }
        let dictionary = [0usize, 1, 2, 4][(descriptor & 3) as usize];
        let size_len = [1usize, 2, 4, 8][(descriptor >> 6) as usize];
        let at = 5 + dictionary;
        let field = data
            .get(at..at + size_len)
            .ok_or("zstd frame header cut short")?;
        let mut size = 0u64;
        for (i, b) in field.iter().enumerate() {
            size |= u64::from(*b) << (8 * i);
        }
        Ok(if size_len == 2 { size + 256 } else { size })
    }

    /// The xerial snappy header: magic, then version 1 and compatible 1.
    const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    const XERIAL_BLOCK: usize = 32 * 1024;

    /// Decompresses `data`, refusing output past `limit` bytes (a batch
    /// from the network must not make the reader allocate without bound).
    pub fn decompress(codec: Codec, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let corrupt = |reason: String| CodecError::Corrupt { codec, reason };
        let bounded = |mut reader: Box<dyn Read + '_>| -> Result<Vec<u8>, CodecError> {
            let mut out = Vec::new();
            reader
                .by_ref()
                .take((limit as u64).saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            if out.len() > limit {
                return Err(CodecError::TooLarge { codec, limit });
            }
            Ok(out)
        };
        match codec {
            Codec::None => Ok(data.to_vec()),
            Codec::Gzip => bounded(Box::new(flate2::read::MultiGzDecoder::new(data))),
            Codec::Lz4 => {
                // Kafka writes (and its Java client reads) only frames of
                // independent blocks.
                match data {
                    [0x04, 0x22, 0x4d, 0x18, flags, ..] if flags & 0x20 != 0 => {}
                    [0x04, 0x22, 0x4d, 0x18, ..] => {
                        return Err(corrupt("an LZ4 frame of linked blocks".into()))
                    }
                    _ => return Err(corrupt("not an LZ4 frame".into())),
                }
                bounded(Box::new(lz4_flex::frame::FrameDecoder::new(data)))
            }
            Codec::Zstd => {
                // The decoder buffers a whole window before it hands out a
                // byte: a frame declaring a huge window would take that
                // much memory whatever the limit. Refuse it up front.
                let window = zstd_window(data).map_err(|e| corrupt(e.into()))?;
                if window > limit.max(ZSTD_MAX_WINDOW) as u64 {
                    return Err(CodecError::TooLarge { codec, limit });
                }
                let mut input = data;
                let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
                    .map_err(|e| corrupt(e.to_string()))?;
                let out = bounded(Box::new(decoder))?;
                if !input.is_empty() {
                    return Err(corrupt("bytes after the zstd frame".into()));
                }
                Ok(out)
            }
            Codec::Snappy => {
                let mut out = Vec::new();
                let mut raw = snap::raw::Decoder::new();
                let mut block = |bytes: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
                    let len =
                        snap::raw::decompress_len(bytes).map_err(|e| corrupt(e.to_string()))?;
                    if out.len().saturating_add(len) > limit {
                        return Err(CodecError::TooLarge { codec, limit });
                    }
                    let start = out.len();
                    out.resize(start + len, 0);
                    raw.decompress(bytes, &mut out[start..])
                        .map_err(|e| corrupt(e.to_string()))?;
                    Ok(())
                };
                match data.strip_prefix(&XERIAL_MAGIC[..]) {
                    Some(rest) => {
                        // Version and compatible version, then blocks of
                        // (i32 length, raw snappy).
                        let mut rest = rest
                            .get(8..)
                            .ok_or_else(|| corrupt("xerial header cut short".into()))?;
                        while !rest.is_empty() {
                            let len = rest
                                .get(..4)
                                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                                .ok_or_else(|| corrupt("xerial block length cut short".into()))?;
                            let end = len
                                .checked_add(4)
                                .filter(|&end| end <= rest.len())
                                .ok_or_else(|| corrupt("xerial block cut short".into()))?;
                            block(&rest[4..end], &mut out)?;
                            rest = &rest[end..];
                        }
                    }
                    None => block(data, &mut out)?,
                }
                Ok(out)
            }
        }
    }

    /// Compresses `data` as Kafka's Java client does for `codec`.
    pub fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        match codec {
            Codec::None => data.to_vec(),
            Codec::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).expect("writing to a Vec");
                e.finish().expect("writing to a Vec")
            }
            Codec::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).expect("writing to a Vec");
                e.finish().expect("writing to a Vec")
            }
            Codec::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Codec::Snappy => {
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                let mut raw = snap::raw::Encoder::new();
                for chunk in data.chunks(XERIAL_BLOCK) {
                    let block = raw
                        .compress_vec(chunk)
                        .expect("a chunk under snappy's limit");
                    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
        }
    }
}

/// Splits back-to-back batches (a fetch response's records, a stretch of a
/// store file), checking each one's header and CRC. A partial batch at the
/// end, which a fetch may return when it hits its byte limit, is reported
/// as [`BatchError::Truncated`] and ends the iteration.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> BatchIter<'a> {
        BatchIter { bytes }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let item = BatchHeader::parse(self.bytes).and_then(|h| {
            let len = h.size();
            if len > self.bytes.len() {
                return Err(BatchError::Truncated {
                    needed: len,
                    available: self.bytes.len(),
                });
            }
            let (batch, rest) = self.bytes.split_at(len);
            let header = check(batch)?;
            self.bytes = rest;
            Ok((header, batch))
        });
        if item.is_err() {
            self.bytes = &[];
        }
        Some(item)
    }
}

/// The record at `offset` in one uncompressed batch, if the batch holds it.
pub fn find_record(batch: &Bytes, offset: u64) -> Result<Option<Record>, BatchError> {
    let header = check(batch)?;
    let wanted = i64::try_from(offset).unwrap_or(i64::MAX);
    if wanted < header.base_offset || wanted >= header.next_offset() {
        return Ok(None);
    }
    Ok(decode_records(batch)?
        .into_iter()
        .find(|r| r.offset == offset))
}

/// A record, decoded and owning its bytes (slices of the batch's buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unsigned, as the log's offsets are: a batch with a negative base
    /// offset never passes [`check`], and decodes with offsets from 0.
    pub offset: u64,
    /// The record's timestamp, ms: its producer's, or for a LogAppendTime
    /// batch the broker's append time.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Decodes every record of one uncompressed batch held in `batch`. The CRC
/// is not checked again: a batch from [`BatchIter`] or [`check`] has
/// passed it (unchecked bytes decode to an error or to records, never a
/// panic).
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.size() > batch.len() {
        return Err(BatchError::Truncated {
            needed: header.size(),
            available: batch.len(),
        });
    }
    if header.codec()? != Codec::None {
        return Err(BatchError::BadRecord {
            index: 0,
            reason: "the records are compressed",
        });
    }
    records_of(&header, &batch.slice(HEADER_LEN..header.size()))
}

/// Decodes every record of one batch, compressed or not (feature
/// `compression`); compressed records may take at most `limit` bytes once
/// decompressed. As with [`decode_records`], the CRC is [`check`]'s job.
#[cfg(feature = "compression")]
pub fn decode_any(batch: &Bytes, limit: usize) -> Result<Vec<Record>, DecodeError> {
    let header = BatchHeader::parse(batch)?;
    if header.size() > batch.len() {
        return Err(BatchError::Truncated {
            needed: header.size(),
            available: batch.len(),
        }
        .into());
    }
    let body = batch.slice(HEADER_LEN..header.size());
    let body = match header.codec()? {
        Codec::None => body,
        codec => Bytes::from(codec::decompress(codec, &body, limit)?),
    };
    Ok(records_of(&header, &body)?)
}

/// Why [`decode_any`] failed.
#[cfg(feature = "compression")]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// The records in `body` (the bytes after the header, decompressed).
fn records_of(header: &BatchHeader, body: &Bytes) -> Result<Vec<Record>, BatchError> {
    let log_append = header.is_log_append_time();
    let slice = |s: &[u8]| body.slice_ref(s);
    // Each record takes at least MIN_RECORD_LEN bytes: no count beyond
    // what the body can hold is believed.
    let fits = (body.len() / MIN_RECORD_LEN)
        .min(header.records_count.max(0) as usize)
        .min(1024);
    let mut out = Vec::with_capacity(fits);
    let mut records = RecordIter::over(body, header);
    for (index, record) in records.by_ref().enumerate() {
        let index = index as i32;
        let r = record.map_err(|reason| BatchError::BadRecord { index, reason })?;
        let mut headers = Vec::new();
        for h in r.headers {
            let (name, value) = h.map_err(|reason| BatchError::BadRecord { index, reason })?;
            let name = std::str::from_utf8(name).map_err(|_| BatchError::BadRecord {
                index,
                reason: "header key is not UTF-8",
            })?;
            headers.push((name.to_owned(), value.map(slice)));
        }
        out.push(Record {
            offset: header
                .base_offset
                .saturating_add(i64::from(r.offset_delta))
                .max(0) as u64,
            timestamp: if log_append {
                header.max_timestamp
            } else {
                r.timestamp
            },
            key: r.key.map(slice),
            value: r.value.map(slice),
            headers,
        });
    }
    if !records.cursor.is_empty() {
        return Err(BatchError::TrailingBytes(records.cursor.len()));
    }
    Ok(out)
}

/// Builds one uncompressed batch with base offset 0, as a producer sends
/// it: without idempotence (producer id, epoch and base sequence -1) unless
/// [`BatchBuilder::set_producer`] says otherwise.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: (i64, i16, i32),
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// A builder whose buffer starts with room for `bytes` bytes of records.
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
            producer: (-1, -1, -1),
        }
    }

    /// Makes the batch an idempotent producer's: its id, epoch and the
    /// sequence number of its first record.
    pub fn set_producer(&mut self, id: i64, epoch: i16, base_sequence: i32) {
        self.producer = (id, epoch, base_sequence);
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batch so far, header included.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The bytes one more record of this shape would add, with a timestamp
    /// delta of `timestamp_delta` and an offset delta of `offset_delta`.
    pub fn record_size(
        timestamp_delta: i64,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> usize {
        let body = body_size(timestamp_delta, offset_delta, key, value, headers);
        varlong_len(body as i64) + body
    }

    /// Adds one record; its offset delta is its index in the batch.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        let delta = timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = self.count;
        let body = body_size(delta, offset_delta, key, value, headers);
        self.buf.reserve(varlong_len(body as i64) + body);
        put_varlong(&mut self.buf, body as i64);
        self.buf.put_u8(0); // attributes
        put_varlong(&mut self.buf, delta);
        put_varlong(&mut self.buf, i64::from(offset_delta));
        put_nullable(&mut self.buf, key);
        put_nullable(&mut self.buf, value);
        put_varlong(&mut self.buf, headers.len() as i64);
        for (name, v) in headers {
            put_nullable(&mut self.buf, Some(name.as_bytes()));
            put_nullable(&mut self.buf, *v);
        }
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// Writes the header and CRC and returns the batch, its records
    /// compressed with `codec` (feature `compression`).
    #[cfg(feature = "compression")]
    pub fn finish_compressed(mut self, codec: Codec) -> Vec<u8> {
        if codec != Codec::None {
            let records = codec::compress(codec, &self.buf[HEADER_LEN..]);
            self.buf.truncate(HEADER_LEN);
            self.buf.extend_from_slice(&records);
        }
        let bits: i16 = match codec {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        };
        let mut batch = self.finish();
        batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&bits.to_be_bytes());
        reseal(&mut batch);
        batch
    }

    /// Writes the header and CRC and returns the batch. Panics if no record
    /// was pushed or the batch is 2 GiB or more, both programming errors.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        let length = i32::try_from(self.buf.len() - LOG_OVERHEAD).expect("batch under 2 GiB");
        let b = &mut self.buf;
        b[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&0i64.to_be_bytes());
        b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        b[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        b[MAGIC_AT] = MAGIC as u8;
        b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&0i16.to_be_bytes());
        b[LAST_DELTA_AT..LAST_DELTA_AT + 4].copy_from_slice(&(self.count - 1).to_be_bytes());
        b[BASE_TS_AT..BASE_TS_AT + 8].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[MAX_TS_AT..MAX_TS_AT + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        let (id, epoch, sequence) = self.producer;
        b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&id.to_be_bytes());
        b[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&epoch.to_be_bytes());
        b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&sequence.to_be_bytes());
        b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        reseal(b);
        self.buf
    }
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

fn body_size(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) -> usize {
    1 + varlong_len(timestamp_delta)
        + varlong_len(i64::from(offset_delta))
        + nullable_len(key)
        + nullable_len(value)
        + varlong_len(headers.len() as i64)
        + headers
            .iter()
            .map(|(n, v)| nullable_len(Some(n.as_bytes())) + nullable_len(*v))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(
            1_700_000_000_000,
            Some(b"k"),
            Some(b"hello"),
            &[("h", Some(b"v"))],
        );
        b.push(1_700_000_000_005, None, None, &[]);
        b.push(1_699_999_999_000, None, Some(b""), &[("n", None)]);
        b.finish()
    }

    #[test]
    fn a_built_batch_validates_and_decodes() {
        let batch = sample();
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.max_timestamp, 1_700_000_000_005);
        assert_eq!(header.size(), batch.len());
        let records = decode_records(&Bytes::from(batch)).unwrap();
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            records[0].headers,
            vec![("h".into(), Some(Bytes::from_static(b"v")))]
        );
        assert_eq!(records[1].value, None);
        assert_eq!(records[1].timestamp, 1_700_000_000_005);
        assert_eq!(records[2].offset, 2);
        assert_eq!(records[2].value.as_deref(), Some(&b""[..]));
        assert_eq!(records[2].headers, vec![("n".into(), None)]);
    }

    #[test]
    fn back_to_back_batches_split_and_a_cut_one_ends_them() {
        let mut first = sample();
        assign(&mut first, 0);
        let mut second = sample();
        assign(&mut second, 3);
        let mut stream = first.clone();
        stream.extend_from_slice(&second);
        let offsets: Vec<i64> = BatchIter::new(&stream)
            .map(|b| b.unwrap().0.base_offset)
            .collect();
        assert_eq!(offsets, vec![0, 3]);
        let cut = &stream[..stream.len() - 1];
        let items: Vec<_> = BatchIter::new(cut).collect();
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(BatchError::Truncated { .. })));
        let second = Bytes::from(second);
        let found = find_record(&second, 4).unwrap().unwrap();
        assert_eq!((found.offset, found.value), (4, None));
        assert_eq!(find_record(&second, 6).unwrap(), None);
        assert_eq!(find_record(&second, 2).unwrap(), None);
    }

    #[test]
    fn record_size_is_what_push_adds() {
        let mut b = BatchBuilder::new();
        b.push(0, None, Some(b"x"), &[]);
        let before = b.size();
        let headers: [(&str, Option<&[u8]>); 1] = [("name", Some(b"value"))];
        b.push(1_000_000, Some(b"key"), Some(&[7u8; 300]), &headers);
        let expected =
            BatchBuilder::record_size(1_000_000, 1, Some(b"key"), Some(&[7u8; 300]), &headers);
        assert_eq!(b.size() - before, expected);
    }

    #[test]
    fn assign_keeps_the_crc_and_log_append_time_reseals() {
        let mut batch = sample();
        assign(&mut batch, 42);
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!((header.base_offset, header.partition_leader_epoch), (42, 0));
        set_log_append_time(&mut batch, 1_800_000_000_000);
        // What the broker stores: a producer may not send it.
        let header = check(&batch).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(
            validate(&batch, usize::MAX),
            Err(BatchError::ReservedAttribute(
                "the LogAppendTime timestamp type is the broker's to set"
            ))
        );
        let records = decode_records(&Bytes::from(batch)).unwrap();
        assert!(records.iter().all(|r| r.timestamp == 1_800_000_000_000));
        assert_eq!(records[1].offset, 43);
    }

    #[test]
    fn every_flipped_bit_under_the_crc_is_caught() {
        let batch = sample();
        for byte in CRC_START..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[byte] ^= 1 << bit;
                assert!(check(&bad).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    /// The damage promise on the new format: in a stored batch, every
    /// flipped bit is caught, the 21 bytes outside the CRC included.
    #[test]
    fn every_flipped_bit_of_a_stored_batch_is_caught() {
        let mut batch = sample();
        assign(&mut batch, 1_000);
        let len = batch.len();
        check_stored(&batch, 1_000, len).unwrap();
        for byte in 0..len {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[byte] ^= 1 << bit;
                // The length as the index knows it, whatever the bytes say.
                let seen = BatchHeader::parse(&bad).map_or(len, |h| h.size().min(len));
                assert!(
                    check_stored(&bad[..seen], 1_000, len).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
        // A zeroed chunk, and a batch rolled back to another's bytes.
        let mut zeroed = batch.clone();
        zeroed[30..40].fill(0);
        assert!(check_stored(&zeroed, 1_000, len).is_err());
        let mut other = sample();
        assign(&mut other, 997);
        assert!(check_stored(&other, 1_000, len).is_err());
    }

    #[test]
    fn what_producers_must_not_send_is_refused() {
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut batch = sample();
            f(&mut batch);
            reseal(&mut batch);
            validate(&batch, usize::MAX)
        };
        assert!(matches!(
            edit(&|b| b[ATTRIBUTES_AT + 1] |= CONTROL as u8),
            Err(BatchError::Control)
        ));
        assert!(matches!(
            edit(&|b| b[LAST_DELTA_AT + 3] = 5),
            Err(BatchError::BadLastOffsetDelta { .. })
        ));
        assert!(matches!(
            edit(&|b| b[ATTRIBUTES_AT + 1] |= 7),
            Err(BatchError::UnknownCodec(7))
        ));
        assert!(matches!(
            edit(&|b| b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&5i64.to_be_bytes())),
            Err(BatchError::BadSequence { .. })
        ));
        assert!(matches!(
            edit(&|b| b[MAX_TS_AT + 7] ^= 1),
            Err(BatchError::BadMaxTimestamp { .. })
        ));
        assert!(matches!(
            edit(&|b| b[COUNT_AT + 3] = 0),
            Err(BatchError::Empty(0))
        ));
        let mut magic = sample();
        magic[MAGIC_AT] = 1;
        assert!(matches!(
            validate(&magic, usize::MAX),
            Err(BatchError::BadMagic(1))
        ));
        assert!(matches!(
            validate(&sample(), 10),
            Err(BatchError::RecordTooLarge { index: 0, .. })
        ));
    }

    #[test]
    fn a_compressed_batch_with_records_that_are_not_its_codec_is_refused() {
        let mut batch = sample();
        batch[ATTRIBUTES_AT + 1] |= 4; // says zstd; the records are plain
        reseal(&mut batch);
        assert!(matches!(
            validate(&batch, usize::MAX),
            Err(BatchError::Compressed(_))
        ));
        assert!(RecordIter::new(&batch).is_err());
        assert!(decode_records(&Bytes::from(batch)).is_err());
    }

    #[test]
    fn producers_may_not_set_the_brokers_bits() {
        for bit in [TRANSACTIONAL, DELETE_HORIZON, LOG_APPEND_TIME] {
            let mut batch = sample();
            let attributes = be_i16(&batch, ATTRIBUTES_AT) | bit;
            batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
            reseal(&mut batch);
            assert!(matches!(
                validate(&batch, usize::MAX),
                Err(BatchError::ReservedAttribute(_))
            ));
        }
    }

    #[test]
    fn bytes_after_the_last_record_are_refused_when_decoding() {
        let mut batch = sample();
        batch.extend_from_slice(&[0, 0, 0]);
        let length = (batch.len() - LOG_OVERHEAD) as i32;
        batch[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        reseal(&mut batch);
        assert_eq!(
            validate(&batch, usize::MAX),
            Err(BatchError::TrailingBytes(3))
        );
        assert_eq!(
            decode_records(&Bytes::from(batch)),
            Err(BatchError::TrailingBytes(3))
        );
    }

    #[cfg(feature = "compression")]
    #[test]
    fn compressed_records_are_validated_like_plain_ones() {
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut b = BatchBuilder::new();
            b.push(1, None, Some(&[9u8; 200]), &[]);
            b.push(2, None, Some(b"two"), &[]);
            let good = b.finish_compressed(codec);
            assert_eq!(validate(&good, usize::MAX).unwrap().records_count, 2);
            // Records over the limit: more than the count of them can take.
            let e = validate(&good, 100).unwrap_err();
            assert!(
                e.to_string().contains("more than 200 bytes"),
                "{codec:?}: {e}"
            );
            assert!(matches!(
                validate(&good, 205),
                Err(BatchError::RecordTooLarge { index: 0, .. })
            ));
            // A count the records do not bear out.
            let mut lying = good.clone();
            lying[COUNT_AT..COUNT_AT + 4].copy_from_slice(&3i32.to_be_bytes());
            lying[LAST_DELTA_AT..LAST_DELTA_AT + 4].copy_from_slice(&2i32.to_be_bytes());
            reseal(&mut lying);
            assert!(validate(&lying, usize::MAX).is_err(), "{codec:?}");
            // A wrong maxTimestamp.
            let mut late = good.clone();
            late[MAX_TS_AT..MAX_TS_AT + 8].copy_from_slice(&99i64.to_be_bytes());
            reseal(&mut late);
            assert!(matches!(
                validate(&late, usize::MAX),
                Err(BatchError::BadMaxTimestamp { .. })
            ));
        }
    }

    /// A zstd frame that declares a huge window would make the decoder
    /// buffer that much before it returns a byte: refused from its header.
    #[cfg(feature = "compression")]
    #[test]
    fn a_zstd_frame_with_a_huge_window_is_refused_up_front() {
        // Magic, descriptor (not single segment), window 2^41 bytes.
        let huge = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x00, 0x00, 0x00];
        assert!(matches!(
            codec::decompress(Codec::Zstd, &huge, 1 << 20),
            Err(codec::CodecError::TooLarge { .. })
        ));
        // Single segment, content size 2^40 in the 8-byte field.
        let mut declared = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        declared.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            codec::decompress(Codec::Zstd, &declared, 1 << 20),
            Err(codec::CodecError::TooLarge { .. })
        ));
        // A real frame, followed by more bytes.
        let mut framed = codec::compress(Codec::Zstd, b"hello");
        assert_eq!(
            codec::decompress(Codec::Zstd, &framed, 1 << 20).unwrap(),
            b"hello"
        );
        framed.push(0);
        assert!(codec::decompress(Codec::Zstd, &framed, 1 << 20).is_err());
    }

    #[cfg(feature = "compression")]
    #[test]
    fn an_lz4_frame_of_linked_blocks_is_refused() {
        let mut frame = codec::compress(Codec::Lz4, b"hello hello hello");
        assert_eq!(
            codec::decompress(Codec::Lz4, &frame, 1 << 20).unwrap(),
            b"hello hello hello"
        );
        frame[4] &= !0x20; // block independence off
        assert!(codec::decompress(Codec::Lz4, &frame, 1 << 20).is_err());
        assert!(codec::decompress(Codec::Lz4, b"nonsense", 1 << 20).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = validate(&bytes, usize::MAX);
            let _ = decode_records(&Bytes::from(bytes.clone()));
            if let Ok(iter) = RecordIter::new(&bytes) {
                for r in iter.flatten() {
                    for h in r.headers {
                        let _ = h;
                    }
                }
            }
        }

        #[test]
        fn a_valid_batch_with_one_byte_changed_under_its_crc_is_refused(
            at in 0usize..1000, value in proptest::prelude::any::<u8>()
        ) {
            let batch = sample();
            let at = CRC_START + at % (batch.len() - CRC_START);
            let mut bad = batch.clone();
            proptest::prop_assume!(bad[at] != value);
            bad[at] = value;
            proptest::prop_assert!(validate(&bad, usize::MAX).is_err());
        }
    }
}
