#!/usr/bin/env python3
"""ZooKeeper source benchmark: initial sync of N application-level Dubbo
instances (default 100,000: 100 applications x 1,000 instances under
/services/{app}/{ip:port}, Curator JSON), and one-change latency.

1. Writes the N znodes into a fresh ZooKeeper (Debian `zookeeper`, as the
   interop tests start it) with kazoo.
2. Starts a fresh single-node meshreg (MESHREG_BIN, default
   target/release/meshreg) with a `kind = "zookeeper"` source, and measures
   from process start until the registry holds all N instances (the
   source's `upserted` total in /v1/sources, then one full listing to
   confirm). The xDS server pushes from the registry after its debounce
   (100 ms quiet, 1 s max), so xDS clients see them within that of the
   figure.
3. Creates CHANGES more znodes, one at a time, and measures each from the
   `create` returning to the instance being listed by the registry
   (polling `?app=` every 5 ms): p50 / p99 / max.

Needs: Debian zookeeper, Python kazoo (tests/interop/setup.sh installs
both). Usage: benches/zk-sync.py [N] [CHANGES]
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))
os.environ.setdefault("MESHREG_BIN", str(ROOT / "target" / "release" / "meshreg"))

from registries import ZooKeeper, meshreg_with_sources, stop_process  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
CHANGES = int(sys.argv[2]) if len(sys.argv) > 2 else 50
APPS = 100


def body(app, ip, port):
    return json.dumps({
        "name": app, "id": f"{ip}:{port}", "address": ip, "port": port, "sslPort": None,
        "payload": {"@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                    "id": f"{ip}:{port}", "name": app,
                    "metadata": {"dubbo.metadata.revision": "r1", "zone": f"z{port % 3}"}},
        "registrationTimeUTC": 1690000000000, "serviceType": "DYNAMIC", "uriSpec": None,
    }).encode()


def get(m, path):
    with urllib.request.urlopen(m.http + path, timeout=60) as r:
        return json.loads(r.read())


def main():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="zk-sync-"))
    zk_server = ZooKeeper(tmp)
    zk = zk_server.client()
    t = time.time()
    per_app = N // APPS
    pending = []
    for a in range(APPS):
        zk.ensure_path(f"/services/app{a}")
        for i in range(per_app):
            ip = f"10.{a}.{i // 250}.{i % 250 + 1}"
            pending.append(zk.create_async(f"/services/app{a}/{ip}:20880", body(f"app{a}", ip, 20880)))
            if len(pending) >= 2000:
                for p in pending:
                    p.get()
                pending.clear()
    for p in pending:
        p.get()
    print(f"wrote {per_app * APPS} znodes in {time.time() - t:.1f} s")

    t0 = time.time()
    m = meshreg_with_sources(tmp, f'[[sources]]\nname = "zk"\nkind = "zookeeper"\naddress = "{zk_server.address}"\n')
    try:
        while True:
            s = next(x for x in get(m, "/v1/sources")["sources"] if x["name"] == "zk")
            if s["upserted"] >= per_app * APPS:
                break
            if time.time() - t0 > 600:
                raise SystemExit(f"not synced in 600 s: {s}")
            time.sleep(0.05)
        synced = time.time() - t0
        listed = len(get(m, "/v1/namespaces/default/instances")["instances"])
        print(f"initial sync: {listed} instances held {synced:.2f} s after meshreg started "
              f"(source state {s['state']}, quarantined {len(s['quarantined'])})")

        lat = []
        for k in range(CHANGES):
            ip = f"10.200.{k // 250}.{k % 250 + 1}"
            zk.create(f"/services/app0/{ip}:20880", body("app0", ip, 20880))
            c0 = time.time()
            while True:
                ids = {i["id"] for i in get(m, "/v1/namespaces/default/instances?app=app0")["instances"]}
                if f"{ip}:20880" in ids:
                    break
                if time.time() - c0 > 30:
                    raise SystemExit(f"change {k} not seen in 30 s")
                time.sleep(0.005)
            lat.append((time.time() - c0) * 1000)
        lat.sort()
        pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"one change -> registry: n={len(lat)} p50={pct(0.5):.0f} ms p99={pct(0.99):.0f} ms max={lat[-1]:.0f} ms")
        rss = [l for l in open(f"/proc/{m.proc.pid}/status") if l.startswith("VmRSS")][0].split()[1]
        print(f"meshreg RSS after the sync: {int(rss) // 1024} MB")
    finally:
        stop_process(m.proc)
        zk.stop()
        zk.close()
        zk_server.stop()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
