//! The proxy's xDS client: one delta `DeltaAggregatedResources` stream
//! (envoy.service.discovery.v3, the incremental variant of
//! xds_protocol.rst) carrying all four types, subscribed by name and
//! following references the way Envoy does: the bootstrap's Listeners →
//! the RouteConfigurations their HTTP connection managers name → the
//! Clusters the routes (and TCP proxies) name → the
//! ClusterLoadAssignments of EDS clusters. Names no longer referenced are
//! unsubscribed and their resources dropped.
//!
//! [`AdsState`] is the sans-I/O core: requests to send on a new stream
//! (with `initial_resource_versions`, so a reconnect to any registry node
//! gets only what changed), and for each response the ACK — or a NACK with
//! `error_detail` when any resource in it does not compile, in which case
//! nothing in that response is applied — followed by the subscription
//! changes it causes. [`run`] is the async shell.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerPb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{self, Action, Resources, Versioned};

/// The four xDS types, in the order Envoy applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    /// Type URL.
    pub fn url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// Short name (CDS, EDS, LDS, RDS).
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "CDS",
            Kind::Endpoint => "EDS",
            Kind::Listener => "LDS",
            Kind::Route => "RDS",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }

    fn from_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.url() == url)
    }
}

/// gRPC INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// What handling one response produced.
#[derive(Debug)]
pub struct Handled {
    /// Requests to send, in order (the ACK/NACK first).
    pub requests: Vec<DeltaDiscoveryRequest>,
    /// Whether accepted configuration changed: a resource added, changed or
    /// removed, or a subscribed name answered for the first time (which
    /// can complete warming).
    pub changed: bool,
    /// The NACK message, when the response was rejected.
    pub nack: Option<String>,
}

/// Delta xDS client state (sans-I/O).
#[derive(Debug)]
pub struct AdsState {
    node: Node,
    subs: [BTreeSet<String>; 4],
    answered: [BTreeSet<String>; 4],
    /// Accepted resources.
    pub res: Resources,
    /// NACKs sent, per kind.
    pub nacks: [u64; 4],
    /// Accepted responses, per kind.
    pub updates: [u64; 4],
    /// Last NACK message.
    pub last_nack: Option<String>,
}

impl AdsState {
    /// A client that identifies as `node` and wants `listeners`.
    pub fn new(node: Node, listeners: &[String]) -> AdsState {
        let mut subs: [BTreeSet<String>; 4] = Default::default();
        subs[Kind::Listener.idx()] = listeners.iter().cloned().collect();
        AdsState {
            node,
            subs,
            answered: Default::default(),
            res: Resources::default(),
            nacks: [0; 4],
            updates: [0; 4],
            last_nack: None,
        }
    }

    /// Subscribed names of a kind.
    pub fn subscribed(&self, kind: Kind) -> &BTreeSet<String> {
        &self.subs[kind.idx()]
    }

    /// Whether the server has answered (with the resource or its removal)
    /// every subscribed name: the configuration is complete ("warm").
    pub fn is_warm(&self) -> bool {
        Kind::ALL.into_iter().all(|k| {
            self.subs[k.idx()]
                .iter()
                .all(|n| self.answered[k.idx()].contains(n))
        })
    }

    fn version(&self, kind: Kind, name: &str) -> Option<String> {
        let v = match kind {
            Kind::Listener => self.res.listeners.get(name).map(|v| &v.version),
            Kind::Route => self.res.routes.get(name).map(|v| &v.version),
            Kind::Cluster => self.res.clusters.get(name).map(|v| &v.version),
            Kind::Endpoint => self.res.endpoints.get(name).map(|v| &v.version),
        };
        v.filter(|v| !v.is_empty()).cloned()
    }

    /// The requests that open a new stream: every kind with subscriptions,
    /// with the versions already held. The first carries the node.
    pub fn on_connect(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.answered = Default::default();
        let mut out = Vec::new();
        for kind in [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoint] {
            let names = &self.subs[kind.idx()];
            if names.is_empty() {
                continue;
            }
            out.push(DeltaDiscoveryRequest {
                node: out.is_empty().then(|| self.node.clone()),
                type_url: kind.url().to_string(),
                resource_names_subscribe: names.iter().cloned().collect(),
                initial_resource_versions: names
                    .iter()
                    .filter_map(|n| Some((n.clone(), self.version(kind, n)?)))
                    .collect::<HashMap<_, _>>(),
                ..Default::default()
            });
        }
        out
    }

