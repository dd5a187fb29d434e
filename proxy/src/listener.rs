//! Listeners from LDS: bound, updated in place, drained.
//!
//! - A new Listener is bound with `SO_REUSEPORT` (so a new proxy binary can
//!   bind the same ports before the old one drains: hot restart).
//! - A Listener whose address is unchanged is updated in place: new
//!   connections use the new route table or TCP cluster, established ones
//!   keep going.
//! - A removed Listener (or one whose address changed) stops accepting and
//!   its connections are closed gracefully (HTTP/1.1 after the response in
//!   flight, HTTP/2 with GOAWAY) within the drain timeout; TCP proxy
//!   connections are left to finish until then and closed at its end.
//! - Protocol detection: a Listener with both an HTTP connection manager
//!   and a TCP proxy peeks at the first bytes (at most 100 ms): an HTTP/1.x
//!   request line or the HTTP/2 preface goes to HTTP, anything else
//!   (including nothing, as from a client waiting for a server-first
//!   protocol's greeting) to TCP. An HTTP-only Listener detects HTTP/1.1
//!   vs h2c itself.
//! - TCP proxying: an endpoint of the cluster picked as for HTTP, dialled
//!   at its application port (not its sidecar's: raw bytes cannot carry
//!   the `x-meshreg-port` header), a second endpoint tried when the first
//!   cannot be reached; then bytes both ways, each side's close (FIN)
//!   passed on to the other (half-close), until both sides are done.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ListenerCfg;
use crate::h1;
use crate::http::Inbound;
use crate::runtime::{EndpointState, PickCtx};
use crate::{Drain, Proxy};

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub cx_total: AtomicU64,
    /// Connections open.
    pub cx_active: AtomicU64,
    /// Connections closed because no filter chain matched (non-HTTP on an HTTP-only listener).
    pub cx_no_chain: AtomicU64,
    /// TCP proxy connections whose upstream could not be reached.
    pub tcp_upstream_fail: AtomicU64,
    /// Connections closed because their first bytes did not tell HTTP
    /// from TCP within the listener's detection timeout (with
    /// `continue_on_listener_filters_timeout` false).
    pub cx_detect_timeout: AtomicU64,
    /// HTTP requests answered, by the response's class: 1xx…5xx at index
    /// 1…5 (0 unused). Local replies (no route, no healthy upstream,
    /// circuit breaker, timeout) count too: Envoy's `downstream_rq_<N>xx`.
    pub rq_by_class: [AtomicU64; 6],
}

