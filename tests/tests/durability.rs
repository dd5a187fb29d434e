//! Sessions, restarts and crash safety against the real binary.

use std::collections::HashMap;
use std::time::Duration;

use meshreg_proto::registry::v1 as pb;
use meshreg_tests::{eventually, Server};
use tokio_stream::StreamExt;

fn entry(app: &str, addr: &str, session: u64) -> pb::register_request::Entry {
    pb::register_request::Entry {
        instance: Some(pb::Instance {
            namespace: "default".into(),
            app: app.into(),
            address: addr.into(),
            ports: HashMap::from([("http".to_string(), 80)]),
            session,
            ..Default::default()
        }),
        services: vec![],
    }
}

fn count(s: &Server, app: &str) -> usize {
    s.get(&format!("/v1/namespaces/default/instances?app={app}"))
        .json()["instances"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn session_that_stops_keeping_alive_loses_its_instances() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let mut c = s.grpc_client().await;
    let live = c
        .grant_session(pb::GrantSessionRequest { ttl_ms: 1000 })
        .await
        .unwrap()
        .into_inner();
    let dead = c
        .grant_session(pb::GrantSessionRequest { ttl_ms: 1000 })
        .await
        .unwrap()
        .into_inner();
    c.register(pb::RegisterRequest {
        instances: vec![
            entry("live", "10.0.0.1", live.session_id),
            entry("dead", "10.0.0.2", dead.session_id),
            entry("persistent", "10.0.0.3", 0),
        ],
    })
    .await
    .unwrap();

    // Keep `live` alive over the keepalive stream, every 250 ms.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let id = live.session_id;
    let pinger = tokio::spawn(async move {
        loop {
            if tx
                .send(pb::KeepAliveRequest { session_id: id })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(r)) = replies.next().await {
            assert_eq!(r.ttl_ms, 1000);
            n += 1;
        }
        n
    });

    let gone = tokio::task::spawn_blocking({
        let http = s.http.clone();
        move || {
            eventually(Duration::from_secs(10), || {
                let body = ureq::get(format!("{http}/v1/namespaces/default/instances?app=dead"))
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_to_string()
                    .unwrap();
                body.contains("\"instances\":[]")
            })
        }
    })
    .await
    .unwrap();
    assert!(gone, "the expired session's instance disappears");
    // Two more TTLs: the kept-alive and the persistent instances stay.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(count(&s, "live"), 1);
    assert_eq!(count(&s, "persistent"), 1);

    // A keepalive for the expired session is NOT_FOUND: the client must re-register.
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    tx2.send(pb::KeepAliveRequest {
        session_id: dead.session_id,
    })
    .await
    .unwrap();
    let mut r2 = c
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let err = r2.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("register again"),
        "{}",
        err.message()
    );
    // Registering into the expired session is NOT_FOUND too, and changes nothing.
    let err = c
        .register(pb::RegisterRequest {
            instances: vec![entry("dead", "10.0.0.9", dead.session_id)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(count(&s, "dead"), 0);

    // HTTP keepalive of the live session works; of the dead one is 404.
    assert_eq!(
        s.put(&format!("/v1/sessions/{}/keepalive", live.session_id))
            .status,
        200
    );
    assert_eq!(
        s.put(&format!("/v1/sessions/{}/keepalive", dead.session_id))
            .status,
        404
    );

    pinger.abort();
    let acked = tokio::time::timeout(Duration::from_secs(10), acks)
        .await
        .unwrap()
        .unwrap();
    assert!(acked >= 8, "keepalives were acknowledged ({acked})");
    // Revoking the live session removes its instance at once.
    let r = c
        .revoke_session(pb::RevokeSessionRequest {
            session_id: live.session_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.removed_instances, 1);
    assert_eq!(count(&s, "live"), 0);
    assert!(s
        .get("/metrics")
        .text
        .contains("meshreg_sessions_expired_total 1"));
}

#[test]
fn persistent_instances_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    for i in 1..=20 {
        let r = s.post(
            "/v1/namespaces/default/instances",
            &format!(r#"{{"app":"pay","address":"10.0.0.{i}","ports":{{"http":80}},"labels":{{"n":"{i}"}}}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(s.post("/v1/namespaces", r#"{"name":"team-a"}"#).status, 201);
    let before = s.get("/v1/namespaces/default/instances").json();
    assert!(s.stop(), "clean shutdown on Ctrl-C");

    let s = Server::start(dir.path(), &[]).unwrap();
    let after = s.get("/v1/namespaces/default/instances").json();
    assert_eq!(before, after);
    let r = s
        .get("/v1/namespaces/default/instances?labels=n%20in%20(3,7)")
        .json();
    assert_eq!(
        r["instances"].as_array().unwrap().len(),
        2,
        "index rebuilt after restart"
    );
    assert!(s.get("/v1/namespaces").text.contains("team-a"));
    // New writes continue the revision sequence.
    let r = s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.1.1","ports":{"http":80}}"#,
    );
    assert!(r.json()["revision"].as_u64().unwrap() > before["revision"].as_u64().unwrap());
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshot often, so the restart goes through snapshot + log replay.
    let cfg = dir.path().join("meshreg.toml");
    std::fs::write(
        &cfg,
        "[raft]\nsnapshot_logs_since_last = 50\nlogs_kept_after_snapshot = 10\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let cfg_s = cfg.to_str().unwrap().to_string();
    let s = Server::start(&data, &["--config", &cfg_s]).unwrap();

    // Writers on 4 threads; every write that got a 200 is recorded.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let http = s.http.clone();
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..60 {
                let body = format!(
                    r#"{{"app":"app{t}","id":"i{i}","address":"10.{t}.0.1","ports":{{"http":80}}}}"#
                );
                let r = ureq::post(format!("{http}/v1/namespaces/default/instances"))
                    .header("content-type", "application/json")
                    .send(&body);
                if let Ok(r) = r {
                    if r.status() == 200 {
                        acked.lock().unwrap().push((t, i));
                    }
                }
            }
        }));
    }
    for th in threads {
        th.join().unwrap();
    }
    // kill -9 immediately after the last acknowledgement.
    s.kill9();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 240);

    let s = Server::start(&data, &["--config", &cfg_s]).unwrap();
    let all = s.get("/v1/namespaces/default/instances").json();
    let present: std::collections::HashSet<(String, String)> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["app"].as_str().unwrap().to_string(),
                i["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (t, i) in acked {
        assert!(
            present.contains(&(format!("app{t}"), format!("i{i}"))),
            "acknowledged app{t}/i{i} lost"
        );
    }
    assert!(
        s.get("/metrics")
            .text
            .contains("meshreg_raft_snapshot_index"),
        "metrics exported"
    );
}

#[test]
fn restart_with_another_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    assert!(s.stop());
    let err = Server::start(dir.path(), &["--node-id", "7"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("node_id 7 is not a member"), "{err}");
    // The right id still starts, with the data intact.
    let s = Server::start(dir.path(), &["--node-id", "1"]).unwrap();
    assert_eq!(s.get("/readyz").status, 200);
}

#[test]
fn health_names_are_case_insensitive_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let r = s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.0.1","ports":{"http":80},"health":"warning"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .get("/v1/namespaces/default/instances?health=WARNING")
        .json();
    assert_eq!(r["instances"][0]["health"], "WARNING");
}

