//! Resource types, names and the translation of the registry view into
//! Envoy resources (docs/xds.md has the naming conventions).
//!
//! A client targets an application port, `xds:///<app>.<ns>:<port>` (or
//! `<app>:<port>` inside its own namespace), or a service (interface) name,
//! `xds:///<service>`, resolved through the ServiceMapping:
//!
//! | resource | name |
//! |---|---|
//! | Listener, RouteConfiguration | the target as the client wrote it |
//! | Cluster, ClusterLoadAssignment | `outbound\|<port>\|\|<app>.<ns>` or `service\|<service>.<ns>` |
//!
//! Listeners are gRPC API listeners (an `HttpConnectionManager` with RDS
//! over ADS and the router filter), clusters are EDS over ADS with round
//! robin, and ClusterLoadAssignments group endpoints by locality with
//! weights, Envoy health status and the instance labels as
//! `filter_metadata["envoy.lb"]` for subset load balancing.
//!
//! Names starting with `sidecar|` (Listener, RouteConfiguration) and
//! `inbound|` (Cluster) are the bundled sidecar's configuration, built by
//! [`crate::sidecar`]. Every cluster carries outlier detection and circuit
//! breakers for sidecars; proxyless gRPC clients honour them as gRFC A50
//! and A32 describe, which is arranged to change nothing for them (see
//! [`cluster()`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{value, Any, Duration, Struct, UInt32Value, Value};
use meshreg_registry::model::{Health, Instance};
use meshreg_registry::selector::Selector;
use meshreg_registry::state::Registry;
use prost::Message;

/// The four xDS resource types meshreg serves, in the order a change is
/// pushed on one stream: CDS → EDS → LDS → RDS (make before break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// `envoy.config.listener.v3.Listener`.
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// `networking.istio.io/v1alpha3/ServiceEntry` over MCP-over-xDS
    /// (each resource an `istio.mcp.v1alpha1.Resource`; see docs/mcp.md).
    /// Its names are `<namespace>/<app>` across all namespaces.
    ServiceEntry,
    /// The same type as another meshreg's MCP sink sees it: natively
    /// registered instances only (loop guard, see `mcp::Export`).
    ServiceEntryNative,
}

impl ResourceType {
    /// All types, in push order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::ServiceEntry,
        ResourceType::ServiceEntryNative,
    ];

    /// The type URL.
    pub fn url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::ServiceEntry | ResourceType::ServiceEntryNative => {
                crate::mcp::SERVICE_ENTRY_TYPE
            }
        }
    }

    /// The type for a type URL.
    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.url() == url)
    }

    /// Short name: CDS, EDS, LDS, RDS.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::ServiceEntry | ResourceType::ServiceEntryNative => "MCP",
        }
    }

    /// For the MCP types: which instances they export.
    pub fn mcp_export(self) -> Option<crate::mcp::Export> {
        match self {
            ResourceType::ServiceEntry => Some(crate::mcp::Export::All),
            ResourceType::ServiceEntryNative => Some(crate::mcp::Export::NativeOnly),
            _ => None,
        }
    }

    /// Listener and Cluster: a SotW response carries the whole set, and an
    /// empty subscription is a wildcard.
    pub fn is_sotw_complete(self) -> bool {
        matches!(
            self,
            ResourceType::Cluster
                | ResourceType::Listener
                | ResourceType::ServiceEntry
                | ResourceType::ServiceEntryNative
        )
    }
}

/// What a listener or cluster name points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The instances of an application that have this port number.
    App {
        /// Application.
        app: String,
        /// Port number.
        port: u16,
    },
    /// The instances whose service revision exposes this service, each on
    /// the port its ServiceDef names.
    Service {
        /// Service (interface) name.
        service: String,
    },
}

impl Target {
    /// The cluster (and ClusterLoadAssignment) name of this target.
    pub fn cluster_name(&self, ns: &str) -> String {
        match self {
            Target::App { app, port } => format!("outbound|{port}||{app}.{ns}"),
            Target::Service { service } => format!("service|{service}.{ns}"),
        }
    }
}

fn app_has_port(reg: &Registry, ns: &str, app: &str, port: u16) -> bool {
    let sel = Selector {
        app: Some(app.to_string()),
        ..Default::default()
    };
    reg.list(ns, &sel)
        .iter()
        .any(|i| i.ports.values().any(|p| *p == port))
}

