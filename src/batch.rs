//! The record batch: the unit a producer sends, the log stores and a consumer
//! receives. The same bytes travel the wire and sit in the store file, so the
//! broker moves batches without re-encoding them.
//!
//! # Layout
//!
//! All integers are big-endian. A batch is a 48-byte header and then
//! `record_count` records.
//!
//! ```text
//! offset size field
//!  0     8    base_offset      u64  offset of the first record; set by the log
//!  8     8    append_time      i64  ms since the Unix epoch; set by the log
//! 16     4    batch_length     u32  bytes of the whole batch, header included
//! 20     4    crc              u32  crc32c([0, 20)) XOR crc32c([24, batch_length))
//! 24     1    magic            u8   format version, always 1
//! 25     1    attributes       u8   reserved for compression and flags; 0
//! 26     2    reserved         u16  0
//! 28     4    record_count     u32  at least 1
//! 32     8    first_timestamp  i64  producer timestamp of the first record, ms
//! 40     8    max_timestamp    i64  largest producer timestamp in the batch, ms
//! 48     ...  records
//! ```
//!
//! The check covers every byte but its own four, as two CRC-32C (Castagnoli)
//! values XORed: one of the 20 bytes before it, one of the rest. Assigning
//! offsets and the append time rewrites bytes 0..16 and updates the check
//! from the first part alone (two CRCs of 20 bytes), never hashing the
//! records again; and a flipped bit anywhere, the broker's fields included,
//! is caught.
//!
//! Each record (offset = `base_offset` + its index in the batch):
//!
//! ```text
//! varint  body_length          bytes of the record after this varint
//! zigzag  timestamp_delta      producer timestamp - first_timestamp
//! varint  key_length + 1       0 means "no key"
//! bytes   key
//! varint  value_length
//! bytes   value
//! varint  header_count
//!   varint  name_length,  bytes name (UTF-8)
//!   varint  value_length, bytes value
//! ```
//!
//! A varint is unsigned LEB128 (7 bits per byte, low group first, at most 10
//! bytes); a zigzag varint maps a signed value `n` to `(n << 1) ^ (n >> 63)`
//! first. The first record's delta is 0 and `max_timestamp` equals the largest
//! record timestamp: [`validate`] enforces both.
//!
//! Decoding never trusts a length: every count and length is checked against
//! the bytes that remain before anything is read or reserved, so no input makes
//! the decoder panic or allocate more than the input's size.

use bytes::{BufMut, Bytes};
use thiserror::Error;

/// Bytes of the fixed batch header.
pub const HEADER_LEN: usize = 48;
/// Current (and only) batch format version.
pub const MAGIC: u8 = 1;

const BASE_OFFSET_AT: usize = 0;
const APPEND_TIME_AT: usize = 8;
const LENGTH_AT: usize = 16;
const CRC_AT: usize = 20;
const MAGIC_AT: usize = 24;
const ATTRIBUTES_AT: usize = 25;
const RESERVED_AT: usize = 26;
const COUNT_AT: usize = 28;
const FIRST_TS_AT: usize = 32;
const MAX_TS_AT: usize = 40;
/// The CRC's second part covers everything from here to the end of the
/// batch; its first part covers `[0, CRC_AT)`.
pub const CRC_START: usize = MAGIC_AT;

/// Smallest possible record: five one-byte varints and nothing else.
const MIN_RECORD_LEN: usize = 5;
/// Smallest possible header entry: two one-byte length varints.
const MIN_HEADER_LEN: usize = 2;
/// Longest valid LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

/// Why a byte string is not a valid batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field is {0}, smaller than the {HEADER_LEN}-byte header")]
    LengthTooSmall(u32),
    #[error("unknown batch format version {0} (expected {MAGIC})")]
    BadMagic(u8),
    #[error("reserved batch field is {0:#x}, expected 0")]
    BadReserved(u16),
    #[error("unsupported batch attributes {0:#04x}")]
    BadAttributes(u8),
    #[error("CRC mismatch: header says {expected:#010x}, bytes hash to {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("batch declares zero records")]
    Empty,
    #[error("batch offsets overflow: base offset {base_offset} + {record_count} records")]
    OffsetOverflow { base_offset: u64, record_count: u32 },
    #[error("batch declares {declared} records but {found} fit in its bytes")]
    CountMismatch { declared: u32, found: u32 },
    #[error("record {index}: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error("batch holds {0} bytes after its last record")]
    TrailingBytes(usize),
    #[error("record {index} is {size} bytes, more than the limit of {max}")]
    RecordTooLarge { index: u32, size: usize, max: usize },
    #[error("max_timestamp is {declared} but the largest record timestamp is {actual}")]
    BadMaxTimestamp { declared: i64, actual: i64 },
}

