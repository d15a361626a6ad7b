//! librdkafka's own test programs (tests/librdkafka/tests.fast, chosen for
//! what the Kafka listener implements) against the real `spool-broker`
//! binary. `tests/librdkafka/run.sh` starts the broker on 127.0.0.1:0 with
//! a fresh data dir and runs each listed test with a bound on its time.
//!
//! Needs librdkafka built in `.ci/librdkafka` (or `$RDK_DIR`): `bash
//! .ci/run` does it, or `bash tests/librdkafka/build.sh` (about two
//! minutes). The whole list, for the soak tier: `RDK_DIR=.ci/librdkafka
//! bash tests/librdkafka/run.sh target/debug/spool-broker
//! tests/librdkafka/tests.all`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn librdkafkas_own_tests_pass_against_spool() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rdk = std::env::var("RDK_DIR").unwrap_or_else(|_| format!("{root}/.ci/librdkafka"));
    assert!(
        std::path::Path::new(&format!("{rdk}/librdkafka/.spool-built")).exists(),
        "no librdkafka build in {rdk}: run `bash .ci/run` once, or `bash tests/librdkafka/build.sh`"
    );
    let mut child = Command::new("bash")
        .arg(format!("{root}/tests/librdkafka/run.sh"))
        .arg(env!("CARGO_BIN_EXE_spool-broker"))
        .arg(format!("{root}/tests/librdkafka/tests.fast"))
        .env("RDK_DIR", &rdk)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    // Each test has its own bound in run.sh; this bounds the whole list.
    let deadline = Instant::now() + Duration::from_secs(900);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "librdkafka's tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
