//! One meshreg consuming another's ServiceEntries over MCP-over-xDS: the
//! records appear with their provenance, follow deregistrations (state of
//! the world per source), never touch native registrations, and records for
//! an unknown namespace are quarantined and reported in `/v1/sources`;
//! two sources with the same instance are merged by priority.

use std::time::Duration;

use meshreg_tests::{eventually, Server};
use serde_json::Value;

fn instances(s: &Server, q: &str) -> Vec<Value> {
    s.get(&format!("/v1/namespaces/default/instances{q}"))
        .json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_meshreg_imports_another_meshreg_over_mcp() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"), &[]).unwrap();
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let body = format!(
            r#"{{"app":"pay","address":"{ip}","ports":{{"grpc":9090}},"labels":{{"version":"v1"}},"locality":{{"region":"r","zone":"z1"}},"weight":300,"services":[{{"name":"pay.Api","protocol":"grpc"}}]}}"#
        );
        assert_eq!(
            a.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    }
    assert_eq!(a.post("/v1/namespaces", r#"{"name":"team-b"}"#).status, 201);
    let r = a.post(
        "/v1/namespaces/team-b/instances",
        r#"{"app":"bill","address":"10.0.9.1","ports":{"http":80}}"#,
    );
    assert_eq!(r.status, 200);

    let cfg = dir.path().join("b.toml");
    let upstream = a.grpc.trim_start_matches("http://");
    std::fs::write(
        &cfg,
        format!("[[sources]]\nname = \"upstream\"\naddress = \"{upstream}\"\n"),
    )
    .unwrap();
    let b = Server::start(&dir.path().join("b"), &["--config", cfg.to_str().unwrap()]).unwrap();
    let native = r#"{"app":"pay","address":"10.1.0.1","ports":{"grpc":9090}}"#;
    assert_eq!(
        b.post("/v1/namespaces/default/instances", native).status,
        200
    );

    let imported = eventually(Duration::from_secs(20), || {
        instances(&b, "?app=pay").len() == 3
    });
    assert!(imported, "B: {:?}", instances(&b, "?app=pay"));
    let one = instances(&b, "?app=pay&zone=z1");
    assert_eq!(one.len(), 2, "locality and labels came along: {one:?}");
    assert_eq!(one[0]["provenance"]["source"], "upstream");
    assert_eq!(one[0]["weight"], 300);
    assert_eq!(one[0]["labels"]["version"], "v1");
    let resolved = b.get("/v1/namespaces/default/services/pay.Api").json();
    assert_eq!(
        resolved["apps"],
        serde_json::json!(["pay"]),
        "services came along"
    );

    let st = b.get("/v1/sources").json();
    let src = &st["sources"][0];
    assert_eq!(src["name"], "upstream");
    assert_eq!(src["state"], "synced");
    let q = src["quarantined"].to_string();
    assert!(q.contains("team-b") && q.contains("does not exist"), "{q}");

    // The same through `meshreg ctl sources`.
    let out = std::process::Command::new(meshreg_tests::meshreg_bin())
        .args(["ctl", "sources", "--http", &b.http])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("upstream") && text.contains("synced"),
        "{text}"
    );
    assert!(text.contains("quarantined team-b/bill"), "{text}");

    // A deregistration upstream removes the record downstream, only it.
    assert_eq!(
        a.delete("/v1/namespaces/default/instances/pay/10.0.0.1:9090")
            .status,
        200
    );
    let gone = eventually(Duration::from_secs(20), || {
        instances(&b, "?app=pay").len() == 2
    });
    assert!(gone, "B: {:?}", instances(&b, "?app=pay"));
    let ids: Vec<String> = instances(&b, "?app=pay")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec!["10.0.0.2:9090", "10.1.0.1:9090"],
        "the native instance stays"
    );
}

