//! HTTP/1.1: the upstream client with its per-endpoint connection pool,
//! and the downstream server ([`server`]).
//!
//! [`send`] writes one request to an upstream and reads its response head
//! on the task that calls it; the returned [`ResponseBody`] then reads the
//! body from the same socket, on whatever task polls it (the downstream
//! connection's task, whether [`server`] or hyper's server serves it). So a request costs
//! no task hop, no channel and no connect future when a pooled connection
//! is idle: the socket is read and written directly.
//!
//! **Pool.** Each [`Endpoint`] keeps its idle connections (TCP_NODELAY on)
//! in a LIFO list, at most [`MAX_IDLE_PER_ENDPOINT`]; the newest idle one
//! is used first, and a connection idle for [`IDLE_TIMEOUT`] or longer is
//! dropped when it is met (taken, or found at the bottom when one is put
//! back), or by the sweep [`Endpoint::sweep`] the proxy runs every 15 s,
//! which also closes idle connections the upstream has closed. New
//! connections are dialled within the cluster's connect timeout, to the
//! endpoint's socket address (parsed once, in [`Endpoint::new`]) or, for a
//! DNS name, to each resolved address in turn.
//! A connection goes back to the pool when its response body ended
//! cleanly and the exchange allows reuse: an HTTP/1.1 response without
//! `connection: close`, a request without it, a body framed by length or
//! chunked coding (not by the close), no byte beyond the response. A body
//! dropped before its end closes the connection; so does dropping the
//! future of [`send`] (a timeout).
//!
//! **Stale connections.** An upstream may close an idle keep-alive
//! connection at any moment, so two rules keep that from failing requests:
//! 1. A connection taken from the pool is first checked with a
//!    non-blocking `try_read`: an idle connection that is readable is at
//!    EOF, reset, or carries bytes nobody asked for (a `408` sent before
//!    closing); it is dropped and the next one is taken. Responses are
//!    read through tokio's `AsyncRead`, which marks the socket not
//!    readable after a read that did not fill the buffer, so in steady
//!    state the check makes no system call at all: `try_read` reads only
//!    when the reactor has seen the socket become readable since the last
//!    response. A close the reactor has not seen yet (one that arrived
//!    while the proxy was busy) passes the check and is caught by rule 2.
//!    It is the only rule for a streamed (non-replayable) body.
//! 2. When a reused connection still fails before **any** response byte
//!    was read (EOF, reset, a write error such as `EPIPE`) and the request
//!    body is replayable ([`RequestBody::Replay`]), the request is sent
//!    once more on a fresh connection. This is not a retry in the route's
//!    sense and is not counted as one (as browsers and Go's `net/http` do
//!    for a reused connection that the server had closed).
//!
//! **Request framing.** A replayable body is sent with `content-length`
//! (an empty one with no header for GET, HEAD, DELETE, OPTIONS, TRACE and
//! CONNECT, unless the request declared one); a streamed body with
//! `content-length` when its exact size is known, else with
//! `transfer-encoding: chunked` (request trailers are sent only if the
//! request's `trailer` field names them, as hyper does). Any incoming
//! `content-length` / `transfer-encoding` is replaced. Host is kept; if
//! absent it is the endpoint's `host:port` (RFC 9112 §3.2). The head and a
//! body of up to 16 KiB go out in one write.
//!
//! **Response framing** follows RFC 9112 §6.3: no body for a HEAD
//! request, 1xx, 204 and 304; chunked coding when it is the final transfer
//! coding (chunk extensions are ignored, trailers are delivered as an
//! `http_body` trailers frame); another transfer coding, or none and no
//! `content-length`, is read until the upstream closes (not reusable); a
//! `content-length` that is invalid or has conflicting values is an error;
//! with both `transfer-encoding` and `content-length` the length is
//! removed and the connection is not reused. Interim 1xx responses
//! (`100 Continue`, `103 Early Hints`) are skipped; `101 Switching
//! Protocols` (and a 2xx to CONNECT) is an error: upgrades are not
//! supported (`forward` strips `upgrade` as hop-by-hop anyway).
//!
//! **Not supported:** pipelining; upgrades; a full-duplex exchange over
//! HTTP/1.1 (the request body is written to its end before the response
//! is read, so an upstream that answers while still receiving a large
//! body waits for it; HTTP/2 upstreams have no such limit); HTTP/1.0
//! keep-alive (an HTTP/1.0 response is never reused).
//!
//! **Layout:** this file holds the exchange ([`send`]), its request types
//! and the body writer both directions share; `pool` the [`Endpoint`], its
//! idle connections and the connection type both directions use; `encode`
//! heads and body framing; `decode` the response head, framing and body
//! decoders; `head` the [`UpstreamHead`] and the [`RequestFields`] (a
//! response's and a downstream request's field lines kept as offsets into
//! the bytes read, classified once); `body` the
//! [`ResponseBody`]; [`server`] the downstream side.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most idle connections kept per endpoint; a connection put back to a
/// full pool is closed.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// A pooled connection idle this long (or longer) is closed when met.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head (status line and header fields), in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head or a trailer section.
pub const MAX_HEADERS: usize = 100;
/// Largest trailer section of a chunked response, in bytes.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Largest chunk-size line (with its extensions), in bytes.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// A read is made with at least this much free buffer space (bytes)...
const MIN_READ_SPACE: usize = 4 * 1024;
/// ...growing the buffer by this much when it has less.
const READ_RESERVE: usize = 16 * 1024;
/// Request bodies up to this size (bytes) are copied after the head and
/// written with it in one call.
const COALESCE_BODY: usize = 16 * 1024;
/// A connection's write buffer above this capacity (bytes) is freed
/// before it is pooled, so one large head does not stay allocated.
const MAX_POOLED_WBUF: usize = 64 * 1024;

