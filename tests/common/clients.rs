//! Real Kafka clients run against a test broker: kcat, and the Python
//! scripts of tests/kafka_clients in the venv `.ci/run` makes.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::Process;

/// Runs kcat against the broker's Kafka listener with `args`, `input` on
/// its stdin; returns its stdout, failing the test on a non-zero exit.
pub fn kcat(broker: &Process, args: &[&str], input: &[u8]) -> String {
    let kafka = broker.kafka.expect("the Kafka listener is on").to_string();
    let mut child = Command::new("kcat")
        .args(["-b", &kafka, "-X", "socket.timeout.ms=10000", "-m", "10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install kcat; .ci/run does it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = wait_bounded(child);
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The values kcat reads from `topic`, one per line, starting at `start`
/// (kcat's `-o`), to the end.
pub fn values_from(broker: &Process, topic: &str, start: &str) -> String {
    kcat(
        broker,
        &["-C", "-t", topic, "-e", "-o", start, "-f", "%s\\n"],
        b"",
    )
}

/// Waits at most three minutes for a child, killing it past that (the
/// scenarios bound each of their own waits well below it, so that their
/// message says what they were waiting for).
pub fn wait_bounded(mut child: std::process::Child) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("client hung: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Python interpreter of the virtual environment `.ci/run` makes
/// (`.ci/venv`, with tests/kafka_clients/requirements.txt), or
/// `$SPOOL_PYTHON`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("SPOOL_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "no {venv}: run `bash .ci/run` once, or `python3 -m venv .ci/venv && .ci/venv/bin/pip install -r tests/kafka_clients/requirements.txt`"
    );
    venv.to_owned()
}

/// Runs `tests/kafka_clients/NAME` with the venv's Python, failing the
/// test (with what it printed) unless it exits 0.
pub fn client_script(name: &str, args: &[&str]) {
    let script = format!("{}/tests/kafka_clients/{name}", env!("CARGO_MANIFEST_DIR"));
    let child = Command::new(python())
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let out = wait_bounded(child);
    assert!(
        out.status.success(),
        "{name}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
