"""Fixtures for the interop suite: a meshreg server and gRPC echo backends."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bridge_binary():
    """`meshreg-bridge`: $MESHREG_BRIDGE_BIN, else next to the meshreg binary."""
    return os.environ.get("MESHREG_BRIDGE_BIN", str(ROOT / "target" / "debug" / "meshreg-bridge"))


class Meshreg:
    """A `meshreg server` on loopback ports chosen by the OS; with `argv`,
    another command that prints the same listening line and serves the same
    HTTP API (`meshreg-bridge`), logging to `data_dir/server.log`."""

    def __init__(self, data_dir, extra_args=(), argv=None):
        binary = os.environ.get("MESHREG_BIN", str(ROOT / "target" / "debug" / "meshreg"))
        if argv is None:
            argv = [binary, "server", "--data-dir", str(data_dir), "--http-addr", "127.0.0.1:0",
                    "--grpc-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", *extra_args]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "server.log", "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("meshreg did not start: " + (data_dir / "server.log").read_text())
        info = json.loads(line)
        self.http = "http://" + info["http"]
        self.grpc = info["grpc"]
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(self.http + "/readyz", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("meshreg not ready")

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.http + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def register(self, app, address, port, service="test.Echo", port_name="grpc", labels=None):
        body = {"app": app, "address": address, "ports": {port_name: port},
                "services": [{"name": service, "protocol": "grpc", "port_name": port_name}]}
        if labels:
            body["labels"] = labels
        return self.request("POST", "/v1/namespaces/default/instances", body)

    def deregister(self, app, instance_id):
        return self.request("DELETE", f"/v1/namespaces/default/instances/{app}/{instance_id}")

    def bootstrap(self, path, node_id):
        path.write_text(json.dumps({
            "xds_servers": [{"server_uri": self.grpc, "channel_creds": [{"type": "insecure"}],
                             "server_features": ["xds_v3"]}],
            "node": {"id": node_id, "cluster": "interop", "metadata": {"NAMESPACE": "default"},
                     "locality": {"zone": "z1"}},
        }))
        return path

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def meshreg(tmp_path):
    m = Meshreg(tmp_path / "meshreg")
    yield m
    m.stop()


class Backends:
    """Echo servers, each answering with its name."""

    def __init__(self):
        self.procs = {}

    def start(self, name, addr):
        p = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), name, addr],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = p.stdout.readline()
        assert line.strip() == "ready", f"echo server {name} on {addr}: {line}"
        self.procs[name] = p

    def stop_all(self):
        for p in self.procs.values():
            p.terminate()
            p.wait(timeout=10)


@pytest.fixture
def backends():
    b = Backends()
    yield b
    b.stop_all()


class XdsClient:
    """A long-lived xDS client process (one channel, one subscription):
    `burst(n)` makes n calls and returns the backend names that answered."""

    def __init__(self, command, bootstrap):
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.first = self._read()

    def _read(self):
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("xDS client exited: " + "".join(out))
            line = line.strip()
            if line == "--":
                return out
            out.append(line)

    def burst(self, n):
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._read()

    def until(self, predicate, n=30, timeout=20):
        """Bursts until `predicate(names)` holds; returns the last burst."""
        deadline = time.time() + timeout
        names = self.burst(n)
        while not predicate(names):
            assert time.time() < deadline, f"condition not reached; last burst: {names}"
            time.sleep(0.2)
            names = self.burst(n)
        return names

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
