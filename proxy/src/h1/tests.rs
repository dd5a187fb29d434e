//! The HTTP/1.1 client against raw TCP upstreams written here (so every
//! byte on the wire is the test's choice), and its sans-I/O parts.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// A request as the test upstream saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Trailer field lines of a chunked body.
    trailers: Vec<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// The upstream's side of one accepted connection.
struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
    /// Accept order, from 0.
    index: usize,
}

impl Peer {
    /// Reads more; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 8192];
        let n = self.s.read(&mut b).await.unwrap_or(0);
        self.buf.extend_from_slice(&b[..n]);
        n > 0
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf.drain(..i + 2).collect::<Vec<_>>();
                return Some(String::from_utf8_lossy(&l[..i]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads one request (content-length or chunked body); `None` at EOF.
    async fn request(&mut self) -> Option<Seen> {
        let (n, method, path, headers) = loop {
            {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut hs);
                if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (
                        n,
                        r.method.unwrap().to_string(),
                        r.path.unwrap().to_string(),
                        headers,
                    );
                }
            }
            if !self.fill().await {
                return None;
            }
        };
        self.buf.drain(..n);
        let mut seen = Seen {
            method,
            path,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if let Some(len) = seen.header("content-length") {
            let len = len.parse().unwrap();
            seen.body = self.take(len).await?;
        } else if seen.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await?;
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    break;
                }
                let data = self.take(size).await?;
                seen.body.extend_from_slice(&data);
                assert_eq!(self.take(2).await?, b"\r\n");
            }
            loop {
                let l = self.line().await?;
                if l.is_empty() {
                    break;
                }
                seen.trailers.push(l);
            }
        }
        Some(seen)
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }
}

/// A raw TCP upstream on 127.0.0.1: runs `conn` on every accepted
/// connection and counts the accepts.
struct Upstream {
    ep: Arc<Endpoint>,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn upstream<F, Fut>(conn: F) -> Upstream
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepts);
    let conn = Arc::new(conn);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let conn = Arc::clone(&conn);
            tokio::spawn(async move {
                conn(Peer {
                    s,
                    buf: Vec::new(),
                    index,
                })
                .await
            });
        }
    });
    let ep = Arc::new(Endpoint::new(&addr.to_string()));
    assert_eq!(ep.addr(), Some(addr));
    Upstream { ep, accepts, task }
}

/// An upstream answering every request with `reply`, and handing each
/// request it read to the returned receiver.
async fn recording(reply: &'static [u8]) -> (Upstream, mpsc::UnboundedReceiver<Seen>) {
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let up = upstream(move |mut p| {
        let seen_tx = seen_tx.clone();
        async move {
            while let Some(req) = p.request().await {
                seen_tx.send(req).unwrap();
                p.send(reply).await;
            }
        }
    })
    .await;
    (up, seen_rx)
}

/// An upstream answering every request on a connection with `reply`.
async fn answering(reply: &'static [u8]) -> Upstream {
    upstream(move |mut p| async move {
        while p.request().await.is_some() {
            p.send(reply).await;
        }
    })
    .await
}

/// A streamed request body fed by a channel, with an optional exact size.
struct ChanBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    exact: Option<u64>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn chan(exact: Option<u64>) -> (mpsc::Sender<Frame<Bytes>>, RequestBody<ChanBody>) {
    let (tx, rx) = mpsc::channel(8);
    (tx, RequestBody::Stream(ChanBody { rx, exact }))
}

fn replay(b: &'static [u8]) -> RequestBody<ChanBody> {
    RequestBody::Replay(Bytes::from_static(b))
}

async fn call(
    ep: &Arc<Endpoint>,
    method: Method,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: RequestBody<ChanBody>,
) -> Result<Response<ResponseBody>, Error> {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("app.test"));
    for (n, v) in headers {
        h.append(*n, HeaderValue::from_static(v));
    }
    let head = RequestHead {
        method: &method,
        path_and_query: path,
        headers: Fields::Map(&h),
        overrides: &[],
    };
    send(ep, Duration::from_secs(5), &head, body)
        .await
        .map(with_fields)
}

