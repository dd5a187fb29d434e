//! The Nacos adapter: the services of one Nacos namespace (some groups),
//! read through the `nacos-sdk` crate over Nacos 2.x's gRPC API
//! (the server's HTTP port + 1000, as every Nacos 2.x client assumes).
//!
//! - Every service of the configured groups is found with a paged
//!   `ServiceListRequest`; Nacos has no watch on its service list, so the
//!   list is read again every [`SERVICE_LIST_INTERVAL`] (new services are
//!   subscribed, vanished ones dropped).
//! - Each service is subscribed (`SubscribeServiceRequest`); Nacos pushes
//!   its changes. A push only marks the service dirty: the adapter then
//!   reads the service's instances (`ServiceQueryRequest`), so whatever
//!   order pushes and reads arrive in, the last read wins and is current.
//! - A service's instances replace that service's entries in the catalog
//!   ([`apply_service`]); [`parse_instance`] maps one instance
//!   (docs/mcp.md, "Nacos").
//!
//! The `nacos-sdk` client runs on its own small runtime and reconnects by
//! itself; one client per configured source is kept for the life of the
//! process and reused by every run (a run ends on an error, or when the
//! node loses leadership), with its subscriptions. An error in a request
//! ends the run; the sink runs it again after its backoff and everything
//! is read anew into a fresh catalog ([`Feed::begin_resync`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{self, TryStreamExt};
use meshreg_registry::model::{validate, Locality};
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::dubbo::{self, AppInstance, ProviderUrl};
use crate::error::Error;
use crate::feed::{now_ms, Feed};

/// How often the service list of every group is read again (Nacos pushes
/// instance changes, not new or deleted services).
pub const SERVICE_LIST_INTERVAL: Duration = Duration::from_secs(5);

/// Longest the client may take to connect to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one request (a service list page, a service's instances) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Services read at once while loading.
const PARALLEL_READS: usize = 16;

/// Service names asked for per service list page.
const PAGE: i32 = 500;

/// Nacos's group when none is given.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// Nacos's cluster when none is given; it names no locality.
const DEFAULT_CLUSTER: &str = "DEFAULT";

/// Prefix of the service names Dubbo's interface-level `NacosRegistry`
/// registers: `providers:{interface}:{version}:{group}`.
const DUBBO_PROVIDERS: &str = "providers:";

/// Where to read in Nacos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosConfig {
    /// Server addresses, `host:port[,host:port...]`, with the HTTP port
    /// (8848); the client speaks gRPC to port + 1000.
    pub address: String,
    /// The Nacos namespace id; empty for `public`.
    pub namespace: String,
    /// Groups whose services are read, e.g. `DEFAULT_GROUP`.
    pub groups: Vec<String>,
    /// User name, when the server requires authentication.
    pub username: Option<String>,
    /// Password, with `username`.
    pub password: Option<String>,
}

impl NacosConfig {
    /// Checks that there is an address and at least one group, and that
    /// user name and password come together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.address.split(',').all(|a| a.trim().is_empty()) {
            return Err(Error::Config(
                "address must name at least one Nacos server, host:port".into(),
            ));
        }
        if self.groups.is_empty() || self.groups.iter().any(|g| g.trim().is_empty()) {
            return Err(Error::Config(
                "groups must list at least one non-empty group, e.g. [\"DEFAULT_GROUP\"]".into(),
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(Error::Config(
                "username and password must be given together".into(),
            ));
        }
        Ok(())
    }
}

/// A Nacos service: (group, service name).
type ServiceId = (String, String);

/// The catalog key prefix of a service's entries: `{group}@@{service}/`
/// (Nacos's grouped service name).
pub fn service_prefix(group: &str, service: &str) -> String {
    format!("{group}@@{service}/")
}

/// The catalog key of an instance: `{group}@@{service}/{cluster}/{ip}:{port}`.
pub fn instance_key(group: &str, service: &str, i: &ServiceInstance) -> String {
    let cluster = i.cluster_name.as_deref().unwrap_or(DEFAULT_CLUSTER);
    format!(
        "{}{cluster}/{}:{}",
        service_prefix(group, service),
        i.ip,
        i.port
    )
}

