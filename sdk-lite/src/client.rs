//! [`Client`]: configuration ([`Builder`]), registration, subscriptions
//! and shutdown; its modes, resolvers and gRPC channels are in `modes`
//! (`client/modes.rs`). The work happens in background tasks started on
//! first use: the registration loop ([`crate::session`]), the delta-ADS
//! stream ([`crate::ads`]), and one feeder per gRPC channel
//! ([`crate::grpc`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::ads::{self, Cmd, Watches};
use crate::cache::DiskCache;
use crate::endpoints::{EndpointSet, Locality, Origin};
use crate::mode::{Decision, Mode, ModeSettings, SidecarConfig, SIDECAR_PORT_KEY};
use crate::resolver::Routed;
use crate::session::{self, Registration, RegistrationState};
use crate::target::Target;
use crate::Error;

mod modes;

/// Largest gRPC message accepted from a registry, as the server's own
/// limit (`docs/api.md`): 16 MiB.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// One service (interface) this instance exposes, as the registry's
/// `ServiceDef`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name, e.g. `helloworld.Greeter`.
    pub name: String,
    /// Wire protocol: `grpc`, `http`, `dubbo`, `tcp`, … (may be empty).
    pub protocol: String,
    /// Name of the port serving it; empty means the instance's only port.
    pub port_name: String,
    /// Free-form parameters.
    pub params: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// A service called `name`.
    pub fn new(name: impl Into<String>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: impl Into<String>) -> ServiceSpec {
        self.protocol = protocol.into();
        self
    }

    /// Sets the port name.
    pub fn port_name(mut self, port_name: impl Into<String>) -> ServiceSpec {
        self.port_name = port_name.into();
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> ServiceSpec {
        self.params.insert(key.into(), value.into());
        self
    }
}

/// The instance this process registers.
#[derive(Debug, Clone, Default)]
pub(crate) struct InstanceSpec {
    pub app: String,
    pub id: String,
    pub address: String,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub weight: u32,
    pub services: Vec<ServiceSpec>,
}

/// Validated configuration, shared by the background tasks.
#[derive(Debug)]
pub(crate) struct Config {
    pub registries: Vec<String>,
    pub namespace: String,
    pub instance: InstanceSpec,
    pub locality: Locality,
    pub session_ttl: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub cache: Option<DiskCache>,
    pub node_id: String,
    pub mode: ModeSettings,
}

/// Opens a channel to `addr` within `connect_timeout`.
pub(crate) async fn connect(cfg: &Config, addr: &str) -> Result<Channel, String> {
    let ep = TonicEndpoint::from_shared(addr.to_string())
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    match tokio::time::timeout(cfg.connect_timeout, ep.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!(
            "connect {addr}: no answer within {} ms",
            cfg.connect_timeout.as_millis()
        )),
    }
}

/// Builds a [`Client`]. Only the registry addresses are required to
/// subscribe; [`Client::register`] also needs the application name, the
/// address and at least one port.
#[derive(Debug, Clone)]
pub struct Builder {
    registries: Vec<String>,
    namespace: String,
    instance: InstanceSpec,
    locality: Locality,
    session_ttl: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    cache_dir: Option<PathBuf>,
    node_id: Option<String>,
    mode: Mode,
    mode_settings: ModeSettings,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            registries: Vec::new(),
            namespace: "default".into(),
            instance: InstanceSpec::default(),
            locality: Locality::default(),
            session_ttl: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            cache_dir: None,
            node_id: None,
            mode: Mode::Auto,
            mode_settings: ModeSettings::default(),
        }
    }
}

impl Builder {
    /// Adds a registry node's gRPC address (`http://10.0.0.1:7071`). Give
    /// several (any nodes of the cluster): the SDK fails over between them.
    pub fn registry(mut self, addr: impl Into<String>) -> Builder {
        self.registries.push(addr.into());
        self
    }

