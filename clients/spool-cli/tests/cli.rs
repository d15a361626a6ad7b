//! The real `spool` binary against an in-process broker on 127.0.0.1:0.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use spool::broker::{Broker, Config, RunningBroker};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");
/// Longest any one command may run before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

struct Env {
    runtime: tokio::runtime::Runtime,
    broker: Option<RunningBroker>,
    addr: String,
    config: Config,
    _dir: tempfile::TempDir,
}

fn start(edit: impl FnOnce(&mut Config)) -> Env {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().to_owned();
    edit(&mut config);
    let broker = runtime.block_on(Broker::start(config.clone())).unwrap();
    let addr = broker.local_addr().to_string();
    Env {
        runtime,
        broker: Some(broker),
        addr,
        config,
        _dir: dir,
    }
}

impl Env {
    /// The broker's Kafka listener, as HOST:PORT.
    fn kafka(&self) -> String {
        let broker = self.broker.as_ref().expect("running");
        broker
            .kafka_addr()
            .expect("the Kafka listener is on")
            .to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            self.runtime.block_on(b.shutdown());
        }
    }
}

/// The lines `reader` gives, on a channel, read by a thread of their own.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for `child`'s output. Every run is bounded: a hung command is
/// killed, and fails its test.
fn wait_bounded(child: std::process::Child) -> Output {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let pid = child.id().to_string();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(RUN_LIMIT).is_err() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    out
}

impl Env {
    /// Stops the broker and starts it again on the same data directory (on
    /// a new port).
    fn restart(&mut self) {
        if let Some(b) = self.broker.take() {
            self.runtime.block_on(b.shutdown());
        }
        let broker = self
            .runtime
            .block_on(Broker::start(self.config.clone()))
            .unwrap();
        self.addr = broker.local_addr().to_string();
        self.broker = Some(broker);
    }

    /// Stops the broker (a `kill`, as far as clients can tell: connections
    /// close) and starts it again on the same port and data directory.
    fn restart_on_the_same_port(&mut self) {
        self.config.server.listen = self.addr.parse().unwrap();
        self.restart();
    }

    /// `spool args` running, with its stderr lines on a channel and its
    /// stdout to collect when it ends.
    fn spawn_watched(
        &self,
        args: &[&str],
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        let mut child = self
            .spool(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        (child, lines_of(stderr))
    }

    /// `topic describe`'s line for `key`: its value and its source.
    fn setting(&self, topic: &str, key: &str) -> String {
        let out = self.ok(&["topic", "describe", topic], b"");
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in {out}"));
        line[key.len() + 1..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn spool(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SPOOL);
        c.env("SPOOL_BROKER", &self.addr).args(args);
        c
    }

    /// Runs `spool args` with `input` on stdin; returns its output.
    fn run(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .spool(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = wait_bounded(child);
        writer.join().unwrap();
        out
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], input: &[u8]) -> String {
        let out = self.run(args, input);
        assert!(
            out.status.success(),
            "spool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit status 1 with one line on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert_eq!(out.status.code(), Some(1), "spool {args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr:?}");
        assert!(stderr.starts_with("spool: "), "{stderr:?}");
        stderr
    }
}

#[test]
fn a_hundred_thousand_lines_round_trip_through_a_pipe() {
    let env = start(|_| {});
    let input: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let out = env.run(&["produce", "lines"], input.as_bytes());
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("wrote 100000 records to lines, offsets 0..99999"),
        "{stderr}"
    );
    let printed = env.ok(
        &["consume", "lines", "--from-beginning", "--max", "100000"],
        b"",
    );
    assert!(
        printed == input,
        "consume printed something else ({} bytes vs {})",
        printed.len(),
        input.len()
    );
    // Without --max it stops at the end by itself.
    assert_eq!(env.ok(&["consume", "lines"], b""), input);
}

#[test]
fn topic_subcommands() {
    let env = start(|_| {});
    let out = env.run(
        &[
            "topic",
            "create",
            "orders",
            "--retention-ms",
            "7d",
            "--retention-bytes",
            "1GiB",
            "--segment-bytes",
            "64MiB",
            "--flush",
            "never",
        ],
        b"",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("created topic orders"));
    env.ok(
        &[
            "topic",
            "create",
            "audit",
            "--config",
            "max_record_bytes=4096",
        ],
        b"",
    );
    assert_eq!(env.ok(&["topic", "list"], b""), "audit\norders\n");
    let described = env.ok(&["topic", "describe", "orders"], b"");
    for want in [
        "orders",
        "0 .. 0",
        "retention_ms:",
        "604800000",
        "1073741824",
        "67108864",
        "flush:",
        "never",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want}: {described}"
        );
    }
    assert!(env
        .ok(&["topic", "describe", "audit"], b"")
        .contains("4096"));
    env.ok(&["topic", "delete", "audit"], b"");
    assert_eq!(env.ok(&["topic", "list"], b""), "orders\n");
    assert!(env
        .fails(&["topic", "create", "orders"])
        .contains("TOPIC_ALREADY_EXISTS"));
    assert!(env
        .fails(&["topic", "create", "a/b"])
        .contains("INVALID_TOPIC_NAME"));
    assert!(env
        .fails(&["topic", "create", "x", "--flush", "sometimes"])
        .contains("INVALID_CONFIG"));
    assert!(env
        .fails(&["topic", "create", "x", "--config", "nokeyvalue"])
        .contains("KEY=VALUE"));
    assert!(env
        .fails(&["topic", "describe", "nope"])
        .contains("UNKNOWN_TOPIC"));
    assert!(env
        .fails(&["topic", "delete", "nope"])
        .contains("UNKNOWN_TOPIC"));
}

