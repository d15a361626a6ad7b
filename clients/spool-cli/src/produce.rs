//! `spool produce`: one record per line.
//!
//! Every record is checked against the topic's `max_record_bytes` (learned
//! from the broker) before it is sent, and reading stops at the first that
//! fails, so no line after one too large is ever sent; the one line on
//! stderr says which input lines were written where. A failure the broker
//! reports (a full disk, say) is known only when its batch is answered, by
//! which time later batches may be on their way: the report then also
//! counts those stored after it. Deliveries are awaited
//! as they come (at most [`WINDOW`] pending), so memory does not grow with
//! the input.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use spool_client::{
    batch::BatchBuilder, Client, ClientError, Delivery, ErrorCode, Producer, ProducerConfig,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Records sent and not yet confirmed, at most.
const WINDOW: usize = 65_536;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub topic: String,
    /// Send every record to this partition. By default a keyed record goes
    /// where Kafka's partitioner puts its key (murmur2 of the key modulo
    /// the partitions, as the Java client and librdkafka do), and keyless
    /// records fill one partition's batch, then the next's.
    #[arg(long, short = 'p', value_name = "P")]
    partition: Option<u32>,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The whole input (the --file, or stdin) is one record, bytes as they
    /// are, newlines included.
    #[arg(long, conflicts_with_all = ["key_delimiter", "format"])]
    whole: bool,
    /// Key of every record.
    #[arg(long, conflicts_with = "key_delimiter")]
    key: Option<String>,
    /// Each line is KEY DELIM VALUE, split at the first DELIM (kcat's -K);
    /// a line without it is a value with no key.
    #[arg(short = 'K', long, value_name = "DELIM", value_parser = non_empty)]
    key_delimiter: Option<String>,
    /// A header on every record, as NAME=VALUE (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// raw: each line is a value (without its \n; a \r before it is
    /// kept). json: each line is an object with "value" and optionally
    /// "key", "headers" (an object of name: value, or a list of {"name",
    /// "value"}) and "timestamp" (ms since the epoch); "key_base64",
    /// "value_base64" (and "value_base64" in a header) carry bytes that are
    /// not UTF-8. Other fields, such as the "offset" of `spool consume
    /// --format json` lines, are ignored.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Send a batch once it holds this many bytes.
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES")]
    batch_size: usize,
    /// Send a batch once its first record has waited this long.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    linger_ms: u64,
    /// Skip lines that are invalid (not JSON, for --format json) or too
    /// large for the topic instead of stopping at the first; the report
    /// lists the lines skipped.
    #[arg(long)]
    skip_invalid: bool,
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the delimiter must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Raw,
    Json,
}

/// A header's name and value (None: a header without one).
type Header<'a> = (Cow<'a, str>, Option<Cow<'a, [u8]>>);

/// One record to send, as read from the input: raw lines are borrowed, not
/// copied.
#[derive(Debug, Default, PartialEq, Eq)]
struct Input<'a> {
    key: Option<Cow<'a, [u8]>>,
    /// None: a record without a value (a tombstone; JSON input only).
    value: Option<Cow<'a, [u8]>>,
    headers: Vec<Header<'a>>,
    timestamp: Option<i64>,
}

/// Reads one line (without its `\n`) as a record, per the arguments.
fn parse_line<'a>(
    args: &'a Args,
    fixed: &'a [(String, Vec<u8>)],
    line: &'a [u8],
) -> Result<Input<'a>, String> {
    let mut input = match args.format {
        Format::Json => parse_json(line)?,
        Format::Raw => match &args.key_delimiter {
            Some(delim) => match find(line, delim.as_bytes()) {
                Some(at) => Input {
                    key: Some(Cow::Borrowed(&line[..at])),
                    value: Some(Cow::Borrowed(&line[at + delim.len()..])),
                    ..Input::default()
                },
                None => Input {
                    value: Some(Cow::Borrowed(line)),
                    ..Input::default()
                },
            },
            None => Input {
                key: args.key.as_ref().map(|k| Cow::Borrowed(k.as_bytes())),
                value: Some(Cow::Borrowed(line)),
                ..Input::default()
            },
        },
    };
    input.headers.extend(
        fixed
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n.as_str()), Some(Cow::Borrowed(v.as_slice())))),
    );
    Ok(input)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `--format json` line.
