//! Multi-process fault tests of 3-node clusters on loopback: formation and
//! forwarding, kill -9 of the leader under load, follower catch-up by log
//! and by snapshot, leader isolation, sessions across a failover, and a
//! planned leadership transfer under load.
//! Workloads are recorded and checked for linearizability.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshreg_tests::cluster::TestCluster;
use meshreg_tests::linearizability::{check, Op, Outcome, Recorder};
use meshreg_tests::{eventually, meshreg_bin, Server};
use serde_json::Value;

/// Short timeouts so faults resolve quickly in tests.
const CONFIG: &str = "write_timeout_ms = 3000\nmin_revision_wait_ms = 3000\n";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn instance_body(key: &str, value: &str) -> String {
    format!(
        r#"{{"app":"lin","id":"{key}","address":"10.0.0.1","ports":{{"http":80}},"metadata":{{"v":"{value}"}}}}"#
    )
}

/// Outcome of a write: a refused connection certainly had no effect; a
/// timeout or a 5xx (the forward may have reached the leader) might have.
fn write_outcome(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Outcome {
    match r {
        Ok(resp) if resp.status() == 200 => Outcome::Ok,
        Ok(resp) if resp.status().is_client_error() => Outcome::Failed,
        Err(ureq::Error::ConnectionFailed) => Outcome::Failed,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

/// One client op against `base` (an HTTP URL), recorded.
fn op(rec: &Recorder, client: usize, base: &str, key: &str, kind: u32, seq: u64) {
    let a = agent();
    let url = format!("{base}/v1/namespaces/default/instances/lin/{key}");
    match kind {
        0..=4 => {
            let value = format!("c{client}-{seq}");
            let t = rec.begin(client, Op::put(key, &value));
            let r = a
                .post(format!("{base}/v1/namespaces/default/instances"))
                .header("content-type", "application/json")
                .send(&instance_body(key, &value));
            rec.end(t, write_outcome(r));
        }
        5 => {
            let t = rec.begin(client, Op::delete(key));
            rec.end(t, write_outcome(a.delete(&url).call()));
        }
        _ => {
            let t = rec.begin(client, Op::get(key));
            let outcome = match a.get(format!("{url}?linearizable=true")).call() {
                Ok(mut resp) if resp.status() == 200 => {
                    let v: Value =
                        serde_json::from_str(&resp.body_mut().read_to_string().unwrap_or_default())
                            .unwrap_or_default();
                    Outcome::Read(v["instance"]["metadata"]["v"].as_str().map(String::from))
                }
                Ok(resp) if resp.status() == 404 => Outcome::Read(None),
                _ => Outcome::Failed,
            };
            rec.end(t, outcome);
        }
    }
}

/// Runs `clients` threads of random puts, deletes and linearizable gets on
/// `keys` keys against random nodes until `stop` is set.
fn workload(
    rec: &Recorder,
    urls: Vec<String>,
    clients: usize,
    keys: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let rec = rec.clone();
            let urls = urls.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let base = &urls[rng.usize(..urls.len())];
                    let key = format!("k{}", rng.usize(..keys));
                    op(&rec, c, base, &key, rng.u32(0..10), seq);
                }
            })
        })
        .collect()
}

/// Final linearizable reads of every key from node `base`, recorded, so a
/// lost acknowledged write shows up in the check.
fn final_reads(rec: &Recorder, base: &str, keys: usize) {
    for k in 0..keys {
        op(rec, 1000, base, &format!("k{k}"), 9, 0);
    }
}

/// All running nodes hold the same instances once caught up.
fn assert_converged(c: &TestCluster) {
    let ok = eventually(Duration::from_secs(20), || {
        let views: Vec<Value> = c
            .live()
            .iter()
            .map(|id| {
                let mut v = c.node(*id).get("/v1/namespaces/default/instances").json();
                v.as_object_mut().map(|o| o.remove("revision"));
                v
            })
            .collect();
        views.windows(2).all(|w| w[0] == w[1])
    });
    assert!(ok, "nodes did not converge to the same state");
}

