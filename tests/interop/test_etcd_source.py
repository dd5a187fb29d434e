"""meshreg importing Dubbo's application-level layout from a real etcd
(`kind = "etcd"`): `/services/{app}/{host:port}` keys holding Dubbo's
ServiceInstance JSON, written with etcdctl, appear as instances with their
provenance (key, mod_revision), follow puts and deletes through the watch,
bad keys are quarantined and listed in /v1/sources, records for a namespace
that does not exist yet appear once it is created, and an etcd restart is
survived (reconnect, full read).
"""
import json

import pytest

from registries import Etcd, by_id, eventually, meshreg_with_sources, source


def instance(app, host, port, metadata=None, **extra):
    """Dubbo's DefaultServiceInstance as JSON (EtcdServiceDiscovery)."""
    return json.dumps({"serviceName": app, "host": host, "port": port, "enabled": True,
                       "healthy": True, "metadata": metadata or {}, **extra})


@pytest.fixture
def etcd(tmp_path):
    e = Etcd(tmp_path)
    yield e
    e.stop()


def test_application_level_layout_from_etcd(etcd, tmp_path):
    endpoints = '[{"port":8080,"protocol":"tri"},{"port":9090,"protocol":"rest"}]'
    etcd.put("/services/cart/10.2.0.1:8080",
             instance("cart", "10.2.0.1", 8080, {"dubbo.endpoints": endpoints, "zone": "z1"}))
    etcd.put("/services/cart/10.2.0.2:8080", instance("cart", "10.2.0.2", 8080))
    etcd.put("/services/cart/10.2.0.3:8080", '{"serviceName": "cart", "host": ')
    etcd.put("/services/lonely", instance("lonely", "10.2.0.9", 1))
    etcd.put("/elsewhere/x/10.9.9.9:1", instance("x", "10.9.9.9", 1))

    sources = (f'[[sources]]\nname = "et"\nkind = "etcd"\naddress = "{etcd.address}"\n'
               f'\n[[sources]]\nname = "et-team"\nkind = "etcd"\naddress = "{etcd.address}"\n'
               'namespace = "team"\nprefix = "/team/"\n')
    etcd.put("/team/bill/10.3.0.1:80", instance("bill", "10.3.0.1", 80))
    m = meshreg_with_sources(tmp_path, sources)
    try:
        cart = eventually(lambda: len(by_id(m, "cart")) == 2 and by_id(m, "cart"), what="two cart instances")
        one = cart["10.2.0.1:8080"]
        assert one["ports"] == {"tri": 8080, "rest": 9090}
        assert one["labels"] == {"zone": "z1"}
        assert one["provenance"]["source"] == "et"
        assert one["provenance"]["source_key"] == "/services/cart/10.2.0.1:8080"
        assert one["provenance"]["observed_revision"] == str(etcd.mod_revision("/services/cart/10.2.0.1:8080"))
        assert cart["10.2.0.2:8080"]["ports"] == {"dubbo": 8080}
        assert by_id(m, "x") == {}, "keys outside the prefix are not read"

        st = source(m, "et")
        assert st["kind"] == "etcd" and st["state"] == "synced", st
        reasons = dict(st["quarantined"])
        assert "not JSON" in reasons["/services/cart/10.2.0.3:8080"], reasons
        assert "does not follow the layout" in reasons["/services/lonely"], reasons

        # The second source's namespace does not exist yet: quarantined,
        # then imported once it is created.
        team = eventually(lambda: source(m, "et-team")["quarantined"], what="team quarantined")
        assert "does not exist" in team[0][1], team
        m.request("POST", "/v1/namespaces", {"name": "team"})
        bill = eventually(lambda: by_id(m, "bill", ns="team"), what="team records after the namespace exists")
        assert bill["10.3.0.1:80"]["provenance"]["source"] == "et-team"
        assert source(m, "et-team")["quarantined"] == []

        # Puts and deletes follow through the watch.
        etcd.put("/services/cart/10.2.0.2:8080", instance("cart", "10.2.0.2", 8080, healthy=False))
        etcd.delete("/services/cart/10.2.0.1:8080")
        etcd.put("/services/cart/10.2.0.3:8080", instance("cart", "10.2.0.3", 8080))
        eventually(lambda: sorted(by_id(m, "cart")) == ["10.2.0.2:8080", "10.2.0.3:8080"], what="put and delete")
        two = eventually(lambda: (c := by_id(m, "cart")["10.2.0.2:8080"])["health"] == "NOT_SERVING" and c,
                         what="healthy=false")
        assert two["provenance"]["observed_revision"] == str(etcd.mod_revision("/services/cart/10.2.0.2:8080"))
        eventually(lambda: list(dict(source(m, "et")["quarantined"])) == ["/services/lonely"],
                   what="the fixed key leaves quarantine")
        assert list(by_id(m, "bill", ns="team")) == ["10.3.0.1:80"], "sources stay apart"

        # etcd restarts: the source reconnects, reads everything and follows again.
        etcd.stop()
        eventually(lambda: source(m, "et")["last_error"], timeout=30, what="the source reports the lost etcd")
        assert sorted(by_id(m, "cart")) == ["10.2.0.2:8080", "10.2.0.3:8080"], "records stay meanwhile"
        etcd.start()
        etcd.put("/services/cart/10.2.0.4:8080", instance("cart", "10.2.0.4", 8080))
        etcd.delete("/services/cart/10.2.0.3:8080")
        eventually(lambda: sorted(by_id(m, "cart")) == ["10.2.0.2:8080", "10.2.0.4:8080"], timeout=40,
                   what="changes after the restart")
        eventually(lambda: source(m, "et")["last_error"] is None, what="synced again")
    finally:
        m.stop()
