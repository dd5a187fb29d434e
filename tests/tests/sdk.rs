//! The Rust SDK (`meshreg-sdk`) against the real binary: registration
//! with a session kept alive past several TTLs, failover past a dead
//! registry address, re-registration after the session is revoked behind
//! its back, deregistration on shutdown; discovery over delta ADS that
//! follows registrations and deregistrations; subset selection over what
//! the registry sent; a registry restarted with nothing stored (the SDK
//! registers again and its stream follows the new registry); and the disk
//! failover cache serving the last endpoints after the registry is killed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshreg_sdk::{Client, EndpointSet, Health, Locality, Origin, RegistrationState, ServiceSpec};
use meshreg_tests::{eventually, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A loopback address nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn instances(s: &Server, app: &str) -> Vec<Value> {
    let r = s.get(&format!("/v1/namespaces/default/instances?app={app}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn register_http(s: &Server, body: &str) {
    let r = s.post("/v1/namespaces/default/instances", body);
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn wait_set(
    sub: &mut meshreg_sdk::Subscription,
    what: &str,
    f: impl FnMut(&EndpointSet) -> bool,
) -> Arc<EndpointSet> {
    match tokio::time::timeout(WAIT, sub.wait_for(f)).await {
        Ok(Ok(set)) => set,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: not within {WAIT:?}; last: {:?}", sub.current()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_keeps_alive_reregisters_and_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let client = Client::builder()
        .registries([dead_addr(), s.grpc.clone()])
        .app("sdk-app")
        .address("10.1.0.1")
        .port("grpc", 9090)
        .service(
            ServiceSpec::new("sdk.Echo")
                .protocol("grpc")
                .port_name("grpc"),
        )
        .label("version", "v1")
        .locality(Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
        })
        .session_ttl(Duration::from_millis(1000))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap();
    let reg = tokio::time::timeout(WAIT, client.register())
        .await
        .expect("registered in time")
        .expect("registered");
    assert_eq!(reg.ids, vec!["10.1.0.1:9090"]);
    let list = instances(&s, "sdk-app");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["session"], reg.session_id);
    assert_eq!(list[0]["labels"]["version"], "v1");
    assert_eq!(list[0]["locality"]["zone"], "z1");
    let rev = list[0]["revision"].as_str().unwrap().to_string();
    let r = s.get(&format!(
        "/v1/namespaces/default/apps/sdk-app/revisions/{rev}"
    ));
    assert_eq!(
        r.json()["service_revision"]["services"][0]["name"],
        "sdk.Echo"
    );

    // Kept alive well past 3× the TTL: present at every look, same session.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let list = instances(&s, "sdk-app");
        assert_eq!(list.len(), 1, "the instance expired while kept alive");
        assert_eq!(list[0]["session"], reg.session_id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        *client.registration().borrow(),
        RegistrationState::Registered(reg.clone())
    );

    // The session is revoked behind the SDK's back: it notices (NOT_FOUND
    // on keepalive) and registers again under a new session.
    let r = s.delete(&format!("/v1/sessions/{}", reg.session_id));
    assert_eq!(r.status, 200, "{}", r.text);
    let mut state = client.registration();
    let again = tokio::time::timeout(
        WAIT,
        state.wait_for(
            |st| matches!(st, RegistrationState::Registered(r) if r.session_id != reg.session_id),
        ),
    )
    .await
    .expect("re-registered in time")
    .expect("state channel open")
    .clone();
    let RegistrationState::Registered(again) = again else {
        unreachable!()
    };
    assert!(eventually(WAIT, || {
        let l = instances(&s, "sdk-app");
        l.len() == 1 && l[0]["session"] == again.session_id
    }));

    // Graceful shutdown revokes the session: the instance is gone at once.
    client.shutdown().await;
    assert_eq!(*client.registration().borrow(), RegistrationState::Stopped);
    assert!(instances(&s, "sdk-app").is_empty());
    let r = s.put(&format!("/v1/sessions/{}/keepalive", again.session_id));
    assert_eq!(r.status, 404, "the session was revoked: {}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriber_follows_registrations_and_deregistrations() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register_http(
        &s,
        r#"{"app":"pay","address":"10.0.0.1","ports":{"grpc":9090},"labels":{"version":"v1"},
            "weight":30,"health":"draining","locality":{"region":"r","zone":"gz01"}}"#,
    );
    let consumer = Client::builder().registry(s.grpc.clone()).build().unwrap();
    let mut sub = consumer.subscribe("pay.default:9090").await.unwrap();
    assert_eq!(sub.name(), "outbound|9090||pay.default");
    let set = wait_set(&mut sub, "first instance", |s| s.len() == 1).await;
    assert_eq!(set.origin, Origin::Registry);
    let e = &set.endpoints[0];
    assert_eq!(
        (e.address.as_str(), e.port, e.weight),
        ("10.0.0.1", 9090, 30)
    );
    assert_eq!(e.health, Health::Draining);
    assert_eq!(e.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(e.locality.zone, "gz01");
    assert_eq!(e.instance_id, "10.0.0.1:9090");

    // A second target on the same client and stream; it does not exist yet.
    let mut svc = consumer.subscribe("pay.PaymentService").await.unwrap();
    let empty = wait_set(&mut svc, "unknown service", |s| {
        s.origin == Origin::Registry
    })
    .await;
    assert!(empty.is_empty());

    // An SDK instance registers: both subscriptions see it.
    let provider = Client::builder()
        .registry(s.grpc.clone())
        .app("pay")
        .address("10.0.0.2")
        .port("grpc", 9090)
        .service(ServiceSpec::new("pay.PaymentService").protocol("grpc"))
        .session_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    provider.register().await.unwrap();
    let set = wait_set(&mut sub, "second instance", |s| s.len() == 2).await;
    let e2 = set
        .endpoints
        .iter()
        .find(|e| e.address == "10.0.0.2")
        .unwrap();
    assert_eq!(e2.health, Health::Serving);
    assert!(e2.labels.is_empty(), "no labels: no envoy.lb metadata");
    let set = wait_set(&mut svc, "service resolves", |s| s.len() == 1).await;
    assert_eq!(set.endpoints[0].address, "10.0.0.2");

    // It shuts down: gone from both.
    provider.shutdown().await;
    let set = wait_set(&mut sub, "deregistered", |s| s.len() == 1).await;
    assert_eq!(set.endpoints[0].address, "10.0.0.1");
    wait_set(&mut svc, "service gone", |s| s.is_empty()).await;

    // The last instance is deleted: the resource no longer exists, an empty set.
    let r = s.delete("/v1/namespaces/default/instances/pay/10.0.0.1:9090");
    assert_eq!(r.status, 200, "{}", r.text);
    wait_set(&mut sub, "all gone", |s| s.is_empty()).await;
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_endpoints_are_served_when_no_registry_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    for ip in ["10.0.0.1", "10.0.0.2"] {
        register_http(
            &s,
            &format!(
                r#"{{"app":"pay","address":"{ip}","ports":{{"grpc":9090}},"labels":{{"v":"1"}}}}"#
            ),
        );
    }
    let first = Client::builder()
        .registry(s.grpc.clone())
        .cache_dir(cache.path())
        .build()
        .unwrap();
    let mut sub = first.subscribe("pay:9090").await.unwrap();
    let live = wait_set(&mut sub, "live set", |s| s.len() == 2).await;
    let file = meshreg_sdk::cache::DiskCache::new(cache.path()).path_of(sub.name());
    assert!(eventually(WAIT, || file.exists()), "cache file written");
    first.shutdown().await;
    let addr = s.grpc.clone();
    s.kill9();

    // A new process, the registry down: it serves what the cache holds.
    let second = Client::builder()
        .registry(addr)
        .cache_dir(cache.path())
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let mut sub = second.subscribe("pay:9090").await.unwrap();
    let cached = wait_set(&mut sub, "cached set", |s| s.origin == Origin::Cache).await;
    assert_eq!(cached.endpoints, live.endpoints);
    assert_eq!(cached.version, live.version);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subsets_pick_the_right_endpoints_and_the_sdk_survives_a_registry_restart() {
    use meshreg_sdk::lb::{LoadBalancer, Policy, SubsetFallback};
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir().unwrap();
    let ports = [
        meshreg_tests::mesh::free_port(),
        meshreg_tests::mesh::free_port(),
        meshreg_tests::mesh::free_port(),
    ];
    let s = Server::start_at(&dir.path().join("a"), ports, &[]).unwrap();
    for (i, version) in ["v1", "v2", "v2", "v3"].iter().enumerate() {
        register_http(
            &s,
            &format!(
                r#"{{"app":"shop","address":"10.2.0.{}","ports":{{"http":8080}},"labels":{{"version":"{version}"}}}}"#,
                i + 1
            ),
        );
    }
    let consumer = Client::builder()
        .registry(s.grpc.clone())
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap();
    let mut sub = consumer.subscribe("shop:8080").await.unwrap();
    let set = wait_set(&mut sub, "four instances", |s| s.len() == 4).await;

    // Subsets over what the registry sent: the labels came as envoy.lb metadata.
    let sel = |v: &str| BTreeMap::from([("version".to_string(), v.to_string())]);
    let v2 = LoadBalancer::new(Policy::RoundRobin).subset(sel("v2"), SubsetFallback::NoFallback);
    let picked: std::collections::BTreeSet<String> = (0..20)
        .map(|_| v2.pick(&set).unwrap().endpoint().address.clone())
        .collect();
    assert_eq!(
        picked.into_iter().collect::<Vec<_>>(),
        vec!["10.2.0.2", "10.2.0.3"]
    );
    let none = LoadBalancer::new(Policy::RoundRobin).subset(sel("v9"), SubsetFallback::NoFallback);
    assert!(none.pick(&set).is_none());
    let default = LoadBalancer::new(Policy::RoundRobin)
        .subset(sel("v9"), SubsetFallback::DefaultSubset(sel("v1")));
    assert_eq!(default.pick(&set).unwrap().endpoint().address, "10.2.0.1");
    // The same selector on the subscription: a live, filtered view.
    let mut only_v2 = sub.select(sel("v2"));
    let v2_set = wait_set(&mut only_v2, "the v2 view", |s| s.len() == 2).await;
    assert!(v2_set.endpoints.iter().all(|e| e.labels["version"] == "v2"));
    register_http(
        &s,
        r#"{"app":"shop","address":"10.2.0.5","ports":{"http":8080},"labels":{"version":"v1"}}"#,
    );
    wait_set(&mut sub, "a fifth instance", |s| s.len() == 5).await;
    assert_eq!(
        only_v2.current().len(),
        2,
        "a v1 instance is not in the v2 view"
    );

    // A provider registers, then the only registry node dies and comes back
    // on the same addresses with nothing stored: the provider's keepalive
    // finds its session gone and registers again, and the consumer's stream
    // reconnects and follows the new registry.
    let provider = Client::builder()
        .registry(s.grpc.clone())
        .app("sdk-app2")
        .address("10.3.0.1")
        .port("http", 8080)
        .session_ttl(Duration::from_millis(1000))
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap();
    provider.register().await.unwrap();
    s.kill9();
    let s = Server::start_at(&dir.path().join("b"), ports, &[]).unwrap();
    assert!(
        eventually(WAIT, || instances(&s, "sdk-app2").len() == 1),
        "the provider registered again with the restarted registry"
    );
    register_http(
        &s,
        r#"{"app":"shop","address":"10.2.0.9","ports":{"http":8080},"labels":{"version":"v2"}}"#,
    );
    let set = wait_set(&mut sub, "the restarted registry's view", |s| {
        s.len() == 1 && s.endpoints[0].address == "10.2.0.9"
    })
    .await;
    assert_eq!(v2.pick(&set).unwrap().endpoint().address, "10.2.0.9");
    wait_set(&mut only_v2, "the v2 view after the restart", |s| {
        s.len() == 1 && s.endpoints[0].address == "10.2.0.9"
    })
    .await;
    provider.shutdown().await;
    consumer.shutdown().await;
}
