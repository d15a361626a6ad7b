//! Kafka's default partitioner (issue 11): a keyed record goes to partition
//! `(murmur2(key) & 0x7fffffff) % partitions`, as with the Java client and
//! librdkafka's `murmur2_random`, so a key lands on the same partition
//! number whichever of these clients produced it. A keyless record goes to
//! the current "sticky" partition, which moves on, round robin, each time
//! a batch is closed: one partition per batch, all of them in turn.
//! The producer uses it for every record it is not told the partition of.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): 32-bit
/// MurmurHash2 with seed `0x9747b28c`, reading the input as little-endian
/// 4-byte words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in words.by_ref() {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (at least 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

/// Chooses partitions as Kafka's default partitioner does.
#[derive(Debug, Default)]
pub struct Partitioner {
    /// The partition keyless records go to, until the next batch.
    sticky: AtomicU32,
}

impl Partitioner {
    pub fn new() -> Partitioner {
        Partitioner::default()
    }

    /// Where a record goes among `partitions` (at least 1).
    pub fn partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.sticky.load(Ordering::Relaxed) % partitions.max(1),
        }
    }

    /// A batch of keyless records was closed: the next ones go to the next
    /// partition.
    pub fn batch_closed(&self) {
        self.sticky.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{:?}", String::from_utf8_lossy(key));
        }
    }

    /// Inputs Kafka's vectors leave out: bytes of 0x80 and above (whose sign
    /// Java masks off), with tails of 1, 2 and 3 bytes. The values are
    /// kafka-python 2.0.2's (`kafka.partitioner.default.murmur2`, a port of
    /// the Java code that returns the hash as unsigned 32 bits).
    #[test]
    fn murmur2_matches_kafka_python_on_high_bytes() {
        let cases: [(&[u8], u32); 7] = [
            (&[128], 857_690_492),
            (&[255, 128, 144], 2_291_026_116),
            (&[129, 130, 131, 132, 133, 134], 778_216_058),
            (&[255, 254, 253, 252, 251], 524_068_735),
            (&[0, 1, 2, 3, 4, 5, 6, 7, 8], 1_671_170_726),
            (
                &[
                    200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212,
                ],
                3_710_466_286,
            ),
            ("héllo wörld".as_bytes(), 439_213_890),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key) as u32, hash, "{key:?}");
        }
    }

    #[test]
    fn a_key_always_maps_to_one_partition() {
        // murmur2("foobar") is -790332482: & 0x7fffffff is 1357151166.
        assert_eq!(partition_for_key(b"foobar", 12), 1_357_151_166 % 12);
        let p = Partitioner::new();
        for n in 1..20 {
            let first = p.partition(Some(b"customer-17"), n);
            p.batch_closed();
            assert_eq!(p.partition(Some(b"customer-17"), n), first);
            assert!(first < n);
        }
    }

    #[test]
    fn keyless_records_stick_to_a_partition_per_batch_and_rotate() {
        let p = Partitioner::new();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let a = p.partition(None, 3);
            assert_eq!(p.partition(None, 3), a, "one partition per batch");
            seen.push(a);
            p.batch_closed();
        }
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(p.partition(None, 0), 0, "no partitions count as one");
    }
}
