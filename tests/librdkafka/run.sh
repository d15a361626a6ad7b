#!/usr/bin/env bash
# Runs librdkafka's own integration tests (its tests/0NNN-*.c programs)
# against a Spool broker.
#
#   tests/librdkafka/run.sh [BROKER_BINARY] [LIST_FILE]
#
# BROKER_BINARY defaults to $SPOOL_BROKER; LIST_FILE to tests.fast beside this
# script. A list has one test a line:
#
#   NNNN [sub=SUBSTRING] [quick] [idem] [timeout=SECONDS]  # what it covers
#
#   sub=      only the sub-tests whose name contains SUBSTRING (the runner's
#             SUBTESTS filter), for tests that mix APIs Spool has with ones
#             it lacks
#   quick     the runner's quick mode (-Q): fewer messages, and only the
#             sub-tests marked quick (some tests do nothing at all in it)
#   idem      every producer of the test idempotent (the runner's -P), so
#             that InitProducerId and sequence numbers are in play
#
# Environment:
#   RDK_DIR           where librdkafka is fetched and built (default: a new
#                     temporary dir, removed afterwards); reused once built
#   RDK_LOG_DIR       where each test's output goes (default: RDK_DIR/logs/
#                     TIME when RDK_DIR is given, else a kept temporary dir)
#   RDK_TEST_TIMEOUT  seconds one test may take unless its line says (300)
#   RDK_QUICK         1: every test in quick mode (a smoke run); default 0:
#                     as each line says
#   TEST_KAFKA_VERSION  the broker version the runner assumes (2.8.0; see
#                     README.md)
#
# Prints a line per test, then "librdkafka: N passed, N failed, N skipped",
# and exits non-zero if any listed test failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

broker_bin=${1:-${SPOOL_BROKER:-}}
list=${2:-$here/tests.fast}
[ -n "$broker_bin" ] || die "usage: $0 BROKER_BINARY [LIST_FILE] (or set SPOOL_BROKER)"
[ -f "$list" ] || die "no test list $list"
broker_bin=$(cd "$(dirname "$broker_bin")" && pwd)/$(basename "$broker_bin")
list=$(cd "$(dirname "$list")" && pwd)/$(basename "$list")
test_timeout=${RDK_TEST_TIMEOUT:-300}
quick=${RDK_QUICK:-0}
kafka_version=${TEST_KAFKA_VERSION:-2.8.0}

# Parse the list first, so that a typo fails before the build.
nums=() subs=() touts=() quicks=() idems=()
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r -a words <<<"$line" || true
    [ ${#words[@]} -eq 0 ] && continue
    [[ ${words[0]} =~ ^[0-9]{4}$ ]] || die "$list: not a test number: ${words[0]}"
    sub= tout=$test_timeout q=$quick idem=0
    for w in "${words[@]:1}"; do
        case $w in
            sub=?*) sub=${w#sub=} ;;
            timeout=[0-9]*) tout=${w#timeout=} ;;
            quick) q=1 ;;
            idem) idem=1 ;;
            *) die "$list: unknown field '$w' for test ${words[0]}" ;;
        esac
    done
    nums+=("${words[0]}") subs+=("$sub") touts+=("$tout") quicks+=("$q") idems+=("$idem")
