"""`meshreg-bridge` serving a real ZooKeeper, consumed by meshreg over MCP:
Dubbo providers and application-level instances written with kazoo reach
meshreg through two hops (ZooKeeper → bridge, the bridge's ServiceEntries
→ meshreg's `kind = "mcp"` source) with the provenance of the hop meshreg
sees, follow additions and deletions in ZooKeeper, and both /v1/sources
report their source synced. The bridge writes into its own namespace
`dubbo` (which it creates) and meshreg maps it to `default`.
"""
import pytest

from registries import (ZooKeeper, add_provider, apps_of, by_id, curator_instance, eventually,
                        meshreg_bridge, meshreg_with_sources, source)

API = ("dubbo://10.0.0.1:20880/org.demo.Api?application=demo&interface=org.demo.Api"
       "&methods=hello&release=3.2.0&side=provider&version=1.0.0&weight=150")
API_2 = ("dubbo://10.0.0.2:20880/org.demo.Api?application=demo&interface=org.demo.Api"
         "&methods=hello&side=provider&version=1.0.0")
NEW = "tri://10.0.0.9:50051/org.new.Svc?application=newapp&side=provider"
SHOP_META = {"dubbo.endpoints": '[{"port":20880,"protocol":"dubbo"},{"port":50051,"protocol":"tri"}]',
             "zone": "gz01"}


@pytest.fixture
def zookeeper(tmp_path):
    z = ZooKeeper(tmp_path)
    yield z
    z.stop()


def test_zookeeper_through_the_bridge(zookeeper, tmp_path):
    zk = zookeeper.client()
    bridge = m = None
    try:
        add_provider(zk, API)
        api2_path = add_provider(zk, API_2)
        zk.create("/services/shop/10.0.1.1:20880",
                  curator_instance("shop", "10.0.1.1", 20880, SHOP_META), makepath=True)

        bridge = meshreg_bridge(tmp_path, (
            '[[sources]]\nname = "zk"\nkind = "zookeeper"\n'
            f'address = "{zookeeper.address}"\nnamespace = "dubbo"\n'))
        eventually(lambda: source(bridge, "zk")["state"] == "synced", what="the bridge synced")
        on_bridge = eventually(lambda: len(by_id(bridge, "demo", ns="dubbo")) == 2
                               and by_id(bridge, "demo", ns="dubbo"), what="demo on the bridge")
        assert on_bridge["10.0.0.1:20880"]["provenance"]["source"] == "zk"

        m = meshreg_with_sources(tmp_path, (
            '[[sources]]\nname = "bridge"\nkind = "mcp"\n'
            f'address = "{bridge.grpc}"\nnamespaces = {{ dubbo = "default" }}\n'))
        demo = eventually(lambda: len(by_id(m, "demo")) == 2 and by_id(m, "demo"),
                          what="demo in meshreg")
        one = demo["10.0.0.1:20880"]
        assert one["provenance"]["source"] == "bridge", one
        assert one["ports"] == {"dubbo": 20880}
        assert one["weight"] == 150
        assert one["labels"]["release"] == "3.2.0"
        assert apps_of(m, "org.demo.Api") == ["demo"], "services came along"
        shop = eventually(lambda: by_id(m, "shop"), what="shop in meshreg")["10.0.1.1:20880"]
        assert shop["ports"] == {"dubbo": 20880, "tri": 50051}
        assert shop["labels"]["zone"] == "gz01"
        assert shop["provenance"]["source"] == "bridge"
        st = source(m, "bridge")
        assert st["kind"] == "mcp" and st["state"] == "synced" and st["quarantined"] == [], st

        # Changes in ZooKeeper follow through both hops.
        add_provider(zk, NEW)
        eventually(lambda: list(by_id(m, "newapp")) == ["10.0.0.9:50051"], what="a new provider")
        zk.delete(api2_path)
        eventually(lambda: list(by_id(m, "demo")) == ["10.0.0.1:20880"], what="a deleted provider")
        zk.delete("/services/shop/10.0.1.1:20880")
        eventually(lambda: by_id(m, "shop") == {}, what="a deleted instance")
        assert list(by_id(bridge, "demo", ns="dubbo")) == ["10.0.0.1:20880"]

        st = source(bridge, "zk")
        assert st["kind"] == "zookeeper" and st["state"] == "synced", st
        assert st["last_error"] is None and st["quarantined"] == [], st
        assert source(m, "bridge")["state"] == "synced"
    finally:
        for p in (m, bridge):
            if p is not None:
                p.stop()
        zk.stop()
        zk.close()
