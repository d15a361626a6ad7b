//! `spool group`: list, describe, reset and delete consumer groups (those
//! of `spool consume --group` and of Kafka clients alike).

use std::collections::BTreeMap;

use spool_client::{Client, ErrorCode, OffsetSpec};

use crate::print_line;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every group: with members, or with committed offsets only.
    List,
    /// A group's members and their partitions, and per partition the
    /// committed offset, the log end and the lag.
    Describe { group: String },
    /// Move a group's committed offsets (refused while it has members).
    Reset(ResetArgs),
    /// Forget a group and its committed offsets (refused while it has
    /// members).
    Delete { group: String },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_time"])))]
pub struct ResetArgs {
    group: String,
    #[arg(long, short = 't')]
    topic: String,
    /// Only this partition (by default, every partition of the topic).
    #[arg(long, short = 'p', value_name = "P")]
    partition: Option<u32>,
    /// To the oldest record still stored.
    #[arg(long)]
    to_earliest: bool,
    /// To the end: the group skips what is stored now.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (kept within each partition's stored range).
    #[arg(long, value_name = "N")]
    to_offset: Option<u64>,
    /// To the first record at or after this time: as `spool consume
    /// --from-time` (RFC 3339, ms since the epoch, or a time ago).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    to_time: Option<String>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub async fn run(client: Client, command: Command) -> Result<(), String> {
    match command {
        Command::List => {
            let groups = client.list_groups().await.map_err(err)?;
            if groups.is_empty() {
                eprintln!("no groups");
            }
            print_line(format_args!("{:<32} {:<20} TYPE", "GROUP", "STATE"))?;
            for g in groups {
                let kind = if g.protocol_type.is_empty() {
                    "(offsets only)"
                } else {
                    g.protocol_type.as_str()
                };
                print_line(format_args!("{:<32} {:<20} {kind}", g.group, g.state))?;
            }
            Ok(())
        }
        Command::Describe { group } => describe(&client, &group).await,
        Command::Reset(args) => reset(&client, args).await,
        Command::Delete { group } => {
            client.delete_group(&group).await.map_err(|e| {
                if e.code() == Some(ErrorCode::GroupNotEmpty) {
                    format!("{e} (stop its consumers first)")
                } else {
                    e.to_string()
                }
            })?;
            eprintln!("deleted group {group}");
            Ok(())
        }
    }
}

async fn describe(client: &Client, group: &str) -> Result<(), String> {
    let d = client.describe_group(group).await.map_err(err)?;
    let assigner = match d.protocol.as_str() {
        "spool" => "the broker".to_owned(),
        "" => "none yet".to_owned(),
        other => format!("its Kafka clients ({other})"),
    };
    print_line(format_args!("{:<16}{group}", "group:"))?;
    print_line(format_args!("{:<16}{}", "state:", d.state))?;
    print_line(format_args!("{:<16}{}", "assigned by:", assigner))?;
    print_line(format_args!("{:<16}{}", "members:", d.members.len()))?;
    // Which member consumes each partition.
    let mut owner: BTreeMap<(String, u32), String> = BTreeMap::new();
    for m in &d.members {
        let parts: Vec<String> = m
            .assignment
            .iter()
            .map(|(t, ps)| {
                let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
                format!("{t}[{}]", ps.join(","))
            })
            .collect();
        let host = if m.client_host.is_empty() {
            String::new()
        } else {
            format!(" {}", m.client_host)
        };
        print_line(format_args!(
            "  {} ({}{host}): {}",
            m.member_id,
            m.client_id,
            if parts.is_empty() {
                "no partitions".to_owned()
            } else {
                parts.join(" ")
            }
        ))?;
        for (t, ps) in &m.assignment {
            for p in ps {
                owner.insert((t.clone(), *p), m.member_id.clone());
            }
        }
    }
    let commits = client.committed_offsets(group, None).await.map_err(err)?;
    let mut topics: Vec<String> = commits.iter().map(|(t, _, _)| t.clone()).collect();
    topics.extend(owner.keys().map(|(t, _)| t.clone()));
    topics.sort();
    topics.dedup();
    if topics.is_empty() {
        return Ok(());
    }
    print_line(format_args!(
        "\n{:<24} {:>9} {:>12} {:>12} {:>10}  MEMBER",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    ))?;
    for topic in topics {
        let count = match client.partition_count(&topic).await {
            Ok(n) => n,
            Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
                print_line(format_args!("{topic:<24} (topic deleted)"))?;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let asks: Vec<(u32, OffsetSpec)> = (0..count).map(|p| (p, OffsetSpec::Latest)).collect();
        let ends = client.list_offsets_of(&topic, &asks).await.map_err(err)?;
        for (p, end) in ends {
            let end = end.map_err(err)?.log_end;
            let committed = commits
                .iter()
                .find(|(t, cp, _)| *t == topic && *cp == p)
                .map(|(_, _, c)| c.offset);
            let member = owner.get(&(topic.clone(), p)).map_or("-", String::as_str);
            if committed.is_none() && member == "-" {
                continue;
            }
            let (c, lag) = match committed {
                Some(c) => (c.to_string(), end.saturating_sub(c).to_string()),
                None => ("-".to_owned(), "-".to_owned()),
            };
            print_line(format_args!(
                "{topic:<24} {p:>9} {c:>12} {end:>12} {lag:>10}  {member}"
            ))?;
        }
    }
    Ok(())
}

async fn reset(client: &Client, args: ResetArgs) -> Result<(), String> {
    match client.describe_group(&args.group).await {
        Ok(d) if !d.members.is_empty() => {
            return Err(format!(
                "{}: group {} has {} member(s); stop its consumers before resetting it",
                ErrorCode::GroupNotEmpty,
                args.group,
                d.members.len()
            ))
        }
        // A group not known yet can be given offsets to start from.
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => {}
        Err(e) => return Err(e.to_string()),
    }
    let count = client.partition_count(&args.topic).await.map_err(err)?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => {
            return Err(format!(
                "{}: topic {} has no partition {p}: it has {count} (numbered from 0)",
                ErrorCode::UnknownPartition,
                args.topic
            ))
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let spec = if args.to_earliest {
        OffsetSpec::Earliest
    } else if let Some(t) = &args.to_time {
        OffsetSpec::Timestamp(crate::consume::parse_time(t, crate::consume::now_ms())?)
    } else {
        OffsetSpec::Latest
    };
    let asks: Vec<(u32, OffsetSpec)> = partitions.iter().map(|&p| (p, spec)).collect();
    let found = client
        .list_offsets_of(&args.topic, &asks)
        .await
        .map_err(err)?;
    let mut offsets = Vec::new();
    for (p, f) in found {
        let f = f.map_err(err)?;
        let to = match args.to_offset {
            Some(n) => n.clamp(f.log_start, f.log_end),
            None => f.offset,
        };
        if args.to_offset.is_some_and(|n| n != to) {
            eprintln!(
                "spool: partition {p} holds [{}, {}): offset {} moved to {to}",
                f.log_start,
                f.log_end,
                args.to_offset.unwrap_or(0)
            );
        }
        offsets.push((args.topic.as_str(), p, to));
    }
    client
        .commit_offsets(&args.group, &offsets)
        .await
        .map_err(err)?;
    print_line(format_args!(
        "{:<24} {:>9} {:>12}",
        "TOPIC", "PARTITION", "NEW-OFFSET"
    ))?;
    for (t, p, o) in &offsets {
        print_line(format_args!("{t:<24} {p:>9} {o:>12}"))?;
    }
    Ok(())
}