/// Two meshregs importing from each other: each gets the other's native
/// instances, nothing bounces back (loop guard), and a deregistration
/// settles everywhere.
#[test]
fn two_meshregs_importing_from_each_other_do_not_loop() {
    use meshreg_tests::cluster::free_port;
    let dir = tempfile::tempdir().unwrap();
    let pa = [free_port(), free_port(), free_port()];
    let pb = [free_port(), free_port(), free_port()];
    let cfg = |name: &str, peer: u16| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!("[[sources]]\nname = \"peer\"\naddress = \"127.0.0.1:{peer}\"\n"),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (ca, cb) = (cfg("a", pb[1]), cfg("b", pa[1]));
    let a = Server::start_at(&dir.path().join("a"), pa, &["--config", &ca]).unwrap();
    let b = Server::start_at(&dir.path().join("b"), pb, &["--config", &cb]).unwrap();
    let reg = |s: &Server, app: &str, ip: &str| {
        let body = format!(r#"{{"app":"{app}","address":"{ip}","ports":{{"grpc":9090}}}}"#);
        assert_eq!(
            s.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    };
    reg(&a, "pay", "10.0.0.1");
    reg(&b, "bill", "10.1.0.1");
    let both = |s: &Server| instances(s, "").len() == 2;
    assert!(
        eventually(Duration::from_secs(20), || both(&a) && both(&b)),
        "A: {:?}\nB: {:?}",
        instances(&a, ""),
        instances(&b, "")
    );
    // Stable: nothing re-imported, no duplicate, no churn.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(both(&a) && both(&b));
    // Neither side was ever sent its own records back: nothing collided.
    for s in [&a, &b] {
        let st = s.get("/v1/sources").json();
        assert_eq!(st["sources"][0]["state"], "synced");
        assert_eq!(
            st["sources"][0]["quarantined"],
            serde_json::json!([]),
            "{st}"
        );
    }
    let imported_pay = instances(&b, "?app=pay");
    assert_eq!(imported_pay[0]["provenance"]["source"], "peer");
    assert!(
        instances(&a, "?app=pay")[0]["provenance"].is_null(),
        "A's own instance stays native"
    );
    // A deregistration settles on both sides.
    assert_eq!(
        a.delete("/v1/namespaces/default/instances/pay/10.0.0.1:9090")
            .status,
        200
    );
    assert!(eventually(Duration::from_secs(20), || instances(&a, "")
        .len()
        == 1
        && instances(&b, "").len() == 1));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        instances(&a, "?app=pay").len(),
        0,
        "the deleted instance did not come back"
    );
}

/// Two MCP sources exporting the same instance (namespace, app,
/// address:port): the higher priority backs it, the other's record is kept
/// shadowed and shown in `/v1/sources`, and takes over when the winner's
/// record goes away upstream.
#[test]
fn the_higher_priority_source_wins_and_the_other_takes_over_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let low = Server::start(&dir.path().join("low"), &[]).unwrap();
    let high = Server::start(&dir.path().join("high"), &[]).unwrap();
    for (s, from) in [(&low, "low"), (&high, "high")] {
        let body = format!(
            r#"{{"app":"pay","address":"10.0.0.1","ports":{{"grpc":9090}},"labels":{{"from":"{from}"}}}}"#
        );
        assert_eq!(
            s.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    }
    let cfg = dir.path().join("sink.toml");
    let addr = |s: &Server| s.grpc.trim_start_matches("http://").to_string();
    std::fs::write(
        &cfg,
        format!(
            "[[sources]]\nname = \"low\"\naddress = \"{}\"\npriority = 1\n\n\
             [[sources]]\nname = \"high\"\naddress = \"{}\"\npriority = 5\n",
            addr(&low),
            addr(&high)
        ),
    )
    .unwrap();
    let sink = Server::start(
        &dir.path().join("sink"),
        &["--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let source = |name: &str| -> Value {
        let st = sink.get("/v1/sources").json();
        st["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    let settled = eventually(Duration::from_secs(20), || {
        let one = instances(&sink, "?app=pay");
        one.len() == 1
            && one[0]["provenance"]["source"] == "high"
            && source("low")["shadowed"] == 1
            && source("high")["owned"] == 1
    });
    assert!(
        settled,
        "sink: {:?}\nsources: {}",
        instances(&sink, "?app=pay"),
        sink.get("/v1/sources").json()
    );
    assert_eq!(instances(&sink, "?app=pay")[0]["labels"]["from"], "high");
    let low_status = source("low");
    assert_eq!(low_status["priority"], 1);
    assert_eq!(low_status["owned"], 0);
    assert_eq!(
        low_status["quarantined"],
        serde_json::json!([]),
        "shadowed is not an error"
    );
    assert_eq!(
        low_status["shadowed_records"][0][1],
        "shadowed by source \"high\" (priority 5)"
    );

    // The winner's record goes away upstream: the shadowed one takes over.
    assert_eq!(
        high.delete("/v1/namespaces/default/instances/pay/10.0.0.1:9090")
            .status,
        200
    );
    let promoted = eventually(Duration::from_secs(20), || {
        let one = instances(&sink, "?app=pay");
        one.len() == 1 && one[0]["provenance"]["source"] == "low"
    });
    assert!(promoted, "sink: {:?}", instances(&sink, "?app=pay"));
    assert_eq!(instances(&sink, "?app=pay")[0]["labels"]["from"], "low");
    assert_eq!(source("low")["owned"], 1);
    assert_eq!(source("low")["shadowed"], 0);
}
