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

/// The fields an HTTP/1.1 request head `raw` came with, as `h1::server`
/// keeps them.
fn received(raw: &str) -> h1::RequestFields {
    h1::RequestFields::parse(raw.as_bytes()).unwrap()
}

#[test]
fn received_fields_get_the_same_forwarded_for_as_a_map() {
    let peer = Peer::new("10.0.0.7:4000".parse().unwrap());
    let mut f = received("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    append_forwarded_for(&mut f, &peer);
    assert_eq!(f.get("x-forwarded-for"), Some(&b"10.0.0.7"[..]));
    assert_eq!(f.get("x-forwarded-proto"), Some(&b"http"[..]));
    let mut f = received(
        "GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.1\r\nx-forwarded-for: 192.0.2.2\r\n\
         X-Forwarded-Proto: https\r\n\r\n",
    );
    append_forwarded_for(&mut f, &peer);
    let xff: Vec<_> = f.get_all("x-forwarded-for").collect();
    assert_eq!(xff, [&b"192.0.2.1, 192.0.2.2, 10.0.0.7"[..]]);
    assert_eq!(f.get("x-forwarded-proto"), Some(&b"https"[..]));
    // The trait's edits: `insert` replaces, `remove` removes every line.
    let fields: &mut dyn HeaderFields = &mut f;
    fields.insert(header::HOST, HeaderValue::from_static("b"));
    fields.remove(&X_FORWARDED_PROTO);
    assert_eq!(fields.value("host"), Some(&b"b"[..]));
    assert_eq!(fields.value("x-forwarded-proto"), None);
    assert_eq!(fields.joined(&header::HOST), Some(b"b".to_vec()));
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
