//! `spool consume`: records to stdout, raw or as JSON lines.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use spool_client::PartitionDescription;
use spool_client::{
    Client, ClientError, Consumer, ConsumerConfig, ErrorCode, GroupConfig, GroupConsumer,
    OffsetReset, Rebalance, Record, StartAt,
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("start").args(["offset", "from_beginning", "from_end", "from_time"])))]
pub struct Args {
    pub topic: String,
    /// Read only this partition (by default, every partition: each in
    /// offset order, one after another within a fetch).
    #[arg(long, short = 'p', value_name = "P")]
    partition: Option<u32>,
    /// Start at this offset (in each partition read); a negative one counts
    /// back from each partition's end (`--offset -10`: the last ten
    /// records of each).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    offset: Option<i64>,
    /// Start at the oldest record still stored (the default).
    #[arg(long)]
    from_beginning: bool,
    /// Start after the newest record: print only records produced from now on.
    #[arg(long)]
    from_end: bool,
    /// Start, in each partition, at the first batch whose timestamp is this
    /// time or later (the producers' timestamps, or the broker's append
    /// times for a topic with timestamp_type = "log_append"): RFC 3339
    /// (2026-11-24T09:30:00Z, or with an offset such as +01:00),
    /// milliseconds since the epoch, or a time ago ("5m", "-5m", "1h 30m").
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    from_time: Option<String>,
    /// Keep waiting for new records instead of stopping at the end. Waits
    /// for a topic that does not exist yet, and rides out the broker going
    /// away (saying so on stderr).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// raw: each value on its own line. json: one object per line, with
    /// `partition`, `offset`, `timestamp` (ms since the epoch), `key` (null if none),
    /// `value` and, if the record has any, `headers` (a list of `{"name",
    /// "value"}`); a key, value or header value that is not UTF-8 is given
    /// as base64 under `key_base64`, `value_base64` or `value_base64`
    /// instead. `spool produce --format json` reads these lines back.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Print each record with this template instead, as kcat's -f: %t
    /// topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers
    /// (name=value,...), %K key and %S value size in bytes (-1 without a
    /// key), %% a percent sign; \n, \t, \r and \\ are escapes. No newline is
    /// added: end the template with \n.
    #[arg(short = 'f', long, value_name = "TEMPLATE", conflicts_with = "format")]
    template: Option<String>,
    /// When the next offset is no longer stored (retention deleted it while
    /// this consumer was behind, or --offset is below the log's start):
    /// earliest jumps to the oldest record left, with a warning; latest to
    /// the end; error stops.
    #[arg(long, value_enum, default_value_t = OnOutOfRange::Earliest, value_name = "POLICY")]
    on_out_of_range: OnOutOfRange,
    /// Consume as a member of this group: the broker shares the topic's
    /// partitions among the group's members (every `spool consume --group`
    /// of that name), each partition is read from the group's commit, and
    /// what is printed is committed. --from-beginning (the default) and
    /// --from-end apply to partitions the group has no commit for. Without
    /// --follow, stops once its partitions are read to their ends.
    #[arg(long, short = 'g', value_name = "GROUP", conflicts_with_all = ["partition", "offset", "from_time"])]
    group: Option<String>,
    /// With --group: commit after each record printed (else every
    /// --auto-commit-interval, when partitions move, and at the end).
    #[arg(long, requires = "group")]
    commit_each: bool,
    /// With --group: how often what was printed is committed.
    #[arg(long, requires = "group", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    auto_commit_interval: Duration,
    /// With --group: the broker gives this member's partitions to the
    /// others when it has not heard from it for this long (a killed
    /// process); a stopped one (Ctrl-C, end of input) hands them over at
    /// once.
    #[arg(long, requires = "group", default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    session_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Raw,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOutOfRange {
    Error,
    Earliest,
    Latest,
}

/// How a record is printed.
enum Output {
    Raw,
    Json,
    Template(Vec<Piece>),
}

/// One part of a `-f` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeySize,
    ValueSize,
}

fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let field = match c {
            '%' => match chars.next() {
                Some('t') => Piece::Topic,
                Some('p') => Piece::Partition,
                Some('o') => Piece::Offset,
                Some('k') => Piece::Key,
                Some('s') => Piece::Value,
                Some('T') => Piece::Timestamp,
                Some('h') => Piece::Headers,
                Some('K') => Piece::KeySize,
                Some('S') => Piece::ValueSize,
                Some('%') => {
                    literal.push(b'%');
                    continue;
                }
                other => {
                    return Err(format!(
                    "-f {text:?}: unknown field %{}; the fields are %t %p %o %k %s %T %h %K %S and %%",
                    other.map_or(String::new(), String::from)
                ))
                }
            },
            '\\' => {
                let escaped = match chars.next() {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('\\') => '\\',
                    other => {
                        return Err(format!(
                        "-f {text:?}: unknown escape \\{}; the escapes are \\n \\t \\r and \\\\",
                        other.map_or(String::new(), String::from)
                    ))
                    }
                };
                let mut buf = [0u8; 4];
                literal.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            c => {
                let mut buf = [0u8; 4];
                literal.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
        };
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(field);
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

/// A time to start from, in ms since the epoch: milliseconds since the
/// epoch, a duration ago ("5m", "-5m", "1h 30m"), or RFC 3339.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let ago = text.strip_prefix('-').unwrap_or(text);
    if let Ok(d) = humantime::parse_duration(ago) {
        return Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    // humantime reads UTC times only; an RFC 3339 offset (`+01:00`) is
    // split off here and applied to the result.
    let (local, offset_ms) = split_utc_offset(text);
    let time = humantime::parse_rfc3339_weak(local).map_err(|e| {
        format!("--from-time {text:?}: expected RFC 3339 (e.g. 2026-11-24T09:00:00Z or +01:00), milliseconds, or a time ago such as 5m: {e}")
    })?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("--from-time {text:?} is before 1970"))?;
    Ok(since.as_millis() as i64 - offset_ms)
}

/// `(the time without its offset, the offset in ms)` for a time ending in
/// `+HH:MM` or `-HH:MM`; the text as it is, and 0, otherwise.
fn split_utc_offset(text: &str) -> (&str, i64) {
    let b = text.as_bytes();
    let n = b.len();
    let is_offset = n > 6
        && matches!(b[n - 6], b'+' | b'-')
        && b[n - 3] == b':'
        && text[..n - 6].contains(['T', 't', ' ']);
    if !is_offset {
        return (text, 0);
    }
    let (Ok(h), Ok(m)) = (
        text[n - 5..n - 3].parse::<i64>(),
        text[n - 2..].parse::<i64>(),
    ) else {
        return (text, 0);
    };
    let sign = if b[n - 6] == b'-' { -1 } else { 1 };
    (&text[..n - 6], sign * (h * 3600 + m * 60) * 1000)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Errors a `--follow` rides out: the broker went away or the topic is not
/// there (yet, or any more).
fn transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. } | ClientError::Disconnected(_) | ClientError::Timeout(_)
    ) || e.code() == Some(ErrorCode::UnknownTopic)
}

/// Says on stderr, once per outage, that a `--follow` is waiting, and when
/// it is back.
#[derive(Default)]
struct Outage {
    since: Option<String>,
}

impl Outage {
    fn waiting(&mut self, topic: &str, e: &ClientError) {
        if self.since.is_none() {
            let what = if e.code() == Some(ErrorCode::UnknownTopic) {
                format!("topic {topic} does not exist; waiting for it to be created")
            } else {
                format!("{e}; retrying until the broker is back")
            };
            eprintln!("spool: {what}");
            self.since = Some(what);
        }
    }

    fn over(&mut self, positions: &[(u32, u64)]) {
        if self.since.take().is_some() {
            match positions {
                [(_, offset)] => eprintln!("spool: reading again from offset {offset}"),
                all => {
                    let list: Vec<String> = all.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                    eprintln!("spool: reading again from offsets {}", list.join(", "));
                }
            }
        }
    }
}

/// How long a `--follow` waits between tries while the broker or the topic
/// is away.
const RETRY: Duration = Duration::from_millis(500);

fn output_of(args: &Args) -> Result<Output, String> {
    Ok(match &args.template {
        Some(t) => Output::Template(parse_template(t)?),
        None if args.format == Format::Json => Output::Json,
        None => Output::Raw,
    })
}

