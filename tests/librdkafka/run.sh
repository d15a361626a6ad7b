#!/usr/bin/env bash
# Runs librdkafka's own integration tests (its tests/0NNN-*.c programs)
# against a Spool broker.
#
#   tests/librdkafka/run.sh [BROKER_BINARY] [LIST_FILE]
#
# BROKER_BINARY defaults to $SPOOL_BROKER; LIST_FILE to tests.fast beside this
# script. A list has one test a line:
#
#   NNNN [sub=SUBSTRING] [timeout=SECONDS]  # what it covers
#
# sub= runs only the sub-tests whose name contains SUBSTRING (the runner's
# SUBTESTS filter), for tests that mix APIs Spool has with ones it lacks.
#
# Environment:
#   RDK_DIR           where librdkafka is fetched and built (default: a new
#                     temporary dir, removed afterwards); reused once built
#   RDK_LOG_DIR       where each test's output goes (default: RDK_DIR/logs/
#                     TIME when RDK_DIR is given, else a kept temporary dir)
#   RDK_TEST_TIMEOUT  seconds one test may take unless its line says (300)
#   RDK_QUICK         1 (default): the runner's quick mode (-Q), fewer
#                     messages; 0: the full-size tests
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
quick=${RDK_QUICK:-1}
kafka_version=${TEST_KAFKA_VERSION:-2.8.0}

# Parse the list first, so that a typo fails before the build.
nums=() subs=() touts=()
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r -a words <<<"$line" || true
    [ ${#words[@]} -eq 0 ] && continue
    [[ ${words[0]} =~ ^[0-9]{4}$ ]] || die "$list: not a test number: ${words[0]}"
    sub= tout=$test_timeout
    for w in "${words[@]:1}"; do
        case $w in
            sub=?*) sub=${w#sub=} ;;
            timeout=[0-9]*) tout=${w#timeout=} ;;
            *) die "$list: unknown field '$w' for test ${words[0]}" ;;
        esac
    done
    nums+=("${words[0]}") subs+=("$sub") touts+=("$tout")
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

# librdkafka's suite is written for its own test clusters, whose default
# scenario (tests/scenarios/default.json) auto-creates topics with 4
# partitions: several tests produce to partitions 0-3 of a topic they never
# created. Everything else is Spool's default.
broker_conf=$log_dir/spool.toml
printf '[defaults]\npartitions = 4\n' >"$broker_conf"
broker_start "$broker_bin" "$broker_conf"

# The runner reads librdkafka properties and its own test.* keys from here.
# Random topic names: each test gets topics of its own on the shared broker.
conf=$log_dir/test.conf
printf '%s\n' "bootstrap.servers=$KAFKA_ADDR" "test.topic.random=true" \
    "test.timeout.multiplier=${RDK_TIMEOUT_MULTIPLIER:-2}" >"$conf"

# -L: broker tests only (the *_mock and *_local functions that share a test
# number never talk to Spool); -p1: one test at a time on 2 cores.
runner_args=(-L -p1)
if [ "$quick" = 1 ]; then runner_args+=(-Q); fi

log "running ${#nums[@]} test(s) from $(basename "$list") (TEST_KAFKA_VERSION=$kafka_version, runner ${runner_args[*]}); logs in $log_dir"

passed=0 failed=0 skipped=0
failed_names=() results=()
t_all=$(date +%s)
for i in "${!nums[@]}"; do
    n=${nums[$i]} sub=${subs[$i]} tout=${touts[$i]}
    name=$n${sub:+ sub=$sub}
    tlog=$log_dir/$n${sub:+-$sub}.log
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
            failed_names+=("$n${sub:+:$sub}")
            # The runner's own account of the failure.
            grep -A2 -E '^### Test .* failed at ' <<<"$clean" | head -n 9 | sed 's/^/    /' >&2 || true
            ;;
    esac
    results+=("$(printf '%-4s %-36s %7ss  %s' "$status" "$name" "$secs" "$why")")
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