/// One Nacos instance, mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An instance of a Dubbo interface-level service
    /// (`providers:{interface}:...`), grouped with the other providers of
    /// its `application` like a provider URL.
    Provider(Result<ProviderUrl, String>),
    /// An application instance: the service is the application.
    Instance(Result<AppInstance, String>),
}

/// Nacos's weight (a float, 1.0 by default) on meshreg's scale (an
/// integer, 100 by default): ×100, rounded, at least 1 when positive, so
/// that 0.5 stays half of 1.0 instead of being truncated to 0.
///
/// # Errors
/// A weight that is negative, NaN or infinite.
pub fn weight(w: f64) -> Result<u32, String> {
    if !w.is_finite() || w < 0.0 {
        return Err(format!("weight {w} is not a finite non-negative number"));
    }
    let scaled = (w * 100.0).round().min(f64::from(validate::MAX_WEIGHT));
    // In range by the checks above: 0..=MAX_WEIGHT.
    let scaled = scaled as u32;
    Ok(if w > 0.0 { scaled.max(1) } else { 0 })
}

/// Maps one instance of service `service` (docs/mcp.md, "Nacos"):
///
/// - the service is the application, unless it is a Dubbo interface-level
///   service (`providers:...`), whose instances are providers of the
///   interface, grouped by their `application` metadata;
/// - metadata become labels where they can (the catalog keeps the others
///   as metadata);
/// - weight ×100 ([`weight`]); weight 0, `healthy=false` or
///   `enabled=false` make the instance NOT_SERVING;
/// - the cluster (unless `DEFAULT`) is the locality's zone;
/// - the port's name comes from `dubbo.endpoints`, else the `protocol`
///   metadata, else `http`.
pub fn parse_instance(service: &str, i: &ServiceInstance) -> Parsed {
    let common = || -> Result<(u16, u32, bool), String> {
        if i.ip.trim().is_empty() {
            return Err("no ip".into());
        }
        let port = u16::try_from(i.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {} is not in 1..=65535", i.port))?;
        let w = weight(i.weight)?;
        Ok((port, w, i.healthy && i.enabled && w > 0))
    };
    let metadata: BTreeMap<String, String> = i
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(rest) = service.strip_prefix(DUBBO_PROVIDERS) {
        return Parsed::Provider(common().and_then(|(port, w, serving)| {
            let interface = metadata
                .get("interface")
                .filter(|s| !s.is_empty())
                .cloned()
                .or_else(|| rest.split(':').next().map(str::to_string))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "no interface in the service name or metadata".to_string())?;
            let mut params = metadata.clone();
            // The URL's scheme, not a parameter.
            let protocol = params
                .remove("protocol")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "dubbo".into());
            if !serving {
                params.insert("enabled".into(), "false".into());
            }
            if !params.contains_key("weight") && w != 100 && w != 0 {
                params.insert("weight".into(), w.to_string());
            }
            Ok(ProviderUrl {
                protocol,
                host: i.ip.clone(),
                port,
                interface,
                params,
            })
        }));
    }
    Parsed::Instance(common().and_then(|(port, w, serving)| {
        let endpoints = match metadata.get("dubbo.endpoints") {
            Some(e) => dubbo::parse_endpoints(e)?,
            None => {
                let protocol = metadata
                    .get("protocol")
                    .filter(|p| !p.is_empty())
                    .map_or("http".to_string(), |p| p.to_ascii_lowercase());
                vec![(protocol, port)]
            }
        };
        let zone = i
            .cluster_name
            .as_deref()
            .filter(|c| !c.is_empty() && *c != DEFAULT_CLUSTER)
            .unwrap_or_default();
        Ok(AppInstance {
            app: service.to_string(),
            address: i.ip.clone(),
            port,
            metadata,
            serving,
            endpoints,
            weight: w,
            locality: Locality {
                zone: zone.to_string(),
                ..Default::default()
            },
        })
    }))
}

