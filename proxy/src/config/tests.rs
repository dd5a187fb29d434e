use super::*;
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value};

pub(crate) fn any<M: Message>(url: &str, m: &M) -> Any {
    Any {
        type_url: url.to_string(),
        value: m.encode_to_vec(),
    }
}

pub(crate) fn forward_route(prefix: &str, cluster: &str) -> route::Route {
    route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                cluster.into(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn vhost(name: &str, domains: &[&str], routes: Vec<route::Route>) -> route::VirtualHost {
    route::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

#[test]
fn virtual_hosts_follow_envoys_domain_order() {
    let rc = route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![
            vhost(
                "exact",
                &["pay.default:8080", "pay"],
                vec![forward_route("", "a")],
            ),
            vhost("suffix", &["*.example.com"], vec![forward_route("", "b")]),
            vhost(
                "longer-suffix",
                &["*.api.example.com"],
                vec![forward_route("", "c")],
            ),
            vhost("prefix", &["shop.*"], vec![forward_route("", "d")]),
            vhost("any", &["*"], vec![forward_route("", "e")]),
        ],
        ..Default::default()
    };
    let t = compile_routes(&rc).unwrap();
    let name = |h: &str| t.vhost(h).map(|v| v.name.clone()).unwrap();
    assert_eq!(name("pay.default:8080"), "exact");
    assert_eq!(name("PAY"), "exact");
    assert_eq!(
        name("pay:9999"),
        "exact",
        "port stripped when the full host matches nothing"
    );
    assert_eq!(name("x.example.com"), "suffix");
    assert_eq!(name("v1.api.example.com"), "longer-suffix");
    assert_eq!(name("shop.eu"), "prefix");
    assert_eq!(name("other"), "any");
}

#[test]
fn routes_match_paths_and_headers() {
    let mut by_header = forward_route("/", "canary");
    by_header.r#match.as_mut().unwrap().headers = vec![route::HeaderMatcher {
        name: "x-canary".into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("1".into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    let exact = route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Path("/health".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::DirectResponse(
            route::DirectResponseAction {
                status: 204,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let re = route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(
                matcher::RegexMatcher {
                    regex: "/v[0-9]+/users/.*".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..forward_route("", "users")
    };
    let rc = route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost(
            "v",
            &["*"],
            vec![exact, by_header, re, forward_route("/", "main")],
        )],
        ..Default::default()
    };
    let t = compile_routes(&rc).unwrap();
    let vh = t.vhost("x").unwrap();
    let pick = |path: &str, hdr: Option<(&str, &str)>| {
        let mut h = http::HeaderMap::new();
        if let Some((k, v)) = hdr {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let r = vh
            .routes
            .iter()
            .find(|r| r.matches(&http::Method::GET, path, "x", &h))
            .unwrap();
        match &r.action {
            Action::Forward(f) => f.clusters[0].0.clone(),
            Action::Direct { status, .. } => status.to_string(),
        }
    };
    assert_eq!(pick("/health", None), "204");
    assert_eq!(
        pick("/health?x=1", None),
        "204",
        "exact path ignores the query"
    );
    assert_eq!(pick("/a", Some(("x-canary", "1"))), "canary");
    assert_eq!(pick("/v2/users/7", None), "users");
    assert_eq!(
        pick("/v2/users", None),
        "main",
        "regex matches the whole path"
    );
    assert_eq!(pick("/a", Some(("x-canary", "2"))), "main");
}

#[test]
fn bad_routes_are_rejected_with_the_field() {
    let mut bad = forward_route("", "x");
    bad.r#match.as_mut().unwrap().path_specifier = Some(
        route::route_match::PathSpecifier::SafeRegex(matcher::RegexMatcher {
            regex: "(".into(),
            ..Default::default()
        }),
    );
    let rc = route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![bad])],
        ..Default::default()
    };
    let err = compile_routes(&rc).unwrap_err();
    assert!(
        err.contains("virtual_hosts[0].routes[0]") && err.contains("invalid regex"),
        "{err}"
    );

    let mut no_cluster = forward_route("", "");
    no_cluster.action = Some(route::route::Action::Route(route::RouteAction::default()));
    let rc = route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![no_cluster])],
        ..Default::default()
    };
    assert!(compile_routes(&rc).unwrap_err().contains("cluster"));
}