struct Running {
    cfg: watch::Sender<ListenerCfg>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Binds a TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    #[cfg(unix)]
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Keeps the bound listeners equal to the LDS set until the proxy drains;
/// then drains them all and returns.
pub async fn manage(proxy: Arc<Proxy>) {
    let mut want = proxy.listeners();
    let mut drain = proxy.drain_signal();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut draining: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let set = Arc::clone(&want.borrow_and_update());
        reconcile(&proxy, &set, &mut running, &mut draining);
        draining.retain(|t| !t.is_finished());
        tokio::select! {
            r = want.changed() => if r.is_err() { break },
            _ = crate::until_true(&mut drain) => break,
        }
    }
    for (_, r) in std::mem::take(&mut running) {
        r.stop.send_replace(true);
        draining.push(r.task);
    }
    for t in draining {
        let _ = t.await;
    }
    proxy
        .bound
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

fn reconcile(
    proxy: &Arc<Proxy>,
    set: &[ListenerCfg],
    running: &mut BTreeMap<String, Running>,
    draining: &mut Vec<JoinHandle<()>>,
) {
    let bind_ip = proxy
        .bootstrap
        .bind_ip
        .as_ref()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let effective = |c: &ListenerCfg| {
        let mut c = c.clone();
        if let Some(ip) = bind_ip {
            c.addr.set_ip(ip);
        }
        c
    };
    // Stop removed listeners and those whose address changed.
    let keep: BTreeMap<&str, SocketAddr> = set
        .iter()
        .map(|c| (c.name.as_str(), effective(c).addr))
        .collect();
    let names: Vec<String> = running.keys().cloned().collect();
    for name in names {
        let same = running
            .get(&name)
            .is_some_and(|r| keep.get(name.as_str()) == Some(&r.cfg.borrow().addr));
        if !same {
            if let Some(r) = running.remove(&name) {
                tracing::info!(listener = %name, "draining listener");
                r.stop.send_replace(true);
                draining.push(r.task);
                proxy
                    .bound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            }
        }
    }
    for c in set {
        let c = effective(c);
        if let Some(r) = running.get(&c.name) {
            r.cfg.send_if_modified(|cur| {
                if *cur == c {
                    false
                } else {
                    *cur = c.clone();
                    true
                }
            });
            continue;
        }
        match bind(c.addr) {
            Ok(sock) => {
                let addr = sock.local_addr().unwrap_or(c.addr);
                tracing::info!(listener = %c.name, %addr, "listener bound");
                proxy
                    .bound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c.name.clone(), addr);
                let stats = Arc::clone(
                    proxy
                        .listener_stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(c.name.clone())
                        .or_default(),
                );
                let (cfg_tx, cfg_rx) = watch::channel(c.clone());
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = tokio::spawn(serve(Arc::clone(proxy), sock, cfg_rx, stop_rx, stats));
                running.insert(
                    c.name.clone(),
                    Running {
                        cfg: cfg_tx,
                        stop: stop_tx,
                        task,
                    },
                );
            }
            Err(e) => {
                tracing::error!(listener = %c.name, addr = %c.addr, error = %e, "cannot bind listener")
            }
        }
    }
}

