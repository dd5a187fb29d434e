"""Real ZooKeeper and etcd servers for the source interop tests, each on
free loopback ports with a temporary data directory, and a meshreg server
(or a meshreg-bridge) configured to import from them.

ZooKeeper is Debian's `zookeeper` package (a standalone QuorumPeerMain on
/usr/share/java/zookeeper.jar; ZOOKEEPER_CLASSPATH overrides it); etcd is
Debian's `etcd-server` with `etcdctl` from `etcd-client`
(tests/interop/setup.sh installs them).
"""
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

from conftest import Meshreg, bridge_binary, free_port

ZOOKEEPER_CLASSPATH = os.environ.get(
    "ZOOKEEPER_CLASSPATH", "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf")


def eventually(check, timeout=20, what="condition"):
    """Calls `check` until it returns a true value (returned) or raises
    AssertionError at the deadline with the last value."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, IndexError, OSError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s; last: {last!r}")


def stop_process(proc, timeout=15):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class ZooKeeper:
    """A standalone ZooKeeper server. `stop()` and `start()` again keep the
    port and the data directory (a restart, for session-expiry tests)."""

    def __init__(self, tmp_path, max_session_timeout_ms=60000):
        self.dir = tmp_path / "zookeeper"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cfg = self.dir / "zoo.cfg"
        self.cfg.write_text(
            "tickTime=500\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "minSessionTimeout=1000\n"
            f"maxSessionTimeout={max_session_timeout_ms}\n")
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.dir / "zookeeper.log", "a")
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", "-Dzookeeper.admin.enableServer=false", "-cp", ZOOKEEPER_CLASSPATH,
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.cfg)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = self.client(timeout=60)
        client.stop()
        client.close()

    def client(self, timeout=15):
        """A started kazoo client (the caller stops it)."""
        from kazoo.client import KazooClient
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("ZooKeeper exited: " + (self.dir / "zookeeper.log").read_text())
            zk = KazooClient(hosts=self.address)
            try:
                zk.start(timeout=2)
                return zk
            except Exception:  # kazoo's timeout; the server is still starting
                zk.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self):
        stop_process(self.proc)
        self.log.close()


# Dubbo's registrations in ZooKeeper.

def quote(url):
    # Dubbo names provider znodes URL.encode(url), i.e. Java's URLEncoder.
    return urllib.parse.quote_plus(url, safe="")


def provider_path(url):
    interface = url.split("?")[0].rsplit("/", 1)[1]
    return f"/dubbo/{interface}/providers/{quote(url)}"


def add_provider(zk, url):
    """Registers a provider as Dubbo's ZookeeperRegistry does: an ephemeral
    znode named by the encoded URL under persistent interface nodes."""
    path = provider_path(url)
    zk.create(path, b"", ephemeral=True, makepath=True)
    return path


def curator_instance(app, ip, port, metadata):
    """The JSON Dubbo 3 writes for an application-level instance through
    Curator's ServiceDiscovery (ZookeeperInstance payload)."""
    return json.dumps({
        "name": app, "id": f"{ip}:{port}", "address": ip, "port": port, "sslPort": None,
        "payload": {"@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                    "id": f"{ip}:{port}", "name": app, "metadata": metadata},
        "registrationTimeUTC": 1690000000000, "serviceType": "DYNAMIC", "uriSpec": None,
    }).encode()


class Etcd:
    """A single-member etcd server. `stop()` and `start()` again keep the
    ports and the data directory (a restart)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "etcd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.peer = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.start()

    def start(self):
        self.log = open(self.dir / "etcd.log", "a")
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "interop", "--data-dir", str(self.dir / "data"),
             "--listen-client-urls", f"http://{self.address}",
             "--advertise-client-urls", f"http://{self.address}",
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"interop={peer}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        eventually(self._healthy, timeout=30, what="etcd healthy")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError("etcd exited: " + (self.dir / "etcd.log").read_text())
        with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as r:
            return json.loads(r.read()).get("health") == "true"

    def ctl(self, *args):
        """Runs etcdctl (API v3) against this server; returns its stdout."""
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.address, *args],
            env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"etcdctl {args}: {out.stderr}"
        return out.stdout

    def put(self, key, value):
        self.ctl("put", key, value)

    def delete(self, key):
        self.ctl("del", key)

    def mod_revision(self, key):
        kvs = json.loads(self.ctl("get", key, "-w", "json")).get("kvs", [])
        return kvs[0]["mod_revision"] if kvs else None

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def meshreg_with_sources(tmp_path, sources_toml):
    """A meshreg server whose config file holds `sources_toml`."""
    cfg = tmp_path / "meshreg.toml"
    cfg.write_text(sources_toml)
    return Meshreg(tmp_path / "meshreg", extra_args=("--config", str(cfg)))


def meshreg_bridge(tmp_path, sources_toml):
    """A `meshreg-bridge` on ports chosen by the OS reading `sources_toml`
    (its state in a temporary directory it removes on exit)."""
    d = tmp_path / "bridge"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "bridge.toml"
    cfg.write_text(sources_toml)
    return Meshreg(d, argv=[bridge_binary(), "--config", str(cfg), "--http-addr", "127.0.0.1:0",
                            "--grpc-addr", "127.0.0.1:0"])


def instances(meshreg, ns="default", query=""):
    return meshreg.request("GET", f"/v1/namespaces/{ns}/instances{query}")["instances"]


def by_id(meshreg, app, ns="default"):
    return {i["id"]: i for i in instances(meshreg, ns, f"?app={app}")}


def source(meshreg, name):
    for s in meshreg.request("GET", "/v1/sources")["sources"]:
        if s["name"] == name:
            return s
    raise AssertionError(f"no source {name}")


def apps_of(meshreg, service, ns="default"):
    return meshreg.request("GET", f"/v1/namespaces/{ns}/services/{service}")["apps"]
