//! `meshreg-proxy` between real processes, configured only by meshreg:
//! HTTP/1.1, h2c and gRPC through two sidecars; an upstream killed under
//! load; configuration changes under load; bad requests and bad
//! upstreams; admin endpoints and drain; outbound TCP ports (`--tcp-outbound`):
//! bytes both ways with half-close, protocol detection, endpoints removed
//! under open connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshreg_proto::registry::v1::registry_client::RegistryClient;
use meshreg_proto::registry::v1::ListNamespacesRequest;
use meshreg_tests::mesh::{
    free_port, register, register_at, xds_addr, Called, Caller, Echo, Sidecar, TcpEcho,
};
use meshreg_tests::{eventually, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A single-node meshreg in a temporary directory (kept for the
/// sidecars' files too), its xDS address, and a runtime for the test's
/// clients and servers.
fn registry() -> (tempfile::TempDir, Server, String, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("reg"), &[]).unwrap();
    let xds = xds_addr(&s);
    (dir, s, xds, rt())
}

fn sidecar_meta(sc: &Sidecar) -> String {
    format!(
        r#""metadata":{{"meshreg.io/sidecar-port":"{}"}}"#,
        sc.inbound
    )
}

/// Waits until `host` answers 200 through the sidecar on `port`.
/// Asserts an answer the proxy made itself: its status and
/// `x-meshreg-flags` (the body, which says why, in the failure message).
#[track_caller]
fn assert_flagged(r: &Called, status: u16, flags: &str) {
    assert_eq!(
        (r.status, r.header("x-meshreg-flags")),
        (status, flags),
        "{}",
        r.body
    );
}

fn wait_routable(rt: &tokio::runtime::Runtime, c: &Caller, port: u16, host: &str) {
    let ok = eventually(Duration::from_secs(20), || {
        rt.block_on(c.get(port, host, "/"))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "{host} never became routable through port {port}");
}

#[test]
fn http1_h2c_and_grpc_through_two_sidecars() {
    let (dir, s, xds, rt) = registry();
    let echo = rt.block_on(Echo::start("e1"));
    let server_side = Sidecar::start(dir.path(), &xds, "echo", &["--access-log"]).unwrap();
    register(&s, "echo", echo.port, &sidecar_meta(&server_side));
    let client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "echo");

    // HTTP/1.1, by the application's short name and its full authority.
    for host in [
        "echo",
        "echo.default",
        &format!("echo.default:{}", echo.port),
    ] {
        let r = rt
            .block_on(c.get(client.outbound, host, "/hello?x=1"))
            .unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.body, "e1 /hello");
        assert_eq!(r.header("x-seen-version"), "HTTP/1.1");
        assert_eq!(
            r.header("x-seen-x-meshreg-port"),
            "",
            "the inbound route strips the port header"
        );
    }
    // It went through the server-side sidecar.
    let inbound = format!("inbound|{}||echo.default", echo.port);
    assert!(
        server_side.stat(
            "meshreg_proxy_upstream_rq_total",
            &format!("cluster=\"{inbound}\",class=\"2xx\"")
        ) >= 3
    );
    // Their times are in the cluster's histogram: every one under the
    // top bound, `+Inf` equal to the count, the buckets cumulative.
    let timed = format!("cluster=\"{inbound}\"");
    // (Recorded as each response body is done, just after its last byte
    // is written: wait out that instant.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = loop {
        let c = server_side.stat("meshreg_proxy_upstream_rq_time_seconds_count", &timed);
        if c >= 3 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(count >= 3, "{count}");
    let (_, text) = server_side.admin_get("/stats");
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| {
            l.starts_with("meshreg_proxy_upstream_rq_time_seconds_bucket") && l.contains(&timed)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 22, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets[20], count, "all under an hour: {buckets:?}");
    assert_eq!(buckets[21], count, "+Inf: {buckets:?}");

    // h2c end to end.
    let r = rt
        .block_on(c.call(
            true,
            client.outbound,
            "echo",
            "POST",
            "/h2",
            &[],
            &[7u8; 3000],
        ))
        .unwrap_or_else(|e| {
            panic!(
                "h2c: {e}\n{}\n{}",
                client.log_text(),
                server_side.log_text()
            )
        });
    assert_eq!(
        r.status,
        200,
        "{} {:?}\n{}\n{}",
        r.body,
        r.headers,
        client.log_text(),
        server_side.log_text()
    );
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
    assert_eq!(r.header("x-seen-body-bytes"), "3000");

    // HTTP/1.1 bodies the sidecars' own server does not buffer (over
    // 64 KiB, or chunked) are streamed by hyper's, on the same port.
    let r = rt
        .block_on(c.call(
            false,
            client.outbound,
            "echo",
            "POST",
            "/big",
            &[],
            &[7u8; 100_000],
        ))
        .unwrap();
    assert_eq!((r.status, r.header("x-seen-body-bytes")), (200, "100000"));
    let r = rt.block_on(raw(
        client.outbound,
        b"POST /chunked HTTP/1.1\r\nhost: echo\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("x-seen-body-bytes: 11"),
        "{r}"
    );

    // A host nothing serves: 404 with the NR flag.
    let r = rt
        .block_on(c.get(client.outbound, "nobody.default", "/"))
        .unwrap();
    assert_flagged(&r, 404, "NR");

    // gRPC: the registry's own gRPC API, registered as an application
    // behind its own sidecar, called through the client's sidecar.
    let grpc_port: u16 = xds.rsplit(':').next().unwrap().parse().unwrap();
    let reg_side = Sidecar::start(dir.path(), &xds, "registry", &[]).unwrap();
    register(&s, "registry", grpc_port, &sidecar_meta(&reg_side));
    let authority = format!("registry.default:{grpc_port}");
    let outbound = client.outbound;
    let names = rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ch =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{outbound}"))
                    .unwrap()
                    .origin(format!("http://{authority}").parse().unwrap())
                    .connect()
                    .await
                    .unwrap();
            match RegistryClient::new(ch)
                .list_namespaces(ListNamespacesRequest::default())
                .await
            {
                Ok(r) => {
                    break r
                        .into_inner()
                        .namespaces
                        .into_iter()
                        .map(|n| n.name)
                        .collect::<Vec<_>>()
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("gRPC through two sidecars: {e}"),
            }
        }
    });
    assert!(names.contains(&"default".to_string()), "{names:?}");
    assert!(
        reg_side.stat("meshreg_proxy_upstream_rq_total", "class=\"2xx\"") >= 1,
        "the gRPC call went through the registry's sidecar"
    );
    assert!(
        server_side
            .log_text()
            .contains("\"GET /hello?x=1 HTTP/1.1\" 200"),
        "access log"
    );
}

