//! Registering over HTTP and gRPC, selectors, service mapping, watch and
//! blocking queries, against the real binary.

use std::collections::HashMap;
use std::time::Duration;

use meshreg_proto::registry::v1 as pb;
use meshreg_tests::{eventually, Server};
use serde_json::Value;
use tokio_stream::StreamExt;

fn pb_instance(
    app: &str,
    addr: &str,
    labels: &[(&str, &str)],
    zone: &str,
) -> pb::register_request::Entry {
    pb::register_request::Entry {
        instance: Some(pb::Instance {
            namespace: "default".into(),
            app: app.into(),
            address: addr.into(),
            ports: HashMap::from([("grpc".to_string(), 9090)]),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            locality: Some(pb::Locality {
                region: "r1".into(),
                zone: zone.into(),
                subzone: String::new(),
            }),
            ..Default::default()
        }),
        services: vec![pb::ServiceDef {
            name: format!("{app}.Api"),
            protocol: "grpc".into(),
            ..Default::default()
        }],
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["instances"]
        .as_array()
        .expect("instances array")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_over_http_and_grpc_then_select() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();

    // HTTP, single and batch forms.
    let r = s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"labels":{"version":"v1","env":"prod"},
            "locality":{"region":"r1","zone":"z1"},"services":[{"name":"pay.Api","protocol":"http"},{"name":"common.Health"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.post(
        "/v1/namespaces/default/instances",
        r#"{"instances":[
            {"app":"pay","address":"10.0.0.2","ports":{"http":8080},"labels":{"version":"v2","env":"prod"},"locality":{"zone":"z2"},"health":"NOT_SERVING","services":[{"name":"pay.Api","protocol":"http"},{"name":"common.Health"}]},
            {"app":"pay","address":"10.0.0.3","ports":{"http":8080},"labels":{"version":"v3","env":"dev","canary":""},"locality":{"zone":"z1"},"services":[{"name":"pay.Api","protocol":"http"},{"name":"common.Health"}]}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["ids"],
        serde_json::json!(["10.0.0.2:8080", "10.0.0.3:8080"])
    );

    // gRPC.
    let mut c = s.grpc_client().await;
    let resp = c
        .register(pb::RegisterRequest {
            instances: vec![
                pb_instance("bill", "10.0.1.1", &[("version", "v1")], "z1"),
                pb_instance("bill", "10.0.1.2", &[("version", "v2")], "z2"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.ids, vec!["10.0.1.1:9090", "10.0.1.2:9090"]);

    // Selectors over HTTP: app + zone + version in (...) + serving.
    let r = s.get("/v1/namespaces/default/instances?app=pay&zone=z1&labels=version%20in%20(v1,v2,v3)&health=SERVING");
    assert_eq!(ids(&r.json()), vec!["10.0.0.1:8080", "10.0.0.3:8080"]);
    let r = s.get("/v1/namespaces/default/instances?labels=env%3Dprod,!canary");
    assert_eq!(ids(&r.json()), vec!["10.0.0.1:8080", "10.0.0.2:8080"]);
    let r = s.get("/v1/namespaces/default/instances?labels=env%20notin%20(prod)");
    // notin matches instances without the label too (Kubernetes semantics).
    assert_eq!(
        ids(&r.json()),
        vec!["10.0.1.1:9090", "10.0.1.2:9090", "10.0.0.3:8080"]
    );
    let r = s.get("/v1/namespaces/default/instances?service=bill.Api&zone=z2");
    assert_eq!(ids(&r.json()), vec!["10.0.1.2:9090"]);

    // Selectors over gRPC, with matchExpressions.
    let list = c
        .list_instances(pb::ListInstancesRequest {
            namespace: "default".into(),
            selector: Some(pb::Selector {
                match_expressions: vec![pb::LabelRequirement {
                    key: "version".into(),
                    operator: pb::label_requirement::Operator::In as i32,
                    values: vec!["v2".into()],
                }],
                ..Default::default()
            }),
            read: Some(pb::ReadOptions {
                min_revision: resp.revision,
                linearizable: true,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = list.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(got, vec!["10.0.1.2:9090", "10.0.0.2:8080"]);

    // ServiceMapping and applications.
    let r = s
        .get("/v1/namespaces/default/services/common.Health")
        .json();
    assert_eq!(r["apps"], serde_json::json!(["pay"]));
    let resolved = c
        .resolve_service(pb::ResolveServiceRequest {
            namespace: "default".into(),
            service: "bill.Api".into(),
            read: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.apps, vec!["bill"]);
    let apps = s.get("/v1/namespaces/default/apps").json();
    assert_eq!(apps["applications"][1]["name"], "pay");
    assert_eq!(apps["applications"][1]["instance_count"], 3);
    let rev = apps["applications"][1]["revisions"][0]
        .as_str()
        .unwrap()
        .to_string();
    let sr = s
        .get(&format!("/v1/namespaces/default/apps/pay/revisions/{rev}"))
        .json();
    assert_eq!(sr["service_revision"]["services"][1]["name"], "pay.Api");

    // Deregister over HTTP, then it is gone everywhere.
    let r = s.delete("/v1/namespaces/default/instances/pay/10.0.0.1:8080");
    assert_eq!(r.json()["removed"], 1);
    assert_eq!(
        s.get("/v1/namespaces/default/instances/pay/10.0.0.1:8080")
            .status,
        404
    );
    assert!(s.stop(), "clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_every_change_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let mut c = s.grpc_client().await;
    c.register(pb::RegisterRequest {
        instances: vec![pb_instance("pay", "10.0.0.1", &[("env", "prod")], "z1")],
    })
    .await
    .unwrap();
    let mut stream = c
        .watch(pb::WatchRequest {
            namespace: "default".into(),
            selector: Some(pb::Selector {
                app: "pay".into(),
                labels: "env=prod".into(),
                ..Default::default()
            }),
            from_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.resync);
    assert_eq!(first.events.len(), 1);

    // 30 changes from a second client: registrations, a move out of the
    // selector, deregistrations, and noise from another app.
    let mut w = s.grpc_client().await;
    let mut expected = Vec::new();
    for i in 2..=21 {
        let addr = format!("10.0.0.{i}");
        w.register(pb::RegisterRequest {
            instances: vec![pb_instance("pay", &addr, &[("env", "prod")], "z1")],
        })
        .await
        .unwrap();
        expected.push(("PUT", format!("{addr}:9090")));
        w.register(pb::RegisterRequest {
            instances: vec![pb_instance("other", &addr, &[("env", "prod")], "z1")],
        })
        .await
        .unwrap();
    }
    w.register(pb::RegisterRequest {
        instances: vec![pb_instance("pay", "10.0.0.5", &[("env", "dev")], "z1")],
    })
    .await
    .unwrap();
    expected.push(("DELETE", "10.0.0.5:9090".into()));
    for i in 6..=10 {
        w.deregister(pb::DeregisterRequest {
            keys: vec![pb::InstanceKey {
                namespace: "default".into(),
                app: "pay".into(),
                id: format!("10.0.0.{i}:9090"),
            }],
        })
        .await
        .unwrap();
        expected.push(("DELETE", format!("10.0.0.{i}:9090")));
    }
    let mut seen = Vec::new();
    let mut last_rev = first.revision;
    while seen.len() < expected.len() {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event in time")
            .unwrap()
            .unwrap();
        assert!(!m.resync);
        assert!(m.revision > last_rev, "revisions increase");
        last_rev = m.revision;
        for e in m.events {
            let kind = if e.kind == pb::watch_event::Kind::Put as i32 {
                "PUT"
            } else {
                "DELETE"
            };
            seen.push((kind, e.instance.unwrap().id));
        }
    }
    assert_eq!(seen, expected);
    assert!(s.stop());
}

#[test]
fn http_watch_streams_ndjson_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    for i in 1..=3 {
        let r = s.post(
            "/v1/namespaces/default/instances",
            &format!(r#"{{"app":"pay","address":"10.0.0.{i}","ports":{{"http":80}}}}"#),
        );
        assert_eq!(r.status, 200);
    }
    // Resume after revision 1: exactly the PUTs of revisions 2 and 3.
    let url = format!(
        "{}/v1/namespaces/default/watch?app=pay&from_revision=1",
        s.http
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let resp = ureq::get(&url).call().expect("watch");
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("NDJSON line");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["resync"], false);
        for e in v["events"].as_array().unwrap() {
            got.push((
                e["instance"]["mod_revision"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(got, vec![(2, "PUT".to_string()), (3, "PUT".to_string())]);
    // A live change arrives on the same stream.
    s.delete("/v1/namespaces/default/instances/pay/10.0.0.1:80");
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("live event");
    assert!(line.contains("\"DELETE\""), "{line}");
    assert!(s.stop(), "shutdown ends open watch streams");
}

#[test]
fn blocking_query_waits_for_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.0.1","ports":{"http":80}}"#,
    );
    let r = s.get("/v1/namespaces/default/instances?app=pay");
    let index = r.index.expect("x-meshreg-index header");

    // No change: returns after `wait` with the same index.
    let r = s.get(&format!(
        "/v1/namespaces/default/instances?app=pay&index={index}&wait=300ms"
    ));
    assert_eq!(r.index, Some(index));

    // A change while blocked: returns with a higher index and the new state.
    let http = s.http.clone();
    let waiter = std::thread::spawn(move || {
        let mut resp = ureq::get(format!(
            "{http}/v1/namespaces/default/instances?app=pay&index={index}&wait=30s"
        ))
        .call()
        .unwrap();
        let idx: u64 = resp.headers()["x-meshreg-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (idx, resp.body_mut().read_to_string().unwrap())
    });
    std::thread::sleep(Duration::from_millis(200));
    s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.0.2","ports":{"http":80}}"#,
    );
    let (idx, body) = waiter.join().unwrap();
    assert!(idx > index);
    assert!(body.contains("10.0.0.2"), "{body}");
    assert!(eventually(Duration::from_secs(5), || s
        .get("/metrics")
        .text
        .contains("meshreg_revision 2")));
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.get("/readyz").status, 200);
}
