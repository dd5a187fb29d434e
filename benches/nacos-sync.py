#!/usr/bin/env python3
"""Nacos source benchmark: initial sync of N instances from a Nacos 2.x
server (default 100,000: 100 services x 1,000 instances), and one-change
latency. The peer is rnacos (a Nacos 2.x-compatible server); the
instances are registered by nacos-sdk-python over gRPC, 500 requests in
flight, and stay registered while the benchmark's client is connected.

1. Registers the N instances into a fresh rnacos.
2. Starts a fresh single-node meshreg (MESHREG_BIN, default
   target/release/meshreg) with a `kind = "nacos"` source, and measures
   from process start until the registry holds all N instances (the
   source's `upserted` total in /v1/sources, then one full listing to
   confirm). The xDS server pushes from the registry after its debounce
   (100 ms quiet, 1 s max), so xDS clients see them within that of the
   figure.
3. Registers CHANGES more instances, one at a time, in the first service,
   and measures each from the register call returning to the instance
   being listed by the registry (polling `?app=` every 5 ms): p50 / p99 /
   max.

Needs: rnacos and nacos-sdk-python (tests/interop/setup.sh installs
both). Usage: benches/nacos-sync.py [N] [CHANGES]
"""
import asyncio
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

from nacos import NacosClient, RNacos  # noqa: E402
from source_sync import change_latency, print_rss, wait_synced  # noqa: E402
from registries import meshreg_with_sources, stop_process  # noqa: E402
from v2.nacos import RegisterInstanceParam  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
CHANGES = int(sys.argv[2]) if len(sys.argv) > 2 else 50
SERVICES = 100


def main():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nacos-sync-"))
    server = RNacos(tmp)
    client = NacosClient(server.address)
    per = N // SERVICES
    t = time.time()
    # One request per instance, 500 in flight (rnacos 0.8.8 accepts
    # nacos-sdk-python's batch request but registers nothing from it).
    async def register_all():
        sem = asyncio.Semaphore(500)

        async def one(s, i):
            async with sem:
                await client.naming.register_instance(RegisterInstanceParam(
                    service_name=f"app{s}", ip=f"10.{s}.{i // 250}.{i % 250 + 1}", port=8080,
                    metadata={"version": "v1", "zone": f"z{i % 3}"}))

        await asyncio.gather(*(one(s, i) for s in range(SERVICES) for i in range(per)))

    client._run(register_all(), timeout=1200)
    print(f"registered {per * SERVICES} instances in {time.time() - t:.1f} s")

    t0 = time.time()
    m = meshreg_with_sources(tmp, f'[[sources]]\nname = "nacos"\nkind = "nacos"\naddress = "{server.address}"\n')
    try:
        wait_synced(m, "nacos", per * SERVICES, t0)

        def change(k):
            ip = f"10.200.{k // 250}.{k % 250 + 1}"
            client.register("app0", ip, 8080, metadata={"version": "v1"})
            return f"{ip}:8080"

        change_latency(m, "app0", CHANGES, change)
        print_rss(m.proc.pid)
    finally:
        stop_process(m.proc)
        client.close()
        server.stop()
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
