"""meshreg importing the services of a real Nacos 2.x server (`kind =
"nacos"`, through the nacos-sdk crate): rnacos, with instances registered by
nacos-sdk-python over Nacos's gRPC API. They appear with their provenance,
weight, health, labels and locality; changes, new services and
deregistrations follow; a bad record is quarantined without blocking the
rest; and a proxyless gRPC client (Python grpcio, GRPC_XDS_BOOTSTRAP) calls
a gRPC server registered only in Nacos through meshreg's xDS.
"""
import pytest

from nacos import NacosClient, RNacos
from registries import by_id, eventually, meshreg_with_sources, source
from test_grpc_xds import python_client
from conftest import free_port


@pytest.fixture
def rnacos(tmp_path):
    r = RNacos(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def nacos_client(rnacos):
    c = NacosClient(rnacos.address)
    yield c
    c.close()


def nacos_source(rnacos):
    return f'[[sources]]\nname = "nacos"\nkind = "nacos"\naddress = "{rnacos.address}"\n'


def test_nacos_services_follow_into_meshreg(rnacos, nacos_client, tmp_path):
    c = nacos_client
    c.register("orders", "10.0.0.1", 8080, weight=0.5, cluster_name="gz01",
               metadata={"version": "v2", "context-path": "/orders"})
    c.register("orders", "10.0.0.2", 8080, healthy=False)
    c.register("orders", "10.0.0.4", 8080, weight=0.0)
    # Nacos itself leaves disabled instances out of what clients read.
    c.register("orders", "10.0.0.5", 8080, enabled=False)
    c.register("orders", "10.0.0.3", 8080, metadata={"dubbo.endpoints": "not json"})
    c.register("providers:org.demo.Api:1.0.0:", "10.0.1.1", 20880,
               metadata={"application": "demo", "interface": "org.demo.Api",
                         "protocol": "dubbo", "methods": "hello,bye", "version": "1.0.0"})
    meshreg = meshreg_with_sources(tmp_path, nacos_source(rnacos))
    try:
        orders = eventually(
            lambda: {"10.0.0.1:8080", "10.0.0.4:8080"} <= by_id(meshreg, "orders").keys()
            and by_id(meshreg, "orders"), what="the orders instances")
        one = orders["10.0.0.1:8080"]
        assert one["weight"] == 50, "Nacos weight 0.5 → 50 (×100), not truncated"
        assert one["health"] == "SERVING"
        assert one["locality"]["zone"] == "gz01"
        assert one["labels"]["version"] == "v2"
        assert one["metadata"]["context-path"] == "/orders", "not a label value: metadata"
        assert one["ports"] == {"http": 8080}
        prov = one["provenance"]
        assert prov["source"] == "nacos"
        assert prov["source_key"] == "DEFAULT_GROUP@@orders/gz01/10.0.0.1:8080"
        assert prov["observed_at_ms"] > 0
        # Nacos answers a query with unhealthy instances marked; rnacos
        # leaves them out (it always answers healthy-only). Either way an
        # unhealthy instance takes no traffic.
        unhealthy = orders.get("10.0.0.2:8080", {"health": "NOT_SERVING"})
        assert unhealthy["health"] == "NOT_SERVING", "healthy=false"
        assert orders["10.0.0.4:8080"]["health"] == "NOT_SERVING", "weight 0 takes no traffic"
        assert "10.0.0.5:8080" not in orders

        demo = by_id(meshreg, "demo")["10.0.1.1:20880"]
        assert demo["ports"] == {"dubbo": 20880}
        api = meshreg.request("GET", "/v1/namespaces/default/services/org.demo.Api")
        assert api["apps"] == ["demo"], api

        s = source(meshreg, "nacos")
        assert s["state"] == "synced", s
        assert s["kind"] == "nacos"
        assert any("10.0.0.3:8080" in key and "dubbo.endpoints" in why
                   for key, why in s["quarantined"]), s["quarantined"]

        # A change, a deregistration and a new service follow.
        # (rnacos keeps an instance's first metadata when it registers
        # again; the weight changes.)
        c.register("orders", "10.0.0.1", 8080, weight=2.0, cluster_name="gz01",
                   metadata={"version": "v2", "context-path": "/orders"})
        eventually(lambda: by_id(meshreg, "orders")["10.0.0.1:8080"]["weight"] == 200,
                   what="the changed weight")
        c.deregister("orders", "10.0.0.4", 8080)
        eventually(lambda: "10.0.0.4:8080" not in by_id(meshreg, "orders"),
                   what="the deregistered instance gone")
        c.register("payments", "10.0.2.1", 9090)
        eventually(lambda: "10.0.2.1:9090" in by_id(meshreg, "payments"),
                   what="a new service picked up")
        # The last instance of a service leaving empties it.
        c.deregister("payments", "10.0.2.1", 9090)
        eventually(lambda: by_id(meshreg, "payments") == {}, what="the service emptied")
    finally:
        meshreg.stop()


def test_grpc_client_calls_a_nacos_registered_server_through_meshreg(
        rnacos, nacos_client, backends, tmp_path):
    port = free_port()
    for i in (2, 3, 4):
        backends.start(f"s{i}", f"127.0.0.{i}:{port}")
        nacos_client.register("echo", f"127.0.0.{i}", port, metadata={"protocol": "grpc"})
    meshreg = meshreg_with_sources(tmp_path, nacos_source(rnacos))
    try:
        eventually(lambda: len(by_id(meshreg, "echo")) == 3, what="three echo instances")
        client = python_client(f"xds:///echo.default:{port}",
                               meshreg.bootstrap(tmp_path / "bootstrap.json", "nacos-client"))
        try:
            assert not [n for n in client.first if n.startswith("ERROR")], client.first
            client.until(lambda ns: {"s2", "s3", "s4"} <= set(ns))
            nacos_client.deregister("echo", "127.0.0.3", port)
            client.until(lambda ns: "s3" not in ns and len(ns) == 30)
            assert "s3" not in client.burst(30), "deregistered in Nacos, still called"
        finally:
            client.close()
    finally:
        meshreg.stop()
