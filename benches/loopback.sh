#!/usr/bin/env bash
# The issue-4 scenarios with `spool bench` against a release broker on
# loopback, each run three times; prints the median of each figure, next to
# the machine's own yardsticks measured in the same run (page-cache write
# speed with dd, loopback round trip with benches/pingpong.py).
#
#   bash benches/loopback.sh            # ~4 minutes
#   RUNS=5 bash benches/loopback.sh
#
# Writes each run's JSON to target/loopback/*.json.
#
# Page-cache state decides produce throughput on these VMs (see
# docs/BENCHMARKS.md): first the script fills the page cache with clean
# pages, as on a broker that has been up for a while, by reading a file as
# large as RAM (created once, in target/loopback/fill; set FILL=0 to skip).
# Every run writes fresh topics and keeps them until the end, so no run
# reuses pages another one freed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
cargo build --release -q -p spool -p spool-cli
out=target/loopback
mkdir -p "$out"
rm -f "$out"/*.json
if [ "${FILL:-1}" = 1 ]; then
    mem_mib=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    if [ "$(stat -c %s "$out/fill" 2>/dev/null || echo 0)" -lt $((mem_mib * 1048576)) ]; then
        echo "creating $out/fill ($mem_mib MiB, once)"
        dd if=/dev/zero of="$out/fill" bs=1M count="$mem_mib" status=none
    fi
    cat "$out/fill" >/dev/null
fi
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$data"' EXIT

# Starts a broker on a free port with these arguments, waits for its ready
# line and sets $addr.
start_broker() {
    local fifo="$data/ready-${#pids[@]}"
    mkfifo "$fifo"
    RUST_LOG=warn target/release/spool-broker "$@" >"$fifo" &
    pids+=($!)
    read -r ready <"$fifo"
    addr=${ready#spool listening on }
    echo "broker at $addr (pid $!)"
}

bench() {
    local name=$1
    shift
    for i in $(seq 1 "$RUNS"); do
        target/release/spool --broker "$addr" bench --json --keep --topic-prefix "$name-$i" "$@" >"$out/$name-$i.json"
    done
}

start_broker --listen 127.0.0.1:0 --data-dir "$data/broker"

bench produce-1k-never --messages 2000000
bench produce-1k-always --messages 2000000 --flush always
bench consume-1k-backlog --mode consume --messages 2000000
bench both-1k --mode both --messages 2000000
bench produce-100b-never --messages 10000000 --message-size 100
bench one-at-a-time-100b --messages 100000 --message-size 100 --batch-size 1 --in-flight 1
bench e2e-paced-10k --mode both --duration 10s --message-size 100 --batch-size 1 --in-flight 1 --rate 10000

# One at a time again, with both sides polling their sockets between
# requests instead of sleeping (server.busy_poll, spool bench --busy-poll):
# one worker thread each, so that the two pollers have a CPU each.
cat >"$data/poll.toml" <<EOF
[server]
listen = "127.0.0.1:0"
data_dir = "$data/poll-broker"
busy_poll = "1ms"
worker_threads = 1
EOF
start_broker --config "$data/poll.toml"
TOKIO_WORKER_THREADS=1 bench one-at-a-time-100b-busy-poll --messages 100000 --message-size 100 --batch-size 1 --in-flight 1 --busy-poll 1ms
TOKIO_WORKER_THREADS=1 bench e2e-paced-10k-busy-poll --mode both --duration 10s --message-size 100 --batch-size 1 --in-flight 1 --rate 10000 --busy-poll 1ms

echo "yardsticks:"
for i in $(seq 1 "$RUNS"); do
    dd if=/dev/zero of="$data/dd" bs=1M count=2000 2>&1 | tail -1 | awk '{print "  dd 1 MiB writes to the page cache: " $(NF-1) " " $NF}'
    rm -f "$data/dd"
done
for i in $(seq 1 "$RUNS"); do
    echo "  $(python3 benches/pingpong.py)"
done
# Redis Streams one XADD of 100 bytes at a time, append-only file synced
# every second: a real server's request/response floor on this machine
# (only if redis-server is installed: apt-get install redis-server).
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
        --dir "$data" --daemonize no >/dev/null &
    redis_pid=$!
    for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
    value=$(python3 -c 'print("v" * 100)')
    for i in $(seq 1 "$RUNS"); do
        redis-benchmark -p "$port" -c 1 -n 100000 -P 1 --csv XADD bench '*' f "$value" 2>/dev/null |
            tail -1 | awk -F'","' '{gsub(/"/, "", $2); gsub(/"/, "", $5); print "  redis XADD one at a time: " $2 " req/s, p50 " $5 " ms"}'
    done
    kill "$redis_pid"
fi

python3 - "$out" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path).rsplit("-", 1)[0]
    runs.setdefault(name, []).append(json.load(open(path)))

def med(rs, *keys):
    vals = []
    for r in rs:
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None

print("| scenario | produce msgs/s | produce MB/s | ack p50 / p99 ms | consume msgs/s | consume MB/s | e2e p50 / p99 ms |")
print("| --- | --- | --- | --- | --- | --- | --- |")
fmt = lambda v, f: "" if v is None else f.format(v)
for name, rs in runs.items():
    print("| {} | {} | {} | {} | {} | {} | {} |".format(
        name,
        fmt(med(rs, "produce", "messages_per_sec"), "{:,.0f}"),
        fmt(med(rs, "produce", "mb_per_sec"), "{:,.0f}"),
        "" if med(rs, "produce_latency_ms", "p50") is None else "{:.3f} / {:.3f}".format(med(rs, "produce_latency_ms", "p50"), med(rs, "produce_latency_ms", "p99")),
        fmt(med(rs, "consume", "messages_per_sec"), "{:,.0f}"),
        fmt(med(rs, "consume", "mb_per_sec"), "{:,.0f}"),
        "" if med(rs, "end_to_end_latency_ms", "p50") is None else "{:.3f} / {:.3f}".format(med(rs, "end_to_end_latency_ms", "p50"), med(rs, "end_to_end_latency_ms", "p99")),
    ))
EOF