/// Runs `tasks` loops of GETs to `host` through `port` until `stop`;
/// returns (ok, failed, first failure).
fn load(
    rt: &tokio::runtime::Runtime,
    port: u16,
    host: &str,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Option<String>)> {
    let host = host.to_string();
    rt.spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::Mutex::new(None::<String>));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (ok, failed, first, stop, host) = (
                ok.clone(),
                failed.clone(),
                first.clone(),
                stop.clone(),
                host.clone(),
            );
            set.spawn(async move {
                let c = Caller::new();
                while !stop.load(Ordering::Relaxed) {
                    match c
                        .call(
                            false,
                            port,
                            &host,
                            "GET",
                            "/load",
                            &[("x-delay-ms", "2")],
                            b"",
                        )
                        .await
                    {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let msg = match other {
                                Ok(r) => format!(
                                    "{} {} {}",
                                    r.status,
                                    r.header("x-meshreg-flags"),
                                    r.body
                                ),
                                Err(e) => e,
                            };
                            first.lock().unwrap().get_or_insert(msg);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let first = first.lock().unwrap().clone();
        (
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            first,
        )
    })
}

#[test]
fn an_upstream_killed_under_load_fails_no_idempotent_request() {
    let (dir, s, xds, rt) = registry();
    let port = free_port();
    let echos: Vec<Echo> = (2..=4)
        .map(|i| rt.block_on(Echo::start_on(&format!("e{i}"), [127, 0, 0, i], port)))
        .collect();
    for e in &echos {
        register_at(&s, "echo", &e.ip, e.port, "");
    }
    let client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "echo");
    assert!(eventually(Duration::from_secs(10), || {
        let (_, t) = client.admin_get("/clusters");
        t.matches("::health_flags::healthy").count() == 3
    }));

    let stop = Arc::new(AtomicBool::new(false));
    let job = load(&rt, client.outbound, "echo", 8, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let mut echos = echos;
    let victim = echos.remove(1);
    let victim_served = victim.served.clone();
    victim.kill(); // still registered: only retries and outlier detection can hide it
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = rt.block_on(job).unwrap();
    assert!(ok > 200, "only {ok} requests made");
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed; first: {first:?}\n{}",
        ok + failed,
        client.log_text()
    );
    assert!(victim_served.load(Ordering::Relaxed) > 0);
    let cluster = "cluster=\"outbound|";
    let retried = client.stat("meshreg_proxy_upstream_rq_retry_total", cluster);
    let ejected = client.stat("meshreg_proxy_outlier_detection_ejections_total", cluster);
    assert!(retried > 0, "retries hid the failures");
    assert!(ejected >= 1, "outlier detection ejected the dead endpoint");
    let (_, clusters) = client.admin_get("/clusters");
    assert!(clusters.contains("failed_outlier_check"), "{clusters}");
}

