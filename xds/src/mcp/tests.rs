use meshreg_registry::command::{Command, CommandResponse};
use meshreg_registry::model::{validate, InstanceSpec, Locality, ServiceDef};

use super::*;

/// A registration of `app` in `ns` at `address` with `ports`.
fn spec(ns: &str, app: &str, address: &str, ports: &[(&str, u32)]) -> InstanceSpec {
    InstanceSpec {
        namespace: ns.into(),
        app: app.into(),
        address: address.into(),
        ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        ..Default::default()
    }
}

fn register(r: &mut Registry, specs: Vec<InstanceSpec>) {
    let entries = specs
        .into_iter()
        .map(|s| validate::registration("i", s).expect("valid registration"))
        .collect();
    let resp = r.apply(&Command::Register { entries });
    assert!(matches!(resp, CommandResponse::Applied { .. }), "{resp:?}");
}

fn svc(name: &str, protocol: &str, port_name: &str) -> ServiceDef {
    ServiceDef {
        name: name.into(),
        protocol: protocol.into(),
        port_name: port_name.into(),
        ..Default::default()
    }
}

/// The "pay" app: five instances, two of them able to take traffic.
fn pay_specs() -> Vec<InstanceSpec> {
    let services = vec![
        svc("pay.Api", "grpc", "grpc"),
        svc("pay.Web", "http", "http"),
    ];
    let both = [("grpc", 9090), ("http", 8080)];
    let mut out = Vec::new();
    for (n, (health, weight, locality)) in [
        (Health::Serving, 10, ("r1", "z1", "s1")),
        (Health::Warning, 1_000_000, ("r1", "z2", "")),
        (Health::NotServing, 7, ("r1", "z1", "")),
        (Health::Draining, 7, ("", "", "")),
        (Health::Unknown, 7, ("", "", "")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = spec("default", "pay", &format!("10.0.0.{}", n + 1), &both);
        s.health = Some(health);
        s.weight = weight;
        s.labels = [("version".to_string(), format!("v{n}"))].into();
        s.locality = Locality {
            region: locality.0.into(),
            zone: locality.1.into(),
            subzone: locality.2.into(),
        };
        s.services = services.clone();
        out.push(s);
    }
    out
}

fn registry_with(specs: Vec<InstanceSpec>) -> Registry {
    let mut r = Registry::new(100);
    register(&mut r, specs);
    r
}

/// Decodes an `Any` of `istio.mcp.v1alpha1.Resource` into its metadata and
/// ServiceEntry, checking both type URLs.
fn decode(any: &Any) -> (Metadata, ServiceEntry) {
    assert_eq!(
        any.type_url,
        "type.googleapis.com/istio.mcp.v1alpha1.Resource"
    );
    let res = Resource::decode(any.value.as_slice()).expect("a Resource");
    let body = res.body.expect("a body");
    assert_eq!(
        body.type_url,
        "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
    );
    let se = ServiceEntry::decode(body.value.as_slice()).expect("a ServiceEntry");
    (res.metadata.expect("metadata"), se)
}

fn only(reg: &Registry, ns: &str) -> (String, Metadata, ServiceEntry) {
    let all = build_all(reg, ns);
    assert_eq!(
        all.len(),
        1,
        "{:?}",
        all.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    let (m, se) = decode(&all[0].1);
    (all[0].0.clone(), m, se)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[test]
fn an_application_becomes_one_service_entry() {
    let r = registry_with(pay_specs());
    let (name, meta, se) = only(&r, "default");

    assert_eq!(name, "default/pay");
    assert_eq!(meta.name, "default/pay");
    assert_eq!(meta.version.len(), 16);
    assert_eq!(meta.create_time, Some(Timestamp::default()));
    assert_eq!(
        meta.labels.get("registryType").map(String::as_str),
        Some("meshreg")
    );
    assert_eq!(
        meta.annotations.get(APP_ANNOTATION).map(String::as_str),
        Some("pay")
    );
    assert_eq!(
        meta.annotations
            .get(NAMESPACE_ANNOTATION)
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(
        meta.annotations
            .get(SERVICES_ANNOTATION)
            .map(String::as_str),
        Some("pay.Api,pay.Web")
    );

    assert_eq!(se.hosts, ["pay.default.svc.meshreg"]);
    assert_eq!(se.location, Location::MeshInternal as i32);
    assert_eq!(se.resolution, Resolution::Static as i32);
    assert!(se.addresses.is_empty() && se.export_to.is_empty());
    assert_eq!(
        se.ports,
        [
            ServicePort {
                number: 9090,
                protocol: "GRPC".into(),
                name: "grpc".into(),
                target_port: 0
            },
            ServicePort {
                number: 8080,
                protocol: "HTTP".into(),
                name: "http".into(),
                target_port: 0
            },
        ]
    );

    // NOT_SERVING, DRAINING and UNKNOWN instances are left out.
    let addrs: Vec<&str> = se.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, ["10.0.0.1", "10.0.0.2"]);
    let e0 = &se.endpoints[0];
    assert_eq!(
        e0.ports,
        BTreeMap::from([("grpc".to_string(), 9090), ("http".to_string(), 8080)])
    );
    assert_eq!(e0.weight, 10);
    assert_eq!(e0.locality, "r1/z1/s1");
    assert_eq!(e0.labels, BTreeMap::from([("version".into(), "v0".into())]));
    let e1 = &se.endpoints[1];
    // The largest meshreg weight goes through untouched (Nacos casts its
    // double weights to int: 0.5 became 0).
    assert_eq!(e1.weight, 1_000_000);
    assert_eq!(e1.locality, "r1/z2");
    assert_eq!(e1.labels, BTreeMap::from([("version".into(), "v1".into())]));

    assert_eq!(
        version_of_resource(&build_all(&r, "default")[0].1),
        Some(meta.version)
    );
    assert_eq!(version_of_resource(&Any::default()), None);
    assert!(build_all(&r, "no-such-namespace").is_empty());
}

#[test]
fn version_depends_on_content_only() {
    let a = registry_with(pay_specs());
    // Another node that applied the same registrations one by one, in the
    // opposite order: different revisions, same content.
    let mut b = Registry::new(100);
    register(
        &mut b,
        vec![spec("default", "other", "10.1.0.1", &[("http", 80)])],
    );
    for s in pay_specs().into_iter().rev() {
        register(&mut b, vec![s]);
    }
    let a_all = build_all(&a, "default");
    let b_all = build_all(&b, "default");
    assert_eq!(a_all[0], b_all[1], "same bytes for the same content");
    assert_eq!(a_all, build_all(&a, "default"), "and on every build");
    let version = decode(&a_all[0].1).0.version;

    // An instance's weight changes: a new version.
    let mut specs = pay_specs();
    specs[0].weight = 11;
    register(&mut b, vec![specs[0].clone()]);
    let v2 = decode(&build_all(&b, "default")[1].1).0.version;
    assert_ne!(v2, version);

    // An instance stops serving: a new version, and its endpoint is gone.
    specs[1].health = Some(Health::NotServing);
    register(&mut b, vec![specs[1].clone()]);
    let (m3, se3) = decode(&build_all(&b, "default")[1].1);
    assert_ne!(m3.version, v2);
    assert_eq!(se3.endpoints.len(), 1);

    // The other app's resource did not change.
    assert_eq!(build_all(&b, "default")[0], b_all[0]);
}

#[test]
fn an_app_with_no_healthy_instance_keeps_its_entry_and_ports() {
    let mut s = spec(
        "default",
        "batch",
        "10.0.0.9",
        &[("http", 8080), ("metrics", 9100)],
    );
    s.health = Some(Health::NotServing);
    let r = registry_with(vec![s]);
    let (_, _, se) = only(&r, "default");
    assert!(se.endpoints.is_empty());
    let ports: Vec<(&str, u32, &str)> = se
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.number, p.protocol.as_str()))
        .collect();
    // No ServiceDef names a protocol: TCP.
    assert_eq!(ports, [("http", 8080, "TCP"), ("metrics", 9100, "TCP")]);
}

#[test]
fn every_port_of_every_instance_is_served() {
    // A rolling change of `http` from 8080 to 8081, plus an instance that
    // serves the same number under another name and one more port.
    let mut c = spec(
        "default",
        "web",
        "10.0.0.3",
        &[("web", 8080), ("admin_ui", 9000)],
    );
    c.services = vec![svc("web.Admin", "http", "admin_ui")];
    let r = registry_with(vec![
        spec("default", "web", "10.0.0.1", &[("http", 8080)]),
        spec("default", "web", "10.0.0.2", &[("http", 8081)]),
        c,
    ]);
    let (_, _, se) = only(&r, "default");
    let admin = dns_label("admin_ui", 62);
    assert!(
        admin.starts_with("admin-ui-") && is_dns_label(&admin),
        "{admin}"
    );
    let ports: Vec<(&str, u32, &str)> = se
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.number, p.protocol.as_str()))
        .collect();
    assert_eq!(
        ports,
        [
            (admin.as_str(), 9000, "HTTP"),
            ("http", 8080, "TCP"),
            ("http-8081", 8081, "TCP"),
        ]
    );
    let maps: Vec<BTreeMap<String, u32>> = se.endpoints.iter().map(|e| e.ports.clone()).collect();
    assert_eq!(
        maps,
        [
            // each `http` instance on its own number, behind both numbers
            BTreeMap::from([("http".into(), 8080), ("http-8081".into(), 8080)]),
            BTreeMap::from([("http".into(), 8081), ("http-8081".into(), 8081)]),
            // `web` on 8080 answers the service port 8080
            BTreeMap::from([(admin.clone(), 9000), ("http".into(), 8080)]),
        ]
    );
}

