//! The HTTP/1.1 upstream client and its per-endpoint connection pool.
//!
//! [`send`] writes one request to an upstream and reads its response head
//! on the task that calls it; the returned [`ResponseBody`] then reads the
//! body from the same socket, on whatever task polls it (hyper's server
//! polls it inside the downstream connection's task). So a request costs
//! no task hop, no channel and no connect future when a pooled connection
//! is idle: the socket is read and written directly.
//!
//! **Pool.** Each [`Endpoint`] keeps its idle connections (TCP_NODELAY on)
//! in a LIFO list, at most [`MAX_IDLE_PER_ENDPOINT`]; the newest idle one
//! is used first, and a connection idle for [`IDLE_TIMEOUT`] or longer is
//! dropped when it is met (taken, or found at the bottom when one is put
//! back). New connections are dialled within the cluster's connect
//! timeout, to the endpoint's socket address (parsed once, in
//! [`Endpoint::new`]) or, for a DNS name, to each resolved address in turn.
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
//!    closing); it is dropped and the next one is taken. This costs no
//!    extra system call in steady state: the read that would otherwise
//!    find the socket empty after the request is written is just made
//!    earlier. It is the only rule for a streamed (non-replayable) body.
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
    /// A response header field's name or value is not valid.
    #[error("invalid response header field")]
    InvalidHeader,
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

/// One upstream endpoint as the HTTP/1.1 client sees it: where to dial and
/// its idle connections. Lives in [`crate::runtime::EndpointState`], so the
/// pool survives configuration updates that keep the endpoint.
#[derive(Debug)]
pub struct Endpoint {
    authority: String,
    addr: Option<SocketAddr>,
    idle: Mutex<IdleList<Conn>>,
}

impl Endpoint {
    /// An endpoint dialled at `authority` (`host:port`, `[v6]:port`): an IP
    /// literal is parsed here, once; a DNS name is resolved per new
    /// connection.
    pub fn new(authority: &str) -> Endpoint {
        Endpoint {
            authority: authority.to_string(),
            addr: authority.parse().ok(),
            idle: Mutex::new(IdleList::default()),
        }
    }

    /// The socket address, when the authority is an IP literal.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Idle pooled connections now (expired ones included until met).
    pub fn idle(&self) -> usize {
        self.lock().items.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is neither expired nor readable
    /// (see the module doc, rule 1).
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            // The guard is a temporary: the lock is not held while checking.
            let conn = self.lock().pop(now)?;
            if conn.is_quiet() {
                return Some(conn);
            }
        }
    }

    /// Puts a connection back (closes it when the pool is full).
    fn put(&self, mut conn: Conn) {
        if conn.wbuf.capacity() > MAX_POOLED_WBUF {
            conn.wbuf = Vec::new();
        }
        let rejected = self.lock().push(conn, Instant::now());
        drop(rejected);
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, Error> {
        let io = tokio::time::timeout(timeout, self.dial())
            .await
            .map_err(|_| Error::ConnectTimeout(timeout))??;
        io.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
        })
    }

    async fn dial(&self) -> Result<TcpStream, Error> {
        if let Some(a) = self.addr {
            return TcpStream::connect(a).await.map_err(Error::Connect);
        }
        let addrs = tokio::net::lookup_host(self.authority.as_str())
            .await
            .map_err(Error::Resolve)?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => Error::Connect(e),
            None => Error::Resolve(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            )),
        })
    }
}

/// Idle items with the time they were put back, newest last (LIFO).
#[derive(Debug)]
struct IdleList<T> {
    items: Vec<(T, Instant)>,
}

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        IdleList { items: Vec::new() }
    }
}

impl<T> IdleList<T> {
    /// The newest item idle for less than [`IDLE_TIMEOUT`] at `now`. When
    /// the newest has expired, all have: they are all dropped.
    fn pop(&mut self, now: Instant) -> Option<T> {
        let (item, since) = self.items.pop()?;
        if now.saturating_duration_since(since) < IDLE_TIMEOUT {
            return Some(item);
        }
        // Rare (a pool left idle for a minute); closing sockets is cheap.
        self.items.clear();
        None
    }

    /// Puts an item back at `now`, first dropping expired items if the
    /// oldest has expired; returns it when the list is full.
    fn push(&mut self, item: T, now: Instant) -> Option<T> {
        if self
            .items
            .first()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT)
        {
            self.items
                .retain(|(_, since)| now.saturating_duration_since(*since) < IDLE_TIMEOUT);
        }
        if self.items.len() >= MAX_IDLE_PER_ENDPOINT {
            return Some(item);
        }
        self.items.push((item, now));
        None
    }
}

/// One upstream connection and its buffers (kept across requests so they
/// are not reallocated).
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request being written.
    wbuf: Vec<u8>,
}

