//! Conversions between the protobuf types of `meshreg.registry.v1` and the
//! domain types, in one place. Input conversions validate what the types
//! alone cannot (enum values, ranges) and name the field on error.

use meshreg_proto::registry::v1 as pb;

use crate::error::Error;
use crate::feed::EventKind;
use crate::model::{
    Application, Health, Instance, InstanceKey, InstanceSpec, Locality, Namespace, Provenance,
    ServiceDef, ServiceRevision,
};
use crate::node::ReadOptions;
use crate::selector::{parse_labels, Requirement, Selector};
use crate::watch::WatchMessage;

fn health_in(field: &str, v: i32) -> Result<Health, Error> {
    match pb::Health::try_from(v) {
        Ok(pb::Health::Unknown) => Ok(Health::Unknown),
        Ok(pb::Health::Serving) => Ok(Health::Serving),
        Ok(pb::Health::Warning) => Ok(Health::Warning),
        Ok(pb::Health::NotServing) => Ok(Health::NotServing),
        Ok(pb::Health::Draining) => Ok(Health::Draining),
        Err(_) => Err(Error::invalid(field, format!("unknown Health value {v}"))),
    }
}

/// Domain health → protobuf enum value.
pub fn health_out(h: Health) -> i32 {
    (match h {
        Health::Unknown => pb::Health::Unknown,
        Health::Serving => pb::Health::Serving,
        Health::Warning => pb::Health::Warning,
        Health::NotServing => pb::Health::NotServing,
        Health::Draining => pb::Health::Draining,
    }) as i32
}

fn locality_in(l: Option<pb::Locality>) -> Locality {
    l.map(|l| Locality {
        region: l.region,
        zone: l.zone,
        subzone: l.subzone,
    })
    .unwrap_or_default()
}

fn service_in(s: pb::ServiceDef) -> ServiceDef {
    ServiceDef {
        name: s.name,
        protocol: s.protocol,
        port_name: s.port_name,
        params: s.params.into_iter().collect(),
    }
}

