//! The real `spool-broker` binary: the ready line, SIGTERM, configuration
//! errors, restarts. (`kill -9` during produce is in `tests/kill9.rs`.)

mod common;

use std::process::Command;

use common::broker::*;
use common::process::{spawn, BROKER};
use spool::protocol::{Request, ResponseBody};

#[tokio::test(flavor = "multi_thread")]
async fn ready_line_then_sigterm_drains_and_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    for i in 0..100u32 {
        c.produce("t", &[format!("v{i}").as_bytes()]).await;
    }
    broker.signal(libc::SIGTERM);
    let status = broker.wait();
    assert!(status.success(), "{status:?}");
    // A clean close trims the active index to its 100 entries.
    let index = std::fs::metadata(dir.path().join("topics/t/0/00000000000000000000.index"))
        .unwrap()
        .len();
    assert_eq!(index, 800);
    let broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    let records = c.fetch("t", 0).await;
    assert_eq!(records.len(), 100);
    assert_eq!(records[99].value.as_deref().unwrap(), &b"v99"[..]);
}

#[test]
fn configuration_errors_name_the_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[server]\nmax_conections = 3\n", "max_conections"),
        ("[defaults]\nretention_ms = \"a while\"\n", "retention_ms"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BROKER)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "stderr does not name {key}: {stderr}");
        assert!(out.stdout.is_empty(), "no ready line");
    }
    let out = Command::new(BROKER)
        .args(["--config", "/nonexistent/spool.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/spool.toml"));
}

#[test]
fn the_example_config_runs() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/spool.toml");
    let mut broker = spawn(dir.path(), &["--config", example]);
    broker.signal(libc::SIGINT);
    assert!(broker.wait().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_after_restart_reports_recovery_free_state() {
    // A produce acknowledged by one process is served by the next one with
    // the same settings, with nothing created twice.
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    c.ok(Request::CreateTopic {
        topic: "s".into(),
        settings: vec![("retention_ms".into(), "2h".into())],
    })
    .await;
    broker.signal(libc::SIGKILL);
    drop(broker);
    let broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    match c.ok(Request::DescribeTopic { topic: "s".into() }).await {
        ResponseBody::Description(d) => {
            assert_eq!(
                d.settings
                    .iter()
                    .find(|(k, _)| k == "retention_ms")
                    .unwrap()
                    .1,
                "7200000"
            )
        }
        other => panic!("{other:?}"),
    }
}

// Issue 10, item 13: the broker's log, written to a file or a pipe, carries
// no colour codes, names topic creation and deletion, and says each
// retention deletion once.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_into_a_pipe_is_plain_and_says_each_event_once() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spool.toml");
    std::fs::write(
        &config,
        "[server]\nretention_check_interval = \"50ms\"\n\
         [defaults]\nsegment_bytes = 4096\nretention_bytes = 4096\nflush = \"never\"\n",
    )
    .unwrap();
    let mut child = Command::new(BROKER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::process::ready_addr(&mut child);
    let mut c = Conn::connect(addr).await;
    let value = vec![7u8; 1000];
    for _ in 0..20 {
        c.produce("logged", &[&value]).await;
    }
    // Bounded: until retention has deleted something.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let d = match c
            .ok(Request::DescribeTopic {
                topic: "logged".into(),
            })
            .await
        {
            ResponseBody::Description(d) => d,
            other => panic!("{other:?}"),
        };
        if d.partitions[0].log_start > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.ok(Request::AlterTopic {
        topic: "logged".into(),
        set: vec![("retention_ms".into(), "1h".into())],
        reset: vec![],
    })
    .await;
    c.ok(Request::DeleteTopic {
        topic: "logged".into(),
    })
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    assert!(
        log.contains("created topic") && log.contains("logged"),
        "{log}"
    );
    assert!(log.contains("deleted topic"), "{log}");
    assert!(
        log.contains("altered topic") && log.contains("retention_ms: 604800000 -> 3600000"),
        "{log}"
    );
    let retention = log
        .lines()
        .filter(|l| l.contains("retention deleted segments"))
        .count();
    assert!(retention >= 1, "{log}");
    assert!(
        !log.contains("deleted old segments"),
        "a deletion said twice: {log}"
    );
}