fn urls(c: &TestCluster) -> Vec<String> {
    c.live().iter().map(|id| c.node(*id).http.clone()).collect()
}

/// The leader of a 3-node cluster and its two followers.
fn leader_and_followers(c: &TestCluster) -> (u64, u64, u64) {
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    (leader, follower, other)
}

/// `meshreg ctl` with `args`; (success, stdout, stderr).
fn ctl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(meshreg_bin())
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Grants `n` sessions of `ttl_ms` through `node` and registers an instance
/// of app `ka` on each (ids `e0`, `e1`, ...); returns the session ids.
fn ephemeral_instances(node: &Server, n: usize, ttl_ms: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let r = node.post("/v1/sessions", &format!(r#"{{"ttl_ms": {ttl_ms}}}"#));
            assert_eq!(r.status, 201, "{}", r.text);
            let sid = r.json()["session_id"].as_u64().unwrap();
            let body = format!(
                r#"{{"app":"ka","id":"e{i}","address":"10.0.0.1","ports":{{"http":80}},"session":{sid}}}"#
            );
            let r = node.post("/v1/namespaces/default/instances", &body);
            assert_eq!(r.status, 200, "{}", r.text);
            sid
        })
        .collect()
}

/// A client that keeps `sessions` alive every `every` through `urls` in
/// turn (retrying through elections) until `stop`; returns the sessions a
/// keepalive found gone.
fn keep_alive(
    urls: Vec<String>,
    sessions: Vec<u64>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut lost = Vec::new();
        for url in urls.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for s in &sessions {
                let r = agent()
                    .put(format!("{url}/v1/sessions/{s}/keepalive"))
                    .send_empty();
                if r.is_ok_and(|r| r.status() == 404) {
                    lost.push(*s);
                }
            }
            std::thread::sleep(every);
        }
        lost
    })
}

#[test]
fn three_nodes_form_a_cluster_and_any_node_takes_any_request() {
    let c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let (leader, follower, other) = leader_and_followers(&c);

    // A write to a follower is forwarded to the leader.
    let r = c
        .node(follower)
        .post("/v1/namespaces/default/instances", &instance_body("a", "1"));
    assert_eq!(r.status, 200, "{}", r.text);
    let rev = r.json()["revision"].as_u64().unwrap();
    // Read-your-writes on another follower with min_revision.
    let r = c.node(other).get(&format!(
        "/v1/namespaces/default/instances/lin/a?min_revision={rev}"
    ));
    assert_eq!(r.status, 200, "{}", r.text);
    // A linearizable read on a follower (read index from the leader).
    let r = c
        .node(other)
        .get("/v1/namespaces/default/instances/lin/a?linearizable=true");
    assert_eq!(r.json()["instance"]["metadata"]["v"], "1");
    // Sessions granted and kept alive through a follower.
    let r = c.node(follower).post("/v1/sessions", r#"{"ttl_ms": 2000}"#);
    assert_eq!(r.status, 201, "{}", r.text);
    let sid = r.json()["session_id"].as_u64().unwrap();
    assert_eq!(
        c.node(other)
            .put(&format!("/v1/sessions/{sid}/keepalive"))
            .status,
        200
    );
    assert!(c
        .node(follower)
        .get("/metrics")
        .text
        .contains("meshreg_forwarded_total{kind=\"write\"}"));

    // ctl cluster status shows three voters and the leader.
    let (ok, out, err) = ctl(&[
        "--addr",
        &c.node(follower).grpc,
        "-o",
        "json",
        "cluster",
        "status",
    ]);
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["leader_id"], leader);
    assert_eq!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == true)
            .count(),
        3
    );
    assert_converged(&c);
}

