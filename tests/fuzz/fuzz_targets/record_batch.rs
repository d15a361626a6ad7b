//! The RecordBatch v2 codec of `src/record_batch.rs` (issue 11) on
//! arbitrary bytes, compressed or not. The first input byte optionally
//! repairs the length, magic and CRC fields, and may pick a codec, so that
//! the decoders behind them are reached.
//!
//! Asserts: no panic; what `BatchIter` yields passes `check`; whatever `validate` accepts uncompressed decodes
//! fully to `recordsCount` records with consecutive offsets, each batch's
//! records rebuilt with `BatchBuilder` decode to the same records; a
//! decompression never returns more than its limit.
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
        let _ = batch::find_record(&Bytes::copy_from_slice(raw), header.base_offset);
        consumed += raw.len();
    }
    assert!(consumed <= data.len());
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
    if let Ok(records) = batch::decode_any(&owned, LIMIT) {
        assert!(records.len() <= LIMIT);
    }
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        if let Ok(out) = batch::codec::decompress(codec, rest, LIMIT) {
            assert!(out.len() <= LIMIT);
        }
    }

    let Ok(header) = batch::validate(&data, usize::MAX) else {
        let _ = batch::decode_records(&owned);
        return;
    };
    if header.codec() != Ok(Codec::None) {
        return;
    }
    let records = batch::decode_records(&owned).expect("a valid batch decodes");
    assert_eq!(records.len(), header.records_count as usize);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, header.base_offset + i as i64);
    }
    // Rebuilt (canonical varints), the records survive unchanged.
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
    if header.is_log_append_time() {
        batch::set_log_append_time(&mut rebuilt, header.max_timestamp);
    }
    let again = batch::decode_records(&Bytes::from(rebuilt)).expect("rebuilt decodes");
    assert_eq!(again, records);
});
