#!/usr/bin/env python3
"""Spool against Apache Iggy, side by side in one run, on the same workloads.

Copied from ../shared/peers/vs-iggy.py and extended (issue 14): consume and produce-and-consume
workloads, one Spool broker per --spool-io mode (buffered, direct) in the same rounds, an optional
CPU hog beside both (--hog), and the device's direct-I/O speed measured in the same run.

Both servers start once and stay warm. Rounds alternate Iggy, Spool, Iggy, Spool...; every run
writes to a fresh stream or topic that the bench tool removes afterwards, so both pay the same
page-cache cost. Prints each run, then the medians and the ratio Spool / Iggy.

    vs-iggy.py --iggy-dir /tmp/peers/iggy --spool-dir . [--rounds 5] [--workloads produce-1k,produce-100b,fsync-1k,consume-1k,both-1k]
               [--spool-io buffered,direct] [--free-gb 4] [--hog] [--settle 20]

--iggy-dir holds Iggy's build (see build-iggy.sh); --spool-dir a built checkout (target/release).
Only loopback is used. Nothing is written outside a temp dir.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

WORKLOADS = {  # name: (message bytes, messages per batch, batches, fsync, kind)
    "produce-1k": (1000, 1000, 1000, False, "produce"),
    "produce-100b": (100, 1000, 5000, False, "produce"),
    "fsync-1k": (1000, 1000, 1000, True, "produce"),
    # A backlog of 1 GB written first (untimed), then drained by one consumer.
    "consume-1k": (1000, 1000, 1000, False, "consume"),
    # One producer flat out and one consumer keeping up with it.
    "both-1k": (1000, 1000, 1000, False, "both"),
}


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def start_iggy(iggy_dir, work):
    env = dict(os.environ, IGGY_SYSTEM_PATH=os.path.join(work, "iggy-data"),
               IGGY_ROOT_USERNAME="iggy", IGGY_ROOT_PASSWORD="iggy")
    log = open(os.path.join(work, "iggy.log"), "wb")
    p = subprocess.Popen([os.path.join(iggy_dir, "target/release/iggy-server")], cwd=work, env=env,
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if not wait_port(8090):
        p.kill()
        return None
    time.sleep(2)
    return p


def start_spool(spool_dir, work, io):
    data = os.path.join(work, "spool-data-" + io)
    config = os.path.join(work, "spool-" + io + ".toml")
    with open(config, "w") as fh:
        fh.write(f'[storage]\nio = "{io}"\n[kafka]\nenabled = false\n')
    p = subprocess.Popen([os.path.join(spool_dir, "target/release/spool-broker"), "--config", config,
                          "--listen", "127.0.0.1:0", "--data-dir", data], stdout=subprocess.PIPE,
                         stderr=open(os.path.join(work, "spool.log"), "ab"), stdin=subprocess.DEVNULL)
    end = time.time() + 60
    while time.time() < end:
        line = p.stdout.readline().decode(errors="replace")
        if "listening on" in line and "kafka" not in line:
            return p, line.split()[-1]
        if not line and p.poll() is not None:
            break
    p.kill()
    sys.exit("spool-broker gave no ready line")


def iggy_results(out, who):
    m = re.search(who + r" Results: Total throughput: ([\d.]+) MB/s, (\d+) messages/s.*?p99 latency: ([\d.]+) ms", out)
    return (float(m.group(1)), int(m.group(2)), float(m.group(3))) if m else (None, None, None)


def run_iggy(iggy_dir, size, per_batch, batches, fsync, kind):
    """(MB/s, msgs/s, p99 ms) of the side the workload measures; for "both", the consumer's, whose
    latency Iggy measures per poll (not end to end)."""
    def bench(*kind_args):
        args = [os.path.join(iggy_dir, "target/release/iggy-bench"), "-m", str(size), "-P", str(per_batch),
                "-b", str(batches)]
        if fsync:
            args.append("--enforce-fsync")
        if kind_args[0] == "pinned-consumer":
            args.append("--reuse-streams")
        args += list(kind_args) + ["-s", "1", "tcp", "--server-address", "127.0.0.1:8090"]
        return subprocess.run(args, capture_output=True, timeout=900).stdout.decode(errors="replace")
    if kind == "produce":
        return iggy_results(bench("pinned-producer", "-p", "1"), "Producers")
    if kind == "consume":
        bench("pinned-producer", "-p", "1")  # the backlog, untimed
        return iggy_results(bench("pinned-consumer", "-c", "1"), "Consumers")
    return iggy_results(bench("pinned-producer-and-consumer", "-p", "1", "-c", "1"), "Consumers")


def run_spool(spool_dir, addr, size, per_batch, batches, fsync, kind):
    """(MB/s, msgs/s, p99 ms) as run_iggy; for "both", the consumer's throughput and the end-to-end
    p99 (produce to consume)."""
    args = [os.path.join(spool_dir, "target/release/spool"), "--broker", addr, "bench", "--mode", kind,
            "--producers", "1", "--consumers", "0" if kind == "produce" else "1", "--message-size", str(size),
            "--batch-size", str(per_batch), "--messages", str(per_batch * batches),
            "--flush", "always" if fsync else "never", "--json"]
    p = subprocess.run(args, capture_output=True, timeout=900)
    try:
        doc = json.loads(p.stdout.decode().strip().splitlines()[-1])
        side = doc["produce"] if kind == "produce" else doc["consume"]
        lat = doc["end_to_end_latency_ms"] if kind == "both" else doc["produce_latency_ms"]
        return float(side["mb_per_sec"]), int(side["messages_per_sec"]), lat and float(lat["p99"])
    except Exception:  # noqa: BLE001 - the bench's JSON is the project's; report what came back
        print("spool bench output not understood:", p.stdout[-300:], p.stderr[-300:])
        return None, None, None


def dd_direct(work):
    """The device's speed for 1 MiB direct writes of 1 GiB, in GB/s (None where O_DIRECT is refused)."""
    path = os.path.join(work, "dd.bin")
    p = subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=1024", "oflag=direct"],
                       capture_output=True, text=True)
    if os.path.exists(path):
        os.remove(path)
    m = re.search(r"([\d.,]+) ([GM])B/s", p.stderr)
    if not m:
        return None
    v = float(m.group(1).replace(",", "."))
    return v if m.group(2) == "G" else v / 1000


