//! Message heads kept as they arrived: an upstream's response head
//! ([`UpstreamHead`]) and a downstream's request fields
//! ([`RequestFields`]), so that a proxied HTTP/1.1 message is written on
//! from the bytes read instead of through an `http::HeaderMap` built only
//! to be iterated again.

use super::*;

/// The header fields of an upstream's final response head, as received:
/// the head's bytes and where each field's name and value lie in them
/// (offsets from httparse, which has already checked every name against
/// RFC 9110's `token` and every value against `field-value`, the same
/// rules as `HeaderName` and `HeaderValue`).
///
/// A field is **passed on** unless it is hop-by-hop (RFC 9110 §7.6.1:
/// the fixed list [`crate::http::HOP_BY_HOP`], `te` other than
/// `trailers`, and the fields that `connection` names) or a
/// `content-length` of a response that has a body: the receiving side
/// frames the body itself. A bodiless response's `content-length` (one to
/// HEAD, 204, 304) is passed on as it came, since it describes the body
/// the client did not ask for.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHead {
    bytes: Bytes,
    /// `[name start, name end, value start, value end]` in `bytes`, per
    /// field line in order. Offsets fit: a head is at most [`MAX_HEAD`].
    fields: Vec<[u32; 4]>,
    /// Bit i: `fields[i]` is hop-by-hop.
    hop: u128,
    /// Bit i: `fields[i]` is a `content-length`.
    length: u128,
    /// Index of the last `transfer-encoding` field line.
    last_te: Option<usize>,
    /// A `connection` field has the `close` option.
    pub(super) close: bool,
    /// A `date` field is passed on.
    date: bool,
    /// The response has no body (RFC 9112 §6.3 rule 1): its
    /// `content-length` is passed on.
    pub(super) bodiless: bool,
}

/// Where each of httparse's `fields` (slices of `buf`) lies in `buf`:
/// `[name start, name end, value start, value end]`, so that the fields
/// can be found in the head once it is split off and frozen.
pub(super) fn offsets(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<[u32; 4]> {
    let base = buf.as_ptr() as usize;
    // Within a head of at most MAX_HEAD bytes every offset fits in u32;
    // were one not to, `field` finds it out of range and yields nothing.
    let at = |p: *const u8, len: usize| {
        let start = (p as usize).wrapping_sub(base);
        [start, start.wrapping_add(len)].map(|x| u32::try_from(x).unwrap_or(u32::MAX))
    };
    fields
        .iter()
        .map(|h| {
            let [ns, ne] = at(h.name.as_ptr(), h.name.len());
            let [vs, ve] = at(h.value.as_ptr(), h.value.len());
            [ns, ne, vs, ve]
        })
        .collect()
}

/// The name and value at `at` in `bytes` (empty when the offsets are not
/// within it, which httparse's slices always are).
fn field<'a>(bytes: &'a [u8], at: &[u32; 4]) -> (&'a [u8], &'a [u8]) {
    let [ns, ne, vs, ve] = at.map(|x| x as usize);
    (
        bytes.get(ns..ne).unwrap_or_default(),
        bytes.get(vs..ve).unwrap_or_default(),
    )
}

/// The fields (a bit each) that a `connection` field among `fields` names.
fn connection_named(bytes: &[u8], fields: &[[u32; 4]]) -> u128 {
    let mut m = 0u128;
    for c in fields {
        let (name, value) = field(bytes, c);
        if !name.eq_ignore_ascii_case(b"connection") {
            continue;
        }
        let v = std::str::from_utf8(value).unwrap_or_default();
        for token in crate::http::connection_names(v) {
            for (i, at) in fields.iter().enumerate() {
                if field(bytes, at).0.eq_ignore_ascii_case(token.as_bytes()) {
                    m |= 1 << i;
                }
            }
        }
    }
    m
}

// Bit masks hold one bit per field.
const _: () = assert!(MAX_HEADERS <= 128);

