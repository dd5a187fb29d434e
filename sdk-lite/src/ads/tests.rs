use super::*;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::Any;

const PAY: &str = "outbound|9090||pay.default";

fn cla_any(name: &str, n: usize) -> Any {
    use envoy_types::pb::envoy::config::core::v3 as core;
    let cla = ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: (0..n)
                .map(|i| ep::LbEndpoint {
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: Some(core::Address {
                                address: Some(core::address::Address::SocketAddress(
                                    core::SocketAddress {
                                        address: format!("10.0.0.{i}"),
                                        port_specifier: Some(
                                            core::socket_address::PortSpecifier::PortValue(9090),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Any {
        type_url: EDS_TYPE.into(),
        value: cla.encode_to_vec(),
    }
}

fn resp(
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: EDS_TYPE.into(),
        nonce: nonce.into(),
        resources: resources
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn acks_applies_and_resends_versions_on_reconnect() {
    let mut st = DeltaState::new(Node {
        id: "t".into(),
        ..Default::default()
    });
    let sub = st.subscribe(PAY).expect("new subscription");
    assert_eq!(sub.resource_names_subscribe, vec![PAY]);
    assert!(
        st.subscribe(PAY).is_none(),
        "subscribing twice sends nothing"
    );
    st.subscribe("service|ghost.default");

    let first = st.on_connect();
    assert!(first.node.is_some());
    assert_eq!(first.resource_names_subscribe.len(), 2);
    assert!(first.initial_resource_versions.is_empty());

    let h = st.on_response(&resp(
        "n1",
        vec![(PAY, "v1", cla_any(PAY, 2))],
        &["service|ghost.default"],
    ));
    assert!(h.nack.is_none());
    assert_eq!(h.reply.response_nonce, "n1");
    assert!(h.reply.error_detail.is_none());
    assert_eq!(h.updates.len(), 2);
    assert_eq!(h.updates[0].len(), 2);
    assert_eq!(h.updates[0].origin, Origin::Registry);
    assert!(
        h.updates[1].is_empty(),
        "a removed resource is an empty set"
    );

    let again = st.on_connect();
    assert_eq!(again.initial_resource_versions.len(), 1);
    assert_eq!(again.initial_resource_versions[PAY], "v1");
}

#[test]
fn nacks_bad_responses_without_applying_anything() {
    let mut st = DeltaState::new(Node::default());
    st.subscribe(PAY);
    st.on_response(&resp("n1", vec![(PAY, "v1", cla_any(PAY, 1))], &[]));

    // One good and one undecodable resource: NACK the whole response.
    let mut bad = resp("n2", vec![(PAY, "v2", cla_any(PAY, 3))], &[]);
    st.subscribe("outbound|1||x.default");
    bad.resources.push(Resource {
        name: "outbound|1||x.default".into(),
        version: "v9".into(),
        resource: Some(Any {
            type_url: EDS_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    });
    let h = st.on_response(&bad);
    assert!(h.updates.is_empty());
    assert_eq!(h.reply.response_nonce, "n2");
    let err = h.reply.error_detail.expect("a NACK");
    assert!(
        err.message.contains("outbound|1||x.default"),
        "{}",
        err.message
    );
    assert_eq!(
        st.on_connect().initial_resource_versions[PAY],
        "v1",
        "version kept"
    );

    // A mismatched cluster_name and a wrong type are NACKed too.
    let h = st.on_response(&resp("n3", vec![(PAY, "v3", cla_any("other", 1))], &[]));
    assert!(h.nack.is_some());
    let mut wrong = resp("n4", vec![], &[]);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    assert!(st.on_response(&wrong).nack.is_some());

    // Resources for names not subscribed (an unsubscribe race) are skipped.
    st.unsubscribe("outbound|1||x.default")
        .expect("was subscribed");
    let h = st.on_response(&resp(
        "n5",
        vec![(
            "outbound|1||x.default",
            "v",
            cla_any("outbound|1||x.default", 1),
        )],
        &[],
    ));
    assert!(h.nack.is_none() && h.updates.is_empty());
}