/// A boxed error, as hyper takes for body errors.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why an HTTP/1.1 exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint's DNS name did not resolve to any address.
    #[error("resolving the endpoint's name: {0} (check its DNS name)")]
    Resolve(io::Error),
    /// The TCP connection could not be made (refused, unreachable).
    #[error("connecting: {0} (is the endpoint up and listening?)")]
    Connect(io::Error),
    /// The TCP connection was not made within the cluster's connect timeout.
    #[error("connect timeout after {} ms (is the endpoint reachable?)", .0.as_millis())]
    ConnectTimeout(Duration),
    /// Writing the request failed (the upstream closed or reset the connection).
    #[error("writing the request: {0}")]
    Write(io::Error),
    /// Reading the response failed (typically a reset).
    #[error("reading the response: {0}")]
    Read(io::Error),
    /// The upstream closed the connection without sending a byte of response.
    #[error("the upstream closed the connection before responding")]
    ClosedBeforeResponse,
    /// The upstream closed the connection before the end of the response head.
    #[error("the upstream closed the connection in the middle of the response head")]
    IncompleteHead,
    /// The response head is not HTTP/1.x (RFC 9112 §4, §5), or has more
    /// than [`MAX_HEADERS`] fields.
    #[error("malformed response head: {0} (is the endpoint an HTTP/1.1 server?)")]
    Parse(httparse::Error),
    /// The response head is larger than [`MAX_HEAD`] bytes.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The status code is outside 100–999.
    #[error("invalid response status code {0}")]
    InvalidStatus(u16),
    /// The upstream switched protocols (101, or 2xx to CONNECT): upgrades
    /// are not supported.
    #[error("the upstream switched protocols (upgrades are not supported)")]
    Upgrade,
    /// `content-length` is not a decimal number, or has conflicting values
    /// (RFC 9112 §6.3, rule 5).
    #[error("invalid or conflicting content-length in the response")]
    InvalidContentLength,
    /// The chunked response body is malformed (RFC 9112 §7.1).
    #[error("malformed chunked response body: {0}")]
    InvalidChunk(&'static str),
    /// The upstream closed the connection before the end of a response
    /// body framed by length or chunked coding.
    #[error("the upstream closed the connection before the end of the response body")]
    BodyTruncated,
    /// Reading the request body from downstream failed.
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
    /// The streamed request body's length differs from its declared
    /// `content-length`.
    #[error("the request body's length differs from its content-length")]
    RequestBodyLength,
}

