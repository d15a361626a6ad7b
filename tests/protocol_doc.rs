//! Keeps `docs/PROTOCOL.md` honest.
//!
//! The protocol reference shows whole frames as fenced blocks opened by
//! ```` ```hex <name> ````: on each line, what precedes a `#` is bytes in
//! two-digit hex. This test extracts every such block and checks it with the
//! crate's own code: requests parse with [`Request::parse`], responses with
//! [`Response::parse`], both re-encode to the very same bytes, the batches
//! validate and decode, the named dumps carry the values the page
//! describes (each partition's fields among them), and the offsets their
//! comments give are where the bytes are. It also checks the page's tables
//! of error codes, API keys and versions and topic settings, the versions
//! and the produce overhead it quotes, its record examples and its varint
//! table against the code.

use bytes::{Bytes, BytesMut};
use spool::batch::{
    assign, check_stored, decode_records, validate, BatchBuilder, BatchHeader, BatchIter,
};
use spool::broker::{ServerConfig, TopicSettings};
use spool::protocol::{
    Acks, ApiKey, ErrorCode, FetchPartition, FetchTopic, FetchedPartition, PartitionResult,
    ProducedPartition, Request, Response, ResponseBody, TopicResults, API_VERSIONS,
    MAX_PRODUCE_OVERHEAD,
};
use spool::storage::StorageError;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// The producer timestamp of the record in the dumps.
const TIMESTAMP: i64 = 1_700_000_000_000;
/// The offset it got, in partition 0 of topic `t`.
const OFFSET: u64 = 42;
const TOPIC: &str = "t";

struct Dump {
    name: String,
    bytes: Vec<u8>,
}

/// Every ```` ```hex <name> ```` block of the page, in order.
fn dumps() -> Vec<Dump> {
    let mut out = Vec::new();
    let mut current: Option<Dump> = None;
    for (i, line) in DOC.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        match current.as_mut() {
            None => {
                if let Some(rest) = trimmed.strip_prefix("```hex") {
                    let name = rest.trim();
                    assert!(
                        !name.is_empty(),
                        "PROTOCOL.md line {line_no}: a ```hex block needs a name"
                    );
                    current = Some(Dump {
                        name: name.to_owned(),
                        bytes: Vec::new(),
                    });
                }
            }
            Some(dump) => {
                if trimmed == "```" {
                    out.push(current.take().expect("inside a block"));
                    continue;
                }
                let data = line.split('#').next().unwrap_or("");
                for token in data.split_whitespace() {
                    assert!(
                        token.len() == 2,
                        "PROTOCOL.md line {line_no}: `{token}` is not a two-digit hex byte"
                    );
                    let byte = u8::from_str_radix(token, 16).unwrap_or_else(|_| {
                        panic!("PROTOCOL.md line {line_no}: `{token}` is not a hex byte")
                    });
                    dump.bytes.push(byte);
                }
            }
        }
    }
    assert!(current.is_none(), "PROTOCOL.md ends inside a ```hex block");
    out
}

/// The bytes of the block named `name`, which must exist exactly once.
fn dump(name: &str) -> Vec<u8> {
    let mut found: Vec<Vec<u8>> = dumps()
        .into_iter()
        .filter(|d| d.name == name)
        .map(|d| d.bytes)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "PROTOCOL.md should have exactly one ```hex {name} block"
    );
    found.remove(0)
}

/// The message of a whole frame, after checking its length prefix.
fn message<'a>(name: &str, frame: &'a [u8]) -> &'a [u8] {
    assert!(frame.len() >= 4, "{name}: shorter than a length prefix");
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        frame.len() - 4,
        "{name}: the length prefix does not match the bytes that follow"
    );
    &frame[4..]
}

/// The API a block's name starts with: `fetch-...` is FETCH,
/// `list-offsets-...` is LIST_OFFSETS.
fn api_of(name: &str) -> ApiKey {
    API_VERSIONS
        .iter()
        .map(|(api, _, _)| *api)
        .find(|api| {
            let prefix = api.name().to_lowercase().replace('_', "-");
            name.starts_with(&format!("{prefix}-"))
        })
        .unwrap_or_else(|| panic!("```hex {name}: the name must start with an API name"))
}

