//! Domain model: namespaces, applications, instances, service revisions and
//! the service → application mapping (DESIGN.md, "Data model").
//!
//! Protobuf types stop at the API edge (`api::convert`); everything inside
//! the registry works on these types. They are serialized with serde into
//! the Raft log (postcard) and over HTTP (JSON), so no field uses
//! `skip_serializing_if` or other self-describing-only serde features.

pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Name of the namespace that always exists.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Default load-balancing weight of an instance registered without one.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Health of an instance (DESIGN.md). Maps onto Envoy's `HealthStatus`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Health not reported.
    Unknown,
    /// Takes traffic.
    #[default]
    Serving,
    /// Takes traffic but reports a problem.
    Warning,
    /// Must not take traffic.
    NotServing,
    /// Finishing in-flight work before it stops; takes no new traffic.
    Draining,
}

impl Health {
    /// Every state, in index order (`as usize`).
    pub const ALL: [Health; 5] = [
        Health::Unknown,
        Health::Serving,
        Health::Warning,
        Health::NotServing,
        Health::Draining,
    ];

    /// Position of this state in [`Health::ALL`].
    pub fn ordinal(self) -> usize {
        self as usize
    }

    /// Canonical upper-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "UNKNOWN",
            Health::Serving => "SERVING",
            Health::Warning => "WARNING",
            Health::NotServing => "NOT_SERVING",
            Health::Draining => "DRAINING",
        }
    }
}

impl std::str::FromStr for Health {
    type Err = String;

    /// Parses a state name, case-insensitively, with or without `HEALTH_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase();
        let up = up.strip_prefix("HEALTH_").unwrap_or(&up);
        Health::ALL
            .into_iter()
            .find(|h| h.as_str() == up)
            .ok_or_else(|| {
                format!("unknown health state {s:?}; expected one of SERVING, WARNING, NOT_SERVING, DRAINING, UNKNOWN")
            })
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance runs, as Envoy's `core.v3.Locality`. Empty strings mean "not set".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locality {
    /// Region, e.g. `cn-guangzhou`.
    pub region: String,
    /// Zone within the region, e.g. `gz01`.
    pub zone: String,
    /// Sub-zone (rack, cell) within the zone.
    pub subzone: String,
}

/// One service (interface) that a service revision exposes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceDef {
    /// Interface or service name, e.g. `org.apache.dubbo.demo.DemoService`.
    pub name: String,
    /// Wire protocol: `grpc`, `http`, `dubbo`, `tcp`, ...
    pub protocol: String,
    /// Name of the instance port serving it; empty means the instance's only port.
    pub port_name: String,
    /// Free-form parameters.
    pub params: BTreeMap<String, String>,
}

/// Where an imported record came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Provenance {
    /// Name of the source (a configured registry).
    pub source: String,
    /// The record's key in that source (a ZooKeeper path, a Nacos instance id).
    pub source_key: String,
    /// The source's own version of the record when it was observed.
    pub observed_revision: String,
    /// When it was observed, Unix time in milliseconds.
    pub observed_at_ms: i64,
}

/// Identity of an instance: (namespace, application, id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    /// Namespace.
    pub namespace: String,
    /// Application name.
    pub app: String,
    /// Instance id within the application.
    pub id: String,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.app, self.id)
    }
}

/// One process of an application, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Namespace.
    pub namespace: String,
    /// Application name.
    pub app: String,
    /// Stable id within the application.
    pub id: String,
    /// IPv4, IPv6 or DNS hostname.
    pub address: String,
    /// Named ports (name → 1..=65535), at least one.
    pub ports: BTreeMap<String, u16>,
    /// Indexed labels (Kubernetes label syntax).
    pub labels: BTreeMap<String, String>,
    /// Opaque metadata, at most [`validate::MAX_METADATA_BYTES`] in total.
    pub metadata: BTreeMap<String, String>,
    /// Load-balancing weight, 1..=[`validate::MAX_WEIGHT`].
    pub weight: u32,
    /// Health state.
    pub health: Health,
    /// Locality.
    pub locality: Locality,
    /// Service revision this instance advertises.
    pub revision: String,
    /// Session (lease) for ephemeral instances; `None` for persistent ones.
    pub session: Option<u64>,
    /// Where the record came from, for imported records.
    pub provenance: Option<Provenance>,
    /// Registry revision that created the instance.
    pub create_revision: u64,
    /// Registry revision that last changed the instance.
    pub mod_revision: u64,
}

