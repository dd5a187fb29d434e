#!/usr/bin/env bash
# xDS fan-out (issue 4): N ADS streams subscribed to one application's
# ClusterLoadAssignment; time from a committed Register to each stream
# receiving the new endpoint, and the server's RSS per idle stream.
#
#   benches/xds-fanout.sh                         # delta:10000 and sotw:1000
#   RUNS="delta:2000" CHANGES=3 benches/xds-fanout.sh
#   RUNS="delta:10000:100" benches/xds-fanout.sh  # streams spread over 100 apps
#   CARGO_TARGET_DIR=/work/target-fanout benches/xds-fanout.sh
#   SERVER_CPUS=1 LOADER_CPUS=0 benches/xds-fanout.sh   # pin with taskset
#   PERF=1 benches/xds-fanout.sh     # perf record ($PERF_ARGS) the server to $PERF_OUT
#   LOADER_ARGS="--no-ack" benches/xds-fanout.sh   # extra xds_fanout flags
#   MESHREG_BIN=/tmp/meshreg-old benches/xds-fanout.sh   # another server build (A/B)
#
# Each run gets a fresh meshreg (single node, temporary data directory,
# 127.0.0.1 only) and prints the JSON lines of `xds_fanout` (see
# benches/src/bin/xds_fanout.rs). Every process started here is stopped on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-"delta:10000 sotw:1000"}
PER_CONNECTION=${PER_CONNECTION:-100}
CHANGES=${CHANGES:-5}
PORT_BASE=${PORT_BASE:-17270}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
SERVER_CPUS=${SERVER_CPUS:-}
LOADER_CPUS=${LOADER_CPUS:-}
PERF=${PERF:-}
LOADER_ARGS=${LOADER_ARGS:-}
PERF_OUT=${PERF_OUT:-/tmp/xds-fanout.perf.data}
pin() { if [ -n "$1" ]; then echo taskset -c "$1"; fi; }

# Streams are multiplexed (PER_CONNECTION per TCP connection), so few file
# descriptors are needed; raise the limit anyway, as far as the hard limit allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# open files limit: $(ulimit -n)" >&2

CARGO_TARGET_DIR=$TARGET cargo build --release -q -p meshreg --bin meshreg -p meshreg-benches --bin xds_fanout
MESHREG=${MESHREG_BIN:-$TARGET/release/meshreg}
FANOUT=$TARGET/release/xds_fanout

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    # Bounded: give each process 10 s to drain, then kill it.
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_http() {
  for _ in $(seq 1 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timeout waiting for $1" >&2
  return 1
}

n=0
for run in $RUNS; do
  n=$((n + 1))
  variant=${run%%:*}
  rest=${run#*:}
  streams=${rest%%:*}
  apps=1
  if [ "$rest" != "$streams" ]; then apps=${rest#*:}; fi
  $(pin "$SERVER_CPUS") "$MESHREG" server --data-dir "$tmp/meshreg-$n-$variant-$streams" \
    --http-addr "127.0.0.1:$PORT_BASE" --grpc-addr "127.0.0.1:$((PORT_BASE + 1))" \
    --raft-addr "127.0.0.1:$((PORT_BASE + 2))" --log warn >/dev/null 2>"$tmp/meshreg.log" &
  pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$PORT_BASE/readyz"
  echo "# $(date -u +%FT%TZ) run $variant:$streams over $apps app(s), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  perf_pid=
  if [ -n "$PERF" ]; then
    perf record ${PERF_ARGS:--F 999} -o "$PERF_OUT" -p "$pid" 2>/dev/null &
    perf_pid=$!
  fi
  $(pin "$LOADER_CPUS") "$FANOUT" --addr "http://127.0.0.1:$((PORT_BASE + 1))" --variant "$variant" --streams "$streams" --apps "$apps" \
    --per-connection "$PER_CONNECTION" --changes "$CHANGES" --server-pid "$pid" $LOADER_ARGS || echo "# xds_fanout failed: $?" >&2
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
  echo "# after run, load: $(cut -d' ' -f1-3 /proc/loadavg); server streams gauge:" \
    "$(curl -sf "http://127.0.0.1:$PORT_BASE/metrics" | grep -E 'xds_streams|xds_stream_wakes_total' | tr '\n' ' ')" >&2
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -s "$tmp/meshreg.log" ]; then
    echo "# meshreg log (last 20 lines):" >&2
    tail -n 20 "$tmp/meshreg.log" >&2
  fi
done
