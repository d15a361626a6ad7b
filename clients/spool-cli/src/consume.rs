//! `spool consume`: records to stdout, raw or as JSON lines.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use spool_client::{Client, Consumer, ConsumerConfig, OffsetReset, Record, StartAt};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("start").args(["offset", "from_beginning", "from_end", "from_time"])))]
pub struct Args {
    pub topic: String,
    /// Start at this offset.
    #[arg(long)]
    offset: Option<u64>,
    /// Start at the oldest record still stored (the default).
    #[arg(long)]
    from_beginning: bool,
    /// Start after the newest record: print only records produced from now on.
    #[arg(long)]
    from_end: bool,
    /// Start at the first record appended at or after this time: RFC 3339 in
    /// UTC (2026-11-24T09:30:00Z) or milliseconds since the epoch.
    #[arg(long, value_name = "TIME")]
    from_time: Option<String>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// raw: each value on its own line. json: one object per line with
    /// offset, timestamp, key and value.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Raw,
    Json,
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    // humantime reads UTC times only; an RFC 3339 offset (`+01:00`) is
    // split off here and applied to the result.
    let (local, offset_ms) = split_utc_offset(text);
    let time = humantime::parse_rfc3339_weak(local).map_err(|e| {
        format!("--from-time {text:?}: expected RFC 3339 (e.g. 2026-11-24T09:00:00Z or +01:00) or milliseconds: {e}")
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

pub async fn run(client: &Client, args: Args) -> Result<(), String> {
    let start = match (&args.offset, args.from_end, &args.from_time) {
        (Some(o), _, _) => StartAt::Offset(*o),
        (_, true, _) => StartAt::Latest,
        (_, _, Some(t)) => StartAt::Timestamp(parse_time(t)?),
        _ => StartAt::Earliest,
    };
    // Without --follow, stop at the end the topic has now.
    let end = if args.follow {
        u64::MAX
    } else {
        client
            .describe_topic(&args.topic)
            .await
            .map_err(|e| e.to_string())?
            .log_end
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
    let mut consumer = Consumer::new(client.clone(), &args.topic, start, config);
    let first = consumer.position().await.map_err(|e| e.to_string())?;
    if first > end {
        let start = client
            .describe_topic(&args.topic)
            .await
            .map_err(|e| e.to_string())?
            .log_start;
        // Worded as the broker words it when it finds the same.
        return Err(format!(
            "{}: offset {first} is out of range; the log holds [{start}, {end})",
            spool_client::ErrorCode::OffsetOutOfRange
        ));
    }
    let max = args.max.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut printed = 0u64;
    while printed < max {
        if consumer.position().await.map_err(|e| e.to_string())? >= end {
            break;
        }
        let records = consumer.poll().await.map_err(|e| e.to_string())?;
        for record in records
            .iter()
            .take_while(|r| r.offset < end)
            .take((max - printed) as usize)
        {
            print_record(&mut out, record, args.format).map_err(crate::stdout_error)?;
            printed += 1;
        }
        if args.follow {
            out.flush().map_err(crate::stdout_error)?;
        }
    }
    out.flush().map_err(crate::stdout_error)
}

fn print_record(out: &mut impl Write, record: &Record, format: Format) -> std::io::Result<()> {
    match format {
        Format::Raw => {
            out.write_all(&record.value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let mut object = serde_json::Map::new();
            object.insert("offset".into(), record.offset.into());
            object.insert("timestamp".into(), record.timestamp.into());
            put_bytes(&mut object, "key", record.key.as_deref());
            put_bytes(&mut object, "value", Some(&record.value));
            if !record.headers.is_empty() {
                let headers: Vec<serde_json::Value> = record
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let mut h = serde_json::Map::new();
                        h.insert("name".into(), name.clone().into());
                        put_bytes(&mut h, "value", Some(value));
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
    use super::parse_time;

    #[test]
    fn times_with_and_without_offsets() {
        let utc = parse_time("2026-11-24T09:00:00Z").unwrap();
        assert_eq!(utc, 1_795_510_800_000);
        assert_eq!(parse_time("2026-11-24T10:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-11-24T03:30:00-05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-11-24T09:00:00.250Z").unwrap(), utc + 250);
        assert_eq!(parse_time("1795510800000").unwrap(), utc);
        assert!(parse_time("2026-11-24T09:00:00+1:00").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
