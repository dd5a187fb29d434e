//! MCP-over-xDS source: the registry view as Istio ServiceEntries, the way
//! istiod (1.9+, `configSources: - address: xds://<meshreg>:7071`) and other
//! MCP sinks consume them. docs/mcp.md has the mapping, its reasons and the
//! comparison with Nacos.
//!
//! The ADS type URL is [`SERVICE_ENTRY_TYPE`]; each resource of a
//! DiscoveryResponse is an `Any` of `istio.mcp.v1alpha1.Resource` whose
//! `metadata.name` is `<namespace>/<name>` and whose `body` is an `Any` of
//! `istio.networking.v1alpha3.ServiceEntry`. One ServiceEntry per
//! application:
//!
//! | ServiceEntry field | from |
//! |---|---|
//! | `hosts` | `[<app>.<ns>.svc.meshreg]`, each part a DNS-1123 label ([`dns_label`]) |
//! | `ports` | every distinct (port name, number) of the app's instances, protocol from the ServiceDefs |
//! | `location` / `resolution` | `MESH_INTERNAL` / `STATIC` (`DNS` if an endpoint address is a hostname) |
//! | `endpoints` | one WorkloadEntry per SERVING or WARNING instance |
//!
//! Everything here is a plain function of the registry state: the same state
//! gives the same bytes and the same `metadata.version` on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::{Any, Timestamp};
use meshreg_proto::istio::mcp::v1alpha1::{Metadata, Resource, RESOURCE_TYPE_URL};
use meshreg_proto::istio::networking::v1alpha3::service_entry::{Location, Resolution};
use meshreg_proto::istio::networking::v1alpha3::{
    ServiceEntry, ServicePort, WorkloadEntry, SERVICE_ENTRY_TYPE_URL,
};
use meshreg_registry::model::{Health, Instance, Locality};
use meshreg_registry::selector::Selector;
use meshreg_registry::state::Registry;
use prost::Message;

/// The ADS type URL istiod subscribes to for ServiceEntries over
/// MCP-over-xDS (Istio's collection name, not a `type.googleapis.com` URL).
pub const SERVICE_ENTRY_TYPE: &str = "networking.istio.io/v1alpha3/ServiceEntry";

/// The MeshConfig collection istiod also asks an MCP source for; meshreg
/// does not serve it (the ADS server ignores or answers it empty).
pub const MESH_CONFIG_TYPE: &str = "core/v1alpha1/MeshConfig";

/// Suffix of every ServiceEntry host: `<app>.<ns>.svc.meshreg`. Distinct
/// from Kubernetes' `svc.cluster.local`, so a meshreg host never silently
/// decorates a Kubernetes Service of the same name.
pub const DOMAIN_SUFFIX: &str = "svc.meshreg";

/// `metadata.labels` on every resource: `registryType=meshreg`, as Nacos
/// sets `registryType=nacos`, so tooling can tell the sources apart.
pub const REGISTRY_TYPE_LABEL: (&str, &str) = ("registryType", "meshreg");

/// Annotation with the application name as registered (before [`dns_label`]).
pub const APP_ANNOTATION: &str = "meshreg.io/app";
/// Annotation with the namespace as registered (before [`dns_label`]).
pub const NAMESPACE_ANNOTATION: &str = "meshreg.io/namespace";
/// Annotation listing the services (interfaces) the application's instances
/// expose, sorted, comma-separated; absent when there are none.
pub const SERVICES_ANNOTATION: &str = "meshreg.io/services";

/// Longest DNS label (RFC 1123): 63 bytes.
const MAX_LABEL: usize = 63;
/// Longest Istio port name: `WorkloadEntry.ports` keys must be under 63 bytes.
const MAX_PORT_NAME: usize = 62;

/// Every ServiceEntry of namespace `ns`, one per application that has at
/// least one instance (healthy or not), as `(metadata.name, Any of
/// istio.mcp.v1alpha1.Resource)`, sorted by name. This is the full set a
/// state-of-the-world response for [`SERVICE_ENTRY_TYPE`] carries for `ns`.
pub fn build_all(reg: &Registry, ns: &str) -> Vec<(String, Any)> {
    build_all_with(reg, ns, Export::All)
}