#[test]
fn produce_from_a_file_with_a_key_and_consume_as_json() {
    let env = start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.txt");
    std::fs::write(&file, "alpha\r\nbeta\n\ngamma").unwrap();
    env.ok(
        &[
            "produce",
            "j",
            "--file",
            file.to_str().unwrap(),
            "--key",
            "k1",
            "--batch-size",
            "1",
            "--linger-ms",
            "0",
        ],
        b"",
    );
    let json = env.ok(&["consume", "j", "--format", "json"], b"");
    let objects: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 4);
    let values: Vec<&str> = objects
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    // Issue 10, item 9: a \r before the newline is part of the value.
    assert_eq!(values, vec!["alpha\r", "beta", "", "gamma"]);
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(o["offset"], i as u64);
        assert_eq!(o["key"], "k1");
        assert!(o["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    }
    // Offsets and --max.
    assert_eq!(
        env.ok(&["consume", "j", "--offset", "1", "--max", "2"], b""),
        "beta\n\n"
    );
    // Bytes that are not UTF-8 come out as base64 in JSON, unchanged in raw.
    env.ok(&["produce", "bin"], &[0xff, 0xfe, b'\n']);
    let json: serde_json::Value =
        serde_json::from_str(env.ok(&["consume", "bin", "--format", "json"], b"").trim()).unwrap();
    assert_eq!(json["value_base64"], "//4=");
    assert_eq!(
        env.run(&["consume", "bin"], b"").stdout,
        vec![0xff, 0xfe, b'\n']
    );
}

#[test]
fn consume_from_the_end_follows_and_from_a_time() {
    let env = start(|_| {});
    env.ok(&["produce", "f"], b"old\n");
    std::thread::sleep(Duration::from_millis(5));
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::thread::sleep(Duration::from_millis(5));
    // A follower from the end sees only what comes after it started.
    let follower = env
        .spool(&["consume", "f", "--from-end", "--follow", "--max", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Produce until the follower has caught it (it may start after the first).
    let waiter = std::thread::spawn(move || follower.wait_with_output().unwrap());
    let mut produced = 0;
    while !waiter.is_finished() && produced < 200 {
        env.ok(&["produce", "f"], b"new\n");
        produced += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "new\n");
    // From a time: everything after `cut`.
    let after = env.ok(&["consume", "f", "--from-time", &cut.to_string()], b"");
    assert!(after.lines().all(|l| l == "new"), "{after}");
    assert_eq!(after.lines().count(), produced);
    let rfc3339 = env.ok(
        &[
            "consume",
            "f",
            "--from-time",
            "2001-01-01T00:00:00Z",
            "--max",
            "1",
        ],
        b"",
    );
    assert_eq!(rfc3339, "old\n");
    assert!(env
        .fails(&["consume", "f", "--from-time", "yesterday"])
        .contains("--from-time"));
}

#[test]
fn error_exits() {
    let env = start(|c| {
        c.defaults.segment_bytes = Some(4096);
        c.defaults.retention_bytes = Some(spool::broker::config::Limit::At(4096));
        c.server.retention_check_interval = Duration::from_millis(50);
    });
    // Unreachable broker.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap().to_string();
    drop(listener);
    for args in [
        &["topic", "list"][..],
        &["consume", "t"],
        &["produce", "t"],
        &["bench", "--messages", "10"],
    ] {
        let mut full = vec!["--broker", dead.as_str()];
        full.extend_from_slice(args);
        assert!(env.fails(&full).contains("cannot connect"), "{args:?}");
    }
    // Unknown topic.
    assert!(env.fails(&["consume", "missing"]).contains("UNKNOWN_TOPIC"));
    // Offsets outside the log, with the valid range.
    let lines: String = (0..100).map(|i| format!("{i:0100}\n")).collect();
    env.ok(&["produce", "r", "--batch-size", "1"], lines.as_bytes());
    let above = env.fails(&["consume", "r", "--offset", "500"]);
    assert!(above.contains("500") && above.contains(", 100)"), "{above}");
    // With --follow too: it would otherwise replay the topic from its start.
    let following = env.fails(&["consume", "r", "--offset", "500", "--follow"]);
    assert_eq!(following, above);
    let mut below = String::new();
    for _ in 0..200 {
        let out = env.run(
            &[
                "consume",
                "r",
                "--offset",
                "0",
                "--max",
                "1",
                "--on-out-of-range",
                "error",
            ],
            b"",
        );
        if !out.status.success() {
            below = String::from_utf8(out.stderr).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        below.contains("OFFSET_OUT_OF_RANGE") && below.contains(", 100)"),
        "{below}"
    );
    // Issue 10, item 11: by default a consumer behind retention goes on from
    // the log's start, and says what it skipped.
    let out = env.run(&["consume", "r", "--offset", "0"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("are no longer stored (retention); skipped"),
        "{stderr}"
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        !printed.is_empty() && lines.ends_with(&printed) && printed.len() < lines.len(),
        "from the log's start to the end: {printed}"
    );
    // Issue 10, item 8: one wording, whether the CLI or the broker finds it.
    for line in [&above, &below] {
        assert!(
            line.contains("OFFSET_OUT_OF_RANGE: offset") && line.contains("the log holds ["),
            "{line}"
        );
    }
    // An address without a port says so.
    for addr in ["127.0.0.1", "localhost", "::1", "127.0.0.1:"] {
        let line = env.fails(&["--broker", addr, "topic", "list"]);
        assert!(line.contains("has no port"), "{addr}: {line}");
    }
    // Bad arguments are clap's business: exit status 2.
    let out = env.run(&["consume"], b"");
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["consume", "r", "--offset", "1", "--from-end"], b"");
    assert_eq!(out.status.code(), Some(2));
}

/// The one JSON object `spool bench --json` prints.
fn bench_report(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn bench_reports_json_for_every_mode() {
    let env = start(|_| {});
    for mode in ["produce", "consume", "both"] {
        let out = env.ok(
            &[
                "bench",
                "--mode",
                mode,
                "--messages",
                "20000",
                "--message-size",
                "100",
                "--batch-size",
                "100",
                "--producers",
                "2",
                "--consumers",
                "2",
                "--topics",
                "2",
                "--json",
            ],
            b"",
        );
        let report = bench_report(&out);
        assert_eq!(report["mode"], mode);
        if mode != "consume" {
            assert_eq!(report["produce"]["messages"], 20000);
            assert_eq!(report["produce"]["bytes"], 2_000_000);
            assert!(report["produce"]["messages_per_sec"].as_f64().unwrap() > 0.0);
            assert_eq!(report["produce_latency_ms"]["count"], 200);
        }
        if mode != "produce" {
            // Two consumers, each reading its whole topic of 10,000.
            assert_eq!(report["consume"]["messages"], 20000);
        }
        if mode == "both" {
            assert_eq!(report["end_to_end_latency_ms"]["count"], 20000);
            assert!(report["end_to_end_latency_ms"]["p50"].as_f64().unwrap() >= 0.0);
        }
    }
    // The bench cleaned up after itself.
    assert_eq!(env.ok(&["topic", "list"], b""), "");
    // Human output without --json, and with a duration. The progress bar
    // is for terminals: piped, stderr stays empty.
    let out = env.run(
        &[
            "bench",
            "--duration",
            "300ms",
            "--message-size",
            "64",
            "--batch-size",
            "10",
        ],
        b"",
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("msgs/s") && text.contains("p99.9"), "{text}");
    // Issue 10, item 12: the mode as typed on the command line.
    assert!(text.starts_with("spool bench: mode produce,"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "progress drawn into a pipe: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One at a time with the clients busy-polling: every message is
    // acknowledged, and the report says how it ran.
    let out = env.ok(
        &[
            "bench",
            "--messages",
            "2000",
            "--message-size",
            "100",
            "--batch-size",
            "1",
            "--in-flight",
            "1",
            "--busy-poll",
            "100us",
            "--json",
        ],
        b"",
    );
    let report = bench_report(&out);
    assert_eq!(report["busy_poll_us"], 100);
    assert_eq!(report["produce"]["messages"], 2000);
    assert_eq!(report["produce_latency_ms"]["count"], 2000);
    let bad = env.run(&["bench", "--busy-poll", "soon"], b"");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--busy-poll"),
        "{bad:?}"
    );
    // Draining a backlog for a duration: the backlog is what the producers
    // wrote in that time, and the run ends.
    let out = env.ok(
        &[
            "bench",
            "--mode",
            "consume",
            "--duration",
            "300ms",
            "--message-size",
            "64",
            "--batch-size",
            "10",
            "--json",
        ],
        b"",
    );
    let report = bench_report(&out);
    assert!(report["consume"]["messages"].as_u64().unwrap() > 0, "{out}");
}

impl Env {
    /// Runs `spool args` with its stdout a pipe whose reader is gone
    /// (`spool ... | head -0`); returns the exit status and stderr.
    fn run_into_closed_pipe(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = self
            .spool(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_bounded(child);
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `spool bench --kafka`: the producers go through the Kafka listener, with
/// the same batches; every message lands, and the report says so. Modes
/// other than produce are refused.
#[test]
fn bench_produces_through_the_kafka_listener() {
    let env = start(|_| {});
    let kafka = env.kafka();
    let out = env.ok(
        &[
            "bench",
            "--kafka",
            &kafka,
            "--messages",
            "5000",
            "--batch-size",
            "100",
            "--partitions",
            "3",
            "--keep",
            "--json",
        ],
        b"",
    );
    let report = bench_report(&out);
    assert_eq!(report["protocol"], "kafka");
    assert_eq!(report["produce"]["messages"], 5000);
    let described = env.ok(&["topic", "describe", "bench-0"], b"");
    // Partition k: "partition k:  0 .. END (N records), ...".
    let ends: u64 = described
        .lines()
        .filter(|l| l.starts_with("partition "))
        .map(|l| l.split_whitespace().nth(4).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(ends, 5000, "{described}");
    let out = env.run(&["bench", "--kafka", &kafka, "--mode", "both"], b"");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--kafka"),
        "{out:?}"
    );
}

/// The venv's Python (`.ci/run` makes it), for the Kafka client scripts.
fn kafka_python(script: &str, args: &[&str]) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let python =
        std::env::var("SPOOL_PYTHON").unwrap_or_else(|_| format!("{root}/.ci/venv/bin/python"));
    let child = Command::new(&python)
        .arg(format!("{root}/tests/kafka_clients/{script}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}: run `bash .ci/run` once"));
    let out = wait_bounded(child);
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Interop, byte for byte: what kafka-python produces (binary and null
/// keys and values, headers with binary, empty and repeated values,
/// timestamps)
/// `spool consume --format json` prints exactly; what `spool produce
/// --format json` sends, kafka-python reads exactly.
#[test]
fn kafka_clients_and_spool_tools_read_each_others_records() {
    let env = start(|_| {});
    let kafka = env.kafka();
    let produced = kafka_python(
        "kafka_python_interop.py",
        &["produce", &kafka, "from-kafka"],
    );
    let expect = json_lines(&produced);
    assert_eq!(expect.len(), 5);
    let consumed = env.ok(
        &[
            "consume",
            "from-kafka",
            "--from-beginning",
            "--format",
            "json",
            "--max",
            "5",
        ],
        b"",
    );
    assert_eq!(json_lines(&consumed), expect);
    // The other way: Spool's producer, kafka-python's consumer.
    env.ok(&["topic", "create", "from-spool"], b"");
    env.ok(
        &["produce", "from-spool", "--format", "json"],
        consumed.as_bytes(),
    );
    let read = kafka_python(
        "kafka_python_interop.py",
        &["consume", &kafka, "from-spool", "5"],
    );
    assert_eq!(json_lines(&read), expect);
}

// Issue 10, item 6: `spool topic list | head -0` panicked (exit 101, a
// backtrace) and `spool consume t | head -1` printed an error and exited 1.
// A closed stdout ends a command quietly, with success, as with cat and kcat.
#[test]
fn a_closed_stdout_ends_the_command_quietly_with_success() {
    let env = start(|_| {});
    let lines: String = (0..20_000).map(|i| format!("record {i}\n")).collect();
    env.ok(&["produce", "t"], lines.as_bytes());
    for args in [
        &["consume", "t"][..],
        &["consume", "t", "--format", "json"][..],
        &["topic", "list"][..],
        &["topic", "describe", "t"][..],
        &["bench", "--messages", "1000", "--message-size", "10"][..],
    ] {
        let (status, stderr) = env.run_into_closed_pipe(args);
        assert!(
            status.success(),
            "spool {args:?}: {status:?}, stderr {stderr:?}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "spool {args:?} complained: {stderr:?}"
        );
    }
}

/// A listener that accepts connections and holds them: with `reply`, it
/// answers whatever arrives with those bytes once (an HTTP server, say),
/// otherwise it never writes.
fn not_a_broker(reply: Option<&'static [u8]>) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the test makes a few connections at most.
        for socket in listener.incoming().take(8).flatten() {
            if let Some(reply) = reply {
                let mut socket = socket;
                let mut buf = [0u8; 64];
                let _ = socket.read(&mut buf);
                let _ = socket.write_all(reply);
                held.push(socket);
            } else {
                held.push(socket);
            }
        }
    });
    addr
}

// Issue 10, item 5: pointed at something that is not a Spool broker, every
// command hung (or waited a silent 30 s). Connecting, handshake included,
// is bounded by --connect-timeout, and the one line says what it waited for.
#[test]
fn a_port_that_is_not_a_broker_fails_within_the_connect_timeout() {
    let env = start(|_| {});
    for reply in [
        None,
        Some(&b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..]),
    ] {
        let addr = not_a_broker(reply);
        for args in [&["topic", "list"][..], &["consume", "t"], &["produce", "t"]] {
            let mut full = vec!["--broker", addr.as_str(), "--connect-timeout", "1s"];
            full.extend_from_slice(args);
            let line = env.fails(&full);
            // Silence waits out the limit; an answer in another protocol
            // fails at once.
            let said = match reply {
                None => line.contains("within 1s"),
                Some(_) => line.contains("Spool broker"),
            };
            assert!(
                line.contains("cannot connect") && said,
                "{args:?} against {reply:?}: {line}"
            );
        }
    }
}

// Issue 10, item 1: a line too large for the topic failed its whole batch
// (dropping the lines before it) while later lines were written, and the
// exit status was all the user learnt. Now nothing after a failed line is
// sent, and the report says which lines went where.
#[test]
fn a_line_too_large_stops_the_produce_and_the_report_says_what_was_written() {
    let env = start(|c| c.defaults.max_record_bytes = Some(1024));
    let big = "x".repeat(2000);
    let input = format!("1\n2\n3\n{big}\n4\n5\n6\n");
    // Twice: to a new topic (its limit learnt once it exists), then to it
    // again.
    for (topic, offsets) in [("fresh", "0..2"), ("fresh", "3..5")] {
        let out = env.run(&["produce", topic], input.as_bytes());
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("wrote lines 1..3 to {topic} at offsets {offsets}"))
                && stderr.contains("line 4 failed")
                && stderr.contains("max_record_bytes of 1024"),
            "{stderr}"
        );
    }
    assert_eq!(env.ok(&["consume", "fresh"], b""), "1\n2\n3\n1\n2\n3\n");
    // --skip-invalid goes on, and says what it skipped.
    let out = env.run(&["produce", "fresh", "--skip-invalid"], input.as_bytes());
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("wrote 6 records")
            && stderr.contains("skipped 1 invalid line(s): 4")
            && stderr.contains(": 4"),
        "{stderr}"
    );
}

/// Issue 10, items 2 and 3: a create or alter whose settings the broker's
/// file would overrule is refused, naming the setting and the file's value;
/// describe names each setting's source; alter changes settings while the
/// topic runs, and the change survives a restart.
#[test]
fn settings_the_file_overrules_are_refused_and_alter_changes_a_running_topic() {
    let mut env = start(|c| {
        c.defaults.segment_bytes = Some(1 << 20);
        c.topics.insert(
            "aged".into(),
            spool::broker::TopicOverrides {
                flush: Some(spool::broker::Flush::Never),
                ..Default::default()
            },
        );
    });
    assert_eq!(env.setting("aged", "flush"), "never (file [topics.aged])");
    assert_eq!(
        env.setting("aged", "segment_bytes"),
        "1048576 (file [defaults])"
    );
    assert_eq!(env.setting("aged", "retention_ms"), "604800000 (default)");

    env.ok(&["topic", "delete", "aged"], b"");
    let e = env.fails(&[
        "topic",
        "create",
        "aged",
        "--retention-ms",
        "1d",
        "--flush",
        "always",
    ]);
    assert!(
        e.contains("flush = always is overruled") && e.contains("flush = never in [topics.aged]"),
        "{e}"
    );
    assert!(
        !env.ok(&["topic", "list"], b"").contains("aged"),
        "nothing created"
    );
    // The file's own value is no conflict.
    env.ok(
        &[
            "topic",
            "create",
            "aged",
            "--retention-ms",
            "1d",
            "--flush",
            "never",
        ],
        b"",
    );
    assert_eq!(env.setting("aged", "retention_ms"), "86400000 (topic)");

    env.ok(&["topic", "alter", "aged", "--retention-ms", "1h"], b"");
    assert_eq!(env.setting("aged", "retention_ms"), "3600000 (topic)");
    let e = env.fails(&["topic", "alter", "aged", "--flush", "always"]);
    assert!(e.contains("[topics.aged]"), "{e}");
    env.ok(&["topic", "create", "plain"], b"");
    let e = env.fails(&["topic", "alter", "plain", "--flush", "never"]);
    assert!(
        e.contains("flush cannot change while the topic runs"),
        "{e}"
    );
    let e = env.fails(&["topic", "alter", "plain", "--reset", "colour"]);
    assert!(e.contains("cannot reset `colour`"), "{e}");
    let e = env.fails(&["topic", "alter", "nowhere", "--retention-ms", "1h"]);
    assert!(e.contains("does not exist"), "{e}");
    env.ok(
        &["topic", "alter", "plain", "--max-record-bytes", "4KiB"],
        b"",
    );

    env.restart();
    assert_eq!(env.setting("aged", "retention_ms"), "3600000 (topic)");
    assert_eq!(env.setting("plain", "max_record_bytes"), "4096 (topic)");
    env.ok(&["topic", "alter", "aged", "--reset", "retention_ms"], b"");
    assert_eq!(env.setting("aged", "retention_ms"), "604800000 (default)");
    env.restart();
    assert_eq!(env.setting("aged", "retention_ms"), "604800000 (default)");
    // The new record limit holds for produces after the alter.
    let out = env.run(&["produce", "plain"], &vec![b'x'; 5000]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_record_bytes of 4096"),
        "{out:?}"
    );
}

/// Issue 10, item 3: an alter of retention applies before it returns, not
/// at the next retention check (an hour away here).
#[test]
fn alter_applies_retention_at_once() {
    let env = start(|c| c.server.retention_check_interval = Duration::from_secs(3600));
    env.ok(&["topic", "create", "old", "--segment-bytes", "4KiB"], b"");
    let input: String = (0..2000).map(|i| format!("record {i}\n")).collect();
    env.ok(&["produce", "old", "--batch-size", "512"], input.as_bytes());
    let describe = env.ok(&["topic", "describe", "old"], b"");
    assert!(describe.contains(" 0 .. 2000 (2000 records)"), "{describe}");
    env.ok(&["topic", "alter", "old", "--retention-ms", "1"], b"");
    let describe = env.ok(&["topic", "describe", "old"], b"");
    assert!(
        describe.contains(" 2000 .. 2000 (0 records)"),
        "retention ran with the new value: {describe}"
    );
}

/// Issue 10, item 7: the broker's frame limit bounds max_record_bytes, and
/// a record the frame cannot carry is refused before it is sent, with the
/// reason, on a connection that stays usable.
#[test]
fn the_frame_limit_bounds_records_and_is_checked_before_sending() {
    let env = start(|c| c.server.max_frame_bytes = 64 * 1024);
    env.ok(&["topic", "create", "small"], b"");
    // The built-in 1 MiB is lowered to what a frame carries.
    assert_eq!(env.setting("small", "max_record_bytes"), "65199 (default)");
    let e = env.fails(&["topic", "create", "big", "--max-record-bytes", "1MiB"]);
    assert!(
        e.contains("max_frame_bytes = 65536") && e.contains("at most 65199 bytes"),
        "{e}"
    );
    // Larger batches than a frame holds are cut to fit: every line arrives.
    let input: String = (0..20_000).map(|i| format!("{i:08}\n")).collect();
    let out = env.run(
        &["produce", "small", "--batch-size", "1048576"],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.ok(&["consume", "small"], b""), input);
}

/// Waits (bounded) for a stderr line containing `text`; returns it.
fn await_line(lines: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(line) => eprintln!("(stderr: {line})"),
            Err(e) => panic!("no stderr line with {text:?}: {e}"),
        }
    }
}

/// Issue 10, item 10: the last N records, times ago, kcat's -f templates.
#[test]
fn consume_the_last_records_from_a_time_ago_and_with_a_template() {
    let env = start(|_| {});
    let input: String = (0..10).map(|i| format!("v{i}\n")).collect();
    env.ok(&["produce", "t", "--key", "k"], input.as_bytes());
    assert_eq!(
        env.ok(&["consume", "t", "--offset", "-3"], b""),
        "v7\nv8\nv9\n"
    );
    // More than there are: from the start.
    assert_eq!(env.ok(&["consume", "t", "--offset", "-50"], b""), input);
    for ago in ["1h", "-1h", "-2d 3h"] {
        assert_eq!(
            env.ok(&["consume", "t", "--from-time", ago], b""),
            input,
            "{ago}"
        );
    }
    let templated = env.ok(
        &[
            "consume",
            "t",
            "--offset",
            "8",
            "-f",
            "%t/%o %k=%s (%K,%S)\\n",
        ],
        b"",
    );
    assert_eq!(templated, "t/8 k=v8 (1,2)\nt/9 k=v9 (1,2)\n");
    let timestamps = env.ok(&["consume", "t", "--max", "1", "-f", "%T|"], b"");
    let ms: i64 = timestamps.trim_end_matches('|').parse().unwrap();
    assert!(ms > 1_700_000_000_000, "{timestamps}");
    let e = env.fails(&["consume", "t", "-f", "%q"]);
    assert!(e.contains("unknown field %q"), "{e}");
    // The JSON fields are documented where people look.
    let help = env.ok(&["consume", "--help"], b"");
    for field in [
        "offset",
        "timestamp",
        "key",
        "value",
        "headers",
        "value_base64",
    ] {
        assert!(help.contains(field), "--help names {field}");
    }
}

/// Issue 10, item 11: --follow waits for a topic that does not exist yet,
/// saying so, and prints its records once it does.
#[test]
fn follow_waits_for_a_topic_to_be_created() {
    let env = start(|_| {});
    let (child, stderr) = env.spawn_watched(&["consume", "later", "--follow", "--max", "2"]);
    await_line(
        &stderr,
        "topic later does not exist; waiting for it to be created",
    );
    env.ok(&["produce", "later"], b"one\ntwo\n");
    let out = wait_bounded(child);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "one\ntwo\n");
}

/// Issue 10, item 11: --follow rides out the broker going away: it says so
/// within seconds, reconnects once the broker is back, and goes on where it
/// was.
#[test]
fn follow_survives_the_broker_going_away() {
    let mut env = start(|c| c.server.retention_check_interval = Duration::from_secs(3600));
    env.ok(&["produce", "t"], b"before\n");
    let (child, stderr) = env.spawn_watched(&["consume", "t", "--follow", "--max", "2"]);
    let mut child = child;
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "before\n");
    env.restart_on_the_same_port();
    // Restarted before it noticed, or after: either way it reads on. Make
    // the outage long enough to be seen by stopping the broker again.
    if let Some(b) = env.broker.take() {
        env.runtime.block_on(b.shutdown());
    }
    await_line(&stderr, "retrying until the broker is back");
    env.restart_on_the_same_port();
    env.ok(&["produce", "t"], b"after\n");
    await_line(&stderr, "reading again from offset 1");
    let out = wait_bounded(child);
    assert!(out.status.success(), "{out:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "after\n");
}

/// Issue 10, item 9: keys from each line, headers, JSON lines (consume's
/// own JSON reads back in), one whole file as one record, CRLF kept.
#[test]
fn produce_keys_headers_json_whole_files_and_crlf() {
    let env = start(|_| {});
    env.ok(&["produce", "keyed", "-K", ":"], b"a:1\nb:2:x\nnokey\n");
    assert_eq!(
        env.ok(&["consume", "keyed", "-f", "%k|%s|%K\\n"], b""),
        "a|1|1\nb|2:x|1\n|nokey|-1\n"
    );

    env.ok(
        &["produce", "headed", "-H", "app=spool", "-H", "env=test=1"],
        b"v\n",
    );
    assert_eq!(
        env.ok(&["consume", "headed", "-f", "%h\\n"], b""),
        "app=spool,env=test=1\n"
    );

    // An hour ago: within the topic's retention, which goes by the
    // records' timestamps.
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let json = format!(
        "{}\n{}\n",
        format_args!(r#"{{"key":"k","value":"v","headers":{{"h":"1"}},"timestamp":{hour_ago}}}"#),
        r#"{"value_base64":"gICA","key":null,"headers":[{"name":"bin","value_base64":"/w=="}]}"#,
    );
    env.ok(&["produce", "j", "--format", "json"], json.as_bytes());
    let printed = env.ok(&["consume", "j", "--format", "json"], b"");
    let objects: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects[0]["timestamp"], hour_ago);
    assert_eq!(objects[0]["key"], "k");
    assert_eq!(objects[0]["headers"][0]["name"], "h");
    assert_eq!(objects[1]["value_base64"], "gICA");
    assert_eq!(objects[1]["key"], serde_json::Value::Null);
    assert_eq!(objects[1]["headers"][0]["value_base64"], "/w==");
    // What consume prints, produce reads: a copy is the same records.
    env.ok(&["produce", "copy", "--format", "json"], printed.as_bytes());
    let copied = env.ok(&["consume", "copy", "--format", "json"], b"");
    assert_eq!(copied, printed);

    // A line that is not JSON stops the produce there.
    let out = env.run(
        &["produce", "bad", "--format", "json"],
        b"{\"value\":\"1\"}\nnot json\n{\"value\":\"3\"}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("wrote lines 1..1 to bad at offsets 0..0; line 2 failed: not a JSON object"),
        "{stderr}"
    );
    assert_eq!(env.ok(&["consume", "bad"], b""), "1\n");
    // --skip-invalid goes on, and says what it skipped.
    let out = env.run(
        &["produce", "skips", "--format", "json", "--skip-invalid"],
        b"{\"value\":\"1\"}\nnot json\n{\"nothing\":0}\n{\"value\":\"4\"}\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped 2 invalid line(s): 2, 3"),
        "{stderr}"
    );
    assert_eq!(env.ok(&["consume", "skips"], b""), "1\n4\n");

    // CRLF bytes stay as they were sent.
    env.ok(&["produce", "crlf"], b"x\r\ny\r\n");
    assert_eq!(
        env.ok(&["consume", "crlf", "-f", "[%s]"], b""),
        "[x\r][y\r]"
    );
    // One file, one record, every byte of it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.txt");
    std::fs::write(&path, b"line one\r\nline two\n\n").unwrap();
    let out = env.run(
        &[
            "produce",
            "files",
            "--file",
            path.to_str().unwrap(),
            "--whole",
        ],
        b"",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "wrote 1 record to files, offset 0\n"
    );
    assert_eq!(
        env.ok(&["consume", "files", "-f", "%S:%s"], b""),
        "20:line one\r\nline two\n\n"
    );
}