#[test]
fn configuration_changes_under_load_fail_no_request() {
    let (dir, s, xds, rt) = registry();
    let port = free_port();
    let e1 = rt.block_on(Echo::start_on("e1", [127, 0, 0, 2], port));
    let e2 = rt.block_on(Echo::start_on("e2", [127, 0, 0, 3], port));
    register_at(&s, "echo", &e1.ip, port, "");
    let id2 = register_at(&s, "echo", &e2.ip, port, "");
    let client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "echo");

    let stop = Arc::new(AtomicBool::new(false));
    let job = load(&rt, client.outbound, "echo", 8, stop.clone());
    std::thread::sleep(Duration::from_millis(700));
    // New endpoint.
    let e3 = rt.block_on(Echo::start_on("e3", [127, 0, 0, 4], port));
    register_at(&s, "echo", &e3.ip, port, "");
    assert!(
        eventually(Duration::from_secs(10), || e3
            .served
            .load(Ordering::Relaxed)
            > 20),
        "the new endpoint gets traffic"
    );
    // Weight change.
    register_at(&s, "echo", &e1.ip, port, r#""weight":500"#);
    std::thread::sleep(Duration::from_millis(500));
    let before = (
        e1.served.load(Ordering::Relaxed),
        e3.served.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_millis(700));
    let d1 = e1.served.load(Ordering::Relaxed) - before.0;
    let d3 = e3.served.load(Ordering::Relaxed) - before.1;
    assert!(
        d1 > 3 * d3.max(1),
        "weight 500 vs 100: e1 got {d1}, e3 {d3}"
    );
    // Removed endpoint: deregistered, then stopped a little later.
    let r = s.delete(&format!("/v1/namespaces/default/instances/echo/{id2}"));
    assert_eq!(r.status, 200, "{}", r.text);
    std::thread::sleep(Duration::from_millis(700));
    let served2 = e2.served.load(Ordering::Relaxed);
    e2.kill();
    // New route: a new application becomes routable while the load runs.
    let o = rt.block_on(Echo::start("other"));
    register(&s, "other", o.port, "");
    wait_routable(&rt, &c, client.outbound, "other");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = rt.block_on(job).unwrap();
    assert!(ok > 300, "only {ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed; first: {first:?}",
        ok + failed
    );
    assert!(served2 > 0);
    assert_eq!(client.stat("meshreg_proxy_xds_nacks_total", ""), 0);
}

/// A raw TCP "upstream" that answers every connection with `reply` and closes.
async fn bad_upstream(reply: &'static [u8]) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            });
        }
    });
    port
}

/// A raw TCP "upstream" that reads requests and never answers (its
/// connections stay open while the test runs).
async fn silent_upstream() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_requests_and_bad_upstreams_get_the_right_status_and_never_crash_the_proxy() {
    let (dir, s, xds, rt) = registry();
    let good = rt.block_on(Echo::start("good"));
    register(&s, "good", good.port, "");
    let garbage = rt.block_on(bad_upstream(b"this is not HTTP\r\n\r\n"));
    register(&s, "garbage", garbage, "");
    let closer = rt.block_on(bad_upstream(b""));
    register(&s, "closer", closer, "");
    let silent = rt.block_on(silent_upstream());
    register(&s, "silent", silent, "");
    let mut client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "good");
    let port = client.outbound;

    // Malformed requests.
    let r = rt.block_on(raw(port, b"\x16\x03\x01garbage that is not HTTP\r\n\r\n"));
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r:?}");
    let r = rt.block_on(raw(
        port,
        b"GET / HTTP/1.1\r\nHost: good\r\nBad Header\r\n\r\n",
    ));
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: good\r\nx-big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let r = rt.block_on(raw(port, big.as_bytes()));
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{r:?}"
    );
    let r = rt.block_on(raw(
        port,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x00junk",
    ));
    let _ = r; // an h2 connection error: the connection closes

    // Bad upstreams.
    wait_routable_status(&rt, &c, port, "garbage", 503);
    let r = rt.block_on(c.get(port, "garbage", "/")).unwrap();
    assert_flagged(&r, 503, "UR");
    let r = rt.block_on(c.get(port, "closer", "/")).unwrap();
    assert_flagged(&r, 503, "UR");
    // An upstream that never answers: 504 `UT` after the per-try timeout
    // (a POST is not retried), and the client's connection serves the
    // next request.
    let r = rt
        .block_on(c.call(false, port, "silent", "POST", "/", &[], b"x"))
        .unwrap();
    assert_flagged(&r, 504, "UT");
    let r = rt.block_on(c.get(port, "good", "/after-timeout")).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "good /after-timeout"));

    // A 5xx from the upstream passes through (after retries, for GET).
    let r = rt
        .block_on(c.call(
            false,
            port,
            "good",
            "POST",
            "/",
            &[("x-status", "500")],
            b"x",
        ))
        .unwrap();
    assert_eq!(r.status, 500);

    // Still alive and serving.
    assert!(client.is_running(), "{}", client.log_text());
    assert_eq!(client.admin_get("/ready").0, 200);
    let r = rt.block_on(c.get(port, "good", "/after")).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "good /after"));

    // Every answer counts in its listener's `downstream_rq_total` by
    // class, local replies (UR, UT) included; counted before it is sent.
    let count = |class: &str| {
        client.stat(
            "meshreg_proxy_downstream_rq_total",
            &format!("class=\"{class}\""),
        )
    };
    assert!(count("5xx") >= 4, "{}", client.admin_get("/stats").1);
    let ok = count("2xx");
    let r = rt.block_on(c.get(port, "good", "/counted")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(count("2xx"), ok + 1);
}