fn parse_request(name: &str) -> (u32, Request) {
    let frame = dump(name);
    let (header, request) = Request::parse(BytesMut::from(message(name, &frame)))
        .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
    (header.correlation_id, request)
}

fn parse_response(name: &str, api: ApiKey) -> Response {
    let frame = dump(name);
    Response::parse(api, Bytes::copy_from_slice(message(name, &frame)))
        .unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

/// The one partition result of a response naming one topic and one
/// partition, after checking that they are `t` and 0.
fn only_partition<T: std::fmt::Debug>(
    name: &str,
    topics: Vec<TopicResults<T>>,
) -> PartitionResult<T> {
    assert_eq!(topics.len(), 1, "{name}: one topic");
    let mut topic = topics.into_iter().next().unwrap();
    assert_eq!(topic.topic, TOPIC, "{name}: topic");
    assert_eq!(topic.partitions.len(), 1, "{name}: one partition");
    let partition = topic.partitions.remove(0);
    assert_eq!(partition.partition, 0, "{name}: partition");
    partition
}

/// The batch of the dumps, as the reference builder makes it.
fn built_batch() -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.push(TIMESTAMP, None, Some(b"hi"), &[]);
    builder.finish()
}

/// CRC-32C exactly as the page's pseudo-code describes it.
fn doc_crc32c(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[test]
fn every_dump_is_a_frame_that_parses_and_re_encodes_identically() {
    let all = dumps();
    assert!(all.len() >= 8, "PROTOCOL.md lost some of its hex dumps");
    for d in &all {
        let msg = message(&d.name, &d.bytes);
        let api = api_of(&d.name);
        if d.name.ends_with("-request") {
            let (header, request) = Request::parse(BytesMut::from(msg))
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", d.name));
            assert_eq!(header.api_key, api as u16, "{}: wrong api_key", d.name);
            assert_eq!(
                header.api_version,
                api.version(),
                "{}: not the version the broker speaks",
                d.name
            );
            let mut again = BytesMut::new();
            request.encode(header.correlation_id, &mut again);
            assert_eq!(
                &again[..],
                &d.bytes[..],
                "{}: re-encoding gives other bytes",
                d.name
            );
        } else if d.name.ends_with("-response") {
            let response = Response::parse(api, Bytes::copy_from_slice(msg))
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", d.name));
            let again = response.encode_to_vec();
            assert_eq!(again, d.bytes, "{}: re-encoding gives other bytes", d.name);
        } else {
            panic!(
                "```hex {}: the name must end in -request or -response",
                d.name
            );
        }
    }
}

#[test]
fn api_versions_request() {
    let (correlation_id, request) = parse_request("api-versions-request");
    assert_eq!(correlation_id, 7);
    assert_eq!(request, Request::ApiVersions);
}

#[test]
fn api_versions_response_lists_every_api_at_its_version() {
    let response = parse_response("api-versions-response", ApiKey::ApiVersions);
    assert_eq!(response.correlation_id, 7);
    let Ok(ResponseBody::ApiVersions {
        server,
        apis,
        max_frame_bytes,
    }) = response.body
    else {
        panic!("api-versions-response is not a successful API_VERSIONS: {response:?}");
    };
    assert!(server.starts_with("spool "), "{server}");
    let expected: Vec<(u16, u16, u16)> = API_VERSIONS
        .iter()
        .map(|(api, min, max)| (*api as u16, *min, *max))
        .collect();
    assert_eq!(apis, expected);
    assert_eq!(
        u64::from(max_frame_bytes),
        ServerConfig::default().max_frame_bytes
    );
}

/// Section 5.1 spells out the list API_VERSIONS gives, and the figure
/// `max_record_bytes` is bounded by.
#[test]
fn the_versions_and_the_produce_overhead_quoted_are_the_code_s() {
    let listed: Vec<String> = API_VERSIONS
        .iter()
        .map(|(api, min, max)| format!("({}, {min}, {max})", *api as u16))
        .collect();
    let listed = format!("`{}`", listed.join(" "));
    assert!(DOC.contains(&listed), "PROTOCOL.md does not list {listed}");
    for (api, _, max) in API_VERSIONS {
        let row = format!("| {} | `{}` | {max} |", api as u16, api.name());
        assert!(DOC.contains(&row), "PROTOCOL.md has no row `{row}`");
    }
    // Every "`max_frame_bytes` − N" on the page gives the code's N.
    let marker = "`max_frame_bytes` − ";
    let mut quoted = 0;
    for (at, _) in DOC.match_indices(marker) {
        let digits: String = DOC[at + marker.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        assert_eq!(
            digits.parse::<usize>().ok(),
            Some(MAX_PRODUCE_OVERHEAD),
            "PROTOCOL.md: `{marker}{digits}`"
        );
        quoted += 1;
    }
    assert!(
        quoted >= 3,
        "the bound on max_record_bytes is quoted {quoted} times"
    );
    // And the sum that explains it adds up to it.
    let sum = "8 + 1 + 4 + 2 + 249 + 4 + 4 + 4 + 61";
    let flat = DOC.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!("{sum} = {MAX_PRODUCE_OVERHEAD}")),
        "PROTOCOL.md lacks `{sum} = {MAX_PRODUCE_OVERHEAD}`"
    );
    let total: usize = sum.split(" + ").map(|n| n.parse::<usize>().unwrap()).sum();
    assert_eq!(total, MAX_PRODUCE_OVERHEAD);
}

