#!/usr/bin/env bash
# Fetches and builds librdkafka's test runner and rdkafka_performance into
# DIR (default .ci/librdkafka), once: a second call with the build there is
# a no-op. `.ci/run` calls it; tests/librdkafka.rs then runs tests.fast.
#
#   bash tests/librdkafka/build.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
dir=${1:-$here/../../.ci/librdkafka}
mkdir -p "$dir"
rdk_build "$(cd "$dir" && pwd)"
