//! Idempotent producers' state, per log: for each producer id seen in a
//! batch header, its epoch and the sequence numbers and offsets of its last
//! [`KEEP`] batches. With it the log answers a retried batch (a producer
//! that lost the acknowledgement sends the same batch again) with the
//! offsets it was first stored at, storing nothing, and refuses batches that
//! skip sequence numbers or come from a fenced (older) epoch. The rules are
//! Kafka's, so that Kafka clients' idempotent producers behave as they do
//! against Kafka:
//!
//! - a batch without a producer id (`-1`) is not checked;
//! - an epoch below the producer's current one is refused
//!   ([`StorageError::InvalidProducerEpoch`]);
//! - a new (higher) epoch must start at sequence 0, unless the producer's
//!   state was lost (retention removed its batches);
//! - in the current epoch, a batch whose first and last sequence match one
//!   of the last five is a duplicate; otherwise its first sequence must
//!   follow the last one stored (wrapping from `i32::MAX` to 0), or it is
//!   refused ([`StorageError::OutOfOrderSequence`]);
//! - an unknown producer id is accepted at any sequence.
//!
//! # Durability
//!
//! The state is derived from the batch headers in the log, so it can always
//! be rebuilt by reading them. To keep that read short, the log writes a
//! snapshot at every roll and at close; at open it loads the snapshot and
//! reads only the batches after the offset it covers (after `kill -9`, the
//! active segment). A missing or damaged snapshot means reading the whole
//! log.
//!
//! # Snapshot file (`producers.snapshot`), big-endian
//!
//! ```text
//! 0   4  magic "SPPS"
//! 4   2  version (1)
//! 6   8  covered: offset below which every batch is reflected
//! 14  4  n: number of producers
//! 18  .. n entries:
//!        8  producer id     2  epoch     8  last seen (ms since the epoch)
//!        1  k: batches kept (1 to 5), oldest first, each:
//!           4  first sequence   4  last sequence
//!           8  base offset      8  next offset (after its last record)
//! end 4  crc32c of every byte before it
//! ```

use std::collections::{HashMap, VecDeque};

use super::error::{Result, StorageError};

/// Batches remembered per producer (Kafka's limit on in-flight requests
/// for an idempotent producer is also five).
pub const KEEP: usize = 5;

/// Producers remembered per log: past this, the one idle longest is
/// forgotten (a client can put any producer id in a header; the state must
/// not grow without bound).
pub const MAX_PRODUCERS: usize = 10_000;

/// A producer silent for this long is forgotten when the next snapshot is
/// written (Kafka's `producer.id.expiration.ms` default: one day).
pub const IDLE_MS: i64 = 24 * 60 * 60 * 1000;

pub const SNAPSHOT_NAME: &str = "producers.snapshot";
const MAGIC: &[u8; 4] = b"SPPS";
const VERSION: u16 = 1;
const HEADER: usize = 18;
const BATCH_META: usize = 24;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    first_seq: i32,
    last_seq: i32,
    base: u64,
    next: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<Meta>,
    last_seen: i64,
}

/// A batch's producer fields, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl ProducerBatch {
    /// The producer fields of a header, or `None` for a batch without a
    /// producer id.
    pub fn of(header: &crate::batch::BatchHeader) -> Option<ProducerBatch> {
        (header.producer_id >= 0).then(|| ProducerBatch {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: add_seq(header.base_sequence, header.last_offset_delta),
        })
    }
}

