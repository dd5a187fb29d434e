use meshreg_registry::model::{Health, Instance, Registration};

use super::*;
use crate::dubbo::tests::java_encode;

fn provider(c: &mut Catalog, url: &str, rev: i64) -> String {
    let iface = url
        .split_once('?')
        .map_or(url, |(a, _)| a)
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let path = format!("/dubbo/{iface}/providers/{}", java_encode(url));
    assert!(c.put_provider(&path, rev, 1000 + rev));
    path
}

fn find<'a>(r: &'a Records, app: &str, id: &str) -> &'a Registration {
    r.records
        .iter()
        .find(|r| r.instance.app == app && r.instance.id == id)
        .unwrap_or_else(|| panic!("no {app}/{id} in {:#?}", r.records))
}

fn inst(r: &Registration) -> &Instance {
    &r.instance
}

#[test]
fn provider_urls_group_into_application_instances() {
    let mut c = Catalog::default();
    provider(&mut c, "dubbo://10.0.0.1:20880/org.demo.Api?application=demo&side=provider&weight=150&interface=org.demo.Api&methods=a,b&version=1.0.0&timestamp=111&release=3.2.0", 5);
    let admin = provider(&mut c, "dubbo://10.0.0.1:20880/org.demo.Admin?application=demo&side=provider&weight=150&timestamp=112&release=3.2.0", 9);
    provider(
        &mut c,
        "dubbo://10.0.0.2:20880/org.demo.Api?application=demo&side=provider",
        6,
    );
    provider(
        &mut c,
        "tri://10.0.0.1:50051/org.shop.Cart?application=shop",
        7,
    );
    let r = c.records("default", "zk");
    assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
    assert_eq!(
        r.records.len(),
        3,
        "one instance per application and address:port"
    );

    let a = find(&r, "demo", "10.0.0.1:20880");
    let i = inst(a);
    assert_eq!(i.ports, [("dubbo".to_string(), 20880)].into());
    assert_eq!(i.weight, 150);
    assert_eq!(i.health, Health::Serving);
    assert_eq!(i.labels["side"], "provider");
    assert_eq!(i.labels["release"], "3.2.0");
    assert_eq!(
        i.metadata["timestamp"], "112",
        "volatile; the first URL in key order wins"
    );
    assert!(!i.labels.contains_key("application") && !i.labels.contains_key("weight"));
    let names: Vec<&str> = a.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["org.demo.Admin", "org.demo.Api"]);
    let api = &a.services[1];
    assert_eq!(api.protocol, "dubbo");
    assert_eq!(api.port_name, "dubbo");
    assert_eq!(api.params["methods"], "a,b");
    assert_eq!(api.params["version"], "1.0.0");
    let p = i.provenance.as_ref().unwrap();
    assert_eq!(p.source, "zk");
    assert_eq!(
        p.source_key, admin,
        "the first provider znode of the instance"
    );
    assert_eq!(p.observed_revision, "9", "the newest mzxid of its znodes");
    assert_eq!(p.observed_at_ms, 1009);

    assert_eq!(
        inst(find(&r, "demo", "10.0.0.2:20880")).weight,
        100,
        "default weight"
    );
    let cart = find(&r, "shop", "10.0.0.1:50051");
    assert_eq!(inst(cart).ports, [("tri".to_string(), 50051)].into());
    assert_eq!(cart.services[0].protocol, "tri");
}

#[test]
fn instances_of_two_processes_share_one_revision() {
    let mut c = Catalog::default();
    for ip in ["10.0.0.1", "10.0.0.2"] {
        provider(&mut c, &format!("dubbo://{ip}:20880/org.demo.Api?application=demo&methods=a&pid={ip}&timestamp={ip}"), 1);
    }
    let r = c.records("default", "zk");
    assert_eq!(r.records.len(), 2);
    assert_eq!(
        r.records[0].instance.revision, r.records[1].instance.revision,
        "per-process parameters stay out of the service definitions"
    );
}