/// CREATE_TOPIC's table of settings has a row for every key DESCRIBE_TOPIC
/// reports, in the order it reports them.
#[test]
fn the_settings_table_lists_every_setting_in_order() {
    let keys: Vec<String> = DOC
        .lines()
        .skip_while(|l| l.trim() != "| key | value | built-in default | allowed |")
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cell = l.split('|').nth(1).unwrap().trim();
            cell.trim_matches('`').to_owned()
        })
        .collect();
    let expected: Vec<String> = TopicSettings::default()
        .to_pairs()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, expected);
    let count = ["ten", "eleven", "twelve", "thirteen"][expected.len() - 10];
    let flat = DOC.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!(
            "The settings are the {count} keys of CREATE_TOPIC"
        )),
        "DESCRIBE_TOPIC's section should say there are {count} settings"
    );
}

#[test]
fn produce_request_carries_a_valid_batch_with_value_hi() {
    let (correlation_id, request) = parse_request("produce-request");
    assert_eq!(correlation_id, 1);
    let Request::Produce { acks, topics } = request else {
        panic!("produce-request is not a PRODUCE: {request:?}");
    };
    assert_eq!(acks, Acks::Commit);
    assert_eq!(topics.len(), 1, "one topic");
    assert_eq!(topics[0].topic, TOPIC);
    assert_eq!(topics[0].partitions.len(), 1, "one partition");
    let (partition, batch) = topics[0].partitions[0].clone();
    assert_eq!(partition, 0);

    let header = validate(&batch, usize::MAX).expect("the produced batch validates");
    assert_eq!(header.base_offset, 0, "the client sends baseOffset 0");
    assert_eq!(header.size(), batch.len());
    assert_eq!(
        header.batch_length, 58,
        "12 + 58 bytes: 61 of header, 9 of record"
    );
    assert_eq!(header.partition_leader_epoch, -1, "the client sends -1");
    assert_eq!(header.magic, 2);
    assert_eq!(header.attributes, 0);
    assert_eq!(header.records_count, 1);
    assert_eq!(header.last_offset_delta, 0);
    assert_eq!(header.base_timestamp, TIMESTAMP);
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (-1, -1, -1),
        "no idempotence"
    );
    assert_eq!(header.max_timestamp, TIMESTAMP);

    let records = decode_records(&Bytes::from(batch.to_vec())).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].value.as_deref().unwrap(),
        Bytes::from_static(b"hi")
    );
    assert_eq!(records[0].key, None);
    assert_eq!(records[0].timestamp, TIMESTAMP);
    assert!(records[0].headers.is_empty());

    // The dump is exactly what the reference builder produces...
    assert_eq!(&batch[..], &built_batch()[..]);
    // ...and its CRC, big-endian at byte 17, is what the page's algorithm
    // computes over bytes 21 to the end.
    assert_eq!(doc_crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(doc_crc32c(&batch[21..]), header.crc);
    assert_eq!(&batch[17..21], &header.crc.to_be_bytes());
}