/// The fixed header of one batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub append_time: i64,
    pub batch_length: u32,
    pub crc: u32,
    pub magic: u8,
    pub attributes: u8,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
}

impl BatchHeader {
    /// Decodes the header at the start of `bytes`; checks only that it is
    /// complete and that `batch_length` can hold a header.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_u64(bytes, BASE_OFFSET_AT),
            append_time: be_u64(bytes, APPEND_TIME_AT) as i64,
            batch_length: be_u32(bytes, LENGTH_AT),
            crc: be_u32(bytes, CRC_AT),
            magic: bytes[MAGIC_AT],
            attributes: bytes[ATTRIBUTES_AT],
            record_count: be_u32(bytes, COUNT_AT),
            first_timestamp: be_u64(bytes, FIRST_TS_AT) as i64,
            max_timestamp: be_u64(bytes, MAX_TS_AT) as i64,
        };
        if (header.batch_length as usize) < HEADER_LEN {
            return Err(BatchError::LengthTooSmall(header.batch_length));
        }
        Ok(header)
    }

    /// The offset one past this batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.next_offset().saturating_sub(1)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"))
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"))
}

/// Sets the two fields the log owns, and updates the CRC for them without
/// hashing the records: a valid batch stays valid.
pub fn assign(batch: &mut [u8], base_offset: u64, append_time: i64) {
    let before = crc32c::crc32c(&batch[..CRC_AT]);
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[APPEND_TIME_AT..APPEND_TIME_AT + 8].copy_from_slice(&append_time.to_be_bytes());
    let after = crc32c::crc32c(&batch[..CRC_AT]);
    let crc = be_u32(batch, CRC_AT) ^ before ^ after;
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The CRC a header should carry for `batch` (the whole batch's bytes):
/// `crc32c(batch[0..20]) ^ crc32c(batch[24..])`.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[..CRC_AT]) ^ crc32c::crc32c(&batch[CRC_START..])
}

/// Recomputes and stores the CRC of a finished batch whose record bytes
/// were edited in place (same lengths), e.g. to stamp a send time into
/// values. Editing lengths this way would produce a batch that fails
/// validation.
pub fn reseal(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Checks the header fields and the CRC of one complete batch (`bytes` holds
/// exactly the batch), without walking its records. This is the check a read
/// of stored bytes makes: the records were walked when the batch was appended.
pub fn check(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.batch_length as usize != bytes.len() {
        return Err(BatchError::Truncated {
            needed: header.batch_length as usize,
            available: bytes.len(),
        });
    }
    if header.magic != MAGIC {
        return Err(BatchError::BadMagic(header.magic));
    }
    let reserved = u16::from_be_bytes([bytes[RESERVED_AT], bytes[RESERVED_AT + 1]]);
    if reserved != 0 {
        return Err(BatchError::BadReserved(reserved));
    }
    if header.attributes != 0 {
        return Err(BatchError::BadAttributes(header.attributes));
    }
    let actual = compute_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    if header.record_count == 0 {
        return Err(BatchError::Empty);
    }
    // Every record's offset must exist (a producer sends base offset 0).
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(BatchError::OffsetOverflow {
            base_offset: header.base_offset,
            record_count: header.record_count,
        });
    }
    Ok(header)
}

/// Fully validates one batch from an untrusted source: header, CRC, and every
/// record's framing, the record count, the timestamps and header names.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    validate_limited(bytes, usize::MAX)
}

/// [`validate`], also refusing any record whose encoding (length prefix
/// included) exceeds `max_record` bytes.
pub fn validate_limited(bytes: &[u8], max_record: usize) -> Result<BatchHeader, BatchError> {
    let header = check(bytes)?;
    // A record takes at least MIN_RECORD_LEN bytes, so a count that cannot fit
    // is rejected before any work proportional to it.
    let body = &bytes[HEADER_LEN..];
    if header.record_count as usize > body.len() / MIN_RECORD_LEN {
        return Err(BatchError::CountMismatch {
            declared: header.record_count,
            found: (body.len() / MIN_RECORD_LEN) as u32,
        });
    }
    let mut cursor = body;
    let mut max_ts = i64::MIN;
    for index in 0..header.record_count {
        let before = cursor.len();
        let record = next_record(&mut cursor, header.first_timestamp, index)?;
        if before - cursor.len() > max_record {
            return Err(BatchError::RecordTooLarge {
                index,
                size: before - cursor.len(),
                max: max_record,
            });
        }
        if index == 0 && record.timestamp != header.first_timestamp {
            return Err(BatchError::BadRecord {
                index,
                reason: "first record's timestamp delta is not 0",
            });
        }
        // Header names are text; check them once here so readers can trust it.
        for h in record.headers {
            let (name, _) = h.map_err(|reason| BatchError::BadRecord { index, reason })?;
            if std::str::from_utf8(name).is_err() {
                return Err(BatchError::BadRecord {
                    index,
                    reason: "header name is not UTF-8",
                });
            }
        }
        max_ts = max_ts.max(record.timestamp);
    }
    if !cursor.is_empty() {
        return Err(BatchError::TrailingBytes(cursor.len()));
    }
    if max_ts != header.max_timestamp {
        return Err(BatchError::BadMaxTimestamp {
            declared: header.max_timestamp,
            actual: max_ts,
        });
    }
    Ok(header)
}

/// One record inside a batch, borrowing the batch's bytes.
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: HeaderIter<'a>,
}

