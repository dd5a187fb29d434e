//! The SDK's modes against real processes (a `meshreg` server, real
//! `meshreg-proxy` sidecars, in-process echo applications): mesh mode
//! reaches an application through two sidecars without subscribing to
//! anything; auto mode follows the environment, the sidecar's bootstrap
//! file and its admin port; switching direct → mesh → direct under a
//! constant load fails no request, and re-registers the instance with and
//! without its sidecar port; the tonic channel follows a switch while
//! streams opened before it keep working; a mode file + SIGHUP switches a
//! running client, and a switch to a sidecar that is not there is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshreg_proto::registry::v1::registry_client::RegistryClient;
use meshreg_proto::registry::v1::{GrantSessionRequest, KeepAliveRequest, ListNamespacesRequest};
use meshreg_sdk::{Client, Destination, Error, Mode, Reason, Resolver, SidecarConfig};
use meshreg_tests::mesh::{free_port, register, xds_addr, Called, Caller, Echo, Sidecar};
use meshreg_tests::{eventually, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Runs blocking harness calls (process start, ureq) off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn sidecar_config(sc: &Sidecar) -> SidecarConfig {
    SidecarConfig {
        outbound: SocketAddr::from(([127, 0, 0, 1], sc.outbound)),
        inbound_port: sc.inbound,
        admin: SocketAddr::from(([127, 0, 0, 1], sc.admin)),
    }
}

fn sidecar_meta(sc: &Sidecar) -> String {
    format!(
        r#""metadata":{{"meshreg.io/sidecar-port":"{}"}}"#,
        sc.inbound
    )
}

fn instances(s: &Server, app: &str) -> Vec<Value> {
    let r = s.get(&format!("/v1/namespaces/default/instances?app={app}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `meshreg.io/sidecar-port` metadata of `app`'s only instance.
fn registered_sidecar_port(s: &Server, app: &str) -> Option<String> {
    let list = instances(s, app);
    assert_eq!(list.len(), 1, "{list:?}");
    list[0]["metadata"]["meshreg.io/sidecar-port"]
        .as_str()
        .map(str::to_string)
}

/// Node ids of the registry's connected xDS clients.
fn xds_nodes(s: &Server) -> Vec<String> {
    s.get("/v1/xds/clients").json()["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["node_id"].as_str().map(str::to_string))
        .collect()
}

/// One HTTP/1.1 GET sent where `d` says.
async fn call(c: &Caller, d: &Destination, path: &str, delay_ms: u64) -> Result<Called, String> {
    let (host, port) = d.dial().rsplit_once(':').expect("host:port");
    assert_eq!(host, "127.0.0.1", "the tests run on loopback");
    let delay = delay_ms.to_string();
    c.call(
        false,
        port.parse().expect("port"),
        d.authority(),
        "GET",
        path,
        &[("x-delay-ms", &delay)],
        b"",
    )
    .await
}

/// Picks and calls until a call answers 200 (sidecar routes arrive over
/// xDS a moment after a registration); returns that answer.
async fn call_until_ok(r: &Resolver, path: &str) -> (Destination, Called) {
    let c = Caller::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let d = r.pick().await.expect("pick");
        match call(&c, &d, path, 0).await {
            Ok(resp) if resp.status == 200 => return (d, resp),
            other if Instant::now() > deadline => {
                panic!("{} never answered 200 via {}: {other:?}", path, d.dial())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn inbound_2xx(sc: &Sidecar, app: &str, port: u16) -> u64 {
    sc.stat(
        "meshreg_proxy_upstream_rq_total",
        &format!("cluster=\"inbound|{port}||{app}.default\",class=\"2xx\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mesh_mode_calls_through_two_sidecars_and_subscribes_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = blocking(|| Server::start(&dir.path().join("reg"), &[])).unwrap();
    let xds = xds_addr(&s);
    let echo = Echo::start("e1").await;
    let echo_side = blocking(|| Sidecar::start(dir.path(), &xds, "echo", &[])).unwrap();

    // The echo application registers itself in mesh mode: with its
    // sidecar's inbound port.
    let echo_app = Client::builder()
        .registry(s.grpc.clone())
        .app("echo")
        .address("127.0.0.1")
        .port("http", echo.port)
        .mode(Mode::Mesh)
        .sidecar(sidecar_config(&echo_side))
        .build()
        .unwrap();
    let reg = tokio::time::timeout(WAIT, echo_app.register())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reg.sidecar_port, Some(echo_side.inbound));
    assert_eq!(
        blocking(|| registered_sidecar_port(&s, "echo")),
        Some(echo_side.inbound.to_string())
    );

    // The caller, in mesh mode beside its own sidecar.
    let caller_side = blocking(|| Sidecar::start(dir.path(), &xds, "caller", &[])).unwrap();
    let caller = Client::builder()
        .registry(s.grpc.clone())
        .node_id("caller-mesh")
        .mode(Mode::Mesh)
        .sidecar(sidecar_config(&caller_side))
        .build()
        .unwrap();
    let d = caller.mode().await.unwrap();
    assert_eq!((d.mode, d.reason), (Mode::Mesh, Reason::Configured));
    let target = format!("echo:{}", echo.port);
    let r = caller.resolve(&target).await.unwrap();
    let (d, resp) = call_until_ok(&r, "/hello").await;
    assert_eq!(d.mode(), Mode::Mesh);
    assert_eq!(d.dial(), format!("127.0.0.1:{}", caller_side.outbound));
    assert_eq!(d.authority(), format!("echo.default:{}", echo.port));
    assert!(d.endpoint().is_none());
    assert_eq!(resp.body, "e1 /hello");
    // Through both sidecars: the echo's sidecar served it inbound.
    assert!(blocking(|| inbound_2xx(&echo_side, "echo", echo.port)) >= 1);
    // The HTTP helper takes the same route.
    let before = blocking(|| inbound_2xx(&echo_side, "echo", echo.port));
    let resp = caller
        .http_client()
        .get(&format!("meshreg://{target}/helper?x=1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.body()[..], b"e1 /helper");
    assert_eq!(
        blocking(|| inbound_2xx(&echo_side, "echo", echo.port)),
        before + 1
    );

    // gRPC in one line: the registry's own API, registered as an
    // application behind its sidecar, through the caller's sidecar.
    let grpc_port: u16 = xds.rsplit(':').next().unwrap().parse().unwrap();
    let reg_side = blocking(|| Sidecar::start(dir.path(), &xds, "registry", &[])).unwrap();
    blocking(|| register(&s, "registry", grpc_port, &sidecar_meta(&reg_side)));
    let channel = caller
        .grpc_channel(&format!("meshreg://registry:{grpc_port}"))
        .await
        .unwrap();
    let mut api = RegistryClient::new(channel);
    let deadline = Instant::now() + WAIT;
    let names = loop {
        match api.list_namespaces(ListNamespacesRequest::default()).await {
            Ok(r) => break r.into_inner().namespaces,
            Err(e) if Instant::now() > deadline => panic!("gRPC through two sidecars: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(names.iter().any(|n| n.name == "default"));
    assert!(
        blocking(|| reg_side.stat("meshreg_proxy_upstream_rq_total", "class=\"2xx\"")) >= 1,
        "the gRPC call went through the registry's sidecar"
    );

    // No subscription was made, by the SDK's own account and the registry's.
    assert!(caller.subscriptions().is_empty());
    assert!(echo_app.subscriptions().is_empty());

    // The same target in direct mode does subscribe, and dials the echo
    // application itself, not its sidecar.
    let direct = Client::builder()
        .registry(s.grpc.clone())
        .node_id("caller-direct")
        .mode(Mode::Direct)
        .build()
        .unwrap();
    let r = direct.resolve(&target).await.unwrap();
    let before = blocking(|| inbound_2xx(&echo_side, "echo", echo.port));
    let (d, resp) = call_until_ok(&r, "/direct").await;
    assert_eq!(d.mode(), Mode::Direct);
    assert_eq!(d.dial(), format!("127.0.0.1:{}", echo.port));
    assert_eq!(resp.body, "e1 /direct");
    let resp = direct
        .http_client()
        .get(&format!("meshreg://{target}/helper-direct"))
        .await
        .unwrap();
    assert_eq!(&resp.body()[..], b"e1 /helper-direct");
    assert_eq!(
        direct.subscriptions(),
        vec![format!("outbound|{}||echo.default", echo.port)]
    );
    assert!(eventually(WAIT, || {
        let nodes = xds_nodes(&s);
        nodes.iter().any(|n| n == "caller-direct") && !nodes.iter().any(|n| n == "caller-mesh")
    }));
    assert_eq!(
        blocking(|| inbound_2xx(&echo_side, "echo", echo.port)),
        before,
        "direct mode bypasses the echo's sidecar"
    );
    echo_app.shutdown().await;
    caller.shutdown().await;
    direct.shutdown().await;
}

/// Runs this binary's `auto_mode_child` test in a child process with
/// `env` (and nothing inherited of `MESHREG_MODE` /
/// `MESHREG_PROXY_BOOTSTRAP`), so that environment variables never race
/// with the other tests; returns its output when it fails.
fn child(env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "auto_mode_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove("MESHREG_MODE")
    .env_remove("MESHREG_PROXY_BOOTSTRAP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("decision:") {
        Ok(text)
    } else {
        Err(text)
    }
}

fn reason_tag(r: &Reason) -> &'static str {
    match r {
        Reason::Configured => "configured",
        Reason::ModeFile(_) => "mode-file",
        Reason::Env => "env",
        Reason::BootstrapFile(_) => "bootstrap",
        Reason::AdminReady(_) => "admin",
        Reason::NoSidecar { .. } => "no-sidecar",
    }
}

/// The child half of `auto_mode_follows_the_environment`: decides the mode
/// in auto (or `SDK_MODES_CONFIGURED`) mode and checks it against
/// `SDK_MODES_EXPECT` (`<mode>:<reason>` or `error`); with
/// `SDK_MODES_CALL` it also calls that target through the resolver.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by auto_mode_follows_the_environment in a child process"]
async fn auto_mode_child() {
    let env = |k: &str| std::env::var(k).ok();
    let expect = env("SDK_MODES_EXPECT").expect("SDK_MODES_EXPECT");
    let mut b = Client::builder()
        .registry(env("SDK_MODES_REGISTRY").unwrap_or_else(|| "http://127.0.0.1:1".into()));
    if let Some(admin) = env("SDK_MODES_ADMIN") {
        b = b.sidecar(SidecarConfig {
            admin: admin.parse().unwrap(),
            ..SidecarConfig::default()
        });
    }
    if let Some(m) = env("SDK_MODES_CONFIGURED") {
        b = b.mode(m.parse().unwrap());
    }
    let client = b.build().unwrap();
    let d = match client.mode().await {
        Err(e) => {
            println!("decision: error: {e}");
            assert_eq!(expect, "error", "{e}");
            assert!(matches!(e, Error::Config(_)), "{e}");
            return;
        }
        Ok(d) => d,
    };
    let tag = format!("{}:{}", d.mode, reason_tag(&d.reason));
    println!("decision: {tag} ({}); sidecar {:?}", d.reason, d.sidecar);
    assert_eq!(tag, expect);
    if let Some(target) = env("SDK_MODES_CALL") {
        let r = client.resolve(&target).await.unwrap();
        let (dest, resp) = call_until_ok(&r, "/auto").await;
        assert_eq!(Some(dest.dial().to_string()), env("SDK_MODES_OUTBOUND"));
        assert_eq!(resp.body, "e1 /auto");
        assert!(client.subscriptions().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_mode_follows_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = blocking(|| Server::start(&dir.path().join("reg"), &[])).unwrap();
    let xds = xds_addr(&s);
    let echo = Echo::start("e1").await;
    let echo_side = blocking(|| Sidecar::start(dir.path(), &xds, "echo", &[])).unwrap();
    blocking(|| register(&s, "echo", echo.port, &sidecar_meta(&echo_side)));

    // A sidecar started from a bootstrap file, as in production; the SDK
    // reads the same file.
    let ports = [free_port(), free_port(), free_port()];
    let bootstrap = dir.path().join("proxy.toml");
    std::fs::write(
        &bootstrap,
        format!(
            "app = \"auto\"\nnamespace = \"default\"\nxds = [\"{xds}\"]\nadmin_port = {}\noutbound_port = {}\ninbound_port = {}\nbind_ip = \"127.0.0.1\"\n",
            ports[0], ports[1], ports[2]
        ),
    )
    .unwrap();
    let boot = bootstrap.to_str().unwrap().to_string();
    let side =
        blocking(|| Sidecar::start_at(dir.path(), &xds, "auto", ports, &["--bootstrap", &boot]))
            .unwrap();
    let missing = dir.path().join("no-such-proxy.toml");
    let missing = missing.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", side.admin);
    let dead = format!("127.0.0.1:{}", free_port());
    let outbound = format!("127.0.0.1:{}", side.outbound);
    let target = format!("echo:{}", echo.port);

    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        // MESHREG_MODE decides, whatever the sidecar's presence says.
        (
            "mesh:env",
            vec![
                ("MESHREG_MODE", "mesh"),
                ("MESHREG_PROXY_BOOTSTRAP", missing),
                ("SDK_MODES_ADMIN", &dead),
            ],
        ),
        (
            "direct:env",
            vec![
                ("MESHREG_MODE", "direct"),
                ("MESHREG_PROXY_BOOTSTRAP", &boot),
            ],
        ),
        // The bootstrap file exists: mesh, at the addresses it gives; a
        // call goes through that sidecar.
        (
            "mesh:bootstrap",
            vec![
                ("MESHREG_PROXY_BOOTSTRAP", &boot),
                ("SDK_MODES_REGISTRY", &s.grpc),
                ("SDK_MODES_CALL", &target),
                ("SDK_MODES_OUTBOUND", &outbound),
            ],
        ),
        // No file, but the admin port answers /ready.
        (
            "mesh:admin",
            vec![
                ("MESHREG_PROXY_BOOTSTRAP", missing),
                ("SDK_MODES_ADMIN", &admin),
            ],
        ),
        // Neither: direct.
        (
            "direct:no-sidecar",
            vec![
                ("MESHREG_PROXY_BOOTSTRAP", missing),
                ("SDK_MODES_ADMIN", &dead),
            ],
        ),
        // Code beats the environment.
        (
            "direct:configured",
            vec![
                ("MESHREG_MODE", "mesh"),
                ("MESHREG_PROXY_BOOTSTRAP", &boot),
                ("SDK_MODES_CONFIGURED", "direct"),
            ],
        ),
        // A wrong value fails loudly instead of falling through.
        (
            "error",
            vec![
                ("MESHREG_MODE", "sidecar"),
                ("MESHREG_PROXY_BOOTSTRAP", &boot),
            ],
        ),
    ];
    for (expect, mut env) in cases {
        env.push(("SDK_MODES_EXPECT", expect));
        let out = blocking(|| child(&env));
        assert!(out.is_ok(), "case {expect}: {}", out.unwrap_err());
    }
    assert!(
        blocking(|| inbound_2xx(&echo_side, "echo", echo.port)) >= 1,
        "the bootstrap-file case went through the sidecars"
    );
    assert!(
        blocking(|| side.stat("meshreg_proxy_upstream_rq_total", "class=\"2xx\"")) >= 1,
        "through the sidecar started from the bootstrap file"
    );
}

/// Per-mode outcome of a load run.
#[derive(Debug, Default)]
struct Tally {
    direct_ok: AtomicU64,
    mesh_ok: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_failure.lock().unwrap().get_or_insert(what);
    }
}

/// `tasks` loops of pick + GET (3 ms at the server) until `stop`.
fn load(
    r: &Resolver,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let (r, stop, tally) = (r.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let c = Caller::new();
                while !stop.load(Ordering::Relaxed) {
                    let d = match r.pick().await {
                        Ok(d) => d,
                        Err(e) => {
                            tally.fail(format!("pick: {e}"));
                            continue;
                        }
                    };
                    match call(&c, &d, "/load", 3).await {
                        Ok(resp) if resp.status == 200 => {
                            let n = match d.mode() {
                                Mode::Mesh => &tally.mesh_ok,
                                _ => &tally.direct_ok,
                            };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        other => tally.fail(format!("{} via {}: {other:?}", d.mode(), d.dial())),
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_modes_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = blocking(|| Server::start(&dir.path().join("reg"), &[])).unwrap();
    let xds = xds_addr(&s);
    let echo = Echo::start("e1").await;
    let echo_side = blocking(|| Sidecar::start(dir.path(), &xds, "echo", &[])).unwrap();
    blocking(|| register(&s, "echo", echo.port, &sidecar_meta(&echo_side)));
    let caller_side = blocking(|| Sidecar::start(dir.path(), &xds, "caller", &[])).unwrap();
    let own = Echo::start("caller").await;
    let caller = Client::builder()
        .registry(s.grpc.clone())
        .app("caller")
        .address("127.0.0.1")
        .port("http", own.port)
        .node_id("caller-switch")
        .mode(Mode::Direct)
        .sidecar(sidecar_config(&caller_side))
        .build()
        .unwrap();
    let reg = caller.register().await.unwrap();
    assert_eq!(reg.sidecar_port, None);
    assert_eq!(blocking(|| registered_sidecar_port(&s, "caller")), None);
    let target = format!("echo:{}", echo.port);
    let name = format!("outbound|{}||echo.default", echo.port);
    let r = caller.resolve(&target).await.unwrap();
    call_until_ok(&r, "/warm").await;
    // The mesh path must be routable before it is switched to; that is
    // the operator's part (start the sidecar first), checked here by
    // calling through it.
    let c = Caller::new();
    let host = format!("echo.default:{}", echo.port);
    assert!(blocking(|| eventually(WAIT, || {
        let h = tokio::runtime::Handle::current();
        h.block_on(c.get(caller_side.outbound, &host, "/"))
            .is_ok_and(|r| r.status == 200)
    })));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let jobs = load(&r, 6, &stop, &tally);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // One slow call in flight across the switch, sent directly.
    let slow_d = r.pick().await.unwrap();
    assert_eq!(slow_d.mode(), Mode::Direct);
    let slow = tokio::spawn(async move {
        let resp = call(&Caller::new(), &slow_d, "/slow", 1500).await;
        (slow_d.mode(), resp)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // direct → mesh: new picks go to the sidecar; the instance is
    // registered again with its sidecar port; the resolver's subscription
    // is dropped and the xDS stream closed.
    let d = tokio::time::timeout(WAIT, caller.set_mode(Mode::Mesh))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.mode, d.reason), (Mode::Mesh, Reason::Configured));
    assert_eq!(r.pick().await.unwrap().mode(), Mode::Mesh);
    assert_eq!(
        blocking(|| registered_sidecar_port(&s, "caller")),
        Some(caller_side.inbound.to_string())
    );
    assert!(caller.subscriptions().is_empty());
    assert!(
        blocking(|| eventually(WAIT, || !xds_nodes(&s).iter().any(|n| n == "caller-switch"))),
        "the xDS stream is closed in mesh mode"
    );
    let (slow_mode, slow_resp) = slow.await.unwrap();
    let slow_resp = slow_resp.expect("the call in flight across the switch");
    assert_eq!((slow_mode, slow_resp.status), (Mode::Direct, 200));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mesh_ok = tally.mesh_ok.load(Ordering::Relaxed);
    assert!(mesh_ok > 20, "only {mesh_ok} calls in mesh mode");

    // mesh → direct: subscribed again before the switch takes effect.
    let d = tokio::time::timeout(WAIT, caller.set_mode(Mode::Direct))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.mode, Mode::Direct);
    assert_eq!(caller.subscriptions(), vec![name]);
    assert_eq!(blocking(|| registered_sidecar_port(&s, "caller")), None);
    let direct_before = tally.direct_ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for j in jobs {
        j.await.unwrap();
    }
    let (direct_ok, mesh_ok, failed) = (
        tally.direct_ok.load(Ordering::Relaxed),
        tally.mesh_ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} calls failed; first: {:?}",
        direct_ok + mesh_ok + failed,
        tally.first_failure.lock().unwrap()
    );
    assert!(
        direct_ok - direct_before > 20,
        "direct again after the switch back"
    );
    // Every mesh-mode call went through both sidecars.
    assert!(blocking(|| inbound_2xx(&echo_side, "echo", echo.port)) >= mesh_ok);
    caller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_channel_follows_a_switch_and_streams_opened_before_it_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let s = blocking(|| Server::start(&dir.path().join("reg"), &[])).unwrap();
    let xds = xds_addr(&s);
    let grpc_port: u16 = xds.rsplit(':').next().unwrap().parse().unwrap();
    let reg_side = blocking(|| Sidecar::start(dir.path(), &xds, "registry", &[])).unwrap();
    blocking(|| register(&s, "registry", grpc_port, &sidecar_meta(&reg_side)));
    let caller_side = blocking(|| Sidecar::start(dir.path(), &xds, "caller", &[])).unwrap();
    let caller = Client::builder()
        .registry(s.grpc.clone())
        .mode(Mode::Direct)
        .sidecar(sidecar_config(&caller_side))
        .build()
        .unwrap();
    let mut api = RegistryClient::new(
        caller
            .grpc_channel(&format!("meshreg://registry.default:{grpc_port}"))
            .await
            .unwrap(),
    );
    let through_sidecars = || inbound_2xx(&reg_side, "registry", grpc_port);
    api.list_namespaces(ListNamespacesRequest::default())
        .await
        .unwrap();
    assert_eq!(
        blocking(through_sidecars),
        0,
        "direct mode dials the registry itself"
    );
    // Wait until the caller's sidecar routes to the registry (the
    // operator's part before switching).
    let outbound = caller_side.outbound;
    let deadline = Instant::now() + WAIT;
    loop {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{outbound}"))
            .unwrap()
            .origin(
                format!("http://registry.default:{grpc_port}")
                    .parse()
                    .unwrap(),
            )
            .connect()
            .await
            .unwrap();
        if RegistryClient::new(ch)
            .list_namespaces(ListNamespacesRequest::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the caller's sidecar never routed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = blocking(through_sidecars);

    // A KeepAlive stream opened in direct mode.
    let session = api
        .grant_session(GrantSessionRequest { ttl_ms: 60_000 })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let ka = KeepAliveRequest {
        session_id: session,
    };
    let (tx1, rx1) = tokio::sync::mpsc::channel(4);
    tx1.send(ka).await.unwrap();
    let mut stream1 = api
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .unwrap()
        .into_inner();
    stream1.message().await.unwrap().unwrap();

    caller.set_mode(Mode::Mesh).await.unwrap();
    for _ in 0..5 {
        api.list_namespaces(ListNamespacesRequest::default())
            .await
            .unwrap();
    }
    assert!(
        blocking(|| eventually(WAIT, || through_sidecars() >= base + 5)),
        "calls after the switch go through the sidecars: {} then {}",
        base,
        blocking(through_sidecars)
    );
    // The stream opened before the switch still answers.
    tx1.send(ka).await.unwrap();
    tokio::time::timeout(WAIT, stream1.message())
        .await
        .expect("keepalive answer on the old stream")
        .expect("old stream open")
        .expect("a message");

    // A stream opened in mesh mode, then back to direct.
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(ka).await.unwrap();
    let mut stream2 = api
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    stream2.message().await.unwrap().unwrap();
    caller.set_mode(Mode::Direct).await.unwrap();
    let mesh_count = blocking(through_sidecars);
    for _ in 0..5 {
        api.list_namespaces(ListNamespacesRequest::default())
            .await
            .unwrap();
    }
    tx2.send(ka).await.unwrap();
    tokio::time::timeout(WAIT, stream2.message())
        .await
        .expect("keepalive answer on the mesh stream")
        .expect("mesh stream open")
        .expect("a message");
    tx1.send(ka).await.unwrap();
    stream1.message().await.unwrap().unwrap();
    // Only the mesh stream's keepalive went through the sidecars (a
    // stream counts once, when it ends); the unary calls went direct.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blocking(through_sidecars), mesh_count, "direct again");
    caller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mode_file_and_sighup_switch_a_running_client_and_a_missing_sidecar_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = blocking(|| Server::start(&dir.path().join("reg"), &[])).unwrap();
    let xds = xds_addr(&s);
    let side = blocking(|| Sidecar::start(dir.path(), &xds, "app", &[])).unwrap();
    let own = Echo::start("app").await;
    let mode_file = dir.path().join("mode");
    std::fs::write(&mode_file, "direct\n").unwrap();
    let client = Client::builder()
        .registry(s.grpc.clone())
        .app("app")
        .address("127.0.0.1")
        .port("http", own.port)
        .mode_file(&mode_file)
        .sidecar(sidecar_config(&side))
        .build()
        .unwrap();
    let hup = client.reload_mode_on_sighup().unwrap();
    client.register().await.unwrap();
    let d = client.mode().await.unwrap();
    assert_eq!(
        (d.mode, d.reason),
        (Mode::Direct, Reason::ModeFile(mode_file.clone()))
    );
    let sighup = || {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let wait_mode = |m: Mode| {
        let c = client.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while c.mode().await.unwrap().mode != m {
                assert!(Instant::now() < deadline, "never switched to {m}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    std::fs::write(&mode_file, "mesh\n").unwrap();
    sighup();
    wait_mode(Mode::Mesh).await;
    let port = side.inbound.to_string();
    assert!(blocking(|| eventually(WAIT, || registered_sidecar_port(
        &s, "app"
    )
    .as_deref()
        == Some(port.as_str()))));
    // A value that is not a mode changes nothing (it is logged).
    std::fs::write(&mode_file, "sidecar\n").unwrap();
    assert!(matches!(client.reload_mode().await, Err(Error::Config(_))));
    assert_eq!(client.mode().await.unwrap().mode, Mode::Mesh);
    std::fs::write(&mode_file, "direct\n").unwrap();
    sighup();
    wait_mode(Mode::Direct).await;
    assert!(blocking(|| eventually(WAIT, || registered_sidecar_port(
        &s, "app"
    )
    .is_none())));
    hup.abort();

    // Switching to a sidecar that does not answer is refused: the client
    // stays in direct mode and keeps working.
    let lonely = Client::builder()
        .registry(s.grpc.clone())
        .mode(Mode::Direct)
        .sidecar(SidecarConfig {
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            ..SidecarConfig::default()
        })
        .build()
        .unwrap();
    let r = lonely.resolve(&format!("app:{}", own.port)).await.unwrap();
    let e = lonely.set_mode(Mode::Mesh).await.unwrap_err();
    assert!(matches!(e, Error::ModeSwitch { to: Mode::Mesh, .. }), "{e}");
    assert_eq!(lonely.mode().await.unwrap().mode, Mode::Direct);
    let (d, resp) = call_until_ok(&r, "/still").await;
    assert_eq!((d.mode(), resp.body.as_str()), (Mode::Direct, "app /still"));
    lonely.shutdown().await;
    client.shutdown().await;
}
