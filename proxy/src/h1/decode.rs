//! Response heads, framing and body decoding (RFC 9112 §4, §6, §7).

use super::*;

/// A parsed final response head.
#[derive(Debug)]
pub(super) struct ParsedHead {
    pub(super) status: StatusCode,
    /// HTTP/1.1 (else HTTP/1.0).
    pub(super) http11: bool,
    /// The fields, as received.
    pub(super) head: UpstreamHead,
}

/// Reads until a final (non-1xx) response head is parsed; interim 1xx
/// responses are consumed and skipped. `started` becomes true once any
/// byte was read.
pub(super) async fn read_head(conn: &mut Conn, started: &mut bool) -> Result<ParsedHead, Error> {
    loop {
        if !conn.rbuf.is_empty() {
            if let Some(head) = parse_head(&mut conn.rbuf)? {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Upgrade);
                }
                if !head.status.is_informational() {
                    return Ok(head);
                }
                continue;
            }
        }
        let n = conn.read().await.map_err(Error::Read)?;
        if n == 0 {
            return Err(if *started {
                Error::IncompleteHead
            } else {
                Error::ClosedBeforeResponse
            });
        }
        *started = true;
    }
}

/// Parses a response head at the start of `buf` (RFC 9112 §4, §5) and
/// consumes it; `Ok(None)` when it is not complete yet. The fields stay
/// in the head's bytes ([`UpstreamHead`]; no copy, no map). A 1xx head is
/// returned without fields.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, Error> {
    let (len, code, http11, fields) = {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HEAD {
                    return Err(Error::HeadTooLarge);
                }
                let code = resp.code.unwrap_or(0);
                // A 1xx head's fields are not kept (it is skipped).
                let fields = if (100..200).contains(&code) {
                    Vec::new()
                } else {
                    head::offsets(buf, resp.headers)
                };
                (len, code, resp.version == Some(1), fields)
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Parse(e)),
        }
    };
    let bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code))?;
    Ok(Some(ParsedHead {
        status,
        http11,
        head: UpstreamHead::new(bytes, fields),
    }))
}

/// How a message body is delimited (RFC 9112 §6.3): as a response is
/// read from an upstream, and as a message is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (and, written, no framing field).
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// Chunked coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// The response's body framing (RFC 9112 §6.3) and whether its
/// connection may be reused. Its `content-length`, checked here, is not
/// passed on unless the response is bodiless ([`UpstreamHead`]): the
/// downstream side frames the body by its size.
///
/// # Errors
/// [`Error::Upgrade`] for a 2xx to CONNECT; [`Error::InvalidContentLength`].
pub(super) fn response_framing(
    req: &RequestHead<'_>,
    resp: &mut ParsedHead,
) -> Result<(Framing, bool), Error> {
    let h = &mut resp.head;
    let mut reusable = resp.http11 && !h.close;
    let status = resp.status;
    if *req.method == Method::CONNECT && status.is_success() {
        return Err(Error::Upgrade);
    }
    if bodiless(*req.method == Method::HEAD, status) {
        h.bodiless = true;
        return Ok((Framing::Empty, reusable));
    }
    if h.has_transfer_encoding() {
        if h.has_content_length() {
            // Rule 3: possibly a smuggling attempt; never reuse.
            reusable = false;
        }
        return Ok(if h.is_chunked() {
            (Framing::Chunked, reusable)
        } else {
            (Framing::Close, false)
        });
    }
    let Some(len) = h.content_length()? else {
        return Ok((Framing::Close, false));
    };
    Ok((
        if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        },
        reusable,
    ))
}

/// Whether a response has no body whatever its fields say (RFC 9112
/// §6.3 rule 1): one to HEAD, a 1xx, a 204 or a 304.
pub(super) fn bodiless(head_request: bool, status: StatusCode) -> bool {
    head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The `content-length` value from the raw values of its field lines:
/// every field line and list member must be the same decimal number
/// (RFC 9110 §8.6, RFC 9112 §6.3 rule 5).
pub(super) fn parse_content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, Error> {
    let mut len = None;
    for v in values {
        let s = std::str::from_utf8(v).map_err(|_| Error::InvalidContentLength)?;
        for part in s.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::InvalidContentLength);
            }
            let n: u64 = part.parse().map_err(|_| Error::InvalidContentLength)?;
            if len.is_some_and(|l| l != n) {
                return Err(Error::InvalidContentLength);
            }
            len = Some(n);
        }
    }
    Ok(len)
}

