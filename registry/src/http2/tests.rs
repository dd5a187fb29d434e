//! The gRPC port's HTTP/2 server driven by a plain `h2` client: many
//! streams on one connection, a response far larger than the cork limit
//! read by a client that starts late, the peer address in requests, a
//! direct service ahead of the router, and a graceful shutdown with a
//! request in flight.

use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;

use super::{serve, Direct, Settings, CORK_LIMIT};

/// 3 MiB of a pattern a cut or reordered write would break.
fn large_body() -> Vec<u8> {
    (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

fn routes() -> Routes {
    let router =
        axum::Router::new()
            .route(
                "/small/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                        format!("stream {n}")
                    },
                ),
            )
            .route("/large", get(|| async { large_body() }))
            .route(
                "/peer",
                get(
                    |axum::Extension(info): axum::Extension<TcpConnectInfo>| async move {
                        info.remote_addr.map(|a| a.to_string()).unwrap_or_default()
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "finished"
                }),
            );
    Routes::from(router)
}

/// A direct service `test.Echo`: answers with its path and the peer.
fn direct() -> Direct {
    Direct {
        name: "test.Echo",
        call: std::sync::Arc::new(|req: http::Request<hyper::body::Incoming>| {
            let peer = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let body = format!("direct {} from {peer}", req.uri().path());
            http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(body),
            )))
        }),
    }
}

/// Starts the server; returns its address, the stop switch and the task.
async fn start() -> (
    std::net::SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let settings = Settings {
        keepalive: Duration::from_secs(30),
        max_streams: 1024,
    };
    let task = tokio::spawn(serve(listener, routes(), vec![direct()], settings, stop_rx));
    (addr, stop_tx, task)
}

/// An HTTP/2 client connection with 16 MiB HTTP/2 receive windows but a
/// small socket receive buffer, so that the server may send far more than
/// [`CORK_LIMIT`] before the client reads, and the socket fills long before.
async fn client(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<Bytes>, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, local)
}

async fn get_body(
    send: &h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    before_reading: Duration,
) -> (u16, Vec<u8>) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    tokio::time::sleep(before_reading).await;
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

#[tokio::test]
async fn many_streams_on_one_connection_and_a_late_reader_of_a_large_body() {
    let (addr, _stop, _task) = start().await;
    let (send, _) = client(addr).await;
    // 300 concurrent streams on one connection, each with its own answer.
    let calls: Vec<_> = (0..300u32)
        .map(|n| {
            let send = send.clone();
            tokio::spawn(async move {
                (
                    n,
                    get_body(&send, addr, &format!("/small/{n}"), Duration::ZERO).await,
                )
            })
        })
        .collect();
    for call in calls {
        let (n, (status, body)) = call.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("stream {n}").as_bytes());
    }
    // 3 MiB with the client not reading for a while: the socket fills,
    // the server's buffer passes its limit and waits; every byte arrives
    // in order once the client reads.
    assert!(large_body().len() > 4 * CORK_LIMIT);
    let (status, body) = get_body(&send, addr, "/large", Duration::from_millis(300)).await;
    assert_eq!(status, 200);
    assert!(
        body == large_body(),
        "large body differs ({} bytes)",
        body.len()
    );
    // The connection still serves after that.
    let (status, body) = get_body(&send, addr, "/small/7", Duration::ZERO).await;
    assert_eq!((status, body.as_slice()), (200, &b"stream 7"[..]));
}

#[tokio::test]
async fn requests_carry_the_peer_address() {
    let (addr, _stop, _task) = start().await;
    let (send, local) = client(addr).await;
    let (status, body) = get_body(&send, addr, "/peer", Duration::ZERO).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), local.to_string());
}

#[tokio::test]
async fn a_direct_service_gets_its_paths_and_the_router_the_rest() {
    let (addr, _stop, _task) = start().await;
    let (send, local) = client(addr).await;
    let (status, body) = get_body(&send, addr, "/test.Echo/Say", Duration::ZERO).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("direct /test.Echo/Say from {local}")
    );
    // A name that only starts like the service's is not the service: the
    // router answers it (this one has no such route: 404).
    let (status, body) = get_body(&send, addr, "/test.EchoMore/Say", Duration::ZERO).await;
    assert_eq!((status, body.as_slice()), (404, &b""[..]));
    let (status, body) = get_body(&send, addr, "/small/3", Duration::ZERO).await;
    assert_eq!((status, body.as_slice()), (200, &b"stream 3"[..]));
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight_and_stops_accepting() {
    let (addr, stop, task) = start().await;
    let (send, _) = client(addr).await;
    let in_flight = {
        let send = send.clone();
        tokio::spawn(async move { get_body(&send, addr, "/slow", Duration::ZERO).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send_replace(true);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"finished"[..]));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once its connections are done")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after a shutdown"
    );
}