/// Resolves a listener (or route) name in namespace `ns`.
pub fn listener_target(reg: &Registry, ns: &str, name: &str) -> Option<Target> {
    if let Some((host, port)) = name.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            let suffix = format!(".{ns}");
            let candidates = [host.strip_suffix(&suffix), Some(host)];
            for app in candidates.into_iter().flatten() {
                if app_has_port(reg, ns, app, port) {
                    return Some(Target::App {
                        app: app.to_string(),
                        port,
                    });
                }
            }
            return (!reg.resolve(ns, host).is_empty()).then(|| Target::Service {
                service: host.to_string(),
            });
        }
    }
    (!reg.resolve(ns, name).is_empty()).then(|| Target::Service {
        service: name.to_string(),
    })
}

/// Resolves a cluster (or ClusterLoadAssignment) name in namespace `ns`.
pub fn cluster_target(reg: &Registry, ns: &str, name: &str) -> Option<Target> {
    let suffix = format!(".{ns}");
    if let Some(rest) = name.strip_prefix("outbound|") {
        let mut parts = rest.splitn(3, '|');
        let port: u16 = parts.next()?.parse().ok()?;
        let _subset = parts.next()?;
        let app = parts.next()?.strip_suffix(&suffix)?;
        return app_has_port(reg, ns, app, port).then(|| Target::App {
            app: app.to_string(),
            port,
        });
    }
    let service = name.strip_prefix("service|")?.strip_suffix(&suffix)?;
    (!reg.resolve(ns, service).is_empty()).then(|| Target::Service {
        service: service.to_string(),
    })
}

/// Every target of a namespace: each application port, and each service.
/// Used for wildcard LDS/CDS subscriptions.
pub fn all_targets(reg: &Registry, ns: &str) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    let mut services = BTreeSet::new();
    for i in reg.list(ns, &Selector::default()) {
        for p in i.ports.values() {
            out.insert(Target::App {
                app: i.app.clone(),
                port: *p,
            });
        }
    }
    for a in reg.applications(ns) {
        services.extend(a.services);
    }
    out.extend(
        services
            .into_iter()
            .map(|service| Target::Service { service }),
    );
    out
}

/// The names of every resource of `ty` in a namespace (wildcard set).
/// ServiceEntries span every namespace.
pub fn all_names(reg: &Registry, ns: &str, ty: ResourceType) -> Vec<String> {
    if let Some(export) = ty.mcp_export() {
        return reg
            .namespaces()
            .iter()
            .flat_map(|n| {
                crate::mcp::build_all_with(reg, &n.name, export)
                    .into_iter()
                    .map(|(name, _)| name)
            })
            .collect();
    }
    all_targets(reg, ns)
        .into_iter()
        .map(|t| match ty {
            ResourceType::Cluster | ResourceType::Endpoint => t.cluster_name(ns),
            ResourceType::Listener
            | ResourceType::Route
            | ResourceType::ServiceEntry
            | ResourceType::ServiceEntryNative => match t {
                Target::App { app, port } => format!("{app}.{ns}:{port}"),
                Target::Service { service } => service,
            },
        })
        .collect()
}

/// `m` encoded as an `Any` of type URL `ty`.
pub(crate) fn any<M: Message>(ty: &str, m: &M) -> Any {
    Any {
        type_url: ty.to_string(),
        value: m.encode_to_vec(),
    }
}

/// A v3 `ConfigSource` pointing at the ADS stream the client is on.
pub(crate) fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// The `envoy.filters.http.router` HTTP filter, the last (here the only)
/// filter of every `HttpConnectionManager` meshreg serves.
pub(crate) fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            &router::Router::default(),
        ))),
        ..Default::default()
    }
}

/// The `typed_config` type URL of an `HttpConnectionManager`.
pub(crate) const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A gRPC API listener for `name` that routes through RDS `name`.
pub fn listener(name: &str) -> Any {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads_source()),
                route_config_name: name.to_string(),
            },
        )),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    let l = listener::Listener {
        name: name.to_string(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(any(HCM_TYPE, &manager)),
        }),
        ..Default::default()
    };
    any(ResourceType::Listener.url(), &l)
}

