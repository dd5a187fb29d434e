"""meshreg importing Dubbo services from a real ZooKeeper (`kind =
"zookeeper"`): provider URLs and application-level instances written the
way Dubbo writes them (with kazoo, the ZooKeeper client Dubbo's Python
tooling uses) appear as instances with their provenance, follow changes and
deletions through watches, bad records are quarantined and listed in
/v1/sources without blocking the rest, and after the ZooKeeper session
expires meshreg reconnects and reads everything again.
"""
import pytest

from registries import (ZooKeeper, add_provider, apps_of, by_id, curator_instance, eventually,
                        instances, meshreg_with_sources, provider_path, source)

API = ("dubbo://10.0.0.1:20880/org.demo.Api?anyhost=true&application=demo&deprecated=false"
       "&dubbo=2.0.2&dynamic=true&generic=false&interface=org.demo.Api&methods=hello,bye"
       "&pid=4242&release=3.2.0&side=provider&timestamp=1690000000000&version=1.0.0&weight=150")
ADMIN = ("dubbo://10.0.0.1:20880/org.demo.Admin?application=demo&interface=org.demo.Admin"
         "&methods=stats&release=3.2.0&side=provider&timestamp=1690000000001")
API_2 = ("dubbo://10.0.0.2:20880/org.demo.Api?application=demo&interface=org.demo.Api"
         "&methods=hello,bye&side=provider&version=1.0.0")
NO_APP = "dubbo://10.0.0.3:20880/org.demo.Api?interface=org.demo.Api&side=provider"
SHOP_META = {"dubbo.endpoints": '[{"port":20880,"protocol":"dubbo"},{"port":50051,"protocol":"tri"}]',
             "dubbo.metadata.revision": "a1b2c3", "zone": "gz01"}


@pytest.fixture
def zookeeper(tmp_path):
    z = ZooKeeper(tmp_path)
    yield z
    z.stop()


def zk_source(zookeeper):
    return f'[[sources]]\nname = "zk"\nkind = "zookeeper"\naddress = "{zookeeper.address}"\n'