fn parse_json(line: &[u8]) -> Result<Input<'static>, String> {
    use serde_json::Value;
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };
    let bytes =
        |o: &serde_json::Map<String, Value>, field: &str| -> Result<Option<Vec<u8>>, String> {
            let b64 = format!("{field}_base64");
            match (o.get(field), o.get(&b64)) {
                (Some(_), Some(_)) => Err(format!("both \"{field}\" and \"{b64}\"")),
                (Some(Value::String(s)), None) => Ok(Some(s.clone().into_bytes())),
                (Some(Value::Null) | None, None) => Ok(None),
                (Some(other), None) => {
                    Err(format!("\"{field}\" must be a string or null, not {other}"))
                }
                (None, Some(Value::String(s))) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Some)
                    .map_err(|e| format!("\"{b64}\" is not base64: {e}")),
                (None, Some(other)) => Err(format!("\"{b64}\" must be a string, not {other}")),
            }
        };
    // A value given as null is a record without one, as `spool consume`
    // prints a tombstone; a line with no value at all is a mistake.
    if !object.contains_key("value") && !object.contains_key("value_base64") {
        return Err("no \"value\" (or \"value_base64\") field".into());
    }
    let value = bytes(&object, "value")?;
    let key = bytes(&object, "key")?;
    let mut headers = Vec::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, v) in map {
                match v {
                    Value::String(s) => headers.push((
                        Cow::Owned(name.clone()),
                        Some(Cow::Owned(s.clone().into_bytes())),
                    )),
                    Value::Null => headers.push((Cow::Owned(name.clone()), None)),
                    other => return Err(format!("header {name:?} must be a string, not {other}")),
                }
            }
        }
        Some(Value::Array(list)) => {
            for h in list {
                let Value::Object(h) = h else {
                    return Err(format!(
                        "a header must be an object with \"name\" and \"value\", not {h}"
                    ));
                };
                let Some(Value::String(name)) = h.get("name") else {
                    return Err("a header has no \"name\" string".into());
                };
                let v = bytes(h, "value")?;
                headers.push((Cow::Owned(name.clone()), v.map(Cow::Owned)));
            }
        }
        Some(other) => {
            return Err(format!(
                "\"headers\" must be an object or a list, not {other}"
            ))
        }
    }
    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_i64().ok_or_else(|| {
            format!("\"timestamp\" must be an integer (ms since the epoch), not {t}")
        })?),
    };
    Ok(Input {
        key: key.map(Cow::Owned),
        value: value.map(Cow::Owned),
        headers,
        timestamp,
    })
}

/// What happened to the input, line by line.
#[derive(Default)]
struct Tally {
    /// Lines acknowledged: count, the first and last line, and the lowest
    /// and highest offset in each partition written to.
    acked: u64,
    lines: Option<(u64, u64)>,
    offsets: std::collections::BTreeMap<u32, (u64, u64)>,
    /// The first line that failed, and why.
    failed: Option<(u64, ClientError)>,
    /// Records sent whose fate is unknown (the connection was lost).
    unknown: u64,
    /// Records never sent (no connection, or dropped after a failure).
    unsent: u64,
    /// Records the broker refused (the first failure included).
    refused: u64,
    /// Records acknowledged although an earlier line had failed.
    after_failure: u64,
    skipped: Vec<u64>,
}

impl Tally {
    fn settle(&mut self, line: u64, partition: u32, outcome: Result<u64, ClientError>) {
        match outcome {
            // Acknowledged after the first failure (a batch behind it,
            // already sent): counted apart, so that the lines reported
            // written are exactly those before the failure.
            Ok(_) if self.failed.is_some() => self.after_failure += 1,
            Ok(offset) => {
                self.acked += 1;
                let (first, _) = self.lines.unwrap_or((line, line));
                self.lines = Some((first, line));
                let range = self.offsets.entry(partition).or_insert((offset, offset));
                *range = (range.0.min(offset), range.1.max(offset));
            }
            Err(e) => {
                match &e {
                    // Lost with the connection: stored or not, nobody knows.
                    ClientError::Disconnected(_) | ClientError::Timeout(_) => self.unknown += 1,
                    ClientError::Unsent(_)
                    | ClientError::Connect { .. }
                    | ClientError::TooLarge { .. } => self.unsent += 1,
                    _ => self.refused += 1,
                }
                if self.failed.is_none() {
                    self.failed = Some((line, e));
                }
            }
        }
    }

