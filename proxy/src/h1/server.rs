//! The downstream side of HTTP/1.1: a client connection served on its own
//! task, without hyper's server.
//!
//! One request at a time (RFC 9112 §9.3; bytes a client pipelines wait in
//! the buffer until the response before them is written):
//! 1. The request head is read and parsed (httparse); its fields stay in
//!    the bytes read ([`RequestFields`]: offsets, no copy and no
//!    `HeaderMap`), handed to the handler beside the body ([`Received`]).
//! 2. The body is read whole: a request has none, or a `content-length` of
//!    at most [`MAX_BODY`] bytes (so it is also replayable for retries).
//! 3. The handler's response is written: status line, fields, and the body
//!    framed by its exact size (`content-length`) when known, else chunked
//!    (close-delimited for an HTTP/1.0 client); the head and a body of up
//!    to 16 KiB go out in one write. A response to HEAD, a 204 and a 304
//!    carry no body and keep the handler's `content-length`. A `date`
//!    field is added when the response has none.
//! 4. The connection is kept for the next request unless the request or
//!    the response says `connection: close`, the client speaks HTTP/1.0
//!    without `connection: keep-alive`, the body was close-delimited or
//!    failed, or the listener is draining.
//!
//! **Handed to hyper.** A connection whose first bytes are the HTTP/2
//! preface (h2c with prior knowledge), and a request this path does not
//! serve (a chunked or longer body, `expect`, CONNECT), is returned as a
//! [`Handover`]: the socket and the bytes already read, which the listener
//! gives to hyper's server for the rest of the connection's life. The
//! common case is served here; every other keeps hyper's behaviour.
//!
//! **Timeouts and drain.** A request's head and body must arrive within
//! [`HEAD_TIMEOUT`] to twice that (one timer per connection, re-armed
//! when it fires if a request was served meanwhile, rather than a timer
//! per request); a client that stays silent that long is closed (`408`
//! first if it had sent part of a request). When the listener drains
//! ([`crate::Drain::Graceful`]) an idle connection closes at once and a
//! busy one after its response (with `connection: close`);
//! [`crate::Drain::Now`] closes it whatever it is doing.
//!
//! **Memory.** While a connection waits for its next request it holds no
//! read or write buffer: both are released when the socket has nothing to
//! read, to a per-thread list of at most 64 spare pairs that the next
//! connection with bytes to read takes from (so at saturation, when every
//! connection waits between requests, buffers change hands instead of
//! being freed and allocated again), or allocated anew when it is empty.
//!
//! **Bad requests** get a response and the connection closes: `400` for a
//! malformed head, an invalid field or `content-length`; `431` for a head
//! over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::time::SystemTime;

use http::{Request, Uri};
use tokio::sync::watch;

use super::*;
use crate::Drain;

/// A request's head and body must arrive within this to twice this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (bytes) served on this path; a longer one hands
/// the connection to hyper, which streams it.
pub const MAX_BODY: u64 = 64 * 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The write buffer's first allocation (bytes): a typical response head
/// and a small body.
const WRITE_RESERVE: usize = 4 * 1024;

/// A response body that may carry an upstream's HTTP/1.1 head: its fields
/// are then written from the upstream's bytes ([`UpstreamHead::encode`]),
/// before the response's own `HeaderMap` (the fields the proxy adds).
pub trait UpstreamFields {
    /// The upstream's fields to pass on, once (`None` for a response that
    /// did not come from an HTTP/1.1 upstream).
    fn take_upstream_head(&mut self) -> Option<UpstreamHead>;
}

impl UpstreamFields for ResponseBody {
    fn take_upstream_head(&mut self) -> Option<UpstreamHead> {
        self.take_head()
    }
}

/// A connection to continue under hyper's server: the socket and the bytes
/// already read from it (to be read again first).
#[derive(Debug)]
pub struct Handover {
    /// The client connection.
    pub io: TcpStream,
    /// Bytes read from it and not yet consumed.
    pub read: Bytes,
}

/// A request as [`serve`] hands it to its handler, as the `Request`'s
/// body (the `Request`'s own `HeaderMap` is empty): the body read whole,
/// and the header fields as they came.
#[derive(Debug)]
pub struct Received {
    /// The body (`content-length` bytes, at most [`MAX_BODY`]).
    pub body: Bytes,
    /// The header fields.
    pub fields: RequestFields,
}

/// A parsed request head, and what it says about its body and connection.
#[derive(Debug)]
struct RequestHead {
    method: Method,
    uri: Uri,
    http11: bool,
    fields: RequestFields,
    /// Body length (`content-length`, or 0).
    body: usize,
    /// The client asked to keep the connection.
    keep_alive: bool,
}