/// The response head's fields, names lowercased, in order, and its body.
fn head_fields(resp: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let fields = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (fields, body)
}

#[test]
fn an_upstreams_fields_pass_through_without_hop_by_hop_ones() {
    let (dir, s, xds, rt) = registry();
    let up = rt.block_on(bad_upstream(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
          Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: hidden\r\n\
          Proxy-Connection: keep-alive\r\nX-A: b\r\nx-a: c\r\nContent-Length: 5\r\n\r\nhello",
    ));
    register(&s, "up", up, "");
    let client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "up");
    let want: Vec<(String, String)> = [
        ("server", "up"),
        ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ("x-a", "b"),
        ("x-a", "c"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    // Served by the proxy's own HTTP/1.1 server (written from the
    // upstream's bytes), then by hyper's (a chunked request is handed to
    // it; the fields go through a map): the same fields either way, the
    // body framed by the proxy, `connection: close` because the client
    // asked for it.
    for req in [
        &b"GET / HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    ] {
        let r = rt.block_on(raw(client.outbound, req));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r:?}");
        let (mut fields, body) = head_fields(&r);
        assert_eq!(body, "hello", "{r:?}");
        let framing: Vec<_> = fields
            .iter()
            .filter(|(n, _)| n == "content-length" || n == "transfer-encoding")
            .cloned()
            .collect();
        assert_eq!(
            framing,
            [("content-length".to_string(), "5".to_string())],
            "{r:?}"
        );
        fields.retain(|(n, _)| n != "content-length" && n != "connection");
        assert_eq!(fields, want, "{r:?}");
    }
}

/// A raw TCP upstream that answers each request with the request's own
/// head as it arrived (the bytes up to the blank line) as the body.
async fn mirror_upstream() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut b).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&b[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = buf[..end + 4].to_vec();
                    // The body (`content-length` bytes, as the proxy frames it).
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len: usize = text
                        .split("\r\n")
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        let Ok(n) = s.read(&mut b).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&b[..n]);
                    }
                    buf.drain(..end + 4 + len);
                    let reply =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", head.len());
                    let _ = s.write_all(&[reply.as_bytes(), &head].concat()).await;
                }
            });
        }
    });
    port
}

#[test]
fn a_requests_end_to_end_fields_reach_the_upstream_and_hop_by_hop_ones_do_not() {
    let (dir, s, xds, rt) = registry();
    let up = rt.block_on(mirror_upstream());
    register(&s, "up", up, "");
    let client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "up");
    // The same request read by the proxy's own HTTP/1.1 server (a
    // `content-length` body: its fields are forwarded as they came) and
    // by hyper's (a chunked body is handed to it: the fields go through
    // a map, and the body is streamed on chunked): the upstream gets the
    // same fields either way.
    let fields = "Host: up\r\nConnection: close, X-Secret\r\nX-Secret: hidden\r\n\
                  Keep-Alive: timeout=5\r\nProxy-Authorization: basic x\r\nTE: gzip\r\n\
                  X-Forwarded-For: 192.0.2.1\r\nX-A: b\r\nx-a: c\r\nUser-Agent: t\r\n";
    let mut seen = Vec::new();
    for (framing, body, forwarded_framing) in [
        ("Content-Length: 1\r\n", "x", ("content-length", "1")),
        (
            "Transfer-Encoding: chunked\r\n",
            "1\r\nx\r\n0\r\n\r\n",
            ("transfer-encoding", "chunked"),
        ),
    ] {
        let req = format!("POST /p?q=1 HTTP/1.1\r\n{fields}{framing}\r\n{body}");
        let r = rt.block_on(raw(client.outbound, req.as_bytes()));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r:?}");
        let (_, forwarded) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            forwarded.starts_with("POST /p?q=1 HTTP/1.1\r\n"),
            "{forwarded:?}"
        );
        let (mut got, _) = head_fields(forwarded);
        // x-a's lines keep their order; the rest is compared as a set.
        let xa: Vec<_> = got
            .iter()
            .filter(|(n, _)| n == "x-a")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(xa, ["b", "c"], "{forwarded:?}");
        let framing = (
            forwarded_framing.0.to_string(),
            forwarded_framing.1.to_string(),
        );
        let at = got.iter().position(|f| *f == framing);
        assert!(at.is_some(), "{forwarded:?}");
        got.remove(at.unwrap());
        got.sort();
        seen.push(got);
    }
    let want: Vec<(String, String)> = [
        ("host", "up"),
        ("user-agent", "t"),
        ("x-a", "b"),
        ("x-a", "c"),
        ("x-forwarded-for", "192.0.2.1, 127.0.0.1"),
        ("x-forwarded-proto", "http"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen[0], want);
    assert_eq!(seen[1], want);
}