impl Conn {
    /// Whether an idle connection has nothing to read (no EOF, no reset,
    /// no unsolicited bytes).
    fn is_quiet(&self) -> bool {
        let mut b = [0u8; 8];
        matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads what is available into `rbuf`; `Ok(0)` is EOF.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPACE {
            self.rbuf.reserve(READ_RESERVE);
        }
        loop {
            match self.io.try_read_buf(&mut self.rbuf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Writes `wbuf` out and clears it.
    async fn flush(&mut self) -> Result<(), Error> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await.map_err(Error::Write)?;
            self.wbuf.clear();
        }
        Ok(())
    }
}

/// The head of a request to send (borrowed: the caller keeps it for a
/// retry). Hop-by-hop fields are the caller's business.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request target in origin form (`/path?query`, RFC 9112 §3.2.1).
    pub path_and_query: &'a str,
    /// Header fields; `content-length` and `transfer-encoding` are
    /// replaced by the body's framing.
    pub headers: &'a HeaderMap,
    /// Fields written after `headers`, replacing any of the same name
    /// there (e.g. `x-meshreg-port`).
    pub overrides: &'a [(HeaderName, HeaderValue)],
}

impl RequestHead<'_> {
    /// Whether the request asks to close the connection after it.
    fn wants_close(&self) -> bool {
        has_close(self.headers)
            || self.overrides.iter().any(|(n, v)| {
                n == header::CONNECTION && v.to_str().is_ok_and(|v| token_list_has(v, "close"))
            })
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

/// How a request body is framed on the wire (RFC 9112 §6.2, §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// No body and no framing field.
    None,
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Sends one request to `ep` over a pooled or new connection (dialled
/// within `connect_timeout`) and reads the response head; the body is
/// read as the returned response's body is polled.
///
/// The response has version HTTP/1.1 and the upstream's fields as they
/// came, `connection` and `transfer-encoding` included (hop-by-hop
/// stripping is the caller's).
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
    let body = ResponseBody::new(conn, ep, framing, reusable);
    let mut r = Response::new(body);
    *r.status_mut() = resp.status;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = resp.headers;
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
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && matches!(
            *head.method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
                | Method::CONNECT
        ) {
        ReqFraming::None
    } else {
        ReqFraming::Length(body.len() as u64)
    };
    conn.wbuf.clear();
    encode_head(&mut conn.wbuf, head, authority, framing);
    if body.len() <= COALESCE_BODY {
        conn.wbuf.extend_from_slice(body);
        conn.flush().await?;
    } else {
        let mut out = (&conn.wbuf[..]).chain(&body[..]);
        conn.io
            .write_all_buf(&mut out)
            .await
            .map_err(Error::Write)?;
        conn.wbuf.clear();
    }
    read_head(conn, started).await
}

/// Writes the request with a streamed body, coalescing the head and the
/// frames already available into one write.
async fn write_stream<B>(
    conn: &mut Conn,
    head: &RequestHead<'_>,
    authority: &str,
    mut body: B,
) -> Result<(), Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let framing = match body.size_hint().exact() {
        Some(n) => ReqFraming::Length(n),
        None => ReqFraming::Chunked,
    };
    conn.wbuf.clear();
    encode_head(&mut conn.wbuf, head, authority, framing);
    let mut sent = 0u64;
    let mut trailers = None;
    while !body.is_end_stream() {
        // Take what is ready now; wait (after writing what is buffered)
        // only when nothing is.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                conn.flush().await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| Error::RequestBody(e.into()))?;
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
            ReqFraming::Length(n) if sent > n => return Err(Error::RequestBodyLength),
            ReqFraming::Chunked => {
                push_hex(&mut conn.wbuf, data.len() as u64);
                conn.wbuf.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        if conn.wbuf.len() + data.len() <= COALESCE_BODY {
            conn.wbuf.extend_from_slice(&data);
        } else {
            let mut out = (&conn.wbuf[..]).chain(data);
            conn.io
                .write_all_buf(&mut out)
                .await
                .map_err(Error::Write)?;
            conn.wbuf.clear();
        }
        match framing {
            ReqFraming::Chunked => conn.wbuf.extend_from_slice(b"\r\n"),
            // All that was declared is there: the body is complete on the
            // wire, whether or not the stream has said so yet.
            ReqFraming::Length(n) if sent == n => break,
            _ => {}
        }
    }
    match framing {
        ReqFraming::Length(n) if sent != n => return Err(Error::RequestBodyLength),
        ReqFraming::Chunked => {
            conn.wbuf.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                encode_trailers(&mut conn.wbuf, head.headers, t);
            }
            conn.wbuf.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    conn.flush().await
}

/// Encodes the request line and header fields (RFC 9112 §3, §5).
fn encode_head(buf: &mut Vec<u8>, head: &RequestHead<'_>, authority: &str, framing: ReqFraming) {
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    if head.path_and_query.is_empty() {
        buf.push(b'/');
    } else {
        buf.extend_from_slice(head.path_and_query.as_bytes());
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    for (name, value) in head.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || head.overrides.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        host |= name == header::HOST;
        push_field(buf, name, value);
    }
    for (name, value) in head.overrides {
        host |= name == header::HOST;
        push_field(buf, name, value);
    }
    if !host {
        buf.extend_from_slice(b"host: ");
        buf.extend_from_slice(authority.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            push_dec(buf, n);
            buf.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

/// The trailer fields the request's `trailer` field declares (RFC 9110
/// §6.6.2), as hyper sends them.
fn encode_trailers(buf: &mut Vec<u8>, headers: &HeaderMap, trailers: &HeaderMap) {
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

fn push_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn push_dec(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_hex(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// A parsed final response head.
#[derive(Debug)]
struct ParsedHead {
    status: StatusCode,
    /// HTTP/1.1 (else HTTP/1.0).
    http11: bool,
    headers: HeaderMap,
}

/// Reads until a final (non-1xx) response head is parsed; interim 1xx
/// responses are consumed and skipped. `started` becomes true once any
/// byte was read.
async fn read_head(conn: &mut Conn, started: &mut bool) -> Result<ParsedHead, Error> {
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
/// consumes it; `Ok(None)` when it is not complete yet. Field values share
/// the buffer's memory (no copy). A 1xx head is returned without fields.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, Error> {
    // Offsets (name start, name end, value start, value end) of each field
    // in `buf`, so that the fields can be taken from the frozen head.
    let mut at = [[0usize; 4]; MAX_HEADERS];
    let (len, code, http11, count) = {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HEAD {
                    return Err(Error::HeadTooLarge);
                }
                let base = buf.as_ptr() as usize;
                for (slot, h) in at.iter_mut().zip(resp.headers.iter()) {
                    let ns = (h.name.as_ptr() as usize).wrapping_sub(base);
                    let vs = (h.value.as_ptr() as usize).wrapping_sub(base);
                    *slot = [
                        ns,
                        ns.wrapping_add(h.name.len()),
                        vs,
                        vs.wrapping_add(h.value.len()),
                    ];
                }
                (
                    len,
                    resp.code.unwrap_or(0),
                    resp.version == Some(1),
                    resp.headers.len(),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Parse(e)),
        }
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code))?;
    let mut headers = HeaderMap::new();
    if status.is_informational() {
        return Ok(Some(ParsedHead {
            status,
            http11,
            headers,
        }));
    }
    headers.reserve(count);
    for [ns, ne, vs, ve] in at.iter().take(count).copied() {
        // The offsets are within the head (httparse returns slices of its
        // input); `get` keeps a surprise from becoming a panic.
        let name = head.get(ns..ne).ok_or(Error::InvalidHeader)?;
        if head.get(vs..ve).is_none() {
            return Err(Error::InvalidHeader);
        }
        let name = HeaderName::from_bytes(name).map_err(|_| Error::InvalidHeader)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| Error::InvalidHeader)?;
        headers.append(name, value);
    }
    Ok(Some(ParsedHead {
        status,
        http11,
        headers,
    }))
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// Chunked coding.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// The response's body framing (RFC 9112 §6.3) and whether its
/// connection may be reused, normalising `content-length` (one value;
/// removed when `transfer-encoding` is there too).
///
/// # Errors
/// [`Error::Upgrade`] for a 2xx to CONNECT; [`Error::InvalidContentLength`].
fn response_framing(
    req: &RequestHead<'_>,
    resp: &mut ParsedHead,
) -> Result<(Framing, bool), Error> {
    let h = &mut resp.headers;
    let mut reusable = resp.http11 && !has_close(h);
    let status = resp.status;
    if *req.method == Method::CONNECT && status.is_success() {
        return Err(Error::Upgrade);
    }
    if *req.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, reusable));
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.remove(header::CONTENT_LENGTH).is_some() {
            // Rule 3: possibly a smuggling attempt; never reuse.
            reusable = false;
        }
        let chunked = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::Close, false)
        });
    }
    let Some(len) = content_length(h)? else {
        return Ok((Framing::Close, false));
    };
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','))
    {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok((
        if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        },
        reusable,
    ))
}

