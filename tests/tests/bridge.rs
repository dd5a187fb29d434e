//! `meshreg-bridge` between two meshregs: A registers natively, the bridge
//! imports A over MCP, and B imports the bridge over MCP. The bridge
//! re-serves what it imported to B's meshreg sink (which a `meshreg server`
//! would not: the loop guard), creates the namespaces its sources map to,
//! refuses ADS until its sources have synced (so B never sees an empty
//! bridge and keeps nothing stale), and removes its temporary state on exit.
//! (The ZooKeeper → bridge → meshreg path is in
//! tests/interop/test_bridge.py, against a real ZooKeeper.)

use std::path::Path;
use std::time::Duration;

use meshreg_tests::cluster::free_port;
use meshreg_tests::{eventually, Server};
use serde_json::Value;

fn instances(s: &Server, ns: &str, q: &str) -> Vec<Value> {
    s.get(&format!("/v1/namespaces/{ns}/instances{q}")).json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn source(s: &Server, name: &str) -> Value {
    let st = s.get("/v1/sources").json();
    st["sources"]
        .as_array()
        .and_then(|all| all.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn temp_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_meshreg_imports_a_meshreg_through_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    // A is started only later, on ports known now.
    let pa = [free_port(), free_port(), free_port()];
    let bridge_cfg = dir.path().join("bridge.toml");
    std::fs::write(
        &bridge_cfg,
        format!(
            "[[sources]]\nname = \"upstream\"\nkind = \"mcp\"\naddress = \"127.0.0.1:{}\"\nnamespaces = {{ team-b = \"team-c\" }}\n",
            pa[1]
        ),
    )
    .unwrap();
    let bridge_dir = dir.path().join("bridge");
    let bridge = Server::start_bridge(&bridge_dir, &bridge_cfg, &[]).unwrap();
    let state_dirs = temp_dirs(&bridge_dir);
    assert!(
        state_dirs.len() == 1 && state_dirs[0].starts_with("meshreg-bridge-"),
        "its state is in a temporary directory: {state_dirs:?}"
    );

    let b_cfg = dir.path().join("b.toml");
    let bridge_grpc = bridge.grpc.trim_start_matches("http://");
    std::fs::write(
        &b_cfg,
        format!("[[sources]]\nname = \"bridge\"\naddress = \"{bridge_grpc}\"\n"),
    )
    .unwrap();
    let b = Server::start(
        &dir.path().join("b"),
        &["--config", b_cfg.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(b.post("/v1/namespaces", r#"{"name":"team-c"}"#).status, 201);

    // The bridge cannot reach A: it has synced nothing and refuses B.
    let refused = eventually(Duration::from_secs(20), || {
        source(&b, "bridge")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("has not completed a first sync"))
    });
    assert!(refused, "B: {}", source(&b, "bridge"));
    assert!(source(&bridge, "upstream")["last_sync_ms"].is_null());
    // The namespace the source maps to was created at start.
    let created = eventually(Duration::from_secs(10), || {
        bridge
            .get("/v1/namespaces")
            .json()
            .to_string()
            .contains(r#""team-c""#)
    });
    assert!(created, "{}", bridge.get("/v1/namespaces").json());

    let a = Server::start_at(&dir.path().join("a"), pa, &[]).unwrap();
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let body = format!(
            r#"{{"app":"pay","address":"{ip}","ports":{{"grpc":9090}},"labels":{{"version":"v1"}},"services":[{{"name":"pay.Api","protocol":"grpc"}}]}}"#
        );
        assert_eq!(
            a.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    }
    assert_eq!(a.post("/v1/namespaces", r#"{"name":"team-b"}"#).status, 201);
    let bill = r#"{"app":"bill","address":"10.0.9.1","ports":{"http":80}}"#;
    assert_eq!(a.post("/v1/namespaces/team-b/instances", bill).status, 200);

    // Both hops: A → bridge (provenance "upstream") → B (provenance "bridge").
    let arrived = eventually(Duration::from_secs(30), || {
        instances(&b, "default", "?app=pay").len() == 2
            && instances(&b, "team-c", "?app=bill").len() == 1
    });
    assert!(
        arrived,
        "B: {:?} {:?}\nB's source: {}\nbridge's source: {}",
        instances(&b, "default", ""),
        instances(&b, "team-c", ""),
        source(&b, "bridge"),
        source(&bridge, "upstream")
    );
    let on_bridge = instances(&bridge, "default", "?app=pay");
    assert_eq!(on_bridge[0]["provenance"]["source"], "upstream");
    let pay = instances(&b, "default", "?app=pay");
    assert_eq!(pay[0]["provenance"]["source"], "bridge");
    assert_eq!(pay[0]["labels"]["version"], "v1");
    let resolved = b.get("/v1/namespaces/default/services/pay.Api").json();
    assert_eq!(resolved["apps"], serde_json::json!(["pay"]));
    let st = source(&bridge, "upstream");
    assert_eq!(st["state"], "synced", "{st}");
    let st = source(&b, "bridge");
    assert_eq!(st["state"], "synced", "{st}");
    assert_eq!(st["quarantined"], serde_json::json!([]), "{st}");

    // A change follows through both hops.
    assert_eq!(
        a.delete("/v1/namespaces/default/instances/pay/10.0.0.1:9090")
            .status,
        200
    );
    let gone = eventually(Duration::from_secs(20), || {
        let ids: Vec<Value> = instances(&b, "default", "?app=pay")
            .iter()
            .map(|i| i["id"].clone())
            .collect();
        ids == [Value::from("10.0.0.2:9090")]
    });
    assert!(gone, "B: {:?}", instances(&b, "default", "?app=pay"));

    // Stopping the bridge removes its temporary state; B keeps what it
    // imported while its source is away.
    assert!(bridge.stop(), "the bridge exits cleanly");
    assert_eq!(temp_dirs(&bridge_dir), Vec::<String>::new());
    let away = eventually(Duration::from_secs(20), || {
        source(&b, "bridge")["state"] == "error"
    });
    assert!(away, "B: {}", source(&b, "bridge"));
    assert_eq!(instances(&b, "default", "?app=pay").len(), 1);
}