impl Error {
    /// Whether no connection could be made (resolve, connect, connect
    /// timeout): nothing reached the upstream, so any request may be
    /// retried elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Resolve(_) | Error::Connect(_) | Error::ConnectTimeout(_)
        )
    }

    /// Whether a reused connection that failed this way may simply have
    /// been closed by the upstream while idle (when no response byte was
    /// read).
    fn is_stale(&self) -> bool {
        matches!(
            self,
            Error::Write(_) | Error::Read(_) | Error::ClosedBeforeResponse
        )
    }
}

mod body;
mod decode;
mod encode;
mod head;
mod pool;
pub mod server;

pub use body::ResponseBody;
use decode::*;
use encode::*;
pub use head::{RequestFields, UpstreamHead};
pub use pool::Endpoint;
use pool::*;

/// The head of a request to send (borrowed: the caller keeps it for a
/// retry).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request target in origin form (`/path?query`, RFC 9112 §3.2.1).
    pub path_and_query: &'a str,
    /// Header fields; `content-length` and `transfer-encoding` are
    /// replaced by the body's framing.
    pub headers: Fields<'a>,
    /// Fields written after `headers`, replacing any of the same name
    /// there (e.g. `x-meshreg-port`).
    pub overrides: &'a [(HeaderName, HeaderValue)],
}

/// A request's header fields, as the caller holds them.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// A map; hop-by-hop fields in it are the caller's business (they
    /// are written).
    Map(&'a HeaderMap),
    /// As [`server`] read them: written as [`RequestFields`] forwards
    /// them (hop-by-hop fields left out).
    Received(&'a RequestFields),
}

impl RequestHead<'_> {
    /// Whether the request asks to close the connection after it.
    fn wants_close(&self) -> bool {
        // A received `connection` is hop-by-hop: not forwarded.
        matches!(self.headers, Fields::Map(h) if has_close(h))
            || self.overrides.iter().any(|(n, v)| {
                n == header::CONNECTION && v.to_str().is_ok_and(|v| token_list_has(v, "close"))
            })
    }

    /// Whether the fields declare a `content-length`.
    fn has_content_length(&self) -> bool {
        match self.headers {
            Fields::Map(h) => h.contains_key(header::CONTENT_LENGTH),
            Fields::Received(f) => f.has_content_length(),
        }
    }
}

/// A request body.
#[derive(Debug)]
pub enum RequestBody<B = Incoming> {
    /// Buffered: can be sent again (for the stale-connection rule).
    Replay(Bytes),
    /// Streamed from downstream, sent once.
    Stream(B),
}

/// Sends one request to `ep` over a pooled or new connection (dialled
/// within `connect_timeout`) and reads the response head; the body is
/// read as the returned response's body is polled.
///
/// The response has version HTTP/1.1 and an empty `HeaderMap`: the
/// upstream's fields stay in its body ([`ResponseBody::take_head`], an
/// [`UpstreamHead`], which leaves out hop-by-hop fields and the
/// `content-length` of a response with a body);
/// [`ResponseBody::head_into`] moves them into the map.
///
/// # Errors
/// [`Error::is_connect`] ones when no connection could be made; otherwise
/// the connection failed or the response is malformed (see [`Error`]).
/// Dropping the future closes the connection in use.
pub async fn send<B>(
    ep: &Arc<Endpoint>,
    connect_timeout: Duration,
    head: &RequestHead<'_>,
    body: RequestBody<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let body = match body {
        // A stream that has already ended is an empty, replayable body.
        RequestBody::Stream(b) if b.is_end_stream() => RequestBody::Replay(Bytes::new()),
        b => b,
    };
    let (mut conn, mut reused) = match ep.checkout() {
        Some(c) => (c, true),
        None => (ep.connect(connect_timeout).await?, false),
    };
    let mut resp = match body {
        RequestBody::Replay(bytes) => loop {
            let mut started = false;
            match exchange_replay(&mut conn, head, &ep.authority, &bytes, &mut started).await {
                Err(e) if reused && !started && e.is_stale() => {
                    tracing::debug!(
                        endpoint = %ep.authority,
                        error = %e,
                        "pooled connection was closed; resending on a new one"
                    );
                    conn = ep.connect(connect_timeout).await?;
                    reused = false;
                }
                r => break r?,
            }
        },
        RequestBody::Stream(b) => {
            write_stream(&mut conn, head, &ep.authority, b).await?;
            read_head(&mut conn, &mut false).await?
        }
    };
    let (framing, reusable) = response_framing(head, &mut resp)?;
    let reusable = reusable && !head.wants_close();
    let body = ResponseBody::new(conn, ep, framing, reusable, resp.head);
    let mut r = Response::new(body);
    *r.status_mut() = resp.status;
    *r.version_mut() = Version::HTTP_11;
    Ok(r)
}