/// A broker that acknowledges the first `acked` produces, then dies as a
/// `kill -9` leaves it: the connection drops mid-stream and nothing listens
/// any more. Returns its address and the number of produces it read.
fn dying_broker(acked: u64) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use spool::protocol::{Request, Response, ResponseBody, TopicDescription};
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let produces = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&produces);
    std::thread::spawn(move || {
        // The CLI's one connection; then the listener goes with the thread.
        let Ok((mut socket, _)) = listener.accept() else {
            return;
        };
        let mut next_offset = 0u64;
        loop {
            let mut len = [0u8; 4];
            if socket.read_exact(&mut len).is_err() {
                return;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            if socket.read_exact(&mut frame).is_err() {
                return;
            }
            let (header, request) = Request::parse(bytes::BytesMut::from(&frame[..])).unwrap();
            let body = match request {
                Request::ApiVersions => ResponseBody::ApiVersions {
                    server: "dying".into(),
                    apis: vec![],
                    max_frame_bytes: 16 << 20,
                },
                Request::DescribeTopic { .. } => ResponseBody::Description(TopicDescription {
                    partitions: vec![spool::protocol::PartitionDescription {
                        partition: 0,
                        log_start: 0,
                        log_end: 0,
                        size_bytes: 0,
                        segments: 1,
                        torn_files: 0,
                        torn_bytes: 0,
                    }],
                    settings: vec![("max_record_bytes".into(), "1048576".into())],
                    sources: vec![],
                }),
                Request::Produce { mut topics, .. } => {
                    if seen.fetch_add(1, Ordering::SeqCst) == acked {
                        // Killed: the connection drops, answers owed.
                        return;
                    }
                    let t = topics.remove(0);
                    let count = spool::batch::check(&t.partitions[0].1)
                        .unwrap()
                        .records_count;
                    let base = next_offset;
                    next_offset += count as u64;
                    ResponseBody::Produced(vec![spool::protocol::TopicResults {
                        topic: t.topic,
                        partitions: vec![spool::protocol::PartitionResult {
                            partition: 0,
                            result: Ok(spool::protocol::ProducedPartition {
                                base_offset: base,
                                log_append_time: -1,
                                log_start: 0,
                            }),
                        }],
                    }])
                }
                other => panic!("unexpected {other:?}"),
            };
            let response = Response {
                correlation_id: header.correlation_id,
                body: Ok(body),
            };
            if std::io::Write::write_all(&mut socket, &response.encode_to_vec()).is_err() {
                return;
            }
        }
    });
    (addr, produces)
}

