//! The ADS server: `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! (state-of-the-world and delta) on the gRPC port, fed by the registry.
//!
//! Push path: the registry's revision feed → a debouncer (quiet period and
//! maximum delay) → the changed applications and services invalidate the
//! shared [`ResourceCache`] → a new generation wakes the streams whose
//! resources the changes may touch (each stream's [`Interest`], kept from
//! the dependencies of what it was last sent) → each woken stream diffs
//! what it is subscribed to and sends only what changed. A change to one
//! application costs work for the streams watching it, not for every
//! stream.
//! Each stream's protocol state runs inside its response body
//! (`server/ads_stream.rs`): a slow or stuck client holds back only its own
//! responses and, when it catches up, gets the latest state (coalesced),
//! never a backlog; other streams never wait for it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::google::protobuf::value::Kind;
use meshreg_registry::node::Node;
use meshreg_registry::state::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tonic::Status;

use crate::cache::{Changes, Interest, ResourceCache};
use crate::config::XdsConfig;
use crate::mcp::Export;
use crate::protocol::{ProtocolError, TypeStatus, View};
use crate::resources::ResourceType;

use self::ads_stream::Protocol;
pub use self::grpc::{AdsService, MAX_REQUEST, MAX_RESPONSE};
use self::watchers::Watchers;

mod ads_stream;
mod grpc;
mod requests;
mod watchers;

/// A batch of changes made visible to the streams.
#[derive(Debug, Clone, Copy)]
struct Generation {
    /// Registry revision it reflects.
    revision: u64,
    /// When the debouncer first saw the first change in it.
    changed_at: Instant,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VariantLabel {
    variant: &'static str,
}

#[derive(Debug)]
struct XdsMetrics {
    pushes: Family<TypeLabel, Counter>,
    /// `pushes`' counter of each [`ResourceType::ALL`] entry, by position,
    /// so that a push does not hash its label.
    pushes_by_type: [Counter; ResourceType::ALL.len()],
    push_seconds: Histogram,
    nacks: Family<TypeLabel, Counter>,
    streams: Family<VariantLabel, Gauge>,
    rejected: Counter,
    wakes: Counter,
    revision: Gauge,
}

/// One connected client, for `/v1/xds/clients`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Stream id (per server).
    pub stream: u64,
    /// The client's `node.id`.
    pub node_id: String,
    /// The client's `node.cluster`.
    pub node_cluster: String,
    /// Namespace the stream is served from.
    pub namespace: String,
    /// `sotw` or `delta`.
    pub variant: &'static str,
    /// The peer address.
    pub peer: String,
    /// Seconds since the stream opened.
    pub connected_secs: u64,
    /// Per type (CDS, EDS, LDS, RDS): subscription, versions, last NACK.
    pub types: BTreeMap<&'static str, TypeStatus>,
    #[serde(skip)]
    opened: Option<Instant>,
}

/// A stream's protocol state, read by [`AdsServer::clients`] only when
/// asked: nothing is copied per push or ACK.
trait StatusSource: Send + Sync {
    fn status(&self) -> BTreeMap<&'static str, TypeStatus>;
}

impl<P: Protocol> StatusSource for Mutex<P> {
    fn status(&self) -> BTreeMap<&'static str, TypeStatus> {
        self.lock().unwrap_or_else(|p| p.into_inner()).status()
    }
}

/// One stream's entry in the client list: who it is (set once, from its
/// first request), its live protocol state, and what wakes it.
struct Slot {
    info: Mutex<ClientInfo>,
    state: Arc<dyn StatusSource>,
    /// Set when a generation may change what the stream is sent.
    wake: Wake,
}

/// The debouncer's wake-up of one stream: a flag (wakes coalesce until
/// the stream looks) and the stream's waker. Lighter than
/// `tokio::sync::Notify`, whose waiter list a stream would join and leave
/// (under its lock) on every request and push.
#[derive(Debug, Default)]
struct Wake {
    pending: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Wake {
    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and cleared) once [`Wake::notify`] was called since the last
    /// time it was ready.
    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            self.waker.register(cx.waker());
            // A notify between the swap and the registration woke nobody.
            if !self.pending.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Pending;
            }
        }
        std::task::Poll::Ready(())
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("info", &self.info).finish()
    }
}