    /// Adds several registry addresses.
    pub fn registries<I, S>(mut self, addrs: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.registries.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Namespace to register in and discover from (default `default`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Builder {
        self.namespace = ns.into();
        self
    }

    /// Application name of this instance.
    pub fn app(mut self, app: impl Into<String>) -> Builder {
        self.instance.app = app.into();
        self
    }

    /// Address other instances reach this one at (IP or hostname).
    pub fn address(mut self, address: impl Into<String>) -> Builder {
        self.instance.address = address.into();
        self
    }

    /// Instance id; by default the registry uses `address:port` of the
    /// first port by name.
    pub fn instance_id(mut self, id: impl Into<String>) -> Builder {
        self.instance.id = id.into();
        self
    }

    /// Adds a named port (`grpc`, 9090).
    pub fn port(mut self, name: impl Into<String>, port: u16) -> Builder {
        self.instance.ports.insert(name.into(), port);
        self
    }

    /// Adds a service (interface) this instance exposes.
    pub fn service(mut self, service: ServiceSpec) -> Builder {
        self.instance.services.push(service);
        self
    }

    /// Adds a label (indexed by the registry; carried to subscribers).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Builder {
        self.instance.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an opaque metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Builder {
        self.instance.metadata.insert(key.into(), value.into());
        self
    }

    /// Load-balancing weight, 1..=1000000 (0, the default, means 100).
    pub fn weight(mut self, weight: u32) -> Builder {
        self.instance.weight = weight;
        self
    }

    /// Where this instance runs; also sent as the xDS node's locality.
    pub fn locality(mut self, locality: Locality) -> Builder {
        self.locality = locality;
        self
    }

    /// Session TTL, 1 s..=1 h (default 10 s). Keepalives go every TTL/3.
    pub fn session_ttl(mut self, ttl: Duration) -> Builder {
        self.session_ttl = ttl;
        self
    }

    /// Reconnect backoff: from `min` doubling up to `max`, with jitter
    /// (defaults 100 ms and 10 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Builder {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Timeout to connect to one registry node (default 2 s).
    pub fn connect_timeout(mut self, t: Duration) -> Builder {
        self.connect_timeout = t;
        self
    }

    /// Timeout of one unary call or stream opening (default 5 s).
    pub fn request_timeout(mut self, t: Duration) -> Builder {
        self.request_timeout = t;
        self
    }

    /// Directory of the failover cache (created when first written). Not
    /// set: no cache.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The xDS node id (default `<app or "meshreg-sdk">-<pid>-<random>`).
    pub fn node_id(mut self, id: impl Into<String>) -> Builder {
        self.node_id = Some(id.into());
        self
    }

    /// How calls leave this process (default [`Mode::Auto`]): see
    /// [`crate::mode`]. `Direct` or `Mesh` here is "explicit config" and
    /// wins over the environment.
    pub fn mode(mut self, mode: Mode) -> Builder {
        self.mode = mode;
        self
    }

    /// Where the local sidecar listens. Without it, the addresses come
    /// from the sidecar's bootstrap file when it exists, else the defaults
    /// (`127.0.0.1:15001`, inbound port 15006, admin `127.0.0.1:15000`).
    pub fn sidecar(mut self, sidecar: SidecarConfig) -> Builder {
        self.mode_settings.sidecar = Some(sidecar);
        self
    }

    /// The sidecar's bootstrap file (`meshreg-proxy`'s TOML), instead of
    /// `$MESHREG_PROXY_BOOTSTRAP` or `/etc/meshreg/proxy.toml`: auto mode
    /// picks mesh when it exists, and the sidecar's addresses are read
    /// from it.
    pub fn sidecar_bootstrap(mut self, path: impl Into<PathBuf>) -> Builder {
        self.mode_settings.bootstrap = Some(path.into());
        self
    }

    /// A file holding `direct`, `mesh` or `auto`, read whenever auto mode
    /// decides (at first use, on [`Client::reload_mode`], on SIGHUP with
    /// [`Client::reload_mode_on_sighup`]); it comes after the mode set in
    /// code and before `MESHREG_MODE`. A missing or empty file, or `auto`,
    /// says nothing.
    pub fn mode_file(mut self, path: impl Into<PathBuf>) -> Builder {
        self.mode_settings.mode_file = Some(path.into());
        self
    }

    /// Validates the configuration. No I/O: connections are made by
    /// [`Client::register`] and [`Client::subscribe`], and the mode is
    /// decided on first use.
    pub fn build(self) -> Result<Client, Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.registries.is_empty() {
            return bad("no registry address: call .registry(\"http://host:7071\")".into());
        }
        for r in &self.registries {
            if let Err(e) = TonicEndpoint::from_shared(r.clone()) {
                return bad(format!("registry address {r:?}: {e}"));
            }
        }
        if self.namespace.is_empty() {
            return bad("namespace is empty".into());
        }
        let ttl_ms = self.session_ttl.as_millis();
        if !(1000..=3_600_000).contains(&ttl_ms) {
            return bad(format!("session TTL {ttl_ms} ms is outside 1000..=3600000"));
        }
        if self.backoff_min.is_zero() {
            return bad("backoff minimum is zero".into());
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("a timeout is zero".into());
        }
        if self.instance.metadata.contains_key(SIDECAR_PORT_KEY) {
            return bad(format!(
                "metadata {SIDECAR_PORT_KEY:?} is set by the SDK in mesh mode; give the sidecar's inbound port with .sidecar(..) instead"
            ));
        }
        if let Some(sc) = &self.mode_settings.sidecar {
            if sc.outbound.port() == 0 || sc.inbound_port == 0 || sc.admin.port() == 0 {
                return bad("a sidecar port is 0".into());
            }
        }
        let node_id = self.node_id.unwrap_or_else(|| {
            let who = if self.instance.app.is_empty() {
                "meshreg-sdk"
            } else {
                self.instance.app.as_str()
            };
            format!("{who}-{}-{:08x}", std::process::id(), fastrand::u32(..))
        });
        let cfg = Config {
            registries: self.registries,
            namespace: self.namespace,
            instance: self.instance,
            locality: self.locality,
            session_ttl: self.session_ttl,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            cache: self.cache_dir.map(DiskCache::new),
            node_id,
            mode: self.mode_settings,
        };
        let (shutdown, _) = watch::channel(false);
        let (reg_tx, _) = watch::channel(RegistrationState::Idle);
        let (mode_tx, _) = watch::channel(None);
        Ok(Client {
            inner: Arc::new(Inner {
                cfg: Arc::new(cfg),
                shutdown,
                reg_tx,
                tasks: Mutex::new(Tasks::default()),
                watches: Arc::new(Mutex::new(HashMap::new())),
                configured: Mutex::new(self.mode),
                mode: mode_tx,
                switch: tokio::sync::Mutex::new(()),
                routes: Mutex::new(Vec::new()),
                user_subs: Mutex::new(HashSet::new()),
            }),
        })
    }
}

#[derive(Debug, Default)]
struct Tasks {
    session: Option<JoinHandle<()>>,
    ads: Option<(mpsc::Sender<Cmd>, JoinHandle<()>)>,
    shut_down: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    cfg: Arc<Config>,
    shutdown: watch::Sender<bool>,
    reg_tx: watch::Sender<RegistrationState>,
    tasks: Mutex<Tasks>,
    watches: Watches,
    /// The mode set in code (builder, then `set_mode`); `Auto`: none.
    configured: Mutex<Mode>,
    /// The mode in effect; `None` until first decided.
    mode: watch::Sender<Option<Arc<Decision>>>,
    /// Serialises deciding and switching the mode with creating routes.
    switch: tokio::sync::Mutex<()>,
    /// Targets of live resolvers and gRPC channels.
    routes: Mutex<Vec<Weak<Routed>>>,
    /// Names subscribed through [`Client::subscribe`]: kept on a switch
    /// to mesh mode.
    user_subs: Mutex<HashSet<String>>,
}

impl Inner {
    pub(crate) fn mode_tx(&self) -> &watch::Sender<Option<Arc<Decision>>> {
        &self.mode
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without shutdown(): the tasks still revoke the session
        // and close the stream on their own if the runtime lives on.
        self.shutdown.send_replace(true);
    }
}

/// A meshreg SDK client: cheap to clone (clones share one registration
/// and one xDS stream).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Client {
        Client { inner }
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.inner.cfg.namespace
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.cfg.request_timeout
    }

    pub(crate) fn mode_tx(&self) -> &watch::Sender<Option<Arc<Decision>>> {
        &self.inner.mode
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers this instance under a new session and keeps it alive in
    /// the background. Resolves once the first registration succeeded;
    /// until then it keeps trying every registry node with backoff (wrap it
    /// in `tokio::time::timeout` to bound the wait: the background task
    /// keeps trying either way). Calling it again waits for the same
    /// registration.
    ///
    /// Errors: [`Error::Config`] without app, address or ports;
    /// [`Error::Rejected`] when the registry refuses the instance;
    /// [`Error::Shutdown`] after [`Client::shutdown`].
    pub async fn register(&self) -> Result<Registration, Error> {
        let inst = &self.inner.cfg.instance;
        if inst.app.is_empty() || inst.address.is_empty() || inst.ports.is_empty() {
            return Err(Error::Config(
                "registering needs .app(), .address() and at least one .port()".into(),
            ));
        }
        // The mode decides the sidecar metadata.
        self.decision().await?;
        {
            let mut tasks = self.tasks();
            if tasks.shut_down {
                return Err(Error::Shutdown);
            }
            if tasks.session.is_none() {
                let cfg = self.inner.cfg.clone();
                let tx = self.inner.reg_tx.clone();
                let rx = self.inner.shutdown.subscribe();
                let mode = self.inner.mode.subscribe();
                tasks.session = Some(tokio::spawn(session::run(cfg, tx, rx, mode)));
            }
        }
        let mut rx = self.inner.reg_tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                RegistrationState::Registered(r) => return Ok(r.clone()),
                RegistrationState::Rejected(m) => return Err(Error::Rejected(m.clone())),
                RegistrationState::Stopped => return Err(Error::Shutdown),
                RegistrationState::Idle | RegistrationState::Registering => {}
            }
            rx.changed().await.map_err(|_| Error::Shutdown)?;
        }
    }

    /// The registration state, live.
    pub fn registration(&self) -> watch::Receiver<RegistrationState> {
        self.inner.reg_tx.subscribe()
    }

    /// Subscribes to a target written as a string (see [`Target::parse`]:
    /// `pay:9090`, `pay.default:9090`, `helloworld.Greeter`, or a cluster
    /// name `outbound|9090||pay.default`).
    pub async fn subscribe(&self, target: &str) -> Result<Subscription, Error> {
        self.subscribe_target(&Target::parse(target)?).await
    }

    /// Subscribes to `target` in this client's namespace over the
    /// client's one delta-ADS stream. The subscription starts
    /// [`Origin::Pending`] and empty; it gets the registry's set, or the
    /// cached one when no registry node answers. Subscribing to the same
    /// target again shares the existing watch. An explicit subscription
    /// stays in every mode (a [`Resolver`](crate::Resolver)'s own is dropped in mesh mode).
    pub async fn subscribe_target(&self, target: &Target) -> Result<Subscription, Error> {
        let name = target.resource_name(&self.inner.cfg.namespace);
        lock(&self.inner.user_subs).insert(name);
        self.watch_target(target).await
    }

    /// Subscribes without marking the name as the user's.
    pub(crate) async fn watch_target(&self, target: &Target) -> Result<Subscription, Error> {
        let name = target.resource_name(&self.inner.cfg.namespace);
        let (cmd_tx, rx, new) = {
            let mut tasks = self.tasks();
            if tasks.shut_down {
                return Err(Error::Shutdown);
            }
            let cmd_tx = match &tasks.ads {
                Some((tx, _)) => tx.clone(),
                None => {
                    // Bounded; subscribe() waits when the stream is busy.
                    let (tx, rx) = mpsc::channel(64);
                    let task = tokio::spawn(ads::run(
                        self.inner.cfg.clone(),
                        node(&self.inner.cfg),
                        self.inner.watches.clone(),
                        rx,
                        self.inner.shutdown.subscribe(),
                    ));
                    tasks.ads = Some((tx.clone(), task));
                    tx
                }
            };
            let mut w = self.inner.watches.lock().unwrap_or_else(|p| p.into_inner());
            match w.get(&name) {
                Some(tx) => (cmd_tx, tx.subscribe(), false),
                None => {
                    let (tx, rx) =
                        watch::channel(Arc::new(EndpointSet::empty(&name, Origin::Pending)));
                    w.insert(name.clone(), tx);
                    (cmd_tx, rx, true)
                }
            }
        };
        if new {
            cmd_tx
                .send(Cmd::Subscribe(name.clone()))
                .await
                .map_err(|_| Error::Shutdown)?;
        }
        Ok(Subscription { name, rx })
    }

    /// Stops watching `target`: the server is told, and every
    /// [`Subscription`] to it sees its channel close. A target a
    /// [`Resolver`](crate::Resolver) or gRPC channel uses in direct mode stays subscribed
    /// for them.
    pub async fn unsubscribe(&self, target: &Target) -> Result<(), Error> {
        let name = target.resource_name(&self.inner.cfg.namespace);
        lock(&self.inner.user_subs).remove(&name);
        let in_use = self
            .live_routes()
            .iter()
            .any(|r| r.name == name && r.receiver().is_some());
        if in_use {
            return Ok(());
        }
        self.unsubscribe_name(name).await
    }

    async fn unsubscribe_name(&self, name: String) -> Result<(), Error> {
        let removed = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name)
            .is_some();
        let cmd_tx = self.tasks().ads.as_ref().map(|(tx, _)| tx.clone());
        if let (true, Some(tx)) = (removed, cmd_tx) {
            tx.send(Cmd::Unsubscribe(name))
                .await
                .map_err(|_| Error::Shutdown)?;
        }
        Ok(())
    }

    /// The ClusterLoadAssignment names this client subscribes to over
    /// xDS, sorted (none in mesh mode unless subscribed explicitly).
    pub fn subscriptions(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.inner.watches).keys().cloned().collect();
        names.sort();
        names
    }

    /// Graceful shutdown: revokes the session (removing this instance from
    /// the registry at once) and closes the xDS stream, then waits for both
    /// background tasks. Subscriptions keep their last snapshot. Idempotent.
    pub async fn shutdown(&self) {
        let (session, ads) = {
            let mut tasks = self.tasks();
            tasks.shut_down = true;
            (tasks.session.take(), tasks.ads.take())
        };
        self.inner.shutdown.send_replace(true);
        if let Some(h) = session {
            let _ = h.await;
        }
        if let Some((tx, h)) = ads {
            drop(tx);
            let _ = h.await;
        }
    }
}