/// What the bytes at the start of the read buffer are.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // made once per request and taken apart at once
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A head (consumed from the buffer).
    Head(RequestHead),
    /// Something hyper serves (nothing consumed).
    Handover,
}

/// A request that gets an error response and closes the connection.
#[derive(Debug, PartialEq, Eq)]
struct Bad(StatusCode, &'static str);

/// A head over [`MAX_HEAD`] bytes.
const HEAD_TOO_LARGE: Bad = Bad(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "request head too large",
);

/// Why a connection stops being served here.
enum Stop {
    /// Close it.
    Close,
    /// Hand it to hyper.
    Handover,
}

/// The listener's drain as a connection follows it: one future at a
/// time, for the next level.
struct DrainWatch {
    rx: watch::Receiver<Drain>,
    /// Resolves when the drain reaches the level after `state`.
    next: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// How far the drain has gone, as `next` last told.
    state: Drain,
}

impl DrainWatch {
    fn new(rx: &watch::Receiver<Drain>) -> DrainWatch {
        DrainWatch {
            next: Box::pin(crate::drained(rx.clone(), Drain::Graceful)),
            rx: rx.clone(),
            state: Drain::Serving,
        }
    }

    /// Resolves with the drain's next level (`Graceful`, then `Now`;
    /// never after `Now`).
    fn poll_level(&mut self, cx: &mut Context<'_>) -> Poll<Drain> {
        if self.state == Drain::Now {
            return Poll::Pending;
        }
        ready!(self.next.as_mut().poll(cx));
        self.state = match self.state {
            Drain::Serving => Drain::Graceful,
            _ => Drain::Now,
        };
        if self.state == Drain::Graceful {
            self.next = Box::pin(crate::drained(self.rx.clone(), Drain::Now));
        }
        Poll::Ready(self.state)
    }
}

/// The futures a waiting connection also listens to.
struct Waits {
    /// The listener's drain.
    drain: DrainWatch,
    /// The head timer; see the module doc.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Requests served so far, and when the timer was last armed.
    served: u64,
    armed_at: u64,
}

/// What a wait for more bytes ended with.
enum Filled {
    /// More bytes are buffered.
    More,
    /// The client closed (or reset) the connection.
    Eof,
    /// The listener is draining and the connection is idle, or its drain
    /// timed out.
    Drained,
    /// No request was served within the head timeout.
    TimedOut,
}

impl Waits {
    /// Reads more into `conn.rbuf`; the listener's graceful drain ends an
    /// idle wait (nothing buffered) only.
    async fn fill(&mut self, conn: &mut Conn) -> Filled {
        let idle = conn.rbuf.is_empty();
        let drained = |level| level == Drain::Now || (idle && level >= Drain::Graceful);
        if drained(self.drain.state) {
            return Filled::Drained;
        }
        loop {
            tokio::select! {
                biased;
                r = poll_fn(|cx| conn.poll_fill(cx)) => {
                    return match r {
                        Ok(0) | Err(_) => Filled::Eof,
                        Ok(_) => Filled::More,
                    };
                }
                level = poll_fn(|cx| self.drain.poll_level(cx)) => {
                    if drained(level) {
                        return Filled::Drained;
                    }
                }
                () = self.timer.as_mut() => {
                    if self.served == self.armed_at {
                        return Filled::TimedOut;
                    }
                    self.armed_at = self.served;
                    self.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
                }
            }
        }
    }
}

impl Waits {
    /// [`Waits::fill`], then `Err` when the connection is to close: the
    /// client closed it, the drain ended it, or it timed out (answered
    /// with `408` when `started`, part of a request having come).
    async fn more(&mut self, conn: &mut Conn, started: bool) -> Result<(), ()> {
        match self.fill(conn).await {
            Filled::More => Ok(()),
            Filled::TimedOut => {
                if started {
                    write_error(conn, &Bad(StatusCode::REQUEST_TIMEOUT, "")).await;
                }
                Err(())
            }
            Filled::Eof | Filled::Drained => Err(()),
        }
    }
}

/// Most spare buffer pairs a thread keeps ([`SPARE`]).
const SPARE_BUFFERS: usize = 64;

thread_local! {
    /// The read and write buffers of connections waiting for their next
    /// request, taken by the next connection that has bytes to read: at
    /// saturation every connection waits between requests, and handing
    /// its buffers on saves an allocation and a free of each per
    /// request. At most [`SPARE_BUFFERS`] pairs (the rest are freed), so
    /// idle connections still hold no buffer.
    static SPARE: RefCell<Vec<(BytesMut, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

impl Conn {
    /// Reads what is available into `rbuf` ([`Conn::poll_read`]); with
    /// nothing buffered, first waits for the socket to be readable,
    /// holding no buffer meanwhile (its buffers go to [`SPARE`]).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.is_empty() {
            if self.io.poll_read_ready(cx)?.is_pending() {
                if self.rbuf.capacity() > 0 || self.wbuf.capacity() > 0 {
                    let mut bufs = (
                        std::mem::take(&mut self.rbuf),
                        std::mem::take(&mut self.wbuf),
                    );
                    SPARE.with_borrow_mut(|spare| {
                        if spare.len() < SPARE_BUFFERS {
                            bufs.1.clear();
                            spare.push(bufs);
                        }
                    });
                }
                return Poll::Pending;
            }
            if self.rbuf.capacity() == 0 && self.wbuf.capacity() == 0 {
                if let Some((r, w)) = SPARE.with_borrow_mut(Vec::pop) {
                    (self.rbuf, self.wbuf) = (r, w);
                }
            }
        }
        self.poll_read(cx)
    }
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the connection
/// ends (`None`) or is to continue under hyper ([`Handover`]); `drain` is
/// the listener's drain state (see the module doc).
///
/// The handler gets each request with its whole body and returns the
/// response; its body is written as it is polled.
pub async fn serve<F, Fut, B>(
    io: TcpStream,
    mut handler: F,
    drain: &watch::Receiver<Drain>,
) -> Option<Handover>
where
    F: FnMut(Request<Received>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + UpstreamFields + Unpin,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
    };
    let mut waits = Waits {
        drain: DrainWatch::new(drain),
        timer: Box::pin(tokio::time::sleep(HEAD_TIMEOUT)),
        served: 0,
        armed_at: 0,
    };
    loop {
        let head = match read_head(&mut conn, &mut waits).await {
            Ok(h) => h,
            Err(Stop::Handover) => {
                return Some(Handover {
                    io: conn.io,
                    read: conn.rbuf.freeze(),
                })
            }
            Err(Stop::Close) => return None,
        };
        while conn.rbuf.len() < head.body {
            if waits.more(&mut conn, true).await.is_err() {
                return None;
            }
        }
        let body = conn.rbuf.split_to(head.body).freeze();
        let is_head = head.method == Method::HEAD;
        let (http11, keep_alive) = (head.http11, head.keep_alive);
        let mut req = Request::new(Received {
            body,
            fields: head.fields,
        });
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let exchange = async {
            let resp = handler(req).await;
            let close = !keep_alive || *drain.borrow() >= Drain::Graceful;
            write_response(&mut conn, resp, is_head, http11, close).await
        };
        let mut exchange = pin!(exchange);
        let keep = loop {
            tokio::select! {
                biased;
                k = &mut exchange => break k,
                level = poll_fn(|cx| waits.drain.poll_level(cx)) => {
                    if level == Drain::Now {
                        break false;
                    }
                }
            }
        };
        if !keep {
            return None;
        }
        waits.served += 1;
    }
}

/// Reads until a whole request head is buffered and parses it.
async fn read_head(conn: &mut Conn, waits: &mut Waits) -> Result<RequestHead, Stop> {
    loop {
        match parse_request(&mut conn.rbuf, waits.served == 0) {
            Ok(Parsed::Head(h)) => return Ok(h),
            Ok(Parsed::Handover) => return Err(Stop::Handover),
            Ok(Parsed::Partial) => {}
            Err(bad) => {
                write_error(conn, &bad).await;
                return Err(Stop::Close);
            }
        }
        let started = !conn.rbuf.is_empty();
        waits.more(conn, started).await.map_err(|()| Stop::Close)?;
    }
}

/// Parses a request head at the start of `buf` (RFC 9112 §2–§6) and, when
/// it is served here, consumes it. `first`: the connection's first bytes,
/// where the HTTP/2 preface may be.
fn parse_request(buf: &mut BytesMut, first: bool) -> Result<Parsed, Bad> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if first {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] == PREFACE[..n] {
            // "PRI " is no HTTP/1.1 method (RFC 9113 §3.4).
            return Ok(if n >= 4 {
                Parsed::Handover
            } else {
                Parsed::Partial
            });
        }
    }
    let (len, fields, path, method, http11, body, keep_alive) = {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(HEAD_TOO_LARGE),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HEAD_TOO_LARGE),
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields",
                ));
            }
            Err(_) => return Err(Bad(StatusCode::BAD_REQUEST, "malformed request head")),
        };
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| Bad(StatusCode::BAD_REQUEST, "invalid method"))?;
        let http11 = req.version == Some(1);
        let target = req.path.unwrap_or_default();
        let base = buf.as_ptr() as usize;
        let ps = (target.as_ptr() as usize).wrapping_sub(base);
        let path = [ps, ps.wrapping_add(target.len())];
        let (mut close, mut keep, mut length) = (false, false, false);
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
            {
                return Ok(Parsed::Handover);
            } else if name.eq_ignore_ascii_case(b"content-length") {
                length = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                let v = std::str::from_utf8(h.value).unwrap_or_default();
                close |= token_list_has(v, "close");
                keep |= token_list_has(v, "keep-alive");
            }
        }
        if method == Method::CONNECT {
            return Ok(Parsed::Handover);
        }
        let body = if length {
            let values = req.headers.iter().filter_map(|h| {
                h.name
                    .eq_ignore_ascii_case("content-length")
                    .then_some(h.value)
            });
            parse_content_length(values)
                .map_err(|_| Bad(StatusCode::BAD_REQUEST, "invalid content-length"))?
                .unwrap_or(0)
        } else {
            0
        };
        if body > MAX_BODY {
            return Ok(Parsed::Handover);
        }
        let fields = head::offsets(buf, req.headers);
        let keep_alive = !close && (http11 || keep);
        (len, fields, path, method, http11, body, keep_alive)
    };
    let head = buf.split_to(len).freeze();
    let uri = head
        .get(path[0]..path[1])
        .map(|_| head.slice(path[0]..path[1]))
        .and_then(|t| Uri::from_maybe_shared(t).ok())
        .ok_or(Bad(StatusCode::BAD_REQUEST, "invalid request target"))?;
    Ok(Parsed::Head(RequestHead {
        method,
        uri,
        http11,
        fields: RequestFields::new(head, fields),
        // At most MAX_BODY.
        body: body as usize,
        keep_alive,
    }))
}