#[test]
fn weight_zero_and_disabled_take_no_traffic() {
    let mut c = Catalog::default();
    provider(&mut c, "dubbo://10.0.0.1:1/a.A?application=x&weight=0", 1);
    provider(
        &mut c,
        "dubbo://10.0.0.2:1/a.A?application=x&enabled=false",
        1,
    );
    provider(
        &mut c,
        "dubbo://10.0.0.3:1/a.A?application=x&disabled=true",
        1,
    );
    let r = c.records("default", "zk");
    assert_eq!(r.records.len(), 3);
    for rec in &r.records {
        assert_eq!(
            rec.instance.health,
            Health::NotServing,
            "{}",
            rec.instance.id
        );
    }
}

#[test]
fn one_interface_in_two_versions_keeps_both() {
    let mut c = Catalog::default();
    provider(
        &mut c,
        "dubbo://10.0.0.1:1/a.A?application=x&version=1.0.0",
        1,
    );
    provider(
        &mut c,
        "dubbo://10.0.0.1:1/a.A?application=x&version=2.0.0&group=g",
        2,
    );
    let r = c.records("default", "zk");
    let names: Vec<&str> = r.records[0]
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, vec!["a.A", "a.A:2.0.0:g"]);
}

#[test]
fn application_level_instances_get_services_from_mappings() {
    let mut c = Catalog::default();
    let json = br#"{"name":"demo","address":"10.0.0.7","port":20880,"payload":{"metadata":{
        "dubbo.endpoints":"[{\"port\":20880,\"protocol\":\"tri\"},{\"port\":50051,\"protocol\":\"dubbo\"}]",
        "dubbo.metadata.revision":"a1b2c3","zone":"gz01"}}}"#;
    c.put_instance("/services/demo/10.0.0.7:20880", Ok("demo"), json, 41, 1);
    c.put_mapping(
        "/dubbo/mapping/org.demo.Api",
        "org.demo.Api",
        b"demo,other",
        42,
        2,
    );
    c.put_mapping(
        "/dubbo/mapping/org.demo.Admin",
        "org.demo.Admin",
        b"demo",
        43,
        3,
    );
    let r = c.records("team", "zk");
    assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
    let rec = find(&r, "demo", "10.0.0.7:20880");
    let i = inst(rec);
    assert_eq!(i.namespace, "team");
    assert_eq!(
        i.ports,
        [("tri".to_string(), 20880), ("dubbo".to_string(), 50051)].into()
    );
    assert_eq!(
        i.id, "10.0.0.7:20880",
        "the main port, not the first by name"
    );
    assert_eq!(i.labels["zone"], "gz01");
    assert_eq!(i.labels["dubbo.metadata.revision"], "a1b2c3");
    assert!(i.metadata["dubbo.endpoints"].starts_with('['));
    let names: Vec<&str> = rec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["org.demo.Admin", "org.demo.Api"]);
    assert_eq!(rec.services[0].port_name, "tri");
    assert_eq!(rec.services[0].protocol, "tri");
    let p = i.provenance.as_ref().unwrap();
    assert_eq!(
        (p.source_key.as_str(), p.observed_revision.as_str()),
        ("/services/demo/10.0.0.7:20880", "41")
    );
}