pub async fn run(client: &Client, args: Args) -> Result<(), String> {
    if let Some(group) = args.group.clone() {
        return run_group(client, &group, args).await;
    }
    let output = output_of(&args)?;
    let mut outage = Outage::default();
    // The topic as it is now; with --follow, waiting for it to exist.
    let described = loop {
        match client.describe_topic(&args.topic).await {
            Ok(d) => break d,
            Err(e) if args.follow && transient(&e) => {
                outage.waiting(&args.topic, &e);
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let partitions: Vec<PartitionDescription> = match args.partition {
        None => described.partitions.clone(),
        Some(p) => match described.partitions.iter().find(|d| d.partition == p) {
            Some(d) => vec![d.clone()],
            None => {
                return Err(format!(
                    "{}: topic {} has no partition {p}: it has {} (numbered from 0)",
                    ErrorCode::UnknownPartition,
                    args.topic,
                    described.partitions.len()
                ))
            }
        },
    };
    let one = partitions.len() == 1;
    let start = match (&args.offset, args.from_end, &args.from_time) {
        // Counted back from each partition's end, below.
        (Some(o), _, _) if *o < 0 => StartAt::Latest,
        (Some(o), _, _) => StartAt::Offset(*o as u64),
        (_, true, _) => StartAt::Latest,
        (_, _, Some(t)) => StartAt::Timestamp(parse_time(t, now_ms())?),
        _ => StartAt::Earliest,
    };
    // An explicit offset past the end is a mistake, with --follow too (the
    // out-of-range policy is for records retention took away): for one
    // partition. Of several, one shorter than that starts at its end.
    let past_end =
        |p: &PartitionDescription| args.offset.is_some_and(|o| o >= 0 && o as u64 > p.log_end);
    if let (true, Some(p)) = (one, partitions.first().filter(|p| past_end(p))) {
        // Worded as the broker words it when it finds the same.
        return Err(format!(
            "{}: offset {} is out of range; the log holds [{}, {})",
            ErrorCode::OffsetOutOfRange,
            args.offset.unwrap_or(0),
            p.log_start,
            p.log_end
        ));
    }
    // Without --follow, stop at the ends the partitions have now.
    let end_of = |partition: u32| {
        if args.follow {
            return u64::MAX;
        }
        partitions
            .iter()
            .find(|p| p.partition == partition)
            .map_or(0, |p| p.log_end)
    };
    let config = ConsumerConfig {
        max_wait: if args.follow {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        },
        reset: OffsetReset::Error,
        ..ConsumerConfig::default()
    };
    let mut consumer = match args.partition {
        Some(p) => Consumer::assign(client.clone(), &args.topic, &[p], start, config),
        None => Consumer::new(client.clone(), &args.topic, start, config),
    };
    // The consumer learns the partitions first; then some start elsewhere.
    consumer.positions().await.map_err(|e| e.to_string())?;
    for p in &partitions {
        let back = args.offset.filter(|o| *o < 0).map(i64::unsigned_abs);
        let to = match back {
            Some(n) => Some(p.log_end.saturating_sub(n).max(p.log_start)),
            None if past_end(p) => Some(p.log_end),
            None => None,
        };
        if let Some(to) = to {
            consumer.seek_partition(p.partition, StartAt::Offset(to));
        }
    }
    let first = consumer.positions().await.map_err(|e| e.to_string())?;
    outage.over(&first);
    let max = args.max.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut printed = 0u64;
    while printed < max {
        let (at, polled) = match consumer.positions().await {
            Ok(at) if at.iter().all(|&(p, o)| o >= end_of(p)) => break,
            Ok(at) => (at, consumer.poll().await),
            Err(e) => (Vec::new(), Err(e)),
        };
        let messages = match polled {
            Ok(messages) => {
                if !consumer.is_retrying() {
                    outage.over(&at);
                }
                messages
            }
            Err(ClientError::OutOfRange {
                partition,
                offset: from,
                log_start,
                log_end,
                message,
            }) => {
                let to = match args.on_out_of_range {
                    OnOutOfRange::Error => {
                        return Err(format!("{}: {message}", ErrorCode::OffsetOutOfRange))
                    }
                    OnOutOfRange::Earliest => log_start,
                    OnOutOfRange::Latest => log_end,
                };
                let which = if one {
                    args.topic.clone()
                } else {
                    format!("{} partition {partition}", args.topic)
                };
                if from > log_end {
                    // Ahead of the log: it was deleted and made again, or
                    // --offset named a future one. Start over from its start.
                    eprintln!(
                        "spool: offset {from} is past the end of {which} (the log holds [{log_start}, {log_end})); continuing at {to}"
                    );
                } else {
                    eprintln!(
                        "spool: offsets {from}..{log_start} of {which} are no longer stored (retention); skipped {} records, continuing at {to}",
                        to.saturating_sub(from)
                    );
                }
                consumer.seek_partition(partition, StartAt::Offset(to));
                continue;
            }
            Err(e) if args.follow && transient(&e) => {
                outage.waiting(&args.topic, &e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        for m in messages
            .iter()
            .filter(|m| m.offset < end_of(m.partition))
            .take((max - printed) as usize)
        {
            print_record(&mut out, &args.topic, m.partition, m, &output)
                .map_err(crate::stdout_error)?;
            printed += 1;
        }
        if args.follow {
            out.flush().map_err(crate::stdout_error)?;
        }
    }
    out.flush().map_err(crate::stdout_error)
}

/// Resolves when the process is asked to stop (Ctrl-C, SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `spool consume --group`: a member of the group, printing its share of
/// the topic. Output is flushed before what it printed is committed, so a
/// commit never covers a record not yet written.
async fn run_group(client: &Client, group: &str, args: Args) -> Result<(), String> {
    let output = output_of(&args)?;
    let config = GroupConfig {
        client_id: "spool-cli".into(),
        session_timeout: args.session_timeout,
        auto_commit: Some(args.auto_commit_interval),
        start: if args.from_end {
            StartAt::Latest
        } else {
            StartAt::Earliest
        },
        consumer: ConsumerConfig {
            max_wait: Duration::from_millis(if args.follow { 500 } else { 100 }),
            reset: match args.on_out_of_range {
                OnOutOfRange::Error => OffsetReset::Error,
                OnOutOfRange::Earliest => OffsetReset::Earliest,
                OnOutOfRange::Latest => OffsetReset::Latest,
            },
            ..ConsumerConfig::default()
        },
    };
    // Without --follow, the ends to read up to, as the topic has them now.
    let ends: Vec<u64> = if args.follow {
        Vec::new()
    } else {
        let d = client
            .describe_topic(&args.topic)
            .await
            .map_err(|e| e.to_string())?;
        d.partitions.iter().map(|p| p.log_end).collect()
    };
    let mut member =
        GroupConsumer::new(client.clone(), group, &args.topic, config).on_rebalance(|change| {
            match change {
                Rebalance::Assigned(ps) => eprintln!("spool: consuming partitions {ps:?}"),
                Rebalance::Revoked(ps) => eprintln!("spool: handed partitions {ps:?} over"),
                Rebalance::Lost(ps) => {
                    eprintln!("spool: lost partitions {ps:?} (the session ended)")
                }
            }
        });
    let max = args.max.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut printed = 0u64;
    let stop = stop_signal();
    tokio::pin!(stop);
    let ended = loop {
        if printed >= max {
            break Ok(());
        }
        // With --commit-each, one record at a time: a commit covers
        // exactly the records printed.
        let n = if args.commit_each {
            1
        } else {
            (max - printed) as usize
        };
        let polled = tokio::select! {
            polled = member.poll_max(n) => polled,
            _ = &mut stop => break Ok(()),
        };
        let messages = match polled {
            Ok(m) => m,
            Err(e) if args.follow && transient(&e) => {
                eprintln!("spool: {e}; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => break Err(e.to_string()),
        };
        let mut failed = None;
        for m in &messages {
            if let Err(e) = print_record(&mut out, &args.topic, m.partition, m, &output) {
                failed = Some(crate::stdout_error(e));
                break;
            }
            printed += 1;
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if let Err(e) = out.flush() {
            break Err(crate::stdout_error(e));
        }
        if args.commit_each && !messages.is_empty() {
            if let Err(e) = member.commit().await {
                break Err(e.to_string());
            }
        }
        // Without --follow: done once the partitions are read to the ends
        // they had at the start (or a poll finds nothing more).
        let held = member.assignment();
        let read_to_ends = held.iter().all(|&p| {
            let end = ends.get(p as usize).copied().unwrap_or(0);
            member.position(p).is_some_and(|at| at >= end)
        });
        if !args.follow && !held.is_empty() && (messages.is_empty() || read_to_ends) {
            break Ok(());
        }
    };
    let flushed = out.flush().map_err(crate::stdout_error);
    // Commits what was printed and hands the partitions over.
    let closed = if ended.is_ok() && flushed.is_ok() {
        member.close().await.map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    ended.and(flushed).and(closed)
}

fn print_record(
    out: &mut impl Write,
    topic: &str,
    partition: u32,
    record: &Record,
    output: &Output,
) -> std::io::Result<()> {
    match output {
        Output::Raw => {
            out.write_all(record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Output::Template(pieces) => {
            for piece in pieces {
                match piece {
                    Piece::Text(t) => out.write_all(t)?,
                    Piece::Topic => out.write_all(topic.as_bytes())?,
                    Piece::Partition => write!(out, "{partition}")?,
                    Piece::Offset => write!(out, "{}", record.offset)?,
                    Piece::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                    Piece::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                    Piece::Timestamp => write!(out, "{}", record.timestamp)?,
                    Piece::Headers => {
                        for (i, (name, value)) in record.headers.iter().enumerate() {
                            if i > 0 {
                                out.write_all(b",")?;
                            }
                            out.write_all(name.as_bytes())?;
                            out.write_all(b"=")?;
                            out.write_all(value.as_deref().unwrap_or_default())?;
                        }
                    }
                    Piece::KeySize => match &record.key {
                        Some(k) => write!(out, "{}", k.len())?,
                        None => out.write_all(b"-1")?,
                    },
                    Piece::ValueSize => match &record.value {
                        Some(v) => write!(out, "{}", v.len())?,
                        None => out.write_all(b"-1")?,
                    },
                }
            }
            Ok(())
        }
        Output::Json => {
            let mut object = serde_json::Map::new();
            object.insert("partition".into(), partition.into());
            object.insert("offset".into(), record.offset.into());
            object.insert("timestamp".into(), record.timestamp.into());
            put_bytes(&mut object, "key", record.key.as_deref());
            put_bytes(&mut object, "value", record.value.as_deref());
            if !record.headers.is_empty() {
                let headers: Vec<serde_json::Value> = record
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let mut h = serde_json::Map::new();
                        h.insert("name".into(), name.clone().into());
                        put_bytes(&mut h, "value", value.as_deref());
                        h.into()
                    })
                    .collect();
                object.insert("headers".into(), headers.into());
            }
            serde_json::to_writer(&mut *out, &serde_json::Value::Object(object))?;
            out.write_all(b"\n")
        }
    }
}

/// Text as a JSON string; bytes that are not UTF-8 as base64 under
/// `<field>_base64`, so that nothing is lost.
fn put_bytes(
    object: &mut serde_json::Map<String, serde_json::Value>,
    field: &str,
    bytes: Option<&[u8]>,
) {
    match bytes {
        None => {
            object.insert(field.into(), serde_json::Value::Null);
        }
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => {
                object.insert(field.into(), text.into());
            }
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                object.insert(format!("{field}_base64"), encoded.into());
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_template, parse_time, Piece};

    #[test]
    fn times_with_and_without_offsets() {
        let parse = |t: &str| parse_time(t, 0);
        let utc = parse("2026-11-24T09:00:00Z").unwrap();
        assert_eq!(utc, 1_795_510_800_000);
        assert_eq!(parse("2026-11-24T10:00:00+01:00").unwrap(), utc);
        assert_eq!(parse("2026-11-24T03:30:00-05:30").unwrap(), utc);
        assert_eq!(parse("2026-11-24T09:00:00.250Z").unwrap(), utc + 250);
        assert_eq!(parse("1795510800000").unwrap(), utc);
        assert!(parse("2026-11-24T09:00:00+1:00").is_err());
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 1_795_510_800_000;
        assert_eq!(parse_time("5m", now).unwrap(), now - 300_000);
        assert_eq!(parse_time("-5m", now).unwrap(), now - 300_000);
        assert_eq!(parse_time("1h 30m", now).unwrap(), now - 5_400_000);
    }

    #[test]
    fn templates_parse_fields_escapes_and_text() {
        assert_eq!(
            parse_template("%o %k=%s\\n%%").unwrap(),
            vec![
                Piece::Offset,
                Piece::Text(b" ".to_vec()),
                Piece::Key,
                Piece::Text(b"=".to_vec()),
                Piece::Value,
                Piece::Text(b"\n%".to_vec()),
            ]
        );
        assert!(parse_template("%x")
            .unwrap_err()
            .contains("unknown field %x"));
        assert!(parse_template("\\q")
            .unwrap_err()
            .contains("unknown escape"));
    }
}
