#!/usr/bin/env bash
# meshreg-proxy vs nginx as a one-hop HTTP/1.1 reverse proxy, measured with
# oha at a constant rate with latency correction and at saturation, and the
# sidecar's resident memory idle (1,000 endpoints) and per 1,000 open client
# connections. Results go to BENCHMARKS.md by hand.
#
# Layout (2 cores): oha and meshreg on core 0; the proxy under test
# (meshreg-proxy with one worker thread, or nginx with one worker) on core 1.
# The upstream (nginx, one worker, `return 200` of 1 KiB) is on core 1 for
# the constant-rate rows, so that the direct call and the proxied one cross
# between the cores equally often (oha -> upstream and back; oha -> proxy and
# back, the proxy <-> upstream legs staying on core 1) and the added latency
# is the hop's own, not the VM's cost of waking another vCPU twice more;
# RATE_UPSTREAM_CORE=0 puts it on core 0 as before (the direct call then
# never leaves core 0). For the saturation rows it is on core 0, leaving the
# proxy its core. Every request is a keep-alive POST of 1 KiB answered with
# 1 KiB, 16 connections. Each row prints the steal time the hypervisor took
# from the VM during it.
#
# Needs: nginx (Debian), oha (cargo install oha); scripts/install-bench-deps.sh
# installs both. Usage: [ROUNDS=3] [RATE=1000] [RATE_UPSTREAM_CORE=1]
#   [BASE_PROXY=path/to/older/meshreg-proxy] benches/proxy-bench.sh [duration_secs]
# The constant-rate and saturation runs alternate the targets ROUNDS times
# and report the medians: single runs on this 2-core machine vary by ~10 %.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20}
RATE=${RATE:-1000}
CONNS=${CONNS:-16}
ROUNDS=${ROUNDS:-3}
RATE_UPSTREAM_CORE=${RATE_UPSTREAM_CORE:-1}
command -v oha >/dev/null || { echo "oha not found: scripts/install-bench-deps.sh" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx not found: scripts/install-bench-deps.sh" >&2; exit 1; }

cargo build --release -q -p meshreg -p meshreg-proxy
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=18080 NGX=18081 OUT=18001 IN=18006 ADMIN=18000 HTTP=18070 GRPC=18071 RAFT=18072
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
printf '%s' "$BODY" > "$WORK/body"

nginx_conf() { # name port body-of-server-block
  mkdir -p "$WORK/$1/logs"
  cat > "$WORK/$1/nginx.conf" <<EOF
worker_processes 1;
error_log $WORK/$1/logs/error.log warn;
pid $WORK/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1;
  fastcgi_temp_path $WORK/$1; uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$2 reuseport backlog=4096; $3 }
}
EOF
}
nginx_conf upstream $UP "location / { client_body_buffer_size 16k; return 200 '$BODY'; }"
nginx_conf proxy $NGX "location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"

taskset -c 0 "$NGINX" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -g 'daemon off;' & UP_MASTER=$!; PIDS+=($UP_MASTER)
taskset -c 1 "$NGINX" -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -g 'daemon off;' & NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
taskset -c 0 "$BIN/meshreg" server --data-dir "$WORK/reg" --http-addr 127.0.0.1:$HTTP \
  --grpc-addr 127.0.0.1:$GRPC --raft-addr 127.0.0.1:$RAFT >/dev/null 2>"$WORK/reg.log" & PIDS+=($!)
for _ in $(seq 100); do curl -sf localhost:$HTTP/readyz >/dev/null && break; sleep 0.1; done
curl -sf -XPOST localhost:$HTTP/v1/namespaces/default/instances \
  -d "{\"app\":\"up\",\"address\":\"127.0.0.1\",\"ports\":{\"http\":$UP}}" >/dev/null
MESHREG_PROXY_WORKERS=1 taskset -c 1 "$BIN/meshreg-proxy" --app bench --xds 127.0.0.1:$GRPC \
  --bind-ip 127.0.0.1 --admin-port $ADMIN --outbound-port $OUT --inbound-port $IN \
  2>"$WORK/proxy.log" & PPID_PROXY=$!; PIDS+=($PPID_PROXY)
