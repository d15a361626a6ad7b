//! `spool`: talk to a Spool broker from the shell.
//!
//! ```text
//! spool topic create NAME [--partitions N] [--retention-bytes N] [--retention-ms N] [--segment-bytes N] [--flush MODE] [--config K=V]
//! spool topic alter NAME [the same settings] [--reset KEY]
//! spool topic list | describe NAME | delete NAME
//! spool produce TOPIC [--file PATH] [--key KEY] [--batch-size BYTES] [--linger-ms MS]
//! spool consume TOPIC [--partition P] [--offset N | --from-beginning | --from-end | --from-time T] [--follow] [--max N] [--format raw|json]
//! spool consume TOPIC --group G [--commit-each] [--auto-commit-interval D] [--session-timeout D] [--follow]
//! spool group list | describe G | delete G
//! spool group reset G --topic T [--partition P] (--to-earliest | --to-latest | --to-offset N | --to-time T)
//! spool bench ...   (see `spool bench --help`)
//! ```
//!
//! The broker is `--broker HOST:PORT`, else `$SPOOL_BROKER`, else
//! `127.0.0.1:7171`. Exit status 0 on success (also when whatever reads
//! stdout goes away); otherwise one line on stderr and status 1, or status
//! 2 for a usage error (clap's usage message).

mod bench;
mod consume;
mod group;
mod kafka_bench;
mod produce;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spool_client::{Client, ClientConfig, ClientError};

#[derive(Debug, Parser)]
#[command(
    name = "spool",
    version,
    about = "Produce to, consume from and administer a Spool broker"
)]
struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "SPOOL_BROKER",
        default_value = "127.0.0.1:7171",
        value_name = "HOST:PORT"
    )]
    broker: String,
    /// Longest wait for a connection to the broker, and for its answer to
    /// the opening handshake ("10s", "500ms").
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    connect_timeout: std::time::Duration,
    /// Longest wait for the answer to any request, beyond the time a fetch
    /// asks the broker to wait for data.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    request_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of stdin (or of a file).
    Produce(produce::Args),
    /// Print a topic's records, one per line.
    Consume(consume::Args),
    /// List, describe, reset or delete consumer groups.
    #[command(subcommand)]
    Group(group::Command),
    /// Load generator: producers and consumers, throughput and latency.
    Bench(bench::Args),
}

/// Topic settings, for `create` and `alter`.
#[derive(Debug, clap::Args)]
struct SettingArgs {
    /// Partitions, each its own log (default 1; an alter can raise it, never lower it).
    #[arg(long, value_name = "N")]
    partitions: Option<String>,
    /// Delete old segments while a partition is larger than this, each partition on its own (bytes, or e.g. "10GiB", or "unlimited").
    #[arg(long, value_name = "SIZE")]
    retention_bytes: Option<String>,
    /// Delete records older than this (ms, or e.g. "7d", or "unlimited").
    #[arg(long, value_name = "DURATION")]
    retention_ms: Option<String>,
    /// Size at which a segment file rolls (bytes, or e.g. "1GiB").
    #[arg(long, value_name = "SIZE")]
    segment_bytes: Option<String>,
    /// Age at which a segment rolls (ms, or e.g. "1d").
    #[arg(long, value_name = "DURATION")]
    segment_ms: Option<String>,
    /// Largest record the topic takes (bytes, or e.g. "4MiB").
    #[arg(long, value_name = "SIZE")]
    max_record_bytes: Option<String>,
    /// When produces are acknowledged: always, interval or never (fixed once the topic exists).
    #[arg(long, value_name = "MODE")]
    flush: Option<String>,
    /// Any topic setting, as KEY=VALUE (repeatable; see docs/CLI.md).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

impl SettingArgs {
    fn pairs(self) -> Result<Vec<(String, String)>, String> {
        let mut settings: Vec<(String, String)> = [
            ("partitions", self.partitions),
            ("retention_bytes", self.retention_bytes),
            ("retention_ms", self.retention_ms),
            ("segment_bytes", self.segment_bytes),
            ("segment_ms", self.segment_ms),
            ("max_record_bytes", self.max_record_bytes),
            ("flush", self.flush),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect();
        for pair in self.config {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("--config {pair}: expected KEY=VALUE"))?;
            settings.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(settings)
    }
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Change a running topic's settings (kept across restarts; retention
    /// applies the new values at once).
    Alter {
        name: String,
        #[command(flatten)]
        settings: SettingArgs,
        /// Put a setting back to the broker's default (repeatable).
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
    },
    /// List topic names.
    List,
    /// Show a topic's offsets, size, and each setting with where its value
    /// comes from (default, file [defaults], topic, file [topics.NAME]).
    Describe { name: String },
    /// Delete a topic and all its records.
    Delete { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    if message == STDOUT_CLOSED {
        // `spool ... | head`: the reader has what it wanted. Like `cat` and
        // kcat, end quietly and successfully.
        return ExitCode::SUCCESS;
    }
    eprintln!("spool: {message}");
    ExitCode::FAILURE
}

/// The error a command ends with when whatever reads its stdout went away.
const STDOUT_CLOSED: &str = "stdout closed";

/// A failed write to stdout, as a command's error: [`STDOUT_CLOSED`] for a
/// reader that went away (`EPIPE`), which ends the command with success.
pub fn stdout_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.to_owned()
    } else {
        format!("writing to stdout: {e}")
    }
}

/// Prints one line to stdout (`println!` would panic on a closed pipe).
pub fn print_line(text: impl std::fmt::Display) -> Result<(), String> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{text}").map_err(stdout_error)
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut config = ClientConfig {
        connect_timeout: cli.connect_timeout,
        request_timeout: cli.request_timeout,
        ..ClientConfig::default()
    };
    match &cli.command {
        // A follow rides out outages itself, and says so: the client should
        // report a lost broker after seconds, not half a minute. A produce
        // stops at its first failure: only the batch being sent waits on a
        // reconnection.
        Command::Consume(args) if args.follow => {
            config.reconnect_for = std::time::Duration::from_secs(3)
        }
        Command::Produce(_) => config.reconnect_for = std::time::Duration::from_secs(3),
        _ => {}
    }
    let connect = || connect_with(&cli.broker, config.clone());
    match cli.command {
        Command::Topic(command) => topic(connect().await?, command).await,
        Command::Produce(args) => produce::run(&connect().await?, args).await,
        Command::Consume(args) => consume::run(&connect().await?, args).await,
        Command::Group(command) => group::run(connect().await?, command).await,
        Command::Bench(args) => bench::run(&cli.broker, &config, args).await,
    }
}