#[test]
fn produce_response() {
    let response = parse_response("produce-response", ApiKey::Produce);
    assert_eq!(response.correlation_id, 1);
    let Ok(ResponseBody::Produced(topics)) = response.body else {
        panic!("produce-response is not a successful PRODUCE: {response:?}");
    };
    let partition = only_partition("produce-response", topics);
    assert_eq!(
        partition.result,
        Ok(ProducedPartition {
            base_offset: OFFSET,
            log_append_time: -1,
            log_start: 0,
        })
    );
}

#[test]
fn fetch_request() {
    let (correlation_id, request) = parse_request("fetch-request");
    assert_eq!(correlation_id, 2);
    assert_eq!(request, Request::fetch(TOPIC, 0, OFFSET, 1 << 20, 500, 1));
}

#[test]
fn fetch_two_partitions_request() {
    let (correlation_id, request) = parse_request("fetch-two-partitions-request");
    assert_eq!(correlation_id, 4);
    assert_eq!(
        request,
        Request::Fetch {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: TOPIC.into(),
                partitions: vec![
                    FetchPartition {
                        partition: 0,
                        offset: OFFSET + 1,
                        max_bytes: 256 << 10,
                    },
                    FetchPartition {
                        partition: 1,
                        offset: 0,
                        max_bytes: 256 << 10,
                    },
                ],
            }],
        }
    );
}

#[test]
fn fetch_response_returns_the_produced_batch_with_its_offset() {
    let response = parse_response("fetch-response", ApiKey::Fetch);
    assert_eq!(response.correlation_id, 2);
    let Ok(ResponseBody::Fetched(topics)) = response.body else {
        panic!("fetch-response is not a successful FETCH: {response:?}");
    };
    let Ok(FetchedPartition {
        log_start,
        log_end,
        next_offset,
        batches,
    }) = only_partition("fetch-response", topics).result
    else {
        panic!("fetch-response: partition 0 failed");
    };
    assert_eq!(
        (log_start, log_end, next_offset),
        (0, OFFSET + 1, OFFSET + 1)
    );

    let all: Vec<u8> = batches.iter().flat_map(|b| b.iter().copied()).collect();
    let split: Vec<_> = BatchIter::new(&all)
        .map(|b| b.expect("the fetched bytes split into whole batches"))
        .collect();
    assert_eq!(split.len(), 1, "one batch");
    let (_, batch) = split[0];

    let header = validate(batch, usize::MAX).expect("the fetched batch validates");
    assert_eq!(header.base_offset as u64, OFFSET);
    assert_eq!(header.partition_leader_epoch, 0);
    assert_eq!(header.next_offset() as u64, next_offset);
    // What a read from the log checks: the offset and length the index
    // gives, epoch 0, magic 2, the CRC.
    check_stored(batch, OFFSET as i64, batch.len()).expect("the fetched batch is a stored one");

    let records = decode_records(&Bytes::copy_from_slice(batch)).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, OFFSET);
    assert_eq!(
        records[0].value.as_deref().unwrap(),
        Bytes::from_static(b"hi")
    );
    assert_eq!(records[0].key, None);

    // The produced batch with the broker's two fields, which lie outside
    // the CRC, filled in: the CRC is the producer's.
    let mut expected = built_batch();
    assign(&mut expected, OFFSET as i64);
    assert_eq!(batch, &expected[..]);
    assert_eq!(doc_crc32c(&batch[21..]), header.crc);
    // Byte for byte against the page's own PRODUCE dump: bytes 0 to 7 and
    // 12 to 15 are the broker's, the rest (the CRC included) the producer's.
    let Request::Produce { topics, .. } = parse_request("produce-request").1 else {
        panic!("produce-request is not a PRODUCE");
    };
    let sent = topics[0].partitions[0].1.clone();
    assert_eq!(batch.len(), sent.len());
    assert_eq!(&batch[..8], &(OFFSET as i64).to_be_bytes());
    assert_eq!(&batch[8..12], &sent[8..12]);
    assert_eq!(&batch[12..16], &0i32.to_be_bytes());
    assert_eq!(&sent[12..16], &(-1i32).to_be_bytes());
    assert_eq!(
        &batch[16..],
        &sent[16..],
        "from the magic on, the producer's bytes"
    );
    assert_eq!(header.crc, BatchHeader::parse(&sent).unwrap().crc);
}

