//! Consumer groups through real Kafka clients against the real
//! `spool-broker` binary: kafka-python and confluent-kafka group consumers
//! (range, roundrobin, cooperative-sticky) sharing a 4-partition topic as
//! members come and go, their commits surviving `kill -9`, static
//! membership, and `kcat -G`. The scenarios are in tests/kafka_clients
//! (`kafka_python_groups.py`, `confluent_groups.py`, `groups_common.py`).

mod common;

use std::path::Path;

use common::clients::{client_script, kcat};
use common::process::{spawn, Process};

/// A broker whose groups' first rebalance does not wait (Kafka's default
/// 3 s delay would only slow the scenarios), with 4 partitions per topic.
fn broker(dir: &Path) -> Process {
    let config = dir.join("spool.toml");
    std::fs::write(
        &config,
        "[groups]\ninitial_rebalance_delay = \"0s\"\n[defaults]\npartitions = 4\n",
    )
    .unwrap();
    let data = dir.join("data");
    spawn(&data, &["--config", config.to_str().unwrap()])
}

/// Runs a scenario's `share` phase, kills the broker with SIGKILL,
/// restarts it on the same data and runs `resume`: a new member starts
/// at the commits made before the kill.
fn share_then_resume(script: &str, topic: &str, assignor: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let kafka = b.kafka.unwrap().to_string();
    client_script(script, &[&kafka, topic, "share", assignor]);
    b.kill9();
    let b = broker(dir.path());
    let kafka = b.kafka.unwrap().to_string();
    client_script(script, &[&kafka, topic, "resume", assignor]);
    b.kill9();
}

#[test]
fn kafka_python_range_members_share_a_topic_and_resume_after_kill_9() {
    share_then_resume("kafka_python_groups.py", "kp-range", "range");
}

#[test]
fn kafka_python_roundrobin_members_share_a_topic() {
    share_then_resume("kafka_python_groups.py", "kp-rr", "roundrobin");
}

#[test]
fn confluent_cooperative_sticky_members_share_a_topic_and_static_members_rejoin_in_place() {
    share_then_resume("confluent_groups.py", "ck-coop", "cooperative-sticky");
}

#[test]
fn confluent_range_members_share_a_topic() {
    share_then_resume("confluent_groups.py", "ck-range", "range");
}

/// `kcat -G`: a group consumer that reads what the group has not
/// committed, commits as it goes (librdkafka's auto-commit, and at close),
/// and so, run again, reads only what was produced since.
#[test]
fn kcat_g_consumes_as_a_group_and_resumes_from_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let lines: String = (0..8).map(|i| format!("k{i}\n")).collect();
    kcat(&b, &["-P", "-t", "kc", "-p", "1"], lines.as_bytes());
    let group = |b: &Process| {
        let out = kcat(
            b,
            &[
                "-G",
                "kg",
                "kc",
                "-e",
                "-q",
                "-X",
                "auto.offset.reset=earliest",
                "-f",
                "%p:%o:%s\\n",
            ],
            b"",
        );
        out.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let first = group(&b);
    let want: Vec<String> = (0..8).map(|i| format!("1:{i}:k{i}")).collect();
    assert_eq!(first, want);
    assert_eq!(
        group(&b),
        Vec::<String>::new(),
        "read again what was committed"
    );
    kcat(&b, &["-P", "-t", "kc", "-p", "3"], b"later\n");
    // Across a restart too.
    b.kill9();
    let b = broker(dir.path());
    assert_eq!(group(&b), ["3:0:later"]);
    b.kill9();
}

/// A kafka-python member in another process is killed with SIGKILL (no
/// LeaveGroup): when its session ends the broker removes it, and the
/// member left takes its partitions and their records.
#[test]
fn a_killed_members_partitions_go_to_the_others_after_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let kafka = b.kafka.unwrap().to_string();
    client_script(
        "kafka_python_groups.py",
        &[&kafka, "kp-kill", "expire", "range"],
    );
    b.kill9();
}
