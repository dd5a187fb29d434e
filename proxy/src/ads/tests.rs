use super::*;
use crate::config::tests::{any, forward_route, vhost};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::Resource;

fn listener_res(name: &str, port: u32, routes: &str) -> Resource {
    let m = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: routes.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let l = listener::Listener {
        name: name.into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "hcm".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(
                    crate::config::HCM_TYPE,
                    &m,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(any(Kind::Listener.url(), &l)),
        ..Default::default()
    }
}

fn resp(
    kind: Kind,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: kind.url().into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn routes_res(name: &str, clusters: &[&str]) -> Resource {
    let rc = route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: clusters
            .iter()
            .map(|c| vhost(c, &[c], vec![forward_route("", c)]))
            .collect(),
        ..Default::default()
    };
    Resource {
        name: name.into(),
        version: format!("r{}", clusters.len()),
        resource: Some(any(Kind::Route.url(), &rc)),
        ..Default::default()
    }
}

fn cluster_res(name: &str) -> Resource {
    let c = cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        ..Default::default()
    };
    Resource {
        name: name.into(),
        version: "c1".into(),
        resource: Some(any(Kind::Cluster.url(), &c)),
        ..Default::default()
    }
}

#[test]
fn follows_references_from_listeners_to_endpoints() {
    let mut s = AdsState::new(
        Node {
            id: "n".into(),
            ..Default::default()
        },
        &["out".to_string()],
    );
    let first = s.on_connect();
    assert_eq!(first.len(), 1);
    assert!(first[0].node.is_some());
    assert_eq!(first[0].resource_names_subscribe, vec!["out"]);
    assert!(!s.is_warm());

    let h = s.on_response(&resp(
        Kind::Listener,
        "1",
        vec![listener_res("out", 15001, "routes")],
        &[],
    ));
    assert!(h.changed && h.nack.is_none());
    assert_eq!(h.requests[0].response_nonce, "1", "ACK first");
    assert_eq!(h.requests[1].type_url, Kind::Route.url());
    assert_eq!(h.requests[1].resource_names_subscribe, vec!["routes"]);

    let h = s.on_response(&resp(
        Kind::Route,
        "2",
        vec![routes_res("routes", &["a", "b"])],
        &[],
    ));
    assert_eq!(h.requests[1].type_url, Kind::Cluster.url());
    assert_eq!(h.requests[1].resource_names_subscribe, vec!["a", "b"]);

    let h = s.on_response(&resp(Kind::Cluster, "3", vec![cluster_res("a")], &["b"]));
    assert_eq!(h.requests[1].type_url, Kind::Endpoint.url());
    assert_eq!(h.requests[1].resource_names_subscribe, vec!["a"]);
    assert!(!s.is_warm(), "EDS for a not answered yet");
    s.on_response(&resp(Kind::Endpoint, "4", vec![], &["a"]));
    assert!(s.is_warm());

    // The route drops cluster b: it is unsubscribed.
    let h = s.on_response(&resp(
        Kind::Route,
        "5",
        vec![routes_res("routes", &["a"])],
        &[],
    ));
    assert_eq!(h.requests[1].resource_names_unsubscribe, vec!["b"]);

    // Reconnect: every kind resubscribed with the versions held.
    let again = s.on_connect();
    let kinds: Vec<&str> = again.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            Kind::Listener.url(),
            Kind::Route.url(),
            Kind::Cluster.url(),
            Kind::Endpoint.url()
        ]
    );
    assert_eq!(
        again[0]
            .initial_resource_versions
            .get("out")
            .map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        again[2]
            .initial_resource_versions
            .get("a")
            .map(String::as_str),
        Some("c1")
    );
}

#[test]
fn a_bad_resource_nacks_the_whole_response_and_keeps_the_last_good() {
    let mut s = AdsState::new(Node::default(), &["out".to_string(), "in".to_string()]);
    s.on_connect();
    s.on_response(&resp(
        Kind::Listener,
        "1",
        vec![listener_res("out", 15001, "r")],
        &[],
    ));
    let mut bad = listener_res("in", 0, "r");
    bad.version = "v2".into();
    let good = listener_res("out", 15002, "r");
    let h = s.on_response(&resp(Kind::Listener, "2", vec![good, bad], &[]));
    let msg = h.nack.unwrap();
    assert!(msg.contains("port_value"), "{msg}");
    assert_eq!(h.requests.len(), 1);
    assert_eq!(h.requests[0].error_detail.as_ref().unwrap().code, 3);
    assert_eq!(
        s.res.listeners["out"].value.addr.port(),
        15001,
        "nothing in a NACKed response applied"
    );
    assert_eq!(s.nacks[Kind::Listener as usize], 1);

    let h = s.on_response(&DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/x.Y".into(),
        nonce: "3".into(),
        ..Default::default()
    });
    assert!(h.nack.is_some() && h.requests[0].error_detail.is_some());
}
