//! Issue 11: Spool's RecordBatch v2 codec (`spool::batch`) against
//! the `kafka-protocol` crate's encoder and decoder, the reference Kafka
//! clients in Rust use. Batches either side builds, the other reads back
//! record for record; built from the same records, the bytes are the same.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};
use proptest::prelude::*;
use spool::batch::{self, BatchBuilder};

/// One record as a test writes it: timestamp, key, value, headers.
type Plain = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Bytes, or none: mostly short, sometimes past 127 and 16,383 bytes
/// (length varints of two and three bytes).
fn bytes_or_none() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(prop_oneof![
        16 => proptest::collection::vec(any::<u8>(), 0..40),
        3 => proptest::collection::vec(any::<u8>(), 100..400),
        1 => proptest::collection::vec(any::<u8>(), 16_384..16_500),
    ])
}

/// Records with non-decreasing timestamps (so both encoders pick the first
/// record's timestamp as the base, and build the same bytes) and unique
/// header names of any Unicode (the crate keeps headers in a map).
fn records() -> impl Strategy<Value = Vec<Plain>> {
    records_stepping(0i64..100_000)
}

/// Records whose timestamps may also go back (negative deltas, which the
/// crate encodes against the smallest timestamp instead of the first).
fn records_any_order() -> impl Strategy<Value = Vec<Plain>> {
    records_stepping(-10_000_000i64..10_000_000)
}

fn records_stepping(steps: std::ops::Range<i64>) -> impl Strategy<Value = Vec<Plain>> {
    proptest::collection::vec(
        (
            steps,
            bytes_or_none(),
            bytes_or_none(),
            proptest::collection::btree_map("\\PC{1,6}", bytes_or_none(), 0..3),
        ),
        1..20,
    )
    .prop_map(|rs| {
        let mut at = 1_700_000_000_000i64;
        rs.into_iter()
            .map(|(step, k, v, h)| {
                at += step;
                (at, k, v, h.into_iter().collect())
            })
            .collect()
    })
}

fn ours(records: &[Plain]) -> Vec<u8> {
    builder(records).finish()
}

fn builder(records: &[Plain]) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for (ts, k, v, h) in records {
        let headers: Vec<(&str, Option<&[u8]>)> =
            h.iter().map(|(n, v)| (n.as_str(), v.as_deref())).collect();
        b.push(*ts, k.as_deref(), v.as_deref(), &headers);
    }
    b
}

fn theirs(records: &[Plain]) -> Vec<u8> {
    theirs_compressed(records, Compression::None)
}

fn theirs_compressed(records: &[Plain], compression: Compression) -> Vec<u8> {
    let krecords: Vec<KRecord> = records
        .iter()
        .enumerate()
        .map(|(i, (ts, k, v, h))| KRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The crate starts a new batch wherever offset - sequence
            // changes; this keeps one batch with base sequence -1.
            sequence: i as i32 - 1,
            timestamp: *ts,
            key: k.clone().map(Bytes::from),
            value: v.clone().map(Bytes::from),
            headers: h
                .iter()
                .map(|(n, v)| (StrBytes::from_string(n.clone()), v.clone().map(Bytes::from)))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &krecords,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("the crate encodes");
    buf.to_vec()
}

/// One decoded record as a plain one, checking it is the `index`th.
fn plain(
    index: usize,
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: impl Iterator<Item = (String, Option<Bytes>)>,
) -> Plain {
    assert_eq!(offset, index as i64);
    (
        timestamp,
        key.map(|b| b.to_vec()),
        value.map(|b| b.to_vec()),
        headers.map(|(n, v)| (n, v.map(|b| b.to_vec()))).collect(),
    )
}

/// What `spool::batch` reads from a batch, as plain records.
fn read_ours(batch: &[u8]) -> Vec<Plain> {
    batch::validate(batch, usize::MAX).expect("a valid batch");
    batch::decode_any(&Bytes::copy_from_slice(batch), 1 << 20)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            plain(
                i,
                r.offset as i64,
                r.timestamp,
                r.key,
                r.value,
                r.headers.into_iter(),
            )
        })
        .collect()
}

/// What the crate reads from a batch, as plain records.
fn read_theirs(batch: &[u8]) -> Vec<Plain> {
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut buf).expect("the crate decodes");
    set.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let headers = r.headers.into_iter().map(|(n, v)| (n.to_string(), v));
            plain(i, r.offset, r.timestamp, r.key, r.value, headers)
        })
        .collect()
}

proptest! {
    #[test]
    fn the_crate_reads_what_spool_builds(rs in records()) {
        prop_assert_eq!(read_theirs(&ours(&rs)), rs);
    }

    #[test]
    fn spool_reads_what_the_crate_builds(rs in records()) {
        prop_assert_eq!(read_ours(&theirs(&rs)), rs);
    }

    #[test]
    fn records_out_of_time_order_read_back_both_ways(rs in records_any_order()) {
        prop_assert_eq!(read_theirs(&ours(&rs)), rs.clone());
        prop_assert_eq!(read_ours(&theirs(&rs)), rs);
    }

    #[test]
    fn both_build_the_same_bytes(rs in records()) {
        let mut theirs = theirs(&rs);
        // The crate copies the records' leader epoch; a producer sends -1,
        // as Spool's builder does.
        prop_assert_eq!(&theirs[12..16], &(-1i32).to_be_bytes()[..]);
        prop_assert_eq!(ours(&rs), std::mem::take(&mut theirs));
    }

    /// A batch from the crate, with any byte under the CRC changed and the
    /// CRC recomputed, is refused with an error or read back: never a panic.
    #[test]
    fn edited_batches_never_panic(rs in records(), at in any::<usize>(), value in any::<u8>()) {
        let mut batch = theirs(&rs);
        let at = batch::CRC_START + at % (batch.len() - batch::CRC_START);
        batch[at] = value;
        batch::reseal(&mut batch);
        let _ = batch::validate(&batch, usize::MAX);
        let _ = batch::decode_records(&Bytes::from(batch));
    }
}