impl UpstreamHead {
    /// The head `bytes` with fields at `fields` (from [`offsets`], at most
    /// [`MAX_HEADERS`], within `bytes`), classified once.
    pub(super) fn new(bytes: Bytes, fields: Vec<[u32; 4]>) -> UpstreamHead {
        let mut h = UpstreamHead::default();
        let mut named = false;
        for (i, at) in fields.iter().enumerate() {
            let (name, value) = field(&bytes, at);
            let bit = 1u128 << i;
            if name.eq_ignore_ascii_case(b"content-length") {
                h.length |= bit;
            } else if name.eq_ignore_ascii_case(b"date") {
                h.date = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                h.hop |= bit;
                let v = std::str::from_utf8(value).unwrap_or_default();
                h.close |= token_list_has(v, "close");
                named |= crate::http::connection_names(v).next().is_some();
            } else if name.eq_ignore_ascii_case(b"te") {
                if value != b"trailers" {
                    h.hop |= bit;
                }
            } else if crate::http::HOP_BY_HOP
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
            {
                h.hop |= bit;
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    h.last_te = Some(i);
                }
            }
        }
        if named {
            // Rare: the usual options, `keep-alive` and `close`, name no
            // field.
            let m = connection_named(&bytes, &fields);
            h.hop |= m;
            h.length &= !m;
            h.date = fields.iter().enumerate().any(|(i, at)| {
                h.hop & (1 << i) == 0 && field(&bytes, at).0.eq_ignore_ascii_case(b"date")
            });
        }
        h.bytes = bytes;
        h.fields = fields;
        h
    }

    /// Field `i`'s name and value.
    fn field(&self, i: usize) -> (&[u8], &[u8]) {
        field(&self.bytes, &self.fields[i])
    }

    /// Whether the response carries `transfer-encoding`.
    pub(super) fn has_transfer_encoding(&self) -> bool {
        self.last_te.is_some()
    }

    /// Whether it carries `content-length`.
    pub(super) fn has_content_length(&self) -> bool {
        self.length != 0
    }

    /// Whether chunked is the final transfer coding (RFC 9112 §6.3 rule
    /// 4): the last token of the last `transfer-encoding` field line.
    pub(super) fn is_chunked(&self) -> bool {
        self.last_te.is_some_and(|i| {
            std::str::from_utf8(self.field(i).1)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    /// The `content-length` value ([`parse_content_length`]).
    pub(super) fn content_length(&self) -> Result<Option<u64>, Error> {
        parse_content_length(self.masked(self.length).map(|(_, v)| v))
    }

    /// The fields whose bit is set in `mask`.
    fn masked(&self, mask: u128) -> impl Iterator<Item = (&[u8], &[u8])> {
        (0..self.fields.len())
            .filter(move |i| mask & (1 << i) != 0)
            .map(|i| self.field(i))
    }

    /// The fields passed on (see the type's doc), in order, as name and
    /// value bytes (names in the upstream's case).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let skip = if self.bodiless {
            self.hop
        } else {
            self.hop | self.length
        };
        self.masked(!skip)
    }

    /// The fields named `name` (ASCII case-insensitive), a bit each.
    fn named(&self, name: &[u8]) -> u128 {
        (0..self.fields.len())
            .filter(|&i| self.field(i).0.eq_ignore_ascii_case(name))
            .fold(0, |m, i| m | 1 << i)
    }

    /// Whether a `date` field is passed on.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Appends the fields passed on to `buf`, `name: value` and CRLF each
    /// (RFC 9112 §5).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            buf.extend_from_slice(name);
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
    }

    /// Appends the fields passed on to `map` (lowercased names, values
    /// sharing the head's memory), for a downstream that takes a
    /// `HeaderMap` (hyper's server). A field that does not convert (which
    /// httparse's checks rule out) is left out.
    pub fn append_to(&self, map: &mut HeaderMap) {
        let skip = if self.bodiless {
            self.hop
        } else {
            self.hop | self.length
        };
        self.append_masked(map, !skip);
    }

    /// Appends the fields whose bit is set in `mask` to `map`.
    fn append_masked(&self, map: &mut HeaderMap, mask: u128) {
        map.reserve(self.fields.len());
        for i in (0..self.fields.len()).filter(|i| mask & (1 << i) != 0) {
            let [ns, ne, vs, ve] = self.fields[i].map(|x| x as usize);
            let Some(name) = self.bytes.get(ns..ne) else {
                continue;
            };
            let (Ok(name), Some(_)) = (HeaderName::from_bytes(name), self.bytes.get(vs..ve)) else {
                continue;
            };
            if let Ok(value) = HeaderValue::from_maybe_shared(self.bytes.slice(vs..ve)) {
                map.append(name, value);
            }
        }
    }
}