pub(super) fn has_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| token_list_has(v, "close")))
}

pub(super) fn token_list_has(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What a decoder produced from the buffered bytes.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The chunked body's trailer section (then the body has ended).
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// A body decoder for one framing; plain functions over the read buffer.
#[derive(Debug)]
pub(super) enum Decoder {
    /// Bytes of a `content-length` body not yet produced.
    Length(u64),
    /// Chunked coding.
    Chunked(ChunkedDecoder),
    /// Until EOF.
    Close,
}

impl Decoder {
    /// Takes what it can from `buf` (body bytes are split off, not copied).
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(rem) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(split_at_most(buf, rem)))
            }
            Decoder::Chunked(c) => c.decode(buf),
            Decoder::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Decoder::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body has ended (nothing more to read for it).
    pub(super) fn is_done(&self) -> bool {
        match self {
            Decoder::Length(rem) => *rem == 0,
            Decoder::Chunked(c) => c.state == ChunkState::Done,
            Decoder::Close => false,
        }
    }

    /// The upstream closed: the end of a close-delimited body, else a
    /// truncated one.
    pub(super) fn on_eof(&self) -> Result<(), Error> {
        match self {
            Decoder::Close => Ok(()),
            _ => Err(Error::BodyTruncated),
        }
    }
}

/// Splits off the first `*rem` bytes of `buf`, or all of it when shorter,
/// and counts them off `rem` (no copy).
fn split_at_most(buf: &mut BytesMut, rem: &mut u64) -> Bytes {
    let n = buf.len().min(usize::try_from(*rem).unwrap_or(usize::MAX));
    *rem -= n as u64;
    buf.split_to(n).freeze()
}

/// Where a chunked decoder is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: expecting the trailer section.
    Trailers,
    /// Ended.
    Done,
}

/// Decodes chunked transfer coding: chunk extensions are ignored;
/// trailer fields (at most [`MAX_HEADERS`], [`MAX_TRAILERS`] bytes) are
/// produced as a [`Decoded::Trailers`], without the fields that must not
/// be trailers (framing, `connection`).
#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    pub(super) state: ChunkState,
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }

    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Error::InvalidChunk("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..nl])?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(rem) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let mut left = rem;
                    let data = split_at_most(buf, &mut left);
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::InvalidChunk("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (n, map) = match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((n, fields))) => {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| Error::InvalidChunk("invalid trailer field"))?;
                                if name == header::CONTENT_LENGTH
                                    || name == header::TRANSFER_ENCODING
                                    || name == header::CONNECTION
                                {
                                    continue;
                                }
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| Error::InvalidChunk("invalid trailer field"))?;
                                map.append(name, value);
                            }
                            (n, map)
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Err(Error::InvalidChunk("trailer section too large"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(_) => return Err(Error::InvalidChunk("malformed trailer section")),
                    };
                    if n > MAX_TRAILERS {
                        return Err(Error::InvalidChunk("trailer section too large"));
                    }
                    buf.advance(n);
                    self.state = ChunkState::Done;
                    return Ok(if map.is_empty() {
                        Decoded::End
                    } else {
                        Decoded::Trailers(map)
                    });
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Parses a chunk-size line without its LF: `1*HEXDIG [BWS ";" ext] CR`.
pub(super) fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(Error::InvalidChunk("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::InvalidChunk("no chunk size"));
    }
    if digits > 16 {
        return Err(Error::InvalidChunk("chunk size too large"));
    }
    let mut size = 0u64;
    for b in &line[..digits] {
        // `digits` counted hex digits only, so `to_digit` cannot fail.
        size = (size << 4) | u64::from(char::from(*b).to_digit(16).unwrap_or(0));
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count()..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Error::InvalidChunk(
            "invalid character after the chunk size",
        ));
    }
    Ok(size)
}