const CODECS: [(batch::Codec, Compression); 4] = [
    (batch::Codec::Gzip, Compression::Gzip),
    (batch::Codec::Snappy, Compression::Snappy),
    (batch::Codec::Lz4, Compression::Lz4),
    (batch::Codec::Zstd, Compression::Zstd),
];

proptest! {
    /// Compressed batches, every codec, both ways: Spool's client writes
    /// them as Kafka's clients read them, and reads what they write.
    #[test]
    fn compressed_batches_read_back_both_ways(rs in records(), which in 0usize..4) {
        let (ours_codec, theirs_codec) = CODECS[which];
        let built = builder(&rs).finish_compressed(ours_codec);
        let header = batch::validate(&built, usize::MAX).unwrap();
        prop_assert_eq!(header.codec().unwrap(), ours_codec);
        prop_assert_eq!(read_theirs(&built), rs.clone());
        let theirs = theirs_compressed(&rs, theirs_codec);
        prop_assert_eq!(
            batch::BatchHeader::parse(&theirs).unwrap().codec().unwrap(),
            ours_codec
        );
        prop_assert_eq!(read_ours(&theirs), rs);
    }
}

/// A small batch that decompresses to far more than the reader allows is
/// refused before that memory is taken.
#[test]
fn a_decompression_bomb_is_refused() {
    let rs: Vec<Plain> = vec![(1_700_000_000_000, None, Some(vec![0u8; 4 << 20]), vec![])];
    for (codec, _) in CODECS {
        let batch = builder(&rs).finish_compressed(codec);
        assert!(batch.len() < 1 << 20, "{codec:?} compresses zeros");
        let e = batch::decode_any(&Bytes::from(batch), 1 << 20).unwrap_err();
        assert!(
            e.to_string().contains("more than 1048576 bytes"),
            "{codec:?}: {e}"
        );
    }
}

proptest! {
    /// Compressed batches with a byte changed (and the CRC recomputed) are
    /// refused or read back, within the limit: never a panic.
    #[test]
    fn edited_compressed_batches_never_panic(
        rs in records(), which in 0usize..4, at in any::<usize>(), value in any::<u8>()
    ) {
        let mut batch = builder(&rs).finish_compressed(CODECS[which].0);
        let at = batch::CRC_START + at % (batch.len() - batch::CRC_START);
        batch[at] = value;
        batch::reseal(&mut batch);
        if let Ok(records) = batch::decode_any(&Bytes::from(batch), 1 << 16) {
            prop_assert!(records.len() <= 1 << 16);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]
    /// Issue 11: batches built by Spool's client and by the `kafka-protocol`
    /// crate, plain and compressed, append to a log and read back as they
    /// were sent: byte for byte but for the two fields outside the CRC the
    /// log sets (base offset, leader epoch), with the producer's CRC, and
    /// decoding to the same records.
    #[test]
    fn built_either_way_batches_append_and_read_back_identically(
        rs in records(), which in 0usize..4
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = spool::storage::Log::open(dir.path(), spool::storage::LogConfig {
            max_timestamp_ahead: None,
            ..spool::storage::LogConfig::default()
        }).unwrap();
        let (ours_codec, theirs_codec) = CODECS[which];
        let sent = [
            ours(&rs),
            theirs(&rs),
            builder(&rs).finish_compressed(ours_codec),
            theirs_compressed(&rs, theirs_codec),
        ];
        let mut bases = Vec::new();
        for batch in &sent {
            let mut appending = batch.clone();
            bases.push(log.append(&mut appending).unwrap().base_offset);
        }
        let read = log.read_batches(0, u64::MAX).unwrap();
        let stored: Vec<&[u8]> = batch::BatchIter::new(&read.bytes)
            .map(|b| b.unwrap().1)
            .collect();
        prop_assert_eq!(stored.len(), sent.len());
        for ((stored, sent), base) in stored.iter().zip(&sent).zip(&bases) {
            let header = batch::check_stored(stored, *base as i64, sent.len()).unwrap();
            prop_assert_eq!(header.base_offset, *base as i64);
            prop_assert_eq!(&stored[8..12], &sent[8..12]);
            prop_assert_eq!(&stored[12..16], &[0u8; 4][..]);
            prop_assert_eq!(&stored[16..], &sent[16..]);
            let records = batch::decode_any(&Bytes::copy_from_slice(stored), 1 << 24).unwrap();
            let back: Vec<Plain> = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    plain(i, r.offset as i64 - *base as i64, r.timestamp, r.key, r.value, r.headers.into_iter())
                })
                .collect();
            prop_assert_eq!(&back, &rs);
        }
    }
}
