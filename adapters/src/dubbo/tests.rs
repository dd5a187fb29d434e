use super::*;

/// Java's `URLEncoder.encode(s, "UTF-8")`, as Dubbo names provider znodes.
pub(crate) fn java_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

const DEMO: &str = "dubbo://192.168.1.5:20880/org.apache.dubbo.demo.DemoService?anyhost=true&application=demo-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface=org.apache.dubbo.demo.DemoService&methods=sayHello,sayHelloAsync&pid=4242&release=3.2.0&side=provider&timestamp=1690000000000&version=1.0.0&weight=200";

#[test]
fn a_real_provider_url_parses() {
    let u = parse_provider(&java_encode(DEMO)).unwrap();
    assert_eq!(u.protocol, "dubbo");
    assert_eq!(u.host, "192.168.1.5");
    assert_eq!(u.port, 20880);
    assert_eq!(u.interface, "org.apache.dubbo.demo.DemoService");
    assert_eq!(u.application(), Some("demo-provider"));
    assert_eq!(u.params["methods"], "sayHello,sayHelloAsync");
    assert_eq!(u.params["weight"], "200");
    assert_eq!(u.params.len(), 14);
}

#[test]
fn url_variants() {
    // IPv6, user info, no path but interface=, upper-case scheme.
    let u = parse_provider(&java_encode(
        "TRI://admin:pw@[fd00::1]:50051?interface=a.B&application=x",
    ))
    .unwrap();
    assert_eq!(
        (u.protocol.as_str(), u.host.as_str(), u.port),
        ("tri", "fd00::1", 50051)
    );
    assert_eq!(u.interface, "a.B");
    // The path names the interface when there is no interface=.
    let u = parse_provider(&java_encode("rest://h:80/a.C?application=x")).unwrap();
    assert_eq!(u.interface, "a.C");
    // `+` decodes to a space (Java's URLEncoder).
    assert_eq!(url_decode("a+b%2Cc").unwrap(), "a b,c");
}

#[test]
fn bad_urls_say_why() {
    for (name, why) in [
        ("not-a-url", "no \"://\""),
        ("dubbo%3A%2F%2F10.0.0.1%2Fa.B", "not host:port"),
        ("dubbo%3A%2F%2F10.0.0.1%3A0%2Fa.B", "not in 1..=65535"),
        ("dubbo%3A%2F%2F10.0.0.1%3A99999%2Fa.B", "not in 1..=65535"),
        ("dubbo%3A%2F%2F10.0.0.1%3A1", "names no interface"),
        ("dubbo%3A%2F%2F10.0.0.1%3A1%2Fa%ZZ", "malformed %-escape"),
        ("%3A%2F%2Fh%3A1%2Fa", "no protocol"),
    ] {
        let e = parse_provider(name).unwrap_err();
        assert!(e.contains(why), "{name}: {e}");
    }
}

#[test]
fn curator_service_instance_parses() {
    // What Dubbo 3 writes under /services/{app}/{id} through Curator.
    let json = br#"{"name":"demo-provider","id":"10.0.0.7:20880","address":"10.0.0.7","port":20880,"sslPort":null,
        "payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"10.0.0.7:20880","name":"demo-provider",
        "metadata":{"dubbo.endpoints":"[{\"port\":20880,\"protocol\":\"dubbo\"},{\"port\":50051,\"protocol\":\"tri\"}]",
                    "dubbo.metadata.revision":"a1b2c3","dubbo.metadata.storage-type":"local","timestamp":"1690000000000"}},
        "registrationTimeUTC":1690000000000,"serviceType":"DYNAMIC","uriSpec":null}"#;
    let i = parse_app_instance("demo-provider", json).unwrap();
    assert_eq!(i.address, "10.0.0.7");
    assert_eq!(i.port, 20880);
    assert!(i.serving);
    assert_eq!(
        i.endpoints,
        vec![("dubbo".to_string(), 20880), ("tri".to_string(), 50051)]
    );
    assert_eq!(i.metadata["dubbo.metadata.revision"], "a1b2c3");
}

#[test]
fn default_service_instance_parses() {
    // Dubbo's DefaultServiceInstance as JSON (the etcd layout).
    let json =
        br#"{"serviceName":"shop","host":"10.1.0.2","port":"8080","enabled":true,"healthy":false,
        "metadata":{"zone":"gz01","weight":7}}"#;
    let i = parse_app_instance("shop", json).unwrap();
    assert_eq!(
        (i.address.as_str(), i.port, i.serving),
        ("10.1.0.2", 8080, false)
    );
    assert_eq!(
        i.metadata["weight"], "7",
        "non-string values keep their JSON text"
    );
}

#[test]
fn bad_instances_say_why() {
    for (json, why) in [
        (&b"{not json"[..], "not JSON"),
        (b"[1]", "not a JSON object"),
        (br#"{"port":1}"#, "no \"address\""),
        (br#"{"address":"h"}"#, "no numeric \"port\""),
        (br#"{"address":"h","port":70000}"#, "not in 1..=65535"),
        (br#"{"name":"other","address":"h","port":1}"#, "differs from the application"),
        (
            br#"{"address":"h","port":1,"metadata":{"dubbo.endpoints":"[{\"protocol\":\"tri\"}]"}}"#,
            "dubbo.endpoints",
        ),
    ] {
        let e = parse_app_instance("app", json).unwrap_err();
        assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(json));
    }
}

#[test]
fn mappings_and_names() {
    assert_eq!(parse_mapping(b"a, b,,c "), vec!["a", "b", "c"]);
    assert!(parse_mapping(b"").is_empty());
    assert_eq!(port_name("dubbo"), "dubbo");
    assert_eq!(port_name("Rest+HTTP"), "rest-http");
    assert_eq!(port_name(""), "dubbo");
    assert!(is_label("side", "provider"));
    assert!(!is_label("methods", "a,b"));
    assert!(!is_label("timestamp", "1690000000000"), "volatile");
}
