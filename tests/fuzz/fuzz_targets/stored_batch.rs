//! The record batch decoders of `src/batch.rs` on arbitrary bytes: what a
//! producer sends and what the log reads back from disk (untrusted both).
//! The first input byte optionally repairs the length, format and CRC
//! fields, so that the record decoder behind them is reached.
//!
//! Asserts: no panic; `BatchIter` yields batches that `check` accepts and
//! that fit in the input; whatever `validate` accepts, `decode_records` and
//! `RecordIter` decode completely, to `record_count` records with
//! consecutive offsets (each found by `find_record`) and the header's
//! timestamps; and those records, rebuilt with `BatchBuilder`, validate and
//! decode to the same records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spool::batch::{self, BatchBuilder, BatchHeader, BatchIter, RecordIter};

fuzz_target!(|input: &[u8]| {
    // The first byte says how to repair the rest before decoding, so that
    // the fuzzer gets past the checks it cannot solve by mutation: bit 0
    // sets batch_length to the real length, bit 1 sets magic 1 and zero
    // attributes and reserved bits, bit 2 recomputes the CRC (last).
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut repaired = rest.to_vec();
    if repaired.len() >= batch::HEADER_LEN {
        if mode & 1 != 0 {
            let len = repaired.len() as u32;
            repaired[16..20].copy_from_slice(&len.to_be_bytes());
        }
        if mode & 2 != 0 {
            repaired[24..28].copy_from_slice(&[batch::MAGIC, 0, 0, 0]);
        }
        if mode & 4 != 0 {
            batch::reseal(&mut repaired);
        }
    }
    let data = &repaired[..];

    // Stored bytes, as a read returns them: back-to-back batches.
    let mut consumed = 0;
    for item in BatchIter::new(data) {
        let Ok((header, raw)) = item else { break };
        assert_eq!(raw.len(), header.batch_length as usize);
        assert_eq!(batch::check(raw), Ok(header));
        let owned = Bytes::copy_from_slice(raw);
        let _ = batch::decode_records(&owned);
        let _ = batch::find_record(&owned, header.base_offset);
        consumed += raw.len();
    }
    assert!(consumed <= data.len());

    // Other entry points on the raw bytes.
    let _ = BatchHeader::parse(data);
    if let Ok(iter) = RecordIter::new(data) {
        for record in iter {
            let _ = record;
        }
    }
    let owned = Bytes::copy_from_slice(data);
    let _ = batch::find_record(&owned, 0);

    // A produced batch, as the broker validates it.
    let Ok(header) = batch::validate(data) else {
        let _ = batch::decode_records(&owned);
        return;
    };
    // No record is longer than the batch, and none is shorter than 5 bytes.
    assert_eq!(batch::validate_limited(data, data.len()), Ok(header));
    assert!(matches!(
        batch::validate_limited(data, 4),
        Err(batch::BatchError::RecordTooLarge { index: 0, .. })
    ));
    let records = batch::decode_records(&owned).expect("a valid batch decodes");
    assert_eq!(records.len(), header.record_count as usize);
    let views: Vec<_> = RecordIter::new(data)
        .expect("a valid batch has records")
        .map(|r| r.expect("every record of a valid batch decodes"))
        .collect();
    assert_eq!(views.len(), records.len());
    let mut max_ts = i64::MIN;
    for (i, r) in records.iter().enumerate() {
        max_ts = max_ts.max(r.timestamp);
        assert_eq!(r.offset, header.base_offset + i as u64);
        let found = batch::find_record(&owned, r.offset)
            .expect("find")
            .expect("present");
        assert_eq!(&found, r);
    }
    assert_eq!(records[0].timestamp, header.first_timestamp);
    assert_eq!(max_ts, header.max_timestamp);

    // Rebuilt (canonical varints), the records survive unchanged.
    let mut builder = BatchBuilder::new();
    for r in &records {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), &v[..]))
            .collect();
        builder.push(r.timestamp, r.key.as_deref(), &r.value, &headers);
    }
    let mut rebuilt = builder.finish();
    assert!(
        rebuilt.len() <= data.len(),
        "canonical encoding is never longer"
    );
    batch::assign(&mut rebuilt, header.base_offset, header.append_time);
    batch::validate(&rebuilt).expect("a rebuilt batch validates");
    let again = batch::decode_records(&Bytes::from(rebuilt)).expect("rebuilt decodes");
    assert_eq!(again, records);
});