fn wait_routable_status(
    rt: &tokio::runtime::Runtime,
    c: &Caller,
    port: u16,
    host: &str,
    status: u16,
) {
    let ok = eventually(Duration::from_secs(20), || {
        rt.block_on(c.get(port, host, "/"))
            .is_ok_and(|r| r.status == status && r.header("x-meshreg-flags") != "NR")
    });
    assert!(ok, "{host} never answered {status}");
}

#[test]
fn admin_shows_config_and_drain_finishes_in_flight_requests() {
    let (dir, s, xds, rt) = registry();
    let e = rt.block_on(Echo::start("e"));
    register(&s, "echo", e.port, r#""labels":{"version":"v1"}"#);
    let mut client = Sidecar::start(dir.path(), &xds, "client", &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, client.outbound, "echo");

    let (st, dump) = client.admin_get("/config_dump");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["xds"]["connected"], true);
    assert_eq!(v["listeners"].as_array().unwrap().len(), 2, "{dump}");
    let cluster = format!("outbound|{}||echo.default", e.port);
    let cl = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster.as_str())
        .unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(
        cl["endpoints"][0]["address"],
        format!("127.0.0.1:{}", e.port)
    );
    assert_eq!(cl["endpoints"][0]["labels"]["version"], "v1");
    let (_, clusters) = client.admin_get("/clusters");
    assert!(
        clusters.contains(&format!(
            "{cluster}::127.0.0.1:{}::health_flags::healthy",
            e.port
        )),
        "{clusters}"
    );
    let (_, stats) = client.admin_get("/stats");
    assert!(stats.contains("meshreg_proxy_xds_connected 1"), "{stats}");

    // A slow request in flight survives the drain.
    let port = client.outbound;
    let slow = rt.spawn(async move {
        Caller::new()
            .call(
                false,
                port,
                "echo",
                "GET",
                "/slow",
                &[("x-delay-ms", "800")],
                b"",
            )
            .await
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(client.admin_post("/drain"), 200);
    let r = rt.block_on(slow).unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        client.wait_exit(Duration::from_secs(10)),
        Some(true),
        "{}",
        client.log_text()
    );
}

#[test]
fn a_new_binary_takes_over_the_ports_without_refusing_connections() {
    let (dir, s, xds, rt) = registry();
    let e = rt.block_on(Echo::start("e"));
    register(&s, "echo", e.port, "");
    let ports = [free_port(), free_port(), free_port()];
    let mut old = Sidecar::start_at(dir.path(), &xds, "client", ports, &[]).unwrap();
    let c = Caller::new();
    wait_routable(&rt, &c, ports[1], "echo");

    // A new connection per request, so every request needs an accept.
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, port) = (stop.clone(), ports[1]);
    let job = rt.spawn(async move {
        let (mut ok, mut failed, mut first) = (0u64, 0u64, None::<String>);
        while !stop2.load(Ordering::Relaxed) {
            match Caller::new()
                .call(
                    false,
                    port,
                    "echo",
                    "GET",
                    "/",
                    &[("connection", "close")],
                    b"",
                )
                .await
            {
                Ok(r) if r.status == 200 => ok += 1,
                other => {
                    failed += 1;
                    first.get_or_insert(format!("{other:?}"));
                }
            }
        }
        (ok, failed, first)
    });
    std::thread::sleep(Duration::from_millis(500));
    // The new binary binds the same ports (SO_REUSEPORT), then the old one drains.
    let mut new = Sidecar::start_at(dir.path(), &xds, "client", ports, &[]).unwrap();
    old.terminate();
    assert_eq!(
        old.wait_exit(Duration::from_secs(10)),
        Some(true),
        "{}",
        old.log_text()
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = rt.block_on(job).unwrap();
    assert!(ok > 50, "only {ok} requests");
    // The old listener keeps accepting during the drain and takes what is
    // queued before it closes; a connection that reaches its queue in the
    // instant between that and the close is reset by the kernel unless
    // net.ipv4.tcp_migrate_req = 1 moves it to the new listener.
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    let allowed = if migrate.trim() == "1" { 0 } else { 1 };
    assert!(
        failed <= allowed,
        "{failed} of {} failed: {first:?}",
        ok + failed
    );
    assert!(new.is_running());
    assert_eq!(new.admin_get("/ready").0, 200);
}

