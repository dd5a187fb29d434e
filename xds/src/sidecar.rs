//! The bundled sidecar's configuration (`meshreg-proxy`; docs/xds.md,
//! "Sidecar configuration"): its outbound and inbound listeners, its
//! outbound TCP listeners, their routes, and the STATIC clusters that
//! reach the local application.
//!
//! A sidecar names everything it subscribes to explicitly, on one delta ADS
//! stream, and each name carries what its resource is built from (plus the
//! stream's namespace, which the shared cache keys on), so no other node
//! metadata is needed to build them:
//!
//! | resource | name |
//! |---|---|
//! | Listener | `sidecar\|outbound\|<port>`, `sidecar\|inbound\|<app>\|<port>`, `sidecar\|outbound-tcp\|<port>\|<target>` |
//! | RouteConfiguration | `sidecar\|outbound\|<ns>`, `sidecar\|inbound\|<app>` |
//! | Cluster (inbound) | `inbound\|<port>\|\|<app>.<ns>` |
//!
//! The outbound route sends to the ordinary `outbound|…` and `service|…`
//! clusters ([`crate::resources`]). An endpoint whose instance advertises
//! [`SIDECAR_PORT_METADATA_KEY`] carries that port in its metadata
//! ([`endpoint_sidecar_port`]): a sidecar dials it instead of the
//! application port and names the application port in [`PORT_HEADER`];
//! the receiving sidecar's inbound route picks the local cluster from it.
//!
//! An outbound TCP listener (`sidecar|outbound-tcp|<port>|<target>`) is
//! Istio's Sidecar egress listener without iptables: the application
//! dials `127.0.0.1:<port>` for one target. Its HTTP chain routes like the
//! outbound route (retries, timeouts); its TCP chain proxies bytes to the
//! same cluster, and a sidecar dials the application port for it, since
//! raw TCP cannot carry [`PORT_HEADER`].

use std::collections::{BTreeMap, BTreeSet, HashSet};

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{value, Any, Duration, UInt32Value};
use meshreg_registry::model::{validate, Instance};
use meshreg_registry::selector::Selector;
use meshreg_registry::state::Registry;

use crate::resources::{self, seconds, Dependency, ResourceType, Target};

/// Node metadata key: the application the sidecar runs beside.
pub const APP_METADATA_KEY: &str = "meshreg.io/app";
/// Node metadata key: the kind of client; a sidecar sends [`PROXY_SIDECAR`].
pub const PROXY_METADATA_KEY: &str = "meshreg.io/proxy";
/// The value of [`PROXY_METADATA_KEY`] that marks a sidecar.
pub const PROXY_SIDECAR: &str = "sidecar";
/// Instance metadata key: the port (decimal, 1..=65535) the instance's
/// sidecar accepts inbound traffic on.
pub const SIDECAR_PORT_METADATA_KEY: &str = "meshreg.io/sidecar-port";
/// The `filter_metadata` key of an `LbEndpoint` that holds meshreg's own
/// endpoint fields.
pub const FILTER_METADATA: &str = "meshreg";
/// The field of [`FILTER_METADATA`] holding the sidecar port, a
/// `number_value`.
pub const SIDECAR_PORT_FIELD: &str = "sidecar_port";
/// HTTP header in which a sidecar sends the application port it meant to
/// dial when it dials the remote sidecar port instead (decimal). The
/// inbound route matches on it and removes it.
pub const PORT_HEADER: &str = "x-meshreg-port";
/// The sidecar's default outbound listener port.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The sidecar's default inbound listener port.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;

const SIDECAR_PREFIX: &str = "sidecar|";
const INBOUND_CLUSTER_PREFIX: &str = "inbound|";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const HTTP_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// `application_protocols` the http_inspector reports for HTTP.
const HTTP_PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];
/// How long an outbound TCP listener waits for the client's first bytes
/// before it takes the connection for TCP (a server-first protocol such
/// as MySQL sends nothing until the server greets), in milliseconds. The
/// same as meshreg-proxy's fixed protocol detection time.
const DETECT_TIMEOUT_MS: i32 = 100;
/// Longest target accepted in an outbound TCP listener name, in bytes:
/// an application name (253), `.`, a namespace name (63) and `:<port>`.
pub const MAX_TCP_TARGET_LEN: usize = 323;
/// What a sidecar's outbound requests may take, end to end.
const OUTBOUND_TIMEOUT_SECS: i64 = 15;
/// What one try of an outbound request may take.
const PER_TRY_TIMEOUT_SECS: i64 = 5;
const RETRY_ON: &str = "connect-failure,refused-stream,reset,5xx";
const NUM_RETRIES: u32 = 2;

