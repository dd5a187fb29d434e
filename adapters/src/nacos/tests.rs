use std::collections::HashMap;

use meshreg_registry::model::Health;

use super::*;

fn inst(ip: &str, port: i32, meta: &[(&str, &str)]) -> ServiceInstance {
    ServiceInstance {
        ip: ip.into(),
        port,
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

#[test]
fn weights_scale_by_100_without_truncating() {
    assert_eq!(weight(1.0), Ok(100));
    assert_eq!(weight(0.5), Ok(50));
    assert_eq!(weight(0.001), Ok(1), "a positive weight never becomes 0");
    assert_eq!(weight(0.0), Ok(0));
    assert_eq!(weight(1e12), Ok(validate::MAX_WEIGHT));
    assert!(weight(-1.0).unwrap_err().contains("weight -1"));
    assert!(weight(f64::NAN).is_err());
}

#[test]
fn an_application_instance_maps_labels_weight_health_and_locality() {
    let mut i = inst(
        "10.0.0.1",
        8080,
        &[("version", "v2"), ("management.context-path", "/actuator")],
    );
    i.weight = 2.5;
    i.cluster_name = Some("gz01".into());
    let mut c = Catalog::default();
    assert!(apply_service(
        &mut c,
        DEFAULT_GROUP,
        "orders",
        &[i.clone()],
        7
    ));
    let r = c.records("default", "nacos");
    assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
    let got = &r.records[0].instance;
    assert_eq!(got.app, "orders");
    assert_eq!(got.address, "10.0.0.1");
    assert_eq!(got.ports.get("http"), Some(&8080));
    assert_eq!(got.weight, 250);
    assert_eq!(got.health, Health::Serving);
    assert_eq!(got.locality.zone, "gz01");
    assert_eq!(got.labels.get("version").map(String::as_str), Some("v2"));
    // Not a valid label value: kept as metadata.
    assert_eq!(
        got.metadata
            .get("management.context-path")
            .map(String::as_str),
        Some("/actuator")
    );
    let p = got.provenance.as_ref().unwrap();
    assert_eq!(p.source_key, "DEFAULT_GROUP@@orders/gz01/10.0.0.1:8080");
    assert_eq!(p.observed_at_ms, 7);

    // The same again changes nothing; unhealthy, disabled or weight 0
    // mean NOT_SERVING.
    assert!(!apply_service(
        &mut c,
        DEFAULT_GROUP,
        "orders",
        &[i.clone()],
        9
    ));
    for f in [
        |i: &mut ServiceInstance| i.healthy = false,
        |i: &mut ServiceInstance| i.enabled = false,
        |i: &mut ServiceInstance| i.weight = 0.0,
    ] {
        let mut j = i.clone();
        f(&mut j);
        let mut c = Catalog::default();
        apply_service(&mut c, DEFAULT_GROUP, "orders", &[j], 1);
        assert_eq!(
            c.records("default", "nacos").records[0].instance.health,
            Health::NotServing
        );
    }
}

#[test]
fn instances_leave_with_their_service_and_bad_ones_are_quarantined() {
    let mut c = Catalog::default();
    let a = inst("10.0.0.1", 80, &[]);
    let b = inst("10.0.0.2", 80, &[]);
    let bad = inst("10.0.0.3", 70000, &[]);
    apply_service(&mut c, "g", "web", &[a.clone(), b, bad], 1);
    apply_service(&mut c, "g", "other", &[inst("10.0.0.9", 81, &[])], 1);
    let r = c.records("default", "nacos");
    assert_eq!(r.records.len(), 3);
    assert_eq!(r.quarantined.len(), 1);
    assert!(
        r.quarantined[0].1.contains("port 70000"),
        "{:?}",
        r.quarantined
    );

    assert!(apply_service(&mut c, "g", "web", &[a], 2));
    assert_eq!(c.records("default", "nacos").records.len(), 2);
    assert!(apply_service(&mut c, "g", "web", &[], 3));
    let r = c.records("default", "nacos");
    assert_eq!(r.records.len(), 1, "the other service is untouched");
    assert_eq!(r.records[0].instance.app, "other");
}

#[test]
fn dubbo_interface_level_services_group_into_applications() {
    let meta = |iface: &str| {
        vec![
            ("application", "demo"),
            ("interface", iface),
            ("methods", "hello"),
            ("protocol", "dubbo"),
            ("side", "provider"),
            ("version", "1.0.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
    };
    let mk = |iface: &str| {
        let m = meta(iface);
        let pairs: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        inst("10.0.0.1", 20880, &pairs)
    };
    let mut c = Catalog::default();
    apply_service(
        &mut c,
        DEFAULT_GROUP,
        "providers:org.demo.Api:1.0.0:",
        &[mk("org.demo.Api")],
        1,
    );
    apply_service(
        &mut c,
        DEFAULT_GROUP,
        "providers:org.demo.Admin:1.0.0:",
        &[mk("org.demo.Admin")],
        1,
    );
    let r = c.records("default", "nacos");
    assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
    assert_eq!(r.records.len(), 1, "one instance of application demo");
    let names: Vec<&str> = r.records[0]
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, vec!["org.demo.Admin", "org.demo.Api"]);
    assert_eq!(r.records[0].instance.app, "demo");
    assert_eq!(r.records[0].instance.ports.get("dubbo"), Some(&20880));
    assert!(
        !r.records[0].instance.labels.contains_key("protocol"),
        "the scheme is not a label"
    );
}

#[test]
fn config_mistakes_are_named() {
    let ok = NacosConfig {
        address: "127.0.0.1:8848".into(),
        namespace: String::new(),
        groups: vec![DEFAULT_GROUP.into()],
        username: None,
        password: None,
    };
    assert!(ok.validate().is_ok());
    for (cfg, why) in [
        (
            NacosConfig {
                address: " , ".into(),
                ..ok.clone()
            },
            "address",
        ),
        (
            NacosConfig {
                groups: vec![],
                ..ok.clone()
            },
            "groups",
        ),
        (
            NacosConfig {
                username: Some("nacos".into()),
                ..ok.clone()
            },
            "together",
        ),
    ] {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}