#[derive(Debug)]
struct Inner {
    node: Arc<Node>,
    config: XdsConfig,
    cache: RwLock<ResourceCache>,
    /// The latest generation published.
    generation: Mutex<Generation>,
    /// Each stream's slot; its status is read from the stream's own state
    /// when the list is asked for, so pushes and ACKs never touch this map.
    clients: Mutex<BTreeMap<u64, Arc<Slot>>>,
    /// Each stream's slot again, by what its resources depend on.
    watchers: Mutex<Watchers<Arc<Slot>>>,
    next_stream: AtomicU64,
    /// Set when the node shuts down; every stream is woken to end.
    closing: AtomicBool,
    metrics: XdsMetrics,
}

/// The ADS server of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

/// The view one stream has: its namespace of the current registry, through
/// the shared cache. Hits (nearly every lookup when many streams watch the
/// same resources) take the cache's lock shared; only a miss takes it
/// exclusively to build.
struct CacheView<'a> {
    reg: &'a Registry,
    cache: &'a RwLock<ResourceCache>,
    ns: &'a str,
    /// Collects the dependencies of everything looked up.
    interest: &'a mut Interest,
}

impl View for CacheView<'_> {
    fn get(&mut self, ty: ResourceType, name: &str) -> Option<Arc<crate::cache::Built>> {
        let hit = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .peek_noting(self.ns, ty, name, self.interest);
        match hit {
            Some(built) => built,
            None => self
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_noting(self.reg, self.ns, ty, name, self.interest),
        }
    }

    fn all(&mut self, ty: ResourceType) -> Arc<Vec<String>> {
        // Any application added or removed changes the wildcard set: in
        // the namespace, or anywhere for ServiceEntries (they span
        // namespaces).
        if ty.mcp_export().is_some() {
            self.interest.everything = true;
        } else {
            self.interest.namespace = true;
        }
        let hit = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .peek_wildcard(self.ns, ty);
        match hit {
            Some(names) => names,
            None => self
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .wildcard_names(self.reg, self.ns, ty),
        }
    }

    fn system_version(&self) -> String {
        self.reg.revision().to_string()
    }
}

/// The namespace a client asks for in its node metadata (`NAMESPACE`, as
/// Istio sets it, or `meshreg.io/namespace`), else `default`.
pub fn namespace_of(node: Option<&EnvoyNode>) -> String {
    let fields = node.and_then(|n| n.metadata.as_ref()).map(|m| &m.fields);
    for key in ["meshreg.io/namespace", "NAMESPACE"] {
        if let Some(Kind::StringValue(s)) = fields
            .and_then(|f| f.get(key))
            .and_then(|v| v.kind.as_ref())
        {
            if !s.is_empty() {
                return s.clone();
            }
        }
    }
    meshreg_registry::model::DEFAULT_NAMESPACE.to_string()
}

/// Which instances the ServiceEntries of a stream carry, from the node its
/// first request names: natively registered ones only for another
/// meshreg's MCP sink (node id starting with
/// [`SINK_NODE_PREFIX`](crate::sink::SINK_NODE_PREFIX), the loop guard)
/// unless [`XdsConfig::export_imported_to_meshreg`] is on; every instance
/// for anyone else (istiod and other MCP sinks).
pub fn mcp_export_for(config: &XdsConfig, node: Option<&EnvoyNode>) -> Export {
    let meshreg_sink = node.is_some_and(|n| n.id.starts_with(crate::sink::SINK_NODE_PREFIX));
    if meshreg_sink && !config.export_imported_to_meshreg {
        Export::NativeOnly
    } else {
        Export::All
    }
}

