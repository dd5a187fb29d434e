//! Header handling on the forwarding path.

use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn names(h: &HeaderMap) -> Vec<&str> {
    let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    v.sort_unstable();
    v
}

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
    let mut h = map(&[
        ("host", "a"),
        ("connection", "keep-alive, x-private"),
        ("keep-alive", "timeout=5"),
        ("x-private", "1"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "basic x"),
        ("te", "gzip"),
        ("x-kept", "1"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["host", "x-kept"]);
}

#[test]
fn every_connection_field_line_names_fields_to_strip() {
    let mut h = map(&[
        ("connection", "x-a"),
        ("connection", "Close, X-B, keep-alive"),
        ("x-a", "1"),
        ("x-b", "1"),
        ("content-type", "text/plain"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["content-type"]);
    // The usual response: only `connection: keep-alive` goes.
    let mut h = map(&[("connection", "keep-alive"), ("content-length", "3")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["content-length"]);
}

#[test]
fn te_trailers_passes_and_a_clean_map_is_untouched() {
    let mut h = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["content-type", "te"]);
    // `connection` naming `te` does not remove it either.
    let mut h = map(&[("connection", "te"), ("te", "trailers")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["te"]);
}

#[test]
fn forwarded_for_appends_the_peer_and_keeps_a_given_proto() {
    let peer = Peer::new("10.0.0.7:4000".parse().unwrap());
    let mut h = HeaderMap::new();
    append_forwarded_for(&mut h, &peer);
    assert_eq!(h["x-forwarded-for"], "10.0.0.7");
    assert_eq!(h["x-forwarded-proto"], "http");

    let mut h = map(&[
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-for", "192.0.2.2"),
        ("x-forwarded-proto", "https"),
    ]);
    append_forwarded_for(&mut h, &peer);
    let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, ["192.0.2.1, 192.0.2.2, 10.0.0.7"]);
    assert_eq!(h["x-forwarded-proto"], "https");

    let v6 = Peer::new("[2001:db8::1]:80".parse().unwrap());
    let mut h = map(&[("x-forwarded-for", "")]);
    append_forwarded_for(&mut h, &v6);
    assert_eq!(h["x-forwarded-for"], "2001:db8::1");
}