/// A downstream HTTP/1.1 request's header fields as [`server`] read
/// them, edited by forwarding and written to an HTTP/1.1 upstream without
/// an `http::HeaderMap`: the fields received (classified once as
/// [`UpstreamHead`] classifies a response's), the ones removed, and the
/// ones added after them.
///
/// What is **looked up** ([`RequestFields::get`], what route matching and
/// hashing see) is every field received and not removed, hop-by-hop ones
/// included, then the added ones: what the request's `HeaderMap` would
/// hold. What is **forwarded** ([`RequestFields::encode`]) leaves out
/// besides the hop-by-hop fields (RFC 9110 §7.6.1, with those that
/// `connection` names) and `content-length`, which the body's framing
/// replaces.
#[derive(Debug, Clone, Default)]
pub struct RequestFields {
    received: UpstreamHead,
    /// Bit i: received field i is removed.
    removed: u128,
    /// Fields after the received ones, in order.
    added: Vec<(HeaderName, HeaderValue)>,
}

impl RequestFields {
    /// The head `bytes` with fields at `fields` (from [`offsets`], at most
    /// [`MAX_HEADERS`], within `bytes`).
    pub(super) fn new(bytes: Bytes, fields: Vec<[u32; 4]>) -> RequestFields {
        RequestFields {
            received: UpstreamHead::new(bytes, fields),
            removed: 0,
            added: Vec::new(),
        }
    }