/// Token bucket limiting one stream's request rate.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl AdsServer {
    /// Starts the ADS server of `node`: registers its metrics and spawns
    /// the debouncer, which stops when the node shuts down.
    pub fn start(node: Arc<Node>, config: XdsConfig) -> Self {
        let pushes = Family::<TypeLabel, Counter>::default();
        let metrics = XdsMetrics {
            pushes_by_type: ResourceType::ALL.map(|t| {
                pushes
                    .get_or_create(&TypeLabel { r#type: t.short() })
                    .clone()
            }),
            pushes,
            push_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            nacks: Family::default(),
            streams: Family::default(),
            rejected: Counter::default(),
            wakes: Counter::default(),
            revision: Gauge::default(),
        };
        node.metrics.register(|r| {
            r.register(
                "xds_pushes",
                "xDS responses sent, by type",
                metrics.pushes.clone(),
            );
            r.register(
                "xds_push_seconds",
                "Time from the first registry change in a batch to its push on a stream, seconds",
                metrics.push_seconds.clone(),
            );
            r.register(
                "xds_nacks",
                "xDS NACKs received, by type",
                metrics.nacks.clone(),
            );
            r.register(
                "xds_streams",
                "Connected ADS streams, by variant",
                metrics.streams.clone(),
            );
            r.register(
                "xds_rejected",
                "ADS streams ended for bad requests or request rate",
                metrics.rejected.clone(),
            );
            r.register(
                "xds_stream_wakes",
                "ADS streams woken by registry changes (only those whose resources a change may touch)",
                metrics.wakes.clone(),
            );
            r.register(
                "xds_revision",
                "Registry revision of the last generation published to the ADS streams",
                metrics.revision.clone(),
            );
        });
        let revision = node.shared().revision();
        let generation = Mutex::new(Generation {
            revision,
            changed_at: Instant::now(),
        });
        let inner = Arc::new(Inner {
            cache: RwLock::new(ResourceCache::new(config.cache_max_entries)),
            config,
            node,
            generation,
            clients: Mutex::new(BTreeMap::new()),
            watchers: Mutex::new(Watchers::default()),
            next_stream: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            metrics,
        });
        tokio::spawn(debounce(inner.clone()));
        tokio::spawn(end_streams_at_shutdown(inner.clone()));
        Self { inner }
    }

    /// The gRPC service: for a tonic router, or through
    /// [`AdsService::direct`] for the gRPC port, ahead of its router.
    pub fn service(&self) -> AdsService {
        AdsService {
            inner: self.inner.clone(),
        }
    }

    /// Connected clients, like `istioctl proxy-status`.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let slots: Vec<Arc<Slot>> = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .map(|slot| {
                let mut c = slot.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
                c.types = slot.state.status();
                c.connected_secs = c.opened.map_or(0, |o| o.elapsed().as_secs());
                c
            })
            .collect()
    }

    /// `GET /v1/xds/clients`.
    pub fn http_router(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/v1/xds/clients",
            axum::routing::get(move || {
                let me = me.clone();
                async move { axum::Json(serde_json::json!({ "clients": me.clients() })) }
            }),
        )
    }
}