/// Issue 10, item 4: the broker dies mid-produce. The report gives the first
/// error (the lost connection, not a later reconnection failure), the lines
/// acknowledged, and how many records may or may not be stored; nothing
/// after the failure is sent, and the command ends within seconds.
#[test]
fn a_broker_that_dies_mid_produce_is_reported_with_what_is_known() {
    let env = start(|_| {});
    let (addr, produces) = dying_broker(10);
    let input: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    let started = std::time::Instant::now();
    let mut child = Command::new(SPOOL)
        .args(["--broker", &addr, "produce", "t", "--batch-size", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = wait_bounded(child);
    writer.join().unwrap();
    drop(env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Acknowledgements on their way when the connection dropped may be
    // lost with it (a reset discards what the socket had not read).
    let acked: u64 = match stderr.split_once("wrote lines 1..") {
        Some((_, rest)) => rest.split(' ').next().unwrap().parse().unwrap(),
        None => 0,
    };
    assert!(acked <= 10, "{stderr}");
    let expected = if acked > 0 {
        format!(
            "wrote lines 1..{acked} to t at offsets 0..{}; line {} failed: connection to the broker was lost",
            acked - 1,
            acked + 1
        )
    } else {
        "no records written to t; line 1 failed: connection to the broker was lost".to_owned()
    };
    assert!(stderr.contains(&expected), "{stderr}");
    let unknown: u64 = stderr
        .trim_end()
        .split("; ")
        .find_map(|part| part.strip_suffix(" record(s) may or may not be stored (the connection was lost before they were acknowledged)"))
        .unwrap_or_else(|| panic!("no unknown count: {stderr}"))
        .parse()
        .unwrap();
    // Every record the broker stored is reported acknowledged or unknown,
    // never as not written: a retry of the rest duplicates nothing.
    let read = produces.load(std::sync::atomic::Ordering::SeqCst);
    assert!(read > 10, "the broker died on produce 11");
    assert!(
        acked + unknown >= 10,
        "{acked} + {unknown} < 10 stored: {stderr}"
    );
    assert!(
        acked + unknown < 5000,
        "it stopped at the failure: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it took {:?}",
        started.elapsed()
    );
}

/// Issue 10, item 12: on a terminal `spool bench` draws a progress line
/// (stderr); piped, it prints only its report.
#[test]
fn bench_shows_progress_on_a_terminal_only() {
    let env = start(|_| {});
    let command = format!(
        "{SPOOL} --broker {} bench --messages 2000000 --message-size 10",
        env.addr
    );
    // `script` runs the command on a pseudo-terminal (util-linux).
    let child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs the bench on a terminal");
    let out = wait_bounded(child);
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("/2000000 msgs"),
        "a progress line: {screen}"
    );
    assert!(screen.contains("spool bench: mode produce"), "{screen}");
    let piped = env.run(
        &["bench", "--messages", "2000000", "--message-size", "10"],
        b"",
    );
    assert!(piped.status.success());
    assert!(
        piped.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&piped.stderr)
    );
}

/// Issue 10, item 12: a failed bench run deletes its topics all the same.
#[test]
fn a_failed_bench_run_leaves_no_topics() {
    let env = start(|_| {});
    let e = env.fails(&[
        "bench",
        "--messages",
        "10",
        "--batch-size",
        "1",
        "--message-size",
        "2000000",
    ]);
    assert!(e.contains("RECORD_TOO_LARGE"), "{e}");
    assert_eq!(env.ok(&["topic", "list"], b""), "");
}

/// Issue 10, item 12: under --rate, the ack latency is the request's, not
/// the time an acknowledgement waited for the rate limiter's next send
/// (here 50 ms apart, with 8 in flight: about 350 ms before).
#[test]
fn bench_ack_latency_under_a_rate_is_the_requests() {
    let env = start(|_| {});
    let out = env.ok(
        &[
            "bench",
            "--messages",
            "20",
            "--batch-size",
            "1",
            "--rate",
            "20",
            "--in-flight",
            "8",
            "--json",
        ],
        b"",
    );
    let report = bench_report(&out);
    let p50 = report["produce_latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50 < 50.0, "p50 {p50} ms includes the pacing: {report}");
}

/// Peak resident memory, in KiB, of `spool produce TOPIC` fed `lines`
/// short lines.
// The child is reaped by wait4(2), which also gives its peak memory.
#[allow(clippy::zombie_processes)]
fn produce_peak_kib(env: &Env, topic: &str, lines: usize) -> i64 {
    let mut child = env
        .spool(&["produce", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        for _ in 0..lines / 10_000 {
            if stdin.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
    });
    let pid = child.id() as libc::pid_t;
    let (reaped_tx, reaped_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Until the child is reaped (a message comes) or the limit passes;
        // only then can the pid not be someone else's.
        if reaped_rx.recv_timeout(RUN_LIMIT).is_err() {
            // SAFETY: our own child, not yet reaped, hung past the limit.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and reaps it (std's handle is not used
    // to wait after this).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = reaped_tx.send(());
    assert_eq!(reaped, pid);
    writer.join().unwrap();
    watchdog.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "spool produce failed: status {status}"
    );
    usage.ru_maxrss
}

/// Issue 10, item 18: `spool produce`'s memory does not grow with its
/// input (it held one delivery handle per line: ten times the lines took
/// several times the memory).
#[test]
fn produce_memory_does_not_grow_with_the_input() {
    let env = start(|c| c.defaults.flush = Some(spool::broker::Flush::Never));
    let small = produce_peak_kib(&env, "small", 200_000);
    let large = produce_peak_kib(&env, "large", 2_000_000);
    assert!(
        (large as f64) < small as f64 * 1.5,
        "peak {small} KiB for 200,000 lines, {large} KiB for 2,000,000"
    );
    let described = env.ok(&["topic", "describe", "large"], b"");
    assert!(described.contains("0 .. 2000000"), "{described}");
}

/// Issue 11: `topic create --partitions`, keys spread over partitions as
/// Kafka's partitioner spreads them, `consume` reads every partition (with
/// the partition in the template and the JSON), `--partition` one.
#[test]
fn partitions_from_the_command_line() {
    use spool_client::partitioner::partition_for_key;
    let env = start(|_| {});
    env.ok(&["topic", "create", "t", "--partitions", "6"], b"");
    let described = env.ok(&["topic", "describe", "t"], b"");
    assert!(described.contains("partitions:         6"), "{described}");
    assert!(described.contains("partition 5:"), "{described}");
    let input: String = (0..60).map(|i| format!("key-{i}:value-{i}\n")).collect();
    let report = env.run(&["produce", "t", "-K", ":"], input.as_bytes());
    assert!(report.status.success(), "{report:?}");
    assert!(
        String::from_utf8_lossy(&report.stderr).contains("wrote 60 records to t"),
        "{report:?}"
    );
    let printed = env.ok(&["consume", "t", "-f", "%p %k %s %o\\n"], b"");
    let mut per_partition = [0u64; 6];
    let mut lines = 0;
    for line in printed.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (p, key, value, offset) = (fields[0], fields[1], fields[2], fields[3]);
        let p: u32 = p.parse().unwrap();
        assert_eq!(p, partition_for_key(key.as_bytes(), 6), "{line}");
        assert_eq!(value, key.replace("key", "value"));
        // Within a partition, in the order produced, offsets from 0.
        assert_eq!(offset.parse::<u64>().unwrap(), per_partition[p as usize]);
        per_partition[p as usize] += 1;
        lines += 1;
    }
    assert_eq!(lines, 60);
    assert!(
        per_partition.iter().filter(|&&n| n > 0).count() >= 4,
        "60 keys spread over at least 4 of 6 partitions: {per_partition:?}"
    );
    // One partition, and the JSON names it.
    let p = partition_for_key(b"key-7", 6);
    let json = env.ok(
        &[
            "consume",
            "t",
            "--partition",
            &p.to_string(),
            "--format",
            "json",
        ],
        b"",
    );
    assert_eq!(json.lines().count() as u64, per_partition[p as usize]);
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["partition"], p);
    }
    // --offset -1: the last record of each partition.
    let last = env.ok(&["consume", "t", "--offset", "-1", "-f", "%p\\n"], b"");
    assert_eq!(
        last.lines().count(),
        per_partition.iter().filter(|&&n| n > 0).count()
    );
    let e = env.fails(&["consume", "t", "--partition", "6"]);
    assert!(e.contains("no partition 6"), "{e}");
    // Raised, never lowered.
    env.ok(&["topic", "alter", "t", "--partitions", "8"], b"");
    let e = env.fails(&["topic", "alter", "t", "--partitions", "2"]);
    assert!(e.contains("cannot be lowered"), "{e}");
    // --partition on produce sends everything there.
    env.ok(&["produce", "t", "--partition", "7"], b"x\ny\n");
    assert_eq!(env.ok(&["consume", "t", "--partition", "7"], b""), "x\ny\n");
}

/// `spool consume` running, with stdout and stderr lines on channels.
fn spawn_lines(
    env: &Env,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let (mut child, stderr) = env.spawn_watched(args);
    let stdout = child.stdout.take().unwrap();
    (child, lines_of(stdout), stderr)
}

/// Collects stdout lines until `done` says so (bounded by RUN_LIMIT).
fn collect_until(
    lines: &[&std::sync::mpsc::Receiver<String>],
    got: &mut [Vec<String>],
    done: impl Fn(&[Vec<String>]) -> bool,
) {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while !done(got) {
        assert!(
            std::time::Instant::now() < deadline,
            "not all records arrived: {got:?}"
        );
        for (i, rx) in lines.iter().enumerate() {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                got[i].push(line);
            }
        }
    }
}