#[test]
fn protocols_come_from_the_service_defs() {
    let mut a = spec("default", "mix", "10.0.0.1", &[("rpc", 20880)]);
    // An empty port name means the instance's only port.
    a.services = vec![svc("demo.Tri", "tri", "")];
    let mut b = spec(
        "default",
        "mix",
        "10.0.0.2",
        &[("rpc", 20880), ("h2", 8443)],
    );
    b.services = vec![
        svc("demo.Dubbo", "dubbo", "rpc"),
        svc("demo.H2", "h2c", "h2"),
    ];
    let r = registry_with(vec![a, b]);
    let (_, _, se) = only(&r, "default");
    let ports: Vec<(&str, &str)> = se
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol.as_str()))
        .collect();
    // `rpc` is gRPC on one instance and Dubbo on the other: TCP carries both.
    assert_eq!(ports, [("h2", "HTTP2"), ("rpc", "TCP")]);
}

#[test]
fn invalid_host_characters_are_sanitized() {
    let mut r = Registry::new(100);
    let created = r.apply(&Command::CreateNamespace {
        name: "Team.A".into(),
        labels: BTreeMap::new(),
    });
    assert!(
        matches!(created, CommandResponse::Applied { .. }),
        "{created:?}"
    );
    let long = "a".repeat(100);
    register(
        &mut r,
        vec![
            spec("Team.A", "Order_Service.V2", "10.0.0.1", &[("http", 80)]),
            spec("Team.A", "order-service-v2", "10.0.0.2", &[("http", 80)]),
            spec("Team.A", &long, "10.0.0.3", &[("http", 80)]),
        ],
    );
    let all = build_all(&r, "Team.A");
    assert_eq!(all.len(), 3);
    let mut hosts = BTreeSet::new();
    for (name, any) in &all {
        let (meta, se) = decode(any);
        assert_eq!(&meta.name, name);
        let (ns_part, app_part) = name.split_once('/').expect("ns/name");
        assert!(is_dns_label(ns_part) && is_dns_label(app_part), "{name}");
        assert!(ns_part.starts_with("team-a-"), "{ns_part}");
        let host = &se.hosts[0];
        assert!(host.len() <= 253);
        let labels: Vec<&str> = host.split('.').collect();
        assert_eq!(labels.len(), 4, "{host}");
        assert!(labels.iter().all(|l| is_dns_label(l)), "{host}");
        hosts.insert(host.clone());
        // The original names travel in annotations.
        assert_eq!(meta.annotations[NAMESPACE_ANNOTATION], "Team.A");
        // A name from build_all finds the same resource.
        assert_eq!(build_one(&r, "Team.A", name).as_ref(), Some(any));
        assert_eq!(build_one(&r, "Team.A", app_part).as_ref(), Some(any));
    }
    // `Order_Service.V2` and `order-service-v2` stay apart.
    assert_eq!(hosts.len(), 3);
    assert!(hosts.contains(&format!(
        "order-service-v2.{}.svc.meshreg",
        dns_label("Team.A", 63)
    )));
    assert_eq!(dns_label("pay", 63), "pay");
    // Names must not move between releases: the hash is pinned.
    assert_eq!(
        dns_label("Order_Service.V2", 63),
        "order-service-v2-f85ac11b"
    );
    assert_eq!(dns_label("admin_ui", 62), "admin-ui-30e5909f");
    assert_eq!(dns_label(&long, 63).len(), 63);
}

