"""What benches/zk-sync.py and benches/nacos-sync.py share: the time until a
source's initial sync is held by meshreg, the latency of single changes,
and meshreg's resident memory."""
import json
import time
import urllib.request


def get(m, path):
    with urllib.request.urlopen(m.http + path, timeout=60) as r:
        return json.loads(r.read())


def wait_synced(m, source, total, t0, limit=600):
    """Waits until `source` has upserted `total` records; prints and
    returns the seconds since `t0` (meshreg's start)."""
    while True:
        s = next(x for x in get(m, "/v1/sources")["sources"] if x["name"] == source)
        if s["upserted"] >= total:
            break
        if time.time() - t0 > limit:
            raise SystemExit(f"not synced in {limit} s: {s}")
        time.sleep(0.05)
    synced = time.time() - t0
    listed = len(get(m, "/v1/namespaces/default/instances")["instances"])
    print(f"initial sync: {listed} instances held {synced:.2f} s after meshreg started "
          f"(source state {s['state']}, quarantined {len(s['quarantined'])})")
    return synced


def change_latency(m, app, changes, make_change):
    """For k in range(changes): `make_change(k)` returns the instance id it
    created in `app`; measures until the registry lists it (polling every
    5 ms). Prints p50 / p99 / max."""
    lat = []
    for k in range(changes):
        want = make_change(k)
        c0 = time.time()
        while True:
            ids = {i["id"] for i in get(m, f"/v1/namespaces/default/instances?app={app}")["instances"]}
            if want in ids:
                break
            if time.time() - c0 > 30:
                raise SystemExit(f"change {k} not seen in 30 s")
            time.sleep(0.005)
        lat.append((time.time() - c0) * 1000)
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    print(f"one change -> registry: n={len(lat)} p50={pct(0.5):.0f} ms p99={pct(0.99):.0f} ms max={lat[-1]:.0f} ms")


def print_rss(pid):
    rss = [line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0].split()[1]
    print(f"meshreg RSS after the sync: {int(rss) // 1024} MB")