def start_hog():
    """One CPU kept busy beside both servers."""
    if shutil.which("stress-ng"):
        return subprocess.Popen(["stress-ng", "--cpu", "1", "--quiet"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def prepare(a, work):
    """Puts the page cache in the state the run asks for (see --settle and --free-gb)."""
    if a.free_gb:
        path = os.path.join(work, "free.bin")
        with open(path, "wb") as fh:
            block = b"\0" * (1 << 20)
            for _ in range(int(a.free_gb * 1024)):
                fh.write(block)
        os.remove(path)
        time.sleep(15)
    time.sleep(a.settle)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iggy-dir", required=True)
    ap.add_argument("--spool-dir", default=".")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workloads", default="produce-1k,produce-100b")
    ap.add_argument("--spool-io", default="buffered",
                    help="comma-separated [storage] io modes; one Spool broker each, in the same rounds")
    ap.add_argument("--hog", action="store_true", help="keep one CPU busy (stress-ng --cpu 1) throughout")
    ap.add_argument("--settle", type=float, default=0,
                    help="seconds to wait before each run, so that pages the last run freed go back to the host "
                         "and the run writes into fresh pages (this VM's slow state); 0 measures the warm state")
    ap.add_argument("--free-gb", type=float, default=0,
                    help="before each run, write and delete this many GB and wait 15 s, so the run writes into pages "
                         "the VM has just handed back to the host (its slow state)")
    a = ap.parse_args()
    modes = a.spool_io.split(",")
    work = tempfile.mkdtemp(prefix="vs-iggy-")
    iggy = None
    for attempt in range(3):  # its edge snapshot sometimes panics while its shards boot
        shutil.rmtree(os.path.join(work, "iggy-data"), ignore_errors=True)
        iggy = start_iggy(os.path.abspath(a.iggy_dir), work)
        if iggy:
            break
    if not iggy:
        shutil.rmtree(work, ignore_errors=True)
        sys.exit("iggy-server did not open 127.0.0.1:8090 in 3 tries")
    spools = {io: start_spool(os.path.abspath(a.spool_dir), work, io) for io in modes}
    hog = start_hog() if a.hog else None
    device = [dd_direct(work)]
    rows = []
    try:
        for name in a.workloads.split(","):
            size, per_batch, batches, fsync, kind = WORKLOADS[name]
            sides = ["iggy"] + ["spool-" + io for io in modes]
            results = {side: [] for side in sides}
            for r in range(a.rounds):
                # Rotate who goes first, so that no side always follows the same one.
                order = sides[r % len(sides):] + sides[:r % len(sides)]
                line = []
                for side in order:
                    prepare(a, work)
                    if side == "iggy":
                        res = run_iggy(a.iggy_dir, size, per_batch, batches, fsync, kind)
                    else:
                        res = run_spool(a.spool_dir, spools[side[6:]][1], size, per_batch, batches, fsync, kind)
                    if res[0]:
                        results[side].append(res)
                    line.append(f"{side} {res[0] and round(res[0], 1)} MB/s {res[1]} msgs/s p99 {res[2]} ms")
                print(f"{name} round {r + 1}: " + " | ".join(line), flush=True)
            med = {}
            for side, rs in results.items():
                if rs:
                    med[side] = (statistics.median(x[0] for x in rs), statistics.median(x[1] for x in rs),
                                 statistics.median(x[2] for x in rs if x[2] is not None) if any(
                                     x[2] is not None for x in rs) else None)
            rows.append((name, med))
        device.append(dd_direct(work))
    finally:
        for p in [iggy, hog] + [s[0] for s in spools.values()]:
            if p is None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    state = f"settle {a.settle:g} s, free {a.free_gb:g} GB{', CPU hog' if a.hog else ''}"
    print(f"\nmedians of {a.rounds} ({state}); direct-I/O dd before and after: "
          + ", ".join(f"{d:.2f} GB/s" if d else "n/a" for d in device))
    head = "| workload | iggy MB/s | " + " | ".join(f"spool {io} MB/s | / iggy" for io in modes) + " | p99 ms iggy / " \
        + " / ".join(modes) + " |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for name, med in rows:
        i = med.get("iggy")
        cells = [name, f"{i[0]:.0f}" if i else "n/a"]
        for io in modes:
            m = med.get("spool-" + io)
            cells.append(f"{m[0]:.0f}" if m else "n/a")
            cells.append(f"{m[0] / i[0]:.2f}" if m and i else "n/a")
        lat = [med[k][2] for k in ["iggy"] + ["spool-" + io for io in modes] if k in med]
        cells.append(" / ".join(f"{v:.2f}" if v is not None else "n/a" for v in lat))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
