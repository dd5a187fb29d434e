//! Validation of everything a client can send. Each check returns
//! [`Error::InvalidArgument`] naming the field (a path such as
//! `instances[2].labels["app.kubernetes.io/name"]`) and the reason.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::model::{
    compute_revision, Health, Instance, InstanceSpec, Locality, Registration, ServiceDef,
    DEFAULT_WEIGHT,
};

/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Most bytes (keys + values) of an instance's metadata, or of a service's params.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Most labels on one instance.
pub const MAX_LABELS: usize = 64;
/// Most ports on one instance.
pub const MAX_PORTS: usize = 32;
/// Most services in one service revision.
pub const MAX_SERVICES: usize = 512;
/// Most instances in one register or deregister request.
pub const MAX_BATCH: usize = 10_000;
/// Most bytes one register request may take in the Raft log (like etcd's
/// request size limit): every log entry then fits in one AppendEntries.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// Shortest session TTL, in milliseconds.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest session TTL, in milliseconds.
pub const MAX_TTL_MS: u64 = 3_600_000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A name made of `[A-Za-z0-9._-]`, starting and ending with a letter or
/// digit, `1..=max` bytes. Used for namespaces, applications, revisions and
/// locality parts.
pub fn name(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes; at most {max} allowed", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(is_alnum(*c) || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            field,
            format!("{value:?} contains {c:?}; allowed are letters, digits, '.', '_' and '-'"),
        ));
    }
    let first = value.chars().next().unwrap_or('-');
    let last = value.chars().last().unwrap_or('-');
    if !is_alnum(first) || !is_alnum(last) {
        return Err(invalid(
            field,
            format!("{value:?} must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

/// A namespace name: [`name`] of at most 63 bytes.
pub fn namespace(field: &str, value: &str) -> Result<(), Error> {
    name(field, value, 63)
}

/// An application name: [`name`] of at most 253 bytes.
pub fn app(field: &str, value: &str) -> Result<(), Error> {
    name(field, value, 253)
}

/// An instance id: 1..=253 bytes of visible ASCII other than `/`.
pub fn instance_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > 253 {
        return Err(invalid(
            field,
            format!("{} bytes; at most 253 allowed", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic() || *c == '/') {
        return Err(invalid(
            field,
            format!("{value:?} contains {c:?}; allowed is visible ASCII other than '/'"),
        ));
    }
    Ok(())
}

/// A service (interface) name: 1..=255 bytes of `[A-Za-z0-9._$:-]`.
pub fn service_name(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > 255 {
        return Err(invalid(
            field,
            format!("{} bytes; at most 255 allowed", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(is_alnum(*c) || matches!(c, '.' | '_' | '-' | '$' | ':')))
    {
        return Err(invalid(
            field,
            format!(
                "{value:?} contains {c:?}; allowed are letters, digits, '.', '_', '-', '$' and ':'"
            ),
        ));
    }
    Ok(())
}

/// An address: an IPv4 or IPv6 literal, or an RFC 1123 hostname.
pub fn address(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.parse::<Ipv4Addr>().is_ok() || value.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if value.contains(':') {
        return Err(invalid(
            field,
            format!("{value:?} is not a valid IPv6 address"),
        ));
    }
    if value.len() > 253 {
        return Err(invalid(
            field,
            format!("hostname of {} bytes; at most 253 allowed", value.len()),
        ));
    }
    let host = value.strip_suffix('.').unwrap_or(value);
    let labels: Vec<&str> = host.split('.').collect();
    if labels
        .iter()
        .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(invalid(
            field,
            format!("{value:?} is not a valid IPv4 address"),
        ));
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err(invalid(
                field,
                format!("{value:?} is not a valid hostname: each label must be 1..=63 bytes"),
            ));
        }
        if !l.chars().all(|c| is_alnum(c) || c == '-') || l.starts_with('-') || l.ends_with('-') {
            return Err(invalid(
                field,
                format!(
                    "{value:?} is neither an IP address nor a valid hostname (letters, digits and '-', not at a label's ends)"
                ),
            ));
        }
    }
    Ok(())
}

/// A port name: 1..=63 bytes of `[a-z0-9_-]`.
pub fn port_name(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(field, "port names must be 1..=63 bytes"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        return Err(invalid(
            field,
            format!(
                "{value:?} contains {c:?}; allowed are lower-case letters, digits, '-' and '_'"
            ),
        ));
    }
    Ok(())
}

/// A port number, 1..=65535.
pub fn port(field: &str, value: u32) -> Result<u16, Error> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(
            field,
            format!("port {value} is out of range 1..=65535"),
        )),
    }
}

fn label_name_part(field: &str, what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(
            field,
            format!("{what} {value:?} must be 1..=63 bytes"),
        ));
    }
    let ok_chars = value
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'));
    let ends =
        value.chars().next().is_some_and(is_alnum) && value.chars().last().is_some_and(is_alnum);
    if !ok_chars || !ends {
        return Err(invalid(
            field,
            format!(
                "{what} {value:?} must consist of letters, digits, '-', '_' or '.', and start and end with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a
/// name of 1..=63 bytes.
pub fn label_key(field: &str, key: &str) -> Result<(), Error> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err(invalid(
                field,
                format!("label key prefix {p:?} must be 1..=253 bytes"),
            ));
        }
        for part in p.split('.') {
            let ok = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-');
            if !ok {
                return Err(invalid(
                    field,
                    format!("label key prefix {p:?} must be a lower-case DNS subdomain"),
                ));
            }
        }
    }
    label_name_part(field, "label key name", name)
}

/// A Kubernetes label value: empty, or 1..=63 bytes like a key's name.
pub fn label_value(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    label_name_part(field, "label value", value)
}

/// A label map: at most [`MAX_LABELS`] valid keys and values.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            field,
            format!("{} labels; at most {MAX_LABELS} allowed", labels.len()),
        ));
    }
    for (k, v) in labels {
        let f = format!("{field}[{k:?}]");
        label_key(&f, k)?;
        label_value(&f, v)?;
    }
    Ok(())
}