    /// The fields of the request head `raw` (for tests elsewhere in the
    /// crate); `None` unless it is one whole head.
    #[cfg(test)]
    pub(crate) fn parse(raw: &[u8]) -> Option<RequestFields> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let Ok(httparse::Status::Complete(_)) = req.parse(raw) else {
            return None;
        };
        let fields = offsets(raw, req.headers);
        Some(RequestFields::new(Bytes::copy_from_slice(raw), fields))
    }

    /// The fields looked up (see the type's doc), in order, as name and
    /// value bytes (received names in the client's case).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.received.masked(!self.removed).chain(
            self.added
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }

    /// The values of the fields named `name` (ASCII case-insensitive), in
    /// order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of the field `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.removed |= self.received.named(name.as_bytes());
        self.added.retain(|(n, _)| n != name);
    }

    /// Adds a field after the others.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.added.push((name, value));
    }

    /// Whether a `content-length` is declared (and not removed): an empty
    /// body is then sent with `content-length: 0`.
    pub(super) fn has_content_length(&self) -> bool {
        self.received.length & !self.removed != 0
            || self.added.iter().any(|(n, _)| n == header::CONTENT_LENGTH)
    }

    /// The fields looked up, as a `HeaderMap` (lowercased names, received
    /// values sharing the head's memory): for an upstream reached through
    /// hyper (HTTP/2). A field that does not convert (which httparse's
    /// checks rule out) is left out.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.received.fields.len() + self.added.len());
        self.received.append_masked(&mut map, !self.removed);
        for (n, v) in &self.added {
            map.append(n.clone(), v.clone());
        }
        map
    }

    /// Appends the fields forwarded (see the type's doc) whose names
    /// `keep` accepts to `buf`, `name: value` and CRLF each (RFC 9112
    /// §5); whether a `host` was among them.
    pub(super) fn encode(&self, buf: &mut Vec<u8>, keep: impl Fn(&[u8]) -> bool) -> bool {
        let skip = self.removed | self.received.hop | self.received.length;
        let mut host = false;
        let added = self
            .added
            .iter()
            .filter(|(n, _)| *n != header::CONTENT_LENGTH && !crate::http::HOP_BY_HOP.contains(n));
        let added = added.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        for (name, value) in self.received.masked(!skip).chain(added) {
            if !keep(name) {
                continue;
            }
            host |= name.eq_ignore_ascii_case(b"host");
            buf.extend_from_slice(name);
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> UpstreamHead {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(_)) = resp.parse(raw) else {
            panic!("not a head: {raw:?}");
        };
        let fields = offsets(raw, resp.headers);
        UpstreamHead::new(Bytes::copy_from_slice(raw), fields)
    }

    fn passed(h: &UpstreamHead) -> Vec<String> {
        h.fields()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_and_framing_fields_are_not_passed_on() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Secret\r\n\
              Keep-Alive: timeout=5\r\nX-Secret: 1\r\nTransfer-Encoding: gzip, chunked\r\n\
              Content-Length: 3\r\nTE: trailers\r\nte: deflate\r\nUpgrade: h2c\r\n\
              Proxy-Connection: x\r\nProxy-Authorization: y\r\nX-A: b\r\nx-a: c\r\n\r\n",
        );
        assert_eq!(passed(&h), ["Server=up", "TE=trailers", "X-A=b", "x-a=c"]);
        assert!(h.is_chunked() && h.has_transfer_encoding() && h.has_content_length());
        assert!(!h.close && !h.has_date());
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf, b"Server: up\r\nTE: trailers\r\nX-A: b\r\nx-a: c\r\n");
        let mut map = HeaderMap::new();
        h.append_to(&mut map);
        assert_eq!(map.len(), 4);
        let xa: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(xa, ["b", "c"]);
    }

    #[test]
    fn content_length_passes_only_without_a_body() {
        let mut h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nDate: now\r\n\r\n");
        assert_eq!(h.content_length().unwrap(), Some(10));
        assert_eq!(passed(&h), ["Date=now"]);
        assert!(h.has_date());
        h.bodiless = true;
        assert_eq!(passed(&h), ["content-length=10", "Date=now"]);
    }

    #[test]
    fn close_chunked_and_named_fields_are_read_from_the_raw_fields() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nconnection: Close\r\nConnection: date\r\nDate: x\r\n\
              transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
        );
        assert!(h.close);
        // The last transfer coding of the last line decides.
        assert!(!h.is_chunked());
        assert!(!h.has_date());
        assert!(passed(&h).is_empty());
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n");
        assert!(matches!(
            h.content_length(),
            Err(Error::InvalidContentLength)
        ));
    }

    #[test]
    fn request_fields_look_up_all_and_forward_the_end_to_end_ones() {
        let mut f = RequestFields::parse(
            b"POST /x HTTP/1.1\r\nHost: up\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: 1\r\nTE: trailers\r\nte: gzip\r\nX-A: b\r\nContent-Length: 1\r\n\
              Keep-Alive: 5\r\nx-a: c\r\nX-Gone: 1\r\n\r\n",
        )
        .unwrap();
        // Lookups see what a map would hold, hop-by-hop fields included.
        assert_eq!(f.get("x-secret"), Some(&b"1"[..]));
        assert_eq!(f.get("HOST"), Some(&b"up"[..]));
        let xa: Vec<_> = f.get_all("x-a").collect();
        assert_eq!(xa, [&b"b"[..], b"c"]);
        assert!(f.has_content_length());
        f.remove("x-gone");
        assert_eq!(f.get("x-gone"), None);
        f.append(header::HOST, HeaderValue::from_static("other"));
        f.remove("host");
        f.append(header::HOST, HeaderValue::from_static("rewritten"));
        f.append(header::CONNECTION, HeaderValue::from_static("close"));
        // Forwarded: no hop-by-hop, no content-length, added ones last;
        // `keep` leaves out the caller's overrides.
        let mut buf = Vec::new();
        let host = f.encode(&mut buf, |n| !n.eq_ignore_ascii_case(b"x-a"));
        assert!(host);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "TE: trailers\r\nhost: rewritten\r\n"
        );
        let map = f.to_map();
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        assert_eq!(map["host"], "rewritten");
        assert_eq!(map["x-secret"], "1");
        assert!(!map.contains_key("x-gone"));
        f.remove("content-length");
        assert!(!f.has_content_length());
    }
}