/// The xDS node: id, the app as `cluster`, the namespace in
/// `meshreg.io/namespace` metadata, and the locality.
fn node(cfg: &Config) -> core::Node {
    core::Node {
        id: cfg.node_id.clone(),
        cluster: if cfg.instance.app.is_empty() {
            "meshreg-sdk".into()
        } else {
            cfg.instance.app.clone()
        },
        metadata: Some(Struct {
            fields: HashMap::from([(
                "meshreg.io/namespace".to_string(),
                Value {
                    kind: Some(Kind::StringValue(cfg.namespace.clone())),
                },
            )]),
        }),
        locality: Some(core::Locality {
            region: cfg.locality.region.clone(),
            zone: cfg.locality.zone.clone(),
            sub_zone: cfg.locality.subzone.clone(),
        }),
        user_agent_name: "meshreg-sdk".into(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// A live view of one target's endpoints.
#[derive(Debug, Clone)]
pub struct Subscription {
    name: String,
    rx: watch::Receiver<Arc<EndpointSet>>,
}

impl Subscription {
    /// The ClusterLoadAssignment name watched.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.rx.borrow().clone()
    }

    /// The underlying watch channel (each value is a complete snapshot).
    pub fn receiver(&self) -> watch::Receiver<Arc<EndpointSet>> {
        self.rx.clone()
    }

    /// Waits for the next snapshot. [`Error::Shutdown`] when the target
    /// was unsubscribed.
    pub async fn changed(&mut self) -> Result<Arc<EndpointSet>, Error> {
        self.rx.changed().await.map_err(|_| Error::Shutdown)?;
        Ok(self.rx.borrow_and_update().clone())
    }

    /// The same target narrowed to the endpoints whose labels include every
    /// `selector` pair (the instance labels, sent as `envoy.lb` metadata):
    /// a live view whose snapshots are the source's, filtered. The filter
    /// runs in a task that ends when the source ends or every clone of the
    /// returned subscription is dropped. An empty selector selects all.
    ///
    /// Must be called inside a tokio runtime.
    pub fn select(&self, selector: BTreeMap<String, String>) -> Subscription {
        let filter = move |set: &EndpointSet| -> Arc<EndpointSet> {
            let mut s = set.clone();
            s.endpoints
                .retain(|e| selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
            Arc::new(s)
        };
        let mut src = self.rx.clone();
        let (tx, rx) = watch::channel(filter(&src.borrow_and_update()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = src.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let next = filter(&src.borrow_and_update());
                        tx.send_replace(next);
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Subscription {
            name: self.name.clone(),
            rx,
        }
    }

    /// Waits until a snapshot satisfies `f` (checking the current one
    /// first) and returns it.
    pub async fn wait_for(
        &mut self,
        mut f: impl FnMut(&EndpointSet) -> bool,
    ) -> Result<Arc<EndpointSet>, Error> {
        let set = self
            .rx
            .wait_for(|s| f(s))
            .await
            .map_err(|_| Error::Shutdown)?;
        Ok(set.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        assert!(matches!(Client::builder().build(), Err(Error::Config(_))));
        let b = Client::builder().registry("http://127.0.0.1:7071");
        assert!(b.clone().build().is_ok());
        assert!(matches!(
            b.clone().session_ttl(Duration::from_millis(10)).build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            b.clone().namespace("").build(),
            Err(Error::Config(_))
        ));
        assert!(Client::builder().registry("not a uri").build().is_err());
        // The sidecar port is the SDK's to set, from the mode.
        assert!(matches!(
            b.clone().metadata(SIDECAR_PORT_KEY, "15006").build(),
            Err(Error::Config(_))
        ));
        let zero = SidecarConfig {
            inbound_port: 0,
            ..SidecarConfig::default()
        };
        assert!(matches!(b.sidecar(zero).build(), Err(Error::Config(_))));
    }

    #[tokio::test]
    async fn register_needs_an_instance() {
        let c = Client::builder()
            .registry("http://127.0.0.1:1")
            .build()
            .unwrap();
        assert!(matches!(c.register().await, Err(Error::Config(_))));
        c.shutdown().await;
        assert!(matches!(c.subscribe("pay:80").await, Err(Error::Shutdown)));
    }

    #[test]
    fn register_request_carries_the_instance_and_session() {
        let c = Client::builder()
            .registry("http://127.0.0.1:7071")
            .namespace("prod")
            .app("pay")
            .address("10.0.0.1")
            .port("grpc", 9090)
            .label("version", "v1")
            .service(
                ServiceSpec::new("pay.Pay")
                    .protocol("grpc")
                    .port_name("grpc"),
            )
            .build()
            .unwrap();
        let req = session::register_request(&c.inner.cfg, 42, None);
        let e = &req.instances[0];
        let i = e.instance.as_ref().unwrap();
        assert_eq!(
            (i.namespace.as_str(), i.app.as_str(), i.session),
            ("prod", "pay", 42)
        );
        assert_eq!(i.ports["grpc"], 9090);
        assert_eq!(i.labels["version"], "v1");
        assert_eq!(e.services[0].port_name, "grpc");
        assert!(!i.metadata.contains_key(SIDECAR_PORT_KEY), "direct mode");
        let req = session::register_request(&c.inner.cfg, 42, Some(15006));
        let i = req.instances[0].instance.as_ref().unwrap();
        assert_eq!(i.metadata[SIDECAR_PORT_KEY], "15006", "mesh mode");
    }
}