#[test]
fn fetch_out_of_range_response_carries_the_range_in_the_partition() {
    let name = "fetch-out-of-range-response";
    let response = parse_response(name, ApiKey::Fetch);
    assert_eq!(response.correlation_id, 3);
    let Ok(ResponseBody::Fetched(topics)) = response.body else {
        panic!("{name}: the response's own code should be 0: {response:?}");
    };
    let error = only_partition(name, topics)
        .result
        .expect_err("partition 0 carries an error");
    assert_eq!(error.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(error.range, Some((0, OFFSET + 1)));
    assert_eq!(error.resume_at, None);
    // The message the broker's log gives for that offset.
    let out_of_range = StorageError::OffsetOutOfRange {
        offset: 50,
        lowest: 0,
        next: OFFSET + 1,
    };
    assert_eq!(error.message, out_of_range.to_string());
    // The placeholders after the range: next_offset u64::MAX, no batches.
    let frame = dump(name);
    let msg = message(name, &frame);
    assert_eq!(&msg[msg.len() - 12..msg.len() - 4], &u64::MAX.to_be_bytes());
    assert_eq!(&msg[msg.len() - 4..], &0u32.to_be_bytes());
}

#[test]
fn tables_list_every_error_code_and_api_with_its_number() {
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code as u16, code.name());
        assert!(DOC.contains(&row), "PROTOCOL.md has no row `{row}`");
    }
    for (api, _, _) in API_VERSIONS {
        let row = format!("| {} | `{}` |", api as u16, api.name());
        assert!(DOC.contains(&row), "PROTOCOL.md has no row `{row}`");
    }
    // And no row gives a name a number the code does not.
    for line in DOC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let (Ok(number), Some(name)) = (
            cells[1].parse::<u16>(),
            cells[2].strip_prefix('`').and_then(|s| s.strip_suffix('`')),
        ) else {
            continue;
        };
        if !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            continue;
        }
        let is_code = ErrorCode::from_u16(number).is_some_and(|c| c.name() == name);
        let is_api = ApiKey::from_u16(number).is_some_and(|a| a.name() == name);
        assert!(
            is_code || is_api,
            "PROTOCOL.md: row `{line}` names no error code or API of that number"
        );
    }
}

/// Each comment that starts with `[k]` (an offset in the message) or `(k)`
/// (an offset in the batch) names the offset of the first byte on its line,
/// or of the next byte on a line without bytes; a `(0)` starts a batch,
/// which must be one. A `length prefix: N bytes follow` comment gives the
/// prefix's value.
#[test]
fn offset_comments_are_where_the_bytes_are() {
    let mut in_block: Option<String> = None;
    let mut pos = 0usize;
    let mut bytes: Vec<u8> = Vec::new();
    let mut batch_start: Option<usize> = None;
    let mut checked = 0;
    // (line, block, kind, claimed offset, position, batch start)
    let mut claims: Vec<(usize, String, char, usize, usize, Option<usize>)> = Vec::new();
    let leading = |comment: &str, open: char, close: char| -> Option<usize> {
        let rest = comment.strip_prefix(open)?;
        let (digits, _) = rest.split_once(close)?;
        digits.parse().ok()
    };
    for (i, line) in DOC.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        let Some(name) = in_block.clone() else {
            if let Some(rest) = trimmed.strip_prefix("```hex") {
                in_block = Some(rest.trim().to_owned());
                pos = 0;
                bytes.clear();
                batch_start = None;
            }
            continue;
        };
        if trimmed == "```" {
            for &(line_no, ref block, kind, claimed, at, start) in &claims {
                if kind == '(' && claimed == 0 {
                    let header = BatchHeader::parse(&bytes[at..]).unwrap_or_else(|e| {
                        panic!("PROTOCOL.md line {line_no}: `(0)` starts no batch in {block}: {e}")
                    });
                    assert!(
                        at + header.size() <= bytes.len(),
                        "PROTOCOL.md line {line_no}: the batch runs past the end of {block}"
                    );
                }
                let (actual, close) = match kind {
                    '[' => (at.checked_sub(4).expect("after the length prefix"), ']'),
                    _ => (at - start.expect("a (k) comment after a (0) one"), ')'),
                };
                assert_eq!(
                    claimed, actual,
                    "PROTOCOL.md line {line_no} ({block}): the comment says {kind}{claimed}{close}, the byte is at {actual}"
                );
                checked += 1;
            }
            claims.clear();
            in_block = None;
            continue;
        }
        let (data, comment) = line.split_once('#').unwrap_or((line, ""));
        let comment = comment.trim();
        if let Some(k) = leading(comment, '[', ']') {
            claims.push((line_no, name.clone(), '[', k, pos, batch_start));
        } else if let Some(k) = leading(comment, '(', ')') {
            if k == 0 {
                batch_start = Some(pos);
            }
            claims.push((line_no, name.clone(), '(', k, pos, batch_start));
        }
        if let Some(rest) = comment.strip_prefix("length prefix: ") {
            let n: usize = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("PROTOCOL.md line {line_no}: `{comment}`"));
            let frame = dump(&name);
            assert_eq!(
                n,
                frame.len() - 4,
                "PROTOCOL.md line {line_no}: `{comment}`"
            );
        }
        for token in data.split_whitespace() {
            bytes.push(u8::from_str_radix(token, 16).expect("checked by dumps()"));
            pos += 1;
        }
    }
    assert!(checked >= 110, "only {checked} offset comments checked");
}