#[test]
fn kill_9_of_the_leader_under_load_loses_no_acknowledged_write() {
    let mut c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let keys = 20;
    let threads = workload(&rec, urls(&c), 4, keys, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));

    let killed_at = Instant::now();
    c.kill9(leader);
    let new_leader = c
        .wait_leader(Duration::from_secs(15), Some(leader))
        .expect("a new leader");
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
    // Writes resume through the survivors.
    let ok = eventually(Duration::from_secs(10), || {
        c.node(new_leader)
            .post(
                "/v1/namespaces/default/instances",
                &instance_body("after", "x"),
            )
            .status
            == 200
    });
    assert!(ok, "writes did not resume after the failover");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    final_reads(&rec, &c.node(new_leader).http, keys);
    let history = rec.history();
    let acked = history
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Ok))
        .count();
    assert!(
        acked > 20,
        "the workload made progress ({acked} acknowledged writes)"
    );
    check(&history).unwrap_or_else(|v| panic!("{v}"));
    assert_converged(&c);

    // The killed node comes back and catches up.
    c.restart(leader).unwrap();
    assert_converged(&c);
}

#[test]
fn a_follower_that_missed_writes_catches_up_by_log_and_by_snapshot() {
    let config =
        format!("{CONFIG}[raft]\nsnapshot_logs_since_last = 40\nlogs_kept_after_snapshot = 5\n");
    let mut c = TestCluster::start(3, &config, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let write = |c: &TestCluster, n: usize, tag: &str| {
        for i in 0..n {
            let r = c.node(leader).post(
                "/v1/namespaces/default/instances",
                &instance_body(&format!("{tag}{i}"), tag),
            );
            assert_eq!(r.status, 200, "{}", r.text);
        }
    };
    // Log path: fewer writes than the snapshot threshold while it is down.
    assert!(c.stop(follower));
    write(&c, 10, "log");
    c.restart(follower).unwrap();
    assert_converged(&c);
    // Snapshot path: enough writes that the log it needs is purged.
    assert!(c.stop(follower));
    write(&c, 150, "snap");
    let st = c.status(leader).unwrap();
    assert!(
        st["snapshot_index"].as_u64().unwrap() > 100,
        "the leader compacted its log: {st}"
    );
    c.restart(follower).unwrap();
    assert_converged(&c);
    let n = c
        .node(follower)
        .get("/v1/namespaces/default/instances?app=lin")
        .json()["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 160);
}

#[test]
fn an_isolated_leader_stops_taking_writes_and_the_majority_continues() {
    let c = TestCluster::start(3, CONFIG, &["--enable-fault-injection"]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let majority: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let keys = 8;
    let threads = workload(&rec, urls(&c), 3, keys, stop.clone());
    std::thread::sleep(Duration::from_millis(800));

    c.isolate(leader);
    // The majority elects a new leader and takes writes.
    let ok = eventually(Duration::from_secs(15), || {
        c.node(majority[0])
            .post(
                "/v1/namespaces/default/instances",
                &instance_body("maj", "1"),
            )
            .status
            == 200
    });
    assert!(ok, "the majority did not continue");
    // The minority side does not accept writes.
    let r = c.node(leader).post(
        "/v1/namespaces/default/instances",
        &instance_body("min", "1"),
    );
    assert_ne!(
        r.status, 200,
        "the isolated node accepted a write: {}",
        r.text
    );
    std::thread::sleep(Duration::from_millis(800));

    c.heal();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let l = c
        .wait_leader(Duration::from_secs(15), None)
        .expect("a leader after healing");
    final_reads(&rec, &c.node(l).http, keys);
    check(&rec.history()).unwrap_or_else(|v| panic!("{v}"));
    assert_converged(&c);
    let r = c
        .node(leader)
        .get("/v1/namespaces/default/instances/lin/min?linearizable=true");
    assert_eq!(
        r.status, 404,
        "the write refused by the minority never appears"
    );
}

#[test]
fn sessions_kept_alive_survive_a_leader_failover() {
    let mut c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let via = (1..=3).find(|i| *i != leader).unwrap();
    let n = c.node(via);
    let sessions = ephemeral_instances(n, 5, 3000);
    // A client that keeps alive every 500 ms through a surviving follower,
    // retrying through the election.
    let stop = Arc::new(AtomicBool::new(false));
    let ka = keep_alive(
        vec![n.http.clone()],
        sessions,
        Duration::from_millis(500),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    c.kill9(leader);
    c.wait_leader(Duration::from_secs(15), Some(leader))
        .expect("a new leader");
    // Several TTLs after the failover, every instance is still there.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let count = c
            .node(via)
            .get("/v1/namespaces/default/instances?app=ka")
            .json()["instances"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(count, 5, "an instance whose client kept alive disappeared");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Once the client stops, they expire (after TTL plus the leader's grace).
    stop.store(true, Ordering::Relaxed);
    ka.join().unwrap();
    let gone = eventually(Duration::from_secs(20), || {
        c.node(via)
            .get("/v1/namespaces/default/instances?app=ka")
            .json()["instances"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert!(gone, "sessions expired after the client stopped");
}

#[test]
fn a_stalled_leader_does_not_expire_sessions_when_it_wakes_up() {
    let c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let via = (1..=3).find(|i| *i != leader).unwrap();
    let n = c.node(via);
    let sid = n.post("/v1/sessions", r#"{"ttl_ms": 1500}"#).json()["session_id"]
        .as_u64()
        .unwrap();
    let body = format!(
        r#"{{"app":"ka","id":"x","address":"10.0.0.1","ports":{{"http":80}},"session":{sid}}}"#
    );
    assert_eq!(
        n.post("/v1/namespaces/default/instances", &body).status,
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ka = {
        let (stop, url) = (stop.clone(), n.http.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = agent()
                    .put(format!("{url}/v1/sessions/{sid}/keepalive"))
                    .send_empty();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Freeze the leader for well over the TTL: the others elect a new one
    // and the keepalives go there.
    c.node(leader).signal("-STOP");
    c.wait_leader(Duration::from_secs(15), Some(leader))
        .expect("a new leader");
    std::thread::sleep(Duration::from_millis(3000));
    // Wake it: its own deadlines for the session are long past, but it must
    // confirm leadership before revoking, and cannot.
    c.node(leader).signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for id in [via, leader] {
            let r = c.node(id).get("/v1/namespaces/default/instances?app=ka");
            if r.status == 200 {
                assert_eq!(
                    r.json()["instances"].as_array().unwrap().len(),
                    1,
                    "node {id}: the session was revoked"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    ka.join().unwrap();
    assert_converged(&c);
}

#[test]
fn a_five_node_cluster_survives_losing_two_nodes_including_the_leader() {
    let mut c = TestCluster::start(5, CONFIG, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let follower = (1..=5).find(|i| *i != leader).unwrap();
    for i in 0..20 {
        let r = c.node(follower).post(
            "/v1/namespaces/default/instances",
            &instance_body(&format!("a{i}"), "1"),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    c.kill9(leader);
    c.kill9(follower);
    let new_leader = c
        .wait_leader(Duration::from_secs(15), Some(leader))
        .expect("a new leader among three");
    let ok = eventually(Duration::from_secs(10), || {
        c.node(new_leader)
            .post(
                "/v1/namespaces/default/instances",
                &instance_body("after", "1"),
            )
            .status
            == 200
    });
    assert!(ok, "three of five kept taking writes");
    assert_converged(&c);
    let n = c
        .node(new_leader)
        .get("/v1/namespaces/default/instances?app=lin")
        .json()["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 21, "every acknowledged write survived");
    // Both come back and catch up.
    c.restart(leader).unwrap();
    c.restart(follower).unwrap();
    assert_converged(&c);
}

/// A node joining a cluster whose log holds large entries (batched
/// registrations) catches up, and is a voter only once it has the log.
#[test]
fn a_new_node_catches_up_on_large_entries_before_it_votes() {
    let mut c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), None)
        .expect("a leader");
    let meta = "x".repeat(200);
    for b in 0..8 {
        let instances: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"app":"big","id":"b{b}-{i}","address":"10.{b}.{}.{}","ports":{{"http":80}},"labels":{{"batch":"b{b}"}},"metadata":{{"m":"{meta}"}}}}"#,
                    i / 250,
                    i % 250
                )
            })
            .collect();
        let body = format!(r#"{{"instances":[{}]}}"#, instances.join(","));
        let r = c
            .node(leader)
            .post("/v1/namespaces/default/instances", &body);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let new = c.grow().unwrap();
    let voter = eventually(Duration::from_secs(60), || {
        c.voters(leader).is_some_and(|v| v.contains(&new))
    });
    assert!(voter, "node {new} was not promoted: {:?}", c.status(leader));
    let st = c.status(leader).unwrap();
    let me = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == new)
        .unwrap()
        .clone();
    assert!(
        me["matched_index"].as_u64().unwrap() >= 8,
        "promoted before replicating the log: {me}"
    );
    assert_converged(&c);
    let n = c
        .node(new)
        .get("/v1/namespaces/default/instances?app=big")
        .json()["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 8000);

    // Removing it again through a follower: forwarded to the leader, one
    // membership step; an unknown node is a clear error, also forwarded.
    let follower = (1..new).find(|id| *id != leader).unwrap();
    let addr = c.node(follower).grpc.clone();
    let (ok, out, err) = ctl(&["--addr", &addr, "cluster", "remove", "--node-id", "99"]);
    assert!(!ok, "{out}");
    assert!(err.contains("node") && err.contains("99"), "{err}");
    let (ok, out, err) = ctl(&[
        "--addr",
        &addr,
        "cluster",
        "remove",
        "--node-id",
        &new.to_string(),
    ]);
    assert!(ok, "remove through node {follower}: {out} {err}");
    let gone = eventually(Duration::from_secs(30), || {
        c.voters(leader)
            .is_some_and(|v| !v.contains(&new) && v.len() == 3)
    });
    assert!(gone, "node {new} still a member: {:?}", c.status(leader));
}

/// Leader and term as every running node sees them, once they all agree.
fn agreed_leader(c: &TestCluster) -> Option<(u64, u64)> {
    let views: Vec<(Option<u64>, Option<u64>)> = c
        .live()
        .iter()
        .map(|id| {
            let st = c.status(*id).unwrap_or_default();
            (st["leader_id"].as_u64(), st["term"].as_u64())
        })
        .collect();
    match views[0] {
        (Some(l), Some(t)) if l != 0 && views.iter().all(|v| *v == views[0]) => Some((l, t)),
        _ => None,
    }
}

/// `meshreg ctl cluster transfer-leader`: leadership moves to the named
/// follower (and then to the most caught-up voter) while clients keep
/// sessions alive and write through every node. Every node agrees on the
/// new leader, no write fails, no instance disappears, and an unknown
/// target is refused with an error naming it.
#[test]
fn transfer_leader_to_a_named_follower_keeps_sessions_and_writes() {
    let c = TestCluster::start(3, CONFIG, &[]).unwrap();
    let (_, target, other) = leader_and_followers(&c);

    // Ephemeral instances on short sessions, kept alive through every node
    // in turn, and persistent ones.
    let n = c.node(other);
    let sessions = ephemeral_instances(n, 5, 1500);
    for i in 0..5 {
        let r = n.post(
            "/v1/namespaces/default/instances",
            &format!(r#"{{"app":"ka","id":"p{i}","address":"10.0.0.2","ports":{{"http":80}}}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ka = keep_alive(urls(&c), sessions, Duration::from_millis(300), stop.clone());
    // A client writing through every node in turn during the hand-over.
    let writer = {
        let (stop, urls) = (stop.clone(), urls(&c));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[ok as usize % urls.len()];
                let r = agent()
                    .post(format!("{url}/v1/namespaces/default/instances"))
                    .header("content-type", "application/json")
                    .send(&instance_body(
                        &format!("w{}", ok + failed.len() as u64),
                        "1",
                    ));
                match r {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(mut r) => failed.push(format!(
                        "{url}: {} {}",
                        r.status(),
                        r.body_mut().read_to_string().unwrap_or_default()
                    )),
                    Err(e) => failed.push(format!("{url}: {e}")),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // Asked of the third node, which forwards it to the leader.
    let (_, term_before) = agreed_leader(&c).expect("the nodes agree on a leader");
    let started = Instant::now();
    let (ok, out, err) = ctl(&[
        "--addr",
        &c.node(other).grpc,
        "-o",
        "json",
        "cluster",
        "transfer-leader",
        "--to",
        &target.to_string(),
    ]);
    assert!(ok, "transfer-leader failed: {err}");
    eprintln!("transfer to {target} took {:?}: {out}", started.elapsed());
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["leader_id"], target, "{reply}");
    let term = reply["term"].as_u64().unwrap();
    assert!(term > term_before, "{reply}");
    let agreed = eventually(Duration::from_secs(5), || {
        agreed_leader(&c) == Some((target, term))
    });
    assert!(
        agreed,
        "the nodes do not all see node {target} leading in term {term}: {:?}",
        c.live().iter().map(|id| c.status(*id)).collect::<Vec<_>>()
    );

    // Without --to: the most caught-up other voter, right after an election
    // (the new leader first waits out its own leader lease).
    let (ok, out, err) = ctl(&["--addr", &c.node(target).grpc, "cluster", "transfer-leader"]);
    assert!(ok, "transfer-leader without --to failed: {err}");
    let mut moved = None;
    let ok = eventually(Duration::from_secs(5), || {
        moved = agreed_leader(&c).filter(|(l, _)| *l != target);
        moved.is_some()
    });
    let (second, second_term) =
        moved.unwrap_or_else(|| panic!("leadership did not move off node {target} ({ok})"));
    assert_eq!(
        out.trim(),
        format!("node {second} is the leader in term {second_term}")
    );
    eprintln!("then to {second}: {}", out.trim());

    // Several TTLs later, with the clients still going: nothing expired.
    std::thread::sleep(Duration::from_millis(4000));
    let count = |app: &str| {
        c.node(other)
            .get(&format!("/v1/namespaces/default/instances?app={app}"))
            .json()["instances"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        count("ka"),
        10,
        "an instance disappeared across the transfers"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(ka.join().unwrap(), Vec::<u64>::new(), "sessions were lost");
    let (written, failed) = writer.join().unwrap();
    assert!(
        failed.is_empty(),
        "writes failed during the transfers: {failed:?}"
    );
    assert!(written > 10, "the writer made progress ({written} writes)");

    // Writes go through any node afterwards.
    for id in 1..=3 {
        let r = c.node(id).post(
            "/v1/namespaces/default/instances",
            &instance_body(&format!("after{id}"), "1"),
        );
        assert_eq!(r.status, 200, "write through node {id}: {}", r.text);
    }
    assert_converged(&c);
    assert_eq!(count("lin") as u64, written + 3);

    // Unknown and invalid targets are refused, naming the node.
    let (ok, _, err) = ctl(&[
        "--addr",
        &c.node(target).grpc,
        "cluster",
        "transfer-leader",
        "--to",
        "9",
    ]);
    assert!(!ok);
    assert!(
        err.contains("invalid to: node 9 is not a member of the cluster (voters: 1, 2, 3)"),
        "{err}"
    );
    let (ok, _, err) = ctl(&[
        "--addr",
        &c.node(target).grpc,
        "cluster",
        "transfer-leader",
        "--to",
        &second.to_string(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("node {second} already leads")),
        "{err}"
    );
    assert_eq!(agreed_leader(&c).map(|l| l.0), Some(second));
}