#[test]
fn both_layouts_of_one_process_are_one_instance() {
    // Dubbo 3's default register mode writes both layouts.
    let mut c = Catalog::default();
    let json = br#"{"name":"demo","address":"10.0.0.7","port":20880,"payload":{"metadata":{
        "dubbo.endpoints":"[{\"port\":20880,\"protocol\":\"dubbo\"},{\"port\":50051,\"protocol\":\"tri\"}]"}}}"#;
    c.put_instance("/services/demo/10.0.0.7:20880", Ok("demo"), json, 41, 1);
    c.put_mapping(
        "/dubbo/mapping/org.demo.Api",
        "org.demo.Api",
        b"demo",
        42,
        2,
    );
    provider(
        &mut c,
        "dubbo://10.0.0.7:20880/org.demo.Api?application=demo&methods=a&side=provider",
        50,
    );
    provider(
        &mut c,
        "tri://10.0.0.7:50051/org.demo.Stream?application=demo",
        51,
    );
    let r = c.records("default", "zk");
    assert_eq!(r.records.len(), 1, "{:#?}", r.records);
    let rec = &r.records[0];
    let api = rec
        .services
        .iter()
        .find(|s| s.name == "org.demo.Api")
        .unwrap();
    assert_eq!(
        api.params["methods"], "a",
        "the URL's definition replaces the mapping's"
    );
    let stream = rec
        .services
        .iter()
        .find(|s| s.name == "org.demo.Stream")
        .unwrap();
    assert_eq!(
        (stream.protocol.as_str(), stream.port_name.as_str()),
        ("tri", "tri")
    );
    let p = rec.instance.provenance.as_ref().unwrap();
    assert_eq!(p.source_key, "/services/demo/10.0.0.7:20880");
    assert_eq!(p.observed_revision, "51");
    assert_eq!(rec.instance.labels["side"], "provider");
}

#[test]
fn bad_entries_are_quarantined_and_do_not_block_the_rest() {
    let mut c = Catalog::default();
    provider(&mut c, "dubbo://10.0.0.1:20880/a.A?application=good", 1);
    provider(&mut c, "dubbo://10.0.0.2:20880/a.A?side=provider", 2);
    provider(
        &mut c,
        "dubbo://10.0.0.3:20880/a.A?application=bad%20app",
        3,
    );
    provider(
        &mut c,
        "dubbo://10.0.0.4:20880/a.A?application=x&weight=heavy",
        4,
    );
    c.put_provider("/dubbo/a.A/providers/garbage", 5, 1);
    c.put_instance("/services/s/1", Ok("s"), b"{oops", 6, 1);
    c.put_instance(
        "/x",
        Err("key does not follow the layout".into()),
        b"{}",
        7,
        1,
    );
    c.put_mapping("/dubbo/mapping/bad iface", "bad iface", b"good", 8, 1);
    let r = c.records("default", "zk");
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].instance.app, "good");
    let reasons: Vec<String> = r
        .quarantined
        .iter()
        .map(|(k, why)| format!("{k}: {why}"))
        .collect();
    assert_eq!(reasons.len(), 7, "{reasons:#?}");
    let has = |s: &str| {
        assert!(
            reasons.iter().any(|r| r.contains(s)),
            "{s} not in {reasons:#?}"
        )
    };
    has("no application= parameter");
    has("record.app");
    has("weight \"heavy\"");
    has("garbage: \"garbage\" is not a URL");
    has("/services/s/1: not JSON");
    has("/x: key does not follow the layout");
    has("/dubbo/mapping/bad iface: invalid interface");
}

#[test]
fn many_parameters_overflow_into_metadata() {
    let mut c = Catalog::default();
    let params: Vec<String> = (0..100).map(|i| format!("p{i:03}=v")).collect();
    provider(
        &mut c,
        &format!("dubbo://10.0.0.1:1/a.A?application=x&{}", params.join("&")),
        1,
    );
    let r = c.records("default", "zk");
    assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
    let i = &r.records[0].instance;
    assert_eq!(i.labels.len(), validate::MAX_LABELS);
    assert_eq!(i.metadata.len(), 100 - validate::MAX_LABELS);
}

#[test]
fn edits_report_changes_and_subtrees_go_at_once() {
    let mut c = Catalog::default();
    let p = provider(&mut c, "dubbo://10.0.0.1:1/a.A?application=x", 1);
    assert!(!c.put_provider(&p, 1, 99), "same revision: no change");
    c.put_instance(
        "/services/x/1",
        Ok("x"),
        br#"{"address":"h","port":1}"#,
        1,
        1,
    );
    assert!(c.remove_under("/dubbo/a.A/providers/"));
    assert!(!c.remove_under("/dubbo/a.A/providers/"));
    assert_eq!(c.len(), 1);
    assert!(c.remove("/services/x/1"));
    assert!(c.is_empty());
}
