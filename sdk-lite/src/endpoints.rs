//! [`EndpointSet`]: one complete, immutable snapshot of a target's
//! endpoints, and its conversion from an Envoy `ClusterLoadAssignment`
//! (the shape meshreg's xDS server builds, `docs/xds.md`).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::google::protobuf::value::Kind;
use serde::{Deserialize, Serialize};

/// Health of an endpoint, in meshreg's terms (mapped back from Envoy's
/// `HealthStatus` as `docs/xds.md` maps it forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Envoy `HEALTHY`.
    Serving,
    /// Envoy `DEGRADED`.
    Warning,
    /// Envoy `UNHEALTHY` (and `TIMEOUT`).
    NotServing,
    /// Envoy `DRAINING`.
    Draining,
    /// Envoy `UNKNOWN`.
    Unknown,
}

impl Health {
    /// Whether load balancers send traffic here outside panic mode:
    /// `SERVING`, `WARNING` and `UNKNOWN` (as Envoy treats `UNKNOWN` as
    /// healthy); not `NOT_SERVING` or `DRAINING`.
    pub fn is_usable(self) -> bool {
        matches!(self, Health::Serving | Health::Warning | Health::Unknown)
    }

    fn from_envoy(v: i32) -> Health {
        match core::HealthStatus::try_from(v) {
            Ok(core::HealthStatus::Healthy) => Health::Serving,
            Ok(core::HealthStatus::Degraded) => Health::Warning,
            Ok(core::HealthStatus::Unhealthy | core::HealthStatus::Timeout) => Health::NotServing,
            Ok(core::HealthStatus::Draining) => Health::Draining,
            _ => Health::Unknown,
        }
    }
}

/// Where an endpoint runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Locality {
    /// Region, empty when unknown.
    pub region: String,
    /// Zone, empty when unknown.
    pub zone: String,
    /// Sub-zone, empty when unknown.
    pub subzone: String,
}

/// One endpoint: an instance's address on the target's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP address or hostname.
    pub address: String,
    /// Port number.
    pub port: u16,
    /// Load-balancing weight, ≥ 1.
    pub weight: u32,
    /// Health.
    pub health: Health,
    /// The instance's labels (`filter_metadata["envoy.lb"]`; empty when absent).
    pub labels: BTreeMap<String, String>,
    /// Locality.
    pub locality: Locality,
    /// The instance id (the endpoint's `hostname`).
    pub instance_id: String,
}

