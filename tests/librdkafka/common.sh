# Shared by run.sh and perf.sh: fetch and build librdkafka, start and stop a
# Spool broker. Sourced, not run; the caller has `set -euo pipefail`.

# librdkafka 2.12.0 comes inside this npm package (deps/librdkafka, with its
# tests/ and examples/), which is the one registry the machines reach that
# carries librdkafka's sources.
NODE_RDKAFKA_VERSION=${NODE_RDKAFKA_VERSION:-3.6.1}
# What a finished build is stamped with: a change of version or of the build
# steps below (bump the suffix) makes the next run rebuild.
RDK_BUILD_ID="node-rdkafka-$NODE_RDKAFKA_VERSION/2"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Debian packages the build needs: g++ because the test runner links as C++,
# python3 for librdkafka's linker script, the codec headers so that gzip and
# zstd are built in and lz4 is the system one (snappy and a fallback lz4 are
# bundled), and RapidJSON, without which the tests that check the client's
# statistics JSON (0053, 0110) skip themselves.
RDK_DEB_PACKAGES=(gcc g++ make pkg-config python3 zlib1g-dev libzstd-dev liblz4-dev rapidjson-dev)

rdk_install_packages() {
    local missing=() p
    for p in "${RDK_DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        die "missing Debian packages: ${missing[*]} (install them, or run as root)"
    fi
    log "installing ${missing[*]}"
    # Bounded: a stuck mirror must not hang CI for its whole budget.
    timeout 600 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# rdk_build DIR: leaves DIR/librdkafka with src/librdkafka.so, the test
# runner (tests/test-runner) and examples/rdkafka_performance. A stamp file
# makes a second call a no-op; a lock keeps two callers from building at once.
rdk_build() {
    local dir=$1 src=$1/librdkafka stamp=$1/librdkafka/.spool-built
    mkdir -p "$dir"
    exec 9>"$dir/.build.lock"
    flock -w 1800 9 || die "could not lock $dir for building"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$RDK_BUILD_ID" ]; then
        exec 9>&-
        return 0
    fi
    rdk_install_packages
    command -v npm >/dev/null || die "npm is needed to fetch librdkafka's sources"
    local jobs t0
    jobs=$(nproc 2>/dev/null || echo 2)
    t0=$(date +%s)
    rm -rf "$dir/package" "$src"
    log "fetching node-rdkafka@$NODE_RDKAFKA_VERSION (librdkafka sources) into $dir"
    local tgz
    tgz=$(cd "$dir" && timeout 300 npm pack --silent "node-rdkafka@$NODE_RDKAFKA_VERSION" | tail -n1)
    tar -xzf "$dir/$tgz" -C "$dir"
    mv "$dir/package/deps/librdkafka" "$src"
    rm -rf "$dir/package" "${dir:?}/$tgz"

    log "building librdkafka (log: $dir/build.log)"
    (
        cd "$src"
        # No TLS, SASL or HTTP: Spool offers none of them, and leaving them out
        # keeps the build to what every machine has.
        ./configure --disable-curl --disable-sasl --disable-ssl --disable-gssapi
        make -j"$jobs" libs
        make -j"$jobs" -C tests build
        make -C examples rdkafka_performance
    ) >"$dir/build.log" 2>&1 || { tail -n 40 "$dir/build.log" >&2; die "librdkafka build failed"; }

    # The compression tests only cover the codecs that were built in; refuse a
    # build that silently lost one.
    local w
    for w in WITH_ZLIB WITH_ZSTD WITH_SNAPPY WITH_RAPIDJSON; do
        grep -q "^#define $w 1" "$src/config.h" || die "librdkafka built without $w"
    done
    echo "$RDK_BUILD_ID" >"$stamp"
    log "librdkafka built in $(($(date +%s) - t0))s"
    exec 9>&-
}

# broker_start BINARY [CONFIG]: starts Spool on ephemeral ports with a fresh
# data dir (and CONFIG, a TOML file, if given) and sets BROKER_PID,
# BROKER_DATA, BROKER_OUT and KAFKA_ADDR. The caller must have
# `trap broker_stop EXIT`.
BROKER_PID=
BROKER_DATA=
BROKER_OUT=
KAFKA_ADDR=
broker_start() {
    local bin=$1 cfg=${2:-}
    [ -x "$bin" ] || die "broker binary $bin is not executable"
    BROKER_DATA=$(mktemp -d "${BROKER_DATA_PARENT:-${TMPDIR:-/tmp}}/spool-rdk-data.XXXXXX")
    BROKER_OUT=$(mktemp "${TMPDIR:-/tmp}/spool-rdk-broker.XXXXXX")
    "$bin" ${cfg:+--config "$cfg"} --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 \
        --data-dir "$BROKER_DATA" >"$BROKER_OUT" 2>&1 &
    BROKER_PID=$!
    # Poll for the ready line (bounded: 30 s), giving up early if it died.
    local i
    for ((i = 0; i < 300; i++)); do
        KAFKA_ADDR=$(sed -n 's/^kafka listening on //p' "$BROKER_OUT" | head -n1)
        [ -n "$KAFKA_ADDR" ] && break
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$BROKER_OUT" >&2; die "broker exited before it was ready"; }
        sleep 0.1
    done
    [ -n "$KAFKA_ADDR" ] || { cat "$BROKER_OUT" >&2; die "broker printed no 'kafka listening on' line within 30 s"; }
    log "spool-broker pid $BROKER_PID, kafka listener $KAFKA_ADDR, data $BROKER_DATA"
}

# Stops the broker (TERM, then KILL after 15 s) and removes its data dir.
# Safe to call twice and from a trap.
broker_stop() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 150; i++)); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=
    [ -n "$BROKER_DATA" ] && rm -rf "$BROKER_DATA"
    BROKER_DATA=
    [ -n "$BROKER_OUT" ] && rm -f "$BROKER_OUT"
    BROKER_OUT=
    return 0
}