/// Free-form string map bounded to [`MAX_METADATA_BYTES`].
pub fn metadata(field: &str, map: &BTreeMap<String, String>) -> Result<(), Error> {
    let mut total = 0usize;
    for (k, v) in map {
        if k.is_empty() {
            return Err(invalid(field, "keys must not be empty"));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(invalid(
            field,
            format!("{total} bytes of keys and values; at most {MAX_METADATA_BYTES} allowed"),
        ));
    }
    Ok(())
}

/// A locality; each part empty or a [`name`] of at most 128 bytes.
pub fn locality(field: &str, l: &Locality) -> Result<(), Error> {
    for (part, v) in [
        ("region", &l.region),
        ("zone", &l.zone),
        ("subzone", &l.subzone),
    ] {
        if !v.is_empty() {
            name(&format!("{field}.{part}"), v, 128)?;
        }
    }
    Ok(())
}

/// A session TTL in milliseconds.
pub fn ttl_ms(field: &str, ttl: u64) -> Result<(), Error> {
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl) {
        return Err(invalid(
            field,
            format!("{ttl} ms is out of range {MIN_TTL_MS}..={MAX_TTL_MS}"),
        ));
    }
    Ok(())
}

fn service(field: &str, s: &ServiceDef, ports: &BTreeMap<String, u16>) -> Result<(), Error> {
    service_name(&format!("{field}.name"), &s.name)?;
    if s.protocol.len() > 32
        || !s
            .protocol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            format!("{field}.protocol"),
            format!(
                "{:?} must be at most 32 bytes of letters, digits, '.', '_' or '-'",
                s.protocol
            ),
        ));
    }
    if !s.port_name.is_empty() && !ports.contains_key(&s.port_name) {
        return Err(invalid(
            format!("{field}.port_name"),
            format!("{:?} is not one of the instance's ports", s.port_name),
        ));
    }
    metadata(&format!("{field}.params"), &s.params)
}