/// Iterates the (name, value) headers of one record.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    remaining: u64,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let item = (|| {
            let name = take_len_prefixed(&mut self.bytes).ok_or("header name overruns record")?;
            let value = take_len_prefixed(&mut self.bytes).ok_or("header value overruns record")?;
            Ok((name, value))
        })();
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

fn take_len_prefixed<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_varint(bytes)?;
    take(bytes, len)
}

fn take<'a>(bytes: &mut &'a [u8], len: u64) -> Option<&'a [u8]> {
    if len > bytes.len() as u64 {
        return None;
    }
    let (head, tail) = bytes.split_at(len as usize);
    *bytes = tail;
    Some(head)
}

/// Decodes the record at the front of `cursor` and advances past it.
fn next_record<'a>(
    cursor: &mut &'a [u8],
    first_timestamp: i64,
    index: u32,
) -> Result<RecordView<'a>, BatchError> {
    let bad = |reason| BatchError::BadRecord { index, reason };
    let body_len = read_varint(cursor).ok_or(bad("record length overruns batch"))?;
    let mut body = take(cursor, body_len).ok_or(bad("record length overruns batch"))?;
    let delta = read_varint(&mut body)
        .map(unzigzag)
        .ok_or(bad("timestamp overruns record"))?;
    // Wrapping mirrors the builder, so every i64 timestamp round-trips.
    let timestamp = first_timestamp.wrapping_add(delta);
    let key_len = read_varint(&mut body).ok_or(bad("key length overruns record"))?;
    let key = match key_len {
        0 => None,
        n => Some(take(&mut body, n - 1).ok_or(bad("key overruns record"))?),
    };
    let value = take_len_prefixed(&mut body).ok_or(bad("value overruns record"))?;
    let header_count = read_varint(&mut body).ok_or(bad("header count overruns record"))?;
    if header_count > (body.len() / MIN_HEADER_LEN) as u64 {
        return Err(bad("header count exceeds record length"));
    }
    let headers = HeaderIter {
        bytes: body,
        remaining: header_count,
    };
    // The headers must consume the body exactly; walk them once to find out.
    let mut walk = headers.clone();
    for h in walk.by_ref() {
        h.map_err(bad)?;
    }
    if !walk.bytes.is_empty() {
        return Err(bad("bytes left after the record's headers"));
    }
    Ok(RecordView {
        timestamp,
        key,
        value,
        headers,
    })
}

