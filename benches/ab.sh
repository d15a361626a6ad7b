#!/usr/bin/env bash
# Before/after in one run: the same `spool bench` scenarios against two
# release builds, alternating A, B, A, B... so that both see the same
# machine; prints each figure's median for A and B and their ratio B/A.
#
#   bash benches/ab.sh A_BIN_DIR B_BIN_DIR     # e.g. a worktree's target/release
#   RUNS=7 bash benches/ab.sh ...
#   SCENARIOS="one-at-a-time bulk-1k" bash benches/ab.sh ...
#   B_TOML='[storage]
#   io = "direct"' bash benches/ab.sh target/release target/release
#                     # one build, two settings: A_TOML / B_TOML are appended
#                     # to each scenario's config for that side (after its
#                     # last table: [server] for the default config, so
#                     # B_TOML='busy_poll = "0"' sets a server key)
#   B_ARGS="--busy-poll 0" ...   # extra `spool bench` flags for one side
#
# Each directory must hold `spool-broker` and `spool`. Scenarios:
#   one-at-a-time   100 B, one message per request, one request in flight
#   rolling-never   1 KiB x 100 per request, 8 in flight, 1 MiB segments
#                   (a roll every ~10 requests): ack latency while rolling
#   rolling-always  the same with flush = always
#   bulk-1k         1 KiB x 1,000 per request, 8 in flight, default segments
#   consume-1k      a backlog of 1,000,000 x 1 KiB produced, then consumed
#   producers-4     1 KiB x 1,000 per request, 4 producers, one partition
#   partitions-8    the same, over 8 partitions (needs --partitions: builds
#                   from issue 11 on)
set -euo pipefail
A=$1
B=$2
RUNS=${RUNS:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
cat >"$work/rolling.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[defaults]
segment_bytes = "1MiB"
TOML

# run BIN_DIR NAME CONFIG BENCH_ARGS...: one broker, one bench, JSON out.
run() {
    local bin=$1 name=$2 config=$3
    shift 3
    local extra args
    case $name in
    *-A) extra=${A_TOML:-} args=${A_ARGS:-} ;;
    *) extra=${B_TOML:-} args=${B_ARGS:-} ;;
    esac
    if [ -n "$extra" ]; then
        { cat "$config"; printf '%s\n' "$extra"; } >"$work/side.toml"
        config="$work/side.toml"
    fi
    local data="$work/data-$name-$RANDOM"
    local fifo="$work/ready-$RANDOM"
    mkfifo "$fifo"
    # Builds with a Kafka listener get it on a free port (older ones have
    # no such flag).
    local kafka=()
    if "$bin/spool-broker" --help | grep -q -- --kafka-listen; then
        kafka=(--kafka-listen 127.0.0.1:0)
    fi
    RUST_LOG=warn "$bin/spool-broker" --config "$config" --data-dir "$data" "${kafka[@]}" >"$fifo" &
    local pid=$!
    local ready
    read -r ready <"$fifo"
    "$bin/spool" --broker "${ready#spool listening on }" bench --json "$@" $args >>"$work/$name.jsonl"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}

scenario() {
    local name=$1 config=$2
    shift 2
    for _ in $(seq 1 "$RUNS"); do
        run "$A" "$name-A" "$config" "$@"
        run "$B" "$name-B" "$config" "$@"
    done
}

printf '[server]\nlisten = "127.0.0.1:0"\n' >"$work/default.toml"
SCENARIOS=${SCENARIOS:-one-at-a-time rolling-never rolling-always bulk-1k consume-1k}
for name in $SCENARIOS; do
    case $name in
    one-at-a-time) scenario "$name" "$work/default.toml" --messages 20000 --message-size 100 --batch-size 1 --in-flight 1 ;;
    rolling-never) scenario "$name" "$work/rolling.toml" --messages 300000 --message-size 1024 --batch-size 100 --in-flight 8 ;;
    rolling-always) scenario "$name" "$work/rolling.toml" --messages 300000 --message-size 1024 --batch-size 100 --in-flight 8 --flush always ;;
    bulk-1k) scenario "$name" "$work/default.toml" --messages 1000000 --message-size 1024 --batch-size 1000 --in-flight 8 ;;
    consume-1k) scenario "$name" "$work/default.toml" --mode consume --messages 1000000 --message-size 1024 ;;
    producers-4) scenario "$name" "$work/default.toml" --messages 1000000 --message-size 1024 --batch-size 1000 --in-flight 8 --producers 4 ;;
    partitions-8) scenario "$name" "$work/default.toml" --messages 1000000 --message-size 1024 --batch-size 1000 --in-flight 8 --producers 4 --partitions 8 ;;
    *) echo "unknown scenario $name" >&2; exit 2 ;;
    esac
done

python3 - "$work" $SCENARIOS <<'PY'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
def load(name):
    return [json.loads(l) for l in (work / f"{name}.jsonl").read_text().splitlines()]
def med(runs, f):
    return statistics.median(f(r) for r in runs)
figures = [
    ("msgs/s", lambda r: r["produce"]["messages_per_sec"]),
    ("MB/s", lambda r: r["produce"]["mb_per_sec"]),
    ("ack p50 ms", lambda r: r["produce_latency_ms"]["p50"]),
    ("ack p99 ms", lambda r: r["produce_latency_ms"]["p99"]),
    ("ack p99.9 ms", lambda r: r["produce_latency_ms"]["p999"]),
    ("ack max ms", lambda r: r["produce_latency_ms"]["max"]),
]
consumed = [
    ("consume msgs/s", lambda r: r["consume"]["messages_per_sec"]),
    ("consume MB/s", lambda r: r["consume"]["mb_per_sec"]),
]
print(f"{'scenario':16} {'figure':15} {'A':>12} {'B':>12} {'B/A':>6}")
for name in sys.argv[2:]:
    a, b = load(f"{name}-A"), load(f"{name}-B")
    shown = consumed if a[0].get("consume") else figures
    for label, f in shown:
        ma, mb = med(a, f), med(b, f)
        ratio = mb / ma if ma else float("nan")
        print(f"{name:16} {label:15} {ma:12.3f} {mb:12.3f} {ratio:6.2f}")
PY
