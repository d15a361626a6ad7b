#!/usr/bin/env bash
# Adaptive busy polling (issue 14), in one run:
#  1. one message at a time (100 B, one request in flight), alternating
#     rounds: Spool on its defaults (server.busy_poll = "auto", the client's
#     adaptive poller), Spool with polling off on both sides (the defaults
#     before issue 14), and Redis 7 XADD one at a time (append-only file
#     synced every second), when redis-server is installed;
#  2. the CPU a broker spends on 100 connections that each send one request
#     a second, auto against off, read from /proc/PID/stat.
#
#   bash benches/polling.sh                 # about 4 minutes
#   ROUNDS=5 MESSAGES=20000 bash benches/polling.sh
#
# Loopback only; brokers bind 127.0.0.1:0 and write under a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
IDLE_SECS=${IDLE_SECS:-20}
cargo build --release -q -p spool -p spool-cli
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$data"' EXIT

# start_broker NAME TOML: a broker with this config; sets $addr and $pid.
start_broker() {
    local fifo="$data/ready-$1"
    printf '[server]\nlisten = "127.0.0.1:0"\ndata_dir = "%s"\n%s\n[kafka]\nenabled = false\n' \
        "$data/$1" "$2" >"$data/$1.toml"
    mkfifo "$fifo"
    RUST_LOG=warn target/release/spool-broker --config "$data/$1.toml" >"$fifo" &
    pid=$!
    pids+=($pid)
    read -r ready <"$fifo"
    addr=${ready#spool listening on }
}
start_broker auto 'busy_poll = "auto"'
auto_addr=$addr auto_pid=$pid
start_broker off 'busy_poll = "0"'
off_addr=$addr off_pid=$pid

redis_port=
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
        --dir "$data" --daemonize no >/dev/null &
    pids+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
fi
value=$(python3 -c 'print("v" * 100)')

one() { # ADDR [bench flags]: prints "msgs/s p50 p99"
    local a=$1
    shift
    target/release/spool --broker "$a" bench --json --messages "$MESSAGES" --message-size 100 \
        --batch-size 1 --in-flight 1 "$@" |
        python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); l=d["produce_latency_ms"]; print(int(d["produce"]["messages_per_sec"]), l["p50"], l["p99"])'
}
echo "one at a time, $MESSAGES messages of 100 B: msgs/s, ack p50 ms, ack p99 ms"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r"
    echo "  spool defaults (auto):  $(one "$auto_addr")"
    echo "  spool polling off:      $(one "$off_addr" --busy-poll 0)"
    if [ -n "$redis_port" ]; then
        redis-benchmark -p "$redis_port" -c 1 -n "$MESSAGES" -P 1 --csv XADD bench '*' f "$value" 2>/dev/null |
            tail -1 | awk -F'","' '{gsub(/"/, "", $2); gsub(/"/, "", $5); gsub(/"/, "", $7); print "  redis XADD:             " int($2) " " $5 " " $7}'
    fi
done

# CPU seconds (user + system) a process has used.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
echo "100 connections, one request a second each, ${IDLE_SECS}s: broker CPU seconds (client CPU seconds)"
for r in $(seq 1 "$ROUNDS"); do
    for side in auto off; do
        if [ $side = auto ]; then a=$auto_addr p=$auto_pid flag=(); else a=$off_addr p=$off_pid flag=(--busy-poll 0); fi
        before=$(cpu "$p")
        /usr/bin/time -f "%U %S" -o "$data/client-time" target/release/spool --broker "$a" bench --json \
            --producers 100 --rate 1 --batch-size 1 --in-flight 1 --message-size 100 \
            --duration "${IDLE_SECS}s" "${flag[@]}" >/dev/null
        after=$(cpu "$p")
        client=$(awk '{print $1 + $2}' "$data/client-time")
        echo "  round $r $side: broker $(python3 -c "print(round($after - $before, 2))") s ($client s)"
    done
done