    /// The one line of the report.
    fn report(&self, topic: &str) -> String {
        // One partition: its offsets, with its number unless it is 0 (a
        // one-partition topic). Several: each one's.
        let at = match self.offsets.iter().collect::<Vec<_>>().as_slice() {
            [] => String::new(),
            [(0, (low, _))] if self.acked == 1 && self.failed.is_none() => format!("offset {low}"),
            [(0, (low, high))] => format!("offsets {low}..{high}"),
            [(p, (low, _))] if self.acked == 1 && self.failed.is_none() => {
                format!("partition {p} offset {low}")
            }
            [(p, (low, high))] => format!("partition {p} offsets {low}..{high}"),
            all => {
                let each: Vec<String> = all
                    .iter()
                    .map(|(p, (low, high))| format!("{p}: {low}..{high}"))
                    .collect();
                format!("{} partitions (offsets {})", all.len(), each.join(", "))
            }
        };
        let written = match self.lines {
            Some((a, b)) if self.failed.is_some() => {
                format!("wrote lines {a}..{b} to {topic} at {at}")
            }
            Some(_) if self.acked == 1 => format!("wrote 1 record to {topic}, {at}"),
            Some(_) => format!("wrote {} records to {topic}, {at}", self.acked),
            None => format!("no records written to {topic}"),
        };
        let mut text = written;
        if let Some((line, e)) = &self.failed {
            text.push_str(&format!("; line {line} failed: {e}"));
        }
        if self.refused > 1 {
            text.push_str(&format!("; {} record(s) refused in all", self.refused));
        }
        if self.after_failure > 0 {
            text.push_str(&format!(
                "; {} record(s) sent before the failure was known were stored after it",
                self.after_failure
            ));
        }
        if self.unknown > 0 {
            text.push_str(&format!(
                "; {} record(s) may or may not be stored (the connection was lost before they were acknowledged)",
                self.unknown
            ));
        }
        if self.unsent > 0 {
            text.push_str(&format!("; {} record(s) read were not sent", self.unsent));
        }
        if !self.skipped.is_empty() {
            let shown: Vec<String> = self.skipped.iter().take(10).map(u64::to_string).collect();
            let more = self.skipped.len().saturating_sub(10);
            text.push_str(&format!(
                "; skipped {} invalid line(s): {}{}",
                self.skipped.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        text
    }
}

/// The topic's `max_record_bytes`, or `None` if the topic does not exist yet.
/// The topic's record limit (`None` for a topic that does not exist yet),
/// and the producer told its partition count (saving it a lookup).
async fn record_limit(
    client: &Client,
    producer: &Producer,
    topic: &str,
) -> Result<Option<u64>, String> {
    match client.describe_topic(topic).await {
        Ok(d) => {
            producer.set_partition_count(topic, d.partitions.len() as u32);
            Ok(d.settings
                .iter()
                .find(|(k, _)| k == "max_record_bytes")
                .and_then(|(_, v)| v.parse().ok()))
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Produces every line (without its `\n`; a `\r` before it stays) as one
/// record (or the whole input as one, with `--whole`), then
/// says on stderr which lines went where.
pub async fn run(client: &Client, args: Args) -> Result<(), String> {
    if args.format == Format::Json && (args.key.is_some() || args.key_delimiter.is_some()) {
        return Err(
            "--key and -K apply to raw lines; with --format json each object gives its \"key\""
                .into(),
        );
    }
    // A batch must fit in one frame the broker reads.
    let frame = client.max_frame_bytes().await.map_err(|e| e.to_string())? as usize;
    let room = frame.saturating_sub(spool_client::MAX_PRODUCE_OVERHEAD);
    let config = ProducerConfig {
        batch_bytes: args.batch_size.clamp(1, room.max(1)),
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config);
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let mut lines = BufReader::with_capacity(1 << 20, input);
    let fixed: Vec<(String, Vec<u8>)> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.as_bytes().to_vec()))
                .ok_or_else(|| format!("--header {h:?}: expected NAME=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    let mut limit = record_limit(client, &producer, &args.topic).await?;
    let mut tally = Tally::default();
    let mut pending: VecDeque<(u64, Delivery)> = VecDeque::new();
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut refusal = None;
    while tally.failed.is_none() {
        line.clear();
        if args.whole {
            if number > 0 {
                break;
            }
            lines
                .read_to_end(&mut line)
                .await
                .map_err(|e| format!("reading input: {e}"))?;
        } else {
            let n = lines
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| format!("reading input: {e}"))?;
            if n == 0 {
                break;
            }
            // Only the newline goes: a \r before it is part of the value.
            if line.last() == Some(&b'\n') {
                line.pop();
            }
        }
        number += 1;
        let record = match parse_line(&args, &fixed, &line) {
            Ok(record) => record,
            Err(_) if args.skip_invalid => {
                tally.skipped.push(number);
                continue;
            }
            Err(reason) => {
                refusal = Some((
                    number,
                    ClientError::Invalid(format!("{reason}; nothing after it was sent")),
                ));
                break;
            }
        };
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_deref()))
            .collect();
        let key = record.key.as_deref();
        if let Some(max) = limit {
            // The record's whole encoding, with room for any timestamp
            // delta the producer may give it.
            let value = record.value.as_deref();
            let size = BatchBuilder::record_size(i64::MAX, i32::MAX, key, value, &headers) as u64;
            if size > max {
                if args.skip_invalid {
                    tally.skipped.push(number);
                    continue;
                }
                let e = ClientError::Broker {
                    code: ErrorCode::RecordTooLarge,
                    message: format!(
                        "a record of {size} bytes exceeds the topic's max_record_bytes of {max}; nothing after it was sent"
                    ),
                    range: None,
                    resume_at: None,
                };
                // Settled once what was sent before it is answered.
                refusal = Some((number, e));
                break;
            }
        }
        let sent = match args.partition {
            Some(p) => {
                producer
                    .send_to(
                        &args.topic,
                        p,
                        key,
                        record.value.as_deref(),
                        &headers,
                        record.timestamp,
                    )
                    .await
            }
            None => {
                producer
                    .send_any(
                        &args.topic,
                        key,
                        record.value.as_deref(),
                        &headers,
                        record.timestamp,
                    )
                    .await
            }
        };
        match sent {
            Ok(delivery) => pending.push_back((number, delivery)),
            Err(e) => {
                tally.settle(number, 0, Err(e));
                break;
            }
        }
        if limit.is_none() {
            // The first record to a new topic: once it is stored, the topic
            // exists and its limit can be learned.
            producer.flush().await.map_err(|e| e.to_string())?;
            while let Some((at, delivery)) = pending.pop_front() {
                tally.settle(at, delivery.partition(), delivery.await);
            }
            limit = record_limit(client, &producer, &args.topic).await?;
        }
        while pending.len() > WINDOW {
            let (at, delivery) = pending.pop_front().expect("not empty");
            tally.settle(at, delivery.partition(), delivery.await);
        }
        // Settle what is known already, so that a failure (a lost
        // connection, a full disk) stops the reading at once: after a lost
        // connection every further send would wait out a reconnection.
        while let Some(outcome) = pending.front().and_then(|(_, d)| d.outcome_now()) {
            let (at, delivery) = pending.pop_front().expect("not empty");
            tally.settle(at, delivery.partition(), outcome);
        }
    }
    let flushed = if tally.failed.is_some() {
        // Batches not yet sent hold only lines after the failure: they must
        // not be written.
        producer.discard().await;
        Ok(())
    } else {
        producer.flush().await
    };
    while let Some((at, delivery)) = pending.pop_front() {
        tally.settle(at, delivery.partition(), delivery.await);
    }
    if let Some((line, e)) = refusal {
        tally.refused += 1;
        tally.failed.get_or_insert((line, e));
    }
    if let (Err(e), None) = (flushed, &tally.failed) {
        return Err(format!("{}; {e}", tally.report(&args.topic)));
    }
    let report = tally.report(&args.topic);
    if tally.failed.is_some() {
        return Err(report);
    }
    eprintln!("{report}");
    Ok(())
}