def test_dubbo_layouts_from_zookeeper(zookeeper, tmp_path):
    zk = zookeeper.client()
    try:
        api_path = add_provider(zk, API)
        admin_path = add_provider(zk, ADMIN)
        api2_path = add_provider(zk, API_2)
        no_app_path = add_provider(zk, NO_APP)
        shop_path = "/services/shop/10.0.1.1:20880"
        zk.create(shop_path, curator_instance("shop", "10.0.1.1", 20880, SHOP_META), makepath=True)
        zk.create("/services/shop/10.0.1.2:20880", b"{not json", makepath=True)
        zk.create("/dubbo/mapping/org.shop.Cart", b"shop", makepath=True)

        m = meshreg_with_sources(tmp_path, zk_source(zookeeper))
        try:
            demo = eventually(lambda: len(by_id(m, "demo")) == 2 and by_id(m, "demo"),
                              what="two demo instances")
            one = demo["10.0.0.1:20880"]
            assert one["ports"] == {"dubbo": 20880}
            assert one["weight"] == 150
            assert one["labels"]["side"] == "provider" and one["labels"]["release"] == "3.2.0"
            assert one["metadata"]["timestamp"] in ("1690000000000", "1690000000001")
            prov = one["provenance"]
            assert prov["source"] == "zk"
            # The instance's first provider znode (in path order) and the newest mzxid.
            assert prov["source_key"] == min(admin_path, api_path)
            newest = max(zk.exists(p).mzxid for p in (api_path, admin_path))
            assert prov["observed_revision"] == str(newest)
            assert sorted(apps_of(m, "org.demo.Api")) == ["demo"]
            assert apps_of(m, "org.demo.Admin") == ["demo"]

            shop = eventually(lambda: by_id(m, "shop"), what="the shop instance")
            s = shop["10.0.1.1:20880"]
            assert s["ports"] == {"dubbo": 20880, "tri": 50051}
            assert s["labels"]["zone"] == "gz01"
            assert s["provenance"]["source_key"] == shop_path
            assert s["provenance"]["observed_revision"] == str(zk.exists(shop_path).mzxid)
            assert apps_of(m, "org.shop.Cart") == ["shop"], "services from /dubbo/mapping"

            st = source(m, "zk")
            assert st["kind"] == "zookeeper" and st["state"] == "synced", st
            reasons = dict(st["quarantined"])
            assert "no application=" in reasons[no_app_path], reasons
            assert "not JSON" in reasons["/services/shop/10.0.1.2:20880"], reasons

            # Changes follow through the watches.
            new_path = add_provider(zk, "tri://10.0.0.9:50051/org.new.Svc?application=newapp&side=provider")
            zk.set(shop_path, curator_instance("shop", "10.0.1.1", 20880, dict(SHOP_META, zone="gz02")))
            zk.delete(api2_path)
            zk.set("/services/shop/10.0.1.2:20880", curator_instance("shop", "10.0.1.2", 20880, {}))
            eventually(lambda: list(by_id(m, "newapp")) == ["10.0.0.9:50051"], what="a new provider")
            eventually(lambda: by_id(m, "shop")["10.0.1.1:20880"]["labels"]["zone"] == "gz02",
                       what="changed instance data")
            assert (by_id(m, "shop")["10.0.1.1:20880"]["provenance"]["observed_revision"]
                    == str(zk.exists(shop_path).mzxid))
            eventually(lambda: list(by_id(m, "demo")) == ["10.0.0.1:20880"], what="a deleted provider")
            eventually(lambda: len(by_id(m, "shop")) == 2, what="a fixed record leaves quarantine")
            assert by_id(m, "newapp")["10.0.0.9:50051"]["provenance"]["source_key"] == new_path

            # Interfaces leaving: the instance loses the service; mappings too.
            zk.delete(admin_path)
            zk.delete("/dubbo/mapping/org.shop.Cart")
            eventually(lambda: apps_of(m, "org.demo.Admin") == [] and apps_of(m, "org.shop.Cart") == [],
                       what="services gone")
            st = source(m, "zk")
            assert [k for k, _ in st["quarantined"]] == [no_app_path], st["quarantined"]
            assert st["last_error"] is None

            # A whole interface tree removed: its providers go.
            zk.delete("/dubbo/org.new.Svc", recursive=True)
            eventually(lambda: by_id(m, "newapp") == {}, what="a removed interface")
            assert len(instances(m)) == 3  # demo@10.0.0.1, shop x2
        finally:
            m.stop()
    finally:
        zk.stop()
        zk.close()


def test_session_expiry_resyncs(tmp_path):
    # A short session (ZooKeeper caps the requested 10 s at 2 s) so that a
    # stopped server expires it quickly.
    zookeeper = ZooKeeper(tmp_path, max_session_timeout_ms=2000)
    m = None
    zk = None
    try:
        zk = zookeeper.client()
        zk.create(provider_path(API), b"", makepath=True)  # persistent: survives the restart
        zk.create(provider_path(API_2), b"", makepath=True)
        zk.stop()
        zk.close()
        zk = None
        m = meshreg_with_sources(tmp_path, zk_source(zookeeper))
        eventually(lambda: len(by_id(m, "demo")) == 2, what="loaded")

        zookeeper.stop()
        st = eventually(lambda: (s := source(m, "zk"))["last_error"] and s, timeout=30,
                        what="the source reports the lost session")
        assert "ZooKeeper" in st["last_error"], st
        assert len(by_id(m, "demo")) == 2, "records stay while the source is away"

        zookeeper.start()
        zk = zookeeper.client()
        zk.delete(provider_path(API_2))
        zk.create(provider_path(ADMIN), b"", makepath=True)
        eventually(lambda: list(by_id(m, "demo")) == ["10.0.0.1:20880"]
                   and apps_of(m, "org.demo.Admin") == ["demo"], timeout=40,
                   what="changes made after the restart")
        eventually(lambda: source(m, "zk")["state"] == "synced", what="synced again")
    finally:
        if zk is not None:
            zk.stop()
            zk.close()
        if m is not None:
            m.stop()
        zookeeper.stop()
