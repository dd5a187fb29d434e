"""A real Nacos-compatible server (rnacos, `cargo install rnacos`) on free
loopback ports with a temporary data directory, and a Nacos 2.x client
(nacos-sdk-python's gRPC `v2.nacos` API) that registers instances the way
a Nacos application does. tests/interop/setup.sh installs both.

The client's instances are ephemeral: they live while its gRPC connection
does, so the client runs its asyncio loop on a thread for as long as the
test holds it.
"""
import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time

from conftest import free_port
from registries import stop_process
from v2.nacos import (ClientConfigBuilder, DeregisterInstanceParam, NacosNamingService,
                      RegisterInstanceParam)


def _free_pair():
    """A free port p such that p + 1000 (Nacos's gRPC port) is free too."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port + 1000 > 65535:
                continue
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 1000))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


class RNacos:
    """An rnacos server: HTTP API on `port`, gRPC on `port + 1000`."""

    def __init__(self, tmp_path):
        self.binary = shutil.which("rnacos") or os.path.expanduser("~/.cargo/bin/rnacos")
        self.dir = tmp_path / "rnacos"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_pair()
        self.address = f"127.0.0.1:{self.port}"
        self.log = open(self.dir / "rnacos.log", "w")
        env = dict(os.environ, RNACOS_SDK_HOST="127.0.0.1", RNACOS_CONSOLE_HOST="127.0.0.1",
                   RNACOS_HTTP_PORT=str(self.port), RNACOS_GRPC_PORT=str(self.port + 1000),
                   RNACOS_HTTP_CONSOLE_PORT=str(free_port()), RNACOS_DATA_DIR=str(self.dir / "data"),
                   RUST_LOG="warn")
        self.proc = subprocess.Popen([self.binary], stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.dir / "rnacos.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port + 1000), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rnacos did not start: " + (self.dir / "rnacos.log").read_text())

    def stop(self):
        stop_process(self.proc)
        self.log.close()


class NacosClient:
    """A nacos-sdk-python naming client (Nacos 2.x gRPC) on its own loop."""

    def __init__(self, address, namespace=""):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = (ClientConfigBuilder().server_address(address).namespace_id(namespace)
               .log_level("WARNING").build())
        self.naming = self._run(NacosNamingService.create_naming_service(cfg))

    def _run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def register(self, service, ip, port, **kw):
        self._run(self.naming.register_instance(
            RegisterInstanceParam(service_name=service, ip=ip, port=port, **kw)))

    def deregister(self, service, ip, port, **kw):
        self._run(self.naming.deregister_instance(
            DeregisterInstanceParam(service_name=service, ip=ip, port=port, **kw)))

    def close(self):
        try:
            self._run(self.naming.shutdown(), timeout=10)
        except TypeError:
            # nacos-sdk-python 2.0.x awaits a non-async stop() after
            # closing the connection; the connection is closed by then.
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
