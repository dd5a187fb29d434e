"""Proxyless gRPC xDS clients (GRPC_XDS_BOOTSTRAP) against meshreg: Python's
grpcio (xds_client.py) and Node's @grpc/grpc-js-xds (xds_client.js).

Three echo servers are registered; a client calling xds:///... spreads its
calls over all three; deregistering one stops its traffic; registering a
fourth brings it traffic. Once by application and port, once by the
service (interface) name through the ServiceMapping.
"""
import sys


from conftest import HERE, XdsClient, free_port


def python_client(target, bootstrap, n=30):
    return XdsClient([sys.executable, str(HERE / "xds_client.py"), target, str(n)], bootstrap)


def node_client(target, bootstrap, n=30):
    return XdsClient(["node", str(HERE / "xds_client.js"), target, str(n)], bootstrap)


def scenario(meshreg, backends, make_client, tmp_path, by_service, labels=None):
    port = free_port()
    # The same port on three loopback addresses: one app port, three endpoints.
    for i in (2, 3, 4):
        backends.start(f"s{i}", f"127.0.0.{i}:{port}")
        meshreg.register("echo", f"127.0.0.{i}", port, labels=labels)
    target = "xds:///test.Echo" if by_service else f"xds:///echo.default:{port}"
    client = make_client(target, meshreg.bootstrap(tmp_path / "bootstrap.json", "interop-client"))
    try:
        assert not [n for n in client.first if n.startswith("ERROR")], client.first
        names = client.until(lambda ns: {"s2", "s3", "s4"} <= set(ns))
        assert set(names) <= {"s2", "s3", "s4"}, names

        meshreg.deregister("echo", f"127.0.0.3:{port}")
        client.until(lambda ns: "s3" not in ns and len(ns) == 30)
        assert "s3" not in client.burst(30), "a deregistered backend still gets traffic"

        backends.start("s5", f"127.0.0.5:{port}")
        meshreg.register("echo", "127.0.0.5", port, labels=labels)
        names = client.until(lambda ns: "s5" in ns)
        assert set(names) <= {"s2", "s4", "s5"}, names
    finally:
        client.close()

    clients = meshreg.request("GET", "/v1/xds/clients")["clients"]
    assert clients == [] or all(c["node_id"] for c in clients)


def test_python_grpc_by_app_port(meshreg, backends, tmp_path):
    scenario(meshreg, backends, python_client, tmp_path, by_service=False)


def test_python_grpc_by_service_name(meshreg, backends, tmp_path):
    scenario(meshreg, backends, python_client, tmp_path, by_service=True)


# Regression: @grpc/grpc-js-xds once NACKed every ClusterLoadAssignment for
# instances without labels. An empty "envoy.lb" Struct in an endpoint's
# filter_metadata encodes as a key-only map entry (valid protobuf), which
# protobufjs decodes as null and then fails on ("Cannot read properties of
# null (reading 'fields')"). meshreg now leaves the metadata out when an
# instance has no labels; these two tests use unlabelled instances.


def test_node_grpc_js_xds_by_app_port(meshreg, backends, tmp_path):
    scenario(meshreg, backends, node_client, tmp_path, by_service=False)


def test_node_grpc_js_xds_by_service_name(meshreg, backends, tmp_path):
    scenario(meshreg, backends, node_client, tmp_path, by_service=True)


def test_node_grpc_js_xds_labelled_instances(meshreg, backends, tmp_path):
    """With labels the "envoy.lb" Struct is not empty and grpc-js-xds accepts
    the EDS: the rest of the Node xDS path works against meshreg."""
    scenario(meshreg, backends, node_client, tmp_path, by_service=False, labels={"version": "v1"})
