//! The HTTP forwarding path: HTTP/1.1, HTTP/2 (h2c) and gRPC.
//!
//! Per request: route table (RDS) → virtual host by Host/:authority →
//! first matching route → cluster (weighted clusters by weight) →
//! circuit breakers → endpoint pick → upstream attempt, retried by the
//! route's retry policy. HTTP/1.1 upstream connections are pooled per
//! endpoint with keep-alive by [`crate::h1`], which reads and writes them
//! from the request's own task; HTTP/2 ones are multiplexed by hyper's
//! pooled client. The upstream protocol is the downstream one unless the
//! cluster asks for HTTP/2.
//!
//! Retries follow Envoy's `retry_on` conditions, with one safety rule
//! Envoy leaves to configuration: a request that may have reached the
//! upstream (reset, timeout, 5xx) is retried only when its method is
//! idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE); a connect failure
//! is always retriable. A request body is replayable when the request has
//! none or declares a `content-length` of at most 64 KiB (it is buffered);
//! longer or streamed bodies (gRPC streams) are sent once.
//!
//! Local replies carry `x-meshreg-flags` with Envoy's response flags:
//! `NR` no route, `NC` no cluster, `UH` no healthy upstream, `UO`
//! overflow (circuit breaker), `UF` connect failure, `UR` reset, `UT`
//! timeout.

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Action, ForwardAction, PORT_HEADER};
use crate::h1;
use crate::runtime::{hash64, retry_backoff, ClusterStats, EndpointState, Outcome, PickCtx};

/// HTTP/2 upstream request body: buffered (replayable) or streamed once.
pub type ReqBody = Either<Full<Bytes>, Incoming>;
/// The pooled HTTP/2 upstream client.
pub type HttpClient = Client<HttpConnector, ReqBody>;

/// Largest request body buffered so that the request can be retried.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// A cluster's upstream clients (HTTP/1.1 goes through [`crate::h1`],
/// whose pools live in the endpoints' state).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// HTTP/2 with prior knowledge (h2c).
    pub h2: HttpClient,
}

/// A pooled HTTP/2 (h2c, prior knowledge) client, one per connect timeout.
pub fn new_client(connect_timeout: Duration) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    conn.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .set_host(false)
        .http2_only(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)));
    b.build(conn)
}

/// Decrements the in-flight counters when the response body is done, and
/// then records the request's time in the cluster's `rq_time` when its
/// response was passed on (`timed`).
#[derive(Debug)]
pub struct ActiveGuard {
    ep: Arc<EndpointState>,
    cluster: Arc<ClusterStats>,
    retry: bool,
    started: Instant,
    timed: bool,
}

