#!/usr/bin/env bash
# Raft cluster benchmarks (issue 3), all on loopback, in one run:
#
#  1. throughput: registrations/s and p50/p99 of a 3-node meshreg cluster
#     against a 3-member etcd cluster (Debian etcd-server) doing puts of the
#     same value size, same concurrency, unbatched and batched; clients
#     spread over all nodes, and leader-only; printed as a ratio table.
#  2. failover: leader killed with SIGKILL -> first successful write through
#     a surviving node (benches/src/bin/failover_probe.rs), FAILOVER_RUNS
#     times. FAILOVER_MODES: `default` (default Raft timers: heartbeat
#     100 ms, election timeout 500-1000 ms) and `fast` (50 ms, 250-500 ms).
#     openraft 0.9 makes a follower wait its leader lease (= the election
#     timeout maximum) plus a random election timeout after the last
#     heartbeat before it stands, so the default timers give 1.5-2 s before
#     an election even starts.
#  3. join: a 4th node joins a cluster holding JOIN_SIZES instances; time
#     until it is a voter and has applied as far as the leader, and the size
#     of its data directory (JOIN_TIMEOUT seconds at most). JOIN_MODES:
#     `default` (default Raft settings: the log is not compacted at these
#     sizes, so the node catches up from the log), `snapshot` (snapshot
#     every 50 entries keeping 10, so the node must install a snapshot) and
#     `slowhb` (heartbeat 1000 ms, election timeout 3000-6000 ms: openraft
#     0.9 gives each AppendEntries RPC one heartbeat interval, which large
#     catch-up batches exceed at the default 100 ms; see BENCHMARKS.md).
#
#   benches/cluster-bench.sh
#   PARTS="failover" FAILOVER_RUNS=10 benches/cluster-bench.sh
#   JOIN_SIZES=100000 JOIN_MODES=snapshot PARTS=join benches/cluster-bench.sh
#
# JSON lines go to stdout and to $OUT/results.jsonl; tables at the end.
# Servers bind to 127.0.0.1 only, data goes to a temporary directory, and
# every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-"throughput failover join"}
CONCURRENCIES=${CONCURRENCIES:-"16 64"}
B1_INSTANCES=${B1_INSTANCES:-20000}        # per unbatched run
BATCH=${BATCH:-100}                        # etcd's default --max-txn-ops is 128
BATCH_INSTANCES=${BATCH_INSTANCES:-200000} # per batched run
FAILOVER_RUNS=${FAILOVER_RUNS:-5}
FAILOVER_MODES=${FAILOVER_MODES:-"default fast"}
JOIN_SIZES=${JOIN_SIZES:-"100000 1000000"}
JOIN_MODES=${JOIN_MODES:-"default snapshot"}
JOIN_BATCH=${JOIN_BATCH:-1000}
JOIN_TIMEOUT=${JOIN_TIMEOUT:-300}
OUT=${OUT:-$PWD/target/cluster-bench}
ETCD_TARGET=${ETCD_TARGET:-/work/target-etcdload}