impl Instance {
    /// This instance's identity.
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            id: self.id.clone(),
        }
    }

    /// True when `other` differs only in the registry-maintained revisions.
    pub fn same_content(&self, other: &Instance) -> bool {
        self.address == other.address
            && self.ports == other.ports
            && self.labels == other.labels
            && self.metadata == other.metadata
            && self.weight == other.weight
            && self.health == other.health
            && self.locality == other.locality
            && self.revision == other.revision
            && self.session == other.session
            && self.provenance == other.provenance
    }
}

/// What a client sends to register an instance: an [`Instance`] before
/// validation and defaults, plus the services of its revision.
///
/// JSON shape (HTTP): `{"app": "pay", "address": "10.0.0.1", "ports": {"http": 8080},
/// "labels": {...}, "services": [{"name": "pay.Api", "protocol": "grpc"}], ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceSpec {
    /// Namespace; HTTP takes it from the path when empty.
    pub namespace: String,
    /// Application name (required).
    pub app: String,
    /// Stable id; defaults to `address:port` of the first port (by name).
    pub id: String,
    /// IPv4, IPv6 or DNS hostname (required).
    pub address: String,
    /// Named ports, each 1..=65535 (at least one).
    pub ports: BTreeMap<String, u32>,
    /// Indexed labels.
    pub labels: BTreeMap<String, String>,
    /// Opaque metadata.
    pub metadata: BTreeMap<String, String>,
    /// Weight; 0 means [`DEFAULT_WEIGHT`].
    pub weight: u32,
    /// Health; `None` means SERVING. Case-insensitive in JSON.
    #[serde(deserialize_with = "health_any_case")]
    pub health: Option<Health>,
    /// Locality.
    pub locality: Locality,
    /// Service revision; computed from `services` when empty.
    pub revision: String,
    /// Services exposed by `revision`.
    pub services: Vec<ServiceDef>,
    /// Session to bind to (ephemeral); `None` or 0 for a persistent instance.
    pub session: Option<u64>,
    /// Provenance, for records imported from another registry.
    pub provenance: Option<Provenance>,
}

/// Reads an optional health state by name, in any case (JSON input only;
/// the Raft log uses the derived encoding of [`Health`]).
fn health_any_case<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Health>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// A validated registration, as it travels in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The instance, with defaults applied; revisions are set on apply.
    pub instance: Instance,
    /// The services of `instance.revision`.
    pub services: Vec<ServiceDef>,
}

/// A namespace: tenant isolation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// The services that one revision of an application exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRevision {
    /// Namespace.
    pub namespace: String,
    /// Application.
    pub app: String,
    /// Revision id.
    pub revision: String,
    /// Services, sorted by name.
    pub services: Arc<[ServiceDef]>,
}

/// Summary of an application, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Number of instances.
    pub instance_count: u64,
    /// Service revisions its instances advertise.
    pub revisions: Vec<String>,
    /// Services those revisions expose.
    pub services: Vec<String>,
}

/// Computes the revision id of a set of services: 16 hex digits of a
/// 64-bit FNV-1a hash over their canonical form, so every node, and every
/// client that registers the same services, computes the same id.
pub fn compute_revision(services: &[ServiceDef]) -> String {
    let mut sorted: Vec<&ServiceDef> = services.iter().collect();
    sorted.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // field separator that cannot appear in a valid name
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for s in sorted {
        feed(s.name.as_bytes());
        feed(s.protocol.as_bytes());
        feed(s.port_name.as_bytes());
        for (k, v) in &s.params {
            feed(k.as_bytes());
            feed(v.as_bytes());
        }
    }
    format!("{h:016x}")
}