/// Name of the outbound Listener bound on `127.0.0.1:<port>`:
/// `sidecar|outbound|<port>`.
pub fn outbound_listener_name(port: u16) -> String {
    format!("{SIDECAR_PREFIX}outbound|{port}")
}

/// Name of the inbound Listener of application `app` bound on
/// `0.0.0.0:<port>`: `sidecar|inbound|<app>|<port>`.
pub fn inbound_listener_name(app: &str, port: u16) -> String {
    format!("{SIDECAR_PREFIX}inbound|{app}|{port}")
}

/// Name of the outbound TCP Listener bound on `127.0.0.1:<port>` that
/// forwards to `target`: `sidecar|outbound-tcp|<port>|<target>`. `target`
/// is `<app>.<ns>:<port>`, `<app>:<port>` or a service (interface) name,
/// as in [`valid_tcp_target`].
pub fn outbound_tcp_listener_name(port: u16, target: &str) -> String {
    format!("{SIDECAR_PREFIX}outbound-tcp|{port}|{target}")
}

/// Whether `target` can be the target of an outbound TCP listener: 1 to
/// [`MAX_TCP_TARGET_LEN`] bytes of visible ASCII other than `|` (the name
/// separator). Which application or service it names is resolved against
/// the registry as a gRPC target is ([`resources::listener_target`]).
pub fn valid_tcp_target(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= MAX_TCP_TARGET_LEN
        && target.bytes().all(|b| b.is_ascii_graphic() && b != b'|')
}

/// Name of the outbound RouteConfiguration of namespace `ns` (one virtual
/// host per application port and service): `sidecar|outbound|<ns>`.
pub fn outbound_route_name(ns: &str) -> String {
    format!("{SIDECAR_PREFIX}outbound|{ns}")
}

/// Name of the inbound RouteConfiguration of application `app`:
/// `sidecar|inbound|<app>`.
pub fn inbound_route_name(app: &str) -> String {
    format!("{SIDECAR_PREFIX}inbound|{app}")
}

/// Name of the STATIC Cluster reaching application `app` of namespace `ns`
/// on `127.0.0.1:<port>`: `inbound|<port>||<app>.<ns>`.
pub fn inbound_cluster_name(port: u16, app: &str, ns: &str) -> String {
    format!("{INBOUND_CLUSTER_PREFIX}{port}||{app}.{ns}")
}

/// The sidecar port an instance advertises in its metadata
/// ([`SIDECAR_PORT_METADATA_KEY`]), if it is a port number (1..=65535,
/// plain decimal).
pub fn sidecar_port(i: &Instance) -> Option<u16> {
    i.metadata
        .get(SIDECAR_PORT_METADATA_KEY)
        .and_then(|s| parse_port(s))
}

/// The sidecar port in an `LbEndpoint`'s metadata
/// (`filter_metadata["meshreg"].sidecar_port`), as the proxy reads it:
/// `None` when absent or not a port number.
pub fn endpoint_sidecar_port(ep: &endpoint::LbEndpoint) -> Option<u16> {
    let field = ep
        .metadata
        .as_ref()?
        .filter_metadata
        .get(FILTER_METADATA)?
        .fields
        .get(SIDECAR_PORT_FIELD)?;
    match field.kind {
        Some(value::Kind::NumberValue(n)) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => {
            u16::try_from(n as u32).ok()
        }
        _ => None,
    }
}

/// A port number written as a name part: canonical decimal 1..=65535, so
/// that one socket has one name (`015001` would be a second listener on
/// the same port).
fn parse_port(s: &str) -> Option<u16> {
    let port: u16 = s.parse().ok()?;
    (port != 0 && port.to_string() == s).then_some(port)
}

fn valid_app(app: &str) -> bool {
    validate::app("app", app).is_ok()
}