fn keyed(from: u32, to: u32) -> String {
    (from..to)
        .map(|i| format!("{{\"key\":\"k{i}\",\"value\":\"v{i}\"}}\n"))
        .collect()
}

/// Issue 13: two `spool consume --group` processes share a topic's
/// partitions; one is killed (SIGKILL: no goodbye) and the other takes
/// its partitions within the session timeout, from its commits; after
/// both stop, a new run of the group resumes after what was committed.
#[test]
fn two_group_consumers_share_a_topic_and_one_takes_over_from_a_killed_one() {
    let env = start(|_| {});
    env.ok(&["topic", "create", "w", "--partitions", "4"], b"");
    let args = [
        "consume",
        "w",
        "--group",
        "g",
        "--follow",
        "--commit-each",
        "--session-timeout",
        "6s",
        "-f",
        "%p %s\\n",
    ];
    let (mut a, a_out, a_err) = spawn_lines(&env, &args);
    let (b, b_out, b_err) = spawn_lines(&env, &args);
    await_line(&a_err, "consuming partitions");
    await_line(&b_err, "consuming partitions");
    // Until the broker has split the partitions two and two.
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    loop {
        let d = env.ok(&["group", "describe", "g"], b"");
        // Member lines end in `: w[p,q]`: two partitions each.
        let pairs = d
            .lines()
            .filter(|l| l.contains("): w[") && l.matches(',').count() == 1);
        if pairs.count() == 2 && d.contains("state:          Stable") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ok(
        &["produce", "w", "--format", "json"],
        keyed(0, 40).as_bytes(),
    );
    let mut got = vec![Vec::new(), Vec::new()];
    collect_until(&[&a_out, &b_out], &mut got, |g| {
        g[0].len() + g[1].len() >= 40
    });
    let partitions = |lines: &[String]| -> std::collections::BTreeSet<String> {
        lines
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    };
    let (pa, pb) = (partitions(&got[0]), partitions(&got[1]));
    assert!(pa.is_disjoint(&pb), "{pa:?} {pb:?}");
    assert_eq!(got[0].len() + got[1].len(), 40, "each record once: {got:?}");
    // SIGKILL: the broker only learns from the session running out.
    a.kill().unwrap();
    a.wait().unwrap();
    env.ok(
        &["produce", "w", "--format", "json"],
        keyed(40, 80).as_bytes(),
    );
    let takeover = await_line(&b_err, "consuming partitions");
    assert!(!takeover.is_empty());
    let mut after = vec![Vec::new()];
    let want: std::collections::BTreeSet<String> = (40..80).map(|i| format!("v{i}")).collect();
    collect_until(&[&b_out], &mut after, |g| {
        let values: std::collections::BTreeSet<String> = g[0]
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect();
        want.is_subset(&values)
    });
    // Nothing a commit covered comes again: of 0..40 only what the killed
    // one printed but had not committed yet (at most its last record).
    let again = after[0]
        .iter()
        .filter(|l| !want.contains(l.split(' ').nth(1).unwrap()))
        .count();
    assert!(again <= 1, "re-delivered: {:?}", after[0]);
    // A stop (SIGTERM) commits and leaves.
    let pid = b.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = wait_bounded(b);
    assert!(out.status.success(), "{out:?}");
    let d = env.ok(&["group", "describe", "g"], b"");
    assert!(d.contains("state:          Empty"), "{d}");
    for line in d.lines().filter(|l| l.starts_with("w ")) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[2], cells[3], "committed at the log end: {d}");
        assert_eq!(cells[4], "0", "{d}");
    }
    // A new run resumes after the commits: only the records that follow.
    env.ok(
        &["produce", "w", "--format", "json"],
        keyed(80, 83).as_bytes(),
    );
    let rest = env.ok(&["consume", "w", "--group", "g", "-f", "%s\\n"], b"");
    let mut rest: Vec<&str> = rest.lines().collect();
    rest.sort();
    assert_eq!(rest, ["v80", "v81", "v82"]);
    assert_eq!(env.ok(&["consume", "w", "--group", "g"], b""), "");
}

