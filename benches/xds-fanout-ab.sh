#!/usr/bin/env bash
# xDS fan-out A/B: the same loader against two meshreg builds, alternated,
# so that the machine's drift between runs falls on both alike.
#
#   benches/xds-fanout-ab.sh BEFORE_BIN AFTER_BIN
#   ROUNDS=5 benches/xds-fanout-ab.sh /tmp/meshreg-old target/release/meshreg
#
# Runs ROUNDS (default 3) alternated rounds of 10,000 delta streams (100 per
# connection, ten changes), then once per build 1,000 SotW and 1,000 delta
# streams, and 10,000 delta streams with one connection each (five changes).
# The server is pinned to core 1 and the loader to core 0 (SERVER_CPUS and
# LOADER_CPUS override). Output: benches/xds-fanout.sh's, each run headed
# by a `### <build> <shape>` line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
    echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2
    exit 2
fi
ROUNDS=${ROUNDS:-3}
export SERVER_CPUS=${SERVER_CPUS:-1} LOADER_CPUS=${LOADER_CPUS:-0}
run() { # build shape env...
    local bin=$1 shape=$2
    shift 2
    echo "### $bin $shape"
    env MESHREG_BIN="$bin" "$@" benches/xds-fanout.sh
}
uptime
for round in $(seq "$ROUNDS"); do
    for bin in "$1" "$2"; do
        run "$bin" "delta 10000, round $round" RUNS="delta:10000" CHANGES=10
    done
done
for bin in "$1" "$2"; do
    run "$bin" "1000" RUNS="sotw:1000 delta:1000" CHANGES=10
    run "$bin" "one connection per stream" PER_CONNECTION=1 RUNS="delta:10000" CHANGES=5
done