#[test]
fn retry_policy_and_timeout_defaults() {
    let mut r = forward_route("", "c");
    if let Some(route::route::Action::Route(a)) = r.action.as_mut() {
        a.retry_policy = Some(route::RetryPolicy {
            retry_on: "connect-failure,reset,5xx,retriable-status-codes".into(),
            num_retries: Some(UInt32Value { value: 3 }),
            retriable_status_codes: vec![409],
            ..Default::default()
        });
    }
    let rc = route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![r])],
        ..Default::default()
    };
    let t = compile_routes(&rc).unwrap();
    let Action::Forward(f) = &t.vhosts[0].routes[0].action else {
        panic!()
    };
    let p = f.retry.as_ref().unwrap();
    assert!(p.on_connect_failure && p.on_reset && p.on_5xx && !p.on_gateway_error);
    assert_eq!((p.num_retries, p.status_codes.clone()), (3, vec![409]));
    assert_eq!(
        f.timeout,
        Some(Duration::from_secs(15)),
        "Envoy's default route timeout"
    );
}

fn socket(ip: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

#[test]
fn listeners_need_an_address_and_a_filter() {
    let hcm = hcm::HttpConnectionManager {
        stat_prefix: "out".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: "routes".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let l = listener::Listener {
        name: "l".into(),
        address: Some(socket("127.0.0.1", 15001)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "hcm".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(
                    HCM_TYPE, &hcm,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = compile_listener(&l).unwrap();
    assert_eq!(c.addr.to_string(), "127.0.0.1:15001");
    assert_eq!(c.http.unwrap().route_name, "routes");

    let mut no_port = l.clone();
    no_port.address = Some(socket("127.0.0.1", 0));
    assert!(compile_listener(&no_port)
        .unwrap_err()
        .contains("port_value"));
    let mut no_filter = l.clone();
    no_filter.filter_chains.clear();
    assert!(compile_listener(&no_filter)
        .unwrap_err()
        .contains("no http_connection_manager"));
}

/// A listener as meshreg generates for an outbound TCP port: an HTTP chain
/// (inline routes) for what sniffs as HTTP, a TcpProxy chain for the rest.
#[test]
fn listeners_with_http_and_tcp_chains_detect_the_protocol() {
    let routes = route::RouteConfiguration {
        name: "sidecar|outbound-tcp|13306|db:3306".into(),
        virtual_hosts: vec![vhost(
            "db:3306",
            &["*"],
            vec![forward_route("", "outbound|3306||db.default")],
        )],
        ..Default::default()
    };
    let m = hcm::HttpConnectionManager {
        stat_prefix: "outbound_tcp_13306".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            routes,
        )),
        ..Default::default()
    };
    let tcp = |cluster: &str| tcp_proxy::TcpProxy {
        stat_prefix: "outbound_tcp_13306".into(),
        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.into(),
        )),
        ..Default::default()
    };
    let chain = |name: &str, url: &str, value: Vec<u8>| listener::FilterChain {
        name: name.into(),
        filters: vec![listener::Filter {
            name: name.into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
                type_url: url.into(),
                value,
            })),
        }],
        ..Default::default()
    };
    let mut l = listener::Listener {
        name: "sidecar|outbound-tcp|13306|db:3306".into(),
        address: Some(socket("127.0.0.1", 13306)),
        filter_chains: vec![
            chain("http", HCM_TYPE, m.encode_to_vec()),
            chain(
                "tcp",
                TCP_PROXY_TYPE,
                tcp("outbound|3306||db.default").encode_to_vec(),
            ),
        ],
        ..Default::default()
    };
    let c = compile_listener(&l).unwrap();
    assert_eq!(c.tcp_cluster.as_deref(), Some("outbound|3306||db.default"));
    let http = c.http.unwrap();
    assert_eq!(http.route_name, "sidecar|outbound-tcp|13306|db:3306#inline");
    let table = http.inline_routes.unwrap().table;
    let Action::Forward(f) = &table.vhost("127.0.0.1:13306").unwrap().routes[0].action else {
        panic!("a forward action")
    };
    assert_eq!(f.clusters, [("outbound|3306||db.default".to_string(), 1)]);

    // Detection: 100 ms then TCP by default; the Listener's
    // listener_filters_timeout (0: no limit) and
    // continue_on_listener_filters_timeout when set.
    assert_eq!(c.detect_timeout, Some(DEFAULT_DETECT_TIMEOUT));
    assert!(c.detect_continue);
    let pb_dur =
        |seconds: i64, nanos: i32| envoy_types::pb::google::protobuf::Duration { seconds, nanos };
    l.listener_filters_timeout = Some(pb_dur(0, 250_000_000));
    l.continue_on_listener_filters_timeout = true;
    let c = compile_listener(&l).unwrap();
    assert_eq!(c.detect_timeout, Some(Duration::from_millis(250)));
    assert!(c.detect_continue);
    l.listener_filters_timeout = Some(pb_dur(0, 0));
    l.continue_on_listener_filters_timeout = false;
    let c = compile_listener(&l).unwrap();
    assert_eq!(c.detect_timeout, None);
    assert!(!c.detect_continue);
    l.listener_filters_timeout = Some(pb_dur(-1, 0));
    let err = compile_listener(&l).unwrap_err();
    assert!(
        err.contains("listener_filters_timeout must not be negative"),
        "{err}"
    );
    l.listener_filters_timeout = None;

    // A TcpProxy without a cluster is rejected, naming where it is.
    l.filter_chains[1] = chain("tcp", TCP_PROXY_TYPE, tcp("").encode_to_vec());
    let err = compile_listener(&l).unwrap_err();
    assert!(
        err.contains("filter_chains[1].filters[0]: tcp_proxy.cluster is required"),
        "{err}"
    );
}