/// `r` with the fields passed on in its map, as hyper's server gets them.
fn with_fields(r: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut p, mut b) = r.into_parts();
    b.head_into(&mut p.headers);
    Response::from_parts(p, b)
}

async fn get(ep: &Arc<Endpoint>, path: &str) -> Result<Response<ResponseBody>, Error> {
    call(ep, Method::GET, path, &[], replay(b"")).await
}

async fn text(r: Response<ResponseBody>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn a_content_length_response_and_the_request_as_sent() {
    let (up, mut seen_rx) =
        recording(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nx-a: c\r\n\r\nhello").await;
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("app.test"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert("x-meshreg-port", HeaderValue::from_static("1"));
    h.append("x-multi", HeaderValue::from_static("1"));
    h.append("x-multi", HeaderValue::from_static("2"));
    let overrides = [(
        HeaderName::from_static("x-meshreg-port"),
        HeaderValue::from(8080u16),
    )];
    let head = RequestHead {
        method: &Method::POST,
        path_and_query: "/p?q=1",
        headers: Fields::Map(&h),
        overrides: &overrides,
    };
    let r = send(&up.ep, Duration::from_secs(5), &head, replay(b"abc"))
        .await
        .map(with_fields)
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_11);
    let xa: Vec<_> = r.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["b", "c"]);
    assert_eq!(r.body().size_hint().exact(), Some(5));
    assert_eq!(text(r).await, "hello");
    // The whole body was buffered with the head: the connection is back.
    assert_eq!(up.ep.idle(), 1);

    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/p?q=1")
    );
    assert_eq!(seen.header("host"), Some("app.test"));
    assert_eq!(seen.header("content-length"), Some("3"));
    assert_eq!(seen.count("content-length"), 1);
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(seen.header("x-meshreg-port"), Some("8080"));
    assert_eq!(seen.count("x-meshreg-port"), 1);
    assert_eq!(seen.count("x-multi"), 2);
    assert_eq!(seen.body, b"abc");

    // A bodiless GET carries no framing field; no Host → the endpoint's.
    let empty = HeaderMap::new();
    let head = RequestHead {
        method: &Method::GET,
        path_and_query: "/",
        headers: Fields::Map(&empty),
        overrides: &[],
    };
    let r = send(&up.ep, Duration::from_secs(5), &head, replay(b""))
        .await
        .unwrap();
    assert_eq!(text(r).await, "hello");
    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(
        seen.header("host"),
        Some(up.ep.addr().unwrap().to_string().as_str())
    );
    assert_eq!(up.accepts(), 1);
}

