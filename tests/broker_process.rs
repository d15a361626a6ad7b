//! The real `spool-broker` binary: the ready line, SIGTERM, configuration
//! errors, and `kill -9` during produce.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::*;
use spool::protocol::{Request, ResponseBody};

const BROKER: &str = env!("CARGO_BIN_EXE_spool-broker");

/// A broker process and the address from its ready line.
struct Process {
    child: Child,
    addr: SocketAddr,
}

fn spawn(data_dir: &Path, extra: &[&str]) -> Process {
    let mut child = Command::new(BROKER)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spool-broker");
    // Wait for the ready line (on a thread, so that a silent broker fails
    // the test instead of hanging it).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(PATIENCE).expect("ready line in time");
    let addr = line
        .trim()
        .strip_prefix("spool listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .parse()
        .unwrap();
    Process { child, addr }
}

impl Process {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Waits (bounded) for the process to exit; returns its status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let index = std::fs::metadata(dir.path().join("topics/t/00000000000000000000.index"))
        .unwrap()
        .len();
    assert_eq!(index, 800);
    let broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    let records = c.fetch("t", 0).await;
    assert_eq!(records.len(), 100);
    assert_eq!(records[99].value, &b"v99"[..]);
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

/// Several pipelining producers on a `flush = "always"` broker; SIGKILL at
/// some point; after a restart every acknowledged record must be there, at
/// its offset, with its value.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_produce_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn(dir.path(), &[]);
    let addr = broker.addr;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
    let mut producers = Vec::new();
    for p in 0..4 {
        let acked = std::sync::Arc::clone(&acked);
        producers.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await;
            let mut sent = std::collections::VecDeque::new();
            let mut i = 0u32;
            // Keep 16 produces in flight until the connection dies.
            loop {
                while sent.len() < 16 {
                    let value = format!("p{p}-{i}").into_bytes();
                    c.send(&produce_request("k", &[&value])).await;
                    sent.push_back(value);
                    i += 1;
                }
                let Some(frame) = c.read_frame().await else {
                    return;
                };
                let Ok(response) =
                    spool::protocol::Response::parse(spool::protocol::ApiKey::Produce, frame)
                else {
                    return;
                };
                let value = sent.pop_front().unwrap();
                if let Ok(ResponseBody::Produced { base_offset, .. }) = response.body {
                    acked.lock().unwrap().push((base_offset, value));
                }
            }
        }));
    }
    // Kill once enough has been acknowledged (bounded wait).
    let deadline = Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < 3000 {
        assert!(Instant::now() < deadline, "producers too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.signal(libc::SIGKILL);
    drop(broker);
    for p in producers {
        // The producers end when their connections die (or their sends fail).
        let _ = tokio::time::timeout(PATIENCE, p).await;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let broker = spawn(dir.path(), &[]);
    let mut c = Conn::connect(broker.addr).await;
    let end = match c
        .ok(Request::ListOffsets {
            topic: "k".into(),
            spec: spool::protocol::OffsetSpec::Latest,
        })
        .await
    {
        ResponseBody::Offsets { offset, .. } => offset,
        other => panic!("{other:?}"),
    };
    let mut stored = Vec::new();
    while (stored.len() as u64) < end {
        let records = c.fetch("k", stored.len() as u64).await;
        assert!(!records.is_empty());
        stored.extend(records);
    }
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.offset, i as u64, "offsets are dense and in order");
    }
    for (offset, value) in &acked {
        let r = stored
            .get(*offset as usize)
            .unwrap_or_else(|| panic!("acknowledged offset {offset} lost (end {end})"));
        assert_eq!(&r.value[..], &value[..], "offset {offset}");
    }
    eprintln!(
        "{{\"test\":\"kill9\",\"mode\":\"always\",\"acked\":{},\"stored\":{},\"lost\":0}}",
        acked.len(),
        stored.len()
    );
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