for _ in $(seq 100); do curl -sf localhost:$ADMIN/ready >/dev/null && break; sleep 0.1; done
curl -sf -H 'Host: up' -d x localhost:$OUT/ | head -c 10 >/dev/null || { echo "proxy not routing"; cat "$WORK/proxy.log"; exit 1; }
# BASE_PROXY=<an older meshreg-proxy binary>: an A/B of two builds. The old
# one runs beside the new (its own ports, configured by the same meshreg)
# and takes a turn in every saturation round, after nginx. An A/A run (the
# same binary twice) gave 0.979x (0.97-1.04 per round): differences under
# about 3 % need more rounds than 4.
BASE_OUT=19001 BASE_ADMIN=19000
if [ -n "${BASE_PROXY:-}" ]; then
  MESHREG_PROXY_WORKERS=1 taskset -c 1 "$BASE_PROXY" --app bench-base --xds 127.0.0.1:$GRPC \
    --bind-ip 127.0.0.1 --admin-port $BASE_ADMIN --outbound-port $BASE_OUT --inbound-port 19006 \
    2>"$WORK/base.log" & BASE_PID=$!; PIDS+=($BASE_PID)
  for _ in $(seq 100); do curl -sf localhost:$BASE_ADMIN/ready >/dev/null && break; sleep 0.1; done
  curl -sf -H 'Host: up' -d x localhost:$BASE_OUT/ | head -c 10 >/dev/null || { echo "base proxy not routing"; cat "$WORK/base.log"; exit 1; }
fi

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
steal_ticks() { awk '$1 == "cpu" {print $9}' /proc/stat; }
place_upstream() { # core: move the upstream nginx (master and worker) there
  for p in "$UP_MASTER" $(pgrep -P "$UP_MASTER"); do taskset -p -c "$1" "$p" >/dev/null; done
}
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
oha_run() { # label port host extra-args...
  local label=$1 port=$2 host=$3; shift 3
  local pid=$PPID_PROXY
  [ "$port" = "$NGX" ] && pid=$NGINX_WORKER
  [ "$port" = "$BASE_OUT" ] && pid=$BASE_PID
  local t0 s0; t0=$(cpu_ticks "$pid"); s0=$(steal_ticks)
  taskset -c 0 oha -z "${DUR}s" -c "$CONNS" --no-tui --output-format json -m POST -D "$WORK/body" \
    -H "Host: $host" "$@" "http://127.0.0.1:$port/" > "$WORK/$label.json"
  local t1 s1; t1=$(cpu_ticks "$pid"); s1=$(steal_ticks)
  [ "$port" = "$UP" ] && t1=$t0
  python3 - "$WORK/$label.json" "$label" "$(( t1 - t0 ))" "$DUR" "$WORK/results" "$(( s1 - s0 ))" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); label = sys.argv[2]
s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
errs = sum(d.get("errorDistribution", {}).values())
cpu = int(sys.argv[3]) / 100 / float(sys.argv[4])
per_core = f"{s['requestsPerSec'] / cpu:8.0f}" if cpu > 0 else "       -"
open(sys.argv[5], "a").write(f"{label.rsplit('#', 1)[0]} {s['requestsPerSec']:.0f} "
                             f"{s['requestsPerSec'] / cpu if cpu > 0 else 0:.0f} {p['p50']*1000:.4f} {p['p99']*1000:.4f}\n")
print(f"{label:20s} rps={s['requestsPerSec']:7.0f} p50={p['p50']*1000:6.3f}ms p99={p['p99']*1000:6.3f}ms "
      f"p99.9={p['p99.9']*1000:6.3f}ms proxy-cpu={cpu:4.2f} rps/core={per_core} steal={int(sys.argv[6]) * 10}ms "
      f"codes={codes} errors={dict(d.get('errorDistribution', {}))}")
EOF
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "--- warm-up"; oha_run warmup $OUT up -q "$RATE" >/dev/null
echo "--- constant rate $RATE rps, latency correction, $CONNS connections, ${DUR}s, upstream on core $RATE_UPSTREAM_CORE"
place_upstream "$RATE_UPSTREAM_CORE"
for r in $(seq "$ROUNDS"); do
  oha_run "direct-rate#$r" $UP up -q "$RATE" --latency-correction
  oha_run "meshreg-proxy-rate#$r" $OUT up -q "$RATE" --latency-correction
  oha_run "nginx-rate#$r" $NGX up -q "$RATE" --latency-correction