// ---------------------------------------------------------------------------
// Outbound TCP ports

/// Reads up to and including the next `\n` (at most 5 s).
async fn read_line(s: &mut tokio::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while s.read(&mut b).await.unwrap_or(0) == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&line).into_owned()
}

/// Connects to 127.0.0.1:`port` and reads the greeting line of a
/// [`TcpEcho`] ("" when the connection is closed without one).
async fn greeted(port: u16) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let line = read_line(&mut s).await;
    (s, line)
}

/// Writes `data` while reading, then half-closes and reads to the end (at
/// most 20 s): everything the other side sent.
async fn send_all_then_half_close(s: tokio::net::TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        wr // keep the socket open for reading
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out))
        .await
        .expect("the echo ends within 20 s")
        .unwrap();
    drop(writer.await.unwrap());
    out
}

/// Echoes `msg` on an open connection.
async fn ping(s: &mut tokio::net::TcpStream, msg: &str) -> String {
    s.write_all(msg.as_bytes()).await.unwrap();
    read_line(s).await
}

fn tcp_outbound(port: u16, target: &str) -> String {
    format!("{port}={target}")
}

#[test]
fn tcp_outbound_ports_proxy_bytes_both_ways_with_half_close() {
    let (dir, s, xds, rt) = registry();
    // The client's sidecar starts before `db` exists: its TCP ports are
    // bound all the same.
    let (by_app, by_service) = (free_port(), free_port());
    let db = rt.block_on(TcpEcho::start_on("db1", [127, 0, 0, 1], 0));
    let app_target = format!("db.default:{}", db.port);
    let client = Sidecar::start(
        dir.path(),
        &xds,
        "client",
        &[
            "--tcp-outbound",
            &tcp_outbound(by_app, &app_target),
            "--tcp-outbound",
            &tcp_outbound(by_service, "db.Store"),
        ],
    )
    .unwrap();
    let (st, dump) = client.admin_get("/config_dump");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    let app_listener = format!("sidecar|outbound-tcp|{by_app}|{app_target}");
    assert!(names.contains(&app_listener.as_str()), "{dump}");
    assert!(
        names.contains(&format!("sidecar|outbound-tcp|{by_service}|db.Store").as_str()),
        "{dump}"
    );

    // Unknown target: TCP connections are closed at once, HTTP gets 503 NC.
    let (_, line) = rt.block_on(greeted(by_app));
    assert_eq!(line, "", "nothing to reach yet");
    let r = rt.block_on(Caller::new().get(by_app, "db", "/")).unwrap();
    assert_flagged(&r, 503, "NC");
    assert!(
        client.stat(
            "meshreg_proxy_tcp_upstream_connect_fail_total",
            &app_listener
        ) >= 1,
        "{}",
        client.admin_get("/stats").1
    );

    // `db` registers with protocol tcp, in mesh mode (behind its own
    // sidecar): HTTP would go to its sidecar, raw TCP must not.
    let db_side = Sidecar::start(dir.path(), &xds, "db", &[]).unwrap();
    let body = format!(
        r#"{{"app":"db","id":"db1","address":"127.0.0.1","ports":{{"tcp":{}}},"services":[{{"name":"db.Store","protocol":"tcp","port_name":"tcp"}}],{}}}"#,
        db.port,
        sidecar_meta(&db_side)
    );
    let reply = s.post("/v1/namespaces/default/instances", &body);
    assert_eq!(reply.status, 200, "{}", reply.text);

    for port in [by_app, by_service] {
        assert!(
            eventually(Duration::from_secs(20), || rt.block_on(greeted(port)).1
                == "db1\n"),
            "port {port} never reached db; {}",
            client.log_text()
        );
        // Server first: the greeting came with nothing sent. Now a round
        // trip, then ~1 MiB both ways and a half-close: the server sees
        // the FIN and still gets its last line through.
        let payload: Vec<u8> = (0..(1usize << 20) + 13).map(|i| (i % 251) as u8).collect();
        let out = rt.block_on(async {
            let (mut conn, _) = greeted(port).await;
            assert_eq!(ping(&mut conn, "hello\n").await, "hello\n");
            send_all_then_half_close(conn, payload.clone()).await
        });
        let bye = format!("bye {}\n", payload.len() + 6);
        assert_eq!(out.len(), payload.len() + bye.len(), "port {port}");
        assert!(
            out[..payload.len()] == payload[..],
            "port {port}: bytes changed"
        );
        assert_eq!(String::from_utf8_lossy(&out[payload.len()..]), bye);
    }
    // An empty half-close: just the FIN, passed on.
    let out = rt.block_on(async {
        let (conn, _) = greeted(by_app).await;
        send_all_then_half_close(conn, Vec::new()).await
    });
    assert_eq!(out, b"bye 0\n");

    // Raw TCP dialled the application port, not db's sidecar.
    assert_eq!(
        db_side.stat("meshreg_proxy_downstream_cx_total", "sidecar|inbound|db|"),
        0
    );
    assert!(db.accepted.load(Ordering::Relaxed) >= 5);
    let (_, clusters) = client.admin_get("/clusters");
    let rq = format!(
        "outbound|{}||db.default::127.0.0.1:{}::rq_total::",
        db.port, db_side.inbound
    );
    assert!(clusters.contains(&rq), "{clusters}");
    assert_eq!(client.stat("meshreg_proxy_xds_nacks_total", ""), 0);
}