/// Sequence numbers run from 0 to `i32::MAX` and wrap to 0.
fn add_seq(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// What the check of a batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Store it.
    Fresh,
    /// Already stored at `[base, next)`: answer with that, store nothing.
    Duplicate { base: u64, next: u64 },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Producers {
    map: HashMap<i64, Entry>,
}

impl Producers {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Checks a batch against the producer's state (see the module's rules).
    pub fn check(&self, b: &ProducerBatch) -> Result<Check> {
        let Some(entry) = self.map.get(&b.producer_id) else {
            return Ok(Check::Fresh);
        };
        if b.epoch < entry.epoch {
            return Err(StorageError::InvalidProducerEpoch {
                producer_id: b.producer_id,
                epoch: b.epoch,
                current: entry.epoch,
            });
        }
        if b.epoch > entry.epoch {
            if b.first_seq != 0 && !entry.batches.is_empty() {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id: b.producer_id,
                    expected: 0,
                    got: b.first_seq,
                });
            }
            return Ok(Check::Fresh);
        }
        if let Some(m) = entry
            .batches
            .iter()
            .find(|m| m.first_seq == b.first_seq && m.last_seq == b.last_seq)
        {
            return Ok(Check::Duplicate {
                base: m.base,
                next: m.next,
            });
        }
        match entry.batches.back() {
            Some(last) if add_seq(last.last_seq, 1) != b.first_seq => {
                Err(StorageError::OutOfOrderSequence {
                    producer_id: b.producer_id,
                    expected: add_seq(last.last_seq, 1),
                    got: b.first_seq,
                })
            }
            _ => Ok(Check::Fresh),
        }
    }

    /// Records a batch stored at `[base, next)` at time `now` (ms).
    pub fn record(&mut self, b: &ProducerBatch, base: u64, next: u64, now: i64) {
        if !self.map.contains_key(&b.producer_id) && self.map.len() >= MAX_PRODUCERS {
            if let Some(idlest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(&id, _)| id)
            {
                self.map.remove(&idlest);
            }
        }
        let entry = self.map.entry(b.producer_id).or_insert_with(|| Entry {
            epoch: b.epoch,
            batches: VecDeque::with_capacity(KEEP),
            last_seen: now,
        });
        if entry.epoch != b.epoch {
            entry.epoch = b.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == KEEP {
            entry.batches.pop_front();
        }
        entry.batches.push_back(Meta {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            base,
            next,
        });
        entry.last_seen = entry.last_seen.max(now);
    }

    /// Forgets producers whose every remembered batch is below `lowest` (the
    /// log no longer holds them), as Kafka does after retention.
    pub fn forget_below(&mut self, lowest: u64) {
        self.map
            .retain(|_, e| e.batches.back().is_some_and(|m| m.next > lowest));
    }

    /// Forgets producers silent since before `now - IDLE_MS`.
    pub fn expire(&mut self, now: i64) {
        let cutoff = now.saturating_sub(IDLE_MS);
        self.map.retain(|_, e| e.last_seen >= cutoff);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The snapshot bytes (see the module docs), covering offsets below
    /// `covered`.
    pub fn encode(&self, covered: u64) -> Vec<u8> {
        let per: usize = self
            .map
            .values()
            .map(|e| 19 + e.batches.len() * BATCH_META)
            .sum();
        let mut out = Vec::with_capacity(HEADER + per + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&covered.to_be_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_be_bytes());
        // Sorted, so that the same state always makes the same bytes.
        let mut ids: Vec<_> = self.map.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.map[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_seen.to_be_bytes());
            out.push(e.batches.len() as u8);
            for m in &e.batches {
                out.extend_from_slice(&m.first_seq.to_be_bytes());
                out.extend_from_slice(&m.last_seq.to_be_bytes());
                out.extend_from_slice(&m.base.to_be_bytes());
                out.extend_from_slice(&m.next.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a snapshot: the state and the offset it covers, or why the
    /// bytes are not a valid snapshot.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(u64, Producers), String> {
        if bytes.len() < HEADER + 4 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        if &body[..4] != MAGIC {
            return Err("bad magic".into());
        }
        let mut r = Reader { bytes: body, at: 4 };
        let version = r.u16()?;
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let covered = r.u64()?;
        let n = r.u32()? as usize;
        // Each entry takes at least 19 + 24 bytes: a count that could not
        // fit is damage, not a reason to allocate.
        if n > (body.len() - HEADER) / (19 + BATCH_META) {
            return Err(format!("{n} producers cannot fit in {} bytes", body.len()));
        }
        let mut map = HashMap::with_capacity(n);
        for _ in 0..n {
            let id = r.u64()? as i64;
            let epoch = r.u16()? as i16;
            let last_seen = r.u64()? as i64;
            let k = r.u8()? as usize;
            if k == 0 || k > KEEP {
                return Err(format!("producer {id} keeps {k} batches"));
            }
            let mut batches = VecDeque::with_capacity(KEEP);
            for _ in 0..k {
                let first_seq = r.u32()? as i32;
                let last_seq = r.u32()? as i32;
                let base = r.u64()?;
                let next = r.u64()?;
                if next < base {
                    return Err(format!("producer {id}: batch ends before it starts"));
                }
                batches.push_back(Meta {
                    first_seq,
                    last_seq,
                    base,
                    next,
                });
            }
            map.insert(
                id,
                Entry {
                    epoch,
                    batches,
                    last_seen,
                },
            );
        }
        if r.at != body.len() {
            return Err(format!("{} bytes after the last entry", body.len() - r.at));
        }
        Ok((covered, Producers { map }))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let end = self.at + N;
        let slice = self.bytes.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(slice.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        self.take().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, first: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: pid,
            epoch,
            first_seq: first,
            last_seq: add_seq(first, count - 1),
        }
    }

    #[test]
    fn a_retry_of_any_of_the_last_five_is_a_duplicate() {
        let mut p = Producers::default();
        for i in 0..7 {
            let b = batch(1, 0, i * 10, 10);
            assert_eq!(p.check(&b).unwrap(), Check::Fresh);
            p.record(&b, i as u64 * 10, i as u64 * 10 + 10, 0);
        }
        for i in 2..7 {
            assert_eq!(
                p.check(&batch(1, 0, i * 10, 10)).unwrap(),
                Check::Duplicate {
                    base: i as u64 * 10,
                    next: i as u64 * 10 + 10
                }
            );
        }
        // The sixth-newest is forgotten: it is out of sequence now.
        assert!(matches!(
            p.check(&batch(1, 0, 10, 10)),
            Err(StorageError::OutOfOrderSequence {
                expected: 70,
                got: 10,
                ..
            })
        ));
    }

    #[test]
    fn gaps_old_epochs_and_new_epochs() {
        let mut p = Producers::default();
        let b = batch(7, 3, 0, 5);
        p.record(&b, 0, 5, 0);
        assert!(matches!(
            p.check(&batch(7, 3, 6, 1)),
            Err(StorageError::OutOfOrderSequence {
                expected: 5,
                got: 6,
                ..
            })
        ));
        assert!(matches!(
            p.check(&batch(7, 2, 5, 1)),
            Err(StorageError::InvalidProducerEpoch {
                epoch: 2,
                current: 3,
                ..
            })
        ));
        assert!(matches!(
            p.check(&batch(7, 4, 5, 1)),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(p.check(&batch(7, 4, 0, 1)).unwrap(), Check::Fresh);
        // Unknown producers start anywhere.
        assert_eq!(p.check(&batch(8, 0, 12345, 1)).unwrap(), Check::Fresh);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut p = Producers::default();
        let b = batch(1, 0, i32::MAX - 1, 4);
        assert_eq!(b.last_seq, 1);
        p.record(&b, 0, 4, 0);
        assert_eq!(p.check(&batch(1, 0, 2, 1)).unwrap(), Check::Fresh);
        assert!(p.check(&batch(1, 0, 3, 1)).is_err());
    }

    #[test]
    fn retention_and_idleness_forget_producers() {
        let mut p = Producers::default();
        p.record(&batch(1, 0, 0, 1), 0, 1, 0);
        p.record(&batch(2, 0, 0, 1), 1, 2, IDLE_MS);
        p.forget_below(1);
        assert_eq!(p.len(), 1);
        p.record(&batch(3, 0, 0, 1), 2, 3, 2 * IDLE_MS + 1);
        p.expire(2 * IDLE_MS + 1);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.check(&batch(3, 0, 0, 1)).unwrap(),
            Check::Duplicate { base: 2, next: 3 }
        );
    }

    #[test]
    fn the_map_is_bounded() {
        let mut p = Producers::default();
        for id in 0..MAX_PRODUCERS as i64 + 10 {
            p.record(&batch(id, 0, 0, 1), id as u64, id as u64 + 1, id);
        }
        assert_eq!(p.len(), MAX_PRODUCERS);
        // The idlest went first.
        assert_eq!(p.check(&batch(0, 0, 5, 1)).unwrap(), Check::Fresh);
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut p = Producers::default();
        for i in 0..7 {
            p.record(&batch(1, 2, i, 1), i as u64, i as u64 + 1, 99);
        }
        p.record(&batch(-5 & i64::MAX, 0, 0, 3), 7, 10, 100);
        let bytes = p.encode(10);
        assert_eq!(Producers::decode(&bytes).unwrap(), (10, p.clone()));
        for cut in 0..bytes.len() {
            assert!(Producers::decode(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Producers::decode(&bad).is_err(), "flip at {i}");
        }
    }
}