/// Validates a registration and applies defaults: id from the first port,
/// weight, health, and the revision computed from the services.
///
/// `field` is the path of the spec in the request, e.g. `instances[3]`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the first invalid field.
pub fn registration(field: &str, spec: InstanceSpec) -> Result<Registration, Error> {
    let f = |name: &str| format!("{field}.{name}");
    namespace(&f("namespace"), &spec.namespace)?;
    app(&f("app"), &spec.app)?;
    address(&f("address"), &spec.address)?;
    if spec.ports.is_empty() {
        return Err(invalid(f("ports"), "at least one port is required"));
    }
    if spec.ports.len() > MAX_PORTS {
        return Err(invalid(
            f("ports"),
            format!("{} ports; at most {MAX_PORTS} allowed", spec.ports.len()),
        ));
    }
    let mut ports = BTreeMap::new();
    for (n, p) in &spec.ports {
        let pf = format!("{}[{n:?}]", f("ports"));
        port_name(&pf, n)?;
        ports.insert(n.clone(), port(&pf, *p)?);
    }
    labels(&f("labels"), &spec.labels)?;
    metadata(&f("metadata"), &spec.metadata)?;
    let weight = match spec.weight {
        0 => DEFAULT_WEIGHT,
        w if w > MAX_WEIGHT => {
            return Err(invalid(
                f("weight"),
                format!("{w} is out of range 1..={MAX_WEIGHT}"),
            ));
        }
        w => w,
    };
    locality(&f("locality"), &spec.locality)?;
    if spec.services.len() > MAX_SERVICES {
        return Err(invalid(
            f("services"),
            format!(
                "{} services; at most {MAX_SERVICES} allowed",
                spec.services.len()
            ),
        ));
    }
    for (i, s) in spec.services.iter().enumerate() {
        service(&format!("{}[{i}]", f("services")), s, &ports)?;
    }
    let mut services = spec.services;
    services.sort();
    services.dedup();
    if let Some(w) = services.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(invalid(
            f("services"),
            format!(
                "service {:?} is listed twice with different definitions",
                w[0].name
            ),
        ));
    }
    let revision = if spec.revision.is_empty() {
        compute_revision(&services)
    } else {
        name(&f("revision"), &spec.revision, 128)?;
        spec.revision
    };
    let id = if spec.id.is_empty() {
        let (_, first) = ports
            .iter()
            .next()
            .ok_or_else(|| invalid(f("ports"), "at least one port is required"))?;
        if spec.address.contains(':') {
            format!("[{}]:{first}", spec.address)
        } else {
            format!("{}:{first}", spec.address)
        }
    } else {
        spec.id
    };
    instance_id(&f("id"), &id)?;
    let session = spec.session.filter(|s| *s != 0);
    if let Some(p) = &spec.provenance {
        if p.source.is_empty() {
            return Err(invalid(
                f("provenance.source"),
                "must not be empty when provenance is given",
            ));
        }
    }
    Ok(Registration {
        instance: Instance {
            namespace: spec.namespace,
            app: spec.app,
            id,
            address: spec.address,
            ports,
            labels: spec.labels,
            metadata: spec.metadata,
            weight,
            health: spec.health.unwrap_or(Health::Serving),
            locality: spec.locality,
            revision,
            session,
            provenance: spec.provenance,
            create_revision: 0,
            mod_revision: 0,
        },
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            namespace: "default".into(),
            app: "pay".into(),
            address: "10.0.0.1".into(),
            ports: [("http".to_string(), 8080)].into_iter().collect(),
            ..Default::default()
        }
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_applied() {
        let r = registration("i", spec()).unwrap();
        assert_eq!(r.instance.id, "10.0.0.1:8080");
        assert_eq!(r.instance.weight, DEFAULT_WEIGHT);
        assert_eq!(r.instance.health, Health::Serving);
        assert_eq!(r.instance.revision, compute_revision(&[]));
    }

    #[test]
    fn ipv6_id_is_bracketed() {
        let mut s = spec();
        s.address = "fd00::1".into();
        assert_eq!(registration("i", s).unwrap().instance.id, "[fd00::1]:8080");
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.1.2.3",
            "::1",
            "fd00::1:2",
            "pay-1.svc.cluster.local",
            "localhost",
            "a.b.",
        ] {
            address("a", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "999.1.1.1",
            "1.2.3",
            "fd00:::1:2:3",
            "-a.com",
            "a..b",
            "host_name",
            "a b",
        ] {
            assert!(address("a", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ports_and_weights() {
        let mut s = spec();
        s.ports.insert("grpc".into(), 70000);
        assert_eq!(
            field_of(registration("i", s).unwrap_err()),
            "i.ports[\"grpc\"]"
        );
        let mut s = spec();
        s.ports.insert("x".into(), 0);
        assert!(registration("i", s).is_err());
        let mut s = spec();
        s.ports.clear();
        assert_eq!(field_of(registration("i", s).unwrap_err()), "i.ports");
        let mut s = spec();
        s.weight = MAX_WEIGHT + 1;
        assert_eq!(field_of(registration("i", s).unwrap_err()), "i.weight");
    }

    #[test]
    fn label_syntax() {
        for ok in ["app", "app.kubernetes.io/name", "a-b_c.d", "x/y"] {
            label_key("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "-a", "a-", "Upper.Case/x", "/x", "a/", &"x".repeat(64)] {
            assert!(label_key("k", bad).is_err(), "{bad} accepted");
        }
        label_value("v", "").unwrap();
        assert!(label_value("v", "a b").is_err());
        let mut s = spec();
        s.labels.insert("env".into(), "prod!".into());
        assert_eq!(
            field_of(registration("i", s).unwrap_err()),
            "i.labels[\"env\"]"
        );
    }

    #[test]
    fn metadata_size_limit() {
        let mut s = spec();
        s.metadata
            .insert("blob".into(), "x".repeat(MAX_METADATA_BYTES));
        assert_eq!(field_of(registration("i", s).unwrap_err()), "i.metadata");
    }

    #[test]
    fn service_port_must_exist() {
        let mut s = spec();
        s.services.push(ServiceDef {
            name: "pay.Api".into(),
            port_name: "grpc".into(),
            ..Default::default()
        });
        assert_eq!(
            field_of(registration("i", s).unwrap_err()),
            "i.services[0].port_name"
        );
    }

    #[test]
    fn revision_is_order_independent() {
        let a = ServiceDef {
            name: "a".into(),
            ..Default::default()
        };
        let b = ServiceDef {
            name: "b".into(),
            ..Default::default()
        };
        assert_eq!(
            compute_revision(&[a.clone(), b.clone()]),
            compute_revision(&[b, a.clone()])
        );
        assert_ne!(compute_revision(&[a]), compute_revision(&[]));
    }
}
