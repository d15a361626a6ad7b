//! `spool produce`: one record per line.

use std::path::PathBuf;
use std::time::Duration;

use spool_client::{Client, Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Key of every record.
    #[arg(long)]
    key: Option<String>,
    /// Send a batch once it holds this many bytes.
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES")]
    batch_size: usize,
    /// Send a batch once its first record has waited this long.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    linger_ms: u64,
}

/// Produces every line (without its `\n`, or `\r\n`) as one record, then
/// says on stderr how many records went where.
pub async fn run(client: &Client, args: Args) -> Result<(), String> {
    let config = ProducerConfig {
        batch_bytes: args.batch_size.max(1),
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
    let key = args.key.as_deref().map(str::as_bytes);
    let mut line = Vec::new();
    let mut deliveries = Vec::new();
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("reading input: {e}"))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        deliveries.push(
            producer
                .send(&args.topic, key, &line)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    let count = deliveries.len();
    let (mut first, mut last) = (u64::MAX, 0);
    for delivery in deliveries {
        let offset = delivery
            .await
            .map_err(|e| format!("produce to {} failed: {e}", args.topic))?;
        first = first.min(offset);
        last = last.max(offset);
    }
    if count == 0 {
        eprintln!("no records written to {}", args.topic);
    } else {
        eprintln!(
            "wrote {count} records to {}, offsets {first}..{last}",
            args.topic
        );
    }
    Ok(())
}