async fn serve(
    proxy: Arc<Proxy>,
    sock: TcpListener,
    cfg: watch::Receiver<ListenerCfg>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ListenerStats>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(1024)
        .adaptive_window(true);
    let builder = Arc::new(builder);
    // Drain: keep accepting for the first half of the drain timeout (at
    // most 2 s), answering with `Connection: close`, so that a new binary
    // sharing the port (SO_REUSEPORT) takes over new connections before this
    // socket closes; then close it and shut the connections down gracefully.
    let drain_timeout = Duration::from_millis(proxy.bootstrap.drain_timeout_ms);
    let accept_for = (drain_timeout / 2).min(Duration::from_secs(2));
    let mut accept_until: Option<tokio::time::Instant> = None;
    // The graceful shutdown waits for every watcher it handed out, those
    // of `h1::server` and TCP proxy connections included (they hold theirs
    // to the end), but it can only close hyper connections: `drain` tells
    // the others to close when idle (`Graceful`) and when the drain times
    // out (`Now`).
    let (drain, drain_rx) = watch::channel(Drain::Serving);
    let spawn_conn = |stream: TcpStream, remote: SocketAddr| {
        let _ = stream.set_nodelay(true);
        stats.cx_total.fetch_add(1, Relaxed);
        let c = cfg.borrow().clone();
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let stats = Arc::clone(&stats);
        let drain = drain_rx.clone();
        tokio::spawn(async move {
            stats.cx_active.fetch_add(1, Relaxed);
            handle_conn(proxy, c, stream, remote, builder, watcher, &stats, drain).await;
            stats.cx_active.fetch_sub(1, Relaxed);
        });
    };
    loop {
        let grace = async {
            match accept_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = grace => break,
            acc = sock.accept() => {
                let (stream, remote) = match acc {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                spawn_conn(stream, remote);
            }
            _ = crate::until_true(&mut stop), if accept_until.is_none() => {
                // A listener removed by LDS closes at once; a proxy-wide
                // drain keeps accepting for a while (see above).
                if !proxy.is_draining() {
                    break;
                }
                accept_until = Some(tokio::time::Instant::now() + accept_for);
            }
        }
    }
    // Take what is already queued: closing the socket resets it (unless the
    // kernel migrates it to another SO_REUSEPORT listener, with
    // net.ipv4.tcp_migrate_req = 1).
    while let Ok(Ok((stream, remote))) = tokio::time::timeout(Duration::ZERO, sock.accept()).await {
        spawn_conn(stream, remote);
    }
    drop(sock);
    let rest = drain_timeout.saturating_sub(accept_for);
    drain.send_replace(Drain::Graceful);
    if tokio::time::timeout(rest, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing the remaining connections");
        drain.send_replace(Drain::Now);
    }
}

#[allow(clippy::too_many_arguments)] // one accepted connection and what its listener lends it
async fn handle_conn(
    proxy: Arc<Proxy>,
    cfg: ListenerCfg,
    stream: TcpStream,
    remote: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    stats: &Arc<ListenerStats>,
    drain: watch::Receiver<Drain>,
) {
    let is_http = match (&cfg.http, &cfg.tcp_cluster) {
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(_), Some(_)) => match detect(&stream, cfg.detect_timeout).await {
            Detected::Http => true,
            Detected::Other => false,
            Detected::TimedOut if cfg.detect_continue => false,
            Detected::TimedOut => {
                tracing::debug!(%remote, "protocol detection timed out; closing the connection");
                stats.cx_detect_timeout.fetch_add(1, Relaxed);
                return;
            }
        },
        (None, None) => false,
    };
    if is_http {
        let Some(http) = cfg.http else { return };
        let route: Arc<str> = Arc::from(http.route_name.as_str());
        let peer = crate::http::Peer::new(remote);
        // HTTP/1.1 is served by `h1::server` (the `watcher` held meanwhile
        // keeps the listener's drain waiting for it); HTTP/2 and the
        // requests it does not serve continue under hyper's server.
        let handler = |req: Request<h1::server::Received>| {
            crate::http::handle(&proxy, &route, &peer, stats, req.map(Inbound::Buffered))
        };
        let Some(handover) = h1::server::serve(stream, handler, &drain).await else {
            return;
        };
        let stats = Arc::clone(stats);
        let svc = service_fn(move |req: Request<Incoming>| {
            let (proxy, route, peer) = (Arc::clone(&proxy), Arc::clone(&route), peer.clone());
            let stats = Arc::clone(&stats);
            async move {
                let resp =
                    crate::http::handle(&proxy, &route, &peer, &stats, req.map(Inbound::Stream))
                        .await;
                Ok::<_, Infallible>(resp)
            }
        });
        let io = Rewind {
            read: handover.read,
            io: handover.io,
        };
        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%remote, error = %e, "downstream connection ended with an error");
        }
    } else if let Some(cluster) = cfg.tcp_cluster {
        // Held to the end: the listener's drain waits for it.
        let _drain = watcher;
        tcp_proxy(&proxy, &cluster, stream, remote, stats, drain).await;
    } else {
        stats.cx_no_chain.fetch_add(1, Relaxed);
    }
}

/// A client connection whose first bytes were already read (by
/// `h1::server`): they are read again first.
#[derive(Debug)]
struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What a connection's first bytes say.
#[derive(Debug, PartialEq, Eq)]
enum Detected {
    /// An HTTP/1.x request line or the HTTP/2 preface.
    Http,
    /// Anything else, or the client closed first.
    Other,
    /// Too few bytes came within the timeout to tell.
    TimedOut,
}

/// Peeks at the first bytes, within `timeout` (`None`: no limit), until
/// there are enough to tell: an HTTP/1.x method token followed by a
/// space, or 8 bytes.
async fn detect(stream: &TcpStream, timeout: Option<Duration>) -> Detected {
    let mut buf = [0u8; 16];
    let peek = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) if n >= 8 || buf[..n].contains(&b' ') => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    };
    let Some(n) = crate::within(timeout, peek).await else {
        return Detected::TimedOut;
    };
    if is_http_prefix(&buf[..n]) {
        Detected::Http
    } else {
        Detected::Other
    }
}

