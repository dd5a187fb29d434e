//! `meshreg-proxy`: the sidecar, configured entirely by meshreg over delta
//! ADS (docs/proxy.md).
//!
//! - [`bootstrap`]: who the proxy is and where meshreg is.
//! - [`ads`]: the delta xDS client (LDS → RDS → CDS → EDS by reference).
//! - [`config`]: Envoy resources compiled (and validated) into the proxy's
//!   configuration.
//! - [`runtime`]: clusters with live endpoint state, load balancing,
//!   subsets, locality, outlier detection.
//! - [`http`]: the HTTP/1.1, HTTP/2 and gRPC forwarding path (routing,
//!   retries, timeouts, circuit breakers).
//! - [`h1`]: the HTTP/1.1 upstream client and its per-endpoint connection
//!   pool, run on the downstream request's own task (HTTP/2 upstreams use
//!   hyper's pooled client).
//! - [`listener`]: listeners bound from LDS, protocol detection, TCP
//!   proxying, drain.
//! - [`admin`]: `/config_dump`, `/clusters`, `/stats`, `/ready`, `/drain`.

pub mod admin;
pub mod ads;
pub mod bootstrap;
pub mod config;
pub mod h1;
pub mod http;
pub mod listener;
pub mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::ads::AdsState;
use crate::bootstrap::Bootstrap;
use crate::config::ListenerCfg;
use crate::http::{HttpClient, Upstream};
use crate::runtime::Runtime;

/// Name of the outbound Listener a sidecar subscribes to.
pub fn outbound_listener_name(port: u16) -> String {
    format!("sidecar|outbound|{port}")
}

/// Name of the inbound Listener a sidecar subscribes to.
pub fn inbound_listener_name(app: &str, port: u16) -> String {
    format!("sidecar|inbound|{app}|{port}")
}

/// Name of the Listener a sidecar subscribes to for an outbound TCP port
/// ([`bootstrap::TcpOutbound`]): `sidecar|outbound-tcp|<port>|<target>`.
pub fn outbound_tcp_listener_name(port: u16, target: &str) -> String {
    format!("sidecar|outbound-tcp|{port}|{target}")
}

/// The running proxy: bootstrap, xDS state, the data path's runtime and
/// the listener set.
#[derive(Debug)]
pub struct Proxy {
    /// The bootstrap it started with.
    pub bootstrap: Bootstrap,
    ads: Mutex<AdsState>,
    runtime: RwLock<Arc<Runtime>>,
    listeners: watch::Sender<Arc<Vec<ListenerCfg>>>,
    xds_connected: AtomicBool,
    draining: watch::Sender<bool>,
    clients: Mutex<HashMap<Duration, HttpClient>>,
    /// Listener name → bound address, maintained by the listener manager.
    pub bound: Mutex<BTreeMap<String, std::net::SocketAddr>>,
    /// Per-listener stats, maintained by the listener manager.
    pub listener_stats: Mutex<BTreeMap<String, Arc<listener::ListenerStats>>>,
    local: (String, String, String),
}

impl Proxy {
    /// A proxy for a finished bootstrap (see [`Bootstrap::finish`]).
    pub fn new(bootstrap: Bootstrap) -> Arc<Proxy> {
        let mut names = vec![
            outbound_listener_name(bootstrap.outbound_port),
            inbound_listener_name(&bootstrap.app, bootstrap.inbound_port),
        ];
        names.extend(
            bootstrap
                .tcp_outbound
                .iter()
                .map(|t| outbound_tcp_listener_name(t.port, &t.target)),
        );
        let ads = AdsState::new(ads::node(&bootstrap), &names);
        let local = (
            bootstrap.locality.region.clone(),
            bootstrap.locality.zone.clone(),
            bootstrap.locality.subzone.clone(),
        );
        Arc::new(Proxy {
            bootstrap,
            ads: Mutex::new(ads),
            runtime: RwLock::new(Arc::new(Runtime::default())),
            listeners: watch::channel(Arc::new(Vec::new())).0,
            xds_connected: AtomicBool::new(false),
            draining: watch::channel(false).0,
            clients: Mutex::new(HashMap::new()),
            bound: Mutex::new(BTreeMap::new()),
            listener_stats: Mutex::new(BTreeMap::new()),
            local,
        })
    }