#[test]
fn tcp_outbound_ports_route_http_like_the_outbound_listener_and_proxy_the_rest() {
    let (dir, s, xds, rt) = registry();
    let web = rt.block_on(TcpEcho::start_dual("web"));
    let web_side = Sidecar::start(dir.path(), &xds, "web", &[]).unwrap();
    register(&s, "web", web.port, &sidecar_meta(&web_side));
    let port = free_port();
    let client = Sidecar::start(
        dir.path(),
        &xds,
        "client",
        &[
            "--tcp-outbound",
            &tcp_outbound(port, &format!("web.default:{}", web.port)),
        ],
    )
    .unwrap();
    let c = Caller::new();
    // Any Host: the port says where to go.
    wait_routable(&rt, &c, port, "127.0.0.1");

    let cluster = format!("cluster=\"outbound|{}||web.default\"", web.port);
    let inbound = format!("cluster=\"inbound|{}||web.default\"", web.port);
    let rq_before = client.stat("meshreg_proxy_upstream_rq_total", &cluster);
    let r = rt.block_on(c.get(port, "localhost", "/x")).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "web /x"));
    // The HTTP chain: the client's sidecar added x-forwarded-for and sent
    // the request through web's sidecar, which removed x-meshreg-port.
    assert!(
        !r.header("x-seen-x-forwarded-for").is_empty(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-seen-x-meshreg-port"), "");
    let r = rt
        .block_on(c.call(true, port, "web", "POST", "/h2", &[], &[7u8; 3000]))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
    assert_eq!(r.header("x-seen-body-bytes"), "3000");
    // ...with the outbound route's retries.
    let retries_before = client.stat("meshreg_proxy_upstream_rq_retry_total", &cluster);
    let r = rt
        .block_on(c.call(false, port, "web", "GET", "/", &[("x-status", "503")], b""))
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        client.stat("meshreg_proxy_upstream_rq_retry_total", &cluster) - retries_before,
        2
    );
    let rq_http = client.stat("meshreg_proxy_upstream_rq_total", &cluster);
    assert_eq!(rq_http - rq_before, 5, "GET, h2c POST, and 503 three times");
    assert!(web_side.stat("meshreg_proxy_upstream_rq_total", &inbound) >= 5);
    let http_served = web.served.load(Ordering::Relaxed);

    // Raw bytes on the same port: the TCP chain, straight to the
    // application port, byte for byte.
    let inbound_cx = web_side.stat("meshreg_proxy_downstream_cx_total", "sidecar|inbound|web|");
    let out = rt.block_on(async {
        let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        send_all_then_half_close(conn, b"hello raw\n".to_vec()).await
    });
    assert_eq!(String::from_utf8_lossy(&out), "hello raw\nbye 10\n");
    assert_eq!(web.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(web.served.load(Ordering::Relaxed), http_served);
    assert_eq!(
        client.stat("meshreg_proxy_upstream_rq_total", &cluster),
        rq_http
    );
    assert_eq!(
        web_side.stat("meshreg_proxy_downstream_cx_total", "sidecar|inbound|web|"),
        inbound_cx
    );
    assert_eq!(client.stat("meshreg_proxy_xds_nacks_total", ""), 0);
}

#[test]
fn deregistering_an_endpoint_moves_new_tcp_connections_and_keeps_open_ones() {
    let (dir, s, xds, rt) = registry();
    let app_port = free_port();
    let e1 = rt.block_on(TcpEcho::start_on("e1", [127, 0, 0, 2], app_port));
    let e2 = rt.block_on(TcpEcho::start_on("e2", [127, 0, 0, 3], app_port));
    let id1 = register_at(&s, "db", &e1.ip, app_port, "");
    register_at(&s, "db", &e2.ip, app_port, "");
    let port = free_port();
    let client = Sidecar::start(
        dir.path(),
        &xds,
        "client",
        &[
            "--tcp-outbound",
            &tcp_outbound(port, &format!("db:{app_port}")),
        ],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        let (_, t) = client.admin_get("/clusters");
        t.matches("::health_flags::healthy").count() == 2
    }));

    // One open connection on each endpoint.
    let mut open = rt.block_on(async {
        let mut by_id = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let (conn, line) = greeted(port).await;
            by_id.entry(line).or_insert(conn);
            if by_id.len() == 2 {
                break;
            }
        }
        by_id
    });
    let keys: Vec<&String> = open.keys().collect();
    assert_eq!(keys, ["e1\n", "e2\n"], "round robin over both");
    let accepted1 = e1.accepted.load(Ordering::Relaxed);

    let r = s.delete(&format!("/v1/namespaces/default/instances/db/{id1}"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        eventually(Duration::from_secs(20), || !client
            .admin_get("/clusters")
            .1
            .contains(&format!("{}:{app_port}", e1.ip))),
        "the endpoint leaves the sidecar's cluster"
    );
    // New connections: the remaining endpoint only.
    for i in 0..6 {
        let (_, line) = rt.block_on(greeted(port));
        assert_eq!(line, "e2\n", "connection {i}");
    }
    assert_eq!(e1.accepted.load(Ordering::Relaxed), accepted1);
    // Established ones: still carry bytes both ways, and close cleanly.
    rt.block_on(async {
        for (id, conn) in open.iter_mut() {
            assert_eq!(ping(conn, "still there?\n").await, "still there?\n", "{id}");
        }
        for (id, conn) in std::mem::take(&mut open) {
            let out = send_all_then_half_close(conn, b"last\n".to_vec()).await;
            assert_eq!(String::from_utf8_lossy(&out), "last\nbye 18\n", "{id}");
        }
    });
    assert_eq!(
        client.stat("meshreg_proxy_tcp_upstream_connect_fail_total", ""),
        0
    );
}