/// Under a steady write load the log is compacted into snapshots: the
/// entries kept stay bounded by the snapshot interval plus the entries kept
/// behind a snapshot, however many writes there were.
#[test]
fn log_compaction_keeps_the_log_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("meshreg.toml");
    std::fs::write(
        &cfg,
        "[raft]\nsnapshot_logs_since_last = 100\nlogs_kept_after_snapshot = 20\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--config", cfg.to_str().unwrap()]).unwrap();
    for i in 0..600 {
        let body = format!(
            r#"{{"app":"pay","id":"i{}","address":"10.0.0.1","ports":{{"http":80}},"labels":{{"n":"{i}"}}}}"#,
            i % 50
        );
        assert_eq!(
            s.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    }
    let ok = eventually(Duration::from_secs(20), || {
        let st = s.get("/v1/cluster").json();
        let last = st["last_log_index"].as_u64().unwrap();
        let purged = st["purged_index"].as_u64().unwrap();
        last > 600 && last - purged <= 100 + 20 + 10
    });
    assert!(ok, "log not compacted: {}", s.get("/v1/cluster").text);
    // And the state is intact after a restart from the snapshot.
    assert!(s.stop());
    let s = Server::start(&data, &["--config", cfg.to_str().unwrap()]).unwrap();
    let n = s.get("/v1/namespaces/default/instances?app=pay").json()["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 50);
}
