#!/usr/bin/env bash
# The Kafka listener against Spool's own, in one run, alternating:
#   native  `spool bench` to Spool's port;
#   kafka   `spool bench --kafka` to the Kafka port: the same client and the
#           same batches through Kafka's Produce v9, so the ratio is the
#           broker's front end alone;
#   rdkafka librdkafka's rdkafka_performance to the Kafka port (when built:
#           RDKAFKA_PERFORMANCE=path, or tests/librdkafka/perf.sh builds it),
#           a real client, whose own cost shows.
# A fresh broker per run, data on tmpfs (/dev/shm), flush never. Prints each
# run and the medians, and the ratios to native.
#
#   CARGO_TARGET_DIR=/work/after-target cargo build --release -p spool -p spool-cli
#   bash benches/kafka-vs-native.sh /work/after-target/release [runs] [messages_1k] [messages_100]
set -euo pipefail
B=${1:-target/release}
RUNS=${2:-5}
N1K=${3:-1000000}
N100=${4:-3000000}
RP=${RDKAFKA_PERFORMANCE:-}

# One measurement: PATH SIZE COUNT; prints msgs/s.
measure() {
  local path=$1 size=$2 count=$3 d fifo pid a k rate
  d=$(mktemp -d -p /dev/shm)
  fifo=$d/ready
  mkfifo "$fifo"
  RUST_LOG=warn "$B/spool-broker" --data-dir "$d/data" --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 >"$fifo" &
  pid=$!
  { read -r a; read -r k; } <"$fifo"
  a=${a#spool listening on }
  k=${k#kafka listening on }
  case $path in
    native) rate=$("$B/spool" --broker "$a" bench --message-size "$size" --messages "$count" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["produce"]["messages_per_sec"]))') ;;
    kafka) rate=$("$B/spool" --broker "$a" bench --kafka "$k" --message-size "$size" --messages "$count" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["produce"]["messages_per_sec"]))') ;;
    rdkafka)
      "$B/spool" --broker "$a" topic create t --flush never >/dev/null 2>&1
      # The last table row's dr_m/s (delivered messages per second).
      rate=$(timeout 300 "$RP" -P -t t -b "$k" -s "$size" -c "$count" -p 0 -X linger.ms=5 -q -u 2>/dev/null | awk -F'|' 'NF > 8 && $2 ~ /[0-9]/ {r=$7} END {gsub(/ /, "", r); print r}')
      ;;
  esac
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$d"
  echo "$rate"
}

paths="native kafka"
[ -n "$RP" ] && [ -x "$RP" ] && paths="$paths rdkafka"
for size in 1024 100; do
  count=$N1K
  [ "$size" = 100 ] && count=$N100
  declare -A all=()
  for run in $(seq "$RUNS"); do
    for path in $paths; do
      r=$(measure "$path" "$size" "$count")
      echo "$size B  run $run  $path  $r msgs/s"
      all[$path]="${all[$path]:-} $r"
    done
  done
  python3 - "$size" "${all[native]}" "${all[kafka]}" "${all[rdkafka]:-}" <<'EOF'
import statistics, sys
size, native, kafka, rd = sys.argv[1], *[[float(x) for x in a.split()] for a in sys.argv[2:5]]
n = statistics.median(native)
print(f"{size} B medians: native {n:,.0f} msgs/s", end="")
for name, xs in (("kafka", kafka), ("rdkafka", rd)):
    if xs:
        m = statistics.median(xs)
        print(f", {name} {m:,.0f} ({m / n:.2f} of native)", end="")
print()
EOF
  unset all
done