impl Inner {
    /// Registers a new stream of protocol `P` from `peer`; its state is
    /// made from the stream id's seed.
    fn open<P: Protocol>(&self, peer: String) -> (u64, RateLimit, Arc<Slot>, Arc<Mutex<P>>) {
        let variant = P::VARIANT;
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let st = Arc::new(Mutex::new(P::new(
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fastrand::u64(..),
        )));
        self.metrics
            .streams
            .get_or_create(&VariantLabel { variant })
            .inc();
        let info = Mutex::new(ClientInfo {
            stream: id,
            node_id: String::new(),
            node_cluster: String::new(),
            namespace: String::new(),
            variant,
            peer,
            connected_secs: 0,
            types: BTreeMap::new(),
            opened: Some(Instant::now()),
        });
        let slot = Arc::new(Slot {
            info,
            state: st.clone(),
            wake: Wake::default(),
        });
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, slot.clone());
        // Opened after `end_streams_at_shutdown` woke the others.
        if self.closing.load(Ordering::Acquire) {
            slot.wake.notify();
        }
        let limit = RateLimit {
            tokens: self.config.request_burst as f64,
            burst: self.config.request_burst as f64,
            per_sec: self.config.requests_per_second as f64,
            at: Instant::now(),
        };
        (id, limit, slot, st)
    }

    fn close(&self, id: u64, variant: &'static str) {
        self.metrics
            .streams
            .get_or_create(&VariantLabel { variant })
            .dec();
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn identify(slot: &Slot, node: Option<&EnvoyNode>, ns: &str) {
        let mut c = slot.info.lock().unwrap_or_else(|p| p.into_inner());
        c.node_id = node.map(|n| n.id.clone()).unwrap_or_default();
        c.node_cluster = node.map(|n| n.cluster.clone()).unwrap_or_default();
        c.namespace = ns.to_string();
    }

    /// Runs `f` with this stream's view of the current state, noting in
    /// `interest` the dependencies of everything it looks up.
    fn with_view<T>(
        &self,
        ns: &str,
        interest: &mut Interest,
        f: impl FnOnce(&mut dyn View) -> T,
    ) -> T {
        let state = self.node.shared().read();
        let mut view = CacheView {
            reg: &state.registry,
            cache: &self.cache,
            ns,
            interest,
        };
        f(&mut view)
    }

    /// The latest generation.
    fn generation(&self) -> Generation {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a generation, then wakes the streams it may concern.
    ///
    /// A stream records its interest and then re-reads the generation
    /// ([`ads_stream`]); this publishes and then reads the watchers. So
    /// either this sees the stream's new interest, or the stream sees the
    /// new generation and re-checks itself: no change is missed.
    fn publish(&self, generation: Generation, changes: &Changes) {
        let started = Instant::now();
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = generation;
        let mut woken = 0;
        let mut wake = |slot: &Arc<Slot>| {
            slot.wake.notify();
            woken += 1;
        };
        if changes.everything {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients.values().for_each(&mut wake);
        } else {
            let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            watchers.touched(changes, |_, slot| wake(slot));
        }
        self.metrics.wakes.inc_by(woken);
        self.metrics
            .revision
            .set(i64::try_from(generation.revision).unwrap_or(i64::MAX));
        tracing::debug!(
            revision = generation.revision,
            woken,
            took_us = started.elapsed().as_micros(),
            "published a generation"
        );
    }

    fn count_push(&self, type_url: &str, generation: Option<&Generation>) {
        match ResourceType::ALL.iter().position(|t| t.url() == type_url) {
            Some(i) => self.metrics.pushes_by_type[i].inc(),
            // Another Istio collection's empty answer.
            None => self
                .metrics
                .pushes
                .get_or_create(&TypeLabel { r#type: "?" })
                .inc(),
        };
        if let Some(g) = generation {
            self.metrics
                .push_seconds
                .observe(g.changed_at.elapsed().as_secs_f64());
        }
    }
}

/// Ends every stream when the node shuts down: sets `closing` and wakes
/// them all (a stream woken while `closing` ends). One task waits for the
/// signal instead of every stream polling it on every request and push.
async fn end_streams_at_shutdown(inner: Arc<Inner>) {
    let mut shutdown = inner.node.shutdown_signal();
    let _ = shutdown.wait_for(|s| *s).await;
    inner.closing.store(true, Ordering::Release);
    let clients = inner.clients.lock().unwrap_or_else(|p| p.into_inner());
    clients.values().for_each(|slot| slot.wake.notify());
}

/// Turns registry changes into generations: waits for a quiet period (or
/// the maximum delay), invalidates what changed, wakes the streams it
/// concerns.
async fn debounce(inner: Arc<Inner>) {
    let mut revisions = inner.node.shared().subscribe();
    let mut shutdown = inner.node.shutdown_signal();
    let mut last = inner.node.shared().revision();
    let quiet = Duration::from_millis(inner.config.debounce_quiet_ms);
    let max = Duration::from_millis(inner.config.debounce_max_ms);
    loop {
        tokio::select! {
            r = revisions.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let first = Instant::now();
        loop {
            let left = max.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(quiet.min(left), revisions.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        let (changes, revision) = {
            let s = inner.node.shared().read();
            let reg = &s.registry;
            let mut changes = Changes::default();
            match reg.feed().since(last) {
                Some(events) => events.for_each(|e| changes.add(e)),
                None => changes.everything = true,
            }
            (changes, reg.revision())
        };
        last = revision;
        if changes.is_empty() {
            continue;
        }
        inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .invalidate(&changes);
        inner.publish(
            Generation {
                revision,
                changed_at: first,
            },
            &changes,
        );
    }
}

fn protocol_status(e: ProtocolError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> EnvoyNode {
        EnvoyNode {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn meshreg_sinks_get_native_instances_unless_imported_ones_are_exported() {
        let guarded = XdsConfig::default();
        let sink = node("meshreg-sink-3");
        let istiod = node("istiod-5d8f7c-abcde");
        assert_eq!(mcp_export_for(&guarded, Some(&sink)), Export::NativeOnly);
        assert_eq!(mcp_export_for(&guarded, Some(&istiod)), Export::All);
        assert_eq!(mcp_export_for(&guarded, None), Export::All);

        let bridge = XdsConfig {
            export_imported_to_meshreg: true,
            ..XdsConfig::default()
        };
        assert_eq!(mcp_export_for(&bridge, Some(&sink)), Export::All);
        assert_eq!(mcp_export_for(&bridge, Some(&istiod)), Export::All);
    }
}