#[test]
fn assignments_carry_health_weight_labels_and_sidecar_port() {
    let ep = |ip: &str, port: u32, health: core::HealthStatus, sidecar: Option<f64>| {
        endpoint::LbEndpoint {
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: 3 }),
            metadata: Some(core::Metadata {
                filter_metadata: [(
                    "envoy.lb".to_string(),
                    Struct {
                        fields: [(
                            "version".to_string(),
                            Value {
                                kind: Some(Kind::StringValue("v2".into())),
                            },
                        )]
                        .into(),
                    },
                )]
                .into_iter()
                .chain(sidecar.map(|p| {
                    (
                        MESHREG_METADATA.to_string(),
                        Struct {
                            fields: [(
                                SIDECAR_PORT_KEY.to_string(),
                                Value {
                                    kind: Some(Kind::NumberValue(p)),
                                },
                            )]
                            .into(),
                        },
                    )
                }))
                .collect(),
                ..Default::default()
            }),
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(socket(ip, port)),
                    ..Default::default()
                },
            )),
        }
    };
    let cla = endpoint::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r".into(),
                zone: "z".into(),
                sub_zone: String::new(),
            }),
            lb_endpoints: vec![
                ep("10.0.0.1", 8080, core::HealthStatus::Healthy, None),
                ep(
                    "10.0.0.2",
                    8080,
                    core::HealthStatus::Unhealthy,
                    Some(15006.0),
                ),
                ep("fd00::7", 3306, core::HealthStatus::Healthy, Some(15006.0)),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hosts = compile_assignment(&cla).unwrap();
    assert_eq!(hosts[0].authority, "10.0.0.1:8080");
    assert_eq!(
        (hosts[0].app_port, hosts[0].healthy, hosts[0].weight),
        (None, true, 3)
    );
    assert_eq!(
        hosts[0].labels,
        vec![("version".to_string(), "v2".to_string())]
    );
    assert_eq!(
        hosts[1].authority, "10.0.0.2:15006",
        "dials the endpoint's sidecar"
    );
    assert_eq!((hosts[1].app_port, hosts[1].healthy), (Some(8080), false));
    // Raw TCP cannot name the application port to the sidecar: it dials
    // the application.
    assert_eq!(hosts[0].app_authority(), "10.0.0.1:8080");
    assert_eq!(hosts[1].app_authority(), "10.0.0.2:8080");
    assert_eq!(hosts[2].authority, "[fd00::7]:15006");
    assert_eq!(hosts[2].app_authority(), "[fd00::7]:3306");
    assert_eq!(
        hosts[1].locality,
        ("r".to_string(), "z".to_string(), String::new())
    );
}

#[test]
fn clusters_compile_policies_and_thresholds() {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as L};
    let c = cluster::Cluster {
        name: "outbound|8080||pay.default".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        lb_policy: L::LeastRequest as i32,
        outlier_detection: Some(cluster::OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 2 }),
            max_ejection_percent: Some(UInt32Value { value: 50 }),
            ..Default::default()
        }),
        circuit_breakers: Some(cluster::CircuitBreakers {
            thresholds: vec![cluster::circuit_breakers::Thresholds {
                max_requests: Some(UInt32Value { value: 7 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let cfg = compile_cluster(&c).unwrap();
    assert_eq!(cfg.eds_name.as_deref(), Some("outbound|8080||pay.default"));
    assert_eq!(cfg.lb, LbPolicy::LeastRequest);
    assert_eq!(cfg.limits.max_requests, 7);
    assert_eq!(cfg.limits.max_connections, 1024);
    let od = cfg.outlier.unwrap();
    assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (2, 50));

    let mut st = c.clone();
    st.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    assert!(compile_cluster(&st)
        .unwrap_err()
        .contains("load_assignment is required"));
}