impl ActiveGuard {
    fn new(
        ep: &Arc<EndpointState>,
        cluster: &Arc<ClusterStats>,
        retry: bool,
        started: Instant,
    ) -> Self {
        ep.stats.active.fetch_add(1, Relaxed);
        ep.stats.total.fetch_add(1, Relaxed);
        cluster.active.fetch_add(1, Relaxed);
        if retry {
            cluster.active_retries.fetch_add(1, Relaxed);
        }
        ActiveGuard {
            ep: Arc::clone(ep),
            cluster: Arc::clone(cluster),
            retry,
            started,
            timed: false,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.ep.stats.active.fetch_sub(1, Relaxed);
        self.cluster.active.fetch_sub(1, Relaxed);
        if self.retry {
            self.cluster.active_retries.fetch_sub(1, Relaxed);
        }
        if self.timed {
            self.cluster.rq_time.record(self.started.elapsed());
        }
    }
}

/// The response body sent downstream.
#[derive(Debug)]
pub enum RespBody {
    /// Streamed from an HTTP/2 upstream (hyper's client); holds the
    /// in-flight counters.
    Upstream(Incoming, ActiveGuard),
    /// Streamed from an HTTP/1.1 upstream ([`h1`]); holds the in-flight
    /// counters.
    H1(h1::ResponseBody, ActiveGuard),
    /// A local reply.
    Local(Full<Bytes>),
}

impl Body for RespBody {
    type Data = Bytes;
    /// hyper's or [`h1::Error`], boxed (what hyper's server takes).
    type Error = h1::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::BoxError>>> {
        match self.get_mut() {
            RespBody::Upstream(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RespBody::H1(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RespBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(b, _) => b.is_end_stream(),
            RespBody::H1(b, _) => b.is_end_stream(),
            RespBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(b, _) => b.size_hint(),
            RespBody::H1(b, _) => b.size_hint(),
            RespBody::Local(b) => b.size_hint(),
        }
    }
}

impl h1::server::UpstreamFields for RespBody {
    fn take_upstream_head(&mut self) -> Option<h1::UpstreamHead> {
        match self {
            RespBody::H1(b, _) => b.take_head(),
            RespBody::Upstream(..) | RespBody::Local(_) => None,
        }
    }
}

/// An upstream response body, by protocol.
#[derive(Debug)]
enum UpBody {
    H2(Incoming),
    H1(h1::ResponseBody),
}

/// An upstream attempt's failure, by protocol.
#[derive(Debug)]
enum UpError {
    H2(hyper_util::client::legacy::Error),
    H1(h1::Error),
}

impl UpError {
    fn is_connect(&self) -> bool {
        match self {
            UpError::H2(e) => e.is_connect(),
            UpError::H1(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::H2(e) => e.fmt(f),
            UpError::H1(e) => e.fmt(f),
        }
    }
}

/// A local reply with Envoy-style response flags.
pub fn local_reply(status: StatusCode, flags: &'static str, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Local(Full::new(Bytes::from(format!("{msg}\n")))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert("x-meshreg-flags", HeaderValue::from_static(flags));
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded.
pub(crate) static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names notes which hop-by-hop fields are present
    // (most requests carry none, most responses only `connection`); only
    // those are then removed, one hashed lookup each.
    let mut present = 0u8; // bit i: HOP_BY_HOP[i]
    let mut te = false;
    for n in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|x| x == n) {
            present |= 1 << i;
        } else {
            te |= *n == header::TE;
        }
    }
    if present == 0 && !te {
        return;
    }
    if present & 1 != 0 {
        // The fields `connection` names (RFC 9110 §7.6.1). The usual
        // tokens, `keep-alive` and `close`, name nothing to remove beyond
        // the fixed list, so they cost no header name.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(connection_names)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    // TE: only "trailers" may pass (gRPC needs it).
    if te
        && h.get(header::TE)
            .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
}

/// The field names a `connection` field value lists beyond the fixed
/// hop-by-hop ones (RFC 9110 §7.6.1): its options other than `close`,
/// `te` and the names in [`HOP_BY_HOP`] (`keep-alive` among them), which
/// name nothing more to remove.
pub(crate) fn connection_names(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| {
        !t.is_empty()
            && !t.eq_ignore_ascii_case("close")
            && !t.eq_ignore_ascii_case("te")
            && !HOP_BY_HOP
                .iter()
                .any(|n| t.eq_ignore_ascii_case(n.as_str()))
    })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What the access log records of one request (filled only when it is on).
#[derive(Debug, Default)]
pub struct LogInfo {
    /// Whether the access log is on.
    pub enabled: bool,
    /// Response flags, `-` when none.
    pub flags: &'static str,
    /// Upstream host of the last attempt.
    pub upstream: Option<String>,
    /// Cluster.
    pub cluster: Option<String>,
}

impl LogInfo {
    /// A [`local_reply`] whose `flags` the access log records too.
    fn reply(&mut self, status: StatusCode, flags: &'static str, msg: &str) -> Response<RespBody> {
        self.flags = flags;
        local_reply(status, flags, msg)
    }
}

/// The downstream peer of a connection, as `forward` uses it: its IP as
/// the header value appended to `x-forwarded-for` (made once per
/// connection).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote address's IP, formatted.
    pub ip: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { ip }
    }
}

/// A downstream request's body, as the forwarding path takes it.
#[derive(Debug)]
pub enum Inbound {
    /// Read whole (by [`h1::server`]), with the header fields as they
    /// came (the request's `HeaderMap` is empty); replayable.
    Buffered(h1::server::Received),
    /// Streamed by hyper's server (HTTP/2, and the HTTP/1.1 requests that
    /// [`h1::server`] hands over).
    Stream(Incoming),
}

/// Handles one downstream request from `peer` on an HTTP listener whose
/// routes are the route table `route_name`, counting its response in
/// `stats`.
///
/// Not an `async fn`: that would store the request twice (argument and
/// binding) in a future that lives inline in the connection's task.
#[allow(clippy::manual_async_fn)] // written out on purpose, see above
pub fn handle<'a>(
    proxy: &'a crate::Proxy,
    route_name: &'a str,
    peer: &'a Peer,
    stats: &'a crate::listener::ListenerStats,
    req: Request<Inbound>,
) -> impl std::future::Future<Output = Response<RespBody>> + 'a {
    async move {
        let access_log = proxy.bootstrap.access_log;
        // Read only for the access log: a clock read per request is not free.
        let start = access_log.then(Instant::now);
        let (method, path, version) = if access_log {
            (
                req.method().clone(),
                req.uri().path_and_query().map(|p| p.as_str().to_string()),
                req.version(),
            )
        } else {
            (Method::GET, None, Version::HTTP_11)
        };
        let mut out = LogInfo {
            enabled: access_log,
            flags: "-",
            ..Default::default()
        };
        // Boxed: the forwarding future is kilobytes (the upstream attempt, its
        // timer, the retry state), needed only while a request is in flight;
        // inline it would make every downstream connection's task that large
        // for its whole life, idle or not.
        let mut resp = Box::pin(forward(proxy, route_name, peer, req, &mut out)).await;
        stats.rq_by_class[crate::status_class(resp.status().as_u16())].fetch_add(1, Relaxed);
        if proxy.is_draining() && resp.version() != Version::HTTP_2 {
            // Draining: ask HTTP/1.1 clients to reconnect (to the new binary).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if access_log {
            tracing::info!(
                target: "access",
                "\"{} {} {:?}\" {} {} {}ms {} {}",
                method,
                path.as_deref().unwrap_or("/"),
                version,
                resp.status().as_u16(),
                out.flags,
                start.map_or(0, |s| s.elapsed().as_millis()),
                out.cluster.as_deref().unwrap_or("-"),
                out.upstream.as_deref().unwrap_or("-"),
            );
        }
        resp
    }
}

