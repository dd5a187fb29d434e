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

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "benches"))
os.environ.setdefault("MESHREG_BIN", str(ROOT / "target" / "release" / "meshreg"))

from source_sync import change_latency, print_rss, wait_synced  # noqa: E402
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
        wait_synced(m, "zk", per_app * APPS, t0)

        def change(k):
            ip = f"10.200.{k // 250}.{k % 250 + 1}"
            zk.create(f"/services/app0/{ip}:20880", body("app0", ip, 20880))
            return f"{ip}:20880"

        change_latency(m, "app0", CHANGES, change)
        print_rss(m.proc.pid)
    finally:
        stop_process(m.proc)
        zk.stop()
        zk.close()
        zk_server.stop()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
