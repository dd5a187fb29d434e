//! Bad input: each case gets a clear error naming the field, and nothing
//! stored changes.

use std::collections::HashMap;

use meshreg_proto::registry::v1 as pb;
use meshreg_tests::Server;
use serde_json::Value;

const GOOD: &str =
    r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"labels":{"env":"prod"}}"#;

fn snapshot(s: &Server) -> Value {
    let mut v = s.get("/v1/namespaces/default/instances").json();
    v.as_object_mut().unwrap().remove("revision");
    v
}

#[test]
fn http_bad_input_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    assert_eq!(s.post("/v1/namespaces/default/instances", GOOD).status, 200);
    let before = snapshot(&s);
    let big = "x".repeat(17 * 1024);
    let cases: Vec<(String, &str, u16, &str)> = vec![
        ("{not json".into(), "/v1/namespaces/default/instances", 400, "body"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":"80"}}"#.into(), "/v1/namespaces/default/instances", 400, "ports.http"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"weight":"heavy"}"#.into(), "/v1/namespaces/default/instances", 400, "weight"),
        (r#"{"app":"pay","address":"999.0.0.1","ports":{"http":8080}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].address"),
        (r#"{"app":"pay","address":"bad_host!","ports":{"http":8080}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].address"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":0}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].ports[\"http\"]"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":65536}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].ports[\"http\"]"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].ports"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"labels":{"-bad":"x"}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].labels[\"-bad\"]"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"labels":{"env":"has space"}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].labels[\"env\"]"),
        (format!(r#"{{"app":"pay","address":"10.0.0.1","ports":{{"http":8080}},"metadata":{{"blob":"{big}"}}}}"#), "/v1/namespaces/default/instances", 400, "instances[0].metadata"),
        (r#"{"app":"p a y","address":"10.0.0.1","ports":{"http":8080}}"#.into(), "/v1/namespaces/default/instances", 400, "instances[0].app"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"health":"GREAT"}"#.into(), "/v1/namespaces/default/instances", 400, "health"),
        (r#"{"app":"pay","address":"10.0.0.1","ports":{"http":8080},"unknown_field":1}"#.into(), "/v1/namespaces/default/instances", 400, "unknown_field"),
        (GOOD.into(), "/v1/namespaces/nosuchns/instances", 404, ""),
        (r#"{"app":"pay","address":"10.0.0.9","ports":{"http":8080},"session":424242}"#.into(), "/v1/namespaces/default/instances", 404, ""),
        // A batch with one bad entry registers none of them.
        (r#"{"instances":[{"app":"ok","address":"10.0.0.5","ports":{"http":1}},{"app":"pay","address":"10.0.0.6","ports":{"http":70000}}]}"#.into(), "/v1/namespaces/default/instances", 400, "instances[1].ports[\"http\"]"),
    ];
    for (body, path, status, field) in cases {
        let r = s.post(path, &body);
        assert_eq!(r.status, status, "{path} {body:.100} → {}", r.text);
        let err = &r.json()["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.text
        );
        if !field.is_empty() {
            let got = err["field"].as_str().unwrap_or_default();
            assert!(
                got == field || got.ends_with(field),
                "want field {field}, got {got} in {}",
                r.text
            );
        }
        assert_eq!(
            snapshot(&s),
            before,
            "stored data changed after {body:.100}"
        );
    }
    // A batch too large for one log entry is refused as a whole.
    let meta = "m".repeat(300);
    let many: Vec<String> = (0..5000)
        .map(|i| format!(r#"{{"app":"bulk","id":"b{i}","address":"10.9.{}.{}","ports":{{"http":80}},"metadata":{{"m":"{meta}"}}}}"#, i / 250, i % 250))
        .collect();
    let r = s.post(
        "/v1/namespaces/default/instances",
        &format!(r#"{{"instances":[{}]}}"#, many.join(",")),
    );
    assert_eq!(r.status, 400, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.json()["error"]["field"], "instances");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("split the batch"));
    assert_eq!(snapshot(&s), before);

    // Bad queries and paths.
    assert_eq!(
        s.get("/v1/namespaces/default/instances?labels=version%20in%20v1")
            .status,
        400
    );
    assert_eq!(
        s.get("/v1/namespaces/default/instances?health=GREAT")
            .status,
        400
    );
    assert_eq!(
        s.get("/v1/namespaces/default/instances?bogus=1").status,
        400
    );
    assert_eq!(
        s.get("/v1/namespaces/default/instances?index=1&wait=soon")
            .status,
        400
    );
    assert_eq!(s.get("/v1/namespaces/nosuchns/instances").status, 404);
    assert_eq!(s.put("/v1/sessions/abc/keepalive").status, 400);
    assert_eq!(s.put("/v1/sessions/777/keepalive").status, 404);
    assert_eq!(s.post("/v1/sessions", r#"{"ttl_ms": 5}"#).status, 400);
    assert_eq!(s.delete("/v1/namespaces/default").status, 409);
    let r = s.get("/v1/nothing/here");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing/here"),
        "{}",
        r.text
    );
    let r = s.put("/v1/namespaces");
    assert_eq!(r.status, 405);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PUT"),
        "{}",
        r.text
    );
    // Parameters a route does not take are named, not silently ignored.
    let r = s.get("/v1/namespaces?app=x");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "app");
    assert_eq!(
        s.get("/v1/namespaces/default/apps?labels=a%3Db").status,
        400
    );
    assert_eq!(snapshot(&s), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_bad_input_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    assert_eq!(s.post("/v1/namespaces/default/instances", GOOD).status, 200);
    let before = snapshot(&s);
    let mut c = s.grpc_client().await;
    let base = || pb::Instance {
        namespace: "default".into(),
        app: "pay".into(),
        address: "10.0.0.2".into(),
        ports: HashMap::from([("grpc".to_string(), 9090)]),
        ..Default::default()
    };
    let cases: Vec<(pb::Instance, tonic::Code, &str)> = vec![
        (
            pb::Instance {
                ports: HashMap::from([("grpc".to_string(), 70000)]),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "ports",
        ),
        (
            pb::Instance {
                address: "1.2.3".into(),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "address",
        ),
        (
            pb::Instance {
                health: 42,
                ..base()
            },
            tonic::Code::InvalidArgument,
            "health",
        ),
        (
            pb::Instance {
                weight: 2_000_000,
                ..base()
            },
            tonic::Code::InvalidArgument,
            "weight",
        ),
        (
            pb::Instance {
                labels: HashMap::from([("Bad Key".to_string(), "v".to_string())]),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "labels",
        ),
        (
            pb::Instance {
                namespace: "ghost".into(),
                ..base()
            },
            tonic::Code::NotFound,
            "namespace",
        ),
        (
            pb::Instance {
                session: 99,
                ..base()
            },
            tonic::Code::NotFound,
            "session",
        ),
        (
            pb::Instance {
                app: String::new(),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "app",
        ),
    ];
    for (inst, code, word) in cases {
        let err = c
            .register(pb::RegisterRequest {
                instances: vec![pb::register_request::Entry {
                    instance: Some(inst.clone()),
                    services: vec![],
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{inst:?}: {err:?}");
        assert!(
            err.message().contains(word),
            "{word} not named in {:?}",
            err.message()
        );
        assert_eq!(snapshot(&s), before);
    }
    // Missing instance, empty request, bad selector, unknown enum, too-small TTL.
    let err = c
        .register(pb::RegisterRequest {
            instances: vec![pb::register_request::Entry {
                instance: None,
                services: vec![],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("instances[0].instance"));
    let err = c
        .register(pb::RegisterRequest { instances: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .list_instances(pb::ListInstancesRequest {
            namespace: "default".into(),
            selector: Some(pb::Selector {
                match_expressions: vec![pb::LabelRequirement {
                    key: "k".into(),
                    operator: 9,
                    values: vec![],
                }],
                ..Default::default()
            }),
            read: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("operator"));
    let err = c
        .grant_session(pb::GrantSessionRequest { ttl_ms: 10 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ttl_ms"));
    let err = c
        .revoke_session(pb::RevokeSessionRequest { session_id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .watch(pb::WatchRequest {
            namespace: "ghost".into(),
            selector: None,
            from_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Garbage bytes on the HTTP/2 port do not hurt the server.
    {
        use std::io::Write;
        let addr = s.grpc.trim_start_matches("http://").to_string();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        let _ = sock.write_all(b"\x00\xff garbage that is not HTTP/2 \r\n\r\n");
    }
    assert_eq!(snapshot(&s), before);
    c.list_namespaces(pb::ListNamespacesRequest { read: None })
        .await
        .unwrap();
}