/// The forwarding of one request: route, cluster, attempts. Not an
/// `async fn`, which would store the request twice (argument and binding,
/// 416 bytes each) in a future that is boxed per request.
fn forward<'a>(
    proxy: &'a crate::Proxy,
    route_name: &'a str,
    peer: &'a Peer,
    req: Request<Inbound>,
    out: &'a mut LogInfo,
) -> impl std::future::Future<Output = Response<RespBody>> + 'a {
    let (mut parts, body) = req.into_parts();
    async move {
        let rt = proxy.runtime();
        let Some(table) = rt.routes.get(route_name) else {
            return out.reply(StatusCode::NOT_FOUND, "NR", "no route configuration");
        };
        // An HTTP/1.1 request read by `h1::server` keeps its fields as they
        // came (no map) unless it goes to an HTTP/2 upstream.
        let lookup: &dyn HeaderFields = match &body {
            Inbound::Buffered(r) => &r.fields,
            Inbound::Stream(_) => &parts.headers,
        };
        let authority: &str = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| lookup.value("host").and_then(visible_ascii))
            .unwrap_or_default();
        let Some(vh) = table.vhost(authority) else {
            return out.reply(
                StatusCode::NOT_FOUND,
                "NR",
                &format!("no virtual host for {authority:?}"),
            );
        };
        let pq_str = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Some(route) = vh
            .routes
            .iter()
            .find(|r| r.matches(&parts.method, pq_str, authority, lookup))
        else {
            return out.reply(StatusCode::NOT_FOUND, "NR", "no route matched");
        };
        let f: &ForwardAction = match &route.action {
            Action::Direct { status, body } => {
                let mut r = Response::new(RespBody::Local(Full::new(body.clone())));
                *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                return r;
            }
            Action::Forward(f) => f,
        };
        let cluster_name = if f.clusters.len() == 1 {
            &f.clusters[0].0
        } else {
            let mut r = fastrand::u64(..f.total_weight.max(1));
            let mut chosen = &f.clusters[0].0;
            for (c, w) in &f.clusters {
                if r < u64::from(*w) {
                    chosen = c;
                    break;
                }
                r -= u64::from(*w);
            }
            chosen
        };
        if out.enabled {
            out.cluster = Some(cluster_name.clone());
        }
        let Some(cluster) = rt.clusters.get(cluster_name) else {
            return out.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "NC",
                &format!("cluster {cluster_name:?} not found"),
            );
        };
        let downstream_h2 = parts.version == Version::HTTP_2;
        let h2 = downstream_h2 || cluster.cfg.http2;
        let limits = &cluster.cfg.limits;
        let active = cluster.stats.active.load(Relaxed);
        if active >= limits.max_requests || (!h2 && active >= limits.max_connections) {
            cluster.stats.overflow.fetch_add(1, Relaxed);
            let mut r = out.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                "upstream overflow (circuit breaker)",
            );
            r.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            return r;
        }
        let hash = f
            .hash_header
            .as_ref()
            .and_then(|h| lookup.value(h.as_str()))
            .map(hash64);

        // A request read by `h1::server` gets its response written by it, from
        // an HTTP/1.1 upstream's own bytes; hyper's server needs the map.
        let own_server = matches!(body, Inbound::Buffered(_));
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // Body: replayable when read whole, empty, or small with a declared
        // length (then buffered here).
        let (replay, mut once, mut received) = match body {
            Inbound::Buffered(r) => (Some(r.body), None, Some(r.fields)),
            Inbound::Stream(body) if body.is_end_stream() => (Some(Bytes::new()), None, None),
            Inbound::Stream(body)
                if f.retry.is_some()
                    && body
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n <= MAX_REPLAY_BODY) =>
            {
                match body.collect().await {
                    Ok(c) => (Some(c.to_bytes()), None, None),
                    Err(e) => {
                        return out.reply(
                            StatusCode::BAD_REQUEST,
                            "DR",
                            &format!("reading the request body: {e}"),
                        );
                    }
                }
            }
            Inbound::Stream(body) => (None, Some(body), None),
        };
        if h2 {
            // hyper's client takes a map.
            if let Some(r) = received.take() {
                parts.headers = r.to_map();
            }
        }
        let fields: &mut dyn HeaderFields = match &mut received {
            Some(r) => r,
            None => &mut parts.headers,
        };
        fields.strip_hop_by_hop();
        for h in &route.remove_headers {
            fields.remove(h);
        }
        if let Some(host) = &f.host_rewrite {
            fields.insert(header::HOST, host.clone());
        } else if !h2 && fields.value("host").is_none() {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                fields.insert(header::HOST, v);
            }
        }
        if h2 && !downstream_h2 {
            fields.remove(&header::HOST);
        }
        append_forwarded_for(fields, peer);

        let idem = idempotent(&parts.method);
        let retry = f.retry.clone().unwrap_or_default();
        let max_attempts = 1 + if f.retry.is_some() {
            retry.num_retries
        } else {
            0
        };
        // One clock read serves the route's deadline and the first attempt's.
        let first = Instant::now();
        let deadline = f.timeout.map(|t| first + t);
        let Some(upstream) = cluster.upstream.get() else {
            return out.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "NC",
                "cluster not initialised",
            );
        };
        let client = &upstream.h2;
        let connect_timeout = cluster.cfg.connect_timeout;
        let mut prev: Option<Arc<EndpointState>> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let ctx = PickCtx {
                hash,
                subset: &f.metadata_match,
                avoid: prev.as_ref(),
            };
            let Some(host) = cluster.pick(&ctx) else {
                cluster.stats.no_healthy.fetch_add(1, Relaxed);
                return out.reply(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream");
            };
            let ep = Arc::clone(&host.state);
            if out.enabled {
                out.upstream = Some(ep.authority.clone());
            }
            let Some(up_authority) = &ep.uri_authority else {
                return out.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UH",
                    &format!(
                        "endpoint address {:?} is not a valid authority",
                        ep.authority
                    ),
                );
            };
            let last_try = attempt >= max_attempts;
            let port_header = host
                .cfg
                .app_port
                .map(|p| (HeaderName::from_static(PORT_HEADER), HeaderValue::from(p)));
            // HTTP/2 goes through hyper's client (a full request with a URI);
            // HTTP/1.1 through `h1`, which borrows the head.
            let prepared = if h2 {
                let uri = Uri::builder()
                    .scheme(http::uri::Scheme::HTTP)
                    .authority(up_authority.clone())
                    .path_and_query(pq.clone())
                    .build();
                let uri: Uri = match uri {
                    Ok(u) => u,
                    Err(e) => {
                        return out.reply(
                            StatusCode::BAD_REQUEST,
                            "DPE",
                            &format!("request target: {e}"),
                        );
                    }
                };
                let body = match (&replay, once.take()) {
                    (Some(b), _) => Either::Left(Full::new(b.clone())),
                    (None, Some(b)) => Either::Right(b),
                    (None, None) => unreachable_body(),
                };
                let mut builder = Request::builder()
                    .method(parts.method.clone())
                    .uri(uri)
                    .version(Version::HTTP_2);
                if let Some(h) = builder.headers_mut() {
                    *h = if last_try && replay.is_none() {
                        std::mem::take(&mut parts.headers)
                    } else {
                        parts.headers.clone()
                    };
                    if let Some((n, v)) = &port_header {
                        h.insert(n.clone(), v.clone());
                    }
                }
                let Ok(up_req) = builder.body(body) else {
                    return out.reply(StatusCode::BAD_REQUEST, "DPE", "invalid request");
                };
                Prepared::H2(up_req)
            } else {
                Prepared::H1(match (&replay, once.take()) {
                    (Some(b), _) => h1::RequestBody::Replay(b.clone()),
                    (None, Some(b)) => h1::RequestBody::Stream(b),
                    // See `unreachable_body`.
                    (None, None) => h1::RequestBody::Replay(Bytes::new()),
                })
            };
            let started = if attempt == 1 { first } else { Instant::now() };
            let mut guard = ActiveGuard::new(&ep, &cluster.stats, attempt > 1, started);
            let try_deadline = match retry.per_try_timeout {
                Some(pt) => Some(deadline.map_or(started + pt, |d| d.min(started + pt))),
                None => deadline,
            };
            // Pinned where it is made: moved into `until` by value, the
            // attempt (about 1.5 KB) would be copied, and stored, twice more.
            let result = {
                let call = pin!(async {
                    match prepared {
                        Prepared::H2(up_req) => client
                            .request(up_req)
                            .await
                            .map(|r| r.map(UpBody::H2))
                            .map_err(UpError::H2),
                        Prepared::H1(body) => {
                            let head = h1::RequestHead {
                                method: &parts.method,
                                path_and_query: pq.as_str(),
                                headers: match &received {
                                    Some(r) => h1::Fields::Received(r),
                                    None => h1::Fields::Map(&parts.headers),
                                },
                                overrides: port_header.as_slice(),
                            };
                            h1::send(&ep.h1, connect_timeout, &head, body)
                                .await
                                .map(|r| r.map(UpBody::H1))
                                .map_err(UpError::H1)
                        }
                    }
                });
                crate::until(try_deadline, call).await
            };
            // Evaluated only for a retriable outcome (it reads the clock).
            let retries_left = || {
                !last_try
                    && replay.is_some()
                    && deadline.is_none_or(|d| Instant::now() < d)
                    && cluster.stats.active_retries.load(Relaxed) < cluster.cfg.limits.max_retries
            };
            match result {
                Some(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    cluster.stats.by_class[crate::status_class(status)].fetch_add(1, Relaxed);
                    if status >= 500 {
                        ep.stats.errors.fetch_add(1, Relaxed);
                        cluster.record(&ep, Outcome::Status(status));
                    } else {
                        cluster.record(&ep, Outcome::Success);
                    }
                    let retriable = f.retry.is_some()
                        && idem
                        && ((retry.on_5xx && status >= 500)
                            || (retry.on_gateway_error && (502..=504).contains(&status))
                            || retry.status_codes.contains(&status));
                    if retriable && retries_left() {
                        drop(resp);
                        drop(guard);
                        cluster.stats.retries.fetch_add(1, Relaxed);
                        prev = Some(ep);
                        tokio::time::sleep(retry_backoff(attempt - 1)).await;
                        continue;
                    }
                    guard.timed = true;
                    let (mut p, b) = resp.into_parts();
                    let b = match b {
                        UpBody::H2(b) => {
                            strip_hop_by_hop(&mut p.headers);
                            RespBody::Upstream(b, guard)
                        }
                        // Its fields are in the body, hop-by-hop ones already
                        // left out (`h1::UpstreamHead`).
                        UpBody::H1(mut b) => {
                            if !own_server {
                                b.head_into(&mut p.headers);
                            }
                            RespBody::H1(b, guard)
                        }
                    };
                    return Response::from_parts(p, b);
                }
                Some(Err(e)) => {
                    drop(guard);
                    let connect = e.is_connect();
                    cluster.stats.by_class[0].fetch_add(1, Relaxed);
                    ep.stats.errors.fetch_add(1, Relaxed);
                    if connect {
                        ep.stats.connect_failures.fetch_add(1, Relaxed);
                        cluster.stats.connect_failures.fetch_add(1, Relaxed);
                    }
                    cluster.record(&ep, Outcome::LocalFailure);
                    let retriable = f.retry.is_some()
                        && if connect {
                            retry.on_connect_failure || retry.on_5xx || retry.on_gateway_error
                        } else {
                            idem && (retry.on_reset || retry.on_5xx || retry.on_refused_stream)
                        };
                    if retriable && retries_left() {
                        cluster.stats.retries.fetch_add(1, Relaxed);
                        prev = Some(ep);
                        tokio::time::sleep(retry_backoff(attempt - 1)).await;
                        continue;
                    }
                    let (flags, what) = if connect {
                        ("UF", "connection failure")
                    } else {
                        ("UR", "reset")
                    };
                    return out.reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        flags,
                        &format!(
                            "upstream connect error or disconnect/reset before headers: {what}: {e}"
                        ),
                    );
                }
                None => {
                    drop(guard);
                    cluster.stats.timeouts.fetch_add(1, Relaxed);
                    cluster.stats.by_class[0].fetch_add(1, Relaxed);
                    cluster.record(&ep, Outcome::LocalFailure);
                    let retriable =
                        f.retry.is_some() && idem && (retry.on_5xx || retry.on_gateway_error);
                    if retriable && retries_left() {
                        cluster.stats.retries.fetch_add(1, Relaxed);
                        prev = Some(ep);
                        continue;
                    }
                    return out.reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        "UT",
                        "upstream request timeout",
                    );
                }
            }
        }
    }
}

