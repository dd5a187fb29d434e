#!/usr/bin/env bash
# End-to-end registrations per second on one node: meshreg (gRPC API, Raft
# log fsynced per batch) against rnacos (Nacos 2.x gRPC API through the
# nacos-sdk crate), same instances, same concurrency, same run.
#
#   benches/e2e-register.sh            # defaults below
#   INSTANCES=50000 CONCURRENCY=32 benches/e2e-register.sh
#
# Prints one JSON line per run and a ratio table. Servers bind to 127.0.0.1
# and are stopped at the end; data goes to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-20000}
CONCURRENCY=${CONCURRENCY:-16}
BATCHES=${BATCHES:-"1 100"}

scripts/install-bench-deps.sh >/dev/null
cargo build --release -q -p meshreg-registry --bin meshreg -p meshreg-benches --bin register_load
NACOS_TARGET=${NACOS_TARGET:-$PWD/benches/nacos-load/target}
(cd benches/nacos-load && CARGO_TARGET_DIR="$NACOS_TARGET" cargo build --release -q)
NACOS_LOAD=$NACOS_TARGET/release/meshreg-nacos-load

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

wait_http() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; return 1; }

results=()
for batch in $BATCHES; do
  # meshreg, fresh data directory per run
  target/release/meshreg server --data-dir "$tmp/meshreg-$batch" --http-addr 127.0.0.1:17070 \
    --grpc-addr 127.0.0.1:17071 --raft-addr 127.0.0.1:17072 --log warn >/dev/null 2>"$tmp/meshreg.log" &
  pid=$!; pids+=("$pid")
  wait_http http://127.0.0.1:17070/readyz
  m=$(target/release/register_load --addr http://127.0.0.1:17071 --instances "$INSTANCES" --concurrency "$CONCURRENCY" --batch "$batch")
  echo "$m"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  # rnacos, fresh data directory per run, on loopback only
  RNACOS_SDK_HOST=127.0.0.1 RNACOS_CONSOLE_HOST=127.0.0.1 RNACOS_HTTP_PORT=18848 RNACOS_GRPC_PORT=19848 \
    RNACOS_HTTP_CONSOLE_PORT=18849 RNACOS_DATA_DIR="$tmp/rnacos-$batch" RUST_LOG=warn \
    rnacos >/dev/null 2>"$tmp/rnacos.log" &
  pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:18848/nacos/v1/ns/service/list?pageNo=1&pageSize=1"
  n=$($NACOS_LOAD --addr 127.0.0.1:18848 --instances "$INSTANCES" --concurrency "$CONCURRENCY" --batch "$batch" 2>/dev/null | grep '^{')
  echo "$n"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  results+=("$batch $m $n")
done

echo
echo "| batch | meshreg inst/s | rnacos inst/s | ratio | meshreg p50/p99 ms | rnacos p50/p99 ms |"
echo "|---:|---:|---:|---:|---|---|"
for r in "${results[@]}"; do
  python3 - "$r" <<'PY'
import json, sys
batch, rest = sys.argv[1].split(" ", 1)
m_json, n_json = rest.split("} {")
m = json.loads(m_json + "}"); n = json.loads("{" + n_json)
print(f"| {batch} | {m['instances_per_s']:.0f} | {n['instances_per_s']:.0f} | {m['instances_per_s']/n['instances_per_s']:.2f}x | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} | {n['p50_ms']:.2f} / {n['p99_ms']:.2f} |")
PY
done