done
python3 - "$WORK/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda label, i: statistics.median(float(r[i]) for r in rows if r[0] == label)
for label in ("meshreg-proxy-rate", "nginx-rate"):
    print(f"median of rounds, {label}: added p50 {med(label, 3) - med('direct-rate', 3):+.3f} ms, "
          f"added p99 {med(label, 4) - med('direct-rate', 4):+.3f} ms")
EOF
echo "--- saturation, $CONNS connections, ${DUR}s (proxy alone on core 1), $ROUNDS rounds interleaved"
place_upstream 0
oha_run direct-max $UP up
for r in $(seq "$ROUNDS"); do
  oha_run "meshreg-proxy-max#$r" $OUT up
  oha_run "nginx-max#$r" $NGX up
  [ -n "${BASE_PROXY:-}" ] && oha_run "base-max#$r" $BASE_OUT up
done
python3 - "$WORK/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda label, i: statistics.median(float(r[i]) for r in rows if r[0] == label)
m, n = "meshreg-proxy-max", "nginx-max"
print(f"median of rounds: rps {med(m, 1):.0f} vs {med(n, 1):.0f} ({med(m, 1) / med(n, 1):.2f}x); "
      f"rps per core {med(m, 2):.0f} vs {med(n, 2):.0f} ({med(m, 2) / med(n, 2):.2f}x nginx)")
per = lambda label: [float(r[2]) for r in rows if r[0] == label]
if per("base-max"):
    ratios = [a / b for a, b in zip(per(m), per("base-max"))]
    print(f"A/B: rps per core {med(m, 2):.0f} vs base {med('base-max', 2):.0f}; per round "
          + " ".join(f"{x:.3f}" for x in ratios) + f", median {statistics.median(ratios):.3f}x base")
EOF

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "--- memory"
echo "meshreg-proxy RSS after the load runs: $(rss "$PPID_PROXY") KiB"
# 1,000 endpoints: 100 applications x 10 instances, all routed by the outbound listener.
python3 - "$HTTP" <<'EOF'
import json, sys, urllib.request
port = sys.argv[1]
for a in range(100):
    for i in range(10):
        body = json.dumps({"app": f"app{a}", "address": f"10.1.{a}.{i+1}", "ports": {"http": 8080}}).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/namespaces/default/instances", body, {"content-type": "application/json"})).read()
EOF
for _ in $(seq 100); do
  n=$(curl -s localhost:$ADMIN/clusters | grep -c '::health_flags::' || true)
  [ "$n" -ge 1001 ] && break; sleep 0.2
done
echo "endpoints configured: $(curl -s localhost:$ADMIN/clusters | grep -c '::health_flags::')"
# Idle: restart the proxy so the load runs' buffers do not count.
kill "$PPID_PROXY"; wait "$PPID_PROXY" 2>/dev/null || true
MESHREG_PROXY_WORKERS=1 taskset -c 1 "$BIN/meshreg-proxy" --app bench --xds 127.0.0.1:$GRPC \
  --bind-ip 127.0.0.1 --admin-port $ADMIN --outbound-port $OUT --inbound-port $IN \
  2>"$WORK/proxy2.log" & PPID_PROXY=$!; PIDS+=($PPID_PROXY)
for _ in $(seq 100); do curl -sf localhost:$ADMIN/ready >/dev/null && break; sleep 0.1; done
sleep 1
IDLE=$(rss "$PPID_PROXY")
echo "meshreg-proxy RSS idle with $(curl -s localhost:$ADMIN/clusters | grep -c '::health_flags::') endpoints: $IDLE KiB"
conns() { # label port pid
python3 - "$2" "$3" "$1" <<'EOF'
import socket, sys, time
port, pid, label = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rss = lambda: int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
before = rss()
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: up\r\n\r\n")
    socks.append(s)
for s in socks:
    s.recv(65536)
time.sleep(1)
after = rss()
print(f"{label} RSS idle {before} KiB; with 1,000 open keep-alive client connections {after} KiB (+{after - before} KiB)")
EOF
}
conns meshreg-proxy "$OUT" "$PPID_PROXY"
conns nginx "$NGX" "$NGINX_WORKER"