/// Whether bytes start like an HTTP/1.x request or the HTTP/2 preface.
pub fn is_http_prefix(b: &[u8]) -> bool {
    if b.starts_with(b"PRI * HTTP/2") {
        return true;
    }
    let Some(sp) = b.iter().position(|c| *c == b' ') else {
        return false;
    };
    const METHODS: [&[u8]; 9] = [
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    ];
    METHODS.contains(&&b[..sp])
}

/// Proxies one TCP connection to `cluster`: an endpoint picked as for HTTP
/// (health, outlier ejection, locality, policy), dialled within the
/// cluster's connect timeout at its application port
/// ([`crate::config::HostCfg::app_authority`]); when that fails, one other
/// endpoint. Then bytes both ways until both sides have closed (a FIN from
/// one side is passed on and the other direction keeps flowing), either
/// side resets, or the listener's drain times out. Nothing to dial (no such
/// cluster, no endpoint, both attempts failed) closes the connection and
/// counts in [`ListenerStats::tcp_upstream_fail`].
async fn tcp_proxy(
    proxy: &Proxy,
    cluster: &str,
    mut down: TcpStream,
    remote: SocketAddr,
    stats: &ListenerStats,
    drain: watch::Receiver<Drain>,
) {
    // The cluster, not the whole runtime, is kept for the connection's life.
    let Some(c) = proxy.runtime().clusters.get(cluster).map(Arc::clone) else {
        tracing::debug!(%remote, cluster, "TCP proxy: no such cluster; closing the connection");
        stats.tcp_upstream_fail.fetch_add(1, Relaxed);
        return;
    };
    let mut prev: Option<Arc<EndpointState>> = None;
    for _ in 0..2 {
        let ctx = PickCtx {
            avoid: prev.as_ref(),
            ..Default::default()
        };
        let Some(host) = c.pick(&ctx) else {
            break;
        };
        let ep = Arc::clone(&host.state);
        let addr = host.cfg.app_authority().into_owned();
        let connect =
            tokio::time::timeout(c.cfg.connect_timeout, TcpStream::connect(addr.as_str())).await;
        match connect {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                c.record(&ep, crate::runtime::Outcome::Success);
                ep.stats.active.fetch_add(1, Relaxed);
                ep.stats.total.fetch_add(1, Relaxed);
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                        if let Err(e) = r {
                            tracing::debug!(%remote, upstream = %addr, error = %e, "TCP proxy connection ended with an error");
                        }
                    }
                    () = crate::drained(drain.clone(), Drain::Now) => {
                        tracing::debug!(%remote, upstream = %addr, "TCP proxy connection closed by the drain");
                    }
                }
                ep.stats.active.fetch_sub(1, Relaxed);
                return;
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("timed out after {:?}", c.cfg.connect_timeout),
                };
                tracing::debug!(%remote, cluster, upstream = %addr, %error, "TCP proxy: connect failed");
                ep.stats.errors.fetch_add(1, Relaxed);
                ep.stats.connect_failures.fetch_add(1, Relaxed);
                c.stats.connect_failures.fetch_add(1, Relaxed);
                c.record(&ep, crate::runtime::Outcome::LocalFailure);
                prev = Some(ep);
            }
        }
    }
    stats.tcp_upstream_fail.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: the client side, and the accepted side.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn detection_tells_http_from_other_bytes_and_times_out_on_silence() {
        let short = Some(Duration::from_millis(50));
        for (first, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Detected::Http),
            (b"PRI * HTTP/2.0\r\n", Detected::Http),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01", Detected::Other),
        ] {
            let (mut client, server) = pair().await;
            client.write_all(first).await.unwrap();
            assert_eq!(detect(&server, short).await, want, "{first:?}");
        }
        // A server-first protocol: the client waits for the server.
        let (_client, server) = pair().await;
        assert_eq!(detect(&server, short).await, Detected::TimedOut);
        // Without a limit, the wait lasts until bytes come or the client
        // closes.
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(detect(&server, None).await, Detected::Other);
    }
}
