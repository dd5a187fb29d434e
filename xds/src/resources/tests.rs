use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use meshreg_registry::command::Command;
use meshreg_registry::model::{validate, InstanceSpec, Locality, ServiceDef};
use prost::Message;

use super::*;

fn reg() -> Registry {
    let mut r = Registry::new(100);
    let mut entries = Vec::new();
    for (i, (zone, weight, health)) in [
        ("z1", 10, Health::Serving),
        ("z1", 30, Health::Warning),
        ("z2", 5, Health::Draining),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = InstanceSpec {
            namespace: "default".into(),
            app: "pay".into(),
            address: format!("10.0.0.{i}"),
            ports: [("grpc".to_string(), 9090)].into_iter().collect(),
            labels: [("version".to_string(), format!("v{i}"))]
                .into_iter()
                .collect(),
            weight,
            health: Some(health),
            locality: Locality {
                region: "r".into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            services: vec![ServiceDef {
                name: "pay.Api".into(),
                port_name: "grpc".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        entries.push(validate::registration("i", spec).unwrap());
    }
    r.apply(&Command::Register { entries });
    r
}

#[test]
fn listener_names_resolve_apps_and_services() {
    let r = reg();
    let app = Target::App {
        app: "pay".into(),
        port: 9090,
    };
    assert_eq!(
        listener_target(&r, "default", "pay.default:9090"),
        Some(app.clone())
    );
    assert_eq!(
        listener_target(&r, "default", "pay:9090"),
        Some(app.clone())
    );
    assert_eq!(listener_target(&r, "default", "pay:1234"), None);
    assert_eq!(listener_target(&r, "other", "pay.default:9090"), None);
    assert_eq!(
        listener_target(&r, "default", "pay.Api"),
        Some(Target::Service {
            service: "pay.Api".into()
        })
    );
    assert_eq!(
        cluster_target(&r, "default", &app.cluster_name("default")),
        Some(app)
    );
    assert_eq!(
        cluster_target(&r, "default", "outbound|1||pay.default"),
        None
    );
    assert_eq!(cluster_target(&r, "default", "garbage"), None);
    assert_eq!(
        all_names(&r, "default", ResourceType::Cluster),
        vec!["outbound|9090||pay.default", "service|pay.Api.default"]
    );
}

#[test]
fn load_assignment_has_localities_weights_health_and_labels() {
    let r = reg();
    let (any, dep) = build(
        &r,
        "default",
        ResourceType::Endpoint,
        "outbound|9090||pay.default",
    );
    assert_eq!(dep, Dependency::App("pay".into()));
    let cla = ClusterLoadAssignment::decode(any.unwrap().value.as_slice()).unwrap();
    assert_eq!(cla.endpoints.len(), 2);
    let z1 = &cla.endpoints[0];
    assert_eq!(z1.locality.as_ref().unwrap().zone, "z1");
    assert_eq!(z1.load_balancing_weight.as_ref().unwrap().value, 40);
    assert_eq!(z1.lb_endpoints.len(), 2);
    assert_eq!(
        z1.lb_endpoints[1].health_status,
        core::HealthStatus::Degraded as i32
    );
    assert_eq!(
        z1.lb_endpoints[1]
            .load_balancing_weight
            .as_ref()
            .unwrap()
            .value,
        30
    );
    let md = &z1.lb_endpoints[0]
        .metadata
        .as_ref()
        .unwrap()
        .filter_metadata["envoy.lb"];
    assert!(
        matches!(md.fields["version"].kind, Some(value::Kind::StringValue(ref v)) if v == "v0")
    );
    assert_eq!(
        cla.endpoints[1].lb_endpoints[0].health_status,
        core::HealthStatus::Draining as i32
    );
    // The service cluster uses the port its ServiceDef names.
    let (any, dep) = build(
        &r,
        "default",
        ResourceType::Endpoint,
        "service|pay.Api.default",
    );
    assert_eq!(dep, Dependency::Service("pay.Api".into()));
    let cla = ClusterLoadAssignment::decode(any.unwrap().value.as_slice()).unwrap();
    assert_eq!(
        cla.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>(),
        3
    );
}

#[test]
fn listener_is_a_grpc_api_listener_with_rds() {
    let l = Listener::decode(listener("pay.default:9090").value.as_slice()).unwrap();
    assert_eq!(l.name, "pay.default:9090");
    let api = l.api_listener.unwrap().api_listener.unwrap();
    let m = hcm::HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    match m.route_specifier.unwrap() {
        hcm::http_connection_manager::RouteSpecifier::Rds(rds) => {
            assert_eq!(rds.route_config_name, "pay.default:9090")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.http_filters[0].name, "envoy.filters.http.router");
}

#[test]
fn versions_follow_content() {
    let r = reg();
    let a = build(
        &r,
        "default",
        ResourceType::Endpoint,
        "outbound|9090||pay.default",
    )
    .0
    .unwrap();
    let b = build(
        &r,
        "default",
        ResourceType::Endpoint,
        "outbound|9090||pay.default",
    )
    .0
    .unwrap();
    assert_eq!(version_of(&a.value), version_of(&b.value));
    assert_ne!(version_of(&a.value), version_of(b"other"));
}

/// An instance without labels carries no endpoint metadata: an empty
/// `envoy.lb` Struct makes gRPC's Node xDS client reject the whole EDS.
#[test]
fn unlabelled_endpoints_have_no_metadata() {
    let mut r = Registry::new(10);
    let spec = InstanceSpec {
        namespace: "default".into(),
        app: "bare".into(),
        address: "10.1.1.1".into(),
        ports: [("grpc".to_string(), 9090)].into_iter().collect(),
        ..Default::default()
    };
    r.apply(&Command::Register {
        entries: vec![validate::registration("i", spec).unwrap()],
    });
    let (any, _) = build(
        &r,
        "default",
        ResourceType::Endpoint,
        "outbound|9090||bare.default",
    );
    let cla = ClusterLoadAssignment::decode(any.unwrap().value.as_slice()).unwrap();
    assert!(cla.endpoints[0].lb_endpoints[0].metadata.is_none());
}

/// Every EDS cluster carries the sidecar defaults, with success-rate
/// ejection explicitly off so that proxyless gRPC (which turns it on by
/// default when `outlier_detection` is present, gRFC A50) behaves as before.
#[test]
fn clusters_have_outlier_detection_and_circuit_breakers() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    let r = reg();
    for name in ["outbound|9090||pay.default", "service|pay.Api.default"] {
        let (any, _) = build(&r, "default", ResourceType::Cluster, name);
        let c = Cluster::decode(any.unwrap().value.as_slice()).unwrap();
        assert_eq!(c.name, name);
        assert_eq!(c.eds_cluster_config.unwrap().service_name, name);
        let od = c.outlier_detection.expect("outlier_detection");
        let u = |v: u32| Some(UInt32Value { value: v });
        assert_eq!(od.consecutive_5xx, u(5));
        assert_eq!(od.consecutive_gateway_failure, u(5));
        assert_eq!(od.interval, Some(seconds(1)));
        assert_eq!(od.base_ejection_time, Some(seconds(10)));
        assert_eq!(od.max_ejection_percent, u(50));
        assert_eq!(od.enforcing_success_rate, u(0));
        assert_eq!(od.enforcing_failure_percentage, None);
        let cb = c.circuit_breakers.expect("circuit_breakers");
        assert_eq!(cb.thresholds.len(), 1);
        let t = &cb.thresholds[0];
        assert_eq!(t.priority, core::RoutingPriority::Default as i32);
        assert_eq!(t.max_connections, u(1024));
        assert_eq!(t.max_pending_requests, u(1024));
        assert_eq!(t.max_requests, u(1024));
        assert_eq!(t.max_retries, u(1024));
    }
}

/// Names of the sidecar's kinds resolve only for their own types: an
/// inbound cluster name is not a ClusterLoadAssignment, and a `sidecar|`
/// name is neither a cluster nor an endpoint.
#[test]
fn sidecar_names_only_for_their_types() {
    let r = reg();
    for (ty, name) in [
        (ResourceType::Endpoint, "inbound|9090||pay.default"),
        (ResourceType::Endpoint, "sidecar|outbound|default"),
        (ResourceType::Cluster, "sidecar|outbound|default"),
        (ResourceType::Listener, "inbound|9090||pay.default"),
    ] {
        assert!(build(&r, "default", ty, name).0.is_none(), "{ty:?} {name}");
    }
    // The proxyless names are unaffected.
    assert!(build(&r, "default", ResourceType::Listener, "pay:9090")
        .0
        .is_some());
}