/// Issue 13: `spool group` list, describe, reset (each way, refused while
/// the group has members) and delete.
#[test]
fn group_list_describe_reset_and_delete() {
    let env = start(|_| {});
    let input: String = (0..10).map(|i| format!("v{i}\n")).collect();
    env.ok(&["produce", "t"], input.as_bytes());
    let consume = |max: &str| env.ok(&["consume", "t", "--group", "g", "--max", max], b"");
    assert_eq!(consume("4"), "v0\nv1\nv2\nv3\n");
    assert_eq!(consume("2"), "v4\nv5\n");
    let listed = env.ok(&["group", "list"], b"");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("g ") && l.contains("Empty")),
        "{listed}"
    );
    let d = env.ok(&["group", "describe", "g"], b"");
    let row: Vec<&str> = d
        .lines()
        .find(|l| l.starts_with("t "))
        .unwrap_or_else(|| panic!("{d}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..5], ["0", "6", "10", "4"], "{d}");
    let reset = |how: &[&str]| {
        let mut args = vec!["group", "reset", "g", "--topic", "t"];
        args.extend_from_slice(how);
        env.ok(&args, b"")
    };
    reset(&["--to-earliest"]);
    assert_eq!(consume("1"), "v0\n");
    reset(&["--to-offset", "8"]);
    assert_eq!(consume("5"), "v8\nv9\n");
    reset(&["--to-offset", "99"]); // kept within the log
    assert_eq!(consume("5"), "");
    reset(&["--to-time", "1h"]);
    assert_eq!(consume("1"), "v0\n");
    reset(&["--to-latest"]);
    assert_eq!(consume("5"), "");
    // With a member, reset and delete are refused.
    let (mut follower, stderr) = env.spawn_watched(&["consume", "t", "--group", "g", "--follow"]);
    await_line(&stderr, "consuming partitions");
    let e = env.fails(&["group", "reset", "g", "--topic", "t", "--to-earliest"]);
    assert!(e.contains("GROUP_NOT_EMPTY"), "{e}");
    let e = env.fails(&["group", "delete", "g"]);
    assert!(e.contains("GROUP_NOT_EMPTY"), "{e}");
    let d = env.ok(&["group", "describe", "g"], b"");
    assert!(
        d.contains("assigned by:    the broker") && d.contains("t[0]"),
        "{d}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    // Its session (10 s) runs out; then the group is empty again.
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while !env
        .ok(&["group", "describe", "g"], b"")
        .contains("members:        0")
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    env.ok(&["group", "delete", "g"], b"");
    assert!(!env.ok(&["group", "list"], b"").contains("\ng "));
    let e = env.fails(&["group", "describe", "g"]);
    assert!(e.contains("GROUP_NOT_FOUND"), "{e}");
    // Usage errors say what is missing.
    let out = env.run(&["group", "reset", "g", "--topic", "t"], b"");
    assert_eq!(out.status.code(), Some(2));
    let e = env.fails(&["consume", "t", "--group", ""]);
    assert!(e.contains("INVALID_GROUP"), "{e}");
}