/// A RouteConfiguration `name` with one virtual host sending everything to `cluster`.
pub fn route(name: &str, cluster: &str) -> Any {
    let r = route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![route::VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    any(ResourceType::Route.url(), &r)
}

/// An EDS cluster `name` over ADS, round robin, 1 s connect timeout, with
/// outlier detection and circuit breakers for sidecars:
///
/// - outlier detection: eject a host after 5 consecutive 5xx, checked
///   every 1 s, for 10 s × the times it was ejected, at most 50 % of the
///   hosts; `consecutive_gateway_failure` 5 (Envoy enforces it only with
///   `enforcing_consecutive_gateway_failure`, default 0; gateway errors are
///   5xx anyway). `enforcing_success_rate` is 0: proxyless gRPC (gRFC A50)
///   ignores the consecutive-error counters but would turn success-rate
///   ejection on by default when `outlier_detection` is present, which
///   would change how those clients balance.
/// - circuit breakers, default priority: 1,024 connections, pending
///   requests and requests, 3 concurrent retries (Envoy's defaults; gRPC
///   reads only `max_requests`, whose gRFC A32 default is also 1,024).
pub fn cluster(name: &str) -> Any {
    let c = cluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: name.to_string(),
        }),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        outlier_detection: Some(outlier_detection()),
        circuit_breakers: Some(circuit_breakers()),
        ..Default::default()
    };
    any(ResourceType::Cluster.url(), &c)
}

/// A whole number of seconds as a protobuf `Duration`.
pub(crate) fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

fn outlier_detection() -> cluster::OutlierDetection {
    cluster::OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 5 }),
        consecutive_gateway_failure: Some(UInt32Value { value: 5 }),
        interval: Some(seconds(1)),
        base_ejection_time: Some(seconds(10)),
        max_ejection_percent: Some(UInt32Value { value: 50 }),
        // Explicitly off (Envoy and gRPC both default it to 100 %).
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        ..Default::default()
    }
}

fn circuit_breakers() -> cluster::CircuitBreakers {
    cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: Some(UInt32Value { value: 1024 }),
            max_pending_requests: Some(UInt32Value { value: 1024 }),
            max_requests: Some(UInt32Value { value: 1024 }),
            // Envoy's default of 3 retries in flight per cluster fails requests
            // as soon as a few callers retry at once (one endpoint dying under
            // load); each request is still bounded by its route's num_retries.
            max_retries: Some(UInt32Value { value: 1024 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's health status for a registry health state.
pub fn health_status(h: Health) -> core::HealthStatus {
    match h {
        Health::Serving => core::HealthStatus::Healthy,
        Health::Warning => core::HealthStatus::Degraded,
        Health::NotServing => core::HealthStatus::Unhealthy,
        Health::Draining => core::HealthStatus::Draining,
        Health::Unknown => core::HealthStatus::Unknown,
    }
}

fn lb_endpoint(i: &Instance, port: u16) -> endpoint::LbEndpoint {
    let labels: HashMap<String, Value> = i
        .labels
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value {
                    kind: Some(value::Kind::StringValue(v.clone())),
                },
            )
        })
        .collect();
    // No labels: no "envoy.lb" entry. An empty `Struct` map value encodes
    // as a key-only map entry, valid protobuf that protobufjs (gRPC's Node
    // xDS client) decodes as null and then rejects the whole response. For
    // the same reason no metadata at all when there is nothing to put in it.
    let mut filter_metadata = HashMap::new();
    if !labels.is_empty() {
        filter_metadata.insert("envoy.lb".to_string(), Struct { fields: labels });
    }
    if let Some(port) = crate::sidecar::sidecar_port(i) {
        filter_metadata.insert(
            crate::sidecar::FILTER_METADATA.to_string(),
            Struct {
                fields: HashMap::from([(
                    crate::sidecar::SIDECAR_PORT_FIELD.to_string(),
                    Value {
                        kind: Some(value::Kind::NumberValue(f64::from(port))),
                    },
                )]),
            },
        );
    }
    let metadata = (!filter_metadata.is_empty()).then(|| core::Metadata {
        filter_metadata,
        ..Default::default()
    });
    endpoint::LbEndpoint {
        health_status: health_status(i.health) as i32,
        metadata,
        load_balancing_weight: Some(UInt32Value {
            value: i.weight.max(1),
        }),
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: i.address.clone(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                            u32::from(port),
                        )),
                        ..Default::default()
                    })),
                }),
                hostname: i.id.clone(),
                ..Default::default()
            },
        )),
    }
}

