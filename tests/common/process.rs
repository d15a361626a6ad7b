//! The real `spool-broker` binary as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::PATIENCE;

pub const BROKER: &str = env!("CARGO_BIN_EXE_spool-broker");

/// A broker process and the addresses from its ready lines.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// The Kafka listener's, from its `kafka listening on` line.
    pub kafka: Option<SocketAddr>,
}

/// Starts the broker on a free port with `data_dir`, and waits for its
/// ready line.
pub fn spawn(data_dir: &Path, extra: &[&str]) -> Process {
    let mut child = Command::new(BROKER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spool-broker");
    let (addr, kafka) = ready_addrs(&mut child);
    Process { child, addr, kafka }
}

/// Waits (bounded) for a broker's ready lines on its piped stdout: Spool's
/// listener's, then the Kafka listener's, which comes right after it.
pub fn ready_addrs(child: &mut Child) -> (SocketAddr, Option<SocketAddr>) {
    // Read on a thread, so that a silent broker fails the test instead of
    // hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        for _ in 0..2 {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(PATIENCE).expect("ready line in time");
    let addr = line
        .trim()
        .strip_prefix("spool listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .parse()
        .unwrap();
    let kafka = rx
        .recv_timeout(Duration::from_secs(2))
        .ok()
        .and_then(|l| l.trim().strip_prefix("kafka listening on ")?.parse().ok());
    (addr, kafka)
}

/// The address of a broker's first ready line (see [`ready_addrs`]).
pub fn ready_addr(child: &mut Child) -> SocketAddr {
    ready_addrs(child).0
}

impl Process {
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Waits (bounded) for the process to exit; returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