impl Endpoint {
    /// `address:port` (`[address]:port` for IPv6), ready to dial.
    pub fn authority(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Where a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Nothing received yet, and no cache entry served.
    Pending,
    /// Received from a registry node.
    Registry,
    /// Read from the failover cache because no registry node answered.
    Cache,
}

/// A complete snapshot of a target's endpoints: every update replaces the
/// whole set, so readers never see half of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSet {
    /// The ClusterLoadAssignment name (`outbound|9090||pay.default`).
    pub name: String,
    /// The xDS resource version this set came from; empty for a resource
    /// that does not exist (no endpoints) or before anything arrived.
    pub version: String,
    /// Where this snapshot came from.
    pub origin: Origin,
    /// Endpoints, sorted by (locality, address, port) so equal content
    /// compares equal.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// An empty set.
    pub fn empty(name: &str, origin: Origin) -> EndpointSet {
        EndpointSet {
            name: name.to_string(),
            version: String::new(),
            origin,
            endpoints: Vec::new(),
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Converts a ClusterLoadAssignment. Fails (with a message meant for a
    /// NACK's `error_detail`) on an endpoint without a socket address or
    /// with a port outside 1..=65535.
    pub fn from_cla(
        cla: &ClusterLoadAssignment,
        version: &str,
        origin: Origin,
    ) -> Result<EndpointSet, String> {
        let mut endpoints = Vec::new();
        for group in &cla.endpoints {
            let locality = group
                .locality
                .as_ref()
                .map(|l| Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    subzone: l.sub_zone.clone(),
                })
                .unwrap_or_default();
            for lb in &group.lb_endpoints {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                    return Err(format!(
                        "{}: an endpoint without a socket address",
                        cla.cluster_name
                    ));
                };
                let sock = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                    Some(core::address::Address::SocketAddress(s)) => s,
                    _ => {
                        return Err(format!(
                            "{}: an endpoint without a socket address",
                            cla.cluster_name
                        ))
                    }
                };
                let port = match sock.port_specifier {
                    Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                        u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                            format!("{}: port {p} out of range 1..=65535", cla.cluster_name)
                        })?
                    }
                    _ => {
                        return Err(format!(
                            "{}: endpoint {} has no port number",
                            cla.cluster_name, sock.address
                        ))
                    }
                };
                let labels = lb
                    .metadata
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get("envoy.lb"))
                    .map(|s| {
                        s.fields
                            .iter()
                            .filter_map(|(k, v)| match &v.kind {
                                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                endpoints.push(Endpoint {
                    address: sock.address.clone(),
                    port,
                    weight: lb
                        .load_balancing_weight
                        .as_ref()
                        .map_or(1, |w| w.value.max(1)),
                    health: Health::from_envoy(lb.health_status),
                    labels,
                    locality: locality.clone(),
                    instance_id: ep.hostname.clone(),
                });
            }
        }
        endpoints.sort_by(|a, b| {
            (&a.locality, &a.address, a.port).cmp(&(&b.locality, &b.address, b.port))
        });
        Ok(EndpointSet {
            name: cla.cluster_name.clone(),
            version: version.to_string(),
            origin,
            endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3 as ep;
    use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value};
    use std::collections::HashMap;

    fn lb(addr: &str, port: u32, labels: Option<&[(&str, &str)]>, health: i32) -> ep::LbEndpoint {
        ep::LbEndpoint {
            health_status: health,
            metadata: labels.map(|l| core::Metadata {
                filter_metadata: HashMap::from([(
                    "envoy.lb".to_string(),
                    Struct {
                        fields: l
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    Value {
                                        kind: Some(Kind::StringValue(v.to_string())),
                                    },
                                )
                            })
                            .collect(),
                    },
                )]),
                ..Default::default()
            }),
            load_balancing_weight: Some(UInt32Value { value: 7 }),
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: addr.into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                hostname: format!("{addr}:{port}"),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn converts_labels_health_locality_and_rejects_bad_ports() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|9090||pay.default".into(),
            endpoints: vec![ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "r".into(),
                    zone: "z".into(),
                    sub_zone: "s".into(),
                }),
                lb_endpoints: vec![
                    lb("10.0.0.2", 9090, None, core::HealthStatus::Draining as i32),
                    lb(
                        "10.0.0.1",
                        9090,
                        Some(&[("v", "1")]),
                        core::HealthStatus::Healthy as i32,
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = EndpointSet::from_cla(&cla, "v1", Origin::Registry).unwrap();
        assert_eq!(set.len(), 2);
        let a = &set.endpoints[0];
        assert_eq!(a.authority(), "10.0.0.1:9090");
        assert_eq!(a.labels.get("v").map(String::as_str), Some("1"));
        assert_eq!(a.health, Health::Serving);
        assert_eq!(a.weight, 7);
        assert_eq!(a.locality.zone, "z");
        let b = &set.endpoints[1];
        assert!(b.labels.is_empty(), "metadata may be absent");
        assert_eq!(b.health, Health::Draining);
        assert!(!b.health.is_usable());

        let mut bad = cla.clone();
        bad.endpoints[0]
            .lb_endpoints
            .push(lb("10.0.0.3", 70000, None, 0));
        assert!(EndpointSet::from_cla(&bad, "v", Origin::Registry)
            .unwrap_err()
            .contains("70000"));
    }
}
