use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshreg_registry::command::Command;
use meshreg_registry::feed::FeedEvent;
use meshreg_registry::model::{InstanceSpec, ServiceDef};
use prost::Message;

use super::*;
use crate::cache::{Changes, ResourceCache};

const NS: &str = "default";

fn add(
    r: &mut Registry,
    app: &str,
    ip: &str,
    ports: &[(&str, u32)],
    metadata: &[(&str, &str)],
    services: &[&str],
) -> FeedEvent {
    let spec = InstanceSpec {
        namespace: NS.into(),
        app: app.into(),
        address: ip.into(),
        ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        services: services
            .iter()
            .map(|s| ServiceDef {
                name: s.to_string(),
                port_name: ports[0].0.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    r.apply(&Command::Register {
        entries: vec![validate::registration("i", spec).unwrap()],
    });
    r.feed()
        .since(r.revision() - 1)
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

/// `pay` has two ports (and the service `pay.Api`); `bill` and
/// `bill.default` one each, so their bare domains collide on
/// `bill.default`; the service `Bill` collides with the domain `bill`
/// except for case.
fn reg() -> Registry {
    let mut r = Registry::new(100);
    add(
        &mut r,
        "pay",
        "10.0.0.1",
        &[("grpc", 9090), ("http", 8080)],
        &[(SIDECAR_PORT_METADATA_KEY, "15006")],
        &["pay.Api"],
    );
    add(
        &mut r,
        "pay",
        "10.0.0.2",
        &[("grpc", 9090)],
        &[(SIDECAR_PORT_METADATA_KEY, "15006x")],
        &["pay.Api"],
    );
    add(&mut r, "bill", "10.0.1.1", &[("http", 7070)], &[], &[]);
    add(&mut r, "bill", "10.0.1.2", &[("http", 7070)], &[], &[]);
    add(
        &mut r,
        "bill.default",
        "10.0.2.1",
        &[("http", 7070)],
        &[],
        &[],
    );
    add(
        &mut r,
        "ledger",
        "10.0.3.1",
        &[("grpc", 6060)],
        &[],
        &["Bill"],
    );
    r
}

fn get(r: &Registry, ty: ResourceType, name: &str) -> (Option<Any>, Dependency) {
    resources::build(r, NS, ty, name)
}

fn listener(r: &Registry, name: &str) -> (Listener, Dependency) {
    let (any, dep) = get(r, ResourceType::Listener, name);
    let any = any.unwrap_or_else(|| panic!("{name} exists"));
    assert_eq!(any.type_url, ResourceType::Listener.url());
    (Listener::decode(any.value.as_slice()).unwrap(), dep)
}

fn route_config(r: &Registry, name: &str) -> (RouteConfiguration, Dependency) {
    let (any, dep) = get(r, ResourceType::Route, name);
    let any = any.unwrap_or_else(|| panic!("{name} exists"));
    (
        RouteConfiguration::decode(any.value.as_slice()).unwrap(),
        dep,
    )
}

fn socket(a: &Option<core::Address>) -> (String, u32) {
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(core::address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(core::socket_address::PortSpecifier::PortValue(p)) => (s.address.clone(), p),
            ref other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// The listener's one filter chain's HttpConnectionManager, after checking
/// the HTTP sniffing around it.
fn manager(l: &Listener) -> hcm::HttpConnectionManager {
    assert_eq!(l.listener_filters.len(), 1);
    let f = &l.listener_filters[0];
    assert_eq!(f.name, "envoy.filters.listener.http_inspector");
    match &f.config_type {
        Some(listener::listener_filter::ConfigType::TypedConfig(a)) => {
            assert_eq!(a.type_url, HTTP_INSPECTOR_TYPE);
            HttpInspector::decode(a.value.as_slice()).unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.filter_chains.len(), 1);
    http_chain(&l.filter_chains[0])
}

/// An `http` filter chain (selected by the HTTP sniffing's protocols)
/// holding only a router HttpConnectionManager, which it returns.
fn http_chain(chain: &listener::FilterChain) -> hcm::HttpConnectionManager {
    assert_eq!(chain.name, "http");
    assert_eq!(
        chain
            .filter_chain_match
            .as_ref()
            .unwrap()
            .application_protocols,
        ["http/1.0", "http/1.1", "h2c"]
    );
    assert_eq!(chain.filters.len(), 1);
    assert_eq!(
        chain.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    let Some(listener::filter::ConfigType::TypedConfig(a)) = &chain.filters[0].config_type else {
        panic!("no typed_config")
    };
    assert_eq!(a.type_url, resources::HCM_TYPE);
    let m = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    assert_eq!(
        m.codec_type,
        hcm::http_connection_manager::CodecType::Auto as i32
    );
    assert_eq!(m.http_filters.len(), 1);
    assert_eq!(m.http_filters[0].name, "envoy.filters.http.router");
    m
}

fn rds(m: &hcm::HttpConnectionManager) -> String {
    match &m.route_specifier {
        Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) => {
            assert!(matches!(
                rds.config_source.as_ref().unwrap().config_source_specifier,
                Some(core::config_source::ConfigSourceSpecifier::Ads(_))
            ));
            rds.route_config_name.clone()
        }
        other => panic!("{other:?}"),
    }
}

fn action(r: &route::Route) -> &route::RouteAction {
    match &r.action {
        Some(route::route::Action::Route(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn cluster_of(r: &route::Route) -> &str {
    match &action(r).cluster_specifier {
        Some(route::route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn names() {
    assert_eq!(outbound_listener_name(15001), "sidecar|outbound|15001");
    assert_eq!(
        inbound_listener_name("pay", 15006),
        "sidecar|inbound|pay|15006"
    );
    assert_eq!(outbound_route_name("default"), "sidecar|outbound|default");
    assert_eq!(inbound_route_name("pay"), "sidecar|inbound|pay");
    assert_eq!(
        inbound_cluster_name(9090, "pay", "default"),
        "inbound|9090||pay.default"
    );
    assert_eq!(
        outbound_tcp_listener_name(13306, "db.default:3306"),
        "sidecar|outbound-tcp|13306|db.default:3306"
    );
}

#[test]
fn outbound_listener_binds_loopback_and_routes_through_the_namespace() {
    let r = reg();
    let (l, dep) = listener(&r, &outbound_listener_name(DEFAULT_OUTBOUND_PORT));
    assert_eq!(dep, Dependency::Nothing);
    assert_eq!(l.name, "sidecar|outbound|15001");
    assert_eq!(socket(&l.address), ("127.0.0.1".to_string(), 15001));
    assert!(l.api_listener.is_none());
    let m = manager(&l);
    assert_eq!(m.stat_prefix, "outbound_15001");
    assert_eq!(rds(&m), "sidecar|outbound|default");
    // The route named is the stream's namespace's.
    let (any, _) = resources::build(&r, "team-b", ResourceType::Listener, &l.name);
    let other = Listener::decode(any.unwrap().value.as_slice()).unwrap();
    assert_eq!(rds(&manager(&other)), "sidecar|outbound|team-b");

    for bad in [
        "sidecar|outbound|0",
        "sidecar|outbound|65536",
        "sidecar|outbound|015001",
        "sidecar|outbound|+15001",
        "sidecar|outbound|default",
        "sidecar|outbound|",
        "sidecar|sideways|15001",
    ] {
        assert_eq!(
            get(&r, ResourceType::Listener, bad),
            (None, Dependency::Nothing),
            "{bad}"
        );
    }
}

#[test]
fn inbound_listener_binds_any_address_and_exists_before_its_app() {
    let r = reg();
    let (l, dep) = listener(&r, &inbound_listener_name("pay", DEFAULT_INBOUND_PORT));
    assert_eq!(dep, Dependency::Nothing);
    assert_eq!(socket(&l.address), ("0.0.0.0".to_string(), 15006));
    let m = manager(&l);
    assert_eq!(m.stat_prefix, "inbound_15006");
    assert_eq!(rds(&m), "sidecar|inbound|pay");
    // No instance of `ghost` yet: the listener exists all the same.
    let (l, _) = listener(&r, "sidecar|inbound|ghost|15006");
    assert_eq!(rds(&manager(&l)), "sidecar|inbound|ghost");

    for bad in [
        "sidecar|inbound|pay|0",
        "sidecar|inbound|pay|x",
        "sidecar|inbound|pay",
        "sidecar|inbound||15006",
        "sidecar|inbound|-pay|15006",
    ] {
        assert_eq!(
            get(&r, ResourceType::Listener, bad),
            (None, Dependency::Nothing),
            "{bad}"
        );
    }
}

#[test]
fn outbound_route_has_a_virtual_host_per_target_with_unique_domains() {
    let r = reg();
    let (rc, dep) = route_config(&r, "sidecar|outbound|default");
    assert_eq!(dep, Dependency::Namespace);
    assert_eq!(rc.name, "sidecar|outbound|default");
    let hosts: Vec<(&str, Vec<&str>, &str)> = rc
        .virtual_hosts
        .iter()
        .map(|v| {
            assert_eq!(v.routes.len(), 1);
            (
                v.name.as_str(),
                v.domains.iter().map(String::as_str).collect(),
                cluster_of(&v.routes[0]),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        vec![
            // One port: the bare names too.
            (
                "bill.default:7070",
                vec!["bill.default:7070", "bill:7070", "bill.default", "bill"],
                "outbound|7070||bill.default",
            ),
            // `bill.default:7070` and `bill.default` are bill's already.
            (
                "bill.default.default:7070",
                vec!["bill.default.default:7070", "bill.default.default"],
                "outbound|7070||bill.default.default",
            ),
            (
                "ledger.default:6060",
                vec![
                    "ledger.default:6060",
                    "ledger:6060",
                    "ledger.default",
                    "ledger"
                ],
                "outbound|6060||ledger.default",
            ),
            // Two port numbers: only the names with a port.
            (
                "pay.default:8080",
                vec!["pay.default:8080", "pay:8080"],
                "outbound|8080||pay.default",
            ),
            (
                "pay.default:9090",
                vec!["pay.default:9090", "pay:9090"],
                "outbound|9090||pay.default",
            ),
            // The service `Bill` is left out: Envoy compares domains
            // case-insensitively and `bill` is taken.
            ("pay.Api", vec!["pay.Api"], "service|pay.Api.default"),
        ]
    );
    let a = action(&rc.virtual_hosts[0].routes[0]);
    assert!(matches!(
        rc.virtual_hosts[0].routes[0].r#match.as_ref().unwrap().path_specifier,
        Some(route::route_match::PathSpecifier::Prefix(ref p)) if p.is_empty()
    ));
    assert_eq!(a.timeout, Some(seconds(15)));
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "connect-failure,refused-stream,reset,5xx");
    assert_eq!(retry.num_retries, Some(UInt32Value { value: 2 }));
    assert_eq!(retry.per_try_timeout, Some(seconds(5)));

    // Every cluster it names exists in the namespace.
    for (_, _, cluster) in &hosts {
        assert!(
            get(&r, ResourceType::Cluster, cluster).0.is_some(),
            "{cluster}"
        );
    }
    // Another namespace's route is not served on this namespace's stream;
    // an empty namespace's route exists, empty.
    assert_eq!(
        get(&r, ResourceType::Route, "sidecar|outbound|team-b"),
        (None, Dependency::Nothing)
    );
    let (any, _) = resources::build(&r, "team-b", ResourceType::Route, "sidecar|outbound|team-b");
    let empty = RouteConfiguration::decode(any.unwrap().value.as_slice()).unwrap();
    assert!(empty.virtual_hosts.is_empty());
}

#[test]
fn inbound_route_picks_the_port_from_the_header_then_defaults_to_the_lowest() {
    let r = reg();
    let (rc, dep) = route_config(&r, &inbound_route_name("pay"));
    assert_eq!(dep, Dependency::App("pay".into()));
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.name, "inbound");
    assert_eq!(vh.domains, ["*"]);
    let routes: Vec<(Vec<(String, String)>, &str)> = vh
        .routes
        .iter()
        .map(|rt| {
            assert_eq!(rt.request_headers_to_remove, [PORT_HEADER]);
            let m = rt.r#match.as_ref().unwrap();
            assert!(matches!(
                m.path_specifier,
                Some(route::route_match::PathSpecifier::Prefix(ref p)) if p.is_empty()
            ));
            let headers = m
                .headers
                .iter()
                .map(|h| match &h.header_match_specifier {
                    Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                        matcher::StringMatcher {
                            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v)),
                            ignore_case: false,
                        },
                    )) => (h.name.clone(), v.clone()),
                    other => panic!("{other:?}"),
                })
                .collect();
            (headers, cluster_of(rt))
        })
        .collect();
    let h = |p: &str| vec![("x-meshreg-port".to_string(), p.to_string())];
    assert_eq!(
        routes,
        vec![
            (h("8080"), "inbound|8080||pay.default"),
            (h("9090"), "inbound|9090||pay.default"),
            (vec![], "inbound|8080||pay.default"),
        ]
    );
    for (_, cluster) in &routes {
        assert!(get(&r, ResourceType::Cluster, cluster).0.is_some());
    }

    // An app without instances: the route exists with no routes.
    let (rc, dep) = route_config(&r, "sidecar|inbound|ghost");
    assert_eq!(dep, Dependency::App("ghost".into()));
    assert!(rc.virtual_hosts[0].routes.is_empty());
    assert_eq!(
        get(&r, ResourceType::Route, "sidecar|inbound|bad|name"),
        (None, Dependency::Nothing)
    );
}

#[test]
fn inbound_cluster_is_static_on_loopback() {
    let r = reg();
    let name = inbound_cluster_name(9090, "pay", NS);
    let (any, dep) = get(&r, ResourceType::Cluster, &name);
    assert_eq!(dep, Dependency::App("pay".into()));
    let c = Cluster::decode(any.unwrap().value.as_slice()).unwrap();
    assert_eq!(c.name, name);
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32
        ))
    );
    assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32);
    assert_eq!(c.connect_timeout, Some(seconds(1)));
    assert!(c.eds_cluster_config.is_none());
    let cla = c.load_assignment.unwrap();
    assert_eq!(cla.cluster_name, name);
    assert_eq!(cla.endpoints.len(), 1);
    let eps = &cla.endpoints[0].lb_endpoints;
    assert_eq!(eps.len(), 1);
    let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &eps[0].host_identifier else {
        panic!("no endpoint")
    };
    assert_eq!(socket(&ep.address), ("127.0.0.1".to_string(), 9090));

    // A port the app does not have: not yet (it depends on the app).
    assert_eq!(
        get(&r, ResourceType::Cluster, "inbound|1234||pay.default"),
        (None, Dependency::App("pay".into()))
    );
    for bad in [
        "inbound|9090||pay.team-b",
        "inbound|9090|v1|pay.default",
        "inbound|x||pay.default",
        "inbound|9090||pay",
        "inbound|9090||.default",
        "inbound|9090",
    ] {
        assert_eq!(
            get(&r, ResourceType::Cluster, bad),
            (None, Dependency::Nothing),
            "{bad}"
        );
    }
    // Inbound clusters are STATIC: there is no ClusterLoadAssignment.
    assert!(get(&r, ResourceType::Endpoint, &name).0.is_none());
}

#[test]
fn endpoints_carry_a_valid_sidecar_port_only() {
    let mut r = reg();
    // An instance with a sidecar port and no labels: only the meshreg key.
    add(
        &mut r,
        "bill",
        "10.0.1.3",
        &[("http", 7070)],
        &[(SIDECAR_PORT_METADATA_KEY, "15006")],
        &[],
    );
    for bad in ["0", "65536", "-1", " 15006", "15006.0"] {
        add(
            &mut r,
            "bill",
            "10.0.1.4",
            &[("http", 7070)],
            &[(SIDECAR_PORT_METADATA_KEY, bad)],
            &[],
        );
        let (any, _) = get(&r, ResourceType::Endpoint, "outbound|7070||bill.default");
        let cla = ClusterLoadAssignment::decode(any.unwrap().value.as_slice()).unwrap();
        let eps = &cla.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 4);
        let by_host = |h: &str| {
            eps.iter()
                .find(|e| {
                    matches!(&e.host_identifier,
                        Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep))
                            if socket(&ep.address).0 == h)
                })
                .unwrap()
        };
        let with = by_host("10.0.1.3");
        assert_eq!(endpoint_sidecar_port(with), Some(15006));
        let md = &with.metadata.as_ref().unwrap().filter_metadata;
        assert_eq!(md.len(), 1, "no empty envoy.lb entry: {md:?}");
        assert_eq!(
            md["meshreg"].fields["sidecar_port"].kind,
            Some(value::Kind::NumberValue(15006.0))
        );
        let without = by_host("10.0.1.4");
        assert_eq!(endpoint_sidecar_port(without), None, "{bad}");
        assert!(without.metadata.is_none(), "{bad}");
    }

    // With labels, next to envoy.lb; an invalid value leaves only envoy.lb.
    let mut r = Registry::new(10);
    for (ip, port) in [("10.0.0.1", "15006"), ("10.0.0.2", "abc")] {
        let spec = InstanceSpec {
            namespace: NS.into(),
            app: "pay".into(),
            address: ip.into(),
            ports: [("grpc".to_string(), 9090)].into_iter().collect(),
            labels: [("version".to_string(), "v1".to_string())]
                .into_iter()
                .collect(),
            metadata: [(SIDECAR_PORT_METADATA_KEY.to_string(), port.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        r.apply(&Command::Register {
            entries: vec![validate::registration("i", spec).unwrap()],
        });
    }
    let (any, _) = get(&r, ResourceType::Endpoint, "outbound|9090||pay.default");
    let cla = ClusterLoadAssignment::decode(any.unwrap().value.as_slice()).unwrap();
    let eps = &cla.endpoints[0].lb_endpoints;
    let keys = |e: &endpoint::LbEndpoint| {
        let mut k: Vec<String> = e
            .metadata
            .as_ref()
            .unwrap()
            .filter_metadata
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&eps[0]), ["envoy.lb", "meshreg"]);
    assert_eq!(endpoint_sidecar_port(&eps[0]), Some(15006));
    assert_eq!(keys(&eps[1]), ["envoy.lb"]);
    assert_eq!(endpoint_sidecar_port(&eps[1]), None);
}

/// Listeners survive registry changes in the shared cache; routes and
/// inbound clusters are rebuilt when what they depend on changes.
#[test]
fn cache_keeps_listeners_and_rebuilds_routes_on_change() {
    let mut r = reg();
    let mut c = ResourceCache::new(100);
    let names = [
        (ResourceType::Listener, outbound_listener_name(15001)),
        (ResourceType::Listener, inbound_listener_name("bill", 15006)),
        (ResourceType::Route, outbound_route_name(NS)),
        (ResourceType::Route, inbound_route_name("bill")),
        (ResourceType::Route, inbound_route_name("pay")),
        (
            ResourceType::Cluster,
            inbound_cluster_name(7071, "bill", NS),
        ),
    ];
    let before: Vec<_> = names.iter().map(|(ty, n)| c.get(&r, NS, *ty, n)).collect();
    assert!(before[5].is_none(), "bill has no port 7071 yet");
    let ev = add(&mut r, "bill", "10.0.1.9", &[("admin", 7071)], &[], &[]);
    let mut changes = Changes::default();
    changes.add(&ev);
    c.invalidate(&changes);
    let cached = |c: &ResourceCache, i: usize| c.peek(NS, names[i].0, &names[i].1).is_some();
    assert!(cached(&c, 0) && cached(&c, 1), "listeners stay");
    assert!(cached(&c, 4), "pay's inbound route stays");
    assert!(!cached(&c, 2) && !cached(&c, 3) && !cached(&c, 5));
    let after: Vec<_> = names.iter().map(|(ty, n)| c.get(&r, NS, *ty, n)).collect();
    assert_ne!(before[2], after[2], "a new virtual host");
    assert_ne!(before[3], after[3], "a new inbound route");
    assert!(after[5].is_some(), "the new port's inbound cluster");
}

/// An outbound TCP listener decoded: (HTTP chain's manager, inline route
/// configuration, TCP chain's proxy), after checking what is the same for
/// every target: address, sniffing with a timeout that falls through to
/// TCP, the chains' matches and filter names.
fn tcp_listener(
    r: &Registry,
    port: u16,
    target: &str,
) -> (
    hcm::HttpConnectionManager,
    route::RouteConfiguration,
    tcp_proxy::TcpProxy,
) {
    let name = outbound_tcp_listener_name(port, target);
    let (l, dep) = listener(r, &name);
    assert_eq!(dep, Dependency::Namespace, "{name}");
    assert_eq!(l.name, name);
    assert_eq!(
        socket(&l.address),
        ("127.0.0.1".to_string(), u32::from(port))
    );
    assert!(l.api_listener.is_none());
    assert_eq!(l.listener_filters.len(), 1);
    assert_eq!(
        l.listener_filters[0].name,
        "envoy.filters.listener.http_inspector"
    );
    assert_eq!(
        l.listener_filters_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
    assert!(l.continue_on_listener_filters_timeout);
    assert!(l.default_filter_chain.is_none());
    assert_eq!(l.filter_chains.len(), 2);
    let (http, tcp) = (&l.filter_chains[0], &l.filter_chains[1]);
    let m = http_chain(http);
    assert_eq!(m.stat_prefix, format!("outbound_tcp_{port}"));
    let rc = match &m.route_specifier {
        Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => rc.clone(),
        other => panic!("an inline route configuration, not {other:?}"),
    };
    assert_eq!(rc.name, name);
    // Everything else: no match criteria, so it takes what the HTTP chain
    // does not.
    assert_eq!(tcp.name, "tcp");
    assert!(tcp
        .filter_chain_match
        .as_ref()
        .is_none_or(|m| *m == listener::FilterChainMatch::default()));
    assert_eq!(tcp.filters.len(), 1);
    assert_eq!(tcp.filters[0].name, "envoy.filters.network.tcp_proxy");
    let Some(listener::filter::ConfigType::TypedConfig(a)) = &tcp.filters[0].config_type else {
        panic!("no typed_config")
    };
    assert_eq!(a.type_url, TCP_PROXY_TYPE);
    let t = tcp_proxy::TcpProxy::decode(a.value.as_slice()).unwrap();
    assert_eq!(t.stat_prefix, format!("outbound_tcp_{port}"));
    (m, rc, t)
}

fn tcp_cluster(t: &tcp_proxy::TcpProxy) -> &str {
    match &t.cluster_specifier {
        Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn outbound_tcp_listener_sends_http_and_tcp_to_the_targets_cluster() {
    let r = reg();
    for (target, cluster) in [
        ("pay.default:9090", "outbound|9090||pay.default"),
        ("pay:8080", "outbound|8080||pay.default"),
        ("ledger.default:6060", "outbound|6060||ledger.default"),
        // A service (interface) name: the ServiceMapping's cluster, each
        // endpoint on the port its service definition names.
        ("pay.Api", "service|pay.Api.default"),
        // `Bill` is no application: the service, whatever the port says.
        ("Bill:6060", "service|Bill.default"),
    ] {
        let (_, rc, t) = tcp_listener(&r, 13306, target);
        assert_eq!(tcp_cluster(&t), cluster, "{target}");
        // HTTP on the port routes to the same cluster with the outbound
        // route's timeout and retries, whatever the Host header.
        assert_eq!(rc.virtual_hosts.len(), 1);
        let vh = &rc.virtual_hosts[0];
        assert_eq!(
            (vh.name.as_str(), vh.domains.as_slice()),
            (target, &["*".to_string()][..])
        );
        assert_eq!(vh.routes, [outbound_route_entry(cluster.to_string())]);
        let a = action(&vh.routes[0]);
        assert_eq!(a.timeout, Some(seconds(15)));
        assert_eq!(
            a.retry_policy.as_ref().unwrap().retry_on,
            "connect-failure,refused-stream,reset,5xx"
        );
        // The cluster it names is the ordinary EDS cluster, which exists.
        assert!(
            get(&r, ResourceType::Cluster, cluster).0.is_some(),
            "{cluster}"
        );
    }
}

#[test]
fn outbound_tcp_listener_for_an_unknown_target_names_the_cluster_it_will_have() {
    let mut r = reg();
    for (target, cluster) in [
        ("db.default:3306", "outbound|3306||db.default"),
        ("db:3306", "outbound|3306||db.default"),
        // Another namespace's application is not reachable from this one:
        // read as an application named `db.team-b` here, as gRPC targets are.
        ("db.team-b:3306", "outbound|3306||db.team-b.default"),
        ("store.Api", "service|store.Api.default"),
        ("store.Api:0", "service|store.Api:0.default"),
        // Service names may contain ':'.
        (
            "com.acme.Store:1.0.0",
            "service|com.acme.Store:1.0.0.default",
        ),
    ] {
        let (_, rc, t) = tcp_listener(&r, 13306, target);
        assert_eq!(tcp_cluster(&t), cluster, "{target}");
        assert_eq!(cluster_of(&rc.virtual_hosts[0].routes[0]), cluster);
        // It does not exist: the sidecar closes TCP connections and
        // answers HTTP with 503 (NC) until it does.
        assert_eq!(get(&r, ResourceType::Cluster, cluster).0, None, "{cluster}");
    }
    // Once `db` registers port 3306, the listener is the same and its
    // cluster exists.
    let name = outbound_tcp_listener_name(13306, "db.default:3306");
    let before = get(&r, ResourceType::Listener, &name).0;
    add(&mut r, "db", "10.0.4.1", &[("tcp", 3306)], &[], &[]);
    assert_eq!(get(&r, ResourceType::Listener, &name).0, before);
    assert!(get(&r, ResourceType::Cluster, "outbound|3306||db.default")
        .0
        .is_some());
}

#[test]
fn malformed_outbound_tcp_listener_names_never_resolve() {
    let r = reg();
    let long = format!("{}:3306", "d".repeat(MAX_TCP_TARGET_LEN - 5));
    assert!(valid_tcp_target(&long));
    assert!(get(
        &r,
        ResourceType::Listener,
        &outbound_tcp_listener_name(1, &long)
    )
    .0
    .is_some());
    let too_long = format!("d{long}");
    for bad in [
        "sidecar|outbound-tcp|13306".to_string(),
        "sidecar|outbound-tcp|13306|".to_string(),
        "sidecar|outbound-tcp||db:3306".to_string(),
        "sidecar|outbound-tcp|0|db:3306".to_string(),
        "sidecar|outbound-tcp|65536|db:3306".to_string(),
        "sidecar|outbound-tcp|013306|db:3306".to_string(),
        "sidecar|outbound-tcp|x|db:3306".to_string(),
        "sidecar|outbound-tcp|13306|db|3306".to_string(),
        "sidecar|outbound-tcp|13306|db 3306".to_string(),
        "sidecar|outbound-tcp|13306|db\u{e9}:3306".to_string(),
        format!("sidecar|outbound-tcp|13306|{too_long}"),
        "sidecar|outbound_tcp|13306|db:3306".to_string(),
    ] {
        assert_eq!(
            get(&r, ResourceType::Listener, &bad),
            (None, Dependency::Nothing),
            "{bad}"
        );
    }
}

/// The listener follows its target through the shared cache: rebuilt on a
/// change in the namespace, with a new version only when it changed.
#[test]
fn cache_rebuilds_outbound_tcp_listeners_when_their_target_changes_kind() {
    let mut r = reg();
    let mut c = ResourceCache::new(100);
    let name = outbound_tcp_listener_name(17000, "late:7000");
    let first = c.get(&r, NS, ResourceType::Listener, &name).unwrap();
    // An unrelated change: rebuilt, same bytes.
    let ev = add(&mut r, "bill", "10.0.1.7", &[("http", 7070)], &[], &[]);
    let mut changes = Changes::default();
    changes.add(&ev);
    c.invalidate(&changes);
    assert!(c.peek(NS, ResourceType::Listener, &name).is_none());
    let same = c.get(&r, NS, ResourceType::Listener, &name).unwrap();
    assert_eq!(same.version, first.version);
    // `late` turns out to be a service (no application has that name).
    let ev = add(
        &mut r,
        "ledger",
        "10.0.3.2",
        &[("grpc", 7000)],
        &[],
        &["late"],
    );
    let mut changes = Changes::default();
    changes.add(&ev);
    c.invalidate(&changes);
    let now = c.get(&r, NS, ResourceType::Listener, &name).unwrap();
    assert_ne!(now.version, first.version);
    let l = Listener::decode(now.any.value.as_slice()).unwrap();
    let Some(listener::filter::ConfigType::TypedConfig(a)) =
        &l.filter_chains[1].filters[0].config_type
    else {
        panic!("no typed_config")
    };
    let t = tcp_proxy::TcpProxy::decode(a.value.as_slice()).unwrap();
    assert_eq!(tcp_cluster(&t), "service|late.default");
}