#[test]
fn build_one_answers_named_subscriptions() {
    let r = registry_with(pay_specs());
    let all = build_all(&r, "default");
    assert_eq!(
        build_one(&r, "default", "default/pay").as_ref(),
        Some(&all[0].1)
    );
    assert_eq!(build_one(&r, "default", "pay").as_ref(), Some(&all[0].1));
    assert_eq!(build_one(&r, "default", "other/pay"), None);
    assert_eq!(build_one(&r, "default", "default/nope"), None);
    assert_eq!(build_one(&r, "other", "pay"), None);
}

#[test]
fn hostname_endpoints_are_resolved_with_dns() {
    let r = registry_with(vec![
        spec("default", "legacy", "10.0.0.1", &[("http", 80)]),
        spec("default", "legacy", "vm1.corp.example", &[("http", 80)]),
    ]);
    let (_, _, se) = only(&r, "default");
    assert_eq!(se.resolution, Resolution::Dns as i32);
    assert_eq!(se.endpoints.len(), 2);
}

#[test]
fn native_only_export_leaves_out_imported_instances() {
    use meshreg_registry::model::Provenance;
    let mut reg = registry_with(vec![spec("default", "pay", "10.0.0.1", &[("grpc", 9090)])]);
    let mut imported = spec("default", "pay", "10.0.0.2", &[("grpc", 9090)]);
    imported.provenance = Some(Provenance {
        source: "zk".into(),
        source_key: "/services/pay/10.0.0.2:9090".into(),
        observed_revision: "7".into(),
        observed_at_ms: 0,
    });
    let mut only_imported = spec("default", "bill", "10.0.1.1", &[("http", 80)]);
    only_imported.provenance = imported.provenance.clone();
    let records = [imported, only_imported]
        .into_iter()
        .map(|s| validate::registration("i", s).expect("valid registration"))
        .collect();
    let resp = reg.apply(&Command::SyncSource {
        source: "zk".into(),
        records,
    });
    assert!(
        matches!(&resp, CommandResponse::Synced { skipped, .. } if skipped.is_empty()),
        "{resp:?}"
    );
    let addresses = |export: Export| -> BTreeMap<String, Vec<String>> {
        build_all_with(&reg, "default", export)
            .iter()
            .map(|(name, any)| {
                let (_, se) = decode(any);
                let mut a: Vec<String> = se.endpoints.iter().map(|e| e.address.clone()).collect();
                a.sort();
                (name.clone(), a)
            })
            .collect()
    };
    let all = addresses(Export::All);
    assert_eq!(all["default/pay"], ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(all["default/bill"], ["10.0.1.1"]);
    let native = addresses(Export::NativeOnly);
    assert_eq!(
        native.len(),
        1,
        "an app with imported instances only is left out: {native:?}"
    );
    assert_eq!(native["default/pay"], ["10.0.0.1"]);
    // Named subscriptions follow the same filter.
    assert!(build_one_with(&reg, "default", "default/bill", Export::NativeOnly).is_none());
    assert!(build_one_with(&reg, "default", "default/bill", Export::All).is_some());
}