    /// The xDS client state.
    pub fn ads(&self) -> MutexGuard<'_, AdsState> {
        self.ads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current runtime (cheap: an `Arc` clone under a read lock).
    pub fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rebuilds the runtime from the accepted resources, and the listener
    /// set once the configuration is warm.
    pub fn apply_config(&self) {
        let ads = self.ads();
        let old = self.runtime();
        let rt = Runtime::build(&ads.res, &old, &self.local);
        for c in rt.clusters.values() {
            let _ = c.upstream.set(Upstream {
                h2: self.client(c.cfg.connect_timeout),
            });
        }
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rt);
        // Listener warming: a new or changed listener set takes effect only
        // once every route, cluster and endpoint set it leads to has been
        // received, so no connection is accepted before it can be routed.
        if !ads.is_warm() {
            return;
        }
        let listeners: Vec<ListenerCfg> = ads
            .res
            .listeners
            .values()
            .map(|l| l.value.clone())
            .collect();
        drop(ads);
        self.listeners.send_if_modified(|cur| {
            if **cur == listeners {
                false
            } else {
                *cur = Arc::new(listeners);
                true
            }
        });
    }

    /// The HTTP/2 client for a connect timeout (shared by the clusters
    /// that have it, so its pool outlives configuration updates).
    fn client(&self, connect_timeout: Duration) -> HttpClient {
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(connect_timeout)
            .or_insert_with(|| http::new_client(connect_timeout))
            .clone()
    }

    /// The listener set, as a watch.
    pub fn listeners(&self) -> watch::Receiver<Arc<Vec<ListenerCfg>>> {
        self.listeners.subscribe()
    }

    pub(crate) fn set_xds_connected(&self, on: bool) {
        self.xds_connected.store(on, Ordering::Relaxed);
    }

    /// Whether the xDS stream is up.
    pub fn xds_connected(&self) -> bool {
        self.xds_connected.load(Ordering::Relaxed)
    }

    /// Starts draining: listeners stop accepting and connections close
    /// after their in-flight requests.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The drain signal, as a watch.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Ready: configuration complete (every subscribed resource answered),
    /// every listener bound, not draining.
    pub fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        let ads = self.ads();
        if !ads.is_warm() || ads.res.listeners.is_empty() {
            return false;
        }
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        ads.res.listeners.keys().all(|n| bound.contains_key(n))
    }
}

/// Runs the proxy until SIGTERM/SIGINT or `POST /drain`: the admin server,
/// the xDS client and the listener manager; then drains and returns.
///
/// # Errors
/// The admin port cannot be bound.
pub async fn run(bootstrap: Bootstrap) -> anyhow::Result<()> {
    let proxy = Proxy::new(bootstrap);
    let admin = admin::bind(&proxy).await?;
    tracing::info!(
        admin = %admin.local_addr()?,
        node = %proxy.bootstrap.node_id,
        app = %proxy.bootstrap.app,
        namespace = %proxy.bootstrap.namespace,
        "meshreg-proxy started"
    );
    tokio::spawn(admin::serve(Arc::clone(&proxy), admin));
    tokio::spawn(ads::run(Arc::clone(&proxy)));
    tokio::spawn(sweep_idle_connections(Arc::clone(&proxy)));
    let manager = tokio::spawn(listener::manage(Arc::clone(&proxy)));
    let mut drain = proxy.drain_signal();
    tokio::select! {
        _ = shutdown_signal() => proxy.drain(),
        _ = until_true(&mut drain) => {}
    }
    tracing::info!("draining");
    let _ = manager.await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// Every quarter of [`h1::IDLE_TIMEOUT`], closes the pooled upstream
/// connections that expired or that the upstream closed, so they do not
/// linger until their endpoint is used again.
async fn sweep_idle_connections(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(h1::IDLE_TIMEOUT / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let closed = proxy.runtime().sweep_pools();
        if closed > 0 {
            tracing::debug!(closed, "closed idle upstream connections");
        }
    }
}

/// `f`'s output, or `None` when `limit` (if any) passes first.
pub(crate) async fn within<F: std::future::Future>(
    limit: Option<Duration>,
    f: F,
) -> Option<F::Output> {
    until(limit.map(|t| std::time::Instant::now() + t), f).await
}

/// `f`'s output, or `None` when `deadline` (if any) passes first.
pub(crate) async fn until<F: std::future::Future>(
    deadline: Option<std::time::Instant>,
    f: F,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), f).await.ok(),
        None => Some(f.await),
    }
}

/// Response classes as the request counters index them: a local failure
/// (no response) at 0, then `1xx`…`5xx` ([`status_class`]).
pub(crate) const STATUS_CLASSES: [&str; 6] = ["local_failure", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`] (1 for 1xx … 5 for
/// 5xx and above).
pub(crate) fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5))
}

/// How far a listener's drain has gone, as its connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drain {
    /// Not draining.
    Serving,
    /// Draining: finish what is in flight, then close.
    Graceful,
    /// The drain timed out: close now.
    Now,
}

/// Resolves once `rx` says the drain has reached `level` (never, if its
/// sender is gone first).
pub(crate) async fn drained(mut rx: watch::Receiver<Drain>, level: Drain) {
    while *rx.borrow_and_update() < level {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the watched flag is true (never, if the sender is gone).
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