done <"$list"
[ ${#nums[@]} -gt 0 ] || die "$list lists no test"

tmp_rdk=
if [ -z "${RDK_DIR:-}" ]; then
    RDK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/spool-rdk.XXXXXX")
    tmp_rdk=$RDK_DIR
fi
mkdir -p "$RDK_DIR"
RDK_DIR=$(cd "$RDK_DIR" && pwd)
log_dir=${RDK_LOG_DIR:-}
if [ -z "$log_dir" ]; then
    if [ -n "$tmp_rdk" ]; then
        log_dir=$(mktemp -d "${TMPDIR:-/tmp}/spool-rdk-logs.XXXXXX")
    else
        log_dir=$RDK_DIR/logs/$(date +%Y%m%d-%H%M%S)
    fi
fi
mkdir -p "$log_dir"

child=
cleanup() {
    # A test still running (after INT/TERM) goes first; timeout(1) passes
    # the signal on to the runner.
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    # Keep the broker's own output next to the tests' for diagnosis.
    if [ -n "$BROKER_OUT" ] && [ -f "$BROKER_OUT" ]; then
        cp "$BROKER_OUT" "$log_dir/broker.log" || true
    fi
    broker_stop
    if [ -n "$tmp_rdk" ]; then rm -rf "$tmp_rdk"; fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rdk_build "$RDK_DIR"
tests_dir=$RDK_DIR/librdkafka/tests

# The broker as librdkafka's own test clusters are set up, where Spool's
# defaults differ:
# - partitions = 4: their default scenario (tests/scenarios/default.json)
#   auto-creates topics with 4, and several tests produce to partitions 0-3
#   of a topic they never created;
# - retention_ms unlimited: some tests produce records stamped 1970 (0054
#   uses timestamp 1234). Spool applies retention at every segment roll,
#   and a segment whose first batch is that old rolls at the next batch, so
#   the first batch is deleted as soon as a second arrives; Kafka checks
#   retention every 5 minutes, long after the test has read it back.
# The groups' initial rebalance delay stays at its default, 3 s as Kafka's:
# with 0, 0102 and 0113 see a rebalance more than they expect (the first
# member alone forms a generation before the second joins).
printf '[defaults]\npartitions = 4\nretention_ms = "unlimited"\n' >"$log_dir/spool.toml"
broker_start "$broker_bin" "$log_dir/spool.toml"

# The runner reads librdkafka properties and its own test.* keys from here.
# Random topic names: each test's topics are its own on the shared broker.
conf=$log_dir/test.conf
printf '%s\n' "bootstrap.servers=$KAFKA_ADDR" "test.topic.random=true" \
    "test.timeout.multiplier=${RDK_TIMEOUT_MULTIPLIER:-2}" >"$conf"

# -L: broker tests only (the *_mock and *_local functions that share a test
# number never talk to Spool); -p1: one test at a time on 2 cores.
base_args=(-L -p1)

log "running ${#nums[@]} test(s) from $(basename "$list") (TEST_KAFKA_VERSION=$kafka_version); logs in $log_dir"

passed=0 failed=0 skipped=0
failed_names=() results=()
t_all=$(date +%s)
for i in "${!nums[@]}"; do
    n=${nums[$i]} sub=${subs[$i]} tout=${touts[$i]}
    runner_args=("${base_args[@]}") tag=
    if [ "${quicks[$i]}" = 1 ]; then runner_args+=(-Q) tag=" quick"; fi
    if [ "${idems[$i]}" = 1 ]; then runner_args+=(-P) tag="$tag idem"; fi
    name=$n$tag${sub:+ sub=$sub}
    tlog=$log_dir/$n${tag// /-}${sub:+-$sub}.log
    t0=$(date +%s.%N)
    # env -u CI: the runner changes its timeouts and parallelism when CI is
    # set; the same run everywhere is easier to compare. In the background
    # and waited for, so that INT/TERM reach the trap at once.
    (
        cd "$tests_dir"
        exec env -u CI LD_LIBRARY_PATH="$RDK_DIR/librdkafka/src:$RDK_DIR/librdkafka/src-cpp" \
            RDKAFKA_TEST_CONF="$conf" TEST_KAFKA_VERSION="$kafka_version" \
            TESTS="$n" ${sub:+SUBTESTS="$sub"} \
            timeout -k 10 "$tout" ./test-runner "${runner_args[@]}"
    ) </dev/null >"$tlog" 2>&1 &
    child=$!
    rc=0
    # (2>/dev/null: bash's own "Aborted" notice when the runner dies of its
    # assertion; the test's log has the runner's account.)
    wait "$child" 2>/dev/null || rc=$?
    child=
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

    # The runner's closing table has a row per test function of that number:
    # "| 0017_compression | PASSED | 1.2s |".
    clean=$(sed 's/\x1b\[[0-9;]*m//g' "$tlog")
    states=$(sed -n "s/^| *\(${n}_[A-Za-z0-9_]*\) *| *\([A-Z]*\) *|.*/\1=\2/p" <<<"$clean" |
        sort -u | tr '\n' ' ')
    if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "${secs%.*}" -ge "$tout" ]; }; then
        status=FAIL why="killed after ${tout}s"
    elif [ "$rc" -ne 0 ]; then
        status=FAIL why="exit $rc $states"
    elif [[ $states == *=PASSED* ]]; then
        status=PASS why=$states
    elif [[ $states == *=SKIPPED* ]]; then
        status=SKIP why=$states
    else
        status=FAIL why="no test of that number ran"
    fi
    case $status in
        PASS) passed=$((passed + 1)) ;;
        SKIP) skipped=$((skipped + 1)) ;;
        FAIL)
            failed=$((failed + 1))
            failed_names+=("$n${tag// /-}${sub:+:$sub}")
            # The runner's own account of the failure.
            grep -A2 -E '^### Test .* failed at ' <<<"$clean" | head -n 9 | sed 's/^/    /' >&2 || true
            ;;
    esac
    results+=("$(printf '%-4s %-50s %6ss  %s' "$status" "$name" "$secs" "$why")")
    printf '%s\n' "${results[-1]}"
    # A broker that died takes every later test with it: say so and stop.
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        log "spool-broker exited during test $name; see $log_dir/broker.log"
        failed=$((failed + ${#nums[@]} - i - 1))
        break
    fi
done

echo
echo "librdkafka tests against Spool ($(basename "$list"), $(($(date +%s) - t_all))s, logs in $log_dir):"
printf '  %s\n' "${results[@]}"
if [ ${#failed_names[@]} -gt 0 ]; then echo "failed: ${failed_names[*]}"; fi
echo "librdkafka: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
