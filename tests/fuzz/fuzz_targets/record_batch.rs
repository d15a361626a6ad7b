//! The record batch codec of `src/batch.rs` (Kafka's RecordBatch v2, the
//! one format Spool stores and sends) on arbitrary bytes, compressed or
//! not: what a producer sends and what the log reads back from disk
//! (untrusted both). The first input byte optionally repairs the length,
//! magic and CRC fields, and may pick a codec, so that the decoders behind
//! them are reached.
//!
//! Asserts: no panic; what `BatchIter` yields passes `check` and fits in
//! the input; a decompression never returns more than its limit; whatever
//! `validate` accepts, compressed or not, decodes fully to `recordsCount`
//! records with consecutive offsets and the header's `maxTimestamp`, still
//! passes `check_stored` once the broker's fields are assigned (the CRC
//! unchanged), and reads with every record timestamped by the broker once
//! `set_log_append_time` marks it; uncompressed, each record is found by
//! offset, and the records rebuilt with `BatchBuilder` validate and decode
//! to the same records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spool::batch::{self, BatchBuilder, BatchHeader, BatchIter, Codec, RecordIter};

const LIMIT: usize = 1 << 20;

fuzz_target!(|input: &[u8]| {
    // Bit 0 sets batchLength to the real length, bit 1 magic 2, bits 4-6
    // the codec (0-4; 5-7 leave it), bit 2 recomputes the CRC (last).
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut data = rest.to_vec();
    if data.len() >= batch::HEADER_LEN {
        if mode & 1 != 0 {
            let len = (data.len() - batch::LOG_OVERHEAD) as i32;
            data[8..12].copy_from_slice(&len.to_be_bytes());
        }
        if mode & 2 != 0 {
            data[16] = 2;
        }
        let codec = (mode >> 4) & 7;
        if codec <= 4 {
            data[22] = (data[22] & !7) | codec;
        }
        if mode & 4 != 0 {
            batch::reseal(&mut data);
        }
    }
    let owned = Bytes::copy_from_slice(&data);

    // As a fetch or a store read returns them: back-to-back batches.
    let mut consumed = 0;
    for item in BatchIter::new(&data) {
        let Ok((header, raw)) = item else { break };
        assert_eq!(raw.len(), header.size());
        assert_eq!(batch::check(raw), Ok(header));
        let raw = Bytes::copy_from_slice(raw);
        let _ = batch::decode_records(&raw);
        let _ = batch::find_record(&raw, header.base_offset.max(0) as u64);
        consumed += raw.len();
    }
    assert!(consumed <= data.len());

    // Every other entry point on the raw bytes.
    let _ = BatchHeader::parse(&data);
    let _ = batch::check(&data);
    let _ = batch::check_stored(&data, 0, data.len());
    if let Ok(iter) = RecordIter::new(&data) {
        for record in iter.flatten() {
            for header in record.headers {
                let _ = header;
            }
        }
    }
    let _ = batch::find_record(&owned, 0);
    if let Ok(records) = batch::decode_any(&owned, LIMIT) {
        assert!(records.len() <= LIMIT);
    }
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        if let Ok(out) = batch::codec::decompress(codec, rest, LIMIT) {
            assert!(out.len() <= LIMIT);
        }
    }

    // A produced batch, as the broker validates it.
    let Ok(header) = batch::validate(&data, usize::MAX) else {
        let _ = batch::decode_records(&owned);
        return;
    };
    assert!(!header.is_log_append_time(), "a producer may not set it");
    // What validate accepted (within its decompression cap) decodes.
    let records =
        batch::decode_any(&owned, batch::MAX_DECOMPRESSED).expect("a valid batch decodes");
    assert_eq!(records.len(), header.records_count as usize);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, header.base_offset as u64 + i as u64);
    }
    let max_ts = records.iter().map(|r| r.timestamp).max();
    assert_eq!(max_ts, Some(header.max_timestamp));

    // Stored: the broker's two fields lie outside the CRC.
    let mut stored = data.clone();
    batch::assign(&mut stored, 7);
    let kept = batch::check_stored(&stored, 7, stored.len()).expect("an assigned batch reads back");
    assert_eq!(kept.crc, header.crc);
    assert_eq!((kept.base_offset, kept.partition_leader_epoch), (7, 0));
    // With a broker's time: every record takes it.
    batch::set_log_append_time(&mut stored, 1_800_000_000_000);
    let stamped =
        batch::check_stored(&stored, 7, stored.len()).expect("a stamped batch reads back");
    assert!(stamped.is_log_append_time());
    let stamped = batch::decode_any(&Bytes::from(stored), batch::MAX_DECOMPRESSED)
        .expect("a stamped batch decodes");
    assert!(stamped.iter().all(|r| r.timestamp == 1_800_000_000_000));
    assert_eq!(stamped.len(), records.len());

    if header.codec() != Ok(Codec::None) {
        return;
    }
    assert_eq!(batch::decode_records(&owned).as_ref(), Ok(&records));
    let views = RecordIter::new(&data)
        .expect("a valid batch has records")
        .map(|r| r.expect("every record of a valid batch decodes"))
        .count();
    assert_eq!(views, records.len());
    for r in &records {
        let found = batch::find_record(&owned, r.offset)
            .expect("find")
            .expect("present");
        assert_eq!(&found, r);
    }
    // Rebuilt (canonical varints, base timestamp the first record's), the
    // records survive unchanged.
    let mut builder = BatchBuilder::new();
    for r in &records {
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        builder.push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    let mut rebuilt = builder.finish();
    batch::assign(&mut rebuilt, header.base_offset);
    batch::validate(&rebuilt, usize::MAX).expect("a rebuilt batch validates");
    let again = batch::decode_records(&Bytes::from(rebuilt)).expect("rebuilt decodes");
    assert_eq!(again, records);
});
