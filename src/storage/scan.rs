//! Recovery's scan of a store: from a batch boundary to the end of the file,
//! it finds the valid batches, the damaged ranges between them and a torn
//! tail (see `segment` for what recovery then does with each).
//!
//! The store is read with `pread` through a sliding window, never through a
//! memory map: an I/O error on a mapped page is a SIGBUS, which at start-up
//! is a crash loop, where a failed read is an error the broker reports for
//! that topic alone.

use super::error::Result;
use super::index::IndexEntry;
use super::store::Store;
use crate::batch::{self, BatchHeader, HEADER_LEN, MAGIC};

/// Where a stored batch's magic byte and leader epoch sit.
const MAGIC_AT: usize = 16;
const EPOCH_AT: usize = 12;

/// Bytes read at a time; a batch larger than this is read whole.
const WINDOW: usize = 8 << 20;

/// What a scan of a store found.
pub(crate) struct Scan {
    /// An index entry per batch or damaged range, with the batch's time
    /// (`None` for damage).
    pub batches: Vec<(IndexEntry, Option<i64>)>,
    /// Damaged ranges that valid batches follow: (position, length).
    pub damaged: Vec<(u64, u64)>,
    /// End of the last good batch (or of the scan start).
    pub good_end: u64,
    /// Offset after the last good batch (or a damaged range's offsets).
    pub next_offset: u64,
    /// Start of trailing bytes that hold no valid batch.
    pub tail: Option<u64>,
}

impl Scan {
    /// Records a damaged range starting at `pos` that holds the offsets from
    /// the expected one up to `resume`.
    fn damage(&mut self, base: u64, pos: u64, len: u64, resume: u64) {
        let rel = (self.next_offset - base) as u32;
        self.batches.push((
            IndexEntry {
                rel,
                pos: pos as u32,
            },
            None,
        ));
        self.damaged.push((pos, len));
        self.next_offset = resume.max(self.next_offset);
    }
}

/// A window of the store's bytes, refilled with `pread` as the scan moves.
struct Window<'a> {
    store: &'a Store,
    size: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(store: &'a Store, size: u64) -> Window<'a> {
        Window {
            store,
            size,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// Bytes `[pos, pos + len)`, or `None` where they pass the end of the
    /// store.
    fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>> {
        let Some(end) = pos.checked_add(len as u64).filter(|&e| e <= self.size) else {
            return Ok(None);
        };
        if pos < self.start || end > self.start + self.bytes.len() as u64 {
            let want = (len.max(WINDOW) as u64).min(self.size - pos);
            self.bytes = self.store.read_at(pos, want as usize)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.bytes[at..at + len]))
    }
}

/// Scans the store from `from` (a batch boundary) expecting offset
/// `expected`; in a sealed segment `limit` is the next segment's base.
/// `hints` are store positions the old index names as batch starts.
pub(crate) fn scan_store(
    store: &Store,
    base: u64,
    from: u64,
    expected: u64,
    limit: Option<u64>,
    hints: &[u32],
) -> Result<Scan> {
    let mut scan = Scan {
        batches: Vec::new(),
        damaged: Vec::new(),
        good_end: from,
        next_offset: expected,
        tail: None,
    };
    let size = store.file_len()?;
    let mut window = Window::new(store, size);
    let mut pos = from;
    while pos < size {
        if let Some(h) = batch_at(&mut window, pos, base, scan.next_offset, true)? {
            let rel = (h.base_offset as u64 - base) as u32;
            scan.batches.push((
                IndexEntry {
                    rel,
                    pos: pos as u32,
                },
                Some(h.max_timestamp),
            ));
            pos += h.size() as u64;
            scan.good_end = pos;
            scan.next_offset = h.next_offset() as u64;
            continue;
        }
        // Not a good batch: look for the next one further on.
        // A batch-shaped run of bytes inside damage (a record's value may hold
        // a copy of a stored batch) must not pass for data: a resync point
        // counts only where the old index names a batch, or where valid
        // batches run from it to the very end of the segment.
        let mut next = None;
        for q in pos + 1..size {
            let Some(h) = batch_at(&mut window, q, base, scan.next_offset, false)? else {
                continue;
            };
            if hints.binary_search(&(q as u32)).is_ok()
                || chains_to_end(&mut window, q, base, &h, limit)?
            {
                next = Some((q, h));
                break;
            }
        }
        match (next, limit) {
            (Some((q, h)), _) => {
                // Damage followed by valid data: keep it, index it, fence it.
                tracing::warn!(
                    store = %store.path().display(),
                    position = pos,
                    bytes = q - pos,
                    offsets = %format!("{}..{}", scan.next_offset, h.base_offset),
                    "damaged range in segment; its records will not be served"
                );
                scan.damage(base, pos, q - pos, h.base_offset as u64);
                pos = q;
            }
            (None, Some(limit)) => {
                // A sealed segment is never cut: the rest is one fenced range.
                scan.damage(base, pos, size - pos, limit);
                scan.good_end = size;
                break;
            }
            (None, None) => {
                scan.tail = Some(pos);
                break;
            }
        }
    }
    if let Some(limit) = limit.filter(|&l| l > scan.next_offset) {
        // The store lacks offsets that its successor's base says it holds.
        scan.damage(base, size, 0, limit);
    }
    Ok(scan)
}

/// Whether valid batches run from `first` (at `pos`) to the end of the
/// store exactly, ending at `limit` when there is one.
fn chains_to_end(
    window: &mut Window<'_>,
    pos: u64,
    base: u64,
    first: &BatchHeader,
    limit: Option<u64>,
) -> Result<bool> {
    let mut pos = pos + first.size() as u64;
    let mut next = first.next_offset() as u64;
    while pos < window.size {
        match batch_at(window, pos, base, next, true)? {
            Some(h) => {
                pos += h.size() as u64;
                next = h.next_offset() as u64;
            }
            None => return Ok(false),
        }
    }
    Ok(limit.is_none_or(|l| next == l))
}

/// The header of a valid batch starting at `pos` whose offsets fit the
/// segment: exactly `expected` when `exact`, otherwise at or after it (a
/// resynchronisation after damage). With the offset chain, leader epoch 0
/// (all this broker writes) and magic 2 cover what Kafka's CRC leaves out.
fn batch_at(
    window: &mut Window<'_>,
    pos: u64,
    base: u64,
    expected: u64,
    exact: bool,
) -> Result<Option<BatchHeader>> {
    let Some(head) = window.get(pos, HEADER_LEN)? else {
        return Ok(None);
    };
    // Cheap filters first: a resync tries every byte position.
    if head[MAGIC_AT] != MAGIC as u8 || head[EPOCH_AT..EPOCH_AT + 4] != [0; 4] {
        return Ok(None);
    }
    let Ok(h) = BatchHeader::parse(head) else {
        return Ok(None);
    };
    // A negative offset turns into one above MAX_OFFSET: never expected.
    let first = h.base_offset as u64;
    let offset_fits = if exact {
        first == expected
    } else {
        first >= expected
    };
    if !offset_fits || (h.next_offset() as u64).wrapping_sub(base) > u64::from(u32::MAX) {
        return Ok(None);
    }
    let Some(bytes) = window.get(pos, h.size())? else {
        return Ok(None);
    };
    Ok(batch::check(bytes).ok())
}