/// Connects with a client configuration, turning failure into the one line
/// the user sees.
pub async fn connect_with(addr: &str, config: ClientConfig) -> Result<Client, String> {
    check_address(addr)?;
    Client::connect_with(addr, config)
        .await
        .map_err(|e| match e {
            ClientError::Connect { ref reason, .. } if !reason.contains("Spool broker") => {
                format!("{e} (is the broker running? set --broker or SPOOL_BROKER)")
            }
            e => e.to_string(),
        })
}

/// A broker address must name a port: `127.0.0.1` alone would otherwise
/// fail with "invalid socket address".
fn check_address(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "broker address {addr:?} has no port: give HOST:PORT, e.g. 127.0.0.1:7171 or [::1]:7171"
        )),
    }
}

fn as_strs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

async fn topic(client: Client, command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create { name, settings } => {
            let settings = settings.pairs()?;
            client
                .create_topic(&name, &as_strs(&settings))
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created topic {name}");
        }
        TopicCommand::Alter {
            name,
            settings,
            reset,
        } => {
            let settings = settings.pairs()?;
            let reset: Vec<&str> = reset.iter().map(String::as_str).collect();
            client
                .alter_topic(&name, &as_strs(&settings), &reset)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("altered topic {name}");
        }
        TopicCommand::List => {
            for name in client.list_topics().await.map_err(|e| e.to_string())? {
                print_line(&name)?;
            }
        }
        TopicCommand::Describe { name } => {
            let d = client
                .describe_topic(&name)
                .await
                .map_err(|e| e.to_string())?;
            print_line(format_args!("{:<20}{name}", "topic:"))?;
            // One partition: its range. Several: the totals, then a line each.
            let segments: u32 = d.partitions.iter().map(|p| p.segments).sum();
            match d.partitions.as_slice() {
                [p] => print_line(format_args!(
                    "{:<20}{} .. {} ({} records)",
                    "offsets:",
                    p.log_start,
                    p.log_end,
                    p.log_end.saturating_sub(p.log_start)
                ))?,
                all => {
                    print_line(format_args!("{:<20}{}", "partitions:", all.len()))?;
                    print_line(format_args!("{:<20}{}", "records:", d.records()))?;
                }
            }
            print_line(format_args!(
                "{:<20}{} bytes in {} segment(s)",
                "size:",
                d.size_bytes(),
                segments
            ))?;
            let (torn_files, torn_bytes) = d
                .partitions
                .iter()
                .fold((0, 0), |(f, b), p| (f + p.torn_files, b + p.torn_bytes));
            if torn_files > 0 {
                // Bytes recovery cut off a torn tail (docs/STORAGE.md says
                // how to inspect and remove them).
                print_line(format_args!(
                    "{:<20}{torn_bytes} bytes in {torn_files} file(s) cut off torn tails, counted in size",
                    "torn:"
                ))?;
            }
            if d.partitions.len() > 1 {
                for p in &d.partitions {
                    print_line(format_args!(
                        "{:<20}{} .. {} ({} records), {} bytes in {} segment(s)",
                        format!("partition {}:", p.partition),
                        p.log_start,
                        p.log_end,
                        p.log_end.saturating_sub(p.log_start),
                        p.size_bytes,
                        p.segments
                    ))?;
                }
            }
            for (k, v) in &d.settings {
                let source = d
                    .sources
                    .iter()
                    .find(|(key, _)| key == k)
                    .map_or("", |(_, s)| s.as_str());
                print_line(format_args!("{:<20}{:<16}({source})", format!("{k}:"), v))?;
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(&name)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("deleted topic {name}");
        }
    }
    Ok(())
}