#[tokio::test]
async fn a_chunked_response_arrives_in_pieces_with_its_trailers() {
    let up = upstream(|mut p| async move {
        while p.request().await.is_some() {
            p.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ntrailer: x-sum\r\n\r\n")
                .await;
            for piece in [
                &b"5;ext=\"a b\"\r\nhel"[..],
                b"lo\r\n6\r\n world",
                b"\r\n1",
                b"0\r\n",
                b"0123456789abcdef\r\n0\r\nx-sum: 42\r\n",
                b"\r\n",
            ] {
                p.send(piece).await;
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    for _ in 0..2 {
        let r = get(&up.ep, "/").await.unwrap();
        // Framing is hop-by-hop: the downstream side frames the body.
        assert!(!r.headers().contains_key("transfer-encoding"));
        assert!(r.headers().contains_key("trailer"));
        assert_eq!(r.body().size_hint().exact(), None);
        let c = r.into_body().collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["x-sum"], "42");
        assert_eq!(&c.to_bytes()[..], b"hello world0123456789abcdef");
    }
    assert_eq!(up.accepts(), 1, "a chunked body ends cleanly: reused");
}

/// Runs a decoder over `wire` fed one byte at a time.
fn decode_bytewise(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, usize), Error> {
    let mut d = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    for (i, b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => {
                    trailers = Some(t);
                    return Ok((data, trailers, wire.len() - i - 1 + buf.len()));
                }
                Decoded::End => return Ok((data, trailers, wire.len() - i - 1 + buf.len())),
                Decoded::NeedMore => break,
            }
        }
    }
    Err(Error::BodyTruncated)
}

#[test]
fn the_chunked_decoder_takes_any_split_and_rejects_malformed_coding() {
    let wire = b"3\r\nabc\r\nA ; x=y\r\n0123456789\r\n0\r\nx-t: 1\r\ncontent-length: 9\r\n\r\nNEXT";
    let (data, trailers, left) = decode_bytewise(wire).unwrap();
    assert_eq!(data, b"abc0123456789");
    let t = trailers.unwrap();
    assert_eq!(t["x-t"], "1");
    assert!(
        !t.contains_key("content-length"),
        "framing fields are not trailers"
    );
    assert_eq!(left, 4, "stops at the end of the body: NEXT is left");
    let (data, trailers, _) = decode_bytewise(b"2\r\nok\r\n0\r\n\r\n").unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"ok"[..], None));

    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"3\nabc\r\n",
        b"3\r\nabcXY",
        b"11111111111111111\r\n",
        b"3 x\r\n",
        b"0\r\nbad header\r\n\r\n",
    ] {
        assert!(
            matches!(decode_bytewise(bad), Err(Error::InvalidChunk(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 1]].concat();
    assert!(matches!(
        decode_bytewise(&long),
        Err(Error::InvalidChunk(_))
    ));
}

#[tokio::test]
async fn a_close_delimited_body_is_read_to_eof_and_not_pooled() {
    let up = upstream(|mut p| async move {
        p.request().await;
        p.send(b"HTTP/1.1 200 OK\r\n\r\nabc").await;
        tokio::task::yield_now().await;
        p.send(b"def").await;
    })
    .await;
    let r = get(&up.ep, "/").await.unwrap();
    assert_eq!(text(r).await, "abcdef");
    assert_eq!(up.ep.idle(), 0);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let up = upstream(|mut p| async move {
        while let Some(req) = p.request().await {
            let reply: &[u8] = match (req.method.as_str(), req.path.as_str()) {
                ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n",
                (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            p.send(reply).await;
        }
    })
    .await;
    let r = call(&up.ep, Method::HEAD, "/", &[], replay(b""))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-length"], "10");
    assert!(r.body().is_end_stream());
    assert_eq!(text(r).await, "");
    for path in ["/204", "/304"] {
        let r = get(&up.ep, path).await.unwrap();
        assert_eq!(r.status().as_str(), &path[1..]);
        assert!(r.body().is_end_stream());
        assert_eq!(text(r).await, "");
    }
    // Had any of those been read as having a body, this would be garbled.
    let r = get(&up.ep, "/").await.unwrap();
    assert_eq!(text(r).await, "ok");
    assert_eq!(up.accepts(), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped_and_101_is_an_error() {
    let up = upstream(|mut p| async move {
        let req = p.request().await.unwrap();
        if req.path == "/upgrade" {
            p.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
                .await;
            return;
        }
        p.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        tokio::task::yield_now().await;
        p.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let r = call(
        &up.ep,
        Method::POST,
        "/",
        &[("expect", "100-continue")],
        replay(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(!r.headers().contains_key("link"));
    assert_eq!(text(r).await, "ok");
    let e = get(&up.ep, "/upgrade").await.unwrap_err();
    assert!(matches!(e, Error::Upgrade), "{e}");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let up = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").await;
    for _ in 0..5 {
        let r = get(&up.ep, "/").await.unwrap();
        assert_eq!(text(r).await, "abc");
    }
    assert_eq!(up.accepts(), 1);
    assert_eq!(up.ep.idle(), 1);
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_not_reused() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ] {
        // Keeps the connection open: only the client can decide.
        let up = answering(reply).await;
        for _ in 0..2 {
            let r = get(&up.ep, "/").await.unwrap();
            assert_eq!(r.version(), Version::HTTP_11);
            assert_eq!(text(r).await, "ok");
            assert_eq!(up.ep.idle(), 0);
        }
        assert_eq!(up.accepts(), 2);
    }
    // Nor is a connection whose request asked to close.
    let up = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let r = call(
        &up.ep,
        Method::GET,
        "/",
        &[("connection", "close")],
        replay(b""),
    )
    .await
    .unwrap();
    assert_eq!(text(r).await, "ok");
    assert_eq!(up.ep.idle(), 0);
}

/// Serves one request on the first connection, then reads the next one
/// and closes without answering (an idle close racing the request); every
/// later connection is served normally.
async fn closes_after_one() -> Upstream {
    upstream(|mut p| async move {
        if p.index == 0 {
            p.request().await;
            p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                .await;
            p.request().await;
            return;
        }
        while p.request().await.is_some() {
            p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
                .await;
        }
    })
    .await
}

/// Answers `ok` to every request; the first connection is closed after
/// one exchange, the others stay open.
async fn first_closes_after_one() -> Upstream {
    upstream(|mut p| async move {
        while p.request().await.is_some() {
            p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            if p.index == 0 {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_sweep_closes_idle_connections_the_upstream_closed_and_keeps_live_ones() {
    // The first connection is closed by the upstream after one exchange;
    // the second stays open.
    let up = first_closes_after_one().await;
    // Two requests at once: two connections, both pooled afterwards.
    let (a, b) = tokio::join!(get(&up.ep, "/"), get(&up.ep, "/"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(text(a).await + &text(b).await, "okok");
    assert_eq!(up.accepts(), 2);
    assert_eq!(up.ep.idle(), 2);
    // Until the FIN arrives, both look alive.
    let mut closed = 0;
    for _ in 0..100 {
        closed += up.ep.sweep();
        if closed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed, 1, "the upstream-closed connection was swept");
    assert_eq!(up.ep.idle(), 1);
    assert_eq!(up.ep.sweep(), 0, "a live connection is kept");
    // The kept one is the live one: it serves without a new connection.
    assert_eq!(text(get(&up.ep, "/").await.unwrap()).await, "ok");
    assert_eq!(up.accepts(), 2);
}

#[tokio::test]
async fn a_replayable_request_on_a_connection_the_upstream_closed_is_resent_once() {
    let up = closes_after_one().await;
    assert_eq!(text(get(&up.ep, "/").await.unwrap()).await, "first");
    assert_eq!(up.ep.idle(), 1);
    let r = call(&up.ep, Method::POST, "/", &[], replay(b"body"))
        .await
        .unwrap();
    assert_eq!(text(r).await, "fresh");
    assert_eq!(up.accepts(), 2);
}

#[tokio::test]
async fn a_streamed_request_is_never_resent_but_a_closed_idle_connection_is_skipped() {
    // The close races the request: a streamed body cannot be sent again.
    let up = closes_after_one().await;
    assert_eq!(text(get(&up.ep, "/").await.unwrap()).await, "first");
    let (tx, body) = chan(Some(4));
    tx.send(Frame::data(Bytes::from_static(b"body")))
        .await
        .unwrap();
    let e = call(&up.ep, Method::POST, "/", &[], body)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ClosedBeforeResponse), "{e}");
    assert!(!e.is_connect());
    assert_eq!(up.accepts(), 1);

    // The close came first: the pooled connection is readable (EOF) and
    // is skipped for a new one.
    let up = first_closes_after_one().await;
    assert_eq!(text(get(&up.ep, "/").await.unwrap()).await, "ok");
    // Wait until this side has seen the upstream's FIN.
    let (conn, since) = up.ep.lock().items.pop().unwrap();
    conn.io.readable().await.unwrap();
    up.ep.lock().items.push((conn, since));
    let (tx, body) = chan(None);
    tx.send(Frame::data(Bytes::from_static(b"x")))
        .await
        .unwrap();
    drop(tx);
    let r = call(&up.ep, Method::POST, "/", &[], body).await.unwrap();
    assert_eq!(text(r).await, "ok");
    assert_eq!(up.accepts(), 2);
}

#[tokio::test]
async fn malformed_or_oversized_heads_are_errors() {
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x: y\r\n".repeat(MAX_HEADERS + 1)
    );
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let endless = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD + 10));
    type Expected = fn(&Error) -> bool;
    let cases: Vec<(String, Expected)> = vec![
        ("this is not HTTP\r\n\r\n".into(), |e| {
            matches!(e, Error::Parse(_))
        }),
        ("HTTP/1.1 2000 OK\r\n\r\n".into(), |e| {
            matches!(e, Error::Parse(_))
        }),
        ("HTTP/1.1 099 Low\r\n\r\n".into(), |e| {
            matches!(e, Error::InvalidStatus(99))
        }),
        (many, |e| {
            matches!(e, Error::Parse(httparse::Error::TooManyHeaders))
        }),
        (big, |e| matches!(e, Error::HeadTooLarge)),
        (endless, |e| matches!(e, Error::HeadTooLarge)),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello".into(),
            |e| matches!(e, Error::InvalidContentLength),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello".into(),
            |e| matches!(e, Error::InvalidContentLength),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello".into(),
            |e| matches!(e, Error::InvalidContentLength),
        ),
        ("HTTP/1.1 200 O".into(), |e| {
            matches!(e, Error::IncompleteHead)
        }),
        (String::new(), |e| matches!(e, Error::ClosedBeforeResponse)),
    ];
    for (reply, expected) in cases {
        let reply: &'static [u8] = Box::leak(reply.into_bytes().into_boxed_slice());
        let up = upstream(move |mut p| async move {
            p.request().await;
            p.send(reply).await;
        })
        .await;
        let e = get(&up.ep, "/").await.unwrap_err();
        assert!(
            expected(&e) && !e.is_connect(),
            "{:?} → {e:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(60)])
        );
    }
}

#[tokio::test]
async fn content_length_forms_that_agree_are_accepted_as_one() {
    let up =
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok").await;
    let r = get(&up.ep, "/").await.unwrap();
    // The length is the body's: the downstream side writes it.
    assert!(!r.headers().contains_key("content-length"));
    assert_eq!(r.body().size_hint().exact(), Some(2));
    assert_eq!(text(r).await, "ok");
    // With transfer-encoding too, the length goes and so does the connection.
    let up = answering(
        b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let r = get(&up.ep, "/").await.unwrap();
    assert!(!r.headers().contains_key("content-length"));
    assert_eq!(text(r).await, "ok");
    assert_eq!(up.ep.idle(), 0);
}

#[tokio::test]
async fn a_streamed_body_of_unknown_length_is_sent_chunked() {
    let (up, mut seen_rx) = recording(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let (tx, body) = chan(None);
    let feeder = tokio::spawn(async move {
        for piece in [&b"hello"[..], b"", b" ", b"world"] {
            tx.send(Frame::data(Bytes::from_static(piece)))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let big = Bytes::from(vec![b'z'; 40_000]);
        tx.send(Frame::data(big)).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("7"));
        t.insert("x-undeclared", HeaderValue::from_static("1"));
        tx.send(Frame::trailers(t)).await.unwrap();
    });
    let r = call(
        &up.ep,
        Method::POST,
        "/up",
        &[("content-length", "12"), ("trailer", "x-sum")],
        body,
    )
    .await
    .unwrap();
    feeder.await.unwrap();
    assert_eq!(text(r).await, "");
    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.header("content-length"), None);
    let mut expected = b"hello world".to_vec();
    expected.extend_from_slice(&[b'z'; 40_000]);
    assert_eq!(seen.body, expected);
    assert_eq!(seen.trailers, ["x-sum: 7"], "declared trailers only");

    // A known size goes as content-length; the connection was reused.
    let (tx, body) = chan(Some(6));
    tx.send(Frame::data(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"def")))
        .await
        .unwrap();
    drop(tx);
    let r = call(&up.ep, Method::PUT, "/up", &[], body).await.unwrap();
    assert_eq!(text(r).await, "");
    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen.header("content-length"), Some("6"));
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(seen.body, b"abcdef");
    assert_eq!(up.accepts(), 1);

    // A body shorter than its declared size is an error.
    let (tx, body) = chan(Some(6));
    tx.send(Frame::data(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    drop(tx);
    let e = call(&up.ep, Method::PUT, "/up", &[], body)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RequestBodyLength), "{e}");
}

#[tokio::test]
async fn a_body_dropped_half_way_closes_its_connection() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let up = upstream(move |mut p| {
        let closed_tx = closed_tx.clone();
        async move {
            while p.request().await.is_some() {
                p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n0123456789")
                    .await;
            }
            // EOF from the client: the connection was closed.
            closed_tx.send(p.index).unwrap();
        }
    })
    .await;
    let r = get(&up.ep, "/").await.unwrap();
    let mut body = r.into_body();
    assert_eq!(body.size_hint().exact(), Some(100_000));
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"0123456789");
    assert_eq!(body.size_hint().exact(), Some(99_990));
    drop(body);
    assert_eq!(up.ep.idle(), 0);
    assert_eq!(closed_rx.recv().await, Some(0));
    let r = get(&up.ep, "/").await.unwrap();
    drop(r);
    assert_eq!(up.accepts(), 2);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let up = upstream(|mut p| async move {
        p.request().await;
        p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            .await;
    })
    .await;
    let r = get(&up.ep, "/").await.unwrap();
    let e = r.into_body().collect().await.unwrap_err();
    assert!(matches!(e, Error::BodyTruncated), "{e}");
    assert_eq!(up.ep.idle(), 0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let ep = Arc::new(Endpoint::new(&addr.to_string()));
    let e = get(&ep, "/").await.unwrap_err();
    assert!(matches!(e, Error::Connect(_)) && e.is_connect(), "{e}");
    // A DNS name that cannot resolve fails to connect too.
    let ep = Arc::new(Endpoint::new("no-such-host.invalid:80"));
    assert_eq!(ep.addr(), None);
    let e = get(&ep, "/").await.unwrap_err();
    assert!(e.is_connect(), "{e}");
}

#[test]
fn the_idle_list_is_lifo_bounded_and_expires() {
    let t0 = Instant::now();
    let mut l = IdleList::default();
    assert_eq!(l.push(1, t0), None);
    assert_eq!(l.push(2, t0 + Duration::from_secs(1)), None);
    assert_eq!(l.pop(t0 + Duration::from_secs(2)), Some(2), "newest first");
    assert_eq!(l.pop(t0 + IDLE_TIMEOUT), None, "idle 60 s: dropped");
    assert!(l.items.is_empty());

    // The oldest expired ones go when something is put back.
    l.push(1, t0);
    l.push(2, t0 + Duration::from_secs(30));
    l.push(3, t0 + IDLE_TIMEOUT + Duration::from_secs(1));
    let left: Vec<_> = l.items.iter().map(|(i, _)| *i).collect();
    assert_eq!(left, [2, 3]);

    let mut l = IdleList::default();
    for i in 0..MAX_IDLE_PER_ENDPOINT {
        assert_eq!(l.push(i, t0), None);
    }
    assert_eq!(l.push(999, t0), Some(999), "full: the extra one is refused");
}

#[test]
fn the_head_is_encoded_in_one_buffer() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("a"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
    let head = RequestHead {
        method: &Method::DELETE,
        path_and_query: "",
        headers: Fields::Map(&h),
        overrides: &[],
    };
    let mut buf = Vec::new();
    encode_head(&mut buf, &head, "10.0.0.1:80", Framing::Length(1234567890));
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        "DELETE / HTTP/1.1\r\nhost: a\r\ncontent-length: 1234567890\r\n\r\n"
    );
    let mut buf = Vec::new();
    push_hex(&mut buf, 0);
    push_hex(&mut buf, 0x1f0a);
    push_dec(&mut buf, 0);
    assert_eq!(buf, b"01f0a0");
}