/// An upstream request ready to send, by protocol.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per attempt, moved once into its future
enum Prepared {
    H2(Request<ReqBody>),
    H1(h1::RequestBody),
}

/// A body for an attempt that cannot happen: the streamed body is only
/// ever sent once, and `retries_left` requires a replayable body.
fn unreachable_body() -> ReqBody {
    Either::Left(Full::new(Bytes::new()))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Appends the peer's IP to `x-forwarded-for` (several field lines are
/// joined first, RFC 9110 §5.3) and sets `x-forwarded-proto: http` unless
/// present.
fn append_forwarded_for(h: &mut dyn HeaderFields, peer: &Peer) {
    let value = match h.joined(&X_FORWARDED_FOR) {
        Some(mut v) => {
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(peer.ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = value {
        h.insert(X_FORWARDED_FOR, v);
    }
    if h.value(X_FORWARDED_PROTO.as_str()).is_none() {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// `v` as a string when it is visible ASCII, spaces and tabs (what
/// `HeaderValue::to_str` accepts).
pub(crate) fn visible_ascii(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// A request's header fields as forwarding reads and edits them: an
/// `http::HeaderMap` (the requests hyper's server reads, and every request
/// sent through hyper's client), or the fields an HTTP/1.1 request came
/// with ([`h1::RequestFields`]), which are written on without a map.
pub trait HeaderFields {
    /// The first value of the field `name` (lowercase).
    fn value(&self, name: &str) -> Option<&[u8]>;
    /// The non-empty values of `name` joined by `, ` (RFC 9110 §5.3);
    /// `None` when there is no such field.
    fn joined(&self, name: &HeaderName) -> Option<Vec<u8>>;
    /// Removes every field named `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Sets `name` to `value`, replacing the fields of that name.
    fn insert(&mut self, name: HeaderName, value: HeaderValue);
    /// Removes the hop-by-hop fields (RFC 9110 §7.6.1).
    fn strip_hop_by_hop(&mut self);
}

/// `values` joined as [`HeaderFields::joined`] does.
fn join<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for v in values {
        let j = joined.get_or_insert_with(|| Vec::with_capacity(64));
        if !v.is_empty() {
            if !j.is_empty() {
                j.extend_from_slice(b", ");
            }
            j.extend_from_slice(v);
        }
    }
    joined
}

impl HeaderFields for HeaderMap {
    fn value(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
    fn joined(&self, name: &HeaderName) -> Option<Vec<u8>> {
        join(self.get_all(name).iter().map(HeaderValue::as_bytes))
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::insert(self, name, value);
    }
    fn strip_hop_by_hop(&mut self) {
        strip_hop_by_hop(self);
    }
}

impl HeaderFields for h1::RequestFields {
    fn value(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }
    fn joined(&self, name: &HeaderName) -> Option<Vec<u8>> {
        join(self.get_all(name.as_str()))
    }
    fn remove(&mut self, name: &HeaderName) {
        h1::RequestFields::remove(self, name.as_str());
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        h1::RequestFields::remove(self, name.as_str());
        self.append(name, value);
    }
    /// Nothing to do: hop-by-hop fields are not forwarded
    /// ([`h1::RequestFields`]).
    fn strip_hop_by_hop(&mut self) {}
}

#[cfg(test)]
mod tests;