    /// Handles a response: compiles every resource in it, applies them
    /// all (ACK) or none (NACK), then follows references.
    pub fn on_response(&mut self, resp: &DeltaDiscoveryResponse) -> Handled {
        let Some(kind) = Kind::from_url(&resp.type_url) else {
            let msg = format!("type_url {:?} was not subscribed", resp.type_url);
            return Handled {
                requests: vec![nack(&resp.type_url, &resp.nonce, &msg)],
                changed: false,
                nack: Some(msg),
            };
        };
        match self.apply(kind, resp) {
            Ok(changed) => {
                self.updates[kind.idx()] += 1;
                let mut requests = vec![DeltaDiscoveryRequest {
                    type_url: kind.url().to_string(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                }];
                requests.extend(self.follow_references());
                Handled {
                    requests,
                    changed,
                    nack: None,
                }
            }
            Err(msg) => {
                self.nacks[kind.idx()] += 1;
                self.last_nack = Some(format!("{}: {msg}", kind.short()));
                tracing::warn!(kind = kind.short(), error = %msg, "rejecting an xDS response (NACK)");
                Handled {
                    requests: vec![nack(kind.url(), &resp.nonce, &msg)],
                    changed: false,
                    nack: Some(msg),
                }
            }
        }
    }

    fn apply(&mut self, kind: Kind, resp: &DeltaDiscoveryResponse) -> Result<bool, String> {
        let subs = &self.subs[kind.idx()];
        // Compile everything first: all or nothing.
        let mut staged: Vec<(String, String, Staged)> = Vec::new();
        for r in &resp.resources {
            let Some(any) = &r.resource else { continue };
            if any.type_url != kind.url() {
                return Err(format!(
                    "resource {:?} has type {:?}, not {:?}",
                    r.name,
                    any.type_url,
                    kind.url()
                ));
            }
            let staged_value = match kind {
                Kind::Listener => Staged::Listener(config::compile_listener(
                    &decode::<ListenerPb>(&r.name, &any.value)?,
                )?),
                Kind::Route => Staged::Route(Arc::new(config::compile_routes(&decode::<
                    RouteConfiguration,
                >(
                    &r.name, &any.value,
                )?)?)),
                Kind::Cluster => Staged::Cluster(config::compile_cluster(&decode::<ClusterPb>(
                    &r.name, &any.value,
                )?)?),
                Kind::Endpoint => {
                    Staged::Endpoint(config::compile_assignment(
                        &decode::<ClusterLoadAssignment>(&r.name, &any.value)?,
                    )?)
                }
            };
            if subs.contains(&r.name) {
                staged.push((r.name.clone(), r.version.clone(), staged_value));
            }
        }
        let mut changed = false;
        for (name, version, value) in staged {
            self.answered[kind.idx()].insert(name.clone());
            changed = true;
            match value {
                Staged::Listener(v) => drop(
                    self.res
                        .listeners
                        .insert(name, Versioned { version, value: v }),
                ),
                Staged::Route(v) => drop(
                    self.res
                        .routes
                        .insert(name, Versioned { version, value: v }),
                ),
                Staged::Cluster(v) => drop(
                    self.res
                        .clusters
                        .insert(name, Versioned { version, value: v }),
                ),
                Staged::Endpoint(v) => drop(
                    self.res
                        .endpoints
                        .insert(name, Versioned { version, value: v }),
                ),
            }
        }
        for name in &resp.removed_resources {
            if self.subs[kind.idx()].contains(name) {
                // The first answer for a name can complete the
                // configuration (warming) even when nothing was held: a
                // listener waiting for a cluster that does not exist yet
                // must then be applied.
                changed |= self.answered[kind.idx()].insert(name.clone());
            }
            changed |= self.remove(kind, name);
        }
        Ok(changed)
    }

    fn remove(&mut self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Listener => self.res.listeners.remove(name).is_some(),
            Kind::Route => self.res.routes.remove(name).is_some(),
            Kind::Cluster => self.res.clusters.remove(name).is_some(),
            Kind::Endpoint => self.res.endpoints.remove(name).is_some(),
        }
    }

    /// Recomputes what routes, clusters and endpoints are referenced and
    /// returns the (un)subscribe requests that brings.
    fn follow_references(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        let routes: BTreeSet<String> = self
            .res
            .listeners
            .values()
            .filter_map(|l| l.value.http.as_ref())
            .filter(|h| h.inline_routes.is_none())
            .map(|h| h.route_name.clone())
            .collect();
        out.extend(self.resubscribe(Kind::Route, routes));
        let mut clusters: BTreeSet<String> = BTreeSet::new();
        for l in self.res.listeners.values() {
            clusters.extend(l.value.tcp_cluster.iter().cloned());
            if let Some(inline) = l.value.http.as_ref().and_then(|h| h.inline_routes.as_ref()) {
                collect_clusters(&inline.table, &mut clusters);
            }
        }
        for r in self.res.routes.values() {
            collect_clusters(&r.value, &mut clusters);
        }
        out.extend(self.resubscribe(Kind::Cluster, clusters));
        let eds: BTreeSet<String> = self
            .res
            .clusters
            .values()
            .filter_map(|c| c.value.eds_name.clone())
            .collect();
        out.extend(self.resubscribe(Kind::Endpoint, eds));
        out
    }