/// Writes the response; whether the connection may serve another request.
async fn write_response<B>(
    conn: &mut Conn,
    resp: Response<B>,
    is_head: bool,
    http11: bool,
    mut close: bool,
) -> bool
where
    B: Body<Data = Bytes> + UpstreamFields + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = resp.into_parts();
    let upstream = body.take_upstream_head();
    let status = parts.status;
    let framing = if bodiless(is_head, status) {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None if http11 => Framing::Chunked,
            None => Framing::Close,
        }
    };
    close |= framing == Framing::Close || has_close(&parts.headers);
    if conn.wbuf.capacity() == 0 {
        conn.wbuf.reserve(WRITE_RESERVE);
    }
    conn.wbuf.clear();
    encode_response_head(
        &mut conn.wbuf,
        status,
        upstream.as_ref(),
        &parts.headers,
        framing,
        close,
        http11,
    );
    let written = write_body(conn, framing, &parts.headers, body).await;
    if let Err(e) = &written {
        tracing::debug!(error = ?e, "writing the response failed; closing the connection");
    }
    written.is_ok() && !close
}

/// Encodes a response's status line and fields (RFC 9112 §4, §5): the
/// upstream's (`upstream`, as [`UpstreamHead`] passes them on), then
/// `headers`. With a body (`framing` not `Empty`), `content-length` and
/// `transfer-encoding` in `headers` are replaced by `framing`'s field;
/// `close` adds `connection: close` (unless `headers` has a
/// `connection`), keep-alive with an HTTP/1.0 client `connection:
/// keep-alive`.
fn encode_response_head(
    buf: &mut Vec<u8>,
    status: StatusCode,
    upstream: Option<&UpstreamHead>,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    http11: bool,
) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    let (mut date, mut connection) = (false, false);
    if let Some(u) = upstream {
        u.encode(buf);
        date = u.has_date();
    }
    for (name, value) in headers {
        if framing != Framing::Empty
            && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING)
        {
            continue;
        }
        date |= name == header::DATE;
        connection |= name == header::CONNECTION;
        push_field(buf, name, value);
    }
    if !date {
        push_date(buf);
    }
    if close && !connection {
        buf.extend_from_slice(b"connection: close\r\n");
    } else if !close && !http11 {
        buf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    push_framing(buf, framing);
    buf.extend_from_slice(b"\r\n");
}

/// A `date` field (RFC 9110 §6.6.1), formatted once a second per thread.
fn push_date(buf: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        buf.extend_from_slice(b"date: ");
        buf.extend_from_slice(d.1.as_bytes());
        buf.extend_from_slice(b"\r\n");
    });
}

/// Writes an error response for a request not served and closes.
async fn write_error(conn: &mut Conn, bad: &Bad) {
    let body = if bad.1.is_empty() {
        String::new()
    } else {
        format!("{}\n", bad.1)
    };
    conn.wbuf.clear();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    encode_response_head(
        &mut conn.wbuf,
        bad.0,
        None,
        &headers,
        Framing::Length(body.len() as u64),
        true,
        true,
    );
    conn.wbuf.extend_from_slice(body.as_bytes());
    let _ = conn.flush().await;
    let _ = conn.io.shutdown().await;
}

#[cfg(test)]
mod tests;