/// A drain does not cut TCP proxy connections: they carry bytes until they
/// end or the drain timeout passes, and the proxy exits after that.
#[test]
fn a_drain_lets_open_tcp_connections_finish_until_its_timeout() {
    let (dir, s, xds, rt) = registry();
    let db = rt.block_on(TcpEcho::start_on("db1", [127, 0, 0, 1], 0));
    register(&s, "db", db.port, "");
    let port = free_port();
    let mut client = Sidecar::start(
        dir.path(),
        &xds,
        "client",
        &[
            "--tcp-outbound",
            &tcp_outbound(port, &format!("db:{}", db.port)),
            "--drain-timeout-ms",
            "2000",
        ],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(20), || rt
        .block_on(greeted(port))
        .1
        == "db1\n"));
    let (mut finishing, mut lingering) = rt.block_on(async {
        let a = greeted(port).await;
        let b = greeted(port).await;
        assert_eq!((a.1.as_str(), b.1.as_str()), ("db1\n", "db1\n"));
        (a.0, b.0)
    });

    let start = Instant::now();
    assert_eq!(client.admin_post("/drain"), 200);
    // Open connections keep working during the drain; one that ends on
    // its own ends as usual.
    let out = rt.block_on(async {
        assert_eq!(ping(&mut finishing, "draining\n").await, "draining\n");
        assert_eq!(ping(&mut lingering, "draining\n").await, "draining\n");
        send_all_then_half_close(finishing, Vec::new()).await
    });
    assert_eq!(String::from_utf8_lossy(&out), "bye 9\n");
    // One still open at the drain timeout (2 s) is closed then, and the
    // proxy exits.
    let mut rest = Vec::new();
    let read = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), lingering.read_to_end(&mut rest)).await
    });
    let closed_after = start.elapsed();
    assert!(read.is_ok(), "the drain closed the connection");
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed after {closed_after:?}, before the drain timeout"
    );
    assert_eq!(
        client.wait_exit(Duration::from_secs(10)),
        Some(true),
        "{}",
        client.log_text()
    );
}