    fn resubscribe(&mut self, kind: Kind, want: BTreeSet<String>) -> Option<DeltaDiscoveryRequest> {
        let have = &self.subs[kind.idx()];
        let add: Vec<String> = want.difference(have).cloned().collect();
        let drop: Vec<String> = have.difference(&want).cloned().collect();
        if add.is_empty() && drop.is_empty() {
            return None;
        }
        for n in &drop {
            self.remove(kind, n);
            self.answered[kind.idx()].remove(n);
        }
        self.subs[kind.idx()] = want;
        Some(DeltaDiscoveryRequest {
            type_url: kind.url().to_string(),
            resource_names_subscribe: add,
            resource_names_unsubscribe: drop,
            ..Default::default()
        })
    }
}

fn collect_clusters(t: &config::RouteTable, out: &mut BTreeSet<String>) {
    for vh in &t.vhosts {
        for r in &vh.routes {
            if let Action::Forward(f) = &r.action {
                out.extend(f.clusters.iter().map(|(c, _)| c.clone()));
            }
        }
    }
}

enum Staged {
    Listener(config::ListenerCfg),
    Route(Arc<config::RouteTable>),
    Cluster(config::ClusterCfg),
    Endpoint(Vec<config::HostCfg>),
}

fn decode<M: Message + Default>(name: &str, bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| format!("resource {name:?} does not decode: {e}"))
}

fn nack(type_url: &str, nonce: &str, msg: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: Some(RpcStatus {
            code: INVALID_ARGUMENT,
            message: msg.to_string(),
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Runs the client until the process ends: connects to the registry
/// addresses in turn with capped exponential backoff and jitter, and calls
/// `on_change` after every accepted response that changed something.
pub async fn run(proxy: Arc<crate::Proxy>) {
    let addrs = proxy.bootstrap.xds.clone();
    let mut backoff = Duration::from_millis(100);
    let mut i = 0usize;
    loop {
        let addr = &addrs[i % addrs.len()];
        i += 1;
        match stream(&proxy, addr).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(xds = %addr, error = %e, "xDS stream ended; reconnecting"),
        }
        proxy.set_xds_connected(false);
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn stream(proxy: &Arc<crate::Proxy>, addr: &str) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let first = proxy.ads().on_connect();
    for r in first {
        tx.send(r).await.map_err(|e| e.to_string())?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("open stream: {}", s.message()))?
        .into_inner();
    proxy.set_xds_connected(true);
    tracing::info!(xds = %addr, "xDS stream open");
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("server closed the stream".into()),
            Err(s) => return Err(s.message().to_string()),
        };
        let handled = proxy.ads().on_response(&resp);
        if handled.changed {
            proxy.apply_config();
        }
        for r in handled.requests {
            tx.send(r).await.map_err(|e| e.to_string())?;
        }
    }
}

/// The node this proxy sends: id, cluster = app, locality, and the
/// metadata meshreg reads (`meshreg.io/namespace`, `meshreg.io/app`,
/// `meshreg.io/proxy = sidecar`).
pub fn node(b: &crate::bootstrap::Bootstrap) -> Node {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::google::protobuf::{value::Kind as V, Struct, Value};
    let s = |v: &str| Value {
        kind: Some(V::StringValue(v.to_string())),
    };
    let fields: BTreeMap<&str, Value> = BTreeMap::from([
        ("meshreg.io/namespace", s(&b.namespace)),
        ("NAMESPACE", s(&b.namespace)),
        ("meshreg.io/app", s(&b.app)),
        ("meshreg.io/proxy", s("sidecar")),
    ]);
    Node {
        id: b.node_id.clone(),
        cluster: b.app.clone(),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        locality: Some(Locality {
            region: b.locality.region.clone(),
            zone: b.locality.zone.clone(),
            sub_zone: b.locality.subzone.clone(),
        }),
        user_agent_name: "meshreg-proxy".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

// Kept here rather than in `ads/tests.rs`, which another change owns.
#[cfg(test)]
mod warming_tests {
    use super::*;

    /// A removal of a name never received is the answer that can make the
    /// configuration warm: it counts as a change (so the listeners are
    /// applied), once.
    #[test]
    fn the_first_answer_for_a_name_is_a_change_even_as_a_removal() {
        let mut s = AdsState::new(Node::default(), &["l".to_string()]);
        s.on_connect();
        let removed = DeltaDiscoveryResponse {
            type_url: Kind::Listener.url().into(),
            nonce: "1".into(),
            removed_resources: vec!["l".into()],
            ..Default::default()
        };
        let h = s.on_response(&removed);
        assert!(h.changed && h.nack.is_none());
        assert!(s.is_warm());
        let h = s.on_response(&DeltaDiscoveryResponse {
            nonce: "2".into(),
            ..removed
        });
        assert!(!h.changed, "already answered, nothing held");
    }
}