/// Section 6.2's record examples are what the reference builder writes.
#[test]
fn the_record_examples_are_what_the_builder_writes() {
    let record = |key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]| {
        let mut builder = BatchBuilder::new();
        builder.push(TIMESTAMP, key, value, headers);
        let batch = builder.finish();
        let hex: Vec<String> = batch[61..].iter().map(|b| format!("{b:02X}")).collect();
        format!("`{}`", hex.join(" "))
    };
    for example in [
        record(None, Some(b"hi"), &[]),
        record(Some(b"k"), Some(b"hi"), &[]),
        record(None, None, &[("h", Some(b"v"))]),
    ] {
        assert!(
            DOC.contains(&example),
            "PROTOCOL.md lacks the record example {example}"
        );
    }
}

/// The rows of section 6.2's varint table follow the zigzag and 7-bit
/// group rules the page states.
#[test]
fn the_varint_table_follows_its_rules() {
    let table: Vec<&str> = DOC
        .lines()
        .skip_while(|l| l.trim() != "| value | zigzag | bytes |")
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(
        table.len() >= 8,
        "the varint table has {} rows",
        table.len()
    );
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let value: i64 = cells[1].replace('−', "-").parse().expect(line);
        let zigzag: u64 = cells[2].parse().expect(line);
        let shown = cells[3]
            .strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .expect(line);
        assert_eq!(
            ((value << 1) ^ (value >> 63)) as u64,
            zigzag,
            "row `{line}`"
        );
        let mut z = zigzag;
        let mut out = Vec::new();
        while z >= 0x80 {
            out.push(format!("{:02X}", (z & 0x7F) | 0x80));
            z >>= 7;
        }
        out.push(format!("{z:02X}"));
        assert_eq!(out.join(" "), shown, "row `{line}`");
    }
}

#[test]
fn group_heartbeat_dumps_join_and_get_both_partitions() {
    let (correlation_id, request) = parse_request("group-heartbeat-request");
    assert_eq!(correlation_id, 11);
    assert_eq!(
        request,
        Request::GroupHeartbeat(spool::protocol::GroupHeartbeat {
            group: "g".into(),
            member_id: String::new(),
            member_epoch: 0,
            session_timeout_ms: 10_000,
            client_id: "c".into(),
            subscription: vec!["t".into()],
            owned: vec![],
        })
    );
    let response = parse_response("group-heartbeat-response", ApiKey::GroupHeartbeat);
    assert_eq!(response.correlation_id, 11);
    assert_eq!(
        response.body,
        Ok(ResponseBody::Heartbeat(spool::protocol::HeartbeatAnswer {
            member_id: "c-1".into(),
            member_epoch: 1,
            heartbeat_interval_ms: 1_000,
            assignment: vec![("t".into(), vec![0, 1])],
        }))
    );
}