/// Replaces the entries of service (`group`, `service`) in `catalog` with
/// `instances` (Nacos has no per-instance version: an entry that reads the
/// same is unchanged). Returns whether anything changed.
pub fn apply_service(
    catalog: &mut Catalog,
    group: &str,
    service: &str,
    instances: &[ServiceInstance],
    now_ms: i64,
) -> bool {
    let mut keep = BTreeSet::new();
    let mut changed = false;
    for i in instances {
        let key = instance_key(group, service, i);
        changed |= match parse_instance(service, i) {
            Parsed::Provider(p) => catalog.put_parsed_provider(&key, p, 0, now_ms),
            Parsed::Instance(a) => catalog.put_parsed_instance(&key, a, 0, now_ms),
        };
        keep.insert(key);
    }
    for key in catalog.keys_under(&service_prefix(group, service)) {
        if !keep.contains(&key) {
            changed |= catalog.remove(&key);
        }
    }
    changed
}

/// Services that Nacos pushed a change for, not yet read again.
#[derive(Debug, Default)]
struct Dirty {
    services: Mutex<BTreeSet<ServiceId>>,
    notify: Notify,
}

impl Dirty {
    fn take(&self) -> BTreeSet<ServiceId> {
        std::mem::take(&mut *self.services.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Marks the pushed service dirty; called on the client's runtime.
#[derive(Debug)]
struct Forward(Arc<Dirty>);

impl NamingEventListener for Forward {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        self.0
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((event.group_name.clone(), event.service_name.clone()));
        self.0.notify.notify_one();
    }
}

/// One source's client, kept across runs with its subscriptions.
struct Client {
    naming: NamingService,
    dirty: Arc<Dirty>,
    listener: Arc<dyn NamingEventListener>,
    subscribed: tokio::sync::Mutex<BTreeSet<ServiceId>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

fn clients() -> &'static Mutex<HashMap<String, Arc<Client>>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<Client>>>> = OnceLock::new();
    CLIENTS.get_or_init(Mutex::default)
}

impl Client {
    async fn get(cfg: &NacosConfig) -> Result<Arc<Client>, Error> {
        let id = format!("{cfg:?}");
        if let Some(c) = clients().lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(c.clone());
        }
        let props = ClientProps::new()
            .server_addr(cfg.address.clone())
            .namespace(cfg.namespace.clone())
            .app_name("meshreg")
            // Settings come from the source's config, not from NACOS_* variables.
            .env_first(false)
            // An empty push means the last instance left: meshreg must see it.
            .naming_push_empty_protection(false)
            .naming_load_cache_at_start(false)
            .cache_dir(std::env::temp_dir().join("meshreg-nacos-cache"));
        let builder = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => {
                NamingServiceBuilder::new(props.auth_username(u.clone()).auth_password(p.clone()))
                    .enable_auth_plugin_http()
            }
            _ => NamingServiceBuilder::new(props),
        };
        let naming = tokio::time::timeout(CONNECT_TIMEOUT, builder.build())
            .await
            .map_err(|_| nacos_error(cfg, format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| nacos_error(cfg, e.to_string()))?;
        let dirty = Arc::new(Dirty::default());
        let client = Arc::new(Client {
            naming,
            listener: Arc::new(Forward(dirty.clone())),
            dirty,
            subscribed: tokio::sync::Mutex::default(),
        });
        Ok(clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(client)
            .clone())
    }

    /// Every service of the configured groups.
    async fn list(&self, cfg: &NacosConfig) -> Result<BTreeSet<ServiceId>, Error> {
        let mut out = BTreeSet::new();
        for group in &cfg.groups {
            let mut page = 1;
            loop {
                let (names, count) = request(
                    cfg,
                    self.naming
                        .get_service_list(page, PAGE, Some(group.clone())),
                )
                .await?;
                let got = names.len();
                out.extend(names.into_iter().map(|n| (group.clone(), n)));
                let seen = i64::from(page) * i64::from(PAGE);
                if got == 0 || seen >= i64::from(count) {
                    break;
                }
                page += 1;
            }
        }
        Ok(out)
    }

    /// Subscribes to the service (once per client) and reads its instances
    /// into the feed.
    async fn read(&self, cfg: &NacosConfig, feed: &Feed, id: &ServiceId) -> Result<(), Error> {
        let (group, service) = id;
        // Marked first, so that services subscribe in parallel; unmarked
        // again when the request fails.
        if self.subscribed.lock().await.insert(id.clone()) {
            let subscribe = self.naming.subscribe(
                service.clone(),
                Some(group.clone()),
                Vec::new(),
                self.listener.clone(),
            );
            if let Err(e) = request(cfg, subscribe).await {
                self.subscribed.lock().await.remove(id);
                return Err(e);
            }
        }
        let instances = request(
            cfg,
            self.naming
                .get_all_instances(service.clone(), Some(group.clone()), Vec::new(), false),
        )
        .await?;
        let now = now_ms();
        feed.edit(|c| apply_service(c, group, service, &instances, now));
        Ok(())
    }

    /// Reads `services` with some in parallel.
    async fn read_all(
        &self,
        cfg: &NacosConfig,
        feed: &Feed,
        services: impl IntoIterator<Item = ServiceId>,
    ) -> Result<(), Error> {
        stream::iter(services.into_iter().map(Ok))
            .try_for_each_concurrent(PARALLEL_READS, |id| async move {
                self.read(cfg, feed, &id).await
            })
            .await
    }

    /// Unsubscribes from a service that is gone and drops its entries.
    async fn forget(&self, cfg: &NacosConfig, feed: &Feed, id: &ServiceId) -> Result<(), Error> {
        let (group, service) = id;
        if self.subscribed.lock().await.remove(id) {
            request(
                cfg,
                self.naming.unsubscribe(
                    service.clone(),
                    Some(group.clone()),
                    Vec::new(),
                    self.listener.clone(),
                ),
            )
            .await?;
        }
        feed.edit(|c| c.remove_under(&service_prefix(group, service)));
        Ok(())
    }
}

fn nacos_error(cfg: &NacosConfig, message: String) -> Error {
    Error::Nacos {
        address: cfg.address.clone(),
        message,
    }
}

/// Runs one request with [`REQUEST_TIMEOUT`].
async fn request<T>(
    cfg: &NacosConfig,
    fut: impl std::future::Future<Output = nacos_sdk::api::error::Result<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| nacos_error(cfg, format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| nacos_error(cfg, e.to_string()))
}

/// Reads the source into `feed` and follows it until a request fails
/// (the error says why; the caller retries).
///
/// # Errors
/// [`Error::Config`] for a bad configuration, [`Error::Nacos`] when the
/// server cannot be reached or a request fails.
pub async fn run(cfg: &NacosConfig, feed: &Feed) -> Result<(), Error> {
    cfg.validate()?;
    let client = Client::get(cfg).await?;
    // Pushes seen before this load are covered by it.
    client.dirty.take();
    feed.begin_resync();
    let mut known = client.list(cfg).await?;
    client.read_all(cfg, feed, known.iter().cloned()).await?;
    feed.finish_resync();
    tracing::info!(address = %cfg.address, namespace = %cfg.namespace, services = known.len(), "Nacos source loaded; following");
    let mut list = tokio::time::interval(SERVICE_LIST_INTERVAL);
    list.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    list.tick().await;
    loop {
        tokio::select! {
            _ = client.dirty.notify.notified() => {
                let dirty: Vec<ServiceId> = client
                    .dirty
                    .take()
                    .into_iter()
                    .filter(|id| known.contains(id))
                    .collect();
                client.read_all(cfg, feed, dirty).await?;
            }
            _ = list.tick() => {
                let now = client.list(cfg).await?;
                for gone in known.difference(&now) {
                    client.forget(cfg, feed, gone).await?;
                }
                let new: Vec<ServiceId> = now.difference(&known).cloned().collect();
                known = now;
                client.read_all(cfg, feed, new).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests;
