"""Proof that the reliability suite has teeth: each mutant below breaks one
guarantee on purpose, and the test that guards it must then fail.

    python3 tests/mutants.py            # every mutant (about 20 minutes)
    python3 tests/mutants.py crc-off    # one, by name

Works on a copy of the committed tree (git archive HEAD) in
target/mutants/src, builds into target/mutants/target, and never touches the
working tree. Prints one JSON line per mutant and exits non-zero if any
mutant survives (its test passed).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

# name: (file, original text, mutated text, test target, test filter, what it breaks)
MUTANTS = {
    "ack-before-write": (
        "src/storage/log.rs",
        ".and_then(|pos| active.flush().map(|()| pos));",
        ";",
        "kill9", "kill_9_with_flush_never",
        "append returns before the batch reaches the kernel",
    ),
    "always-without-fsync": (
        "src/storage/log.rs",
        "SyncMode::Always => true,",
        "SyncMode::Always => false,",
        "power_loss", "sync_always",
        "flush = always acknowledges without an fdatasync",
    ),
    "keep-torn-tail": (
        "src/storage/segment.rs",
        "let sidecar = move_to_sidecar(&**vfs, dir, &store, base, tail, size)?;",
        "let sidecar = { let _ = move_to_sidecar; dir.join(\"kept\") };",
        "log_recovery", "",
        "recovery leaves a torn tail in the store",
    ),
    "crc-off": (
        "src/batch.rs",
        "if actual != header.crc {",
        "if actual != header.crc && false {",
        "damage", "",
        "stored batches are not checked against their CRC",
    ),
    "trust-sealed-index": (
        "src/storage/segment.rs",
        "    let n = index.len();\n    if n == 0 {\n        return size == 0 && next_base == base;",
        "    let n = index.len();\n    if n < u32::MAX {\n        return true;\n    }\n    if n == 0 {\n        return size == 0 && next_base == base;",
        "log_recovery", "",
        "a sealed segment's index is trusted without its checks",
    ),
    "retry-failed-fsync": (
        "src/storage/log.rs",
        "Err(e) => state.failed = Some(e.to_string()),",
        "Err(_) => {}",
        "io_faults", "every_failed_operation",
        "a failed fdatasync is retried and then acknowledged (fsyncgate)",
    ),
    "disk-full-fences": (
        "src/storage/log.rs",
        "StorageError::DiskFull { .. } => e,",
        "StorageError::DiskFull { .. } => fence(w, e),",
        "io_faults", "a_full_disk",
        "a full disk fences the log: produces never resume",
    ),
    "publish-retention-first": (
        "src/storage/log.rs",
        "        for segment in &list[..cut] {\n            let bytes = segment.disk_bytes();\n            segment.remove_files()?;",
        "        for segment in &list[..cut] {\n"
        "            let bytes = segment.disk_bytes();\n"
        "            let mut published = self.segments.write().unwrap_or_else(|p| p.into_inner());\n"
        "            *published = Arc::new(published.iter().filter(|s| !Arc::ptr_eq(s, segment)).cloned().collect());\n"
        "            drop(published);\n"
        "            std::thread::sleep(std::time::Duration::from_millis(5));\n"
        "            segment.remove_files()?;",
        "retention_race", "kill_9_while_retention",
        "the log start moves before the deletion is durable",
    ),
    "no-count-check": (
        "src/protocol/wire.rs",
        "if count.saturating_mul(min_element.max(1)) > self.remaining() {",
        "if count > usize::MAX / 2 {",
        # Requests no longer reach it with a large count (CREATE_TOPIC caps
        # its settings first, so hostile_frames cannot see it go); responses
        # the client parses still rely on it.
        "lib", "protocol::",
        "inner counts are not checked against the bytes that remain",
    ),
    "visible-end-backwards": (
        "src/broker/topic.rs",
        "            let moved = end > *v;\n            *v = (*v).max(end);",
        "            let moved = end != *v;\n            *v = end;",
        "hardening", "the_visible_end_never_moves_backwards",
        "two producers publish the visible end out of order",
    ),
    "ack-before-predecessor-sealed": (
        "src/storage/log.rs",
        "match self.finish_deferred().and_then(|()| segment.sync()) {",
        "match segment.sync() {",
        "power_loss", "sync_always",
        "a commit covers a segment whose predecessor's seal was deferred and not yet done",
    ),
    "index-preallocated": (
        "src/storage/index.rs",
        "            .max(FIRST_STEP)\n",
        "            .max(u64::from(self.max) * E::WIDTH as u64 * 5 / 2)\n",
        "hardening", "two_hundred_empty_topics",
        "index files are allocated at their maximum, not as they fill",
    ),
    "unbounded-fetch-wait": (
        "src/broker/handler.rs",
        ".min(server.max_fetch_wait);",
        ";",
        "hardening", "a_fetch_waits_at_most_max_fetch_wait",
        "max_wait_ms is not clamped to max_fetch_wait",
    ),
    "departed-client-keeps-polls": (
        "src/broker/handler.rs",
        "                || *self.gone.borrow()\n",
        "                || false\n",
        "hardening", "a_client_that_leaves_frees_its_slot_at_once",
        "a departed client's long polls run to their deadline",
    ),
    "recovery-ignores-read-errors": (
        "src/storage/segment.rs",
        "if let Some(h) = good_batch_at(&store, base, e, size)? {",
        "if let Some(h) = good_batch_at(&store, base, e, size).ok().flatten() {",
        "log_regressions", "an_unreadable_store",
        "a read error while opening is taken for a bad batch",
    ),
    "blocking-read-on-worker": (
        "src/broker/handler.rs",
        "let found = match read(&partition, offset, room, end, Wait::No, first) {",
        "let found = match read(&partition, offset, room, end, Wait::Yes, first) {",
        "runtime_blocking", "a_fetch_of_data_not_in_the_page_cache",
        "a fetch of uncached data blocks the async worker",
    ),
    "long-poll-rereads": (
        "src/broker/handler.rs",
        "            let available = available(&self.wanted, &ends);\n",
        "            let available = available(&self.wanted, &ends);\n"
        "            for w in &self.wanted {\n"
        "                let _ = read(&w.partition, w.offset, self.max_bytes, u64::MAX, Wait::Yes, true);\n"
        "            }\n",
        "runtime_blocking", "a_waiting_fetch_reads_once",
        "a waiting fetch reads its data again at every append",
    ),
    "fetch-charged-max-bytes": (
        "src/broker/connection.rs",
        ".max(server.max_frame_bytes)",
        "",
        "floods", "max_bytes_0",
        "a fetch is charged its max_bytes, not the whole batch it returns",
    ),
}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    names = sys.argv[1:] or list(MUTANTS)
    work = os.path.join("target", "mutants")
    src = os.path.join(work, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.run(["git", "archive", "HEAD"], check=True, capture_output=True).stdout
    run(["tar", "-x", "-C", src], input=archive)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.abspath(os.path.join(work, "target")))
    survivors = 0
    for name in names:
        path, old, new, test, filt, breaks = MUTANTS[name]
        file = os.path.join(src, path)
        with open(file) as f:
            original = f.read()
        if original.count(old) != 1:
            print(json.dumps({"mutant": name, "error": f"pattern not found once in {path}"}))
            survivors += 1
            continue
        with open(file, "w") as f:
            f.write(original.replace(old, new))
        started = time.time()
        # "lib": the unit tests beside the code.
        target = ["-p", "spool", "--lib"] if test == "lib" else ["--workspace", "--test", test]
        args = ["cargo", "test", *target, "--", "--test-threads=1"]
        if filt:
            args.insert(-1, filt)
        # Bounded: a mutant that hangs its test counts as caught.
        child = subprocess.Popen(args, cwd=src, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = child.communicate(timeout=900)
            failed = child.returncode != 0
            how = "test failed" if failed else "test passed"
            tail = [l for l in out.splitlines() if "panicked" in l or "error[" in l][:2]
        except subprocess.TimeoutExpired:
            # The whole group: cargo and the test binary it started.
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            failed, how, tail = True, "test hung (killed after 900 s)", []
        with open(file, "w") as f:
            f.write(original)
        survivors += not failed
        print(json.dumps({"mutant": name, "breaks": breaks, "test": test, "filter": filt,
                          "caught": failed, "how": how, "seconds": round(time.time() - started),
                          "first_failure": tail}), flush=True)
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