/// The endpoints of a target: (instance, port) pairs.
pub fn endpoints(
    reg: &Registry,
    ns: &str,
    target: &Target,
) -> Vec<(std::sync::Arc<Instance>, u16)> {
    match target {
        Target::App { app, port } => {
            let sel = Selector {
                app: Some(app.clone()),
                ..Default::default()
            };
            reg.list(ns, &sel)
                .into_iter()
                .filter(|i| i.ports.values().any(|p| p == port))
                .map(|i| (i, *port))
                .collect()
        }
        Target::Service { service } => {
            let sel = Selector {
                service: Some(service.clone()),
                ..Default::default()
            };
            reg.list(ns, &sel)
                .into_iter()
                .filter_map(|i| {
                    let services = reg.services_of_instance(&i);
                    let def = services.iter().find(|d| d.name == *service)?;
                    let port = if def.port_name.is_empty() {
                        *i.ports.values().next()?
                    } else {
                        *i.ports.get(&def.port_name)?
                    };
                    Some((i, port))
                })
                .collect()
        }
    }
}

/// The ClusterLoadAssignment of cluster `name`: endpoints grouped by
/// locality, each locality weighted by the sum of its endpoint weights.
pub fn load_assignment(name: &str, eps: &[(std::sync::Arc<Instance>, u16)]) -> Any {
    let mut by_locality: BTreeMap<(String, String, String), Vec<endpoint::LbEndpoint>> =
        BTreeMap::new();
    let mut weights: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (i, port) in eps {
        let l = &i.locality;
        let key = (l.region.clone(), l.zone.clone(), l.subzone.clone());
        *weights.entry(key.clone()).or_default() += u64::from(i.weight.max(1));
        by_locality
            .entry(key)
            .or_default()
            .push(lb_endpoint(i, *port));
    }
    let cla = endpoint::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(key, lb_endpoints)| endpoint::LocalityLbEndpoints {
                load_balancing_weight: Some(UInt32Value {
                    value: u32::try_from(weights[&key]).unwrap_or(u32::MAX),
                }),
                locality: Some(core::Locality {
                    region: key.0,
                    zone: key.1,
                    sub_zone: key.2,
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    any(ResourceType::Endpoint.url(), &cla)
}

/// What a resource depends on, for cache invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// Changes to this application's instances. Shared with every
    /// stream's [`crate::cache::Interest`] that notes it, so noting it
    /// copies no name.
    App(Arc<str>),
    /// Changes to instances exposing this service.
    Service(Arc<str>),
    /// Any change in the namespace (resources that do not exist yet).
    Namespace,
    /// Any change anywhere (resources spanning namespaces).
    Everything,
    /// No registry data: a resource whose name carries all it is built
    /// from (the sidecar listeners), or a name that can never resolve.
    /// Dropped only when everything is invalidated or the cache is full.
    Nothing,
}

/// Builds resource `name` of type `ty` in namespace `ns`, or `None` when it
/// does not exist. Returns what it depends on either way.
pub fn build(reg: &Registry, ns: &str, ty: ResourceType, name: &str) -> (Option<Any>, Dependency) {
    if let Some(export) = ty.mcp_export() {
        // build_one_with rejects a name of another namespace at once.
        let any = reg
            .namespaces()
            .iter()
            .find_map(|n| crate::mcp::build_one_with(reg, &n.name, name, export));
        return (any, Dependency::Everything);
    }
    if let Some(sidecar) = crate::sidecar::build(reg, ns, ty, name) {
        return sidecar;
    }
    let target = match ty {
        ResourceType::Listener
        | ResourceType::Route
        | ResourceType::ServiceEntry
        | ResourceType::ServiceEntryNative => listener_target(reg, ns, name),
        ResourceType::Cluster | ResourceType::Endpoint => cluster_target(reg, ns, name),
    };
    let Some(target) = target else {
        return (None, Dependency::Namespace);
    };
    let dep = match &target {
        Target::App { app, .. } => Dependency::App(app.as_str().into()),
        Target::Service { service } => Dependency::Service(service.as_str().into()),
    };
    let any = match ty {
        ResourceType::Listener => listener(name),
        ResourceType::Route => route(name, &target.cluster_name(ns)),
        ResourceType::Cluster => cluster(name),
        ResourceType::Endpoint => load_assignment(name, &endpoints(reg, ns, &target)),
        ResourceType::ServiceEntry | ResourceType::ServiceEntryNative => {
            return (None, Dependency::Everything)
        }
    };
    (Some(any), dep)
}

/// The version of an encoded resource: 16 hex digits of a 64-bit FNV-1a
/// hash of its bytes. The same content has the same version on every node
/// and across restarts, so a client that reconnects elsewhere with
/// `initial_resource_versions` is not sent what it already has.
pub fn version_of(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests;