/// Iterates the records of one batch that has passed [`check`] or [`validate`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    cursor: &'a [u8],
    first_timestamp: i64,
    index: u32,
    count: u32,
}

impl<'a> RecordIter<'a> {
    /// Records of `batch` (exactly one batch's bytes, header included).
    pub fn new(batch: &'a [u8]) -> Result<RecordIter<'a>, BatchError> {
        let header = BatchHeader::parse(batch)?;
        let end = (header.batch_length as usize).min(batch.len());
        Ok(RecordIter {
            cursor: &batch[HEADER_LEN..end],
            first_timestamp: header.first_timestamp,
            index: 0,
            count: header.record_count,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let item = next_record(&mut self.cursor, self.first_timestamp, self.index);
        self.index = if item.is_ok() {
            self.index + 1
        } else {
            self.count
        };
        Some(item)
    }
}

/// Splits a buffer of concatenated batches, checking each one's header and CRC.
/// A partial batch at the end is reported as [`BatchError::Truncated`].
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
            let len = h.batch_length as usize;
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

/// One record with its offset, owning (reference-counted) slices of its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Producer timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Decodes every record of one batch held in `batch` (exactly one batch's
/// bytes). The key, value and header values share `batch`'s allocation.
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    // Each record needs MIN_RECORD_LEN bytes, which bounds the reservation by
    // the input size whatever the header claims.
    let mut records =
        Vec::with_capacity((header.record_count as usize).min(batch.len() / MIN_RECORD_LEN));
    for (i, view) in RecordIter::new(batch)?.enumerate() {
        let view = view?;
        // Saturating, as next_offset is: a hostile base offset must not panic.
        let offset = header.base_offset.saturating_add(i as u64);
        records.push(owned_record(batch, offset, view)?);
    }
    Ok(records)
}

fn owned_record(batch: &Bytes, offset: u64, view: RecordView<'_>) -> Result<Record, BatchError> {
    let mut headers = Vec::new();
    for h in view.headers {
        let (name, value) = h.map_err(|reason| BatchError::BadRecord { index: 0, reason })?;
        let name = std::str::from_utf8(name).map_err(|_| BatchError::BadRecord {
            index: 0,
            reason: "header name is not UTF-8",
        })?;
        headers.push((name.to_owned(), batch.slice_ref(value)));
    }
    Ok(Record {
        offset,
        timestamp: view.timestamp,
        key: view.key.map(|k| batch.slice_ref(k)),
        value: batch.slice_ref(view.value),
        headers,
    })
}

/// Finds the record at `offset` in one batch.
pub fn find_record(batch: &Bytes, offset: u64) -> Result<Option<Record>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if offset < header.base_offset || offset >= header.next_offset() {
        return Ok(None);
    }
    let index = (offset - header.base_offset) as usize;
    match RecordIter::new(batch)?.nth(index) {
        Some(view) => owned_record(batch, offset, view?).map(Some),
        None => Ok(None),
    }
}

/// Builds a batch in the stored format. The log fills in the base offset and
/// the append time when the batch is appended.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
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
            first_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would take if finished now.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The bytes one more record of this shape would add to the batch.
    pub fn record_size(
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> usize {
        let body = body_size(timestamp_delta, key, value, headers);
        varint_len(body as u64) + body
    }

    /// Adds one record.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        if self.count == 0 {
            self.first_timestamp = timestamp;
        }
        let delta = timestamp.wrapping_sub(self.first_timestamp);
        let body = body_size(delta, key, value, headers);
        self.buf.reserve(varint_len(body as u64) + body);
        put_varint(&mut self.buf, body as u64);
        put_varint(&mut self.buf, zigzag(delta));
        match key {
            None => put_varint(&mut self.buf, 0),
            Some(k) => {
                put_varint(&mut self.buf, k.len() as u64 + 1);
                self.buf.put_slice(k);
            }
        }
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.put_slice(value);
        put_varint(&mut self.buf, headers.len() as u64);
        for (name, v) in headers {
            put_varint(&mut self.buf, name.len() as u64);
            self.buf.put_slice(name.as_bytes());
            put_varint(&mut self.buf, v.len() as u64);
            self.buf.put_slice(v);
        }
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// Writes the header and CRC and returns the batch. Panics if no record
    /// was pushed or the batch exceeds 4 GiB, both programming errors.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        let len = u32::try_from(self.buf.len()).expect("batch larger than 4 GiB");
        let b = &mut self.buf;
        b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        b[MAGIC_AT] = MAGIC;
        b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        b[FIRST_TS_AT..FIRST_TS_AT + 8].copy_from_slice(&self.first_timestamp.to_be_bytes());
        b[MAX_TS_AT..MAX_TS_AT + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        let crc = compute_crc(b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

fn body_size(delta: i64, key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> usize {
    let key_part = match key {
        None => 1,
        Some(k) => varint_len(k.len() as u64 + 1) + k.len(),
    };
    let headers_part: usize = headers
        .iter()
        .map(|(n, v)| varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len())
        .sum();
    varint_len(zigzag(delta))
        + key_part
        + varint_len(value.len() as u64)
        + value.len()
        + varint_len(headers.len() as u64)
        + headers_part
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Reads an unsigned LEB128 varint from the front of `bytes`. `None` if it is
/// cut short or longer than ten bytes or overflows 64 bits.
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(MAX_VARINT_LEN).enumerate() {
        let group = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && group > 1 {
            return None;
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(1_000, Some(b"k1"), b"hello", &[("trace", b"abc")]);
        b.push(999, None, b"", &[]);
        b.push(1_005, Some(b""), b"world", &[]);
        b.finish()
    }

    #[test]
    fn builder_output_validates_and_decodes() {
        let mut bytes = sample();
        assign(&mut bytes, 42, 7);
        let header = validate(&bytes).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.append_time, 7);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.first_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_005);
        let records = decode_records(&Bytes::from(bytes)).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, 42);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(
            records[0].headers,
            vec![("trace".to_string(), Bytes::from_static(b"abc"))]
        );
        assert_eq!(records[1].timestamp, 999);
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(records[2].value, Bytes::from_static(b"world"));
    }

    #[test]
    fn assigning_offsets_keeps_the_crc_valid() {
        let mut bytes = sample();
        for (offset, time) in [(u64::MAX - 10, i64::MAX), (0, 0), (7, -1)] {
            assign(&mut bytes, offset, time);
            let header = check(&bytes).unwrap();
            assert_eq!((header.base_offset, header.append_time), (offset, time));
            assert_eq!(header.crc, compute_crc(&bytes), "updated = recomputed");
        }
    }

    #[test]
    fn every_byte_but_the_crc_is_protected_by_it() {
        let mut bytes = sample();
        assign(&mut bytes, 1000, 1_700_000_000_000);
        for i in (0..bytes.len()).filter(|i| !(CRC_AT..CRC_AT + 4).contains(i)) {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    check(&damaged).is_err(),
                    "flip of bit {bit} at {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn record_limit_counts_the_whole_encoded_record() {
        let bytes = sample();
        // The first record: 1 (length) + 1 (delta) + 1 + 2 (key) + 1 + 5 (value)
        // + 1 (count) + 1 + 5 + 1 + 3 (header) = 22 bytes.
        assert!(validate_limited(&bytes, 22).is_ok());
        assert!(matches!(
            validate_limited(&bytes, 21),
            Err(BatchError::RecordTooLarge {
                index: 0,
                size: 22,
                max: 21
            })
        ));
    }

    #[test]
    fn find_record_picks_by_offset() {
        let mut bytes = sample();
        assign(&mut bytes, 10, 0);
        let bytes = Bytes::from(bytes);
        assert_eq!(find_record(&bytes, 11).unwrap().unwrap().timestamp, 999);
        assert!(find_record(&bytes, 13).unwrap().is_none());
        assert!(find_record(&bytes, 9).unwrap().is_none());
    }

    #[test]
    fn varint_edges() {
        for n in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, n);
            assert_eq!(buf.len(), varint_len(n));
            let mut slice = &buf[..];
            assert_eq!(read_varint(&mut slice), Some(n));
            assert!(slice.is_empty());
        }
        // Eleven continuation bytes, and a tenth byte that overflows 64 bits.
        assert_eq!(read_varint(&mut &[0xff; 11][..]), None);
        assert_eq!(
            read_varint(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]),
            None
        );
        assert_eq!(read_varint(&mut &[0x80][..]), None);
        for n in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
    }