scripts/install-bench-deps.sh >/dev/null
cargo build --release -q -p meshreg --bin meshreg -p meshreg-benches --bin register_load --bin failover_probe
(cd benches/etcd-load && CARGO_TARGET_DIR="$ETCD_TARGET" cargo build --release -q)
MESHREG=$PWD/target/release/meshreg
LOAD=$PWD/target/release/register_load
PROBE=$PWD/target/release/failover_probe
ETCD_LOAD=$ETCD_TARGET/release/meshreg-etcd-load

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
tmp=$(mktemp -d)
declare -A PID=()  # meshreg node id -> pid
declare -a EPID=() # etcd member pids
cleanup() {
  for p in "${PID[@]}" "${EPID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

emit() { echo "$1"; echo "$1" >>"$RESULTS"; }
http() { echo "127.0.0.1:2${1}070"; }   # node n: HTTP 2n070, gRPC 2n071, Raft 2n072
grpc() { echo "http://127.0.0.1:2${1}071"; }
raft() { echo "127.0.0.1:2${1}072"; }

# Cluster status helper: `status <mode> <http addr>...` (see the modes below).
status() {
  python3 - "$@" <<'PY'
import json, sys, urllib.request
mode, addrs = sys.argv[1], sys.argv[2:]
def get(a):
    try:
        with urllib.request.urlopen(f"http://{a}/v1/cluster", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None
if mode == "leader":          # prints "<leader id>" as seen by the first answering node
    for a in addrs:
        s = get(a)
        if s and s.get("leader_id"):
            print(s["leader_id"]); sys.exit(0)
    sys.exit(1)
if mode == "healthy":         # every listed node answers, agrees on a leader, N voters, lag 0
    want = int(addrs.pop(0)); seen = set(); leader = None
    for a in addrs:
        s = get(a)
        if not s or not s.get("leader_id"): sys.exit(1)
        seen.add(s["leader_id"])
        if s["state"] == "LEADER": leader = s
    if len(seen) != 1 or leader is None: sys.exit(1)
    voters = [m for m in leader["members"] if m["voter"]]
    if len(voters) != want or any(m["lag"] > 0 for m in leader["members"]): sys.exit(1)
    sys.exit(0)
if mode == "joined":          # `joined <new id> <new http> <http>...`: voter and applied >= leader
    nid = int(addrs.pop(0)); new = get(addrs.pop(0))
    if not new: sys.exit(1)
    lead = None
    for a in addrs:
        s = get(a)
        if s and s["state"] == "LEADER": lead = s
    if lead is None: sys.exit(1)
    me = [m for m in lead["members"] if m["node_id"] == nid]
    ok = me and me[0]["voter"] and new["applied_index"] >= lead["applied_index"]
    print(json.dumps({"voter": bool(me and me[0]["voter"]), "applied": new["applied_index"],
                      "leader_applied": lead["applied_index"], "snapshot_index": new["snapshot_index"]}))
    sys.exit(0 if ok else 1)
if mode == "applied":         # applied index and snapshot index of one node
    s = get(addrs[0]); print(s["applied_index"], s["snapshot_index"], s["revision"])
PY
}

wait_until() { # wait_until <seconds> <cmd...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "timeout: $*" >&2; return 1; fi
    sleep 0.1
  done
}

# start_node <id> <data dir> [extra flags...]; nodes other than 1 join node 1.
start_node() {
  local n=$1 dir=$2; shift 2
  local join=()
  if [ "$n" != 1 ]; then join=(--join "$(raft 1)"); fi
  "$MESHREG" server --node-id "$n" --data-dir "$dir/n$n" --http-addr "$(http "$n")" \
    --grpc-addr "127.0.0.1:2${n}071" --raft-addr "$(raft "$n")" "${join[@]}" --log warn "$@" \
    >/dev/null 2>>"$dir/n$n.log" &
  PID[$n]=$!
}

# start_cluster <dir> [extra flags...]: nodes 1..3, waits for 3 voters.
start_cluster() {
  local dir=$1; shift
  mkdir -p "$dir"
  start_node 1 "$dir" "$@"
  wait_until 30 curl -sf "http://$(http 1)/readyz"
  start_node 2 "$dir" "$@"
  start_node 3 "$dir" "$@"
  wait_until 60 status healthy 3 "$(http 1)" "$(http 2)" "$(http 3)"
}

stop_nodes() {
  for n in "${!PID[@]}"; do kill "${PID[$n]}" 2>/dev/null || true; wait "${PID[$n]}" 2>/dev/null || true; done
  PID=()
}

etcd_urls() { echo "http://127.0.0.1:2379$1"; }
start_etcd() {
  mkdir -p "$1"
  local dir=$1 initial="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "$(etcd_urls $i)" --advertise-client-urls "$(etcd_urls $i)" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token meshreg-bench \
      --logger zap --log-level warn >/dev/null 2>>"$dir/e$i.log" &
    EPID+=($!)
  done
  wait_until 60 etcdctl --endpoints "$(etcd_urls 1),$(etcd_urls 2),$(etcd_urls 3)" endpoint health
}
etcd_leader() { # prints the client URL of the etcd leader
  etcdctl --endpoints "$(etcd_urls 1),$(etcd_urls 2),$(etcd_urls 3)" endpoint status -w json |
    python3 -c 'import json,sys; print([e["Endpoint"] for e in json.load(sys.stdin) if e["Status"]["leader"]==e["Status"]["header"]["member_id"]][0])'
}
stop_etcd() {
  for p in "${EPID[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  EPID=()
}

# Size of one registration as register_load sends it (instance 10045 of 200
# apps, one session), measured with protoc from the proto file.
entry_bytes() {
  protoc -I proto/proto --encode=meshreg.registry.v1.RegisterRequest.Entry meshreg/registry/v1/registry.proto <<'TXT' | wc -c
instance { namespace: "default" app: "app-45" address: "10.0.39.61"
  ports { key: "grpc" value: 8080 }
  labels { key: "version" value: "v1" } labels { key: "env" value: "prod" }
  session: 17 }
services { name: "app-45.Service" protocol: "grpc" }
TXT
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB" | tee -a "$RESULTS"

if [[ " $PARTS " == *" throughput "* ]]; then
  VALUE=$(entry_bytes)
  emit "{\"target\":\"entry\",\"value_bytes\":$VALUE}"
  start_cluster "$tmp/tp"
  start_etcd "$tmp/etcd"
  ALL="$(grpc 1),$(grpc 2),$(grpc 3)"
  EALL="$(etcd_urls 1),$(etcd_urls 2),$(etcd_urls 3)"
  off=0
  for c in $CONCURRENCIES; do
    for b in 1 "$BATCH"; do
      n=$B1_INSTANCES; [ "$b" = 1 ] || n=$BATCH_INSTANCES
      lead=$(status leader "$(http 1)" "$(http 2)" "$(http 3)")
      elead=$(etcd_leader)
      emit "$("$LOAD" --addrs "$ALL" --label meshreg-spread --instances "$n" --start "$off" --concurrency "$c" --batch "$b")"; off=$((off + n))
      emit "$("$ETCD_LOAD" --endpoints "$EALL" --label etcd-spread --value-bytes "$VALUE" --instances "$n" --start "$off" --concurrency "$c" --batch "$b")"; off=$((off + n))
      emit "$("$LOAD" --addr "$(grpc "$lead")" --label meshreg-leader --instances "$n" --start "$off" --concurrency "$c" --batch "$b")"; off=$((off + n))
      emit "$("$ETCD_LOAD" --endpoints "$elead" --label etcd-leader --value-bytes "$VALUE" --instances "$n" --start "$off" --concurrency "$c" --batch "$b")"; off=$((off + n))
    done
  done
  stop_nodes
  stop_etcd
fi

if [[ " $PARTS " == *" failover "* ]]; then
  printf '[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 250\nelection_timeout_max_ms = 500\n' >"$tmp/fast.toml"
  HTTPS=("$(http 1)" "$(http 2)" "$(http 3)")
  for mode in $FAILOVER_MODES; do
    extra=(); [ "$mode" = default ] || extra=(--config "$tmp/fast.toml")
    start_cluster "$tmp/fo-$mode" "${extra[@]}"
    for r in $(seq 1 "$FAILOVER_RUNS"); do
      wait_until 60 status healthy 3 "${HTTPS[@]}"
      sleep 1 # let the new leader's first heartbeats settle before the next kill
      lead=$(status leader "${HTTPS[@]}")
      surv=1; [ "$lead" != 1 ] || surv=2
      line=$("$PROBE" --addr "$(grpc "$surv")" --kill-pid "${PID[$lead]}" --start $((r * 100000)))
      wait "${PID[$lead]}" 2>/dev/null || true
      emit "${line%\}},\"mode\":\"$mode\",\"run\":$r,\"killed\":$lead,\"via\":$surv}"
      start_node "$lead" "$tmp/fo-$mode" "${extra[@]}" # restart with its data directory
    done
    wait_until 60 status healthy 3 "${HTTPS[@]}"
    stop_nodes
  done
fi

if [[ " $PARTS " == *" join "* ]]; then
  printf '[raft]\nsnapshot_logs_since_last = 50\nlogs_kept_after_snapshot = 10\n' >"$tmp/snapshot.toml"
  printf '[raft]\nheartbeat_interval_ms = 1000\nelection_timeout_min_ms = 3000\nelection_timeout_max_ms = 6000\n' >"$tmp/slowhb.toml"
  for size in $JOIN_SIZES; do
    for mode in $JOIN_MODES; do
      dir=$tmp/join-$size-$mode
      extra=(); [ "$mode" = default ] || extra=(--config "$tmp/$mode.toml")
      start_cluster "$dir" "${extra[@]}"
      load=$("$LOAD" --addrs "$(grpc 1),$(grpc 2),$(grpc 3)" --label meshreg-preload --persistent \
        --instances "$size" --concurrency 4 --batch "$JOIN_BATCH")
      emit "${load%\}},\"mode\":\"$mode\"}"
      wait_until 120 status healthy 3 "$(http 1)" "$(http 2)" "$(http 3)"
      lead=$(status leader "$(http 1)")
      read -r lapplied lsnap lrev < <(status applied "$(http "$lead")")
      t0=$(date +%s.%N)
      start_node 4 "$dir" "${extra[@]}"
      done=true
      wait_until "$JOIN_TIMEOUT" status joined 4 "$(http 4)" "$(http 1)" "$(http 2)" "$(http 3)" || done=false
      t1=$(date +%s.%N)
      st=$(status joined 4 "$(http 4)" "$(http 1)" "$(http 2)" "$(http 3)" || true)
      n4=$(du -sb "$dir/n4" | cut -f1); nl=$(du -sb "$dir/n$lead" | cut -f1)
      emit "$(python3 -c "import json,sys; s=json.loads(sys.argv[1]); print(json.dumps({'target':'join','mode':sys.argv[2],'instances':int(sys.argv[3]),'seconds':round(float(sys.argv[5])-float(sys.argv[4]),3),'leader_applied_before':int(sys.argv[6]),'leader_snapshot_index':int(sys.argv[7]),'new_node':s,'new_node_dir_bytes':int(sys.argv[8]),'leader_dir_bytes':int(sys.argv[9]),'caught_up':sys.argv[10]=='true'}))" \
        "$st" "$mode" "$size" "$t0" "$t1" "$lapplied" "$lsnap" "$n4" "$nl" "$done")"
      stop_nodes
      rm -rf "$dir"
    done
  done
fi

echo
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
tp = {}
for r in rows:
    if r["target"].startswith(("meshreg-spread", "meshreg-leader", "etcd-")):
        tp[(r["concurrency"], r["batch"], r["target"])] = r
if tp:
    print("| clients | batch | clients go to | meshreg inst/s | etcd puts/s | ratio | meshreg p50/p99 ms | etcd p50/p99 ms |")
    print("|---:|---:|---|---:|---:|---:|---|---|")
    for (c, b) in sorted({(k[0], k[1]) for k in tp}):
        for v in ("spread", "leader"):
            m, e = tp.get((c, b, f"meshreg-{v}")), tp.get((c, b, f"etcd-{v}"))
            if m and e:
                print(f"| {c} | {b} | {'all 3 nodes' if v=='spread' else 'leader'} | {m['instances_per_s']:.0f} | {e['instances_per_s']:.0f} | "
                      f"{m['instances_per_s']/e['instances_per_s']:.2f}x | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} |")
for mode in ("default", "fast"):
    fo = [r for r in rows if r["target"] == "failover" and r.get("mode", "default") == mode]
    if fo:
        g = sorted(r["gap_ms"] for r in fo); k = sorted(r["kill_to_ok_ms"] for r in fo)
        print(f"\nfailover, {mode} timers ({len(fo)} runs): gap min/median/max {g[0]:.0f} / {statistics.median(g):.0f} / {g[-1]:.0f} ms; "
              f"kill->first ok {k[0]:.0f} / {statistics.median(k):.0f} / {k[-1]:.0f} ms")
for r in rows:
    if r["target"] == "join":
        print(f"join: {r['instances']} instances, {r['mode']}: {r['seconds']:.1f} s{'' if r['caught_up'] else ' (TIMED OUT, not caught up)'}, new node dir {r['new_node_dir_bytes']/1e6:.0f} MB, "
              f"leader dir {r['leader_dir_bytes']/1e6:.0f} MB, {r['new_node']}")
PY
