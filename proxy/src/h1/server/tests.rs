//! The downstream HTTP/1.1 server against a raw TCP client written here
//! (so every byte on the wire is the test's choice), with a handler that
//! echoes the request.

use std::convert::Infallible;

use http_body_util::{Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

/// A response whose size is not known in advance: two data frames.
type Streamed =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl UpstreamFields for Either<Full<Bytes>, Streamed> {
    fn take_upstream_head(&mut self) -> Option<UpstreamHead> {
        None
    }
}

/// The echo handler's answer: `<method> <target> <body>`; `x-stream: 1`
/// streams it (no size), `x-status` sets the status, `x-close: 1` adds
/// `connection: close`.
fn echo(req: Request<Received>) -> Response<Either<Full<Bytes>, Streamed>> {
    let text = format!(
        "{} {} {}",
        req.method(),
        req.uri(),
        String::from_utf8_lossy(&req.body().body)
    );
    let h = &req.body().fields;
    let body = if h.get("x-stream").is_some() {
        let (a, b) = text.split_at(text.len() / 2);
        let frames = vec![
            Ok(Frame::data(Bytes::copy_from_slice(a.as_bytes()))),
            Ok(Frame::data(Bytes::copy_from_slice(b.as_bytes()))),
        ];
        Either::Right(StreamBody::new(tokio_stream::iter(frames)))
    } else {
        Either::Left(Full::new(Bytes::from(text)))
    };
    let mut resp = Response::new(body);
    if let Some(s) = h.get("x-status") {
        *resp.status_mut() = StatusCode::from_bytes(s).unwrap();
    }
    if h.get("x-close").is_some() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

use http_body_util::Either;

/// A served connection: the client's socket, the drain sender and the
/// serving task.
struct Served {
    client: TcpStream,
    drain: watch::Sender<Drain>,
    task: JoinHandle<Option<Handover>>,
}

async fn served() -> Served {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (io, _) = l.accept().await.unwrap();
    let (drain, rx) = watch::channel(Drain::Serving);
    let task =
        tokio::spawn(async move { serve(io, |req| std::future::ready(echo(req)), &rx).await });
    Served {
        client,
        drain,
        task,
    }
}

/// Reads more from `s` into `buf`; panics at EOF (`what` was cut short).
async fn more(s: &mut TcpStream, buf: &mut Vec<u8>, what: &str) {
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).await.unwrap();
    assert!(n > 0, "EOF inside {what}: {buf:?}");
    buf.extend_from_slice(&b[..n]);
}

/// Sends `req` and reads the response to it (not to HEAD).
async fn ask(s: &mut TcpStream, req: &[u8]) -> (String, Vec<(String, String)>, String) {
    s.write_all(req).await.unwrap();
    response(s, false).await
}

/// Reads one response: status line and fields (lowercased names), and
/// the body by `content-length`, chunked coding, or to EOF.
async fn response(
    s: &mut TcpStream,
    head_request: bool,
) -> (String, Vec<(String, String)>, String) {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(s, &mut buf, "the head").await;
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut rest = buf[end..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let fields: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let bodiless = head_request || status.contains(" 204 ") || status.contains(" 304 ");
    let body = if bodiless {
        Vec::new()
    } else if let Some(n) = get("content-length") {
        let n: usize = n.parse().unwrap();
        while rest.len() < n {
            more(s, &mut rest, "the body").await;
        }
        rest[..n].to_vec()
    } else if get("transfer-encoding").as_deref() == Some("chunked") {
        let mut out = Vec::new();
        loop {
            while !rest.windows(2).any(|w| w == b"\r\n") {
                more(s, &mut rest, "a chunk size").await;
            }
            let i = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap(), 16).unwrap();
            while rest.len() < i + 2 + size + 2 {
                more(s, &mut rest, "a chunk").await;
            }
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest.drain(..i + 2 + size + 2);
        }
        out
    } else {
        s.read_to_end(&mut rest).await.unwrap();
        rest
    };
    (status, fields, String::from_utf8(body).unwrap())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether the server closed the connection (EOF within a second).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn keep_alive_requests_with_and_without_bodies_get_framed_responses() {
    let mut c = served().await;
    let (status, fields, body) = ask(
        &mut c.client,
        b"POST /a?x=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "POST /a?x=1 hello");
    assert_eq!(field(&fields, "content-length"), Some("17"));
    assert!(field(&fields, "date").is_some(), "{fields:?}");
    assert_eq!(field(&fields, "connection"), None);

    // The same connection serves the next one.
    let (_, _, body) = ask(&mut c.client, b"GET /b HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert_eq!(body, "GET /b ");

    // Two pipelined requests are answered in order.
    assert_eq!(
        ask(
            &mut c.client,
            b"GET /1 HTTP/1.1\r\nhost: h\r\n\r\nGET /2 HTTP/1.1\r\nhost: h\r\n\r\n"
        )
        .await
        .2,
        "GET /1 "
    );
    assert_eq!(response(&mut c.client, false).await.2, "GET /2 ");

    // A body that arrives in pieces.
    c.client
        .write_all(b"PUT /c HTTP/1.1\r\nhost: h\r\ncontent-length: 6\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.client.write_all(b"cdef").await.unwrap();
    assert_eq!(response(&mut c.client, false).await.2, "PUT /c abcdef");

    // The client closes: the server ends without a handover.
    drop(c.client);
    assert!(c.task.await.unwrap().is_none());
}

#[tokio::test]
async fn unknown_sizes_are_chunked_for_http11_and_close_delimited_for_http10() {
    let mut c = served().await;
    let (_, fields, body) = ask(
        &mut c.client,
        b"GET /s HTTP/1.1\r\nhost: h\r\nx-stream: 1\r\n\r\n",
    )
    .await;
    assert_eq!(field(&fields, "transfer-encoding"), Some("chunked"));
    assert_eq!(body, "GET /s ");
    // Still open.
    assert_eq!(
        ask(&mut c.client, b"GET /t HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .2,
        "GET /t "
    );

    let mut c = served().await;
    let (status, fields, body) =
        ask(&mut c.client, b"GET /s HTTP/1.0\r\nx-stream: 1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(field(&fields, "transfer-encoding"), None);
    assert_eq!(field(&fields, "connection"), Some("close"));
    assert_eq!(body, "GET /s ");
}

#[tokio::test]
async fn connection_close_and_http10_keep_alive_are_honoured() {
    // (request, the response's `connection` fields, whether the server
    // closes after it)
    let cases: [(&[u8], &[&str], bool); 5] = [
        (b"GET /k HTTP/1.1\r\nhost: h\r\n\r\n", &[], false),
        (b"GET /k HTTP/1.0\r\n\r\n", &["close"], true),
        (
            b"GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            &["keep-alive"],
            false,
        ),
        (
            b"GET /k HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            &["close"],
            true,
        ),
        // The handler's own `connection: close`, written once.
        (
            b"GET /k HTTP/1.1\r\nhost: h\r\nx-close: 1\r\n\r\n",
            &["close"],
            true,
        ),
    ];
    for (req, connection, closes) in cases {
        let mut c = served().await;
        let (_, fields, _) = ask(&mut c.client, req).await;
        let got: Vec<&str> = fields
            .iter()
            .filter(|(n, _)| n == "connection")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(got, connection, "{req:?}");
        if closes {
            assert!(closed(&mut c.client).await, "{req:?}");
        } else {
            assert_eq!(ask(&mut c.client, req).await.2, "GET /k ", "{req:?}");
        }
    }
}

#[tokio::test]
async fn head_204_and_304_responses_carry_no_body() {
    let mut c = served().await;
    c.client
        .write_all(b"HEAD /h HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = response(&mut c.client, true).await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    for code in ["204", "304"] {
        let (status, fields, _) = ask(
            &mut c.client,
            format!("GET / HTTP/1.1\r\nhost: h\r\nx-status: {code}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(status.starts_with(&format!("HTTP/1.1 {code} ")), "{status}");
        assert_eq!(field(&fields, "content-length"), None);
    }
    // Nothing stray on the wire: the next response parses.
    assert_eq!(
        ask(&mut c.client, b"GET /after HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .2,
        "GET /after "
    );
}

#[tokio::test]
async fn bad_requests_get_an_error_and_the_connection_closes() {
    let cases: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "400"),
        (b"\x16\x03\x01 not http\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\ncontent-length: 1x\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nx-big: ", "431"),
    ];
    for (bytes, code) in cases {
        let mut c = served().await;
        c.client.write_all(bytes).await.unwrap();
        if code == "431" {
            // A head that never ends: larger than MAX_HEAD.
            let _ = c.client.write_all(&vec![b'a'; MAX_HEAD + 1]).await;
        }
        let (status, fields, _) = response(&mut c.client, false).await;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {code} ")),
            "{bytes:?}: {status}"
        );
        assert_eq!(field(&fields, "connection"), Some("close"));
        assert!(closed(&mut c.client).await, "{bytes:?}");
        assert!(c.task.await.unwrap().is_none());
    }
}

#[tokio::test]
async fn what_this_path_does_not_serve_is_handed_over_with_every_byte() {
    let cases: [&[u8]; 5] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nhost: h:443\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 65537\r\n\r\n",
    ];
    for bytes in cases {
        let mut c = served().await;
        c.client.write_all(bytes).await.unwrap();
        let h = c.task.await.unwrap().expect("handed over");
        assert_eq!(&h.read[..], bytes);
    }
    // After a request served here, the next one is handed over with its
    // bytes only.
    let mut c = served().await;
    let chunked = b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    ask(&mut c.client, b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await;
    c.client.write_all(chunked).await.unwrap();
    let h = c.task.await.unwrap().expect("handed over");
    assert_eq!(&h.read[..], chunked);
}

/// A served connection with a request whose body is half sent (`ab` of
/// `abcd`), and read by the server.
async fn half_sent() -> Served {
    let mut c = served().await;
    c.client
        .write_all(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c
}

#[tokio::test]
async fn a_drain_closes_idle_connections_at_once_and_busy_ones_after_their_response() {
    // Idle.
    let mut c = served().await;
    ask(&mut c.client, b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await;
    c.drain.send_replace(Drain::Graceful);
    assert!(closed(&mut c.client).await);
    assert!(c.task.await.unwrap().is_none());

    // Busy: a request whose body is still coming gets its response, with
    // `connection: close`.
    let mut c = half_sent().await;
    c.drain.send_replace(Drain::Graceful);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, fields, body) = ask(&mut c.client, b"cd").await;
    assert_eq!(body, "POST / abcd");
    assert_eq!(field(&fields, "connection"), Some("close"));
    assert!(closed(&mut c.client).await);

    // `Now` closes a connection in the middle of a request.
    let mut c = half_sent().await;
    c.drain.send_replace(Drain::Now);
    assert!(closed(&mut c.client).await);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_the_head_timeout() {
    let mut c = served().await;
    ask(&mut c.client, b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await;
    // Part of a head, then silence.
    c.client.write_all(b"GET / HT").await.unwrap();
    tokio::time::sleep(HEAD_TIMEOUT * 2 + Duration::from_secs(1)).await;
    let (status, _, _) = response(&mut c.client, false).await;
    assert!(status.starts_with("HTTP/1.1 408 "), "{status}");
    assert!(c.task.await.unwrap().is_none());
}