/// Which instances an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Every instance (for istiod and other MCP sinks).
    All,
    /// Only instances registered natively, not imported from a source: what
    /// another meshreg's sink gets, so that two meshregs importing from
    /// each other never send each other's records back (loop guard).
    NativeOnly,
}

impl Export {
    fn keeps(self, i: &Instance) -> bool {
        self == Export::All || i.provenance.is_none()
    }
}

/// [`build_all`] with an export filter.
pub fn build_all_with(reg: &Registry, ns: &str, export: Export) -> Vec<(String, Any)> {
    let all: Vec<Arc<Instance>> = reg
        .list(ns, &Selector::default())
        .into_iter()
        .filter(|i| export.keeps(i))
        .collect();
    let mut out: Vec<(String, Any)> = all
        .chunk_by(|a, b| a.app == b.app)
        .map(|group| {
            let app = &group[0].app;
            (resource_name(ns, app), build_app(reg, ns, app, group))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The ServiceEntry named `name` in namespace `ns`, for named (delta or
/// non-wildcard) subscriptions. `name` is a resource name as [`build_all`]
/// returns it (`<ns label>/<app label>`), or just its `<app label>` part.
/// `None` when no application of `ns` has that name or it has no instances.
pub fn build_one(reg: &Registry, ns: &str, name: &str) -> Option<Any> {
    build_one_with(reg, ns, name, Export::All)
}

/// [`build_one`] with an export filter.
pub fn build_one_with(reg: &Registry, ns: &str, name: &str, export: Export) -> Option<Any> {
    let base = match name.split_once('/') {
        Some((prefix, base)) if prefix == dns_label(ns, MAX_LABEL) => base,
        Some(_) => return None,
        None => name,
    };
    let app = app_for_label(reg, ns, base)?;
    let instances: Vec<Arc<Instance>> = reg
        .list(
            ns,
            &Selector {
                app: Some(app.clone()),
                ..Default::default()
            },
        )
        .into_iter()
        .filter(|i| export.keeps(i))
        .collect();
    (!instances.is_empty()).then(|| build_app(reg, ns, &app, &instances))
}

/// `metadata.version` of a resource built here (an `Any` of
/// `istio.mcp.v1alpha1.Resource`); `None` if it is not one.
pub fn version_of_resource(any: &Any) -> Option<String> {
    if any.type_url != RESOURCE_TYPE_URL {
        return None;
    }
    Resource::decode(any.value.as_slice())
        .ok()?
        .metadata
        .map(|m| m.version)
}

/// The MCP resource name of application `app` of namespace `ns`:
/// `<dns_label(ns)>/<dns_label(app)>`.
pub fn resource_name(ns: &str, app: &str) -> String {
    format!("{}/{}", dns_label(ns, MAX_LABEL), dns_label(app, MAX_LABEL))
}

/// The ServiceEntry host of application `app` of namespace `ns`:
/// `<dns_label(app)>.<dns_label(ns)>.svc.meshreg` (at most 139 bytes).
pub fn host(ns: &str, app: &str) -> String {
    format!(
        "{}.{}.{DOMAIN_SUFFIX}",
        dns_label(app, MAX_LABEL),
        dns_label(ns, MAX_LABEL)
    )
}

/// `name` as a DNS-1123 label of at most `max` bytes (`[a-z0-9-]`, starting
/// and ending with a letter or digit). A name that already is one is
/// returned unchanged. Any other name is lower-cased, every run of other
/// characters (`.`, `_`, ...) becomes one `-`, it is cut to fit, and
/// `-<8 hex digits>` of a hash of the original name is appended, so two
/// names that differ only in what was replaced (`Pay`/`pay`, `a.b`/`a-b`)
/// still get different labels. The hash is FNV-1a, the same on every node.
pub fn dns_label(name: &str, max: usize) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    if out == name && out.len() <= max && !out.ends_with('-') {
        return out;
    }
    let hash = format!("{:08x}", fnv1a(name.as_bytes()) as u32);
    // room for "-" + 8 hex digits
    out.truncate(max.saturating_sub(hash.len() + 1));
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        hash
    } else {
        format!("{out}-{hash}")
    }
}

/// Finds the application of `ns` whose label is `label`.
fn app_for_label(reg: &Registry, ns: &str, label: &str) -> Option<String> {
    // Fast path: most application names are labels already.
    if dns_label(label, MAX_LABEL) == label
        && !reg
            .select(
                ns,
                &Selector {
                    app: Some(label.to_string()),
                    ..Default::default()
                },
            )
            .is_empty()
    {
        return Some(label.to_string());
    }
    reg.applications(ns)
        .into_iter()
        .map(|a| a.name)
        .find(|a| dns_label(a, MAX_LABEL) == label)
}

/// Health states whose instances become endpoints. Istio's WorkloadEntry
/// has no health field: an endpoint that is listed gets traffic.
fn takes_traffic(h: Health) -> bool {
    matches!(h, Health::Serving | Health::Warning)
}

/// One service port of the entry.
struct Port {
    /// Istio port name (unique within the entry).
    name: String,
    /// Service port number (unique within the entry).
    number: u16,
    /// The meshreg port name it stands for.
    meshreg_name: String,
    /// Istio protocol.
    protocol: &'static str,
}

/// Builds the `Any` of `istio.mcp.v1alpha1.Resource` for one application;
/// `instances` are all of its instances, sorted by id.
fn build_app(reg: &Registry, ns: &str, app: &str, instances: &[Arc<Instance>]) -> Any {
    let (protocols, services) = protocols_and_services(reg, instances);
    let ports = service_ports(instances, &protocols);

    let endpoints: Vec<WorkloadEntry> = instances
        .iter()
        .filter(|i| takes_traffic(i.health))
        .map(|i| workload_entry(i, &ports))
        .collect();
    // STATIC needs IP endpoints; a hostname endpoint makes Istio reject the
    // entry, so such an app is resolved with DNS instead.
    let resolution = if endpoints
        .iter()
        .all(|e| e.address.parse::<IpAddr>().is_ok())
    {
        Resolution::Static
    } else {
        Resolution::Dns
    };
    let entry = ServiceEntry {
        hosts: vec![host(ns, app)],
        ports: ports
            .iter()
            .map(|p| ServicePort {
                number: u32::from(p.number),
                protocol: p.protocol.to_string(),
                name: p.name.clone(),
                target_port: 0,
            })
            .collect(),
        location: Location::MeshInternal as i32,
        resolution: resolution as i32,
        endpoints,
        ..Default::default()
    };

    let mut annotations = BTreeMap::from([
        (APP_ANNOTATION.to_string(), app.to_string()),
        (NAMESPACE_ANNOTATION.to_string(), ns.to_string()),
    ]);
    if !services.is_empty() {
        let list: Vec<&str> = services.iter().map(String::as_str).collect();
        annotations.insert(SERVICES_ANNOTATION.to_string(), list.join(","));
    }
    let mut resource = Resource {
        metadata: Some(Metadata {
            name: resource_name(ns, app),
            // The registry keeps no wall-clock time per application, and
            // anything derived from its instances moves when they come and
            // go; a constant keeps create_time stable across pushes, nodes
            // and restarts (docs/mcp.md).
            create_time: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            version: String::new(),
            labels: BTreeMap::from([(
                REGISTRY_TYPE_LABEL.0.to_string(),
                REGISTRY_TYPE_LABEL.1.to_string(),
            )]),
            annotations,
        }),
        body: Some(Any {
            type_url: SERVICE_ENTRY_TYPE_URL.to_string(),
            value: entry.encode_to_vec(),
        }),
    };
    // The version is a hash of the resource with an empty version: every
    // map is a BTreeMap, so the bytes, and the hash, depend on the content
    // only.
    let version = format!("{:016x}", fnv1a(&resource.encode_to_vec()));
    if let Some(m) = resource.metadata.as_mut() {
        m.version = version;
    }
    Any {
        type_url: RESOURCE_TYPE_URL.to_string(),
        value: resource.encode_to_vec(),
    }
}

/// From the service revisions of `instances`: the Istio protocol of each
/// meshreg port name (when the ServiceDefs say), and every service name.
fn protocols_and_services(
    reg: &Registry,
    instances: &[Arc<Instance>],
) -> (BTreeMap<String, &'static str>, BTreeSet<String>) {
    let mut seen: BTreeSet<(&str, Option<&str>)> = BTreeSet::new();
    let mut found: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut services = BTreeSet::new();
    for i in instances {
        // A ServiceDef with an empty port name means the instance's only
        // port, so the key includes that port when there is exactly one.
        let only_port = (i.ports.len() == 1)
            .then(|| i.ports.keys().next().map(String::as_str))
            .flatten();
        if !seen.insert((i.revision.as_str(), only_port)) {
            continue;
        }
        for s in reg.services_of_instance(i).iter() {
            services.insert(s.name.clone());
            let port = if s.port_name.is_empty() {
                match only_port {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                s.port_name.as_str()
            };
            if let Some(p) = istio_protocol(&s.protocol) {
                found.entry(port.to_string()).or_default().insert(p);
            }
        }
    }
    let protocols = found
        .into_iter()
        .map(|(port, set)| {
            // Services that disagree on a port's protocol: TCP carries any.
            let p = match set.len() {
                1 => set.into_iter().next().unwrap_or("TCP"),
                _ => "TCP",
            };
            (port, p)
        })
        .collect();
    (protocols, services)
}

/// The Istio protocol of a ServiceDef protocol; `None` when it is empty.
fn istio_protocol(p: &str) -> Option<&'static str> {
    Some(match p.trim().to_ascii_lowercase().as_str() {
        "" => return None,
        "grpc" | "triple" | "tri" => "GRPC",
        "grpc-web" => "GRPC-WEB",
        "http" | "http1" | "http/1.1" | "rest" => "HTTP",
        "http2" | "h2" | "h2c" => "HTTP2",
        "https" => "HTTPS",
        "tls" => "TLS",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        "mysql" => "MYSQL",
        _ => "TCP",
    })
}

/// The service ports: one per distinct (port name, number) among all of
/// the app's instances, healthy or not (so a health flap does not change
/// the ports), except that a number already taken by an earlier name is
/// not repeated (Istio requires unique numbers). The first number of a
/// name (lowest) keeps the name; later ones are `<name>-<number>`.
fn service_ports(
    instances: &[Arc<Instance>],
    protocols: &BTreeMap<String, &'static str>,
) -> Vec<Port> {
    let pairs: BTreeSet<(&str, u16)> = instances
        .iter()
        .flat_map(|i| i.ports.iter().map(|(n, p)| (n.as_str(), *p)))
        .collect();
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (name, number) in pairs {
        if !numbers.insert(number) {
            continue;
        }
        let label = dns_label(name, MAX_PORT_NAME);
        let candidates = [
            label.clone(),
            format!("{}-{number}", dns_label(name, MAX_PORT_NAME - 6)),
            format!("port-{number}"),
        ];
        let istio_name = candidates
            .into_iter()
            .find(|c| !names.contains(c))
            // `port-<number>` with a number not used yet is only taken if a
            // meshreg port is literally named so; fall back to a hash of both.
            .unwrap_or_else(|| dns_label(&format!("{name}:{number}"), MAX_PORT_NAME));
        names.insert(istio_name.clone());
        out.push(Port {
            name: istio_name,
            number,
            meshreg_name: name.to_string(),
            protocol: protocols.get(name).copied().unwrap_or("TCP"),
        });
    }
    out
}

/// One endpoint. Its `ports` map each service port to the instance's own
/// number for that port name, so instances that serve `http` on different
/// numbers are all reached through every `http` service port; failing that,
/// to the service port number when the instance has it under another name.
fn workload_entry(i: &Instance, ports: &[Port]) -> WorkloadEntry {
    let mut map = BTreeMap::new();
    for p in ports {
        if let Some(n) = i.ports.get(&p.meshreg_name) {
            map.insert(p.name.clone(), u32::from(*n));
        } else if i.ports.values().any(|n| *n == p.number) {
            map.insert(p.name.clone(), u32::from(p.number));
        }
    }
    WorkloadEntry {
        address: i.address.clone(),
        ports: map,
        labels: i.labels.clone(),
        locality: locality(&i.locality),
        // meshreg weights are 1..=1_000_000, which a u32 holds exactly.
        weight: i.weight.max(1),
        ..Default::default()
    }
}

/// `region/zone/subzone`, without trailing empty parts; empty when unset.
fn locality(l: &Locality) -> String {
    let mut parts = [l.region.as_str(), l.zone.as_str(), l.subzone.as_str()].to_vec();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts.join("/")
}

/// 64-bit FNV-1a: a hash that is the same on every node and release.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