/// The `content-length` value: every field line and list member must be
/// the same decimal number (RFC 9110 §8.6, RFC 9112 §6.3 rule 5).
fn content_length(h: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut len = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| Error::InvalidContentLength)?;
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

fn has_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| token_list_has(v, "close")))
}

fn token_list_has(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What a decoder produced from the buffered bytes.
#[derive(Debug, PartialEq)]
enum Decoded {
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
enum Decoder {
    /// Bytes of a `content-length` body not yet produced.
    Length(u64),
    /// Chunked coding.
    Chunked(ChunkedDecoder),
    /// Until EOF.
    Close,
}

impl Decoder {
    /// Takes what it can from `buf` (body bytes are split off, not copied).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(rem) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf.len().min(usize::try_from(*rem).unwrap_or(usize::MAX));
                *rem -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(c) => c.decode(buf),
            Decoder::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Decoder::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body has ended (nothing more to read for it).
    fn is_done(&self) -> bool {
        match self {
            Decoder::Length(rem) => *rem == 0,
            Decoder::Chunked(c) => c.state == ChunkState::Done,
            Decoder::Close => false,
        }
    }

    /// The upstream closed: the end of a close-delimited body, else a
    /// truncated one.
    fn on_eof(&self) -> Result<(), Error> {
        match self {
            Decoder::Close => Ok(()),
            _ => Err(Error::BodyTruncated),
        }
    }
}

/// Where a chunked decoder is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
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
struct ChunkedDecoder {
    state: ChunkState,
}

impl ChunkedDecoder {
    fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
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
                    let n = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                    let left = rem - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
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
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
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

/// A response body read from the upstream connection as it is polled.
///
/// Data frames are the bytes as they arrive (split off the read buffer,
/// not copied); a chunked body may end with a trailers frame. When the
/// body ends cleanly and the connection is reusable, the connection goes
/// back to its endpoint's pool; dropped earlier, the connection closes.
/// Errors are [`Error`]s (a truncated or malformed body, a reset).
#[derive(Debug)]
pub struct ResponseBody {
    state: BodyState,
}

#[derive(Debug)]
enum BodyState {
    /// Ended (or had none).
    Done,
    /// Already read whole; the connection is already released.
    Full(Bytes),
    /// Still on the connection.
    Streaming(Box<Streaming>),
}

#[derive(Debug)]
struct Streaming {
    conn: Conn,
    ep: Arc<Endpoint>,
    decoder: Decoder,
    reusable: bool,
}

impl Streaming {
    /// The body ended cleanly: the connection goes back to the pool when
    /// reusable and nothing follows the response.
    fn release(self) {
        if self.reusable && self.conn.rbuf.is_empty() {
            self.ep.put(self.conn);
        }
    }
}

impl ResponseBody {
    /// A body over `conn`; releases the connection at once when the whole
    /// body is already buffered.
    fn new(mut conn: Conn, ep: &Arc<Endpoint>, framing: Framing, reusable: bool) -> Self {
        let decoder = match framing {
            Framing::Empty => {
                if reusable && conn.rbuf.is_empty() {
                    ep.put(conn);
                }
                return ResponseBody {
                    state: BodyState::Done,
                };
            }
            Framing::Length(n) if n <= conn.rbuf.len() as u64 => {
                // `n` fits: it is at most the buffer's length.
                let body = conn.rbuf.split_to(n as usize).freeze();
                if reusable && conn.rbuf.is_empty() {
                    ep.put(conn);
                }
                return ResponseBody {
                    state: BodyState::Full(body),
                };
            }
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(ChunkedDecoder::new()),
            Framing::Close => Decoder::Close,
        };
        ResponseBody {
            state: BodyState::Streaming(Box::new(Streaming {
                conn,
                ep: Arc::clone(ep),
                decoder,
                reusable,
            })),
        }
    }

    /// Ends the body: releases a streaming connection.
    fn finish(&mut self) {
        if let BodyState::Streaming(s) = std::mem::replace(&mut self.state, BodyState::Done) {
            s.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let s = match &mut this.state {
            BodyState::Done => return Poll::Ready(None),
            BodyState::Full(_) => {
                let BodyState::Full(b) = std::mem::replace(&mut this.state, BodyState::Done) else {
                    return Poll::Ready(None);
                };
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            BodyState::Streaming(s) => s,
        };
        loop {
            let frame = match s.decoder.decode(&mut s.conn.rbuf) {
                Ok(Decoded::NeedMore) => None,
                Ok(Decoded::Data(b)) => Some((Frame::data(b), s.decoder.is_done())),
                Ok(Decoded::Trailers(t)) => Some((Frame::trailers(t), true)),
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if let Some((frame, done)) = frame {
                if done {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(s.conn.poll_read(cx)) {
                Ok(0) => {
                    let end = s.decoder.on_eof();
                    // EOF: the connection is not reusable either way.
                    this.state = BodyState::Done;
                    return Poll::Ready(end.err().map(Err));
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(Error::Read(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Full(b) => SizeHint::with_exact(b.len() as u64),
            BodyState::Streaming(s) => match s.decoder {
                Decoder::Length(rem) => SizeHint::with_exact(rem),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