/// The resource a sidecar name stands for: `None` when `name` is not a
/// sidecar name for `ty` (the caller resolves it as usual), else what
/// [`resources::build`] returns. A sidecar name that can never resolve
/// (malformed, another namespace's route) is `(None, Dependency::Nothing)`.
pub fn build(
    reg: &Registry,
    ns: &str,
    ty: ResourceType,
    name: &str,
) -> Option<(Option<Any>, Dependency)> {
    let never = (None, Dependency::Nothing);
    Some(match ty {
        ResourceType::Listener => {
            let rest = name.strip_prefix(SIDECAR_PREFIX)?;
            if let Some(port) = rest.strip_prefix("outbound|") {
                match parse_port(port) {
                    Some(port) => (Some(outbound_listener(name, port, ns)), Dependency::Nothing),
                    None => never,
                }
            } else if let Some(rest) = rest.strip_prefix("outbound-tcp|") {
                match rest.split_once('|') {
                    Some((port, target)) if valid_tcp_target(target) => match parse_port(port) {
                        Some(port) => outbound_tcp_listener(reg, ns, name, port, target),
                        None => never,
                    },
                    _ => never,
                }
            } else if let Some(rest) = rest.strip_prefix("inbound|") {
                match rest.rsplit_once('|') {
                    Some((app, port)) if valid_app(app) => match parse_port(port) {
                        Some(port) => {
                            (Some(inbound_listener(name, app, port)), Dependency::Nothing)
                        }
                        None => never,
                    },
                    _ => never,
                }
            } else {
                never
            }
        }
        ResourceType::Route => {
            let rest = name.strip_prefix(SIDECAR_PREFIX)?;
            if let Some(route_ns) = rest.strip_prefix("outbound|") {
                // The clusters it names resolve only in the stream's namespace.
                if route_ns == ns {
                    (Some(outbound_route(reg, ns, name)), Dependency::Namespace)
                } else {
                    never
                }
            } else if let Some(app) = rest.strip_prefix("inbound|") {
                if valid_app(app) {
                    (
                        Some(inbound_route(reg, ns, name, app)),
                        Dependency::App(app.into()),
                    )
                } else {
                    never
                }
            } else {
                never
            }
        }
        ResourceType::Cluster => {
            let rest = name.strip_prefix(INBOUND_CLUSTER_PREFIX)?;
            let mut parts = rest.splitn(3, '|');
            let (Some(port), Some(""), Some(host)) = (parts.next(), parts.next(), parts.next())
            else {
                return Some(never);
            };
            let app = host
                .strip_suffix(ns)
                .and_then(|a| a.strip_suffix('.'))
                .filter(|a| valid_app(a));
            match (parse_port(port), app) {
                (Some(port), Some(app)) => {
                    let exists = app_ports(reg, ns, app).contains(&port);
                    (
                        exists.then(|| inbound_cluster(name, port)),
                        Dependency::App(app.into()),
                    )
                }
                _ => never,
            }
        }
        ResourceType::Endpoint | ResourceType::ServiceEntry | ResourceType::ServiceEntryNative => {
            return None
        }
    })
}

/// Every port number of application `app`'s instances in `ns`, ascending.
fn app_ports(reg: &Registry, ns: &str, app: &str) -> BTreeSet<u16> {
    let sel = Selector {
        app: Some(app.to_string()),
        ..Default::default()
    };
    let mut ports = BTreeSet::new();
    for i in reg.list(ns, &sel) {
        ports.extend(i.ports.values().copied());
    }
    ports
}

fn socket_address(ip: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                port,
            ))),
            ..Default::default()
        })),
    }
}

/// The `envoy.filters.listener.http_inspector` listener filter: it sets
/// the connection's `application_protocols` when the first bytes are
/// HTTP/1.x or the HTTP/2 preface.
fn http_inspector() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: HTTP_INSPECTOR.to_string(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(
            resources::any(HTTP_INSPECTOR_TYPE, &HttpInspector {}),
        )),
        ..Default::default()
    }
}

/// An `HttpConnectionManager` (`codec_type: AUTO`, the router filter)
/// routing by `routes`.
fn connection_manager(
    stat_prefix: String,
    routes: hcm::http_connection_manager::RouteSpecifier,
) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix,
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: vec![resources::router_filter()],
        ..Default::default()
    }
}

/// The filter chain `http`: connections the http_inspector found to be
/// HTTP/1.0, HTTP/1.1 or cleartext HTTP/2, handed to `manager`.
fn http_chain(manager: &hcm::HttpConnectionManager) -> listener::FilterChain {
    listener::FilterChain {
        name: "http".to_string(),
        filter_chain_match: Some(listener::FilterChainMatch {
            application_protocols: HTTP_PROTOCOLS.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![listener::Filter {
            name: HCM.to_string(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(resources::any(
                resources::HCM_TYPE,
                manager,
            ))),
        }],
        ..Default::default()
    }
}

/// A listener on `ip:port` that sniffs HTTP (http_inspector) and hands
/// HTTP/1.1 and cleartext HTTP/2 to an `HttpConnectionManager` with RDS
/// `route` over ADS.
fn http_listener(name: &str, ip: &str, port: u16, stat_prefix: String, route: String) -> Any {
    let manager = connection_manager(
        stat_prefix,
        hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(resources::ads_source()),
            route_config_name: route,
        }),
    );
    let l = listener::Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        listener_filters: vec![http_inspector()],
        filter_chains: vec![http_chain(&manager)],
        ..Default::default()
    };
    resources::any(ResourceType::Listener.url(), &l)
}

