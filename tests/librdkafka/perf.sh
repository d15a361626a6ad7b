#!/usr/bin/env bash
# Producer throughput of librdkafka's rdkafka_performance against Spool's
# Kafka listener: 1 KiB and 100 B messages, a fresh broker for each run.
#
#   tests/librdkafka/perf.sh [BROKER_BINARY]
#
# Environment:
#   SPOOL_BROKER       the broker binary when no argument is given
#   RDK_DIR            librdkafka build dir, shared with run.sh (default: a
#                      temporary dir, removed afterwards)
#   BENCH_DATA_PARENT  where each run's data dir is made (default /dev/shm,
#                      so that the disk is not what is measured; give a disk
#                      path to include fdatasync costs)
#   BENCH_COUNT_1K     messages of 1 KiB (default 2000000: 2 GB)
#   BENCH_COUNT_100    messages of 100 B (default 6000000: 600 MB)
#   BENCH_ACKS         acks (default -1: what librdkafka uses by default)
#   BENCH_TIMEOUT      seconds one run may take (default 300)
#
# Prints one line per size: "perf SIZE: N msgs/s, M MB/s" (MB = 10^6 bytes),
# after rdkafka_performance's own summary line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

broker_bin=${1:-${SPOOL_BROKER:-}}
[ -n "$broker_bin" ] || die "usage: $0 BROKER_BINARY (or set SPOOL_BROKER)"
broker_bin=$(cd "$(dirname "$broker_bin")" && pwd)/$(basename "$broker_bin")
export BROKER_DATA_PARENT=${BENCH_DATA_PARENT:-/dev/shm}
[ -d "$BROKER_DATA_PARENT" ] || die "no directory $BROKER_DATA_PARENT"
acks=${BENCH_ACKS:--1}
tmout=${BENCH_TIMEOUT:-300}

tmp_rdk=
if [ -z "${RDK_DIR:-}" ]; then
    RDK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/spool-rdk.XXXXXX")
    tmp_rdk=$RDK_DIR
fi
cleanup() {
    broker_stop
    if [ -n "$tmp_rdk" ]; then rm -rf "$tmp_rdk"; fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rdk_build "$RDK_DIR"
perf=$RDK_DIR/librdkafka/examples/rdkafka_performance
[ -x "$perf" ] || die "no $perf"

run_one() {
    local size=$1 count=$2 out
    broker_start "$broker_bin"
    out=$(mktemp "${TMPDIR:-/tmp}/spool-rdk-perf.XXXXXX")
    # -P produce, one topic (auto-created, 1 partition: Spool's default);
    # linger and batch caps stated even where they are librdkafka's
    # defaults, so the command says what was measured; -q: only the summary.
    local cmd=("$perf" -P -t "bench$size" -b "$KAFKA_ADDR" -s "$size" -c "$count"
        -a "$acks" -X linger.ms=5 -X batch.num.messages=10000 -q)
    log "${cmd[*]}"
    timeout -k 10 "$tmout" "${cmd[@]}" >"$out" 2>&1 || {
        cat "$out" >&2
        rm -f "$out"
        die "rdkafka_performance failed or took over ${tmout}s"
    }
    local summary
    summary=$(grep 'messages produced' "$out" | tail -n1)
    rm -f "$out"
    [ -n "$summary" ] || die "rdkafka_performance printed no summary"
    echo "$summary"
    # "... in 1234ms: 123456 msgs/s and 12.34 MB/s, ..."
    sed -E 's/.* ([0-9]+) msgs\/s and ([0-9.]+) MB\/s.*/perf '"$size"' B: \1 msgs\/s, \2 MB\/s/' <<<"$summary"
    broker_stop
}

log "data dirs under $BROKER_DATA_PARENT, acks=$acks"
run_one 1024 "${BENCH_COUNT_1K:-2000000}"
run_one 100 "${BENCH_COUNT_100:-6000000}"