fn service_out(s: &ServiceDef) -> pb::ServiceDef {
    pb::ServiceDef {
        name: s.name.clone(),
        protocol: s.protocol.clone(),
        port_name: s.port_name.clone(),
        params: s
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A register entry → [`InstanceSpec`]. `HEALTH_UNKNOWN` (the proto3
/// default) means "not given", which registers as SERVING.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `field.<part>`.
pub fn register_entry(field: &str, e: pb::register_request::Entry) -> Result<InstanceSpec, Error> {
    let i = e
        .instance
        .ok_or_else(|| Error::invalid(format!("{field}.instance"), "is required"))?;
    let health = match health_in(&format!("{field}.instance.health"), i.health)? {
        Health::Unknown => None,
        h => Some(h),
    };
    Ok(InstanceSpec {
        namespace: i.namespace,
        app: i.app,
        id: i.id,
        address: i.address,
        ports: i.ports.into_iter().collect(),
        labels: i.labels.into_iter().collect(),
        metadata: i.metadata.into_iter().collect(),
        weight: i.weight,
        health,
        locality: locality_in(i.locality),
        revision: i.revision,
        services: e.services.into_iter().map(service_in).collect(),
        session: (i.session != 0).then_some(i.session),
        provenance: i.provenance.map(|p| Provenance {
            source: p.source,
            source_key: p.source_key,
            observed_revision: p.observed_revision,
            observed_at_ms: p.observed_at_ms,
        }),
    })
}

/// Stored instance → protobuf.
pub fn instance_out(i: &Instance) -> pb::Instance {
    pb::Instance {
        namespace: i.namespace.clone(),
        app: i.app.clone(),
        id: i.id.clone(),
        address: i.address.clone(),
        ports: i
            .ports
            .iter()
            .map(|(k, v)| (k.clone(), u32::from(*v)))
            .collect(),
        labels: i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metadata: i
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        weight: i.weight,
        health: health_out(i.health),
        locality: Some(pb::Locality {
            region: i.locality.region.clone(),
            zone: i.locality.zone.clone(),
            subzone: i.locality.subzone.clone(),
        }),
        revision: i.revision.clone(),
        session: i.session.unwrap_or(0),
        provenance: i.provenance.as_ref().map(|p| pb::Provenance {
            source: p.source.clone(),
            source_key: p.source_key.clone(),
            observed_revision: p.observed_revision.clone(),
            observed_at_ms: p.observed_at_ms,
        }),
        create_revision: i.create_revision,
        mod_revision: i.mod_revision,
    }
}

/// Instance key → domain.
pub fn key_in(k: pb::InstanceKey) -> InstanceKey {
    InstanceKey {
        namespace: k.namespace,
        app: k.app,
        id: k.id,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Selector → domain, validated.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `selector.<part>`.
pub fn selector_in(s: Option<pb::Selector>) -> Result<Selector, Error> {
    let Some(s) = s else {
        return Ok(Selector::default());
    };
    let mut health = Vec::new();
    for (i, h) in s.health.iter().enumerate() {
        health.push(health_in(&format!("selector.health[{i}]"), *h)?);
    }
    let loc = locality_in(s.locality);
    let mut labels = if s.labels.is_empty() {
        Vec::new()
    } else {
        parse_labels("selector.labels", &s.labels)?
    };
    for (i, r) in s.match_expressions.into_iter().enumerate() {
        let op = pb::label_requirement::Operator::try_from(r.operator).map_err(|_| {
            Error::invalid(
                format!("selector.match_expressions[{i}].operator"),
                format!("unknown operator {}", r.operator),
            )
        })?;
        labels.push(match op {
            pb::label_requirement::Operator::In => Requirement::In(r.key, r.values),
            pb::label_requirement::Operator::NotIn => Requirement::NotIn(r.key, r.values),
            pb::label_requirement::Operator::Exists => Requirement::Exists(r.key),
            pb::label_requirement::Operator::DoesNotExist => Requirement::DoesNotExist(r.key),
            pb::label_requirement::Operator::Unspecified => {
                return Err(Error::invalid(
                    format!("selector.match_expressions[{i}].operator"),
                    "must be set",
                ));
            }
        });
    }
    let sel = Selector {
        app: non_empty(s.app),
        service: non_empty(s.service),
        health,
        region: non_empty(loc.region),
        zone: non_empty(loc.zone),
        subzone: non_empty(loc.subzone),
        labels,
    }
    .with_match_labels(&s.match_labels.into_iter().collect());
    sel.validate("selector")?;
    Ok(sel)
}

/// Read options → domain.
pub fn read_in(r: Option<pb::ReadOptions>) -> ReadOptions {
    r.map(|r| ReadOptions {
        min_revision: r.min_revision,
        linearizable: r.linearizable,
    })
    .unwrap_or_default()
}

/// Application → protobuf.
pub fn application_out(a: &Application) -> pb::Application {
    pb::Application {
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        instance_count: a.instance_count,
        revisions: a.revisions.clone(),
        services: a.services.clone(),
    }
}

/// Namespace → protobuf.
pub fn namespace_out(n: &Namespace) -> pb::Namespace {
    pb::Namespace {
        name: n.name.clone(),
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Service revision → protobuf.
pub fn service_revision_out(r: &ServiceRevision) -> pb::ServiceRevision {
    pb::ServiceRevision {
        namespace: r.namespace.clone(),
        app: r.app.clone(),
        revision: r.revision.clone(),
        services: r.services.iter().map(service_out).collect(),
    }
}

/// Watch message → protobuf.
pub fn watch_out(m: &WatchMessage) -> pb::WatchResponse {
    pb::WatchResponse {
        revision: m.revision,
        resync: m.resync,
        more: m.more,
        events: m
            .events
            .iter()
            .map(|e| pb::WatchEvent {
                kind: match e.kind {
                    EventKind::Put => pb::watch_event::Kind::Put as i32,
                    EventKind::Delete => pb::watch_event::Kind::Delete as i32,
                },
                instance: Some(instance_out(&e.instance)),
            })
            .collect(),
    }
}
