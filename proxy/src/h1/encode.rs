//! Message heads and body framing on the wire (RFC 9112).

use super::*;

/// Encodes the request line and header fields (RFC 9112 §3, §5).
pub(super) fn encode_head(
    buf: &mut Vec<u8>,
    head: &RequestHead<'_>,
    authority: &str,
    framing: Framing,
) {
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    if head.path_and_query.is_empty() {
        buf.push(b'/');
    } else {
        buf.extend_from_slice(head.path_and_query.as_bytes());
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let overridden = |name: &[u8]| {
        head.overrides
            .iter()
            .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
    };
    let mut host = match head.headers {
        Fields::Map(headers) => {
            let mut host = false;
            for (name, value) in headers {
                if name == header::CONTENT_LENGTH
                    || name == header::TRANSFER_ENCODING
                    || overridden(name.as_str().as_bytes())
                {
                    continue;
                }
                host |= name == header::HOST;
                push_field(buf, name, value);
            }
            host
        }
        Fields::Received(fields) => fields.encode(buf, |name| !overridden(name)),
    };
    for (name, value) in head.overrides {
        host |= name == header::HOST;
        push_field(buf, name, value);
    }
    if !host {
        buf.extend_from_slice(b"host: ");
        buf.extend_from_slice(authority.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    push_framing(buf, framing);
    buf.extend_from_slice(b"\r\n");
}

/// The framing field for `framing`: `content-length` or
/// `transfer-encoding: chunked` (none for an empty or close-delimited
/// body).
pub(super) fn push_framing(buf: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Empty | Framing::Close => {}
        Framing::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            push_dec(buf, n);
            buf.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// The trailer fields the request's `trailer` field declares (RFC 9110
/// §6.6.2), as hyper sends them.
pub(super) fn encode_trailers(buf: &mut Vec<u8>, headers: &HeaderMap, trailers: &HeaderMap) {
    for declared in headers.get_all(header::TRAILER) {
        let Ok(list) = declared.to_str() else {
            continue;
        };
        for name in list.split(',').map(str::trim) {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in trailers.get_all(&name) {
                push_field(buf, &name, value);
            }
        }
    }
}

pub(super) fn push_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// `n` in decimal (a `content-length`).
pub(super) fn push_dec(buf: &mut Vec<u8>, n: u64) {
    push_digits::<10>(buf, n);
}

/// `n` in lowercase hexadecimal (a chunk size).
pub(super) fn push_hex(buf: &mut Vec<u8>, n: u64) {
    push_digits::<16>(buf, n);
}

fn push_digits<const RADIX: u64>(buf: &mut Vec<u8>, mut n: u64) {
    // 20 digits hold u64::MAX in decimal, so any radix from 10 up.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % RADIX) as usize];
        n /= RADIX;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}