/// Writes the request with a buffered body and reads the final response
/// head; `started` tells whether any response byte was read.
async fn exchange_replay(
    conn: &mut Conn,
    head: &RequestHead<'_>,
    authority: &str,
    body: &Bytes,
    started: &mut bool,
) -> Result<ParsedHead, Error> {
    let framing = if body.is_empty()
        && !head.has_content_length()
        && matches!(
            *head.method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
                | Method::CONNECT
        ) {
        Framing::Empty
    } else {
        Framing::Length(body.len() as u64)
    };
    conn.wbuf.clear();
    encode_head(&mut conn.wbuf, head, authority, framing);
    if body.len() <= COALESCE_BODY {
        conn.wbuf.extend_from_slice(body);
        conn.flush().await.map_err(Error::Write)?;
    } else {
        conn.write_through(body).await.map_err(Error::Write)?;
    }
    read_head(conn, started).await
}

/// Writes the request with a streamed body, framed by its exact size
/// when known, else chunked.
async fn write_stream<B>(
    conn: &mut Conn,
    head: &RequestHead<'_>,
    authority: &str,
    body: B,
) -> Result<(), Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let framing = match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    conn.wbuf.clear();
    encode_head(&mut conn.wbuf, head, authority, framing);
    // Trailers are declared in a map's `trailer` field: a streamed body
    // comes from hyper's server, whose requests carry a map.
    let empty = HeaderMap::new();
    let declared = match head.headers {
        Fields::Map(h) => h,
        Fields::Received(_) => &empty,
    };
    write_body(conn, framing, declared, body)
        .await
        .map_err(|e| match e {
            WriteError::Io(e) => Error::Write(e),
            WriteError::Body(e) => Error::RequestBody(e),
            WriteError::Length => Error::RequestBodyLength,
        })
}

/// Why writing a message body failed.
#[derive(Debug)]
enum WriteError {
    /// Writing to the socket.
    Io(io::Error),
    /// The body's own error (reading it from its source).
    Body(BoxError),
    /// The body's length differs from the `content-length` written.
    Length,
}

/// Writes `body` after the head already in `conn.wbuf`, framed by
/// `framing` (RFC 9112 §6, §7.1), coalescing the head and the frames
/// already available into one write: it waits for the body (after
/// writing what is buffered) only when no frame is ready. A chunked body
/// ends with the trailers that `headers`' `trailer` field declares
/// ([`encode_trailers`]); `Framing::Empty` writes the head alone.
async fn write_body<B>(
    conn: &mut Conn,
    framing: Framing,
    headers: &HeaderMap,
    mut body: B,
) -> Result<(), WriteError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut sent = 0u64;
    let mut trailers = None;
    while framing != Framing::Empty && !body.is_end_stream() {
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                conn.flush().await.map_err(WriteError::Io)?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| WriteError::Body(e.into()))?;
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Framing::Length(n) if sent > n => return Err(WriteError::Length),
            Framing::Chunked => {
                push_hex(&mut conn.wbuf, data.len() as u64);
                conn.wbuf.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        if conn.wbuf.len() + data.len() <= COALESCE_BODY {
            conn.wbuf.extend_from_slice(&data);
        } else {
            conn.write_through(&data).await.map_err(WriteError::Io)?;
        }
        match framing {
            Framing::Chunked => conn.wbuf.extend_from_slice(b"\r\n"),
            // All that was declared is there: the body is complete on the
            // wire, whether or not the stream has said so yet.
            Framing::Length(n) if sent == n => break,
            _ => {}
        }
    }
    match framing {
        Framing::Length(n) if sent != n => return Err(WriteError::Length),
        Framing::Chunked => {
            conn.wbuf.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                encode_trailers(&mut conn.wbuf, headers, t);
            }
            conn.wbuf.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    conn.flush().await.map_err(WriteError::Io)
}

#[cfg(test)]
mod tests;