/// The cluster an outbound TCP listener's `target` leads to. A target the
/// registry resolves ([`resources::listener_target`]) gives its cluster;
/// one it does not resolve (yet) gives the cluster it will have once
/// registered, read from its shape: `<host>:<port>` with a port number is
/// port `<port>` of application `<host>` (without `.<ns>`), anything else
/// a service. Either way the listener is rebuilt on any change in the
/// namespace, so it follows a target that turns out to be the other kind.
fn tcp_target_cluster(reg: &Registry, ns: &str, target: &str) -> String {
    if let Some(t) = resources::listener_target(reg, ns, target) {
        return t.cluster_name(ns);
    }
    let guess = target
        .rsplit_once(':')
        .and_then(|(host, port)| {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
            let app = host
                .strip_suffix(ns)
                .and_then(|a| a.strip_suffix('.'))
                .filter(|a| !a.is_empty())
                .unwrap_or(host);
            (!app.is_empty()).then(|| Target::App {
                app: app.to_string(),
                port,
            })
        })
        .unwrap_or_else(|| Target::Service {
            service: target.to_string(),
        });
    guess.cluster_name(ns)
}

/// `sidecar|outbound-tcp|<port>|<target>`: `127.0.0.1:<port>`, the
/// http_inspector (100 ms, then TCP), and two filter chains to the
/// target's cluster ([`tcp_target_cluster`]):
///
/// - `http` (HTTP/1.0, HTTP/1.1, h2c): an `HttpConnectionManager`,
///   `stat_prefix` `outbound_tcp_<port>`, with an inline route
///   configuration named as the listener: one virtual host (the target,
///   domains `*`) with the outbound route's route (15 s timeout, retries);
/// - `tcp` (everything else): a `TcpProxy`, the same `stat_prefix`.
///
/// It exists for every well-formed name, as the other sidecar listeners
/// do, whether or not the target resolves yet: until it does, its cluster
/// does not exist, and the sidecar answers HTTP with 503 and closes TCP
/// connections. Depends on the namespace.
fn outbound_tcp_listener(
    reg: &Registry,
    ns: &str,
    name: &str,
    port: u16,
    target: &str,
) -> (Option<Any>, Dependency) {
    let cluster = tcp_target_cluster(reg, ns, target);
    let stat_prefix = format!("outbound_tcp_{port}");
    let routes = route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![route::VirtualHost {
            name: target.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![outbound_route_entry(cluster.clone())],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = connection_manager(
        stat_prefix.clone(),
        hcm::http_connection_manager::RouteSpecifier::RouteConfig(routes),
    );
    let tcp = tcp_proxy::TcpProxy {
        stat_prefix,
        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(cluster)),
        ..Default::default()
    };
    let l = listener::Listener {
        name: name.to_string(),
        address: Some(socket_address("127.0.0.1", port)),
        listener_filters: vec![http_inspector()],
        // Envoy waits 15 s for the listener filters by default and then
        // closes the connection; a server-first protocol would never work.
        listener_filters_timeout: Some(Duration {
            seconds: 0,
            nanos: DETECT_TIMEOUT_MS * 1_000_000,
        }),
        continue_on_listener_filters_timeout: true,
        filter_chains: vec![
            http_chain(&manager),
            listener::FilterChain {
                name: "tcp".to_string(),
                filters: vec![listener::Filter {
                    name: TCP_PROXY.to_string(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(resources::any(
                        TCP_PROXY_TYPE,
                        &tcp,
                    ))),
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    (
        Some(resources::any(ResourceType::Listener.url(), &l)),
        Dependency::Namespace,
    )
}

/// `sidecar|outbound|<port>`: `127.0.0.1:<port>`, routes
/// `sidecar|outbound|<ns>`.
fn outbound_listener(name: &str, port: u16, ns: &str) -> Any {
    http_listener(
        name,
        "127.0.0.1",
        port,
        format!("outbound_{port}"),
        outbound_route_name(ns),
    )
}

/// `sidecar|inbound|<app>|<port>`: `0.0.0.0:<port>` (the proxy may bind
/// another address), routes `sidecar|inbound|<app>`.
fn inbound_listener(name: &str, app: &str, port: u16) -> Any {
    http_listener(
        name,
        "0.0.0.0",
        port,
        format!("inbound_{port}"),
        inbound_route_name(app),
    )
}

fn prefix_match(headers: Vec<route::HeaderMatcher>) -> Option<route::RouteMatch> {
    Some(route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(String::new())),
        headers,
        ..Default::default()
    })
}

/// Everything to `cluster`, 15 s per request, up to 2 retries of 5 s each
/// on connect failures, refused streams, resets and 5xx.
fn outbound_route_entry(cluster: String) -> route::Route {
    route::Route {
        r#match: prefix_match(Vec::new()),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(seconds(OUTBOUND_TIMEOUT_SECS)),
            retry_policy: Some(route::RetryPolicy {
                retry_on: RETRY_ON.to_string(),
                num_retries: Some(UInt32Value { value: NUM_RETRIES }),
                per_try_timeout: Some(seconds(PER_TRY_TIMEOUT_SECS)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `sidecar|outbound|<ns>`: one virtual host per target of the namespace
/// (application port, service), in [`resources::all_targets`] order.
///
/// Envoy rejects a RouteConfiguration in which two virtual hosts share a
/// domain, comparing them case-insensitively, so a domain already taken
/// by an earlier virtual host is left out of a later one, and a virtual
/// host left without domains is left out entirely.
fn outbound_route(reg: &Registry, ns: &str, name: &str) -> Any {
    let targets = resources::all_targets(reg, ns);
    let mut ports_per_app: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &targets {
        if let Target::App { app, .. } = t {
            *ports_per_app.entry(app).or_default() += 1;
        }
    }
    let mut taken: HashSet<String> = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for t in &targets {
        let (vhost, domains) = match t {
            Target::App { app, port } => {
                let mut domains = vec![format!("{app}.{ns}:{port}"), format!("{app}:{port}")];
                if ports_per_app.get(app.as_str()) == Some(&1) {
                    domains.push(format!("{app}.{ns}"));
                    domains.push(app.clone());
                }
                (domains[0].clone(), domains)
            }
            Target::Service { service } => (service.clone(), vec![service.clone()]),
        };
        let domains: Vec<String> = domains
            .into_iter()
            .filter(|d| taken.insert(d.to_ascii_lowercase()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        virtual_hosts.push(route::VirtualHost {
            name: vhost,
            domains,
            routes: vec![outbound_route_entry(t.cluster_name(ns))],
            ..Default::default()
        });
    }
    let r = route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..Default::default()
    };
    resources::any(ResourceType::Route.url(), &r)
}

/// To `cluster`, dropping [`PORT_HEADER`]; only requests whose
/// [`PORT_HEADER`] is `port` when given.
fn inbound_route_entry(port: Option<u16>, cluster: String) -> route::Route {
    let headers = port
        .map(|p| route::HeaderMatcher {
            name: PORT_HEADER.to_string(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                        p.to_string(),
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .into_iter()
        .collect();
    route::Route {
        r#match: prefix_match(headers),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
            ..Default::default()
        })),
        request_headers_to_remove: vec![PORT_HEADER.to_string()],
        ..Default::default()
    }
}

/// `sidecar|inbound|<app>`: one virtual host `inbound` for every domain;
/// a route per port of the application's instances selected by
/// [`PORT_HEADER`], ascending, then a default route to the lowest port.
/// No routes while the application has no instances.
fn inbound_route(reg: &Registry, ns: &str, name: &str, app: &str) -> Any {
    let ports = app_ports(reg, ns, app);
    let mut routes: Vec<route::Route> = ports
        .iter()
        .map(|p| inbound_route_entry(Some(*p), inbound_cluster_name(*p, app, ns)))
        .collect();
    if let Some(lowest) = ports.first() {
        routes.push(inbound_route_entry(
            None,
            inbound_cluster_name(*lowest, app, ns),
        ));
    }
    let r = route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![route::VirtualHost {
            name: "inbound".to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    resources::any(ResourceType::Route.url(), &r)
}

/// `inbound|<port>||<app>.<ns>`: STATIC, round robin, 1 s connect
/// timeout, one endpoint `127.0.0.1:<port>`.
fn inbound_cluster(name: &str, port: u16) -> Any {
    let c = cluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket_address("127.0.0.1", port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    resources::any(ResourceType::Cluster.url(), &c)
}

#[cfg(test)]
mod tests;