    /// Re-signs a hand-edited batch so that only the edit, not the CRC, is
    /// what the decoder sees.
    fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
        reseal(&mut bytes);
        bytes
    }

    #[test]
    fn adversarial_counts_are_rejected_without_work() {
        let mut bytes = sample();
        bytes[COUNT_AT..COUNT_AT + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let bytes = resign(bytes);
        assert!(matches!(
            validate(&bytes),
            Err(BatchError::CountMismatch { .. })
        ));
        // decode_records bounds its reservation by the input, then fails.
        assert!(decode_records(&Bytes::from(bytes)).is_err());
    }

    #[test]
    fn adversarial_lengths_are_rejected() {
        // One record whose value length claims 2^63 bytes.
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&[
            20, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0,
        ]);
        bytes.extend_from_slice(&[0; 8]);
        let len = bytes.len() as u32;
        bytes[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        bytes[MAGIC_AT] = MAGIC;
        bytes[COUNT_AT..COUNT_AT + 4].copy_from_slice(&1u32.to_be_bytes());
        let bytes = resign(bytes);
        assert!(matches!(
            validate(&bytes),
            Err(BatchError::BadRecord { .. })
        ));
        // A header count of 2^40 in an otherwise fine record.
        let mut b = BatchBuilder::new();
        b.push(0, None, b"v", &[]);
        let mut bytes = b.finish();
        let last = bytes.len() - 1;
        bytes[last] = 0x80; // header_count varint now continues past the end
        let bytes = resign(bytes);
        assert!(validate(&bytes).is_err());
        // A batch_length far beyond the buffer.
        let mut bytes = sample();
        bytes[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            BatchIter::new(&bytes).next(),
            Some(Err(BatchError::Truncated { .. }))
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate(&bytes);
            let _ = check(&bytes);
            for item in BatchIter::new(&bytes) { let _ = item; }
            if let Ok(iter) = RecordIter::new(&bytes) { for r in iter { let _ = r; } }
            let owned = Bytes::from(bytes);
            let _ = decode_records(&owned);
            let _ = find_record(&owned, 3);
        }

        #[test]
        fn decoders_never_panic_on_mutated_batches(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            resigned in any::<bool>(),
        ) {
            let mut bytes = sample();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if resigned && bytes.len() >= HEADER_LEN { bytes = resign(bytes); }
            if validate(&bytes).is_ok() {
                // Whatever validate accepts, the record decoder must handle.
                let owned = Bytes::from(bytes);
                decode_records(&owned).unwrap();
            } else {
                let _ = decode_records(&Bytes::from(bytes));
            }
        }

        #[test]
        fn encode_then_decode_is_identity(
            records in proptest::collection::vec(
                (any::<i64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::collection::vec(any::<u8>(), 0..200),
                 proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..8)), 0..3)),
                1..20),
            base in any::<u64>(),
        ) {
            let mut b = BatchBuilder::new();
            let mut size = HEADER_LEN;
            for (ts, key, value, headers) in &records {
                let hs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                size += BatchBuilder::record_size(ts.wrapping_sub(records[0].0), key.as_deref(), value, &hs);
                b.push(*ts, key.as_deref(), value, &hs);
            }
            prop_assert_eq!(b.size(), size);
            let mut bytes = b.finish();
            let base = base / 2; // leave room for the offsets of the batch
            assign(&mut bytes, base, 5);
            validate(&bytes).unwrap();
            let decoded = decode_records(&Bytes::from(bytes)).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (r, (ts, key, value, headers))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset, base + i as u64);
                prop_assert_eq!(r.timestamp, *ts);
                prop_assert_eq!(r.key.as_deref(), key.as_deref());
                prop_assert_eq!(&r.value[..], &value[..]);
                prop_assert_eq!(r.headers.len(), headers.len());
            }
        }
    }
}
