//! Harness for mesh tests: real `meshreg-proxy` processes (sidecars) and
//! in-process upstream applications (HTTP/1.1 + h2c echo servers, raw TCP
//! echo servers).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinSet;

/// Path of the `meshreg-proxy` binary (next to `meshreg`, or `$MESHREG_PROXY_BIN`).
pub fn proxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MESHREG_PROXY_BIN") {
        return PathBuf::from(p);
    }
    let bin = crate::meshreg_bin().with_file_name("meshreg-proxy");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds it) or set MESHREG_PROXY_BIN",
        bin.display()
    );
    bin
}

/// A free loopback port for a server a test starts, never the same twice
/// in one test process: sidecars bind with `SO_REUSEPORT`, so two tests'
/// proxies handed the same port would silently share it, and cluster nodes
/// keep their ports across restarts. Ports come from just below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`), which
/// outgoing connections never use: a port handed out here cannot be taken
/// by some client's connection before the test's server binds it, as a
/// bound-and-released ephemeral port can. Each process starts at its own
/// offset, and a port is checked free before it is handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = ephemeral_low.saturating_sub(low).max(1);
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() * 97) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + n % span).expect("a port below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_low}");
}

/// A running `meshreg-proxy`.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    /// Admin port.
    pub admin: u16,
    /// Outbound listener port.
    pub outbound: u16,
    /// Inbound listener port.
    pub inbound: u16,
    log: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar for `app` (namespace `default`) against the xDS
    /// server at `xds` (`host:port`), on fresh loopback ports, logging to
    /// `dir`, and waits until `/ready` answers 200.
    pub fn start(dir: &Path, xds: &str, app: &str, extra: &[&str]) -> anyhow::Result<Sidecar> {
        let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
        Self::start_at(dir, xds, app, [admin, outbound, inbound], extra)
    }

    /// Like [`Sidecar::start`] on given (admin, outbound, inbound) ports.
    pub fn start_at(
        dir: &Path,
        xds: &str,
        app: &str,
        ports: [u16; 3],
        extra: &[&str],
    ) -> anyhow::Result<Sidecar> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join(format!("proxy-{app}-{}.log", ports[0]));
        let child = Command::new(proxy_bin())
            .args([
                "--app",
                app,
                "--namespace",
                "default",
                "--xds",
                xds,
                "--bind-ip",
                "127.0.0.1",
            ])
            .args(["--admin-port", &ports[0].to_string()])
            .args(["--outbound-port", &ports[1].to_string()])
            .args(["--inbound-port", &ports[2].to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()?;
        let s = Sidecar {
            child,
            admin: ports[0],
            outbound: ports[1],
            inbound: ports[2],
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.admin_get("/ready").0 != 200 {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "meshreg-proxy not ready within 30 s; log:\n{}",
                    s.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// The proxy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an admin path: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        match agent
            .get(format!("http://127.0.0.1:{}{path}", self.admin))
            .call()
        {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    /// POST an admin path.
    pub fn admin_post(&self, path: &str) -> u16 {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(format!("http://127.0.0.1:{}{path}", self.admin))
            .send_empty()
            .map_or(0, |r| r.status().as_u16())
    }

    /// A counter from `/stats` (the sum over label sets matching `filter`).
    pub fn stat(&self, metric: &str, filter: &str) -> u64 {
        let (_, text) = self.admin_get("/stats");
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (up to `timeout`); its exit success.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.success());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process upstream application: answers every request with
/// `<id> <path>` and the request headers it saw as `x-seen-<name>`
/// response headers for `x-meshreg-port`, `host` and `x-forwarded-for`.
/// `x-status: N` sets the status; `x-delay-ms: N` delays the answer.
/// Serves HTTP/1.1 and h2c on one port.
#[derive(Debug)]
pub struct Echo {
    /// Its id.
    pub id: String,
    /// Its address.
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// Requests served.
    pub served: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl Echo {
    /// Starts an echo server on a fresh loopback port.
    pub async fn start(id: &str) -> Echo {
        Self::start_on(id, [127, 0, 0, 1], 0).await
    }

    /// Starts an echo server on `ip`:`port` (0 = any). Instances of one
    /// application share a port number on different loopback addresses
    /// (127.0.0.2, 127.0.0.3, ...), as they would on different hosts.
    pub async fn start_on(id: &str, ip: [u8; 4], port: u16) -> Echo {
        let sock = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
            .await
            .expect("bind echo");
        let port = sock.local_addr().expect("addr").port();
        let served = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let conns = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let (id2, served2, conns2) = (id.to_string(), Arc::clone(&served), Arc::clone(&conns));
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = sock.accept().await else {
                    continue;
                };
                let id = id2.clone();
                let served = Arc::clone(&served2);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let id = id.clone();
                    let served = Arc::clone(&served);
                    async move { Ok::<_, Infallible>(echo(&id, &served, req).await) }
                });
                conns2.lock().await.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        // Keep the connection set owned by the accept task's JoinSet so that
        // dropping the Echo aborts connections too.
        tasks.spawn(async move {
            let _keep = conns;
            std::future::pending::<()>().await;
        });
        Echo {
            id: id.to_string(),
            ip: std::net::Ipv4Addr::from(ip).to_string(),
            port,
            served,
            tasks,
        }
    }

    /// Kills the server: the listener and every open connection (resets in flight).
    pub fn kill(mut self) {
        self.tasks.abort_all();
    }
}

/// An in-process raw TCP application shaped like a server-first protocol
/// (MySQL, SMTP): on accept it greets with `<id>\n`, then echoes every
/// byte it reads; when the client closes its sending side (FIN) it writes
/// `bye <n>\n` (`n` = bytes read) and closes. So a client that half-closes
/// sees the greeting, its bytes, and the `bye` line sent after its FIN.
///
/// Started with [`TcpEcho::start_dual`] it sends no greeting and first
/// looks at what the client sends: an HTTP/1.x request line or the HTTP/2
/// preface is served as [`Echo`] serves it, anything else is echoed as
/// above.
#[derive(Debug)]
pub struct TcpEcho {
    /// Its id.
    pub id: String,
    /// Its address.
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// Raw (non-HTTP) connections accepted.
    pub accepted: Arc<AtomicU64>,
    /// HTTP requests served (dual mode).
    pub served: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl TcpEcho {
    /// Starts a greeting echo server on `ip`:`port` (0 = any).
    pub async fn start_on(id: &str, ip: [u8; 4], port: u16) -> TcpEcho {
        Self::spawn(id, ip, port, false).await
    }

    /// Starts an echo server on a fresh loopback port that serves HTTP
    /// too, and sends no greeting.
    pub async fn start_dual(id: &str) -> TcpEcho {
        Self::spawn(id, [127, 0, 0, 1], 0, true).await
    }

    async fn spawn(id: &str, ip: [u8; 4], port: u16, dual: bool) -> TcpEcho {
        let sock = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
            .await
            .expect("bind tcp echo");
        let port = sock.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let mut tasks = JoinSet::new();
        let (id2, accepted2, served2, conns2) = (
            id.to_string(),
            Arc::clone(&accepted),
            Arc::clone(&served),
            Arc::clone(&conns),
        );
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = sock.accept().await else {
                    continue;
                };
                let (id, accepted, served) =
                    (id2.clone(), Arc::clone(&accepted2), Arc::clone(&served2));
                conns2.lock().await.spawn(async move {
                    if dual && starts_like_http(&stream).await {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let id = id.clone();
                            let served = Arc::clone(&served);
                            async move { Ok::<_, Infallible>(echo(&id, &served, req).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                        return;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let greeting = if dual { None } else { Some(id.as_str()) };
                    let _ = echo_bytes(stream, greeting).await;
                });
            }
        });
        // Dropping the TcpEcho aborts its connections too.
        tasks.spawn(async move {
            let _keep = conns;
            std::future::pending::<()>().await;
        });
        TcpEcho {
            id: id.to_string(),
            ip: std::net::Ipv4Addr::from(ip).to_string(),
            port,
            accepted,
            served,
            tasks,
        }
    }

    /// Kills the server: the listener and every open connection.
    pub fn kill(mut self) {
        self.tasks.abort_all();
    }
}

/// Whether the client's first bytes (waiting up to 1 s for them) are an
/// HTTP/1.x request line or the HTTP/2 preface.
async fn starts_like_http(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let deadline = Instant::now() + Duration::from_secs(1);
    let n = loop {
        match stream.peek(&mut buf).await {
            Ok(n) if n == 0 || n >= 8 || buf[..n].contains(&b' ') || Instant::now() > deadline => {
                break n
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break 0,
        }
    };
    let b = &buf[..n];
    b.starts_with(b"PRI * HTTP/2")
        || [
            "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
        ]
        .iter()
        .any(|m| b.starts_with(m.as_bytes()))
}

/// `<greeting>\n` when given, then every byte read written back; at the
/// client's FIN `bye <n>\n` and close.
async fn echo_bytes(
    mut stream: tokio::net::TcpStream,
    greeting: Option<&str>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if let Some(g) = greeting {
        stream.write_all(format!("{g}\n").as_bytes()).await?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            stream
                .write_all(format!("bye {total}\n").as_bytes())
                .await?;
            return stream.shutdown().await;
        }
        total += n as u64;
        stream.write_all(&buf[..n]).await?;
    }
}

async fn echo(id: &str, served: &AtomicU64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    served.fetch_add(1, Ordering::Relaxed);
    let h = req.headers();
    let status: u16 = h
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(200);
    let delay: u64 = h
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let mut seen = BTreeMap::new();
    for name in ["x-meshreg-port", "host", "x-forwarded-for"] {
        if let Some(v) = h.get(name) {
            seen.insert(format!("x-seen-{name}"), v.clone());
        }
    }
    if let Some(a) = req.uri().authority() {
        seen.insert(
            "x-seen-authority".into(),
            a.as_str().parse().expect("header value"),
        );
    }
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(format!("{id} {path}"))));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    for (k, v) in seen {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v,
        );
    }
    r.headers_mut()
        .insert("x-seen-version", version.parse().expect("v"));
    r.headers_mut().insert("x-seen-body-bytes", body.into());
    r
}

/// Registers an instance of `app` at 127.0.0.1:`port` (port name `http`)
/// with extra JSON fields (e.g. `"weight":3` or the sidecar metadata).
pub fn register(s: &crate::Server, app: &str, port: u16, extra: &str) -> String {
    register_at(s, app, "127.0.0.1", port, extra)
}

/// Like [`register`] at `ip`.
pub fn register_at(s: &crate::Server, app: &str, ip: &str, port: u16, extra: &str) -> String {
    let id = format!("{app}-{ip}-{port}");
    let sep = if extra.is_empty() { "" } else { "," };
    let body = format!(
        r#"{{"app":"{app}","id":"{id}","address":"{ip}","ports":{{"http":{port}}}{sep}{extra}}}"#
    );
    let r = s.post("/v1/namespaces/default/instances", &body);
    assert_eq!(r.status, 200, "register {app}: {}", r.text);
    id
}

/// The xDS address (`host:port`) of a server.
pub fn xds_addr(s: &crate::Server) -> String {
    s.grpc.trim_start_matches("http://").to_string()
}

/// An HTTP client for calls through a sidecar: pooled keep-alive
/// HTTP/1.1, or h2c with prior knowledge.
#[derive(Debug, Clone)]
pub struct Caller {
    h1: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// A response: status, headers, body text.
#[derive(Debug)]
pub struct Called {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: String,
}

impl Called {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Default for Caller {
    fn default() -> Self {
        Self::new()
    }
}

impl Caller {
    /// A new client.
    pub fn new() -> Caller {
        Caller {
            h1: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .set_host(false)
                .build_http(),
        }
    }

    /// Sends `method path` to 127.0.0.1:`port` with Host / :authority
    /// `host`, extra headers and a body.
    #[allow(clippy::too_many_arguments)] // a test helper mirroring a request's parts
    pub async fn call(
        &self,
        h2: bool,
        port: u16,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Called, String> {
        // h2: the :authority comes from the URI; h1: from the Host header.
        let uri = if h2 {
            format!("http://{host}{path}")
        } else {
            format!("http://127.0.0.1:{port}{path}")
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 {
            b = b.header("host", host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let resp = if h2 {
            // Connect to the sidecar whatever the authority says.
            let io = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            self.h1.request(req).await.map_err(|e| e.to_string())?
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Called {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// GET over HTTP/1.1.
    pub async fn get(&self, port: u16, host: &str, path: &str) -> Result<Called, String> {
        self.call(false, port, host, "GET", path, &[], b"").await
    }
}
